"""Async durability (write-behind) under a store that cannot keep up: rounds wait once
``ASYNC_BACKLOG_MAX`` bytes of payload are queued for it, so the queue -- and every
commit -- stays bounded instead of holding every byte sent meanwhile."""

from __future__ import annotations

import random
import zlib
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

import trio
import trio.testing

from stcp_framework import MemoryStore, Stack, Stream, open_stack
from stcp_framework.link.sim import SimNetwork
from stcp_framework.stack.runtime import ASYNC_BACKLOG_MAX
from stcp_framework.store.base import FlowDelta, payload_bytes

CLIENT, SERVER, PORT = "198.18.0.1", "198.18.0.2", 19
SIZE = 96 << 20


class SlowStore(MemoryStore):
    """A MemoryStore whose commits take 50 ms of (virtual) time; records their sizes."""

    def __init__(self) -> None:
        super().__init__()
        self.sizes: list[int] = []

    async def commit(self, batch: Sequence[FlowDelta]) -> None:
        self.sizes.append(payload_bytes(batch))
        await trio.sleep(0.05)
        await super().commit(batch)


@asynccontextmanager
async def async_pair(
    net: SimNetwork, store: MemoryStore
) -> AsyncIterator[tuple[Stack, Stack, trio.Nursery]]:
    """A client stack and an async-durability server stack on ``net``, and a nursery."""
    async with (
        open_stack(net.attach(CLIENT), [CLIENT], rng=random.Random(2)) as client,
        open_stack(
            net.attach(SERVER), [SERVER], store=store, durability="async", rng=random.Random(3)
        ) as server,
        trio.open_nursery() as nursery,
    ):
        yield client, server, nursery


async def test_the_queue_for_a_slow_store_stays_bounded(
    autojump_clock: trio.testing.MockClock,
) -> None:
    net = SimNetwork(3)
    store = SlowStore()
    block = random.Random(4).randbytes(1 << 20)
    received = crc = expected_crc = 0
    for _ in range(SIZE // len(block)):
        expected_crc = zlib.crc32(block, expected_crc)

    async def source(stream: Stream) -> None:
        for _ in range(SIZE // len(block)):
            await stream.send_all(block)
        await stream.send_eof()
        await trio.sleep_forever()

    async with async_pair(net, store) as (client, server, nursery):
        await nursery.start(lambda task_status: server.serve(source, PORT, task_status=task_status))
        stream = await client.connect(SERVER, PORT)
        with trio.fail_after(600):
            while data := await stream.receive_some(1 << 20):
                received += len(data)
                crc = zlib.crc32(data, crc)
        waits = server.runtime.stats["async_backlog_waits"]
        nursery.cancel_scope.cancel()
    assert received == SIZE
    assert crc == expected_crc
    # (without the back-pressure: 2 commits here, the largest of 70 MB)
    assert max(store.sizes) <= ASYNC_BACKLOG_MAX + (4 << 20)  # the bound and one round
    assert waits > 0


async def test_deltas_without_payload_count_against_the_queue_too(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A level-1 reader that keeps up makes deltas with no payload (the bytes it read
    are not stored), each holding state a crash would lose. Through a store outage they
    count ``ASYNC_DELTA_WEIGHT`` each, and the rounds come to wait: the queue stops
    growing (it grew ~100 deltas a second for as long as the outage lasted, while ACKs
    went on leaving: a review found it, twenty-second session)."""
    from api_helpers import OutageStore

    from stcp_framework.stack.runtime import ASYNC_DELTA_WEIGHT

    net = SimNetwork(5)
    store = OutageStore()

    async def reader(stream: Stream) -> None:
        while await stream.receive_some(65536):
            pass

    async with async_pair(net, store) as (client, server, nursery):
        await nursery.start(server.serve, reader, PORT)
        stream = await client.connect(SERVER, PORT)

        async def pump() -> None:
            while True:
                await stream.send_all(bytes(1000))
                await trio.sleep(0.01)

        nursery.start_soon(pump)
        await trio.sleep(0.5)
        store.down = True
        runtime = server.runtime
        limit = ASYNC_BACKLOG_MAX // ASYNC_DELTA_WEIGHT
        for _ in range(30):
            await trio.sleep(5)
            assert len(runtime._uncommitted) <= limit + 10
        assert runtime.stats["async_backlog_waits"] >= 1
        store.down = False
        await trio.sleep(5)
        assert runtime._uncommitted == []
        nursery.cancel_scope.cancel()
