"""Bad input from the real kernel: malformed packets are counted and dropped (G8), and a
segment to a closed port is answered with RST (RFC 9293 §3.10.7.1).

Malformed packets are written with raw sockets in the kernel side of the namespace and
routed by the kernel into the TUN device, towards the stack's address and the port of an
established connection, which must keep working. A raw IPv4 socket cannot send a bad
IPv4 header checksum or total length (the kernel fills both in), so those are left to the
``wire`` unit tests.

With checksum offload (``TunDevice`` default) the device itself verifies the checksum of a
packet the kernel did not vouch for and counts a bad one in ``counters.rx_bad_checksum``;
without offload the stack counts it in ``runtime.drops``. The tests run both ways.
"""

from __future__ import annotations

import socket
import struct
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import trio
from kernel_peer import stack_on
from netns_fixtures import TunNet

from stcp_framework.services import echo
from stcp_framework.wire.drop import DropReason
from stcp_framework.wire.packet import build_packet
from stcp_framework.wire.tcp import ACK, FIN, NO_OPTIONS, PSH, SYN

PORT = 7
TEST_TIMEOUT = 10.0  # seconds; everything below normally takes milliseconds
IPPROTO_FRAGMENT = 44

pytestmark = [
    pytest.mark.slow,
    pytest.mark.netns,
    pytest.mark.timeout(60),
    pytest.mark.parametrize("offload", [True, False], ids=["offload", "no-offload"]),
]


def internet_checksum(data: bytes) -> int:
    """RFC 1071 (written here so the crafted packets do not trust ``wire``'s checksum)."""
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return int(~total & 0xFFFF)


def with_tcp_checksum(packet: bytearray, ip_header_len: int) -> bytearray:
    """Recompute the TCP checksum of an IPv4 (header ``ip_header_len``) or IPv6 packet."""
    tcp = packet[ip_header_len:]
    if packet[0] >> 4 == 4:
        pseudo = bytes(packet[12:20]) + struct.pack("!BBH", 0, 6, len(tcp))
    else:
        pseudo = bytes(packet[8:40]) + struct.pack("!IxxxB", len(tcp), 6)
    tcp[16:18] = b"\0\0"
    tcp[16:18] = struct.pack("!H", internet_checksum(pseudo + bytes(tcp)))
    packet[ip_header_len:] = tcp
    return packet


class Craft:
    """Builds segments from the kernel's side of one established connection."""

    def __init__(self, kernel: tuple[str, int], stack: tuple[str, int], family: int) -> None:
        self.src = socket.inet_pton(family, kernel[0])
        self.dst = socket.inet_pton(family, stack[0])
        self.sport, self.dport = kernel[1], stack[1]
        self.ip_len = 20 if family == socket.AF_INET else 40

    def segment(self, flags: int = ACK | PSH, payload: bytes = b"bogus", **ports: int) -> bytearray:
        """A well-formed segment (sequence numbers far outside the window)."""
        return build_packet(
            self.src, self.dst, ports.get("sport", self.sport), ports.get("dport", self.dport),
            12345, 67890, flags, 1000, NO_OPTIONS, payload,
        )  # fmt: skip

    def bad_checksum(self) -> bytearray:
        packet = self.segment()
        packet[self.ip_len + 16] ^= 0x5A
        return packet

    def short_tcp(self) -> bytearray:
        """Only 10 bytes of TCP header after the IP header."""
        packet = self.segment(payload=b"")[: self.ip_len + 10]
        if self.ip_len == 40:
            packet[4:6] = struct.pack("!H", 10)
        return packet

    def bad_data_offset(self) -> bytearray:
        """Data offset 15 words (60 bytes) in a 25-byte segment; checksum correct."""
        packet = self.segment()
        packet[self.ip_len + 12] = 0xF0
        return with_tcp_checksum(packet, self.ip_len)

    def syn_fin(self) -> bytearray:
        return self.segment(flags=SYN | FIN)

    def port_zero(self) -> bytearray:
        return self.segment(sport=0)

    def ipv4_fragment(self) -> bytearray:
        """A first fragment (MF set) of a well-formed segment."""
        packet = self.segment()
        packet[6:8] = struct.pack("!H", 0x2000)
        return packet

    def ipv6_fragment(self) -> bytearray:
        """The segment behind an IPv6 Fragment header (RFC 8200 §4.5), M flag set."""
        packet = self.segment()
        fragment = struct.pack("!BxHI", 6, 0x0001, 0xC0FFEE)
        packet[6] = IPPROTO_FRAGMENT
        packet[4:6] = struct.pack("!H", len(packet) - 40 + len(fragment))
        return packet[:40] + fragment + packet[40:]


