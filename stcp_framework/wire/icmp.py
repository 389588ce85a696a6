"""ICMP "packet too big" for path MTU discovery: ``parse_too_big_untrusted`` (and
``build_too_big``, what a router sends).

A router that cannot forward one of our packets (DF set, RFC 1191; every IPv6 packet,
RFC 8201) answers with ICMP Destination Unreachable / Fragmentation Needed (type 3,
code 4, the next-hop MTU in bytes 6-7) or ICMPv6 Packet Too Big (type 2, the MTU in
bytes 4-7). Either quotes the start of our packet: its IP header and at least the first
8 bytes of the TCP header -- ports and sequence number (RFC 792, RFC 4443 §3.2), which
is all the stack needs to find the connection and check the quote (RFC 5927 §7.2).

Nothing else of ICMP is used: other messages are dropped as not TCP, as before.
"""

from __future__ import annotations

import struct
from typing import NamedTuple

from .checksum import internet_checksum, pseudo_header_sum
from .drop import DropReason, MalformedPacket
from .packet import _IPV4, _IPV6
from .tcp import IPPROTO_TCP

IPPROTO_ICMP = 1
IPPROTO_ICMPV6 = 58
ICMP_DEST_UNREACH = 3
ICMP_FRAG_NEEDED = 4
ICMPV6_PACKET_TOO_BIG = 2

_PORTS_SEQ = struct.Struct("!HHI")
_TOO_BIG4 = struct.Struct("!BBHHH")  # type, code, checksum, unused, next-hop MTU (RFC 1191)
_TOO_BIG6 = struct.Struct("!BBHI")  # type, code, checksum, MTU (RFC 4443 §3.2)


class TooBig(NamedTuple):
    """A "packet too big" about one of our TCP segments.

    Attributes:
        version: 4 or 6.
        mtu: The MTU of the next hop that could not take the packet.
        src, dst: The quoted packet's addresses: ours, then the peer's (packed).
        src_port, dst_port: The quoted TCP ports: ours, then the peer's.
        seq: The quoted segment's sequence number.
    """

    version: int
    mtu: int
    src: bytes
    dst: bytes
    src_port: int
    dst_port: int
    seq: int


def _bad(detail: str) -> MalformedPacket:
    return MalformedPacket(DropReason.BAD_ICMP, detail)


def parse_too_big_untrusted(buf: bytes | memoryview) -> TooBig | None:
    """The "packet too big" in an IP packet, or ``None`` if it carries something else.

    Raises:
        MalformedPacket: ``BAD_ICMP`` for a too-big message that is truncated, has a bad
            checksum, or quotes something that is not one of our TCP segments.
    """
    buf = memoryview(buf)
    n = len(buf)
    if n < 20:
        return None
    version = buf[0] >> 4
    if version == 4:
        ihl = (buf[0] & 0x0F) << 2
        if buf[9] != IPPROTO_ICMP or ihl < 20:
            return None
        end = min(int.from_bytes(buf[2:4], "big"), n)
        icmp = buf[ihl:end]
        if len(icmp) < 8 or icmp[0] != ICMP_DEST_UNREACH or icmp[1] != ICMP_FRAG_NEEDED:
            return None
        if internet_checksum(icmp) != 0:
            raise _bad("ICMP checksum")
        mtu = int.from_bytes(icmp[6:8], "big")
        quoted = icmp[8:]
        if len(quoted) < 28 or quoted[0] >> 4 != 4:
            raise _bad("fragmentation-needed quotes no IPv4 header and 8 bytes")
        q_ihl = (quoted[0] & 0x0F) << 2
        if q_ihl < 20 or len(quoted) < q_ihl + 8 or quoted[9] != IPPROTO_TCP:
            raise _bad("fragmentation-needed does not quote a TCP segment")
        src, dst = bytes(quoted[12:16]), bytes(quoted[16:20])
        tcp_at = q_ihl
    elif version == 6:
        if n < 48 or buf[6] != IPPROTO_ICMPV6:
            return None  # (an ICMPv6 message behind extension headers is not looked at)
        end = min(40 + int.from_bytes(buf[4:6], "big"), n)
        icmp = buf[40:end]
        if len(icmp) < 8 or icmp[0] != ICMPV6_PACKET_TOO_BIG:
            return None
        length = len(icmp)
        pseudo = pseudo_header_sum(bytes(buf[8:24]), bytes(buf[24:40]), IPPROTO_ICMPV6, length)
        if internet_checksum(icmp, pseudo):
            raise _bad("ICMPv6 checksum")
        mtu = int.from_bytes(icmp[4:8], "big")
        quoted = icmp[8:]
        if len(quoted) < 48 or quoted[0] >> 4 != 6 or quoted[6] != IPPROTO_TCP:
            raise _bad("packet-too-big does not quote a TCP segment")
        src, dst = bytes(quoted[8:24]), bytes(quoted[24:40])
        tcp_at = 40
    else:
        return None
    src_port, dst_port, seq = _PORTS_SEQ.unpack_from(quoted, tcp_at)
    return TooBig(version, mtu, src, dst, src_port, dst_port, seq)


def build_too_big(src: bytes, dst: bytes, quoted: bytes | memoryview, mtu: int) -> bytes:
    """What a router at ``src`` sends ``dst`` when ``quoted`` (the start of a packet
    from ``dst``) was too big for a hop of ``mtu`` bytes: ICMP fragmentation needed for
    4-byte addresses, ICMPv6 packet too big for 16-byte ones (for tests and tools)."""
    quoted = bytes(quoted)
    if len(src) == 4:
        body = bytearray(_TOO_BIG4.pack(ICMP_DEST_UNREACH, ICMP_FRAG_NEEDED, 0, 0, mtu) + quoted)
        body[2:4] = internet_checksum(body).to_bytes(2, "big")
        header = bytearray(_IPV4.pack(0x45, 0, 20 + len(body), 0, 0, 64, IPPROTO_ICMP, 0, src, dst))
        header[10:12] = internet_checksum(header).to_bytes(2, "big")
        return bytes(header + body)
    body = bytearray(_TOO_BIG6.pack(ICMPV6_PACKET_TOO_BIG, 0, 0, mtu) + quoted)
    pseudo = pseudo_header_sum(src, dst, IPPROTO_ICMPV6, len(body))
    body[2:4] = internet_checksum(body, pseudo).to_bytes(2, "big")
    return _IPV6.pack(6 << 28, len(body), IPPROTO_ICMPV6, 64, src, dst) + bytes(body)
