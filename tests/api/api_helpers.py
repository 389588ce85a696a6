"""A client stack and a serving server stack over one simulated network, for API tests."""

from __future__ import annotations

import functools
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any

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


@asynccontextmanager
async def server_life(
    net: SimNetwork,
    store: MemoryStore,
    handler: Callable[[Stream], Awaitable[object]],
    *,
    seed: int,
    port: int,
    commit: str = "auto",
    **options: Any,
) -> AsyncIterator[Stack]:
    """One life of a server at ``SERVER`` serving ``handler`` on ``port`` (``options``
    go to ``open_stack``): leaving the block crashes it -- only the store survives."""
    link = net.attach(SERVER)
    try:
        async with (
            open_stack(link, [SERVER], store=store, rng=random.Random(seed), **options) as stack,
            trio.open_nursery() as nursery,
        ):
            await nursery.start(functools.partial(stack.serve, handler, port, commit=commit))
            yield stack
            nursery.cancel_scope.cancel()
    finally:
        await link.aclose()


class OutageStore(MemoryStore):
    """A MemoryStore that refuses commits while ``down`` (G7: the stack holds them), and
    forgets while ``forgets_down``."""

    down = False
    forgets_down = False

    async def commit(self, batch: Sequence[FlowDelta]) -> None:
        if self.down:
            raise StoreUnavailable("down for the test")
        await super().commit(batch)

    async def forget_many(self, items: Sequence[tuple[str, int]]) -> list[str]:
        if self.forgets_down:
            raise StoreUnavailable("down for the test")
        return await super().forget_many(items)
