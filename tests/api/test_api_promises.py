"""Promises of the API a library user found broken (eighteenth session): a transaction
(``send_all_and_commit``, ``Stack.transaction``) takes one sender at a time on a stream,
as ``send_all``, the streams of its own stack only, and is applied once; a commit
without ``state`` keeps the stream's state (a relay keeps its upstream's ``flow_id``
there); a commit on a connection that was reset says so; leaving ``open_stack`` sends
what the last calls left; ``connect`` checks its port and says who refused. Over a
simulated network, on trio's fake clock."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio
import trio.testing

from stcp_framework import MemoryStore, Stack, Stream, TcpConfig, open_stack
from stcp_framework.errors import ConnectionRefused, StcpConfigError
from stcp_framework.link.sim import SimNetwork
from stcp_framework.testing import RestartableServer

CLIENT, SERVER, BACKEND, PORT = "198.18.0.1", "198.18.0.2", "198.18.0.3", 7
SMALL = TcpConfig(send_buffer_size=64 * 1024, recv_buffer_size=64 * 1024)


@asynccontextmanager
async def connected() -> AsyncIterator[tuple[Stack, Stack, Stream, Stream]]:
    """(client stack, server stack, client stream, server stream), manual commits."""
    net = SimNetwork(3)
    async with (
        open_stack(net.attach(CLIENT), [CLIENT], rng=random.Random(2), config=SMALL) as client,
        open_stack(
            net.attach(SERVER), [SERVER], store=MemoryStore(), rng=random.Random(3), config=SMALL
        ) as server,
    ):
        listener = server.listen(PORT, commit="manual")
        ours = await client.connect(SERVER, PORT)
        theirs = await listener.accept()
        yield client, server, ours, theirs


async def exchange(ours: Stream, theirs: Stream, data: bytes) -> None:
    """``data`` from the client's stream, read at the server's."""
    await ours.send_all(data)
    assert await theirs.receive_some() == data


async def test_a_transaction_waits_its_turn_behind_a_send_all(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """(Its bytes landed in the middle of the other task's.)"""
    async with connected() as (_, server, ours, theirs):
        await exchange(ours, theirs, b"q")
        async with trio.open_nursery() as nursery:
            nursery.start_soon(theirs.send_all, b"A" * 300_000)  # blocks on the window
            await trio.sleep(0.05)
            with pytest.raises(trio.BusyResourceError):
                await theirs.send_all_and_commit(b"B" * 10)
            txn = server.transaction()
            txn.send(theirs, b"B" * 10)
            with pytest.raises(trio.BusyResourceError):
                await txn.apply()
            got = b""
            while len(got) < 300_000:
                got += await ours.receive_some()
        assert got == b"A" * 300_000


async def test_a_transaction_takes_only_its_own_stack_s_streams(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """(A stream of another stack got a delta out of its order, and was lost.)"""
    async with connected() as (client, _server, ours, theirs):
        txn = client.transaction()
        with pytest.raises(ValueError, match="belongs to another stack"):
            txn.send(theirs, b"Z")
        with pytest.raises(ValueError, match="belongs to another stack"):
            txn.commit(theirs)
        await ours.send_all(b"still fine")
        assert await theirs.receive_some() == b"still fine"


async def test_a_transaction_is_applied_once_and_an_empty_one_checkpoints(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with connected() as (_, server, ours, theirs):
        txn = server.transaction()
        txn.send(theirs, b"once")
        await txn.apply()
        with pytest.raises(RuntimeError, match="applied already"):
            await txn.apply()
        with pytest.raises(RuntimeError, match="applied already"):
            txn.send(theirs, b"again")
        assert await ours.receive_some() == b"once"
        with trio.testing.assert_checkpoints():
            await server.transaction().apply()


async def test_a_commit_without_state_keeps_the_state(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """As a relay does: its upstream's flow_id stored once, then commits that only move
    the offset -- through ``commit``, ``commit_nowait`` and transactions."""
    async with connected() as (_, server, ours, theirs):
        await exchange(ours, theirs, b"abcdef")
        await theirs.commit(2, state=b"upstream-id")
        await theirs.commit(3)
        theirs.commit_nowait(4)
        txn = server.transaction()
        txn.commit(theirs, 5)
        await txn.apply()
        await theirs.send_all_and_commit(b"x")
        assert theirs.state == b"upstream-id" and theirs.commit_offset == 6
        record = server.runtime.store.load_sync(theirs.flow_id)  # type: ignore[attr-defined]
        assert record is not None and record.app_state == b"upstream-id"
        await theirs.commit(state=None)  # None clears it
        assert theirs.state is None


async def test_a_commit_on_a_reset_connection_raises(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Like every other call on it (it returned as if durable)."""
    async with connected() as (_, _server, ours, theirs):
        await exchange(ours, theirs, b"abc")
        ours._flow.conn.app_abort(ours._runtime.now())  # the client resets
        ours._runtime.touch(ours._flow)
        await trio.sleep(0.1)
        with pytest.raises(trio.BrokenResourceError):
            await theirs.commit()
        with pytest.raises(trio.BrokenResourceError):
            theirs.commit_nowait()


async def test_leaving_open_stack_right_after_aclose_still_sends_the_fin(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """``aclose()`` returns before its FIN leaves, as a socket's close() does; the block
    ending then used to stop the stack first, and the peer stayed ESTABLISHED."""
    net = SimNetwork(4)
    async with open_stack(
        net.attach(SERVER), [SERVER], store=MemoryStore(), rng=random.Random(3)
    ) as server:
        listener = server.listen(PORT)
        async with open_stack(net.attach(CLIENT), [CLIENT], rng=random.Random(2)) as client:
            ours = await client.connect(SERVER, PORT)
            theirs = await listener.accept()
            await ours.send_all(b"bye")
            await ours.aclose()
        with trio.fail_after(1):
            assert await theirs.receive_some() == b"bye"
            assert await theirs.receive_some() == b""  # the FIN came


async def test_connect_checks_the_port_and_names_who_refused(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with connected() as (client, _server, _ours, _theirs):
        for port in (0, 70000):
            with pytest.raises(StcpConfigError, match=r"not in 1\.\.65535"):
                await client.connect(SERVER, port)
        with pytest.raises(ConnectionRefused, match=r"198\.18\.0\.2:9 refused"):
            await client.connect(SERVER, 9)  # no listener there


async def test_a_restored_outbound_stream_goes_to_reattach_not_to_a_listener(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A listener on a port that is also an outbound connection's local port took that
    connection's restored stream as if it were inbound (the record now says who sent
    the first SYN: ``Tcb.active_open``)."""
    net = SimNetwork(6)
    flow_ids: list[str] = []
    local_ports: list[int] = []
    outcome: dict[str, object] = {}
    connected, done = trio.Event(), trio.Event()

    async def app(stack: Stack) -> None:
        if not flow_ids:  # the first incarnation: connects out, then waits
            upstream = await stack.connect(BACKEND, PORT, commit="manual")
            flow_ids.append(upstream.flow_id)
            local_ports.append(upstream.local_address[1])
            await upstream.send_all(b"x")
            connected.set()
            await trio.sleep_forever()
        listener = stack.listen(local_ports[0], commit="manual")
        with trio.move_on_after(0.2):
            outcome["listener took"] = await listener.accept()
        outcome["reattached"] = stack.reattach(flow_ids[0])
        done.set()
        await trio.sleep_forever()

    async def echo_backend(stream: Stream) -> None:
        while data := await stream.receive_some():
            await stream.send_all(data)

    server = RestartableServer(net, SERVER, app, store=MemoryStore(), downtime=0.05)
    async with (
        open_stack(net.attach(BACKEND), [BACKEND], rng=random.Random(5)) as backend,
        trio.open_nursery() as nursery,
    ):
        await nursery.start(backend.serve, echo_backend, PORT)
        await nursery.start(server.run)
        await connected.wait()
        await trio.sleep(0.1)
        server.crash()
        with trio.fail_after(2):
            await done.wait()
        nursery.cancel_scope.cancel()
    assert "listener took" not in outcome
    reattached = outcome["reattached"]
    assert isinstance(reattached, Stream) and reattached.recovered
    assert reattached.flow_id == flow_ids[0]
