"""A SYN flood fills a listener's backlog with half-open connections from addresses
that never answer; with SYN cookies (the default, as Linux's ``tcp_syncookies = 1``)
the listener still answers a real client, keeps nothing for it until its ACK, and the
connection works -- with the options the cookie carried. Over a simulated network."""

from __future__ import annotations

import ipaddress
import random

import pytest
import trio
import trio.testing

from stcp_framework import MemoryStore, open_stack
from stcp_framework.link.sim import SimLink, SimNetwork
from stcp_framework.tcp.state import TcpState
from stcp_framework.wire.packet import build_packet, parse_packet_untrusted
from stcp_framework.wire.tcp import ACK, SYN, TcpOptions

CLIENT, SERVER, FLOODER, PORT = "198.18.0.1", "198.18.0.2", "198.18.0.66", 7
BACKLOG = 4


async def flood(link: SimLink, count: int) -> None:
    """``count`` SYNs from the flooder's address, which never completes one."""
    src, dst = (ipaddress.ip_address(a).packed for a in (FLOODER, SERVER))
    options = TcpOptions(mss=1460, wscale=7, sack_permitted=True, timestamps=(1, 0))
    await link.send_batch(
        [
            build_packet(src, dst, 20000 + i, PORT, 1000 * i, 0, SYN, 65535, options, b"")
            for i in range(count)
        ]
    )


@pytest.mark.parametrize("cookies", [True, False])
async def test_a_client_gets_through_a_syn_flood_with_cookies(
    cookies: bool, autojump_clock: trio.testing.MockClock
) -> None:
    net = SimNetwork(3, delay=0.001)
    flooder = net.attach(FLOODER)  # (it never reads: the SYN-ACKs pile up unanswered)
    async with (
        open_stack(net.attach(CLIENT), [CLIENT], rng=random.Random(1)) as client,
        open_stack(
            net.attach(SERVER),
            [SERVER],
            rng=random.Random(2),
            syn_backlog=BACKLOG,
            syn_cookies=cookies,
        ) as server,
    ):
        listener = server.listen(PORT)
        await flood(flooder, 3 * BACKLOG)
        await trio.sleep(0.1)
        runtime = server.runtime
        assert len(runtime.flows) == BACKLOG  # the half-open ones, no more
        assert runtime.stats["syn_cookies_sent"] == (2 * BACKLOG if cookies else 0)
        if not cookies:
            with trio.move_on_after(5):
                await client.connect(SERVER, PORT)
                pytest.fail("connected through a full backlog without cookies")
            return
        with trio.fail_after(5):
            stream = await client.connect(SERVER, PORT)
            served = await listener.accept()
        assert runtime.stats["syn_cookies_accepted"] == 1
        assert served.tcp_state is TcpState.ESTABLISHED
        tcb = served._flow.conn.tcb
        mine = stream._flow.conn.tcb
        # what the cookie carried: the client's MSS, window scale, SACK, timestamps
        assert (tcb.sack_permitted, tcb.timestamps) == (True, True)
        assert tcb.snd_wscale == mine.rcv_wscale and tcb.rcv_wscale == mine.snd_wscale
        assert tcb.snd_wscale > 0
        payload = bytes(range(256)) * 1000
        async with trio.open_nursery() as nursery:
            nursery.start_soon(stream.send_all, payload)
            got = bytearray()
            with trio.fail_after(10):
                while len(got) < len(payload):
                    got += await served.receive_some(65536)
        assert got == payload
        await served.send_all(b"answer")
        with trio.fail_after(5):
            assert await stream.receive_some() == b"answer"
        record = server.runtime.store.load_sync(served.flow_id)  # type: ignore[attr-defined]
        assert record is not None  # stored, as any connection, once established
        # The flow gone (as after a lost store record): the client's next segment is
        # for no flow, while cookies are still recent -- it must get a RST, not come
        # back as a connection from the middle of its stream (both its numbers moved
        # alike, which a cookie summed as Linux's would take).
        runtime._remove_flow(served._flow)
        await stream.send_all(b"more")
        with pytest.raises(trio.BrokenResourceError), trio.fail_after(5):
            await stream.receive_some()
        assert runtime.stats["syn_cookies_accepted"] == 1
        assert runtime.stats["rst_sent"] >= 1


