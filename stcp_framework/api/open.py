"""``open_stack``: run a stack on a device; ``Stack.serve`` and ``Stack.connect``."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager

import trio

from ..errors import StcpConfigError
from ..link.base import PacketDevice
from ..stack.runtime import Runtime
from ..store.base import Store, StoreError
from ..store.memory import MemoryStore
from ..tcp.config import TcpConfig
from .listener import Listener
from .stream import Stream, Transaction

logger = logging.getLogger("stcp.api")

Handler = Callable[[Stream], Awaitable[object]]


class Stack:
    """A running user-space TCP/IP stack. Get one from ``open_stack``."""

    def __init__(self, runtime: Runtime, nursery: trio.Nursery) -> None:
        self._runtime = runtime
        self._nursery = nursery

    @property
    def runtime(self) -> Runtime:
        """The runtime (counters in ``runtime.stats`` and ``runtime.drops``)."""
        return self._runtime

    def listen(self, port: int, *, backlog: int | None = None, commit: str = "auto") -> Listener:
        """Start accepting connections on ``port`` (every local address).

        Args:
            backlog: Cap on connections in SYN-RECEIVED or waiting for ``accept``.
            commit: ``"auto"`` (level 1): reading a byte commits it. ``"manual"``
                (level 2): bytes stay in the store until ``Stream.commit``, and after a
                restart reading resumes at the commit offset (replay). Uncommitted bytes
                count against the receive window (G6).
        """
        return Listener(
            self._runtime, self._runtime.listen(port, backlog, manual_commit=_manual(commit))
        )

    def reattach(self, flow_id: str) -> Stream:
        """The restored stream of an outbound connection (``connect``), by its ``flow_id``.

        A listener hands restored inbound streams back to the app (``recovered=True``);
        an outbound one has no listener, so it waits, kept alive, until taken here. A
        relay, for one, stores its outbound stream's ``flow_id`` in the inbound stream's
        commit state and after a restart gets that stream back with it::

            if inbound.recovered and inbound.state:
                outbound = stack.reattach(inbound.state.decode())
            else:
                outbound = await stack.connect(host, port, commit="manual")
                await inbound.commit(state=outbound.flow_id.encode())

        Raises:
            LookupError: No restored stream ``flow_id`` waits on this stack: it was
                closed, taken already, or could not be restored.
        """
        return Stream(self._runtime, self._runtime.reattach(flow_id))

    def transaction(self) -> Transaction:
        """Sends and commits on several streams that become durable atomically."""
        return Transaction(self._runtime)

    async def serve(
        self,
        handler: Handler,
        port: int,
        *,
        backlog: int | None = None,
        commit: str = "auto",
        task_status: trio.TaskStatus[Listener] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Accept connections on ``port`` forever, running ``handler(stream)`` for each.

        The stream is closed when the handler returns. An exception in a handler is
        logged and resets that one connection; it does not stop the server. Streams
        restored after a restart come first, with ``stream.recovered == True`` (see
        ``listen`` for ``commit``).
        """
        listener = self.listen(port, backlog=backlog, commit=commit)
        async with trio.open_nursery() as nursery:

            def start(stream: Stream) -> None:
                nursery.start_soon(_run_handler, handler, stream)

            # The runtime starts each handler as the handshake completes (no accept
            # loop: one task hop and scheduler batch less per connection).
            listener.deliver_to(start)
            task_status.started(listener)
            try:
                await trio.sleep_forever()
            finally:
                listener.deliver_to(None)
                await listener.aclose()

    async def connect(self, host: str, port: int, *, commit: str = "auto") -> Stream:
        """Open a connection (active open) and wait until it is established.

        Raises:
            ConnectionRefused: The peer answered the SYN with a RST.
            ConnectionTimedOut: The peer did not answer (the SYN's retransmissions were
                exhausted). Both are ``stcp_framework.errors.StcpError``s, not
                ``OSError``s.
            StcpConfigError: ``port`` is not in 1..65535, or this stack has no address
                of ``host``'s family.
        """
        if not 0 < port < 65536:
            raise StcpConfigError(f"port {port} is not in 1..65535")
        runtime = self._runtime
        flow = runtime.open_flow(host, port, manual_commit=_manual(commit))
        try:
            while not flow.connected:
                if flow.error is not None:
                    raise flow.error
                await flow.lot.park()
        except BaseException:
            if not flow.closed:
                flow.conn.app_abort(runtime.now())
                runtime.touch(flow)
            raise
        return Stream(runtime, flow)


def _manual(commit: str) -> bool:
    if commit not in ("auto", "manual"):
        raise ValueError(f'commit must be "auto" or "manual", not {commit!r}')
    return commit == "manual"


async def _run_handler(handler: Handler, stream: Stream) -> None:
    try:
        await handler(stream)
    except Exception as exc:
        flow = stream._flow
        if flow.closed and isinstance(flow.error, StoreError):
            # Fenced off (another instance owns the flow now) or lost by the store: the
            # runtime has let the flow go already; the handler's error is only the news.
            logger.warning("[%s] handler ended: %s", stream.flow_id, flow.error)
            return
        cause = flow.error or (None if flow.closed else stream._runtime.pending_error(flow))
        if isinstance(exc, trio.BrokenResourceError) and cause is not None:
            # The connection broke under the handler (reset by the peer, timed out,
            # aborted): news about the peer, not a fault of the handler -- one line.
            logger.info("[%s] handler ended: %s", stream.flow_id, cause)
            await stream.abort()
            return
        logger.exception("[%s] handler failed; resetting the connection", stream.flow_id)
        await stream.abort()
    else:
        # The task ends here: closing needs no schedule point of its own (one task
        # step less per connection); the FIN goes out with the next round.
        stream._close_now(abort=False)


FLUSH_ON_EXIT = 0.5
"""Seconds ``open_stack`` waits, at most, for a last round when its block ends."""


@asynccontextmanager
async def open_stack(
    device: PacketDevice,
    addresses: Iterable[str],
    *,
    store: Store | None = None,
    config: TcpConfig | None = None,
    **runtime_options: object,
) -> AsyncIterator[Stack]:
    """Run a stack on ``device`` answering for ``addresses`` until the block exits.

    Args:
        device: A ``PacketDevice`` (``TunDevice``, ``SimLink``, possibly wrapped in
            ``PcapDevice``).
        addresses: The stack's own IP addresses (the far side of the TUN device).
        store: Where flow state is made durable; ``MemoryStore()`` by default.
        config: TCP settings; MSS is derived from the device MTU.
        runtime_options: Passed to ``Runtime``: ``instance``, ``durability``,
            ``sources``, ``unclaimed_grace`` (seconds a restored stream waits for a
            listener or ``reattach`` before it is reset; 60), ``rng``, ``iss_secret``,
            ``md5_keys`` (TCP MD5 signature keys by peer address or network, RFC 2385:
            ``{"198.18.0.1": b"secret"}``; a BGP peer's ``password``).
    """
    runtime = Runtime(
        device,
        store or MemoryStore(),
        addresses,
        config=config,
        **runtime_options,  # type: ignore[arg-type]
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(runtime.run)
        stack = Stack(runtime, nursery)
        try:
            yield stack
            # What the block's last calls left goes out before the stack stops -- a
            # stream's aclose() returns before its FIN leaves, as a socket's close()
            # does; a kernel would send it after the program ended, this stack cannot.
            with trio.move_on_after(FLUSH_ON_EXIT):
                await runtime.flush()
        finally:
            nursery.cancel_scope.cancel()
