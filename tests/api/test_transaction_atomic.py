"""A transaction is durable as a whole (G4): a relay that forwards what it read from its
upstream and commits the upstream in one transaction must never find, at any durable
point, an upstream commit whose bytes are not in the downstream's send buffer -- a crash
there loses them: the upstream will not send them again and nobody else has them.

Found by a review (nineteenth session): a reader of the downstream stream that had just
taken bytes held that flow out of the next round (``Runtime.hold``, so that its answer
joins the round), and a transaction applied meanwhile went out in two group commits, the
upstream's commit first. Over a simulated network, on trio's fake clock; the store checks
the relay's invariant after every group commit.
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

import pytest
import trio
import trio.testing

from stcp_framework import MemoryStore, Stack, Stream, open_stack
from stcp_framework.link.sim import SimNetwork
from stcp_framework.stack.runtime import PARTNER_GRACE
from stcp_framework.store.base import FlowDelta
from stcp_framework.tcp.state import TcpState

CLIENT, SERVER, PORT = "198.18.0.1", "198.18.0.2", 7


class RelayCheckingStore(MemoryStore):
    """After every group commit: what the upstream committed as consumed was forwarded,
    all of it, into the downstream's stored send stream (``broken`` lists the misses)."""

    def __init__(self) -> None:
        super().__init__()
        self.relay: tuple[str, str] | None = None  # (upstream, downstream) flow ids
        self.broken: list[tuple[int, int]] = []

    async def commit(self, batch: Sequence[FlowDelta]) -> None:
        await super().commit(batch)
        if self.relay is None:
            return
        upstream, downstream = (self.load_sync(flow_id) for flow_id in self.relay)
        consumed = upstream.commit_offset if upstream is not None else 0
        forwarded = downstream.tx_offset + len(downstream.tx) if downstream is not None else 0
        if consumed != forwarded:
            self.broken.append((consumed, forwarded))


async def relay_while_the_downstream_is_read(seed: int, transactions: int) -> RelayCheckingStore:
    """The server forwards ``transactions`` reads of its upstream connection to its
    downstream one, while another task reads (and commits) what the downstream's peer
    sends: that task's reads hold the downstream flow now and then."""
    store = RelayCheckingStore()
    net = SimNetwork(seed, delay=0.001)
    async with (
        open_stack(net.attach(CLIENT), [CLIENT], rng=random.Random(seed)) as client,
        open_stack(
            net.attach(SERVER), [SERVER], store=store, rng=random.Random(seed + 1)
        ) as server,
        trio.open_nursery() as nursery,
    ):
        listener = server.listen(PORT, commit="manual")
        up_client = await client.connect(SERVER, PORT)
        upstream = await listener.accept()
        down_client = await client.connect(SERVER, PORT)
        downstream = await listener.accept()
        store.relay = (upstream.flow_id, downstream.flow_id)

        async def feed(stream: Stream) -> None:
            for _ in range(400):
                await stream.send_all(b"x" * 50)

        async def drain(stream: Stream) -> None:
            while await stream.receive_some(65536):
                pass

        async def read_and_commit(stream: Stream) -> None:
            while await stream.receive_some(7):
                await stream.commit()

        nursery.start_soon(feed, up_client)
        nursery.start_soon(feed, down_client)
        nursery.start_soon(drain, down_client)
        nursery.start_soon(read_and_commit, downstream)
        for _ in range(transactions):
            data = await upstream.receive_some(100)
            txn = server.transaction()
            txn.send(downstream, data)
            txn.commit(upstream)
            await txn.apply()
        nursery.cancel_scope.cancel()
    return store


@pytest.mark.parametrize("seed", [0, 1, 2])
async def test_a_relay_s_transactions_are_never_split_by_a_reader_of_the_downstream(
    seed: int, autojump_clock: trio.testing.MockClock
) -> None:
    store = await relay_while_the_downstream_is_read(seed, transactions=150)
    assert store.commits > 150
    assert store.broken == []


