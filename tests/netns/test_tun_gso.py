"""Send-side segmentation offload through a real TUN device (``TunDevice.tx_gso_max``).

Runs in a private network namespace like the rest of ``tests/netns``. The stack hands
the kernel TCP super-segments (``virtio_net_hdr`` with ``gso_type`` TCPV4/TCPV6,
``gso_size`` = the MSS, ``NEEDS_CSUM``) at MTU 1500; the kernel takes them like the
segments of a TSO NIC. What is checked: the header the pure helper builds; the device
attribute and its off switches; a PcapDevice passes it through and records the
super-segments as they are; and the whole stack serves chargen 200 MB byte-exact to a
kernel socket client (IPv4) and 20 MB over IPv6, with the device really writing
super-segments and the kernel counting no checksum error.
"""

from __future__ import annotations

import ipaddress
import struct
from pathlib import Path

import pytest
import trio
from kernel_peer import run_kernel_peer
from netns_fixtures import TunNet

from stcp_framework import open_stack
from stcp_framework.link.base import PacketDevice
from stcp_framework.link.offload import (
    VIRTIO_NET_HDR_F_NEEDS_CSUM,
    VIRTIO_NET_HDR_GSO_TCPV4,
    VIRTIO_NET_HDR_GSO_TCPV6,
    VirtioNetHdr,
    tx_gso_vnet_header,
)
from stcp_framework.link.pcap import HEADERS_SNAPLEN, PcapDevice
from stcp_framework.link.tun import TX_GSO_MAX, TunDevice
from stcp_framework.services import chargen
from stcp_framework.wire.packet import build_packet
from stcp_framework.wire.tcp import ACK, NO_OPTIONS, TcpOptions

TRANSFER_TIMEOUT = 60.0  # seconds of wall time; 200 MB takes well under one with GSO
MB200 = 200 * 1000 * 1000
MB20 = 20 * 1000 * 1000
MTU = 1500

A4 = ipaddress.IPv4Address("198.18.0.1").packed
B4 = ipaddress.IPv4Address("198.18.0.2").packed
A6 = ipaddress.IPv6Address("2001:db8::1").packed
B6 = ipaddress.IPv6Address("2001:db8::2").packed


def tcp_in_csum_errors() -> int:
    """The kernel's ``Tcp: InCsumErrors`` of this namespace (``/proc/net/snmp``)."""
    with open("/proc/net/snmp") as f:
        rows = [line.split() for line in f if line.startswith("Tcp:")]
    return int(rows[1][rows[0].index("InCsumErrors")])


# ---------------------------------------------------------------- the pure helper


@pytest.mark.parametrize(
    ("src", "dst", "ip_len", "gso_type"),
    [(A4, B4, 20, VIRTIO_NET_HDR_GSO_TCPV4), (A6, B6, 40, VIRTIO_NET_HDR_GSO_TCPV6)],
)
@pytest.mark.parametrize(
    ("options", "tcp_len"), [(NO_OPTIONS, 20), (TcpOptions(timestamps=(1, 2)), 32)]
)
def test_gso_header_describes_the_super_segment(
    src: bytes, dst: bytes, ip_len: int, gso_type: int, options: TcpOptions, tcp_len: int
) -> None:
    payload = bytes(10 * 1448)
    head = build_packet(src, dst, 1234, 80, 1000, 2000, ACK, 512, options, payload,
                        offload_checksum=True, header_only=True)  # fmt: skip
    assert len(head) == ip_len + tcp_len
    hdr = VirtioNetHdr.unpack_from(tx_gso_vnet_header(head, 1448))
    # virtio 1.x §5.1.6.2: hdr_len covers the headers; csum_start/offset the TCP checksum.
    assert hdr == VirtioNetHdr(VIRTIO_NET_HDR_F_NEEDS_CSUM, gso_type, ip_len + tcp_len, 1448,
                               ip_len, 16)  # fmt: skip


# ---------------------------------------------------------------- the device


