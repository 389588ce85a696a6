"""The TCP MD5 signature option (RFC 2385) against segments Linux signed: a SYN and a
data segment, over IPv4 and IPv6, captured on a namespace's loopback from two kernel
sockets with ``TCP_MD5SIG`` and the key below (loopback leaves their TCP checksums
unfinished, as for checksum offload: they are parsed without checking them). Our check
takes them and refuses them under another key or with a byte changed; our signing of
the same segments gives Linux's digest, in Linux's option layout."""

from __future__ import annotations

import pytest

from stcp_framework.wire.options import MD5_OPTION_LEN, emit_options, parse_options_untrusted
from stcp_framework.wire.packet import build_packet, parse_packet_untrusted, tcp_header_of
from stcp_framework.wire.tcp import TcpOptions
from stcp_framework.wire.tcp_md5 import md5_valid

KEY = b"stcp-md5-test-key"

LINUX = {
    "IPv4 SYN": (
        "450000484c9040004006f01d7f0000017f00000192fc1e619bb48ac700000000d002ffd7fe3c0000"
        "01011312bd469646caf82904222079df9e6a9c810204ffd7010104020103030a"
    ),
    "IPv4 data": (
        "4500004f4c9240004006f0147f0000017f00000192fc1e619bb48ac88e1f1f86a0180040fe430000"
        "01011312b3151d7b9158db53463bff958c73b00568656c6c6f2c207369676e656420776f726c64"
    ),
    "IPv6 SYN": (
        "60041b6e003406400000000000000000000000000000000100000000000000000000000000000001"
        "beb81e616fe477aa00000000d002ffc4003c00000101131276fbfdaa13963f15c10793ff5d8e9083"
        "0204ffc4010104020103030a"
    ),
    "IPv6 data": (
        "60041b6e003b06400000000000000000000000000000000100000000000000000000000000000001"
        "beb81e616fe477ab4be7f495a018004000430000010113124b688f55092e5ea336c4eba0f57243c1"
        "68656c6c6f2c207369676e656420776f726c64"
    ),
}


@pytest.mark.parametrize("name", LINUX)
def test_linux_signatures_check_out_with_the_key_only(name: str) -> None:
    buf = memoryview(bytes.fromhex(LINUX[name]))
    pkt = parse_packet_untrusted(buf, verify_checksum=False)
    assert pkt.tcp.options.md5 is not None
    assert md5_valid(pkt, tcp_header_of(buf), KEY)
    assert not md5_valid(pkt, tcp_header_of(buf), KEY + b"!")
    assert not md5_valid(pkt, tcp_header_of(buf), b"")


@pytest.mark.parametrize("name", LINUX)
def test_a_changed_byte_fails_the_check(name: str) -> None:
    raw = bytearray.fromhex(LINUX[name])
    pkt = parse_packet_untrusted(memoryview(raw), verify_checksum=False)
    spots = [(20 if raw[0] >> 4 == 4 else 40) + 4]  # SEG.SEQ
    if pkt.tcp.payload:
        spots.append(len(raw) - 1)  # the data
    for at in spots:
        changed = bytearray(raw)
        changed[at] ^= 1
        buf = memoryview(bytes(changed))
        pkt = parse_packet_untrusted(buf, verify_checksum=False)
        assert not md5_valid(pkt, tcp_header_of(buf), KEY)


@pytest.mark.parametrize("name", LINUX)
def test_we_sign_as_linux_does(name: str) -> None:
    buf = memoryview(bytes.fromhex(LINUX[name]))
    pkt = parse_packet_untrusted(buf, verify_checksum=False)
    seg = pkt.tcp
    ours = build_packet(
        pkt.src,
        pkt.dst,
        seg.src_port,
        seg.dst_port,
        seg.seq,
        seg.ack,
        seg.flags,
        seg.window,
        seg.options._replace(md5=None),
        seg.payload,
        ttl=pkt.ttl,
        md5_key=KEY,
    )
    theirs, mine = bytearray(tcp_header_of(buf)), bytearray(tcp_header_of(memoryview(ours)))
    theirs[16:18] = mine[16:18] = b"\0\0"  # (the checksums: ours is complete)
    assert mine == theirs
    assert parse_packet_untrusted(ours).tcp.options.md5 == seg.options.md5


def test_the_signature_goes_first_and_leaves_no_room_for_sack_blocks_after_timestamps() -> None:
    signed = TcpOptions(md5=bytes(range(16)), timestamps=(1, 2), sack_blocks=((5, 6),))
    wire = emit_options(signed)
    assert wire[:4] == b"\x01\x01\x13\x12" and wire[4:20] == bytes(range(16))
    assert len(wire) == MD5_OPTION_LEN + 12  # NOP NOP TS; no SACK block fits (Linux too)
    assert parse_options_untrusted(wire) == signed._replace(sack_blocks=())
    alone = TcpOptions(md5=bytes(16), sack_blocks=((5, 6), (7, 8)))
    assert parse_options_untrusted(emit_options(alone)) == alone


def test_an_md5_option_of_another_length_is_no_signature_and_is_skipped() -> None:
    """As Linux's ``tcp_parse_md5sig_option``: no error (a stack without keys takes the
    segment), no signature (a stack with a key for the peer drops it as unsigned)."""
    wire = bytes.fromhex("130a" + "00" * 8) + bytes.fromhex("020405b4")
    assert parse_options_untrusted(wire) == TcpOptions(mss=1460)
