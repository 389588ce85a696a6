"""``Listener``: accepted connections of one port, as a ``trio.abc.Listener[Stream]``."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import trio

from .stream import Stream

if TYPE_CHECKING:
    from ..stack.flows import Flow
    from ..stack.runtime import Listener as _RuntimeListener
    from ..stack.runtime import Runtime


class Listener(trio.abc.Listener[Stream]):
    """Accepts connections that completed the three-way handshake on one port."""

    def __init__(self, runtime: Runtime, inner: _RuntimeListener) -> None:
        self._runtime = runtime
        self._inner = inner

    @property
    def port(self) -> int:
        return self._inner.port

    async def accept(self) -> Stream:
        inner = self._inner
        await trio.lowlevel.checkpoint_if_cancelled()
        parked = False  # park() is a full checkpoint: one is all accept() owes
        while True:
            if inner.closed:
                raise trio.ClosedResourceError("this listener was closed")
            while inner.queue:
                flow = inner.queue.popleft()
                if flow.takeable:
                    if not parked:
                        await trio.lowlevel.cancel_shielded_checkpoint()
                    return Stream(self._runtime, flow)
            await inner.lot.park()
            parked = True

    def deliver_to(self, start: Callable[[Stream], None] | None) -> None:
        """Hand every established connection to ``start`` (a sync callback, called by
        the runtime as the handshake completes) instead of queueing it for ``accept``.

        ``Stack.serve`` starts its handler task there: one task hop less per
        connection than an accept loop. Connections already queued go first;
        ``None`` goes back to queueing.
        """
        inner = self._inner
        if start is None:
            inner.deliver = None
            return
        runtime = self._runtime

        def deliver(flow: Flow) -> None:
            start(Stream(runtime, flow))

        while inner.queue:
            flow = inner.queue.popleft()
            if flow.takeable:
                deliver(flow)
        inner.deliver = deliver

    async def aclose(self) -> None:
        self._inner.deliver = None
        self._runtime.close_listener(self._inner)
        await trio.lowlevel.checkpoint()
