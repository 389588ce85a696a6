"""Packets: golden bytes (hand-built and captured from Linux), round trips, one test per DropReason.

The ``KERNEL_*`` vectors were captured once from Linux 6.18 through a TUN device in a
private network namespace (198.18.0.1 / 2001:db8::1 connecting to port 80); the
``OURS_*`` ones are what ``build_packet`` produced in that session, and the kernel
accepted them (it answered the SYN-ACK with an ACK and acknowledged the data).
"""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st
from wire_strategies import (
    ipv4_addresses,
    ipv6_addresses,
    ports,
    reference_checksum,
    tcp_flags,
    tcp_options,
    u16,
    u32,
)

from stcp_framework.wire.drop import DropReason, MalformedPacket
from stcp_framework.wire.options import emit_options
from stcp_framework.wire.packet import build_packet, parse_packet_untrusted
from stcp_framework.wire.tcp import ACK, FIN, NO_OPTIONS, PSH, RST, SYN, TcpOptions

A4 = bytes([198, 18, 0, 1])
B4 = bytes([198, 18, 0, 2])
A6 = bytes.fromhex("20010db8000000000000000000000001")
B6 = bytes.fromhex("20010db8000000000000000000000002")

KERNEL_SYN_V4 = (
    "4500003c1d9d4000400690f7c6120001c6120002c82200502b9a52c100000000a002faf000690000"
    "020405b40402080a2113589a000000000103030a"
)
OURS_SYNACK_V4 = (
    "4500003c000040004006ae94c6120002c61200010050c822000003e82b9a52c2a012faf0fc710000"
    "020405b40402080a000000012113589a01030307"
)
KERNEL_DATA_V4 = (
    "4500003e1d9f4000400690f3c6120001c6120002c82200502b9a52c2000003e98018003f0ad40000"
    "0101080a211358cd0000000168656c6c6f2073746370"
)
KERNEL_SYN_V6 = (
    "60056edc0028064020010db800000000000000000000000120010db8000000000000000000000002"
    "c822005057c6280200000000a002fd20e5360000020405a00402080ac838f9d0000000000103030a"
)
OURS_SYNACK_V6 = (
    "600000000028064020010db800000000000000000000000220010db8000000000000000000000001"
    "0050c822000003e857c62803a012faf0e35b0000020405b40402080a00000001c838f9d001030307"
)
KERNEL_DATA_V6 = (
    "60056edc002a064020010db800000000000000000000000120010db8000000000000000000000002"
    "c822005057c62803000003e980180040f1bc00000101080ac838fa030000000168656c6c6f2073746370"
)

SYN_OPTS = TcpOptions(mss=1460, wscale=7, sack_permitted=True, timestamps=(1, 0x2113589A))


def v4(data: str) -> bytearray:
    return bytearray.fromhex(data)


# ---------------------------------------------------------------- golden bytes


