"""``TunDevice`` against the Linux kernel, in a private network namespace."""

from __future__ import annotations

import socket
import struct
from pathlib import Path

import pytest
import trio
from netns_fixtures import TunNet

from stcp_framework.errors import StcpConfigError
from stcp_framework.link.pcap import LINKTYPE_RAW, PcapDevice
from stcp_framework.link.tun import TunDevice, get_device_mtu

IPPROTO_UDP = 17
IPPROTO_TCP = 6
TIMEOUT = 5.0  # seconds of wall time; every wait below normally takes microseconds


def internet_checksum(data: bytes) -> int:
    """RFC 1071 checksum (written here so the test does not depend on ``wire``)."""
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return int(~total & 0xFFFF)


def udp_packet4(src: str, dst: str, sport: int, dport: int, payload: bytes) -> bytes:
    """An IPv4 (RFC 791) + UDP (RFC 768) packet with both checksums."""
    s, d = socket.inet_aton(src), socket.inet_aton(dst)
    udp_len = 8 + len(payload)
    pseudo = s + d + struct.pack("!BBH", 0, IPPROTO_UDP, udp_len)
    udp = struct.pack("!HHHH", sport, dport, udp_len, 0) + payload
    udp = udp[:6] + struct.pack("!H", internet_checksum(pseudo + udp) or 0xFFFF) + udp[8:]
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + udp_len, 1, 0x4000, 64, IPPROTO_UDP, 0, s, d)
    ip = ip[:10] + struct.pack("!H", internet_checksum(ip)) + ip[12:]
    return ip + udp


def udp_packet6(src: str, dst: str, sport: int, dport: int, payload: bytes) -> bytes:
    """An IPv6 (RFC 8200) + UDP packet; the UDP checksum is mandatory over IPv6."""
    s = socket.inet_pton(socket.AF_INET6, src)
    d = socket.inet_pton(socket.AF_INET6, dst)
    udp_len = 8 + len(payload)
    pseudo = s + d + struct.pack("!I3xB", udp_len, IPPROTO_UDP)
    udp = struct.pack("!HHHH", sport, dport, udp_len, 0) + payload
    udp = udp[:6] + struct.pack("!H", internet_checksum(pseudo + udp) or 0xFFFF) + udp[8:]
    ip = struct.pack("!IHBB16s16s", 6 << 28, udp_len, IPPROTO_UDP, 64, s, d)
    return ip + udp


def udp_payload_of(pkt: bytes, dport: int) -> bytes | None:
    """The UDP payload if ``pkt`` is a UDP datagram to ``dport`` (v4 or v6), else None."""
    if pkt[0] >> 4 == 4:
        if pkt[9] != IPPROTO_UDP:
            return None
        udp = pkt[(pkt[0] & 0xF) * 4 :]
    elif pkt[0] >> 4 == 6:
        if pkt[6] != IPPROTO_UDP:
            return None
        udp = pkt[40:]
    else:
        return None
    if struct.unpack("!H", udp[2:4])[0] != dport:
        return None
    return udp[8:]


async def recv_udp_payload(dev: TunDevice, dport: int) -> bytes:
    """Read batches until a UDP datagram to ``dport`` arrives (MLD etc. are skipped)."""
    for _ in range(100):
        for pkt in await dev.recv_batch(64):
            # A view of a fresh, immutable bytes object: the stack may keep it for good.
            assert type(pkt.obj) is bytes
            payload = udp_payload_of(bytes(pkt), dport)
            if payload is not None:
                return payload
    raise AssertionError("no UDP datagram in 100 batches")


async def test_open_reports_device_mtu(tun_net: TunNet) -> None:
    dev = await TunDevice.open(tun_net.dev)
    try:
        assert dev.mtu == 1500 == get_device_mtu(tun_net.dev)
        assert dev.name == tun_net.dev
    finally:
        await dev.aclose()


@pytest.mark.parametrize("tun_net", [65000], indirect=True)
async def test_open_big_mtu_device(tun_net: TunNet) -> None:
    dev = await TunDevice.open(tun_net.dev)
    try:
        assert dev.mtu == 65000
    finally:
        await dev.aclose()


