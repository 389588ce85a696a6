"""IPv4/IPv6 + TCP packets: ``parse_packet_untrusted`` and ``build_packet``.

Parsing validates in two named phases (STYLE.md §5, PyTCP's split):

1. *Integrity* — can the bytes be read? IP version; IPv4 IHL and total length;
   IPv6 payload length and extension header chain; the IPv4 header checksum; the
   TCP data offset; the TCP checksum over the pseudo-header.
2. *Sanity* — is it legal? Fragments (we do not reassemble), non-TCP payloads,
   source/destination addresses that cannot be a TCP peer, ports 0, SYN+FIN and
   SYN+RST, option lengths.

Each header is read with one precompiled ``struct.Struct.unpack_from``
(STYLE.md §5: about 0.5 µs) and the payload is a ``memoryview`` slice of the input
(no copy). Bytes after the IP total length (Ethernet padding, a TUN read that
returned more) are ignored, as RFC 791/8200 receivers do.

Building writes one preallocated ``bytearray`` with ``pack_into``; the payload is
copied exactly once, into it.
"""

from __future__ import annotations

import struct

from .checksum import _fold, _le_sum
from .drop import DropReason, MalformedPacket
from .options import MD5_DIGEST_LEN, emit_options, parse_options_untrusted
from .tcp import IPPROTO_TCP, NO_OPTIONS, SYN, Packet, TcpOptions, TcpSegment
from .tcp_md5 import md5_digest

IPV4_HEADER_LEN = 20
IPV6_HEADER_LEN = 40
TCP_HEADER_LEN = 20
DEFAULT_TTL = 64
"""Linux ``net.ipv4.ip_default_ttl`` and IPv6 ``hop_limit`` (RFC 1700 value)."""

_IPV4 = struct.Struct("!BBHHHBBH4s4s")
"""version/IHL, DSCP/ECN, total length, id, flags/fragment offset, TTL, protocol, checksum,
source, destination (RFC 791 §3.1)."""
_IPV6 = struct.Struct("!IHBB16s16s")
"""version/traffic class/flow label, payload length, next header, hop limit, source,
destination (RFC 8200 §3)."""
_TCP = struct.Struct("!HHIIBBHHH")
"""source port, destination port, seq, ack, data offset, flags, window, checksum, urgent
pointer (RFC 9293 §3.1)."""
_U16 = struct.Struct("!H")
_NOP_NOP_TS = struct.Struct("!III")
_NOP_NOP_TS_WORD = 0x0101080A
_TS_ONLY_DOFF = TCP_HEADER_LEN + 12
_TS_THL = _TS_ONLY_DOFF
# IPv4 header, TCP header, NOP NOP TS (build_packet's common case, one pack_into).
_V4_TS_HEADERS = struct.Struct("!BBHHHBBH4s4sHHIIBBHHHIII")

_IPV4_DF = 0x4000
_IPV4_MF_OR_OFFSET = 0x3FFF
_IPV6_HOP_BY_HOP = 0
_IPV6_ROUTING = 43
_IPV6_FRAGMENT = 44
_IPV6_DEST_OPTS = 60
_IPV6_MAX_EXT_HEADERS = 16
"""A bound on the extension-header walk (each header is >= 8 bytes anyway)."""

# In the little-endian domain of ``checksum._le_sum`` the big-endian word 0x0006
# (zero byte, protocol) reads as 0x0600.
_LE_PROTO_TCP = IPPROTO_TCP << 8
_FIN_OR_RST = 0x05

_V4_BROADCAST = b"\xff\xff\xff\xff"
_V4_ANY = b"\x00\x00\x00\x00"
_V6_ANY = bytes(16)

_from_bytes = int.from_bytes
_new = tuple.__new__


def _drop(reason: DropReason, detail: str = "") -> MalformedPacket:
    return MalformedPacket(reason, detail)


