"""An answer sent with its input's commit (``send_all_and_commit``, a transaction)
carries the ACK that commit moves: with ``ack-on-commit`` the ACK of a request moves
only with its commit, and the answer used to leave first, with the older ACK, leaving
the new one to the delayed-ACK timer (~20 ms a round for a client whose Nagle waits for
it). Over a simulated network, on trio's fake clock."""

from __future__ import annotations

import random

import pytest
import trio
import trio.testing

from stcp_framework import MemoryStore, Stack, Stream, open_stack
from stcp_framework.link.sim import SimNetwork, TapEvent
from stcp_framework.wire.packet import parse_packet_untrusted
from stcp_framework.wire.seq import Seq, seq_add

CLIENT, SERVER, PORT = "198.18.0.1", "198.18.0.2", 7
REQUEST = b"0123456789"


async def echo(stream: Stream) -> None:
    while data := await stream.receive_some():
        await stream.send_all_and_commit(data)


async def echo_then_commit(stream: Stream) -> None:
    """A level-2 app's natural order: answer, then commit what it answered."""
    while data := await stream.receive_some():
        await stream.send_all(data, wait_durable=False)
        await stream.commit()


async def echo_by_transaction(stream: Stream, stack: Stack) -> None:
    while data := await stream.receive_some():
        txn = stack.transaction()
        txn.send(stream, data)
        txn.commit(stream)
        await txn.apply()


@pytest.mark.parametrize("durability", ["ack-on-commit", "strict"])
@pytest.mark.parametrize("how", ["send_all_and_commit", "transaction", "send_then_commit"])
async def test_the_answer_acknowledges_its_request(
    autojump_clock: trio.testing.MockClock, durability: str, how: str
) -> None:
    answers: list[tuple[int, int]] = []  # (SEG.SEQ, SEG.ACK) of the server's data
    acks: list[int] = []  # SEG.ACK of every server segment

    def tap(event: TapEvent) -> None:
        if event.phase == "send" and event.src == SERVER:
            seg = parse_packet_untrusted(event.packet).tcp
            acks.append(seg.ack)
            if seg.payload:
                answers.append((seg.seq, seg.ack))

    net = SimNetwork(11, tap=tap)
    async with (
        open_stack(net.attach(CLIENT), [CLIENT], rng=random.Random(2)) as client,
        open_stack(
            net.attach(SERVER),
            [SERVER],
            store=MemoryStore(),
            durability=durability,
            rng=random.Random(3),
        ) as server,
        trio.open_nursery() as nursery,
    ):
        if how == "transaction":

            async def handler(stream: Stream) -> None:
                await echo_by_transaction(stream, server)

        else:
            handler = echo if how == "send_all_and_commit" else echo_then_commit
        await nursery.start(lambda task_status: server.serve(
            handler, PORT, commit="manual", task_status=task_status
        ))  # fmt: skip
        stream = await client.connect(SERVER, PORT)
        sent_from = stream._flow.conn.tcb.snd_nxt  # the request's first SEQ
        for round_ in range(3):
            started = trio.current_time()
            await stream.send_all(REQUEST)
            got = b""
            while len(got) < len(REQUEST):
                got += await stream.receive_some()
            assert got == REQUEST
            assert trio.current_time() - started < 0.005, "an answer waited for a timer"
            acked = seq_add(Seq(sent_from), (round_ + 1) * len(REQUEST))
            assert acks[-1] == acked, (round_, acks)  # sent with the answer, not after a timer
            if how != "send_then_commit" or durability == "strict":
                assert answers[-1][1] == acked, (round_, answers)  # the answer carried it
        nursery.cancel_scope.cancel()


async def test_a_bad_commit_offset_sends_nothing(autojump_clock: trio.testing.MockClock) -> None:
    """Atomic means nothing happens either: the commit is checked before any send."""
    outcome: list[BaseException] = []

    async def handler(stream: Stream) -> None:
        data = await stream.receive_some()
        txn = server.transaction()
        txn.send(stream, data)
        txn.commit(stream, stream.read_offset + 1)  # beyond what was read
        try:
            await txn.apply()
        except ValueError as exc:
            outcome.append(exc)
        try:
            await stream.send_all_and_commit(data, offset=stream.read_offset + 1)
        except ValueError as exc:
            outcome.append(exc)
        await stream.send_all(b"end")

    net = SimNetwork(12)
    async with (
        open_stack(net.attach(CLIENT), [CLIENT], rng=random.Random(2)) as client,
        open_stack(
            net.attach(SERVER), [SERVER], store=MemoryStore(), rng=random.Random(3)
        ) as server,
        trio.open_nursery() as nursery,
    ):
        await nursery.start(lambda task_status: server.serve(
            handler, PORT, commit="manual", task_status=task_status
        ))  # fmt: skip
        stream = await client.connect(SERVER, PORT)
        await stream.send_all(REQUEST)
        assert await stream.receive_some() == b"end"  # and not REQUEST before it
        nursery.cancel_scope.cancel()
    assert [type(exc) for exc in outcome] == [ValueError, ValueError]
