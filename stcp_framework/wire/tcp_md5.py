"""The TCP MD5 signature option (RFC 2385), as BGP speakers use it.

Every segment of a connection that has a key carries option 19: the MD5 digest of, in
order (RFC 2385 §2.0),

1. the pseudo-header -- for IPv4 (RFC 2385): source and destination address, a zero
   byte, the protocol number and the segment length; for IPv6 the RFC 8200 §8.1
   pseudo-header (addresses, 32-bit length, three zero bytes, next header), as Linux
   signs IPv6 segments;
2. the 20 bytes of the TCP header without its options, the checksum taken as zero;
3. the segment data;
4. the key.

The options are not covered: the digest is computed with its own 16 bytes anywhere in
the option area. A peer with a key for our address drops every segment that lacks a
valid signature, RSTs included; so do we (``Runtime``), and we count why.
"""

from __future__ import annotations

import hashlib
import hmac
import struct

from .tcp import IPPROTO_TCP, Packet

__all__ = ["MAX_KEY_LEN", "md5_digest", "md5_valid"]

MAX_KEY_LEN = 80
"""Longest key Linux accepts (``TCP_MD5SIG_MAXKEYLEN``); BGP peers share its limit."""

_V4_PSEUDO = struct.Struct("!4s4sBBH")
_V6_PSEUDO = struct.Struct("!16s16sI3xB")


def md5_digest(
    src: bytes,
    dst: bytes,
    tcp_header: bytes | bytearray | memoryview,
    payload: bytes | bytearray | memoryview,
    key: bytes,
) -> bytes:
    """The RFC 2385 digest of one segment.

    Args:
        src, dst: Packed IP addresses (4 or 16 bytes).
        tcp_header: The TCP header as sent, at least its first 20 bytes (the options
            after them and the checksum are not hashed).
        payload: The segment data.
        key: The connection's key.
    """
    head = bytes(tcp_header[:20])
    seg_len = ((head[12] >> 4) << 2) + len(payload)
    md5 = hashlib.md5(usedforsecurity=False)
    if len(src) == 4:
        md5.update(_V4_PSEUDO.pack(src, dst, 0, IPPROTO_TCP, seg_len))
    else:
        md5.update(_V6_PSEUDO.pack(src, dst, seg_len, IPPROTO_TCP))
    md5.update(head[:16])
    md5.update(b"\0\0")  # the checksum, taken as zero
    md5.update(head[18:20])
    if payload:
        md5.update(payload)
    md5.update(key)
    return md5.digest()


def md5_valid(packet: Packet, tcp_header: bytes | bytearray | memoryview, key: bytes) -> bool:
    """Whether ``packet`` carries the signature ``key`` gives its segment.

    Args:
        packet: The parsed packet (``parse_packet_untrusted``).
        tcp_header: Its TCP header as received (``packet.tcp_header_of``).
        key: The key for its peer.
    """
    got = packet.tcp.options.md5
    if got is None:
        return False
    want = md5_digest(packet.src, packet.dst, tcp_header, packet.tcp.payload, key)
    return hmac.compare_digest(got, want)