async def test_a_burst_past_the_backlog_gets_cookies_and_every_client_is_served(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Five clients at once on a backlog of two: three get cookies. An ACK of a cookie
    that finds the accept queue full is dropped (Linux's choice); the client's request
    carries the ACK again, and it gets in once the queue has room."""
    net = SimNetwork(4, delay=0.001)
    async with (
        open_stack(net.attach(CLIENT), [CLIENT], rng=random.Random(1)) as client,
        open_stack(net.attach(SERVER), [SERVER], rng=random.Random(2)) as server,
        trio.open_nursery() as nursery,
    ):
        listener = server.listen(PORT, backlog=2)
        answers: dict[int, bytes] = {}

        async def one(i: int) -> None:
            stream = await client.connect(SERVER, PORT)
            await stream.send_all(b"request %d" % i)
            answers[i] = await stream.receive_some()

        async def serve() -> None:
            while True:
                served = await listener.accept()
                await served.send_all(b"answer to " + await served.receive_some())

        nursery.start_soon(serve)
        with trio.fail_after(20):
            async with trio.open_nursery() as clients:
                for i in range(5):
                    clients.start_soon(one, i)
        nursery.cancel_scope.cancel()
    assert answers == {i: b"answer to request %d" % i for i in range(5)}
    assert server.runtime.stats["syn_cookies_sent"] == 3
    assert server.runtime.stats["syn_cookies_accepted"] == 3


async def test_a_cookie_sent_before_a_crash_is_taken_by_the_restarted_server(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The cookie key is the store's ``stack_secret``, not the process's: a server
    started again on the same store takes the ACK of a cookie its predecessor sent
    (a cookie leaves nothing behind to restore), where a new key would answer the
    client's first data with a RST. A scripted client on a raw link."""
    net = SimNetwork(5, delay=0.001)
    store = MemoryStore()
    flooder = net.attach(FLOODER)
    raw = net.attach(CLIENT)
    src, dst = (ipaddress.ip_address(a).packed for a in (CLIENT, SERVER))
    irs = 77_000

    def packet(seq: int, ack: int, flags: int, options: TcpOptions, data: bytes = b"") -> bytes:
        return bytes(build_packet(src, dst, 40000, PORT, seq, ack, flags, 65535, options, data))

    async def next_segment() -> tuple[int, int, int, tuple[int, int] | None, bytes]:
        with trio.fail_after(1):
            seg = parse_packet_untrusted((await raw.recv_batch(1))[0]).tcp
        return seg.seq, seg.ack, seg.flags, seg.options.timestamps, bytes(seg.payload)

    first_link = net.attach(SERVER)
    async with open_stack(first_link, [SERVER], store=store, rng=random.Random(2)) as first:
        first.listen(PORT, backlog=1)
        await flood(flooder, 1)  # the backlog is full: the next SYN gets a cookie
        await trio.sleep(0.1)
        syn_options = TcpOptions(mss=1460, wscale=7, sack_permitted=True, timestamps=(500, 0))
        await raw.send_batch([packet(irs, 0, SYN, syn_options)])
        iss_plus_1, ack, flags, ts, _ = await next_segment()
        iss_plus_1 = (iss_plus_1 + 1) & 0xFFFFFFFF
        assert (flags, ack) == (SYN | ACK, irs + 1)
        assert first.runtime.stats["syn_cookies_sent"] == 1
        assert ts is not None
    await first_link.aclose()  # the server is gone: nothing of the cookie was kept

    async with open_stack(
        net.attach(SERVER), [SERVER], store=store, rng=random.Random(3)
    ) as second:
        listener = second.listen(PORT, backlog=1)
        await trio.sleep(1)  # the client's ACK comes late, after the restart
        data_options = TcpOptions(timestamps=(501, ts[0]))
        await raw.send_batch([packet(irs + 1, iss_plus_1, ACK, data_options, b"hello")])
        with trio.fail_after(1):
            served = await listener.accept()
            assert await served.receive_some() == b"hello"
        seq, ack, flags, _, _ = await next_segment()
        assert (seq, ack, flags) == (iss_plus_1, irs + 6, ACK)  # no RST
        assert second.runtime.stats["syn_cookies_accepted"] == 1
        assert served.tcp_state is TcpState.ESTABLISHED
