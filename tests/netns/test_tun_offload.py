"""``TunDevice`` with offloads (``IFF_VNET_HDR``, ``TUNSETOFFLOAD``) against the Linux kernel.

Runs in a private network namespace like the rest of ``tests/netns``. What is checked:
the kernel's packets reach us intact with their checksums left partial; packets we
send with a partial TCP checksum are completed by the kernel (a kernel listener answers
our SYN) while complete and wrong checksums are left alone; a packet with neither
offload flag and a bad checksum is dropped and counted by the device; the kernel hands
over TCP super-segments (GSO) at MTU 1500; ``offload=False`` restores bare, fully
checksummed packets; and the whole stack moves 200 MB byte-exact both ways at MTU 65000
and 1500. The pure helpers of ``link/offload.py`` are tested first.
"""

from __future__ import annotations

import fcntl
import ipaddress
import os
import socket
import struct

import pytest
import trio
from kernel_peer import hashing_discard, run_kernel_peer, wait_for
from netns_fixtures import TunNet

from stcp_framework import open_stack
from stcp_framework.link.offload import (
    VIRTIO_NET_HDR_F_NEEDS_CSUM,
    VNET_HDR_LEN,
    VNET_HDR_PLAIN,
    VirtioNetHdr,
    rx_tcp_checksum_bad,
    tx_vnet_header,
)
from stcp_framework.link.tun import (
    _IFREQ_FLAGS,
    IFF_VNET_HDR,
    TUNGETIFF,
    TunDevice,
)
from stcp_framework.services import chargen
from stcp_framework.wire.checksum import pseudo_header_sum, tcp_checksum_ok
from stcp_framework.wire.drop import DropReason
from stcp_framework.wire.packet import build_packet, parse_packet_untrusted
from stcp_framework.wire.tcp import ACK, NO_OPTIONS, PSH, RST, SYN, Packet, TcpOptions

TIMEOUT = 5.0  # seconds of wall time; every wait below normally takes milliseconds
TRANSFER_TIMEOUT = 60.0  # a 200 MB transfer takes a few seconds on the 2-core machine
MB200 = 200 * 1000 * 1000
IPPROTO_TCP = 6
STACK_PORT = 40000  # the source port of the segments we craft

A4 = ipaddress.IPv4Address("198.18.0.1").packed
B4 = ipaddress.IPv4Address("198.18.0.2").packed
A6 = ipaddress.IPv6Address("2001:db8::1").packed
B6 = ipaddress.IPv6Address("2001:db8::2").packed


# ---------------------------------------------------------------- pure helpers


def tcp_packet(src: bytes, dst: bytes, payload: bytes, *, offload: bool) -> bytearray:
    return build_packet(src, dst, 1234, 80, 1000, 2000, ACK | PSH, 512, NO_OPTIONS, payload,
                        offload_checksum=offload)  # fmt: skip


def complete_with_kernel_rule(packet: bytearray, csum_start: int, csum_offset: int) -> None:
    """What the kernel does for NEEDS_CSUM: sum from csum_start (field included), store ~sum."""
    data = bytes(packet[csum_start:]) + (b"\0" if (len(packet) - csum_start) % 2 else b"")
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    struct.pack_into("!H", packet, csum_start + csum_offset, ~total & 0xFFFF)


@pytest.mark.parametrize(("src", "dst", "ip_len"), [(A4, B4, 20), (A6, B6, 40)])
@pytest.mark.parametrize("size", [0, 1, 1447, 60000])
def test_partial_checksum_gets_needs_csum_and_completes_correctly(
    src: bytes, dst: bytes, ip_len: int, size: int
) -> None:
    packet = tcp_packet(src, dst, os.urandom(size), offload=True)
    hdr = VirtioNetHdr.unpack_from(tx_vnet_header(packet))
    assert hdr == VirtioNetHdr(VIRTIO_NET_HDR_F_NEEDS_CSUM, 0, 0, 0, ip_len, 16)
    complete_with_kernel_rule(packet, hdr.csum_start, hdr.csum_offset)
    assert tcp_checksum_ok(src, dst, packet[ip_len:])
    assert packet == tcp_packet(src, dst, bytes(packet[ip_len + 20 :]), offload=False)