@pytest.mark.parametrize(
    ("_description", "hex_packet", "version", "src", "dst", "fields", "options", "payload"),
    [
        (
            "Linux SYN, IPv4",
            KERNEL_SYN_V4,
            4,
            A4,
            B4,
            (51234, 80, 0x2B9A52C1, 0, SYN, 64240, 0),
            TcpOptions(1460, 10, True, (0x2113589A, 0), ()),
            b"",
        ),
        (
            "stcp SYN-ACK, IPv4",
            OURS_SYNACK_V4,
            4,
            B4,
            A4,
            (80, 51234, 1000, 0x2B9A52C2, SYN | ACK, 64240, 0),
            SYN_OPTS,
            b"",
        ),
        (
            "Linux data segment, IPv4",
            KERNEL_DATA_V4,
            4,
            A4,
            B4,
            (51234, 80, 0x2B9A52C2, 1001, PSH | ACK, 63, 0),
            TcpOptions(timestamps=(0x211358CD, 1)),
            b"hello stcp",
        ),
        (
            "Linux SYN, IPv6",
            KERNEL_SYN_V6,
            6,
            A6,
            B6,
            (51234, 80, 0x57C62802, 0, SYN, 64800, 0),
            TcpOptions(1440, 10, True, (0xC838F9D0, 0), ()),
            b"",
        ),
        (
            "stcp SYN-ACK, IPv6",
            OURS_SYNACK_V6,
            6,
            B6,
            A6,
            (80, 51234, 1000, 0x57C62803, SYN | ACK, 64240, 0),
            TcpOptions(1460, 7, True, (1, 0xC838F9D0), ()),
            b"",
        ),
        (
            "Linux data segment, IPv6",
            KERNEL_DATA_V6,
            6,
            A6,
            B6,
            (51234, 80, 0x57C62803, 1001, PSH | ACK, 64, 0),
            TcpOptions(timestamps=(0xC838FA03, 1)),
            b"hello stcp",
        ),
    ],
)
def test_golden_packets(
    _description: str,
    hex_packet: str,
    version: int,
    src: bytes,
    dst: bytes,
    fields: tuple[int, ...],
    options: TcpOptions,
    payload: bytes,
) -> None:
    raw = bytes.fromhex(hex_packet)
    pkt = parse_packet_untrusted(memoryview(raw))
    assert (pkt.version, pkt.src, pkt.dst, pkt.ttl) == (version, src, dst, 64)
    assert tuple(pkt.tcp[:7]) == fields
    assert pkt.tcp.options == options
    assert bytes(pkt.tcp.payload) == payload
    # build_packet reproduces the kernel's bytes, except the fields Linux randomises:
    # the IPv4 identification (and so the header checksum) and the IPv6 flow label.
    built = build_packet(src, dst, *fields[:6], options, payload)  # type: ignore[arg-type,call-arg]
    if version == 4:
        assert built[:4] == raw[:4] and built[6:10] == raw[6:10] and built[12:] == raw[12:]
        assert reference_checksum(bytes(built[:20])) == 0
    else:
        assert built[0] == raw[0] & 0xF0 and built[4:] == raw[4:]


def test_hand_built_syn_ack_bytes() -> None:
    """A SYN-ACK assembled field by field from RFC 791 / RFC 9293 §3.1 / RFC 7323."""
    tcp = (
        struct.pack("!HHIIBBHHH", 80, 51234, 1000, 1, 0xA0, 0x12, 64240, 0, 0)
        + bytes.fromhex("020405b4")  # MSS 1460
        + bytes.fromhex("0402080a")
        + struct.pack("!II", 1, 0)  # SACK-perm, TS
        + bytes.fromhex("01030307")  # NOP, WS 7
    )
    pseudo = B4 + A4 + bytes([0, 6]) + struct.pack("!H", len(tcp))
    tcp = tcp[:16] + struct.pack("!H", reference_checksum(pseudo + tcp)) + tcp[18:]
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), 0, 0x4000, 64, 6, 0, B4, A4)
    ip = ip[:10] + struct.pack("!H", reference_checksum(ip)) + ip[12:]
    expected = ip + tcp
    opts = TcpOptions(mss=1460, wscale=7, sack_permitted=True, timestamps=(1, 0))
    assert build_packet(B4, A4, 80, 51234, 1000, 1, SYN | ACK, 64240, opts, b"") == expected
    assert expected.hex() == (
        "4500003c000040004006ae94c6120002c61200010050c822000003e800000001a012faf0f47a0000"
        "020405b40402080a000000010000000001030307"
    )


def test_payload_is_a_view_not_a_copy() -> None:
    buf = bytearray.fromhex(KERNEL_DATA_V4)
    pkt = parse_packet_untrusted(memoryview(buf))
    assert isinstance(pkt.tcp.payload, memoryview)
    buf[-1] = ord("X")
    assert bytes(pkt.tcp.payload) == b"hello stcX"


def test_trailing_bytes_beyond_total_length_are_ignored() -> None:
    raw = bytes.fromhex(KERNEL_DATA_V4) + b"\x00" * 6  # Ethernet minimum-frame padding
    assert bytes(parse_packet_untrusted(raw).tcp.payload) == b"hello stcp"
    raw6 = bytes.fromhex(KERNEL_DATA_V6) + b"junk"
    assert bytes(parse_packet_untrusted(raw6).tcp.payload) == b"hello stcp"


def test_checksum_can_be_skipped_for_offloaded_devices() -> None:
    raw = v4(KERNEL_DATA_V4)
    raw[36] ^= 0xFF  # TCP checksum
    with pytest.raises(MalformedPacket):
        parse_packet_untrusted(raw)
    assert parse_packet_untrusted(raw, verify_checksum=False).tcp.seq == 0x2B9A52C2