async def test_open_can_set_mtu(tun_net: TunNet) -> None:
    dev = await TunDevice.open(tun_net.dev, mtu=9000)
    try:
        assert dev.mtu == 9000 == get_device_mtu(tun_net.dev)
    finally:
        await dev.aclose()


async def test_kernel_udp_datagram_arrives_at_device(tun_net: TunNet, pcap_path: Path) -> None:
    tun = await TunDevice.open(tun_net.dev)
    dev = PcapDevice(tun, pcap_path)
    try:
        with trio.fail_after(TIMEOUT):
            sock = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            with sock:
                await sock.sendto(b"hello stack", (tun_net.stack_addr, 9999))
                for _ in range(100):
                    if any(p.tobytes().endswith(b"hello stack") for p in await dev.recv_batch(64)):
                        break
        assert tun.counters.rx_packets >= 1
    finally:
        await dev.aclose()
    assert b"hello stack" in await trio.Path(pcap_path).read_bytes()


async def test_kernel_udp6_datagram_arrives_at_device(tun_net: TunNet) -> None:
    dev = await TunDevice.open(tun_net.dev)
    try:
        with trio.fail_after(TIMEOUT):
            sock = trio.socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
            with sock:
                await sock.sendto(b"hello v6", (tun_net.stack_addr6, 9998))
                assert await recv_udp_payload(dev, 9998) == b"hello v6"
    finally:
        await dev.aclose()


async def test_kernel_tcp_syn_arrives_at_device(tun_net: TunNet) -> None:
    dev = await TunDevice.open(tun_net.dev)
    syn: bytes | None = None
    try:
        sock = trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        with sock, trio.fail_after(TIMEOUT):
            async with trio.open_nursery() as nursery:
                # connect() never completes (nobody answers); cancelled once the SYN is seen
                nursery.start_soon(sock.connect, (tun_net.stack_addr, 80))
                for _ in range(100):
                    for pkt in await dev.recv_batch(64):
                        if pkt[0] >> 4 == 4 and pkt[9] == IPPROTO_TCP:
                            syn = bytes(pkt)
                    if syn is not None:
                        break
                nursery.cancel_scope.cancel()
    finally:
        await dev.aclose()
    assert syn is not None
    assert socket.inet_ntoa(syn[16:20]) == tun_net.stack_addr
    tcp = syn[(syn[0] & 0xF) * 4 :]
    assert struct.unpack("!H", tcp[2:4])[0] == 80
    assert tcp[13] & 0x3F == 0x02  # SYN only


async def test_crafted_udp_packet_reaches_kernel_socket(tun_net: TunNet) -> None:
    dev = await TunDevice.open(tun_net.dev)
    try:
        sock = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        with sock, trio.fail_after(TIMEOUT):
            await sock.bind((tun_net.kernel_addr, 0))
            port = sock.getsockname()[1]
            pkt = udp_packet4(tun_net.stack_addr, tun_net.kernel_addr, 4242, port, b"from stack")
            await dev.send_batch([pkt])
            data, (src, sport) = await sock.recvfrom(100)
        assert (data, src, sport) == (b"from stack", tun_net.stack_addr, 4242)
        assert dev.counters.tx_packets == 1
        assert dev.counters.tx_bytes == len(pkt)
        assert dev.counters.tx_errors == 0
    finally:
        await dev.aclose()


async def test_crafted_udp6_packet_reaches_kernel_socket(tun_net: TunNet) -> None:
    dev = await TunDevice.open(tun_net.dev)
    try:
        sock = trio.socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        with sock, trio.fail_after(TIMEOUT):
            await sock.bind((tun_net.kernel_addr6, 0))
            port = sock.getsockname()[1]
            pkt = udp_packet6(tun_net.stack_addr6, tun_net.kernel_addr6, 4243, port, b"v6 out")
            await dev.send_batch([pkt])
            data, addr = await sock.recvfrom(100)
        assert (data, addr[0], addr[1]) == (b"v6 out", tun_net.stack_addr6, 4243)
    finally:
        await dev.aclose()