@pytest.mark.parametrize(("src", "dst"), [(A4, B4), (A6, B6)])
def test_complete_checksum_is_sent_as_is(src: bytes, dst: bytes) -> None:
    assert tx_vnet_header(tcp_packet(src, dst, b"full", offload=False)) == VNET_HDR_PLAIN


def test_non_tcp_and_short_packets_get_the_plain_header() -> None:
    udp = bytearray(tcp_packet(A4, B4, b"x" * 40, offload=True))
    udp[9] = 17
    assert tx_vnet_header(udp) == VNET_HDR_PLAIN
    assert tx_vnet_header(b"") == VNET_HDR_PLAIN
    assert tx_vnet_header(b"\x45" + bytes(10)) == VNET_HDR_PLAIN
    assert VirtioNetHdr.unpack_from(VNET_HDR_PLAIN) == VirtioNetHdr(0, 0, 0, 0, 0, 0)
    assert len(VNET_HDR_PLAIN) == VNET_HDR_LEN == 10


def test_ipv4_options_move_csum_start() -> None:
    packet = tcp_packet(A4, B4, b"opt", offload=True)
    # Insert 4 bytes of IPv4 options (NOP x 4): IHL 6, total length + 4, new header checksum.
    with_opts = bytearray(packet[:20] + b"\x01" * 4 + packet[20:])
    with_opts[0] = 0x46
    struct.pack_into("!H", with_opts, 2, len(with_opts))
    hdr = VirtioNetHdr.unpack_from(tx_vnet_header(with_opts))
    assert (hdr.flags, hdr.csum_start, hdr.csum_offset) == (VIRTIO_NET_HDR_F_NEEDS_CSUM, 24, 16)


def test_rx_checksum_check_flags_only_bad_checksums() -> None:
    good = tcp_packet(A4, B4, b"data", offload=False)
    bad = bytearray(good)
    bad[-1] ^= 0xFF
    # A bad IPv4 header checksum too: the parser stops there, before TCP's checksum,
    # and the stack (told the device verified them) would check neither.
    bad_header = bytearray(bad)
    bad_header[8] -= 1  # the TTL, its header checksum not updated
    assert rx_tcp_checksum_bad(memoryview(bad_header))
    bad_header_only = bytearray(good)
    bad_header_only[8] -= 1
    assert rx_tcp_checksum_bad(memoryview(bad_header_only))
    not_tcp = bytearray(bad)
    not_tcp[9] = 17
    not_tcp[10:12] = b"\0\0"
    struct.pack_into("!H", not_tcp, 10, 0xFFFF - _ip_header_sum(not_tcp))
    assert not rx_tcp_checksum_bad(memoryview(good))
    assert rx_tcp_checksum_bad(memoryview(bad))
    assert not rx_tcp_checksum_bad(memoryview(not_tcp))  # the stack counts NOT_TCP itself
    assert not rx_tcp_checksum_bad(memoryview(b"\x45"))  # and TOO_SHORT


def _ip_header_sum(header: bytes | bytearray) -> int:
    total: int = sum(struct.unpack("!10H", header[:20]))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total


# ---------------------------------------------------------------- kernel helpers


def attach_flags(dev: TunDevice) -> int:
    res = fcntl.ioctl(dev.fileno(), TUNGETIFF, bytes(_IFREQ_FLAGS.size))
    return int(_IFREQ_FLAGS.unpack(res)[1])


def tcp_in_csum_errors() -> int:
    """The kernel's ``Tcp: InCsumErrors`` of this namespace (``/proc/net/snmp``)."""
    with open("/proc/net/snmp") as f:
        rows = [line.split() for line in f if line.startswith("Tcp:")]
    return int(rows[1][rows[0].index("InCsumErrors")])