def parse_packet_untrusted(
    buf: bytes | bytearray | memoryview, *, verify_checksum: bool = True
) -> Packet:
    """Parse one IPv4 or IPv6 packet carrying TCP.

    Args:
        buf: The packet as read from the device (no link header). A ``memoryview``
            avoids a copy of the payload; other bytes-like objects are wrapped.
        verify_checksum: Check the TCP checksum and the IPv4 header checksum. Pass
            ``False`` only for a device that has already verified them (offload: the
            kernel verified or built every packet it hands over, and its IP input
            drops a bad header checksum before routing anything to us).

    Returns:
        The packet; ``packet.tcp.payload`` is a view into ``buf``.

    Raises:
        MalformedPacket: The only exception, with the ``DropReason`` to count.
    """
    if type(buf) is not memoryview:
        buf = memoryview(buf)
    n = len(buf)
    if n == 0:
        raise _drop(DropReason.TOO_SHORT, "empty packet")
    version = buf[0] >> 4
    # ---- integrity: IP header ----
    if version == 4:
        if n < IPV4_HEADER_LEN:
            raise _drop(DropReason.TOO_SHORT, f"{n} bytes < IPv4 header")
        ver_ihl, _tos, total_len, _ident, frag, ttl, proto, _csum, src, dst = _IPV4.unpack_from(buf)
        ihl = (ver_ihl & 0x0F) << 2
        if ihl < IPV4_HEADER_LEN:
            raise _drop(DropReason.BAD_HEADER_LENGTH, f"IHL {ihl} bytes")
        if total_len > n:
            raise _drop(DropReason.BAD_TOTAL_LENGTH, f"total length {total_len} > {n} bytes read")
        if total_len < ihl:
            raise _drop(DropReason.BAD_HEADER_LENGTH, f"IHL {ihl} > total length {total_len}")
        # Valid iff the header sums to (negative) zero; version 4 makes it non-zero.
        if verify_checksum and _from_bytes(buf[:ihl], "little") % 0xFFFF:
            raise _drop(DropReason.BAD_IP_CHECKSUM)
        # ---- sanity: IP ----
        if frag & _IPV4_MF_OR_OFFSET:
            raise _drop(DropReason.FRAGMENT, f"flags/offset {frag:#06x}")
        if proto != IPPROTO_TCP:
            raise _drop(DropReason.NOT_TCP, f"protocol {proto}")
        if src[0] >= 224 or src == _V4_ANY:  # multicast, class E incl. broadcast, 0.0.0.0
            raise _drop(DropReason.BAD_ADDRESS, "source is not unicast")
        if (dst[0] >= 224 and (dst[0] < 240 or dst == _V4_BROADCAST)) or dst == _V4_ANY:
            # RFC 1122 §4.2.3.10: TCP is unicast only.
            raise _drop(DropReason.BAD_ADDRESS, "destination is not unicast")
        off = ihl
        end = total_len
        addr_at, addr_end = 12, 20
    elif version == 6:
        if n < IPV6_HEADER_LEN:
            raise _drop(DropReason.TOO_SHORT, f"{n} bytes < IPv6 header")
        _vtcfl, payload_len, next_header, ttl, src, dst = _IPV6.unpack_from(buf)
        end = IPV6_HEADER_LEN + payload_len
        if end > n:
            raise _drop(DropReason.BAD_TOTAL_LENGTH, f"payload length {payload_len} > {n - 40}")
        off = IPV6_HEADER_LEN
        if next_header != IPPROTO_TCP:
            off, next_header = _skip_ipv6_extension_headers(buf, off, end, next_header)
        if src[0] == 0xFF or src == _V6_ANY:
            raise _drop(DropReason.BAD_ADDRESS, "source is not unicast")
        if dst[0] == 0xFF or dst == _V6_ANY:
            raise _drop(DropReason.BAD_ADDRESS, "destination is not unicast")
        addr_at, addr_end = 8, 40
    else:
        raise _drop(DropReason.BAD_VERSION, f"version {version}")
    # ---- integrity: TCP ----
    tcp_len = end - off
    if tcp_len < TCP_HEADER_LEN:
        raise _drop(DropReason.TOO_SHORT, f"TCP segment of {tcp_len} bytes")
    src_port, dst_port, seq, ack, data_offset, flags, window, _tcsum, urgent = _TCP.unpack_from(
        buf, off
    )
    doff = (data_offset >> 4) << 2
    if doff < TCP_HEADER_LEN or doff > tcp_len:
        raise _drop(DropReason.BAD_DATA_OFFSET, f"data offset {doff}, segment {tcp_len}")
    if (
        verify_checksum
        and (
            _from_bytes(buf[addr_at:addr_end], "little")
            + _LE_PROTO_TCP
            + (((tcp_len & 0xFF) << 8) | (tcp_len >> 8))
            + _le_sum(buf[off:end])
        )
        % 0xFFFF
    ):
        raise _drop(DropReason.BAD_TCP_CHECKSUM)
    # ---- sanity: TCP ----
    if src_port == 0 or dst_port == 0:
        raise _drop(DropReason.BAD_PORT, f"ports {src_port} > {dst_port}")
    if flags & SYN and flags & _FIN_OR_RST:
        raise _drop(DropReason.BAD_FLAGS, f"flags {flags:#04x}")
    if doff == TCP_HEADER_LEN:
        options = NO_OPTIONS
    elif (
        doff == _TS_ONLY_DOFF
        and (ts := _NOP_NOP_TS.unpack_from(buf, off + TCP_HEADER_LEN))[0] == _NOP_NOP_TS_WORD
    ):
        # Fast path: NOP NOP TS, the options of every data segment of a timestamp
        # connection (RFC 7323 Appendix A), as Linux's tcp_fast_parse_options does.
        options = _new(TcpOptions, (None, None, False, (ts[1], ts[2]), (), None))
    else:
        options = parse_options_untrusted(buf[off + TCP_HEADER_LEN : off + doff])
    # NamedTuples built positionally with tuple.__new__ (no argument parsing: one per
    # packet, STYLE.md §5).
    payload = buf[off + doff : end]
    seg = _new(TcpSegment, (src_port, dst_port, seq, ack, flags, window, urgent, options, payload))
    return _new(Packet, (version, src, dst, ttl, seg))