@asynccontextmanager
async def relay_pair(
    store: RelayCheckingStore,
) -> AsyncIterator[tuple[Stack, Stream, Stream, Stream, Stream]]:
    """A relay's two streams on one server, ``b"forward me"`` waiting on the upstream:
    yields the server, its upstream and downstream streams, and their client ends. The
    store checks the relay's invariant after every group commit."""
    net = SimNetwork(5, delay=0.001)
    async with (
        open_stack(net.attach(CLIENT), [CLIENT], rng=random.Random(5)) as client,
        open_stack(net.attach(SERVER), [SERVER], store=store, rng=random.Random(6)) as server,
    ):
        listener = server.listen(PORT, commit="manual")
        up_client = await client.connect(SERVER, PORT)
        upstream = await listener.accept()
        down_client = await client.connect(SERVER, PORT)
        downstream = await listener.accept()
        store.relay = (upstream.flow_id, downstream.flow_id)
        await up_client.send_all(b"forward me")
        yield server, upstream, downstream, up_client, down_client


async def forward(server: Stack, upstream: Stream, downstream: Stream, data: bytes) -> None:
    """What a relay does with what it read: send it on and commit it, in one transaction."""
    txn = server.transaction()
    txn.send(downstream, data)
    txn.commit(upstream)
    await txn.apply()


