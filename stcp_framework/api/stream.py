"""``Stream``: a TCP connection of the stack as a ``trio.abc.HalfCloseableStream``."""

from __future__ import annotations

import contextlib
import enum
import logging
import math
import operator
from types import TracebackType
from typing import TYPE_CHECKING

import trio

from ..stack.sources import Source
from ..tcp.state import TcpState
from .tcp_info import TcpInfo, tcp_info_of

if TYPE_CHECKING:
    from ..stack.flows import Flow
    from ..stack.runtime import Runtime
    from ..tcp.machine import Connection

DEFAULT_RECEIVE_SIZE = 256 * 1024

logger = logging.getLogger("stcp.api")


class KeepState(enum.Enum):
    """The type of ``KEEP_STATE``."""

    KEEP = "keep"


KEEP_STATE = KeepState.KEEP
"""A commit's ``state`` left out: the stream's state stays as it is (``None`` clears it)."""


class _ConflictDetector:
    """Raise ``trio.BusyResourceError`` when two tasks use one direction at once."""

    __slots__ = ("_busy", "_message")

    def __init__(self, message: str) -> None:
        self._message = message
        self._busy = False

    def __enter__(self) -> None:
        if self._busy:
            raise trio.BusyResourceError(self._message)
        self._busy = True

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._busy = False


SOURCE_BLOCK = 1024 * 1024
"""Bytes ``Stream.send_from`` reads from its source at a time."""