def tcp_header_of(buf: memoryview) -> memoryview:
    """The TCP header (with its options) of a packet ``parse_packet_untrusted`` took,
    e.g. to check its MD5 signature (``tcp_md5.md5_valid``)."""
    if buf[0] >> 4 == 4:
        off = (buf[0] & 0x0F) << 2
    else:
        off, _ = _skip_ipv6_extension_headers(buf, IPV6_HEADER_LEN, len(buf), buf[6])
    return buf[off : off + ((buf[off + 12] >> 4) << 2)]


_MD5_PLACEHOLDER = bytes(MD5_DIGEST_LEN)


def _skip_ipv6_extension_headers(
    buf: memoryview, off: int, end: int, next_header: int
) -> tuple[int, int]:
    """Walk the IPv6 extension headers (RFC 8200 §4) up to TCP.

    Hop-by-Hop (only first, RFC 8200 §4.1), Routing and Destination Options are
    processed as a final destination that knows none of their options or routing
    types does: a Routing header with segments left is dropped (§4.4: its packet is
    not for us yet, and TCP's checksum covers the final destination), so is an option
    whose type says "discard if unrecognized" (its two high bits not 00, §4.2); the
    rest are skipped by their lengths. A Fragment header means a fragment we do not
    reassemble; anything else (no next header, ESP, UDP, ...) is not TCP.

    Returns:
        ``(offset of the TCP header, IPPROTO_TCP)``.
    """
    for index in range(_IPV6_MAX_EXT_HEADERS):
        if next_header == IPPROTO_TCP:
            return off, next_header
        if next_header == _IPV6_FRAGMENT:
            raise _drop(DropReason.FRAGMENT, "IPv6 fragment header")
        if next_header == _IPV6_HOP_BY_HOP and index > 0:
            raise _drop(DropReason.BAD_EXTENSION_HEADER, "hop-by-hop header not first")
        if next_header not in (_IPV6_HOP_BY_HOP, _IPV6_ROUTING, _IPV6_DEST_OPTS):
            raise _drop(DropReason.NOT_TCP, f"next header {next_header}")
        if off + 8 > end:  # (every extension header is a multiple of 8 bytes)
            raise _drop(DropReason.BAD_EXTENSION_HEADER, f"header {next_header} truncated")
        stop = off + ((buf[off + 1] + 1) << 3)
        if stop > end:
            raise _drop(DropReason.BAD_EXTENSION_HEADER, "extension header runs past payload")
        if next_header == _IPV6_ROUTING:
            if buf[off + 3]:
                raise _drop(
                    DropReason.BAD_EXTENSION_HEADER,
                    f"routing header type {buf[off + 2]} with {buf[off + 3]} segments left",
                )
        else:
            _check_ipv6_options(buf, off + 2, stop)
        next_header = buf[off]
        off = stop
    if next_header == IPPROTO_TCP:
        return off, next_header
    raise _drop(DropReason.BAD_EXTENSION_HEADER, "too many extension headers")


