"""A client stack and a serving server stack over one simulated network, for API tests."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager

import trio

from stcp_framework import MemoryStore, Stack, Stream, TcpConfig, open_stack
from stcp_framework.link.sim import SimNetwork
from stcp_framework.store.base import FlowDelta, StoreUnavailable

CLIENT, SERVER = "198.18.0.1", "198.18.0.2"


@asynccontextmanager
async def served_pair(
    net: SimNetwork,
    store: MemoryStore,
    handler: Callable[[Stream], Awaitable[object]],
    *,
    port: int,
    commit: str,
    config: TcpConfig | None = None,
) -> AsyncIterator[Stack]:
    """The client stack, while the server (``store``, ``config``, fixed seeds) serves
    ``handler``."""
    async with (
        open_stack(net.attach(CLIENT), [CLIENT], rng=random.Random(2), iss_secret=b"c") as client,
        open_stack(
            net.attach(SERVER),
            [SERVER],
            store=store,
            config=config,
            rng=random.Random(3),
            iss_secret=b"s",
        ) as server,
        trio.open_nursery() as nursery,
    ):
        await nursery.start(
            lambda task_status: server.serve(handler, port, commit=commit, task_status=task_status)
        )
        yield client
        nursery.cancel_scope.cancel()


class OutageStore(MemoryStore):
    """A MemoryStore that refuses commits while ``down`` (G7: the stack holds them)."""

    down = False

    async def commit(self, batch: Sequence[FlowDelta]) -> None:
        if self.down:
            raise StoreUnavailable("down for the test")
        await super().commit(batch)