def ipv4_raw_send(packets: list[bytearray], dst: str) -> None:
    """Send complete IPv4 packets (IP_HDRINCL; the kernel fills in the header checksum)."""
    with socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW) as raw:
        for packet in packets:
            raw.sendto(packet, (dst, 0))


def ipv6_raw_send(packets: list[bytearray], dst: str) -> None:
    """Send complete IPv6 packets (IPPROTO_RAW on AF_INET6 implies the header is ours)."""
    with socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_RAW) as raw:
        for packet in packets:
            raw.sendto(packet, (dst, 0))


def drop_counts(runtime: Any, tun_device: Any) -> Counter[DropReason]:
    """Drops by reason, with the bad checksums the offloading device caught itself."""
    counts = Counter(runtime.drops)
    counts[DropReason.BAD_TCP_CHECKSUM] += getattr(tun_device.counters, "rx_bad_checksum", 0)
    counts.pop(DropReason.NOT_TCP, None)  # the kernel's own ICMPv6 (RS, MLD) come and go
    return +counts


async def echo_round_trip(stream: trio.SocketStream, data: bytes) -> None:
    await stream.send_all(data)
    got = b""
    while len(got) < len(data):
        chunk = await stream.receive_some(len(data) - len(got))
        assert chunk, "EOF from the echo service"
        got += chunk
    assert got == data


@pytest.mark.parametrize("family", [socket.AF_INET, socket.AF_INET6], ids=["ipv4", "ipv6"])
async def test_malformed_packets_are_counted_and_dropped(
    tun_net: TunNet, pcap_path: Path, family: int, offload: bool
) -> None:
    if family == socket.AF_INET:
        kernel_addr, stack_addr = tun_net.kernel_addr, tun_net.stack_addr
    else:
        kernel_addr, stack_addr = tun_net.kernel_addr6, tun_net.stack_addr6
    async with (
        stack_on(tun_net, pcap_path, tun_options={"offload": offload}) as stack,
        trio.open_nursery() as nursery,
    ):
        await nursery.start(stack.serve, echo, PORT)
        tun_device = stack.runtime.device.inner
        with trio.fail_after(TEST_TIMEOUT):
            stream = await trio.open_tcp_stream(stack_addr, PORT, local_address=kernel_addr)
            await echo_round_trip(stream, b"before")
            assert drop_counts(stack.runtime, tun_device) == Counter()
            local = stream.socket.getsockname()
            craft = Craft((local[0], local[1]), (stack_addr, PORT), family)
            bad = [
                (craft.bad_checksum(), DropReason.BAD_TCP_CHECKSUM),
                (craft.short_tcp(), DropReason.TOO_SHORT),
                (craft.bad_data_offset(), DropReason.BAD_DATA_OFFSET),
                (craft.syn_fin(), DropReason.BAD_FLAGS),
                (craft.port_zero(), DropReason.BAD_PORT),
                (
                    craft.ipv4_fragment() if family == socket.AF_INET else craft.ipv6_fragment(),
                    DropReason.FRAGMENT,
                ),
                (craft.bad_checksum(), DropReason.BAD_TCP_CHECKSUM),
            ]
            send = ipv4_raw_send if family == socket.AF_INET else ipv6_raw_send
            send([packet for packet, _ in bad], stack_addr)
            # The echo's answer follows the bad packets through the same device queue:
            # once it is back, the stack has seen (and dropped) all of them.
            await echo_round_trip(stream, b"after" * 1000)
            assert drop_counts(stack.runtime, tun_device) == Counter(reason for _, reason in bad)
            await stream.aclose()
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize("family", [socket.AF_INET, socket.AF_INET6], ids=["ipv4", "ipv6"])
async def test_connect_to_closed_port_is_refused(
    tun_net: TunNet, pcap_path: Path, family: int, offload: bool
) -> None:
    stack_addr = tun_net.stack_addr if family == socket.AF_INET else tun_net.stack_addr6
    async with (
        stack_on(tun_net, pcap_path, tun_options={"offload": offload}) as stack,
        trio.open_nursery() as nursery,
    ):
        await nursery.start(stack.serve, echo, PORT)
        with trio.fail_after(TEST_TIMEOUT):
            for _ in range(3):
                sock = trio.socket.socket(family, socket.SOCK_STREAM)
                with sock, pytest.raises(ConnectionRefusedError):
                    await sock.connect((stack_addr, PORT + 1))
            # The listening port next to it still answers.
            stream = await trio.open_tcp_stream(stack_addr, PORT)
            await echo_round_trip(stream, b"open")
            await stream.aclose()
        nursery.cancel_scope.cancel()
    assert stack.runtime.stats["rst_sent"] == 3
    assert not stack.runtime.flows or all(
        flow.key[3] == PORT for flow in stack.runtime.flows.values()
    )