def _check_ipv6_options(buf: memoryview, off: int, stop: int) -> None:
    """The TLV options of a Hop-by-Hop or Destination Options header (RFC 8200 §4.2):
    Pad1 and PadN, and any other whose type's two high bits are 00 ("skip over this
    option"), pass; another type asks an unknowing node to discard the packet."""
    while off < stop:
        kind = buf[off]
        if kind == 0:  # Pad1
            off += 1
            continue
        if off + 2 > stop:
            raise _drop(DropReason.BAD_EXTENSION_HEADER, f"option {kind} truncated")
        if kind != 1 and kind >> 6:
            raise _drop(DropReason.BAD_EXTENSION_HEADER, f"unrecognized option type {kind:#04x}")
        off += 2 + buf[off + 1]
        if off > stop:
            raise _drop(DropReason.BAD_EXTENSION_HEADER, f"option {kind} runs past its header")


def build_packet(
    src: bytes,
    dst: bytes,
    src_port: int,
    dst_port: int,
    seq: int,
    ack: int,
    flags: int,
    window: int,
    options: TcpOptions,
    payload: bytes | bytearray | memoryview,
    *,
    ttl: int = DEFAULT_TTL,
    urgent: int = 0,
    offload_checksum: bool = False,
    header_only: bool = False,
    md5_key: bytes | None = None,
) -> bytearray:
    """Build an IPv4 (``len(src) == 4``) or IPv6 packet carrying one TCP segment.

    IPv4: IHL 5, TOS 0, identification 0, DF set (we do path MTU discovery, RFC
    1191), header checksum filled in. IPv6: traffic class and flow label 0.

    Args:
        src: Packed source address (4 or 16 bytes).
        dst: Packed destination address (same family).
        src_port: TCP source port.
        dst_port: TCP destination port.
        seq: Sequence number (32-bit).
        ack: Acknowledgment number (32-bit; sent as given even without ACK).
        flags: TCP flag bits (``TcpFlags``).
        window: The 16-bit window field, already scaled down.
        options: Options, emitted by ``emit_options``.
        payload: Segment data; copied once into the result.
        ttl: IPv4 TTL or IPv6 hop limit.
        urgent: Urgent pointer (RFC 9293 §3.1).
        offload_checksum: Leave the TCP checksum to the device: the field holds
            the folded pseudo-header sum, not complemented, as Linux's
            ``CHECKSUM_PARTIAL`` / virtio-net ``VIRTIO_NET_HDR_F_NEEDS_CSUM``
            expects (``csum_start`` = IP header length, ``csum_offset`` = 16).
        header_only: Return only the IP and TCP headers (lengths and checksums still
            cover ``payload``): the caller writes ``payload`` right after them (a
            ``writev``), so a 64 KB payload is never copied in Python.
        md5_key: Sign the segment with this key (RFC 2385, ``tcp_md5.py``): the MD5
            signature option goes first, before ``options`` (whose ``md5`` is ignored).

    Returns:
        The packet bytes (or its headers, with ``header_only``).
    """
    if md5_key is not None:
        options = options._replace(md5=_MD5_PLACEHOLDER)
    elif (
        offload_checksum
        and options is not NO_OPTIONS
        and options[3] is not None  # timestamps only: every segment after the SYNs
        and options[0] is None
        and options[1] is None
        and not options[2]
        and not options[4]
        and options[5] is None
        and len(src) == 4
        and not urgent
    ):
        return _build_v4_ts_offload(
            src, dst, src_port, dst_port, seq, ack, flags, window, options[3], payload,
            ttl, header_only,
        )  # fmt: skip
    return _build_general(
        src, dst, src_port, dst_port, seq, ack, flags, window, options, payload,
        ttl, urgent, offload_checksum, header_only, md5_key,
    )  # fmt: skip


