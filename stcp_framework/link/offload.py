"""The virtio-net header of a TUN device opened with ``IFF_VNET_HDR``: checksum and GSO offload.

Theory of operation:
    With ``IFF_VNET_HDR`` every packet read from or written to the TUN descriptor is
    preceded by a ``struct virtio_net_hdr`` (``linux/include/uapi/linux/virtio_net.h``,
    virtio 1.x spec §5.1.6 "Device Operation"): flags u8, gso_type u8, hdr_len u16,
    gso_size u16, csum_start u16, csum_offset u16, in the byte order set with
    ``TUNSETVNETLE`` (we set little-endian). After ``TUNSETOFFLOAD(TUN_F_CSUM)`` the
    kernel may hand us packets whose TCP/UDP checksum is *partial*
    (``VIRTIO_NET_HDR_F_NEEDS_CSUM``: locally generated, the field holds only the
    pseudo-header sum, as Linux's ``CHECKSUM_PARTIAL``) or already verified
    (``VIRTIO_NET_HDR_F_DATA_VALID``); with ``TUN_F_TSO4 | TUN_F_TSO6`` also TCP
    super-segments of up to 64 KB (``gso_type`` TCPV4/TCPV6, ``gso_size`` = the MSS)
    whose IP total length / payload length is that of the whole super-segment.

    A TCP super-segment we send (``tx_gso_vnet_header``) carries ``gso_type``
    TCPV4/TCPV6, ``gso_size`` = the MSS, ``hdr_len`` = the IP + TCP header length and
    ``NEEDS_CSUM``; the kernel takes it as one large segment (locally delivered, as a
    GRO packet) or splits it into ``gso_size`` segments (sequence numbers, checksums,
    IPv4 ids; PSH and FIN on the last only), like the segments of a TSO NIC.

    On transmit, a header with ``NEEDS_CSUM``, ``csum_start`` = the IP header length and
    ``csum_offset`` = 16 (the TCP checksum field, RFC 9293 §3.1) asks the kernel to
    complete the checksum: it sums from ``csum_start`` to the end, starting from the
    value already in the field, and stores the complement there. That is correct exactly
    when the field holds the pseudo-header sum (``build_packet(...,
    offload_checksum=True)``) — or any value congruent to it modulo 0xFFFF, which
    includes a complete checksum that happens to equal it. ``tx_vnet_header`` therefore
    asks for completion only when the field holds the pseudo-header sum, and sends every
    other packet (UDP, ICMP, TCP with a complete checksum) with a plain header: a caller
    that computes its own checksums keeps working.

This module is pure (no I/O); ``link/tun.py`` does the system calls.
"""

from __future__ import annotations

import struct
from typing import NamedTuple

from ..wire.checksum import Buffer
from ..wire.drop import DropReason, MalformedPacket
from ..wire.packet import parse_packet_untrusted

__all__ = [
    "VIRTIO_NET_HDR_F_DATA_VALID",
    "VIRTIO_NET_HDR_F_NEEDS_CSUM",
    "VIRTIO_NET_HDR_GSO_NONE",
    "VIRTIO_NET_HDR_GSO_TCPV4",
    "VIRTIO_NET_HDR_GSO_TCPV6",
    "VNET_HDR",
    "VNET_HDR_LEN",
    "VNET_HDR_PLAIN",
    "VirtioNetHdr",
    "rx_tcp_checksum_bad",
    "tx_gso_vnet_header",
    "tx_vnet_header",
]

# linux/include/uapi/linux/virtio_net.h
VIRTIO_NET_HDR_F_NEEDS_CSUM = 1
"""Checksum partial: complete it from ``csum_start``, store at ``csum_start + csum_offset``."""
VIRTIO_NET_HDR_F_DATA_VALID = 2
"""The checksum was verified (received packets only)."""
VIRTIO_NET_HDR_GSO_NONE = 0
VIRTIO_NET_HDR_GSO_TCPV4 = 1
VIRTIO_NET_HDR_GSO_TCPV6 = 4
VIRTIO_NET_HDR_GSO_ECN = 0x80

VNET_HDR = struct.Struct("<BBHHHH")
"""``struct virtio_net_hdr``, little-endian (``TUNSETVNETLE``)."""
VNET_HDR_LEN = VNET_HDR.size  # 10 bytes (``TUNSETVNETHDRSZ``)

_TCP_CHECKSUM_OFFSET = 16  # RFC 9293 §3.1: the checksum field within the TCP header
_IPPROTO_TCP = 6
_IPV4_MIN = 20
_IPV6_LEN = 40
_TCP_MIN = 20

_V4_TCP = struct.Struct("!BxH5xB2xQ16xH")
"""IPv4 without options (RFC 791 §3.1) + TCP: version/IHL, total length, protocol,
source + destination as one integer, the TCP checksum field (RFC 9293 §3.1)."""
_V6_TCP = struct.Struct("!4xHBxQQQQ16xH")
"""IPv6 (RFC 8200 §3) + TCP: payload length, next header, the addresses as four
integers, the TCP checksum field."""
_U16 = struct.Struct("!H")


class VirtioNetHdr(NamedTuple):
    """One ``struct virtio_net_hdr`` (virtio 1.x §5.1.6)."""

    flags: int
    gso_type: int
    hdr_len: int
    gso_size: int
    csum_start: int
    csum_offset: int

    def pack(self) -> bytes:
        """The 10 header bytes (little-endian)."""
        return VNET_HDR.pack(*self)

    @classmethod
    def unpack_from(cls, buf: Buffer, offset: int = 0) -> VirtioNetHdr:
        """Read a header at ``offset`` of ``buf``."""
        return cls._make(VNET_HDR.unpack_from(buf, offset))