def test_offload_checksum_writes_the_pseudo_header_sum() -> None:
    """CHECKSUM_PARTIAL: the device adds the segment sum to the field and complements."""
    built = build_packet(A4, B4, 1, 2, 3, 4, ACK, 5, NO_OPTIONS, b"abc", offload_checksum=True)
    partial = struct.unpack_from("!H", built, 36)[0]
    tcp_len = len(built) - 20
    pseudo = A4 + B4 + bytes([0, 6]) + struct.pack("!H", tcp_len)
    assert partial == 0xFFFF - reference_checksum(pseudo)
    seg = bytearray(built[20:])
    seg[16:18] = b"\x00\x00"
    device = reference_checksum(bytes(seg), partial)
    built[36:38] = struct.pack("!H", device)
    assert parse_packet_untrusted(built).tcp.payload == b"abc"


def test_build_rejects_oversized_segments() -> None:
    with pytest.raises(ValueError, match="does not fit"):
        build_packet(A6, B6, 1, 2, 3, 4, ACK, 5, NO_OPTIONS, bytes(65536))


# ---------------------------------------------------------------- round trips


def _round_trip(
    src: bytes,
    dst: bytes,
    fields: tuple[int, int, int, int, int, int],
    opts: TcpOptions,
    payload: bytes,
    ttl: int,
    urgent: int,
) -> None:
    built = build_packet(src, dst, *fields, opts, payload, ttl=ttl, urgent=urgent)
    pkt = parse_packet_untrusted(memoryview(built))
    sport, dport, seq, ack, flags, window = fields
    # SACK blocks that do not fit in 40 option bytes (NOP NOP kind len + 8 per block) are left out.
    room = (40 - len(emit_options(opts._replace(sack_blocks=()))) - 4) // 8
    expected_opts = opts._replace(sack_blocks=opts.sack_blocks[: max(room, 0)])
    assert pkt == (
        4 if len(src) == 4 else 6,
        src,
        dst,
        ttl,
        (sport, dport, seq, ack, flags, window, urgent, expected_opts, payload),
    )


segment_fields = st.tuples(ports, ports, u32, u32, tcp_flags, u16)


@given(
    ipv4_addresses,
    ipv4_addresses,
    segment_fields,
    tcp_options,
    st.binary(max_size=2000),
    st.integers(0, 255),
    u16,
)
def test_round_trip_ipv4(
    src: bytes,
    dst: bytes,
    fields: tuple[int, int, int, int, int, int],
    opts: TcpOptions,
    payload: bytes,
    ttl: int,
    urgent: int,
) -> None:
    _round_trip(src, dst, fields, opts, payload, ttl, urgent)


@given(
    ipv6_addresses,
    ipv6_addresses,
    segment_fields,
    tcp_options,
    st.binary(max_size=2000),
    st.integers(0, 255),
    u16,
)
def test_round_trip_ipv6(
    src: bytes,
    dst: bytes,
    fields: tuple[int, int, int, int, int, int],
    opts: TcpOptions,
    payload: bytes,
    ttl: int,
    urgent: int,
) -> None:
    _round_trip(src, dst, fields, opts, payload, ttl, urgent)


def test_round_trip_64k_payload() -> None:
    payload = bytes(range(256)) * 255
    for src, dst in ((A4, B4), (A6, B6)):
        built = build_packet(src, dst, 80, 9, 7, 8, ACK, 1, TcpOptions(timestamps=(1, 2)), payload)
        assert parse_packet_untrusted(built).tcp.payload == payload


# ---------------------------------------------------------------- one test per DropReason


def _syn4(**kw: object) -> bytearray:
    return build_packet(A4, B4, 51234, 80, 1, 0, SYN, 1000, NO_OPTIONS, b"", **kw)  # type: ignore[arg-type]


def _fix_ip4(buf: bytearray) -> bytearray:
    buf[10:12] = b"\x00\x00"
    buf[10:12] = struct.pack("!H", reference_checksum(bytes(buf[: (buf[0] & 15) * 4])))
    return buf