class Stream(trio.abc.HalfCloseableStream):
    """One connection. Like ``trio.SocketStream``, but its state lives in the store.

    Errors follow trio's contract: a peer reset or a timeout raises
    ``trio.BrokenResourceError`` with the cause chained (``ConnectionResetByPeer``,
    ``ConnectionTimedOut``); use after ``aclose()`` raises ``trio.ClosedResourceError``;
    two tasks sending (or receiving) at once raise ``trio.BusyResourceError``.
    """

    def __init__(self, runtime: Runtime, flow: Flow) -> None:
        self._runtime = runtime
        self._flow = flow
        self._send_conflict = _ConflictDetector("another task is already sending on this stream")
        self._recv_conflict = _ConflictDetector("another task is already receiving on this stream")
        self._closed = False
        self._eof_sent = False
        self._stall_warned = False

    # ---------------------------------------------------------------- info

    @property
    def local_address(self) -> tuple[str, int]:
        """``(host, port)`` of this end."""
        return self._flow.local

    @property
    def remote_address(self) -> tuple[str, int]:
        """``(host, port)`` of the peer."""
        return self._flow.remote

    @property
    def tcp_state(self) -> TcpState:
        """The TCP state (RFC 9293 spelling with ``str()``)."""
        return TcpState.CLOSED if self._flow.closed else self._flow.conn.state

    @property
    def tcp_info(self) -> TcpInfo:
        """This connection's TCP numbers now: MSS, windows, RTT, recovery, what was
        agreed, event counters (``api/tcp_info.py``; what ``ss -ti`` shows)."""
        return tcp_info_of(self._flow.conn)

    @property
    def send_offset(self) -> int:
        """Stream offset of the next byte ``send_all`` will accept (bytes accepted so far).

        Bytes ``send_all`` returned for are durable (G2; with ``wait_durable=False``
        once the next group commit lands), so after a restart a sender that regenerates
        its data (chargen, a file) continues from here. (After a restart it also counts
        the bytes a ``send_from`` had recorded ahead of what it queued: they are queued
        again.)
        """
        return self._flow.conn.snd_buf.end_offset

    @property
    def read_offset(self) -> int:
        """Stream offset of the next byte ``receive_some`` returns."""
        return self._flow.conn.rcv_buf.read_offset

    @property
    def commit_offset(self) -> int:
        """Inbound bytes below this offset are processed for good (``commit``).

        After a restart, reading resumes here: bytes read but not committed are
        delivered again (replay, G4).
        """
        return self._flow.conn.tcb.commit_offset

    @property
    def state(self) -> bytes | None:
        """The application state stored by the last ``commit`` (restored with it, G4)."""
        return self._flow.app_state

    @property
    def receive_buffer_size(self) -> int:
        """The receive buffer cap in bytes (``TcpConfig.recv_buffer_size``, G6).

        With ``commit="manual"`` bytes read but not committed still count against it
        (they are kept for replay): commit at least every this many bytes, or the
        window stays shut and reading stalls until a commit.
        """
        return self._flow.conn.config.recv_buffer_size

    # ------------------------------------------------------------- level 2

    async def commit(
        self, offset: int | None = None, *, state: bytes | KeepState | None = KEEP_STATE
    ) -> None:
        """Level 2: the app has durably processed the inbound stream up to ``offset``.

        ``offset`` (default: ``read_offset``, everything read so far) and ``state`` are
        written to the store in one atomic step; this returns once they are durable.
        After a restart ``self.state`` is ``state`` and reading resumes at ``offset``.
        ``state`` left out keeps the state as it is (``None`` clears it). Only streams
        served or connected with ``commit="manual"`` keep uncommitted bytes for replay;
        in the default ``"auto"`` mode every read commits.

        Cancelled while it waits for the store, the commit is still made: it was
        recorded before the wait and lands with the next group commit (as bytes that a
        cancelled ``send_all`` had handed over still leave).

        Raises:
            ValueError: ``offset`` is below ``commit_offset`` or beyond ``read_offset``.
            trio.ClosedResourceError: This stream was closed.
            trio.BrokenResourceError: The connection was reset or aborted, or it ended
                before the commit was durable (the store fenced the flow off or lost it).
        """
        self._check_usable()
        await trio.lowlevel.checkpoint_if_cancelled()
        self._record_commit(offset, state)
        await self._runtime.wait_durable(self._flow)

    def commit_nowait(
        self, offset: int | None = None, *, state: bytes | KeepState | None = KEEP_STATE
    ) -> None:
        """``commit`` without waiting for the store: the commit goes out with the next
        group commit and this returns at once, so the app reads on meanwhile.

        The guarantees are ``commit``'s once that write lands: offset and state are
        stored atomically, and a later commit supersedes this one. A crash before it
        lands resumes at the commit before (replay covers the difference, G4), so use
        it where the app has no effect outside the stream that depends on the commit
        having happened -- a running checksum, a counter -- and ``await commit()`` at
        the points that do (the last one before replying or closing, say).

        Raises:
            ValueError: ``offset`` is below ``commit_offset`` or beyond ``read_offset``.
            trio.ClosedResourceError: This stream was closed.
            trio.BrokenResourceError: The connection was reset or aborted.
        """
        self._check_usable()
        self._record_commit(offset, state)

    def _record_commit(self, offset: int | None, state: bytes | KeepState | None) -> None:
        flow = self._flow
        if offset is None:
            offset = self.read_offset
        if state is KEEP_STATE:
            state = flow.app_state
        if flow.takeable:  # (a kept closed flow: its record waits for these commits)
            flow.conn.app_commit(offset, state, self._runtime.now())
            flow.app_state = state
            self._runtime.touch(flow)

    async def send_all_and_commit(
        self,
        data: bytes | bytearray | memoryview,
        *,
        offset: int | None = None,
        state: bytes | KeepState | None = KEEP_STATE,
        wait_durable: bool = True,
    ) -> None:
        """Send ``data`` and commit this stream's inbound side, as one atomic store write.

        After a crash either both happened or neither: a replayed input is answered
        exactly once (an echo, a request/response server). ``data`` must fit the send
        buffer (``TcpConfig.send_buffer_size``). See ``Stack.transaction`` for sends
        and commits on several streams. ``wait_durable=False`` returns once both are
        recorded, before the group commit that stores them: exactly-once still holds
        (they land together or not at all), the app just reads on meanwhile.
        """
        txn = Transaction(self._runtime)
        txn.send(self, data)
        txn.commit(self, offset, state=state)
        await txn.apply(wait_durable=wait_durable)

    @property
    def recovered(self) -> bool:
        """True when this stream was restored from the store after a restart."""
        return self._flow.recovered

    @property
    def flow_id(self) -> str:
        """This connection's id in the store, ``local:port-remote:port/ISS`` (what
        ``stcp flows`` lists, and what ``Stack.reattach`` takes after a restart)."""
        return self._flow.flow_id

    # --------------------------------------------------------------- sending

    def _check_usable(self) -> None:
        if self._closed:
            raise trio.ClosedResourceError("this stream was closed")
        error = self._flow.error
        if error is not None:
            raise trio.BrokenResourceError(str(error) or type(error).__name__) from error

    def _closed_error(self) -> trio.BrokenResourceError:
        """The connection can send no more: the error, with its cause -- which may still
        wait in the machine's events (a RST that came in one batch with data closed
        the connection before the round that records it in ``flow.error``)."""
        flow = self._flow
        cause: BaseException | None = flow.error
        if cause is None and not flow.closed:
            cause = self._runtime.pending_error(flow)
        if cause is None:
            return trio.BrokenResourceError("the connection is closed")
        error = trio.BrokenResourceError(str(cause) or type(cause).__name__)
        error.__cause__ = cause
        return error

    async def send_all(
        self, data: bytes | bytearray | memoryview, *, wait_durable: bool = True
    ) -> None:
        """Queue ``data``; returns once all of it is accepted and durable (G2).

        ``wait_durable=False`` returns once it is accepted (in the send buffer, whose
        cap still applies, G6), as a kernel socket's send does: the bytes become
        durable with the next group commit and leave only after it, as always, but a
        crash before that commit loses them. Fit for an answer whose input is committed
        in the same step -- read at level 1 and answered at once, or
        ``send_all_and_commit`` -- since the crash then loses the commit too and the
        input is replayed and answered again.
        """
        with self._send_conflict:
            self._check_usable()
            if self._eof_sent:
                raise trio.ClosedResourceError("cannot send after send_eof()")
            await trio.lowlevel.checkpoint_if_cancelled()
            # bytes are immutable: the machine keeps the object itself (no copy) when it
            # takes all of it; anything else is copied once as it is accepted.
            view: bytes | memoryview = data if type(data) is bytes else memoryview(data).cast("B")
            flow = self._flow
            runtime = self._runtime
            while view:
                self._check_usable()
                if flow.closed or not flow.conn.state.can_send():
                    raise self._closed_error()
                n = flow.conn.app_send(view, self._runtime.now())
                if n:
                    runtime.touch(flow)
                    view = memoryview(view)[n:]
                if view:
                    await flow.lot.park()
            if wait_durable:
                await runtime.wait_durable(flow)
            else:
                await trio.lowlevel.cancel_shielded_checkpoint()
            self._check_usable()

    async def send_from(
        self,
        source: Source,
        offset: int = 0,
        count: int | None = None,
        *,
        block_size: int = SOURCE_BLOCK,
    ) -> int:
        """Send ``source``'s bytes ``[offset, offset + count)`` (to its end when ``count``
        is None) as *regenerable* bytes: the store records where they come from instead
        of the bytes, and after a restart the stack reads what the peer has not
        acknowledged from the source again (``stcp_framework.stack.sources``).

        Returns the number of bytes sent (less than ``count`` only if the source ended)
        once every extent is durable (G2). A ``FileSource`` is found again by itself;
        any other source must be passed to ``open_stack(sources=[...])`` by every
        incarnation, or its connections are reset on restore.

        When the source says where it ends (``size``: ``FileSource`` does, ``math.inf``
        for an endless one), the store records the extent ahead of the bytes queued, up
        to that end or ``offset + count`` (``tcp/txmap.py``: a reservation), so they
        leave without waiting for a commit per round; a restart then continues at the
        end of what was recorded (``send_offset``), which may hold up to half a send
        buffer more than was queued.
        """
        name = source.name  # read once: a source that renames itself is not one
        sent = 0
        # Recorded ahead only as far as the source is known to go: a count alone may
        # run past a source's end, and bytes recorded there could not be read again.
        size = getattr(source, "size", None)
        src_end: int | None = None
        if size is not None:
            src_end = int(size) if size != math.inf else 1 << 62
            if count is not None and offset + count < src_end:
                src_end = offset + count
        with self._send_conflict:
            self._check_usable()
            if self._eof_sent:
                raise trio.ClosedResourceError("cannot send after send_eof()")
            await trio.lowlevel.checkpoint_if_cancelled()
            flow = self._flow
            runtime = self._runtime
            try:
                while count is None or sent < count:
                    want = block_size if count is None else min(block_size, count - sent)
                    data = source.read(offset + sent, want)
                    if not data:
                        break
                    view: bytes | memoryview = data
                    at = offset + sent
                    while view:
                        self._check_usable()
                        if flow.closed or not flow.conn.state.can_send():
                            raise self._closed_error()
                        n = flow.conn.app_send_ref(view, name, at, runtime.now(), src_end)
                        if n:  # (maybe not all that fits: up to a recorded end first)
                            runtime.touch(flow)
                            view = memoryview(view)[n:]
                            at += n
                        else:
                            await flow.lot.park()
                    sent += len(data)
            finally:
                # Ended early (the source did, or a cancellation): nothing unsent stays
                # recorded. (A connection that closed meanwhile has no use for it.)
                if not flow.closed and flow.conn.end_reservation():
                    runtime.touch(flow)
            await runtime.wait_durable(flow)
            self._check_usable()
        return sent

    async def wait_send_all_might_not_block(self) -> None:
        with self._send_conflict:
            self._check_usable()
            flow = self._flow
            while not flow.closed and flow.error is None and flow.conn.send_space == 0:
                await flow.lot.park()
                self._check_usable()
            await trio.lowlevel.checkpoint()

    async def send_eof(self) -> None:
        """Half-close: send FIN after the queued data; receiving continues."""
        with self._send_conflict:
            self._check_usable()
            await trio.lowlevel.checkpoint_if_cancelled()
            flow = self._flow
            runtime = self._runtime
            if self._eof_sent or flow.closed:
                self._eof_sent = True
                await trio.lowlevel.cancel_shielded_checkpoint()
                return
            self._eof_sent = True
            flow.conn.app_shutdown(runtime.now())
            # The schedule point after the work (trio's pattern), with the flow held
            # until this task resumes: an ``aclose()`` right after joins the same round,
            # so FIN and close share one commit.
            runtime.hold(flow)
            try:
                await trio.lowlevel.cancel_shielded_checkpoint()
            finally:
                runtime.release(flow)

    # ------------------------------------------------------------- receiving

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        """Up to ``max_bytes`` received bytes; ``b""`` once the peer sent FIN and all was read."""
        if max_bytes is None:
            max_bytes = DEFAULT_RECEIVE_SIZE
        elif operator.index(max_bytes) < 1:  # TypeError for 1.5 (trio's stream contract)
            raise ValueError("max_bytes must be >= 1")
        with self._recv_conflict:
            self._check_usable()
            await trio.lowlevel.checkpoint_if_cancelled()
            flow = self._flow
            parked = False  # a park is this call's schedule point: no second one needed
            while True:
                conn = flow.conn
                data = conn.app_receive(max_bytes, self._runtime.now())
                if data:
                    # The read changed the machine (commit, maybe a window update).
                    runtime = self._runtime
                    if parked:
                        # The app's answer to these bytes follows before any round
                        # can run (no schedule point in between): it joins that round.
                        runtime.touch(flow)
                        return data
                    # The flow waits for a round until this task resumes, so that the
                    # app's answer to these bytes joins that round (Runtime.hold).
                    runtime.hold(flow)
                    try:
                        await trio.lowlevel.cancel_shielded_checkpoint()
                    finally:
                        runtime.release(flow)
                    return data
                if conn.at_eof:
                    if not parked:
                        await trio.lowlevel.cancel_shielded_checkpoint()
                    return b""
                self._check_usable()
                if flow.closed:
                    if not parked:
                        await trio.lowlevel.cancel_shielded_checkpoint()
                    return b""
                if not self._stall_warned:
                    self._warn_if_commit_stall(conn)
                flow.fresh = False  # (Runtime._accept_early: the round need not wait)
                try:
                    await flow.rx_lot.park()
                finally:
                    self._runtime.reader_resumed(flow)
                parked = True
                if self._closed:
                    raise trio.ClosedResourceError("this stream was closed")

    def _warn_if_commit_stall(self, conn: Connection) -> None:
        """Say so, once, when this read can only end after a commit: the bytes read and
        not committed fill the receive buffer, so the window is shut (G6). Another task
        may be about to commit, so it is a warning, not an error."""
        uncommitted = conn.rcv_buf.read_offset - conn.tcb.commit_offset
        size = conn.config.recv_buffer_size
        if uncommitted >= size:
            self._stall_warned = True
            logger.warning(
                "[%s] reading stalls until a commit: %d bytes read and not committed "
                "fill the %d-byte receive buffer (commit at least every "
                "stream.receive_buffer_size bytes)",
                self.flow_id,
                uncommitted,
                size,
            )

    # ---------------------------------------------------------------- close

    async def aclose(self) -> None:
        """Close both directions (FIN, or RST if received data was left unread)."""
        await self._close(abort=False)

    async def abort(self) -> None:
        """Reset the connection (RST) and close the stream."""
        await self._close(abort=True)

    async def _close(self, *, abort: bool) -> None:
        self._close_now(abort=abort)
        await trio.lowlevel.checkpoint()

    def _close_now(self, *, abort: bool) -> None:
        """``aclose``/``abort`` without the schedule point (for ``Stack.serve``, which
        closes the stream as the handler's task ends)."""
        if not self._closed:
            self._closed = True
            flow = self._flow
            if not flow.closed:
                conn = flow.conn
                (conn.app_abort if abort else conn.app_close)(self._runtime.now())
                self._runtime.touch(flow)
            elif flow.kept:
                self._runtime.release_kept(flow)  # the app is done with what it got
            flow.lot.unpark_all()
            flow.rx_lot.unpark_all()

    async def _wait_send_space(self, size: int) -> None:
        flow = self._flow
        limit = flow.conn.config.send_buffer_size
        if size > limit:
            raise ValueError(f"{size} bytes do not fit the send buffer ({limit}) atomically")
        while True:
            self._check_usable()
            if self._eof_sent:
                raise trio.ClosedResourceError("cannot send after send_eof()")
            if flow.closed or not flow.conn.state.can_send():
                raise self._closed_error()
            if flow.conn.send_space >= size:
                return
            await flow.lot.park()

    def __repr__(self) -> str:
        return f"<stcp.Stream {self.flow_id} {self.tcp_state}>"


