"""``SimNetwork`` / ``SimLink``: routing, faults, determinism, partitions, restarts, taps.

Every test runs on trio's ``MockClock(autojump_threshold=0)`` (pytest-trio's
``autojump_clock`` fixture): delays are virtual, no test sleeps for real.
"""

from __future__ import annotations

import ipaddress
import itertools
import struct

import pytest
import trio
import trio.testing

from stcp_framework.link.base import PacketDevice
from stcp_framework.link.sim import SimLink, SimNetwork, TapEvent, TapVerdict

A = "198.18.0.1"
B = "198.18.0.2"
C = "198.18.0.3"
A6 = "2001:db8::1"
B6 = "2001:db8::2"


def ip4(src: str, dst: str, payload: bytes = b"", *, proto: int = 17) -> bytes:
    """A minimal IPv4 header (RFC 791) + payload; the simulator only reads the addresses."""
    return (
        struct.pack(
            "!BBHHHBBH4s4s",
            0x45,
            0,
            20 + len(payload),
            0,
            0,
            64,
            proto,
            0,
            ipaddress.IPv4Address(src).packed,
            ipaddress.IPv4Address(dst).packed,
        )
        + payload
    )


def ip6(src: str, dst: str, payload: bytes = b"") -> bytes:
    """A minimal IPv6 header (RFC 8200) + payload."""
    return (
        struct.pack(
            "!IHBB16s16s",
            6 << 28,
            len(payload),
            17,
            64,
            ipaddress.IPv6Address(src).packed,
            ipaddress.IPv6Address(dst).packed,
        )
        + payload
    )


def payload_of(pkt: memoryview | bytes) -> bytes:
    return bytes(pkt[40:]) if pkt[0] >> 4 == 6 else bytes(pkt[20:])


async def drain(link: SimLink, until: float) -> list[tuple[float, bytes]]:
    """Every packet delivered to ``link`` before virtual time ``until``, with its time."""
    got: list[tuple[float, bytes]] = []
    with trio.move_on_at(until):
        while True:
            for pkt in await link.recv_batch(64):
                got.append((trio.current_time(), bytes(pkt)))
    return got


def test_simlink_is_a_packet_device() -> None:
    def accepts(device: PacketDevice) -> int:
        return device.mtu

    async def main() -> None:
        net = SimNetwork(1, mtu=9000)
        assert accepts(net.attach(A)) == 9000

    trio.run(main)


async def test_packet_is_delivered_after_the_delay(autojump_clock: trio.testing.MockClock) -> None:
    net = SimNetwork(1, delay=0.010)
    a, b = net.attach(A), net.attach(B)
    start = trio.current_time()
    await a.send_batch([ip4(A, B, b"hello")])
    [pkt] = await b.recv_batch(10)
    assert trio.current_time() - start == pytest.approx(0.010)
    assert payload_of(pkt) == b"hello"
    assert a.counters.sent == 1
    assert b.counters.delivered == 1
    assert a.counters.dropped == b.counters.dropped == 0


async def test_in_order_without_faults_and_batched(autojump_clock: trio.testing.MockClock) -> None:
    net = SimNetwork(1, delay=0.005)
    a, b = net.attach(A), net.attach(B)
    await a.send_batch([ip4(A, B, b"%d" % i) for i in range(100)])
    batch = await b.recv_batch(64)
    rest = await b.recv_batch(64)
    assert [len(batch), len(rest)] == [64, 36]
    assert [payload_of(p) for p in batch + rest] == [b"%d" % i for i in range(100)]


async def test_sender_may_reuse_its_buffer(autojump_clock: trio.testing.MockClock) -> None:
    net = SimNetwork(1)
    a, b = net.attach(A), net.attach(B)
    buf = bytearray(ip4(A, B, b"first"))
    await a.send_batch([buf])
    buf[20:] = b"XXXXX"
    [pkt] = await b.recv_batch(1)
    assert payload_of(pkt) == b"first"


async def test_routes_by_destination_ipv4_and_ipv6(autojump_clock: trio.testing.MockClock) -> None:
    net = SimNetwork(1)
    a = net.attach(A, A6)
    b = net.attach(B, B6)
    c = net.attach(C)
    await a.send_batch([ip4(A, B, b"to b"), ip4(A, C, b"to c"), ip6(A6, B6, b"to b6")])
    assert sorted(payload_of(p) for p in await b.recv_batch(10)) == [b"to b", b"to b6"]
    assert [payload_of(p) for p in await c.recv_batch(10)] == [b"to c"]
    await b.send_batch([ip6(B6, A6, b"back")])
    assert [payload_of(p) for p in await a.recv_batch(10)] == [b"back"]