async def test_tx_gso_max_is_offered_with_offload_only(tun_net: TunNet, tmp_path: Path) -> None:
    for offload, tx_gso, want in [(True, True, TX_GSO_MAX), (True, False, 0), (False, True, 0)]:
        dev = await TunDevice.open(tun_net.dev, offload=offload, tx_gso=tx_gso)
        pcap = PcapDevice(dev, tmp_path / "x.pcap")
        try:
            assert dev.tx_gso_max == want, (offload, tx_gso)
            assert pcap.tx_gso_max == want
        finally:
            await pcap.aclose()


async def _chargen(
    device: PacketDevice, addresses: list[str], host: str, size: int
) -> dict[str, object]:
    async with open_stack(device, addresses) as stack, trio.open_nursery() as nursery:
        await nursery.start(stack.serve, chargen, 19)
        with trio.fail_after(TRANSFER_TIMEOUT):
            result = await run_kernel_peer("chargen", host, 19, size)
        nursery.cancel_scope.cancel()
    return result


@pytest.mark.slow
@pytest.mark.timeout(120)
async def test_200mb_chargen_at_mtu_1500_goes_out_in_super_segments(tun_net: TunNet) -> None:
    dev = await TunDevice.open(tun_net.dev)
    errors_before = tcp_in_csum_errors()
    try:
        result = await _chargen(dev, [tun_net.stack_addr], tun_net.stack_addr, MB200)
    finally:
        await dev.aclose()
    assert result["received"] == MB200
    assert result["mismatch_at"] is None
    counters = dev.counters
    assert counters.tx_errors == 0
    assert tcp_in_csum_errors() == errors_before
    # Most of the 200 MB left as super-segments of many 1448-byte segments each.
    assert counters.tx_gso_packets > MB200 // TX_GSO_MAX // 2
    assert counters.tx_bytes / counters.tx_packets > 4 * MTU
    assert counters.tx_bytes > MB200


@pytest.mark.timeout(60)
@pytest.mark.parametrize("tx_gso", [True, False], ids=["gso", "no-gso"])
async def test_ipv6_chargen_with_and_without_super_segments(tun_net: TunNet, tx_gso: bool) -> None:
    dev = await TunDevice.open(tun_net.dev, tx_gso=tx_gso)
    errors_before = tcp_in_csum_errors()
    try:
        result = await _chargen(dev, [tun_net.stack_addr6], tun_net.stack_addr6, MB20)
    finally:
        await dev.aclose()
    assert result["received"] == MB20
    assert result["mismatch_at"] is None
    assert dev.counters.tx_errors == 0
    assert tcp_in_csum_errors() == errors_before
    if tx_gso:
        assert dev.counters.tx_gso_packets > 0
    else:  # nothing changes: no packet beyond the MTU
        assert dev.counters.tx_gso_packets == 0
        assert dev.counters.tx_bytes <= dev.counters.tx_packets * MTU


def pcap_lengths(path: Path) -> list[int]:
    """The ``orig_len`` of every record of a classic pcap file."""
    data = path.read_bytes()
    lengths: list[int] = []
    offset = 24  # the file header
    while offset < len(data):
        incl_len, orig_len = struct.unpack_from("<II", data, offset + 8)
        lengths.append(orig_len)
        offset += 16 + incl_len
    return lengths


@pytest.mark.timeout(60)
async def test_pcap_records_super_segments_as_they_are(tun_net: TunNet, tmp_path: Path) -> None:
    tun = await TunDevice.open(tun_net.dev)
    path = tmp_path / "gso.pcap"
    device = PcapDevice(tun, path, snaplen=HEADERS_SNAPLEN)
    try:
        result = await _chargen(device, [tun_net.stack_addr], tun_net.stack_addr, MB20)
    finally:
        await device.aclose()
    assert result["received"] == MB20 and result["mismatch_at"] is None
    lengths = pcap_lengths(path)
    sent_big = [n for n in lengths if n > MTU]
    # Received super-segments (the kernel's TSO) are ACK-only here: every packet longer
    # than the MTU is one we sent, and there is one per GSO write.
    assert len(sent_big) == tun.counters.tx_gso_packets > 0
    assert max(sent_big) <= 40 + TX_GSO_MAX + 20 + 12
