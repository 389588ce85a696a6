"""TCP MD5 signatures (RFC 2385) between two stacks over a simulated network: a signed
connection carries data both ways with every segment signed (and, as Linux does, no
timestamps); a segment without the right signature is dropped, counted and never
answered -- the SYN of a peer without the key, with another key, or signed to a stack
that expects no signature; and a restarted server's restored connection signs on.
Against Linux's own TCP_MD5SIG: tests/netns/test_stack_md5.py."""

from __future__ import annotations

import random
from contextlib import AbstractAsyncContextManager

import pytest
import trio
import trio.testing
from api_helpers import server_life

from stcp_framework import MemoryStore, Stack, Stream, open_stack
from stcp_framework.errors import StcpConfigError
from stcp_framework.link.sim import SimNetwork, TapEvent
from stcp_framework.stack.signatures import Md5Keys
from stcp_framework.wire.packet import parse_packet_untrusted
from stcp_framework.wire.tcp import RST

CLIENT, SERVER, PORT = "198.18.0.1", "198.18.0.2", 179
KEY = b"bgp-peer-password"


async def echo(stream: Stream) -> None:
    while data := await stream.receive_some():
        await stream.send_all(data)


class Wire:
    """What crossed the simulated network: (source, signed, timestamps, flags)."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, bool, bool, int]] = []

    def tap(self, event: TapEvent) -> None:
        if event.phase == "send":
            seg = parse_packet_untrusted(event.packet).tcp
            signed = seg.options.md5 is not None
            self.seen.append((event.src, signed, seg.options.timestamps is not None, seg.flags))


def server(
    net: SimNetwork, keys: dict[str, bytes | str] | None, store: MemoryStore, seed: int = 3
) -> AbstractAsyncContextManager[Stack]:
    """One life of an echo server (leaving the block crashes it: the store survives)."""
    return server_life(net, store, echo, seed=seed, port=PORT, md5_keys=keys)


async def test_a_signed_connection_signs_every_segment_both_ways(
    autojump_clock: trio.testing.MockClock,
) -> None:
    wire = Wire()
    net = SimNetwork(1, delay=0.001, tap=wire.tap)
    payload = random.Random(7).randbytes(300_000)
    async with (
        server(net, {"198.18.0.0/24": KEY.decode()}, MemoryStore()) as srv,
        open_stack(
            net.attach(CLIENT), [CLIENT], rng=random.Random(2), md5_keys={SERVER: KEY}
        ) as client,
    ):
        stream = await client.connect(SERVER, PORT)
        got = bytearray()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(stream.send_all, payload)
            with trio.fail_after(30):
                while len(got) < len(payload):
                    got += await stream.receive_some()
        assert got == payload
        tcb = stream._flow.conn.tcb
        assert (tcb.timestamps, tcb.sack_permitted) == (False, True)  # Linux's choice
        assert tcb.mss == stream._flow.conn.config.mss - 20  # the signature's 20 bytes
        for stack in (srv, client):
            stats = stack.runtime.stats
            assert not (stats["md5_failure"] or stats["md5_not_found"] or stats["md5_unexpected"])
    assert {src for src, *_ in wire.seen} == {CLIENT, SERVER}
    assert all(signed and not ts for _, signed, ts, _ in wire.seen)


@pytest.mark.parametrize(
    ("client_key", "server_key", "counter"),
    [
        (None, KEY, "md5_not_found"),
        (b"not the password", KEY, "md5_failure"),
        (KEY, None, "md5_unexpected"),
    ],
)
async def test_a_syn_without_the_right_signature_is_dropped_unanswered(
    client_key: bytes | None,
    server_key: bytes | None,
    counter: str,
    autojump_clock: trio.testing.MockClock,
) -> None:
    wire = Wire()
    net = SimNetwork(1, delay=0.001, tap=wire.tap)
    keys: dict[str, bytes | str] | None = None if server_key is None else {CLIENT: server_key}
    async with (
        server(net, keys, MemoryStore()) as srv,
        open_stack(
            net.attach(CLIENT),
            [CLIENT],
            rng=random.Random(2),
            md5_keys=None if client_key is None else {SERVER: client_key},
        ) as client,
    ):
        with trio.move_on_after(10) as waited:
            await client.connect(SERVER, PORT)
        assert waited.cancelled_caught  # never connected
        assert srv.runtime.stats[counter] >= 2  # the SYN and its retransmissions
        assert srv.runtime.flows == {}
    assert {src for src, *_ in wire.seen} == {CLIENT}  # no SYN-ACK, and no RST either
    assert not any(flags & RST for *_, flags in wire.seen)


async def test_a_restored_connection_signs_on(autojump_clock: trio.testing.MockClock) -> None:
    wire = Wire()
    net = SimNetwork(1, delay=0.001, tap=wire.tap)
    store = MemoryStore()
    keys: dict[str, bytes | str] = {CLIENT: KEY}
    async with open_stack(
        net.attach(CLIENT), [CLIENT], rng=random.Random(2), md5_keys={SERVER: KEY}
    ) as client:
        async with server(net, keys, store, seed=3):
            stream = await client.connect(SERVER, PORT)
            await stream.send_all(b"before the crash")
            with trio.fail_after(5):
                assert await stream.receive_some() == b"before the crash"
        before = len(wire.seen)
        async with server(net, keys, store, seed=4) as srv:  # restores the connection
            await stream.send_all(b"after the restart")
            with trio.fail_after(5):
                assert await stream.receive_some() == b"after the restart"
            assert srv.runtime.restored == 1
    after = wire.seen[before:]
    assert any(src == SERVER for src, *_ in after)
    assert all(signed for _, signed, _, _ in after)


def test_keys_are_looked_up_by_longest_prefix_and_bad_ones_refused() -> None:
    keys = Md5Keys({"198.18.0.0/16": "wide", "198.18.0.1": b"narrow", "2001:db8::/32": "six"})
    assert keys.key_for(bytes([198, 18, 0, 1])) == b"narrow"
    assert keys.key_for(bytes([198, 18, 7, 7])) == b"wide"
    assert keys.key_for(bytes([198, 19, 0, 1])) is None
    assert keys.key_for(bytes.fromhex("20010db8" + "00" * 11 + "01")) == b"six"
    for bad, message in (
        ({"198.18.0.999": KEY}, "MD5 key for '198.18.0.999'"),
        ({CLIENT: b""}, "0 bytes; use 1 to 80"),
        ({CLIENT: bytes(81)}, "81 bytes; use 1 to 80"),
    ):
        with pytest.raises(StcpConfigError, match=message):
            Md5Keys(bad)