async def test_unroutable_and_too_big_are_dropped_and_counted(
    autojump_clock: trio.testing.MockClock,
) -> None:
    net = SimNetwork(1, mtu=100)
    a, b = net.attach(A), net.attach(B)
    await a.send_batch([ip4(A, "198.18.9.9"), b"\x45garbage", ip4(A, B, b"x" * 81), ip4(A, B)])
    assert a.counters.dropped_by_reason == {"unroutable": 2, "too-big": 1}
    assert a.counters.dropped == 3
    assert len(await b.recv_batch(10)) == 1


async def trace_run(seed: int, n: int = 300) -> list[tuple[float, str, bytes]]:
    """Send ``n`` packets each way through a faulty network; return the delivery trace."""
    net = SimNetwork(
        seed, loss=0.1, duplicate=0.05, reorder=0.1, delay=0.002, jitter=0.003, corrupt=0.02
    )
    a, b = net.attach(A), net.attach(B)
    trace: list[tuple[float, str, bytes]] = []
    start = trio.current_time()

    async def reader(link: SimLink, name: str) -> None:
        while True:
            for pkt in await link.recv_batch(8):
                trace.append((round(trio.current_time() - start, 9), name, bytes(pkt)))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(reader, a, "a")
        nursery.start_soon(reader, b, "b")
        for i in range(n):
            await a.send_batch([ip4(A, B, b"ab%d" % i)])
            await b.send_batch([ip4(B, A, b"ba%d" % i)])
            await trio.sleep(0.0005)
        await trio.sleep(1.0)
        nursery.cancel_scope.cancel()
    return trace


async def test_same_seed_same_trace(autojump_clock: trio.testing.MockClock) -> None:
    first = await trace_run(seed=42)
    second = await trace_run(seed=42)
    assert first == second
    assert len(first) > 400
    assert await trace_run(seed=43) != first


async def test_loss_duplicate_reorder_statistics(autojump_clock: trio.testing.MockClock) -> None:
    n = 4000
    net = SimNetwork(7, loss=0.1, duplicate=0.05, reorder=0.1, delay=0.001)
    a, b = net.attach(A), net.attach(B)
    for i in range(n):
        await a.send_batch([ip4(A, B, struct.pack("!I", i))])
        await trio.sleep(0.0001)
    got = [
        struct.unpack("!I", payload_of(p))[0] for _, p in await drain(b, trio.current_time() + 1)
    ]
    c = a.counters
    assert c.sent == n
    assert 0.085 * n < c.dropped_by_reason["loss"] == c.dropped < 0.115 * n
    survivors = n - c.dropped
    assert 0.04 * survivors < c.duplicated < 0.06 * survivors
    assert 0.085 * survivors < c.reordered < 0.115 * survivors
    assert len(got) == b.counters.delivered == survivors + c.duplicated
    assert len(set(got)) == survivors
    inversions = sum(1 for x, y in itertools.pairwise(got) if y < x)
    assert inversions > 0.05 * survivors  # reordered packets really arrive late
    assert net.counters.sent == n


async def test_no_faults_means_no_reordering(autojump_clock: trio.testing.MockClock) -> None:
    net = SimNetwork(7, delay=0.001)
    a, b = net.attach(A), net.attach(B)
    for i in range(200):
        await a.send_batch([ip4(A, B, struct.pack("!I", i))])
        await trio.sleep(0.0001)
    got = [
        struct.unpack("!I", payload_of(p))[0] for _, p in await drain(b, trio.current_time() + 1)
    ]
    assert got == list(range(200))


async def test_corruption_flips_exactly_one_bit(autojump_clock: trio.testing.MockClock) -> None:
    net = SimNetwork(3, corrupt=1.0)
    a, b = net.attach(A), net.attach(B)
    original = ip4(A, B, bytes(range(200)))
    await a.send_batch([original])
    [pkt] = await b.recv_batch(1)
    diff = [x ^ y for x, y in zip(original, bytes(pkt), strict=True)]
    assert sum(bin(d).count("1") for d in diff) == 1
    assert a.counters.corrupted == 1


async def test_partition_and_heal(autojump_clock: trio.testing.MockClock) -> None:
    net = SimNetwork(1)
    a, b, c = net.attach(A), net.attach(B), net.attach(C)
    net.partition(a, b)
    await a.send_batch([ip4(A, B, b"lost"), ip4(A, C, b"to c")])
    await b.send_batch([ip4(B, A, b"lost too")])
    assert [payload_of(p) for p in await c.recv_batch(10)] == [b"to c"]
    assert a.counters.dropped_by_reason["partition"] == 1
    assert b.counters.dropped_by_reason["partition"] == 1
    net.heal()
    await a.send_batch([ip4(A, B, b"healed")])
    assert [payload_of(p) for _, p in await drain(b, trio.current_time() + 0.1)] == [b"healed"]


