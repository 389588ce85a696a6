"""``Listener``: accepted connections of one port, as a ``trio.abc.Listener[Stream]``."""

from __future__ import annotations

from typing import TYPE_CHECKING

import trio

from .stream import Stream

if TYPE_CHECKING:
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
        while True:
            if inner.closed:
                raise trio.ClosedResourceError("this listener was closed")
            while inner.queue:
                flow = inner.queue.popleft()
                if not flow.closed:
                    await trio.lowlevel.cancel_shielded_checkpoint()
                    return Stream(self._runtime, flow)
            await inner.lot.park()

    async def aclose(self) -> None:
        self._runtime.close_listener(self._inner)
        await trio.lowlevel.checkpoint()