async def test_a_transaction_takes_a_held_flow_into_its_round(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The same, step by step: the downstream is held -- as a reader's ``receive_some``
    holds it between taking bytes and resuming -- when the transaction applies; the
    round takes both flows, and the transaction returns (before, the round left the held
    flow for the next one, and ``apply`` waited for it as long as the hold lasted)."""
    store = RelayCheckingStore()
    async with relay_pair(store) as (server, upstream, downstream, _, _):
        data = await upstream.receive_some()
        runtime = server.runtime
        flow = downstream._flow
        runtime.hold(flow)  # (what receive_some does; its release comes after the round)
        txn = server.transaction()
        txn.send(downstream, data)
        txn.commit(upstream)
        with trio.fail_after(1):
            await txn.apply()
        runtime.release(flow)
        record = store.load_sync(downstream.flow_id)
        assert record is not None and record.tx == b"forward me"
        assert runtime._links == [] and runtime._links_pending == []  # durable: forgotten
    assert store.broken == []


async def test_a_transaction_with_a_fenced_flow_lands_nowhere(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """G4 with G5: another instance has claimed the upstream (a newer epoch) when a
    relay's transaction forwards from it. The store refuses the upstream's delta; the
    downstream's must not land alone -- the new owner replays the upstream from its
    stored commit and would forward the same bytes a second time. The downstream goes
    with it, fenced off too (the new owner claims it next); before, the batch was
    retried without the upstream and the downstream's send became durable."""
    store = RelayCheckingStore()
    async with relay_pair(store) as (server, upstream, downstream, _, _):
        data = await upstream.receive_some()
        epoch = await store.next_epoch()  # another instance, claiming the upstream first
        assert await store.claim_many([upstream.flow_id], epoch) == [upstream.flow_id]
        with pytest.raises(trio.BrokenResourceError), trio.fail_after(1):
            await forward(server, upstream, downstream, data)
        stats = server.runtime.stats
        assert stats["flows_fenced"] == 2
        record = store.load_sync(downstream.flow_id)
        assert record is not None and record.tx == b""
        # The other instance (it listed both) takes the downstream too: it is its now.
        assert await store.claim_many([downstream.flow_id], epoch) == [downstream.flow_id]
        await trio.sleep(PARTNER_GRACE + 1)
        assert stats["partners_reset"] == 0
        assert store.load_sync(downstream.flow_id) is not None
    assert store.broken == []


async def test_a_partner_no_instance_took_over_is_reset_not_left_hanging(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The same, but the other instance started before the downstream existed: it never
    listed it, so no one would carry it on -- its peer would wait until its own timeouts.
    After ``PARTNER_GRACE`` the store still names us its owner: it is reset (from what it
    sent; the peer's challenge ACK, if any, meets no flow and gets an exact RST) and its
    record removed. Nothing of it was replayed: nothing is forwarded twice."""
    store = RelayCheckingStore()
    async with relay_pair(store) as (server, upstream, downstream, _, down_client):
        data = await upstream.receive_some()
        epoch = await store.next_epoch()
        assert await store.claim_many([upstream.flow_id], epoch) == [upstream.flow_id]
        with pytest.raises(trio.BrokenResourceError), trio.fail_after(1):
            await forward(server, upstream, downstream, data)
        with pytest.raises(trio.BrokenResourceError), trio.fail_after(PARTNER_GRACE + 5):
            await down_client.receive_some()  # reset, without a byte of the forward
        assert server.runtime.stats["partners_reset"] == 1
        assert store.load_sync(downstream.flow_id) is None
        assert store.load_sync(upstream.flow_id) is not None  # the other instance's
    assert store.broken == []


async def test_a_transaction_with_a_lost_flow_lands_the_rest(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The store lost the upstream's state (Redis went back to an older version of it):
    the upstream is reset and never replayed, so nothing can be forwarded twice; the
    downstream's part of the transaction lands, and the downstream goes on."""
    store = RelayCheckingStore()
    async with relay_pair(store) as (server, upstream, downstream, _, down_client):
        data = await upstream.receive_some()
        store._flows[upstream.flow_id].version -= 1  # the store lost its last delta
        with pytest.raises(trio.BrokenResourceError), trio.fail_after(1):
            await forward(server, upstream, downstream, data)
        stats = server.runtime.stats
        assert stats["flows_lost"] == 1 and stats["flows_fenced"] == 0
        record = store.load_sync(downstream.flow_id)
        assert record is not None and record.tx == b"forward me"
        with trio.fail_after(1):
            assert await down_client.receive_some() == b"forward me"
        await downstream.send_all(b"still here")
        assert server.runtime._links == []


async def test_a_transaction_that_commits_a_finished_stream_returns(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A relay forwards the last bytes of a stream whose connection has ended by then --
    both FINs exchanged, CLOSED -- and commits them. ``apply`` returns and the forward
    lands (found by the crash fuzz, seeds 2481073, 2488877, 2492354: the commit raised,
    or waited for ever, and the relay reset its client). The ended stream's record
    stays until that commit (G4: a crash before it replays the tail; seed 3018688),
    and goes with it."""
    store = RelayCheckingStore()
    async with relay_pair(store) as (server, upstream, downstream, up_client, down_client):
        store.relay = None  # (this forward runs the other way: no invariant to check)
        await down_client.send_all(b"the tail")
        await down_client.send_eof()
        data = b""
        while chunk := await downstream.receive_some():
            data += chunk
        await downstream.send_eof()  # its FIN: the peer closes too
        await down_client.aclose()
        await trio.sleep(1)
        assert downstream.tcp_state is TcpState.CLOSED
        assert downstream.flow_id in await store.list_flows()  # kept: "the tail" is not
        txn = server.transaction()  # committed yet
        txn.send(upstream, data)
        txn.commit(downstream)
        with trio.fail_after(1):
            await txn.apply()
        assert await up_client.receive_some() == b"the tail"
        record = store.load_sync(upstream.flow_id)
        assert record is not None and record.tx == b"the tail"
        await trio.sleep(1)
        assert downstream.flow_id not in await store.list_flows()  # committed: gone


async def test_a_transaction_that_commits_a_stream_its_peer_reset_returns(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A relay forwards what it read from a stream whose peer has reset it since: the
    reset stream's record is gone, so its commit is moot, and ``apply`` returns with the
    forward landed (it waited for ever: a review found it, twenty-second session)."""
    store = RelayCheckingStore()
    async with relay_pair(store) as (server, upstream, downstream, up_client, down_client):
        store.relay = None  # (this forward runs the other way: no invariant to check)
        await down_client.send_all(b"last words")
        data = await downstream.receive_some()
        await down_client.abort()  # a RST
        await trio.sleep(1)
        assert downstream.tcp_state is TcpState.CLOSED
        assert downstream.flow_id not in await store.list_flows()
        txn = server.transaction()
        txn.send(upstream, data)
        txn.commit(downstream)
        with trio.fail_after(1):
            await txn.apply()
        assert await up_client.receive_some() == b"last words"