async def read_tcp(dev: TunDevice, port: int, *, batches: int = 200) -> tuple[bytes, Packet]:
    """Read until a TCP packet from or to ``port`` arrives; return its bytes and parse."""
    for _ in range(batches):
        for raw in await dev.recv_batch(64):
            assert type(raw.obj) is bytes  # fresh and immutable: the stack may keep views
            try:
                pkt = parse_packet_untrusted(raw, verify_checksum=False)
            except Exception:
                continue  # MLD, router solicitations, ...
            if port in (pkt.tcp.src_port, pkt.tcp.dst_port):
                return raw.tobytes(), pkt
    raise AssertionError(f"no TCP packet for port {port} in {batches} batches")


def addresses(tun: TunNet, version: int) -> tuple[bytes, bytes]:
    """(stack address, kernel address), packed."""
    if version == 4:
        return socket.inet_aton(tun.stack_addr), socket.inet_aton(tun.kernel_addr)
    return (
        socket.inet_pton(socket.AF_INET6, tun.stack_addr6),
        socket.inet_pton(socket.AF_INET6, tun.kernel_addr6),
    )


# ---------------------------------------------------------------- the device and the kernel


async def test_offload_attaches_with_vnet_header_to_a_device_created_without(
    tun_net: TunNet,
) -> None:
    dev = await TunDevice.open(tun_net.dev)
    try:
        assert attach_flags(dev) & IFF_VNET_HDR
        assert dev.offload and dev.gso
        assert dev.rx_checksum_verified and dev.tx_checksum_offload
    finally:
        await dev.aclose()
    plain = await TunDevice.open(tun_net.dev, offload=False)
    try:
        assert not attach_flags(plain) & IFF_VNET_HDR
        assert not (plain.offload or plain.gso)
        assert not (plain.rx_checksum_verified or plain.tx_checksum_offload)
    finally:
        await plain.aclose()


@pytest.mark.parametrize("version", [4, 6])
async def test_kernel_syn_arrives_stripped_with_partial_checksum(
    tun_net: TunNet, version: int
) -> None:
    dev = await TunDevice.open(tun_net.dev)
    stack, kernel = addresses(tun_net, version)
    family = socket.AF_INET if version == 4 else socket.AF_INET6
    host = tun_net.stack_addr if version == 4 else tun_net.stack_addr6
    try:
        sock = trio.socket.socket(family, socket.SOCK_STREAM)
        with sock, trio.fail_after(TIMEOUT):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(sock.connect, (host, 81))  # never answered; cancelled
                raw, pkt = await read_tcp(dev, 81)
                nursery.cancel_scope.cancel()
    finally:
        await dev.aclose()
    assert (pkt.version, pkt.src, pkt.dst) == (version, kernel, stack)
    assert pkt.tcp.flags == SYN and pkt.tcp.dst_port == 81
    assert pkt.tcp.options.mss == tun_net.mtu - (40 if version == 4 else 60)
    # The kernel left the checksum partial: the field holds the pseudo-header sum.
    ip_len = 20 if version == 4 else 40
    field = struct.unpack_from("!H", raw, ip_len + 16)[0]
    assert field == pseudo_header_sum(kernel, stack, IPPROTO_TCP, len(raw) - ip_len)
    assert dev.counters.rx_bad_checksum == 0


