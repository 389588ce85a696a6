"""TCP header values (RFC 9293 §3.1) shared by parser, builder and the machine.

Contract types only live here; parsing and building are in ``packet.py`` /
``options.py``.
"""

from __future__ import annotations

import enum
from typing import NamedTuple

IPPROTO_TCP = 6
"""TCP's IP protocol number (IPv4 protocol, IPv6 next header)."""


class TcpFlags(enum.IntFlag):
    FIN = 0x01
    SYN = 0x02
    RST = 0x04
    PSH = 0x08
    ACK = 0x10
    URG = 0x20
    ECE = 0x40
    CWR = 0x80


FIN = int(TcpFlags.FIN)
SYN = int(TcpFlags.SYN)
RST = int(TcpFlags.RST)
PSH = int(TcpFlags.PSH)
ACK = int(TcpFlags.ACK)
URG = int(TcpFlags.URG)


class TcpOptions(NamedTuple):
    """The TCP options stcp understands. Unknown options are skipped when parsing.

    Attributes:
        mss: Maximum Segment Size (kind 2, RFC 9293 §3.7.1), SYN only.
        wscale: Window scale shift count (kind 3, RFC 7323 §2), SYN only.
        sack_permitted: SACK-permitted (kind 4, RFC 2018), SYN only.
        timestamps: ``(tsval, tsecr)`` (kind 8, RFC 7323 §3).
        sack_blocks: ``((left, right), ...)`` sequence numbers (kind 5, RFC 2018).
        md5: The 16-byte MD5 signature (kind 19, RFC 2385) of a received segment;
            ``build_packet(md5_key=...)`` signs a segment we send.
    """

    mss: int | None = None
    wscale: int | None = None
    sack_permitted: bool = False
    timestamps: tuple[int, int] | None = None
    sack_blocks: tuple[tuple[int, int], ...] = ()
    md5: bytes | None = None


NO_OPTIONS = TcpOptions()


class TcpSegment(NamedTuple):
    """One TCP segment as the machine sees it (addresses live in ``Packet``).

    ``window`` is the raw 16-bit header field, *not* scaled. ``payload`` is a
    ``memoryview`` into the receive buffer on the hot path; never copy it there.
    """

    src_port: int
    dst_port: int
    seq: int
    ack: int
    flags: int
    window: int
    urgent: int
    options: TcpOptions
    payload: memoryview | bytes


class Packet(NamedTuple):
    """A parsed IPv4 or IPv6 packet carrying TCP.

    ``src``/``dst`` are packed addresses (4 bytes for IPv4, 16 for IPv6); the
    flow key of the stack is ``(src, tcp.src_port, dst, tcp.dst_port)``.
    """

    version: int
    src: bytes
    dst: bytes
    ttl: int
    tcp: TcpSegment
