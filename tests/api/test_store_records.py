"""What a server leaves in its store: a closed connection's record is forgotten once
its last delta is stored -- not before (the late delta would make it again), and also
with async durability, where a short connection may close before its first commit
lands; a connection whose stored state the store lost is forgotten too (what is left
of it would be restored by the next start); and a store that refuses the stack's
credentials while it serves is waited out like an outage. Over a simulated network,
on trio's fake clock."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

import pytest
import trio
import trio.testing

from stcp_framework import MemoryStore, Stack, Stream, open_stack
from stcp_framework.link.sim import SimNetwork
from stcp_framework.store.base import FlowDelta, StoreRefused

CLIENT, SERVER, PORT = "198.18.0.1", "198.18.0.2", 7


class SlowStore(MemoryStore):
    """Commits take 50 ms of (virtual) time; ``refusing``: they raise ``StoreRefused``
    (a password Redis no longer takes) instead."""

    refusing = False

    async def commit(self, batch: Sequence[FlowDelta]) -> None:
        await trio.sleep(0.05)
        if self.refusing:
            raise StoreRefused("commit: Redis refused the credentials (for the test)")
        await super().commit(batch)


async def echo(stream: Stream) -> None:
    while data := await stream.receive_some():
        await stream.send_all(data)
    await stream.aclose()


@asynccontextmanager
async def pair(store: MemoryStore, durability: str) -> AsyncIterator[tuple[Stack, Stack]]:
    net = SimNetwork(5)
    async with (
        open_stack(net.attach(CLIENT), [CLIENT], rng=random.Random(2)) as client,
        open_stack(
            net.attach(SERVER), [SERVER], store=store, durability=durability, rng=random.Random(3)
        ) as server,
        trio.open_nursery() as nursery,
    ):
        await nursery.start(server.serve, echo, PORT)
        yield client, server
        nursery.cancel_scope.cancel()


async def one_echo(client: Stack, data: bytes) -> bytes:
    stream = await client.connect(SERVER, PORT)
    await stream.send_all(data)
    await stream.send_eof()  # the client closes first: the server's side ends in LAST-ACK
    got = b""
    while chunk := await stream.receive_some():
        got += chunk
    await stream.aclose()
    return got


@pytest.mark.parametrize("durability", ["strict", "async"])
async def test_short_connections_leave_no_record(
    autojump_clock: trio.testing.MockClock, durability: str
) -> None:
    """Async: a connection whose last deltas were still queued when it closed used to
    be left in the store for good (its forget waited for nothing, or went first)."""
    store = SlowStore()
    async with pair(store, durability) as (client, server):
        async with trio.open_nursery() as nursery:
            for i in range(20):
                nursery.start_soon(one_echo, client, b"x%d" % i)
                await trio.sleep(0.01)
        await trio.sleep(2)
        assert not server.runtime.flows
        assert await store.list_flows() == []


async def test_a_flow_the_store_lost_is_reset_and_forgotten(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Its stored state went back to an older version (as Redis restarted from an older
    AOF): the next delta does not follow it, the connection is reset, and what the
    store held of it is removed, so that no later start restores it."""
    store = MemoryStore()
    async with pair(store, "strict") as (client, server):
        stream = await client.connect(SERVER, PORT)
        for _ in range(3):
            await stream.send_all(b"ping")
            assert await stream.receive_some() == b"ping"
        (flow_id,) = await store.list_flows()
        store._flows[flow_id].version -= 2  # the store lost its last two deltas
        await stream.send_all(b"ping")
        with pytest.raises(trio.BrokenResourceError):
            while await stream.receive_some():
                pass
        await trio.sleep(1)
        assert server.runtime.stats["flows_lost"] == 1
        assert await store.list_flows() == []


async def test_refused_credentials_while_serving_are_waited_out(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """At a start they stop the server (a setting to fix); once it serves, they are
    held through like an outage, and the connection goes on when Redis takes them."""
    store = SlowStore()
    async with pair(store, "strict") as (client, server):
        stream = await client.connect(SERVER, PORT)
        await stream.send_all(b"one")
        assert await stream.receive_some() == b"one"
        store.refusing = True
        await stream.send_all(b"two")
        with trio.move_on_after(3):
            await stream.receive_some()
            raise AssertionError("an echo left while its commit was refused")
        assert server.runtime.stats["store_unavailable"] >= 1
        store.refusing = False
        with trio.fail_after(2):
            assert await stream.receive_some() == b"two"
        await stream.aclose()