def _fix_tcp(buf: bytearray, off: int, src: bytes, dst: bytes) -> bytearray:
    buf[off + 16 : off + 18] = b"\x00\x00"
    seg = bytes(buf[off:])
    pseudo = (
        src + dst + struct.pack("!HH", 6, len(seg))
        if len(src) == 4
        else (src + dst + struct.pack("!II", len(seg), 6))
    )
    buf[off + 16 : off + 18] = struct.pack("!H", reference_checksum(pseudo + seg))
    return buf


def _tcp4(tcp: bytes) -> bytearray:
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), 0, 0, 64, 6, 0, A4, B4)
    return _fix_tcp(_fix_ip4(bytearray(ip + tcp)), 20, A4, B4)


def _ip6(next_header: int, body: bytes, src: bytes = A6, dst: bytes = B6) -> bytearray:
    return bytearray(
        struct.pack("!IHBB16s16s", 0x60000000, len(body), next_header, 64, src, dst) + body
    )


TCP_SYN = struct.pack("!HHIIBBHHH", 51234, 80, 1, 0, 0x50, SYN, 1000, 0, 0)


def _case(reason: DropReason, buf: bytes | bytearray) -> None:
    with pytest.raises(MalformedPacket) as info:
        parse_packet_untrusted(memoryview(buf))
    assert info.value.reason is reason, info.value


def test_drop_too_short() -> None:
    _case(DropReason.TOO_SHORT, b"")
    _case(DropReason.TOO_SHORT, _syn4()[:19])
    _case(DropReason.TOO_SHORT, bytes(_ip6(6, b""))[:39])
    short = _syn4()[:39]
    short[2:4] = struct.pack("!H", 39)
    _case(DropReason.TOO_SHORT, _fix_ip4(short))  # 19-byte TCP header


def test_drop_bad_version() -> None:
    buf = _syn4()
    buf[0] = 0x55
    _case(DropReason.BAD_VERSION, buf)


def test_drop_bad_header_length() -> None:
    buf = _syn4()
    buf[0] = 0x44  # IHL 16 bytes
    _case(DropReason.BAD_HEADER_LENGTH, buf)
    buf = _syn4()
    buf[0] = 0x4F  # IHL 60 > total length 40
    _case(DropReason.BAD_HEADER_LENGTH, buf + bytes(40))


def test_drop_bad_total_length() -> None:
    _case(DropReason.BAD_TOTAL_LENGTH, _syn4()[:39])  # truncated read
    _case(DropReason.BAD_TOTAL_LENGTH, _ip6(6, TCP_SYN)[:-1])


def test_drop_bad_ip_checksum() -> None:
    buf = _syn4()
    buf[8] = 63  # TTL changed, checksum not updated
    _case(DropReason.BAD_IP_CHECKSUM, buf)


def test_a_device_that_verified_checksums_skips_both() -> None:
    """verify_checksum=False (offload): the kernel built or checked the IPv4 header."""
    buf = _syn4()
    buf[8] = 63  # TTL changed, checksum not updated
    assert parse_packet_untrusted(buf, verify_checksum=False).ttl == 63


@pytest.mark.parametrize("frag", [0x2000, 0x0001, 0x6001])
def test_drop_ipv4_fragment(frag: int) -> None:
    buf = _syn4()
    buf[6:8] = struct.pack("!H", frag)
    _case(DropReason.FRAGMENT, _fix_ip4(buf))


def test_drop_ipv6_fragment_header() -> None:
    _case(DropReason.FRAGMENT, _ip6(44, bytes([6, 0, 0, 0, 0, 0, 0, 1]) + TCP_SYN))
    _case(DropReason.FRAGMENT, _ip6(0, bytes([44, 0]) + bytes(6) + bytes([6]) + bytes(7)))


def test_ipv6_extension_headers_are_skipped() -> None:
    body = bytes([43, 0]) + bytes(6) + bytes([60, 1]) + bytes(14) + bytes([6, 0]) + bytes(6)
    buf = _ip6(0, body + TCP_SYN)
    _fix_tcp(buf, 40 + len(body), A6, B6)
    assert parse_packet_untrusted(buf).tcp.seq == 1