class Transaction:
    """Sends and commits on several streams that become durable together or not at all.

    Every machine call of ``apply()`` runs without a checkpoint in between, so all of
    their deltas land in the same group commit, which the store applies atomically
    (one script for the whole batch). A relay forwards each byte exactly once::

        txn = stack.transaction()
        txn.send(downstream, data)
        txn.commit(upstream, upstream.read_offset)
        await txn.apply()
    """

    def __init__(self, runtime: Runtime) -> None:
        self._runtime = runtime
        self._sends: list[tuple[Stream, bytes | bytearray | memoryview]] = []  # as given
        self._commits: list[tuple[Stream, int | None, bytes | KeepState | None]] = []
        self._applied = False

    def send(self, stream: Stream, data: bytes | bytearray | memoryview) -> None:
        self._check_stream(stream)
        self._sends.append((stream, data))

    def commit(
        self,
        stream: Stream,
        offset: int | None = None,
        *,
        state: bytes | KeepState | None = KEEP_STATE,
    ) -> None:
        """As ``Stream.commit``: ``state`` left out keeps the stream's state."""
        self._check_stream(stream)
        self._commits.append((stream, offset, state))

    def _check_stream(self, stream: Stream) -> None:
        if self._applied:
            raise RuntimeError("this transaction was applied already: make a new one")
        if stream._runtime is not self._runtime:
            raise ValueError(
                f"stream {stream.flow_id} belongs to another stack: a transaction spans "
                "the streams of the stack that made it"
            )

    async def apply(self, *, wait_durable: bool = True) -> None:
        """Wait for send space, then send and commit everything atomically; returns once
        it is durable (strict mode), or with ``wait_durable=False`` once it is recorded
        for the next group commit.

        Raises:
            trio.BusyResourceError: Another task is sending on one of its streams.
            trio.BrokenResourceError: A stream broke before its part was durable: the
                store fenced its flow off (another instance owns it, G5 -- then the
                whole transaction is refused, and its other flows are let go too) or
                lost its state (that flow is reset; the others' parts land).
            RuntimeError: This transaction was applied already.
        """
        if self._applied:
            raise RuntimeError("this transaction was applied already: make a new one")
        self._applied = True
        sends, commits = self._sends, self._commits
        if not sends and not commits:
            await trio.lowlevel.checkpoint()
            return
        if len(sends) == 1 and len(commits) == 1 and sends[0][0] is commits[0][0]:
            # One stream's answer and commit (``send_all_and_commit``): the same calls,
            # without the bookkeeping for several streams.
            stream, data = sends[0]
            _, offset, state = commits[0]
            with stream._send_conflict:  # (one sender at a time, as send_all)
                await self._apply_one(stream, data, offset, state, wait_durable)
            return
        with contextlib.ExitStack() as senders:
            for stream in {id(s): s for s, _ in sends}.values():
                senders.enter_context(stream._send_conflict)
            await self._apply_general(wait_durable)

    async def _apply_one(
        self,
        stream: Stream,
        data: bytes | bytearray | memoryview,
        offset: int | None,
        state: bytes | KeepState | None,
        wait_durable: bool = True,
    ) -> None:
        """``_apply_general`` for one send and one commit on the same stream."""
        view = data if type(data) is bytes else memoryview(data).cast("B")
        if stream._closed:
            raise trio.ClosedResourceError("this stream was closed")
        await stream._wait_send_space(len(view))
        await trio.lowlevel.checkpoint_if_cancelled()
        # -- no checkpoint from here to the touch: one round takes all of it --
        runtime = self._runtime
        flow = stream._flow
        conn = flow.conn
        now = runtime.now()
        if offset is None:
            offset = conn.rcv_buf.read_offset
        if state is KEEP_STATE:
            state = flow.app_state
        # The commit first: a bad offset raises before anything is sent, and with
        # ACK-on-commit the answer carries the ACK the commit moves (sent after it, the
        # answer had the older one, and the new ACK waited for the delayed-ACK timer:
        # ~20 ms a round for a client whose Nagle waits for it).
        conn.app_commit(offset, state, now)
        flow.app_state = state
        accepted = conn.app_send(view, now)
        assert accepted == len(view), "send space was checked"
        runtime.touch(flow)
        if wait_durable:
            await runtime.wait_durable(flow)
        else:
            await trio.lowlevel.cancel_shielded_checkpoint()

    async def _apply_general(self, wait_durable: bool = True) -> None:
        sends = [(s, d if type(d) is bytes else memoryview(d).cast("B")) for s, d in self._sends]
        streams = {id(s): s for s, _ in sends} | {id(s): s for s, _, _ in self._commits}
        for stream in streams.values():
            if stream._closed:
                raise trio.ClosedResourceError("this stream was closed")
        needed: dict[int, int] = {}
        for stream, view in sends:
            needed[id(stream)] = needed.get(id(stream), 0) + len(view)
        while True:
            for stream, _ in sends:
                await stream._wait_send_space(needed[id(stream)])
            if all(s._flow.conn.send_space >= needed[id(s)] for s, _ in sends):
                break  # space can only have grown meanwhile, but check: atomic or nothing
        await trio.lowlevel.checkpoint_if_cancelled()
        # -- no checkpoint from here to the touches: one round takes all of it --
        now = self._runtime.now()
        commits = [
            (
                stream._flow,
                stream.read_offset if offset is None else offset,
                stream._flow.app_state if state is KEEP_STATE else state,
            )
            for stream, offset, state in self._commits
        ]
        for flow, offset, _ in commits:
            flow.conn.check_commit(offset)  # all or nothing: raises before any change
        # Commits before sends, as in _apply_one (an answer carries the ACK they move).
        for flow, offset, state in commits:
            flow.conn.app_commit(offset, state, now)
            flow.app_state = state
        for stream, view in sends:
            accepted = stream._flow.conn.app_send(view, now)
            assert accepted == len(view), "send space was checked"
        runtime = self._runtime
        runtime.touch_together(s._flow for s in streams.values())
        if not wait_durable:
            await trio.lowlevel.cancel_shielded_checkpoint()
            return
        # Every target now, before the first wait: by the time a later stream's turn
        # comes, rounds have drained it and the app's changes are no longer pending.
        targets = [(s._flow, runtime.durable_target(s._flow)) for s in streams.values()]
        for flow, target in targets:
            await runtime.wait_durable(flow, target)