@pytest.mark.parametrize("version", [4, 6])
@pytest.mark.parametrize("partial", [True, False], ids=["partial", "complete"])
async def test_our_syn_gets_a_syn_ack_from_a_kernel_listener(
    tun_net: TunNet, version: int, partial: bool
) -> None:
    stack, kernel = addresses(tun_net, version)
    family = socket.AF_INET if version == 4 else socket.AF_INET6
    listen_host = tun_net.kernel_addr if version == 4 else tun_net.kernel_addr6
    dev = await TunDevice.open(tun_net.dev)
    errors_before = tcp_in_csum_errors()
    try:
        listener = trio.socket.socket(family, socket.SOCK_STREAM)
        with listener, trio.fail_after(TIMEOUT):
            await listener.bind((listen_host, 0))
            listener.listen(4)
            port = listener.getsockname()[1]
            syn = build_packet(
                stack, kernel, STACK_PORT, port, 777, 0, SYN, 65535, TcpOptions(mss=1400), b"",
                offload_checksum=partial,
            )  # fmt: skip
            await dev.send_batch([syn])
            _, answer = await read_tcp(dev, port)
            rst = build_packet(stack, kernel, STACK_PORT, port, 778, 0, RST, 0, NO_OPTIONS, b"",
                               offload_checksum=partial)  # fmt: skip
            await dev.send_batch([rst])
    finally:
        await dev.aclose()
    assert answer.tcp.flags == SYN | ACK
    assert (answer.src, answer.dst, answer.tcp.dst_port) == (kernel, stack, STACK_PORT)
    assert answer.tcp.ack == 778
    assert dev.counters.tx_packets == 2 and dev.counters.tx_errors == 0
    assert dev.counters.tx_bytes == len(syn) + len(rst)
    assert tcp_in_csum_errors() == errors_before


async def test_wrong_checksum_we_send_is_not_fixed_by_the_kernel(tun_net: TunNet) -> None:
    stack, kernel = addresses(tun_net, 4)
    dev = await TunDevice.open(tun_net.dev)
    errors_before = tcp_in_csum_errors()
    try:
        syn = build_packet(stack, kernel, STACK_PORT, 5555, 1, 0, SYN, 1000, NO_OPTIONS, b"",
                           offload_checksum=True)  # fmt: skip
        syn[20 + 16] ^= 0x5A  # neither the pseudo-header sum nor the right checksum
        await dev.send_batch([syn])
        await wait_for(lambda: tcp_in_csum_errors() > errors_before, "InCsumErrors", TIMEOUT)
    finally:
        await dev.aclose()
    assert tcp_in_csum_errors() == errors_before + 1


def raw_tcp_packet(src: str, dst: str, seq: int, *, corrupt: bool) -> bytes:
    packet = build_packet(socket.inet_aton(src), socket.inet_aton(dst), 7777, 82, seq, 0, SYN,
                          1000, NO_OPTIONS, b"")  # fmt: skip
    if corrupt:
        packet[20 + 16] ^= 0x01
    return bytes(packet)


async def test_packet_with_neither_flag_and_bad_checksum_is_dropped_and_counted(
    tun_net: TunNet,
) -> None:
    """A raw socket's packet carries its own checksum (CHECKSUM_NONE): the device checks it."""
    dev = await TunDevice.open(tun_net.dev)
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW) as raw_sock:
            bad = raw_tcp_packet(tun_net.kernel_addr, tun_net.stack_addr, 1, corrupt=True)
            good = raw_tcp_packet(tun_net.kernel_addr, tun_net.stack_addr, 2, corrupt=False)
            raw_sock.sendto(bad, (tun_net.stack_addr, 0))
            raw_sock.sendto(good, (tun_net.stack_addr, 0))
        with trio.fail_after(TIMEOUT):
            raw, pkt = await read_tcp(dev, 82)
    finally:
        await dev.aclose()
    assert pkt.tcp.seq == 2
    assert raw == good
    assert dev.counters.rx_bad_checksum == 1


async def test_offload_off_after_offload_on_restores_complete_checksums(
    tun_net: TunNet,
) -> None:
    first = await TunDevice.open(tun_net.dev)
    await first.aclose()
    dev = await TunDevice.open(tun_net.dev, offload=False)
    try:
        sock = trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        with sock, trio.fail_after(TIMEOUT):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(sock.connect, (tun_net.stack_addr, 83))
                raw, pkt = await read_tcp(dev, 83)
                nursery.cancel_scope.cancel()
    finally:
        await dev.aclose()
    assert raw[0] == 0x45  # a bare IPv4 packet, no virtio-net header
    assert tcp_checksum_ok(pkt.src, pkt.dst, raw[20:])


