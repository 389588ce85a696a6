"""``Stream``: a TCP connection of the stack as a ``trio.abc.HalfCloseableStream``."""

from __future__ import annotations

import operator
from types import TracebackType
from typing import TYPE_CHECKING

import trio

from ..tcp.state import TcpState

if TYPE_CHECKING:
    from ..stack.flows import Flow
    from ..stack.runtime import Runtime

DEFAULT_RECEIVE_SIZE = 256 * 1024


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
    def send_offset(self) -> int:
        """Stream offset of the next byte ``send_all`` will accept (bytes accepted so far).

        Accepted bytes are durable (G2), so after a restart a sender that regenerates its
        data (chargen, a file) continues from here.
        """
        return self._flow.conn.snd_buf.end_offset

    @property
    def read_offset(self) -> int:
        """Stream offset of the next byte ``receive_some`` returns."""
        return self._flow.conn.rcv_buf.read_offset

    @property
    def recovered(self) -> bool:
        """True when this stream was restored from the store after a restart."""
        return self._flow.recovered

    @property
    def flow_id(self) -> str:
        return self._flow.flow_id

    # --------------------------------------------------------------- sending

    def _check_usable(self) -> None:
        if self._closed:
            raise trio.ClosedResourceError("this stream was closed")
        error = self._flow.error
        if error is not None:
            raise trio.BrokenResourceError(str(error) or type(error).__name__) from error

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        """Queue ``data``; returns once all of it is accepted and durable (G2)."""
        with self._send_conflict:
            self._check_usable()
            if self._eof_sent:
                raise trio.ClosedResourceError("cannot send after send_eof()")
            await trio.lowlevel.checkpoint_if_cancelled()
            view = memoryview(data).cast("B")
            flow = self._flow
            runtime = self._runtime
            while view:
                self._check_usable()
                if flow.closed or not flow.conn.state.can_send():
                    raise trio.BrokenResourceError("the connection is closed")
                n = flow.conn.app_send(view, trio.current_time())
                if n:
                    runtime.touch(flow)
                    view = view[n:]
                if view:
                    await flow.lot.park()
            await runtime.wait_durable(flow)
            self._check_usable()

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
            await trio.lowlevel.checkpoint()
            if self._eof_sent:
                return
            self._eof_sent = True
            flow = self._flow
            if not flow.closed:
                flow.conn.app_shutdown(trio.current_time())
                self._runtime.touch(flow)

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
            while True:
                conn = flow.conn
                data = conn.app_receive(max_bytes, trio.current_time())
                if data:
                    self._runtime.touch(flow)  # may open the window: let the machine decide
                    await trio.lowlevel.cancel_shielded_checkpoint()
                    return data
                if conn.at_eof:
                    await trio.lowlevel.cancel_shielded_checkpoint()
                    return b""
                self._check_usable()
                if flow.closed:
                    await trio.lowlevel.cancel_shielded_checkpoint()
                    return b""
                await flow.lot.park()
                if self._closed:
                    raise trio.ClosedResourceError("this stream was closed")

    # ---------------------------------------------------------------- close

    async def aclose(self) -> None:
        """Close both directions (FIN, or RST if received data was left unread)."""
        if not self._closed:
            self._closed = True
            flow = self._flow
            if not flow.closed:
                flow.conn.app_close(trio.current_time())
                self._runtime.touch(flow)
            flow.lot.unpark_all()
        await trio.lowlevel.checkpoint()

    async def abort(self) -> None:
        """Reset the connection (RST) and close the stream."""
        if not self._closed:
            self._closed = True
            flow = self._flow
            if not flow.closed:
                flow.conn.app_abort(trio.current_time())
                self._runtime.touch(flow)
            flow.lot.unpark_all()
        await trio.lowlevel.checkpoint()

    def __repr__(self) -> str:
        return f"<stcp.Stream {self.flow_id} {self.tcp_state}>"
