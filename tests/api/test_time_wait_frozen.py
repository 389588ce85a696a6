"""A server that closes first keeps its TIME-WAIT connections as compact records
(tcp/timewait.py): frozen once quiet, rebuilt when a segment comes, replaced by a new
SYN (RFC 6191) and ended at 2*MSL without a rebuild -- over a simulated network, on
trio's fake clock. After its connection closed, the client's address is taken over by
a scripted peer (a raw link) that sends the segments."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio
import trio.testing

from stcp_framework import MemoryStore, Stream, open_stack
from stcp_framework.link.sim import SimLink, SimNetwork, TapEvent
from stcp_framework.stack.flows import Flow
from stcp_framework.stack.runtime import Runtime
from stcp_framework.tcp.state import TcpState
from stcp_framework.wire.packet import build_packet, parse_packet_untrusted
from stcp_framework.wire.seq import Seq, seq_add
from stcp_framework.wire.tcp import ACK, FIN, RST, SYN, TcpOptions

CLIENT, SERVER = "198.18.0.1", "198.18.0.2"
PORT = 13


async def say_bye(stream: Stream) -> None:
    await stream.send_all(b"bye\n")
    await stream.aclose()  # the server closes first: its side ends in TIME-WAIT


@asynccontextmanager
async def server_in_time_wait(
    net: SimNetwork, store: MemoryStore
) -> AsyncIterator[tuple[Runtime, Flow]]:
    """A server whose one connection (the server closed first) is in TIME-WAIT, and
    the client's address free for a raw link."""
    async with (
        open_stack(net.attach(SERVER), [SERVER], store=store, rng=random.Random(3)) as server,
        trio.open_nursery() as nursery,
    ):
        await nursery.start(server.serve, say_bye, PORT)
        client_link = net.attach(CLIENT)
        async with open_stack(client_link, [CLIENT], rng=random.Random(2)) as client:
            stream = await client.connect(SERVER, PORT)
            assert await stream.receive_some() == b"bye\n"
            assert await stream.receive_some() == b""
            await stream.aclose()
            await trio.sleep(0.1)
        await client_link.aclose()
        (flow,) = server.runtime.flows.values()
        yield server.runtime, flow
        nursery.cancel_scope.cancel()


async def replies(raw: SimLink) -> list[tuple[int, int, int]]:
    """(seq, ack, flags) of what reached the scripted peer within 0.5 s."""
    got: list[tuple[int, int, int]] = []
    with trio.move_on_after(0.5):
        while True:
            for buf in await raw.recv_batch(16):
                seg = parse_packet_untrusted(buf).tcp
                got.append((seg.seq, seg.ack, seg.flags))
    return got


async def test_time_wait_is_frozen_thawed_replaced_and_expires(
    autojump_clock: trio.testing.MockClock,
) -> None:
    client_fins: list[bytes] = []

    def tap(event: TapEvent) -> None:
        if event.phase == "send" and event.src == CLIENT:
            seg = parse_packet_untrusted(event.packet).tcp
            if seg.flags & FIN:
                client_fins.append(event.packet)

    net = SimNetwork(7, tap=tap)
    store = MemoryStore()
    async with server_in_time_wait(net, store) as (runtime, flow):
        assert isinstance(flow, Flow)
        assert flow.time_wait is not None  # frozen: no Connection held
        assert runtime.stats["time_wait_frozen"] == 1
        assert store.load_sync(flow.flow_id) is not None
        record = flow.time_wait
        tcb = record.tcb
        assert tcb.state is TcpState.TIME_WAIT

        # The client's FIN again (its ACK was "lost"): the rebuilt connection ACKs it,
        # restarts 2*MSL and is frozen again.
        raw = net.attach(CLIENT)
        await raw.send_batch([client_fins[-1]])
        assert await replies(raw) == [(tcb.snd_nxt, tcb.rcv_nxt, ACK)]
        assert flow.time_wait is not None and runtime.stats["time_wait_frozen"] == 2
        assert flow.time_wait.time_wait_at > record.time_wait_at

        # An RST that is not exactly at RCV.NXT gets a challenge ACK (RFC 5961 §3.2).
        key = flow.key
        ours, theirs = key[2], key[0]

        def packet(seq: int, ack: int, flags: int, options: TcpOptions) -> bytes:
            return bytes(
                build_packet(theirs, ours, key[1], key[3], seq, ack, flags, 65535, options, b"")
            )

        await raw.send_batch([packet(seq_add(tcb.rcv_nxt, 10), 0, RST, TcpOptions())])
        assert await replies(raw) == [(tcb.snd_nxt, tcb.rcv_nxt, ACK)]
        assert runtime.flows[key] is flow

        # 2*MSL passes: the flow ends without a rebuild, and the store forgets it.
        deadline = flow.time_wait.time_wait_at
        await trio.sleep_until(deadline + 1)
        assert key not in runtime.flows
        assert runtime.stats["time_wait_expired"] == 1
        assert flow.time_wait is not None  # never rebuilt
        assert store.load_sync(flow.flow_id) is None


async def test_a_new_syn_replaces_a_frozen_time_wait_flow(
    autojump_clock: trio.testing.MockClock,
) -> None:
    net = SimNetwork(8)
    async with server_in_time_wait(net, MemoryStore()) as (runtime, flow):
        record = flow.time_wait
        assert record is not None
        key = flow.key
        raw = net.attach(CLIENT)
        ts = record.tcb.ts_recent
        # RFC 6191 with timestamps: a SYN with a newer TSval opens a new incarnation.
        syn = build_packet(
            key[0],
            key[2],
            key[1],
            key[3],
            seq_add(record.tcb.rcv_nxt, -1000),
            0,
            SYN,
            65535,
            TcpOptions(mss=1460, timestamps=(seq_add(Seq(ts), 1000), 0)),
            b"",
        )
        await raw.send_batch([bytes(syn)])
        got = await replies(raw)
        assert [flags for _, _, flags in got] == [SYN | ACK]
        new = runtime.flows[key]
        assert new is not flow and new.conn.state is TcpState.SYN_RECEIVED
        assert flow.closed and flow.time_wait is not None  # dropped without a rebuild