async def test_offload_off_sends_and_receives_bare_complete_packets(tun_net: TunNet) -> None:
    stack, kernel = addresses(tun_net, 4)
    dev = await TunDevice.open(tun_net.dev, offload=False)
    try:
        listener = trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        with listener, trio.fail_after(TIMEOUT):
            await listener.bind((tun_net.kernel_addr, 0))
            listener.listen(4)
            port = listener.getsockname()[1]
            syn = build_packet(stack, kernel, STACK_PORT, port, 99, 0, SYN, 1000, NO_OPTIONS, b"")
            await dev.send_batch([syn])
            raw, answer = await read_tcp(dev, port)
    finally:
        await dev.aclose()
    assert answer.tcp.flags == SYN | ACK and answer.tcp.ack == 100
    assert raw[0] == 0x45 and len(raw) == struct.unpack_from("!H", raw, 2)[0]
    assert tcp_checksum_ok(kernel, stack, raw[20:])
    assert dev.counters.tx_bytes == len(syn)


# ---------------------------------------------------------------- the whole stack


async def _upload(tun_net: TunNet, dev: TunDevice) -> tuple[dict[str, object], list[object]]:
    received: list[tuple[int, str]] = []
    async with open_stack(dev, [tun_net.stack_addr]) as stack, trio.open_nursery() as nursery:
        await nursery.start(stack.serve, hashing_discard(received), 9)
        with trio.fail_after(TRANSFER_TIMEOUT):
            result = await run_kernel_peer("send", tun_net.stack_addr, 9, MB200, seed=3)
            await wait_for(lambda: bool(received), "the server's hash", TIMEOUT)
        nursery.cancel_scope.cancel()
        drops = dict(stack.runtime.drops)
    assert received == [(MB200, result["sha256"])]
    return result, [reason for reason in drops if reason is not DropReason.NOT_TCP]


@pytest.mark.slow
@pytest.mark.timeout(120)
@pytest.mark.parametrize("tun_net", [65000, 1500], indirect=True)
async def test_200mb_upload_to_the_stack_is_byte_exact(tun_net: TunNet) -> None:
    dev = await TunDevice.open(tun_net.dev)
    try:
        _, other_drops = await _upload(tun_net, dev)
    finally:
        await dev.aclose()
    assert other_drops == []
    assert dev.counters.rx_bad_checksum == 0
    if tun_net.mtu == 1500:
        # The kernel coalesced its 1448-byte segments into super-segments for us.
        assert dev.counters.rx_gso_packets > 0
        assert dev.counters.rx_bytes / dev.counters.rx_packets > 1500


@pytest.mark.slow
@pytest.mark.timeout(120)
@pytest.mark.parametrize("tun_net", [65000, 1500], indirect=True)
async def test_200mb_download_from_chargen_is_byte_exact(tun_net: TunNet) -> None:
    dev = await TunDevice.open(tun_net.dev)
    errors_before = tcp_in_csum_errors()
    try:
        async with (
            open_stack(dev, [tun_net.stack_addr]) as stack,
            trio.open_nursery() as nursery,
        ):
            await nursery.start(stack.serve, chargen, 19)
            with trio.fail_after(TRANSFER_TIMEOUT):
                result = await run_kernel_peer("chargen", tun_net.stack_addr, 19, MB200)
            nursery.cancel_scope.cancel()
    finally:
        await dev.aclose()
    assert result["received"] == MB200
    assert result["mismatch_at"] is None
    assert dev.counters.tx_errors == 0
    assert tcp_in_csum_errors() == errors_before