def test_drop_bad_extension_header() -> None:
    _case(DropReason.BAD_EXTENSION_HEADER, _ip6(60, bytes([6, 5]) + bytes(6)))  # runs past end
    _case(DropReason.BAD_EXTENSION_HEADER, _ip6(60, bytes([0, 0]) + bytes(6)))  # HbH not first
    _case(DropReason.BAD_EXTENSION_HEADER, _ip6(60, b""))  # no room for the header
    chain = (bytes([60, 0]) + bytes(6)) * 20
    _case(DropReason.BAD_EXTENSION_HEADER, _ip6(60, chain))


def _with_header(header: int, body: bytes) -> bytearray:
    """An IPv6 SYN behind one extension header (``body``: the bytes after its next
    header and length fields, a multiple of 8 less 2) with a valid TCP checksum."""
    ext = bytes([6, (len(body) + 2) // 8 - 1]) + body
    buf = _ip6(header, ext + TCP_SYN)
    _fix_tcp(buf, 40 + len(ext), A6, B6)
    return buf


@pytest.mark.parametrize(
    "options",
    [
        bytes(6),  # Pad1 x 6
        bytes([1, 4]) + bytes(4),  # PadN
        bytes([0x05, 2, 0, 0]) + bytes([1, 0]),  # a type to skip if unknown (00xxxxxx)
        bytes([0x3E, 0]) + bytes([1, 2, 0, 0]),
    ],
)
def test_ipv6_options_an_unknowing_node_may_skip_pass(options: bytes) -> None:
    for header in (0, 60):  # Hop-by-Hop, Destination Options
        assert parse_packet_untrusted(_with_header(header, options)).tcp.seq == 1


@pytest.mark.parametrize("kind", [0x40, 0x80, 0xC2, 0xFF])
def test_ipv6_options_that_say_discard_if_unknown_drop_the_packet(kind: int) -> None:
    """RFC 8200 §4.2: option types 01xxxxxx, 10xxxxxx, 11xxxxxx ask a node that does
    not know them to discard the packet (they were skipped)."""
    for header in (0, 60):
        _case(DropReason.BAD_EXTENSION_HEADER, _with_header(header, bytes([kind, 4]) + bytes(4)))


def test_ipv6_options_must_fit_their_header() -> None:
    _case(DropReason.BAD_EXTENSION_HEADER, _with_header(60, bytes([1, 5]) + bytes(4)))
    _case(DropReason.BAD_EXTENSION_HEADER, _with_header(60, bytes(5) + bytes([1])))


def test_a_routing_header_with_segments_left_drops_the_packet() -> None:
    """RFC 8200 §4.4: the packet is not at its final destination yet -- and TCP's
    checksum covers that one, not the address in the IPv6 header -- and we know no
    routing type: discarded. With none left it is skipped."""
    _case(DropReason.BAD_EXTENSION_HEADER, _with_header(43, bytes([4, 1]) + bytes(20)))
    _case(DropReason.BAD_EXTENSION_HEADER, _with_header(43, bytes([0, 1]) + bytes(4)))
    assert parse_packet_untrusted(_with_header(43, bytes([4, 0]) + bytes(20))).tcp.seq == 1


def test_drop_not_tcp() -> None:
    buf = _syn4()
    buf[9] = 17
    _case(DropReason.NOT_TCP, _fix_ip4(buf))
    _case(DropReason.NOT_TCP, _ip6(59, b""))
    _case(DropReason.NOT_TCP, _ip6(60, bytes([17, 0]) + bytes(6)))


@pytest.mark.parametrize(
    ("src", "dst"),
    [
        (bytes([224, 0, 0, 1]), B4),
        (b"\xff\xff\xff\xff", B4),
        (bytes(4), B4),
        (A4, bytes([239, 1, 2, 3])),
        (A4, b"\xff\xff\xff\xff"),
        (A4, bytes(4)),
        (bytes.fromhex("ff02" + "00" * 13 + "01"), B6),
        (bytes(16), B6),
        (A6, bytes.fromhex("ff02" + "00" * 13 + "01")),
        (A6, bytes(16)),
    ],
)
def test_drop_bad_address(src: bytes, dst: bytes) -> None:
    _case(DropReason.BAD_ADDRESS, build_packet(src, dst, 1, 80, 1, 0, SYN, 1, NO_OPTIONS, b""))


def test_drop_bad_data_offset() -> None:
    for doff in (0x40, 0x60):  # 16 bytes; 24 bytes > segment
        _case(DropReason.BAD_DATA_OFFSET, _tcp4(TCP_SYN[:12] + bytes([doff]) + TCP_SYN[13:]))


def test_drop_bad_tcp_checksum() -> None:
    buf = _syn4()
    buf[-1] ^= 1
    _case(DropReason.BAD_TCP_CHECKSUM, buf)
    buf6 = bytearray.fromhex(KERNEL_DATA_V6)
    buf6[-1] ^= 0x80
    _case(DropReason.BAD_TCP_CHECKSUM, buf6)


def test_drop_bad_option() -> None:
    tcp = struct.pack("!HHIIBBHHH", 51234, 80, 1, 0, 0x60, SYN, 1000, 0, 0) + bytes([2, 5, 0, 0])
    _case(DropReason.BAD_OPTION, _tcp4(tcp))


@pytest.mark.parametrize(("sport", "dport"), [(0, 80), (51234, 0)])
def test_drop_bad_port(sport: int, dport: int) -> None:
    _case(DropReason.BAD_PORT, build_packet(A4, B4, sport, dport, 1, 0, SYN, 1, NO_OPTIONS, b""))


@pytest.mark.parametrize("flags", [SYN | FIN, SYN | RST, SYN | FIN | RST | ACK])
def test_drop_bad_flags(flags: int) -> None:
    _case(DropReason.BAD_FLAGS, build_packet(A4, B4, 1, 80, 1, 0, flags, 1, NO_OPTIONS, b""))


def test_every_parse_drop_reason_has_a_test() -> None:
    """NO_FLOW, BACKLOG_FULL and RESTORING are the stack's reasons, not the parser's."""
    tested = {
        name[len("test_drop_") :].upper() for name in globals() if name.startswith("test_drop_")
    }
    tested |= {"FRAGMENT"}  # test_drop_ipv4_fragment, test_drop_ipv6_fragment_header
    tested |= {"BAD_ICMP"}  # test_wire_icmp.py (parse_too_big_untrusted)
    stack_only = {"NO_FLOW", "BACKLOG_FULL", "RESTORING"}
    assert {r.name for r in DropReason} - stack_only <= tested


@pytest.mark.parametrize(
    "src,dst",
    [(bytes([198, 18, 0, 2]), bytes([198, 18, 0, 1])), (bytes(15) + b"\x02", bytes(15) + b"\x01")],
)
@pytest.mark.parametrize("offload", [False, True])
def test_header_only_plus_payload_is_the_whole_packet(
    src: bytes, dst: bytes, offload: bool
) -> None:
    payload = bytes(range(256)) * 40
    opts = TcpOptions(timestamps=(1, 2))
    args = (src, dst, 7, 40000, 123, 456, 0x18, 500, opts, payload)
    whole = build_packet(*args, offload_checksum=offload)
    head = build_packet(*args, offload_checksum=offload, header_only=True)
    assert len(head) == len(whole) - len(payload)
    assert bytes(head) + payload == bytes(whole)


@given(
    src=ipv4_addresses,
    dst=ipv4_addresses,
    sport=ports,
    dport=ports,
    seq=u32,
    ack=u32,
    flags=tcp_flags,
    window=u16,
    ts=st.tuples(u32, u32),
    payload=st.binary(max_size=64) | st.integers(0, 65535 - 52).map(bytes),
    ttl=st.integers(0, 255),
    header_only=st.booleans(),
)
def test_timestamp_only_offload_fast_path_equals_the_general_builder(
    src: bytes,
    dst: bytes,
    sport: int,
    dport: int,
    seq: int,
    ack: int,
    flags: int,
    window: int,
    ts: tuple[int, int],
    payload: bytes,
    ttl: int,
    header_only: bool,
) -> None:
    # build_packet's common case (IPv4, NOP NOP TS alone, checksum offload) is built in
    # one pack_into from the field values; byte for byte what the general path gives.
    from stcp_framework.wire.packet import _build_general

    opts = TcpOptions(timestamps=ts)
    fast = build_packet(
        src, dst, sport, dport, seq, ack, flags, window, opts, payload,
        ttl=ttl, offload_checksum=True, header_only=header_only,
    )  # fmt: skip
    general = _build_general(
        src, dst, sport, dport, seq, ack, flags, window, opts, payload,
        ttl, 0, True, header_only,
    )  # fmt: skip
    assert fast == general