def _build_v4_ts_offload(
    src: bytes,
    dst: bytes,
    src_port: int,
    dst_port: int,
    seq: int,
    ack: int,
    flags: int,
    window: int,
    timestamps: tuple[int, int],
    payload: bytes | bytearray | memoryview,
    ttl: int,
    header_only: bool,
) -> bytearray:
    """``build_packet``'s common case in one ``pack_into``: IPv4, the NOP NOP TS options
    alone, checksum offload. The sums are taken from the fields (one's complement
    addition commutes with the byte order), which ``_build_general`` reads back from
    the packet; ``tests/wire/test_packet_build.py`` checks that both agree."""
    plen = len(payload)
    tcp_len = _TS_THL + plen
    if tcp_len > 0xFFFF - IPV4_HEADER_LEN:
        raise ValueError(f"segment of {tcp_len} bytes does not fit an IP packet")
    total = IPV4_HEADER_LEN + tcp_len
    a = _from_bytes(src, "big")
    b = _from_bytes(dst, "big")
    addr = (a >> 16) + (a & 0xFFFF) + (b >> 16) + (b & 0xFFFF)
    ip_csum = 0xFFFF - _fold(0x4500 + total + _IPV4_DF + (ttl << 8 | IPPROTO_TCP) + addr)
    tcp_csum = _fold(addr + IPPROTO_TCP + tcp_len)  # pseudo-header sum, not complemented
    copy = plen and not header_only
    buf = bytearray(_V4_TS_HEADERS.size + plen if copy else _V4_TS_HEADERS.size)
    _V4_TS_HEADERS.pack_into(
        buf, 0, 0x45, 0, total, 0, _IPV4_DF, ttl, IPPROTO_TCP, ip_csum, src, dst,
        src_port, dst_port, seq, ack, _TS_THL << 2, flags, window, tcp_csum, 0,
        _NOP_NOP_TS_WORD, timestamps[0], timestamps[1],
    )  # fmt: skip
    if copy:
        buf[_V4_TS_HEADERS.size :] = payload
    return buf


def _build_general(
    src: bytes,
    dst: bytes,
    src_port: int,
    dst_port: int,
    seq: int,
    ack: int,
    flags: int,
    window: int,
    options: TcpOptions,
    payload: bytes | bytearray | memoryview,
    ttl: int,
    urgent: int,
    offload_checksum: bool,
    header_only: bool,
    md5_key: bytes | None = None,
) -> bytearray:
    opt = b"" if options is NO_OPTIONS else emit_options(options)
    thl = TCP_HEADER_LEN + len(opt)
    tcp_len = thl + len(payload)
    if tcp_len > 0xFFFF - IPV4_HEADER_LEN if len(src) == 4 else tcp_len > 0xFFFF:
        raise ValueError(f"segment of {tcp_len} bytes does not fit an IP packet")
    size = tcp_len - len(payload) if header_only else tcp_len
    if len(src) == 4:
        off = IPV4_HEADER_LEN
        total = off + tcp_len
        buf = bytearray(off + size)
        _IPV4.pack_into(buf, 0, 0x45, 0, total, 0, _IPV4_DF, ttl, IPPROTO_TCP, 0, src, dst)
        view = memoryview(buf)
        _U16.pack_into(buf, 10, 0xFFFF - _fold(_from_bytes(view[:IPV4_HEADER_LEN], "big")))
    else:
        off = IPV6_HEADER_LEN
        buf = bytearray(off + size)
        _IPV6.pack_into(buf, 0, 0x60000000, tcp_len, IPPROTO_TCP, ttl, src, dst)
        view = memoryview(buf)
    _TCP.pack_into(buf, off, src_port, dst_port, seq, ack, thl << 2, flags, window, 0, urgent)
    data_at = off + thl
    if opt:
        buf[off + TCP_HEADER_LEN : data_at] = opt
    if md5_key is not None:
        # (the signature option comes first: NOP NOP 19 18, then its 16 bytes)
        at = off + TCP_HEADER_LEN + 4
        buf[at : at + MD5_DIGEST_LEN] = md5_digest(
            src, dst, view[off : off + TCP_HEADER_LEN], payload, md5_key
        )
    if payload and not header_only:
        buf[data_at:] = payload
    # Pseudo-header (addresses read back from the packet), then the TCP header;
    # the payload's sum is taken from the caller's buffer (bytes: no extra copy).
    le = (
        _from_bytes(view[off - 8 if off == IPV4_HEADER_LEN else 8 : off], "little")
        + _LE_PROTO_TCP
        + (((tcp_len & 0xFF) << 8) | (tcp_len >> 8))
    )
    if offload_checksum:
        s = _fold(le)
        csum = ((s & 0xFF) << 8) | (s >> 8)
    else:
        s = _fold(le + _le_sum(view[off:data_at]) + (_le_sum(payload) if payload else 0))
        csum = 0xFFFF - (((s & 0xFF) << 8) | (s >> 8))
    _U16.pack_into(buf, off + 16, csum)
    return buf
