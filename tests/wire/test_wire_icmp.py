"""ICMP "packet too big" (RFC 1191 fragmentation needed, RFC 4443 packet too big): the
quote of our segment comes back as ``TooBig``; anything else ICMP is not for us."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from stcp_framework.wire.checksum import internet_checksum, pseudo_header_sum
from stcp_framework.wire.drop import DropReason, MalformedPacket
from stcp_framework.wire.icmp import TooBig, build_too_big, parse_too_big_untrusted
from stcp_framework.wire.packet import build_packet
from stcp_framework.wire.tcp import ACK, NO_OPTIONS

US4, PEER4, ROUTER4 = bytes([198, 18, 0, 2]), bytes([198, 18, 1, 2]), bytes([198, 18, 0, 1])
US6 = bytes.fromhex("20010db8000000000000000000000002")
PEER6 = bytes.fromhex("20010db8000000010000000000000002")
ROUTER6 = bytes.fromhex("20010db8000000000000000000000001")


def our_segment(src: bytes, dst: bytes, seq: int = 123456789) -> bytes:
    return bytes(build_packet(src, dst, 9, 40000, seq, 1, ACK, 100, NO_OPTIONS, b"x" * 3000))


def frag_needed(quoted: bytes, mtu: int, *, icmp_type: int = 3, code: int = 4) -> bytes:
    """IPv4 ICMP from the router to us quoting ``quoted`` (RFC 792 asks for the IP header
    and 8 bytes; Linux quotes up to 576 bytes in all), with another type or code if asked."""
    return _retyped(build_too_big(ROUTER4, US4, quoted, mtu), 20, icmp_type, code)


def packet_too_big(quoted: bytes, mtu: int, *, icmp_type: int = 2) -> bytes:
    return _retyped(build_too_big(ROUTER6, US6, quoted, mtu), 40, icmp_type, 0)


def _retyped(packet: bytes, at: int, icmp_type: int, code: int) -> bytes:
    """``packet`` with its ICMP type and code replaced and the checksum made right again."""
    out = bytearray(packet)
    out[at : at + 2] = bytes([icmp_type, code])
    out[at + 2 : at + 4] = b"\0\0"
    body = out[at:]
    pseudo = pseudo_header_sum(ROUTER6, US6, 58, len(body)) if at == 40 else 0
    out[at + 2 : at + 4] = struct.pack("!H", internet_checksum(body, pseudo))
    return bytes(out)


def test_fragmentation_needed_names_our_segment_and_the_mtu() -> None:
    quoted = our_segment(US4, PEER4)[:28]  # IPv4 header + the first 8 bytes of TCP
    assert parse_too_big_untrusted(frag_needed(quoted, 1400)) == TooBig(
        4, 1400, US4, PEER4, 9, 40000, 123456789
    )


def test_packet_too_big_names_our_segment_and_the_mtu() -> None:
    quoted = our_segment(US6, PEER6, seq=7)[:1232]  # RFC 4443: as much as fits in 1280
    assert parse_too_big_untrusted(packet_too_big(quoted, 1280)) == TooBig(
        6, 1280, US6, PEER6, 9, 40000, 7
    )


def test_other_icmp_and_other_protocols_are_not_for_us() -> None:
    quoted = our_segment(US4, PEER4)[:28]
    assert parse_too_big_untrusted(frag_needed(quoted, 1400, code=1)) is None  # host unreach
    assert parse_too_big_untrusted(frag_needed(quoted, 1400, icmp_type=8, code=0)) is None
    assert (
        parse_too_big_untrusted(packet_too_big(our_segment(US6, PEER6), 1280, icmp_type=1)) is None
    )
    assert parse_too_big_untrusted(our_segment(US4, PEER4)) is None  # TCP
    assert parse_too_big_untrusted(b"\x45" + bytes(10)) is None  # too short to tell


@pytest.mark.parametrize(
    ("packet", "detail"),
    [
        (frag_needed(our_segment(US4, PEER4)[:27], 1400), "no IPv4 header and 8 bytes"),
        (frag_needed(bytes(28), 1400), "no IPv4 header"),
        (packet_too_big(our_segment(US6, PEER6)[:47], 1280), "does not quote a TCP segment"),
    ],
)
def test_truncated_quotes_are_dropped(packet: bytes, detail: str) -> None:
    with pytest.raises(MalformedPacket, match=detail) as info:
        parse_too_big_untrusted(packet)
    assert info.value.reason is DropReason.BAD_ICMP


def test_bad_checksums_are_dropped() -> None:
    v4 = bytearray(frag_needed(our_segment(US4, PEER4)[:28], 1400))
    v4[26] ^= 1  # the MTU field
    v6 = bytearray(packet_too_big(our_segment(US6, PEER6)[:100], 1280))
    v6[45] ^= 1
    for packet in (v4, v6):
        with pytest.raises(MalformedPacket) as info:
            parse_too_big_untrusted(bytes(packet))
        assert info.value.reason is DropReason.BAD_ICMP


@given(st.binary(max_size=200), st.sampled_from([0x45, 0x60]), st.sampled_from([1, 58, 6]))
def test_arbitrary_bytes_never_raise_anything_else(tail: bytes, first: int, proto: int) -> None:
    packet = bytearray([first]) + bytearray(tail)
    if len(packet) > 9:
        packet[9 if first == 0x45 else 6] = proto
    try:
        parse_too_big_untrusted(bytes(packet))
    except MalformedPacket as exc:
        assert exc.reason is DropReason.BAD_ICMP