VNET_HDR_PLAIN = VirtioNetHdr(0, VIRTIO_NET_HDR_GSO_NONE, 0, 0, 0, 0).pack()
"""Send as is: the packet's checksums are complete."""
_NEEDS_CSUM_V4 = VirtioNetHdr(
    VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_GSO_NONE, 0, 0, _IPV4_MIN, _TCP_CHECKSUM_OFFSET
).pack()
_NEEDS_CSUM_V6 = VirtioNetHdr(
    VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_GSO_NONE, 0, 0, _IPV6_LEN, _TCP_CHECKSUM_OFFSET
).pack()


def tx_vnet_header(packet: Buffer, length: int | None = None) -> bytes:
    """The virtio-net header to write before ``packet`` (an IPv4/IPv6 packet).

    ``length``: the whole packet's length when ``packet`` holds only its headers (the
    payload follows in the same ``writev``).

    ``NEEDS_CSUM`` (``csum_start`` = IP header length, ``csum_offset`` = 16) when the
    packet is TCP directly after the IP header and its checksum field holds the
    pseudo-header sum (RFC 9293 §3.1, RFC 8200 §8.1) modulo 0xFFFF; otherwise the plain
    header (flags 0): the kernel then takes the packet's checksums as they are.

    Under a microsecond for IPv4 without options: one ``unpack_from``.
    """
    n = len(packet) if length is None else length
    if len(packet) < _IPV4_MIN + _TCP_MIN:
        return VNET_HDR_PLAIN
    # Big-endian integers of the addresses are congruent (mod 0xFFFF) to their word sums.
    ver_ihl, total_len, proto, addrs, field = _V4_TCP.unpack_from(packet)
    if ver_ihl == 0x45:  # the common case, one unpack
        if (
            proto != _IPPROTO_TCP
            or not _IPV4_MIN + _TCP_MIN <= total_len <= n
            or (addrs + _IPPROTO_TCP + total_len - _IPV4_MIN - field) % 0xFFFF
        ):
            return VNET_HDR_PLAIN
        return _NEEDS_CSUM_V4
    version = ver_ihl >> 4
    if version == 4:
        ihl = (ver_ihl & 0x0F) << 2
        tcp_len = total_len - ihl
        if proto != _IPPROTO_TCP or ihl < _IPV4_MIN or total_len > n or tcp_len < _TCP_MIN:
            return VNET_HDR_PLAIN
        field = _U16.unpack_from(packet, ihl + _TCP_CHECKSUM_OFFSET)[0]
        if (addrs + _IPPROTO_TCP + tcp_len - field) % 0xFFFF:
            return VNET_HDR_PLAIN
        return VNET_HDR.pack(
            VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_GSO_NONE, 0, 0, ihl, _TCP_CHECKSUM_OFFSET
        )
    if version == 6 and n >= _IPV6_LEN + _TCP_MIN:
        tcp_len, next_header, a0, a1, a2, a3, field = _V6_TCP.unpack_from(packet)
        if (
            next_header != _IPPROTO_TCP
            or not _TCP_MIN <= tcp_len <= n - _IPV6_LEN
            or (a0 + a1 + a2 + a3 + _IPPROTO_TCP + tcp_len - field) % 0xFFFF
        ):
            return VNET_HDR_PLAIN
        return _NEEDS_CSUM_V6
    return VNET_HDR_PLAIN


def tx_gso_vnet_header(headers: Buffer, gso_size: int) -> bytes:
    """The virtio-net header of a TCP super-segment whose IP and TCP headers are ``headers``.

    ``headers`` starts with the IPv4 or IPv6 header, TCP directly after it (the stack's
    own packets), and holds at least the whole TCP header; the checksum field must hold
    the pseudo-header sum over the whole super-segment (``build_packet(...,
    offload_checksum=True)``). ``gso_size``: the payload bytes of each segment (the MSS).
    """
    if headers[0] >> 4 == 4:
        ip_len = (headers[0] & 0x0F) << 2
        gso_type = VIRTIO_NET_HDR_GSO_TCPV4
    else:
        ip_len = _IPV6_LEN
        gso_type = VIRTIO_NET_HDR_GSO_TCPV6
    tcp_len = (headers[ip_len + 12] >> 4) << 2  # data offset (RFC 9293 §3.1)
    return VNET_HDR.pack(
        VIRTIO_NET_HDR_F_NEEDS_CSUM,
        gso_type,
        ip_len + tcp_len,
        gso_size,
        ip_len,
        _TCP_CHECKSUM_OFFSET,
    )


def rx_tcp_checksum_bad(packet: memoryview) -> bool:
    """Whether a received packet has a wrong checksum: TCP's (RFC 9293 §3.1) or, over
    IPv4, its header's (RFC 791).

    For packets that arrive with neither ``NEEDS_CSUM`` nor ``DATA_VALID`` (e.g. from a
    raw socket, or forwarded from a device without receive checksum offload). Uses the
    stack's own parser, so "bad" means exactly what the stack would have dropped as
    ``BAD_TCP_CHECKSUM`` or ``BAD_IP_CHECKSUM``: the stack parses what this passes
    without checking either (the device says it verified them), and the parser stops
    at a bad header checksum before it looks at TCP's -- a frame written onto the
    device with a packet socket skips the kernel's IP input, and came through with
    both wrong. Any other defect (not TCP, truncated, ...) is left for the stack to
    count.
    """
    try:
        parse_packet_untrusted(packet)
    except MalformedPacket as exc:
        return exc.reason is DropReason.BAD_TCP_CHECKSUM or exc.reason is DropReason.BAD_IP_CHECKSUM
    return False