async def test_batch_of_packets_both_ways(tun_net: TunNet) -> None:
    dev = await TunDevice.open(tun_net.dev)
    count = 50
    try:
        sock = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        with sock, trio.fail_after(TIMEOUT):
            await sock.bind((tun_net.kernel_addr, 0))
            port = sock.getsockname()[1]
            batch = [
                udp_packet4(tun_net.stack_addr, tun_net.kernel_addr, 5000, port, b"%d" % i)
                for i in range(count)
            ]
            await dev.send_batch(batch)
            got = [(await sock.recvfrom(100))[0] for _ in range(count)]
            assert got == [b"%d" % i for i in range(count)]
            # and back: the kernel answers to the stack address, one datagram each
            for i in range(count):
                await sock.sendto(b"r%d" % i, (tun_net.stack_addr, 5000))
            received: list[bytes] = []
            batches = 0
            while len(received) < count and batches < 1000:
                batches += 1
                for pkt in await dev.recv_batch(16):
                    payload = udp_payload_of(bytes(pkt), 5000)
                    if payload is not None:
                        received.append(payload)
        assert received == [b"r%d" % i for i in range(count)]
        assert dev.counters.rx_packets >= count
    finally:
        await dev.aclose()


async def test_malformed_packet_is_counted_not_raised(tun_net: TunNet) -> None:
    dev = await TunDevice.open(tun_net.dev)
    try:
        # IP version 0 and 1: the TUN driver refuses them with EINVAL
        await dev.send_batch([b"\x00\x00"])
        good = udp_packet4(tun_net.stack_addr, tun_net.kernel_addr, 1, 9, b"x")
        await dev.send_batch([b"\x10", good])
        assert dev.counters.tx_errors == 2
        assert dev.counters.tx_packets == 1
    finally:
        await dev.aclose()


async def test_device_survives_close_and_reopen(tun_net: TunNet) -> None:
    first = await TunDevice.open(tun_net.dev)
    await first.aclose()
    second = await TunDevice.open(tun_net.dev)
    try:
        with trio.fail_after(TIMEOUT):
            sock = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            with sock:
                await sock.sendto(b"again", (tun_net.stack_addr, 9997))
                assert await recv_udp_payload(second, 9997) == b"again"
    finally:
        await second.aclose()


async def test_closed_device_raises_closed_resource_error(tun_net: TunNet) -> None:
    dev = await TunDevice.open(tun_net.dev)
    await dev.aclose()
    await dev.aclose()  # idempotent
    with pytest.raises(trio.ClosedResourceError):
        await dev.recv_batch(1)
    with pytest.raises(trio.ClosedResourceError):
        await dev.send_batch([b""])


async def test_aclose_wakes_a_blocked_reader(tun_net: TunNet) -> None:
    dev = await TunDevice.open(tun_net.dev)
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:

            async def reader() -> None:
                with pytest.raises(trio.ClosedResourceError):
                    for _ in range(1000):  # skip whatever the kernel sends (MLD, ...)
                        await dev.recv_batch(1)

            nursery.start_soon(reader)
            await trio.testing.wait_all_tasks_blocked()
            await dev.aclose()


async def test_second_holder_is_refused(tun_net: TunNet) -> None:
    dev = await TunDevice.open(tun_net.dev)
    try:
        with pytest.raises(StcpConfigError, match="held by another process"):
            await TunDevice.open(tun_net.dev)
    finally:
        await dev.aclose()


async def test_missing_device_message() -> None:
    with pytest.raises(StcpConfigError) as info:
        await TunDevice.open("stcpmissing0")
    assert str(info.value) == (
        "TUN device stcpmissing0 not found: run `stcp net up --dev stcpmissing0 "
        "--addr 198.18.0.1/24` inside a private network namespace"
    )


async def test_non_tun_device_is_refused() -> None:
    with pytest.raises(StcpConfigError, match="lo is not a TUN device"):
        await TunDevice.open("lo")


async def test_pcap_of_real_traffic_is_raw_ip(tun_net: TunNet, tmp_path: Path) -> None:
    dev = PcapDevice(await TunDevice.open(tun_net.dev), tmp_path / "x.pcap")
    pkt = udp_packet4(tun_net.stack_addr, tun_net.kernel_addr, 1, 9, b"cap")
    await dev.send_batch([pkt])
    await dev.aclose()
    data = await trio.Path(tmp_path / "x.pcap").read_bytes()
    assert struct.unpack_from("<I", data, 20)[0] == LINKTYPE_RAW
    assert data[24 + 16 :] == pkt