async def test_partition_by_address_outlives_a_restart(
    autojump_clock: trio.testing.MockClock,
) -> None:
    net = SimNetwork(1)
    a, b = net.attach(A), net.attach(B)
    net.partition(A, B)
    await b.aclose()
    b2 = net.attach(B)
    await a.send_batch([ip4(A, B, b"x")])
    assert await drain(b2, trio.current_time() + 0.1) == []
    net.heal(A, B)
    await a.send_batch([ip4(A, B, b"y")])
    assert [payload_of(p) for _, p in await drain(b2, trio.current_time() + 0.1)] == [b"y"]


async def test_restart_gets_in_flight_packets_but_not_those_that_arrived_while_down(
    autojump_clock: trio.testing.MockClock,
) -> None:
    net = SimNetwork(1, delay=0.010)
    client, server = net.attach(A), net.attach(B)
    await client.send_batch([ip4(A, B, b"arrives while down")])
    await server.aclose()  # the server process dies
    await trio.sleep(0.015)
    await client.send_batch([ip4(A, B, b"in flight at restart")])
    await trio.sleep(0.005)
    restarted = net.attach(B)
    got = [payload_of(p) for _, p in await drain(restarted, trio.current_time() + 0.1)]
    assert got == [b"in flight at restart"]
    assert client.counters.dropped_by_reason == {"no-listener": 1}


async def test_attach_refuses_an_address_in_use(autojump_clock: trio.testing.MockClock) -> None:
    net = SimNetwork(1)
    net.attach(A)
    with pytest.raises(ValueError, match="owned by an open link"):
        net.attach(A)


async def test_closed_link_raises_and_wakes_its_reader(
    autojump_clock: trio.testing.MockClock,
) -> None:
    net = SimNetwork(1)
    link = net.attach(A)
    async with trio.open_nursery() as nursery:

        async def reader() -> None:
            with pytest.raises(trio.ClosedResourceError):
                await link.recv_batch(1)

        nursery.start_soon(reader)
        await trio.testing.wait_all_tasks_blocked()
        await link.aclose()
    with pytest.raises(trio.ClosedResourceError):
        await link.send_batch([ip4(A, B)])


async def test_tap_sees_every_packet_and_can_crash_after_packet_k(
    autojump_clock: trio.testing.MockClock,
) -> None:
    events: list[tuple[str, int, str, str]] = []
    crash_after = 4  # network-wide packet number: A->B 1, B->A 2, A->B 3, B->A 4
    server_scope = trio.CancelScope()

    def tap(event: TapEvent) -> TapVerdict | None:
        events.append((event.phase, event.number, event.src, event.dst))
        if event.phase == "send" and event.src == B and event.number >= crash_after:
            server_scope.cancel()  # kill the server right after it sent packet k
        return None

    net = SimNetwork(1, delay=0.001, tap=tap)
    client, server = net.attach(A), net.attach(B)
    echoed = 0

    async def echo_server() -> None:
        nonlocal echoed
        with server_scope:
            while True:
                for pkt in await server.recv_batch(8):
                    await server.send_batch([ip4(B, A, payload_of(pkt))])
                    echoed += 1

    async with trio.open_nursery() as nursery:
        nursery.start_soon(echo_server)
        for i in range(10):
            await client.send_batch([ip4(A, B, b"%d" % i)])
            await trio.sleep(0.01)
    assert echoed == 2  # packet 4 was the server's second echo; then it died
    sends = [e for e in events if e[0] == "send"]
    assert sends[:4] == [("send", 1, A, B), ("send", 2, B, A), ("send", 3, A, B), ("send", 4, B, A)]
    assert len([e for e in sends if e[2] == B]) == 2  # nothing after the crash
    assert len([e for e in sends if e[2] == A]) == 10
    delivered_to_server = [e for e in events if e[0] == "deliver" and e[3] == B]
    assert len(delivered_to_server) == 2


async def test_tap_can_drop_one_packet(autojump_clock: trio.testing.MockClock) -> None:
    def tap(event: TapEvent) -> TapVerdict | None:
        return TapVerdict.DROP if event.phase == "send" and event.number == 2 else None

    net = SimNetwork(1, tap=tap)
    a, b = net.attach(A), net.attach(B)
    await a.send_batch([ip4(A, B, b"1"), ip4(A, B, b"2"), ip4(A, B, b"3")])
    assert [payload_of(p) for p in await b.recv_batch(10)] == [b"1", b"3"]
    assert a.counters.dropped_by_reason == {"tap": 1}


def test_bad_parameters_are_rejected() -> None:
    with pytest.raises(ValueError, match="loss must be a probability"):
        SimNetwork(1, loss=1.5)
    with pytest.raises(ValueError, match="delay and jitter"):
        SimNetwork(1, delay=-1)
