"""The ``*_untrusted`` contract: arbitrary bytes give a value or MalformedPacket, nothing else."""

from __future__ import annotations

import random

from hypothesis import example, given, settings
from hypothesis import strategies as st

from stcp_framework.wire.drop import MalformedPacket
from stcp_framework.wire.options import parse_options_untrusted
from stcp_framework.wire.packet import build_packet, parse_packet_untrusted
from stcp_framework.wire.tcp import ACK, SYN, Packet, TcpOptions

A4 = bytes([198, 18, 0, 1])
B4 = bytes([198, 18, 0, 2])
A6 = bytes.fromhex("20010db8000000000000000000000001")
B6 = bytes.fromhex("20010db8000000000000000000000002")
VALID = [
    build_packet(A4, B4, 51234, 80, 1, 0, SYN, 64240, TcpOptions(1460, 7, True, (1, 0)), b""),
    build_packet(A4, B4, 51234, 80, 1, 2, ACK, 501, TcpOptions(timestamps=(3, 4)), b"x" * 100),
    build_packet(A6, B6, 51234, 80, 1, 2, ACK, 501, TcpOptions(sack_blocks=((5, 6),)), b"y" * 33),
]


def _parse_or_drop(buf: bytes | bytearray, verify_checksum: bool = True) -> None:
    try:
        pkt = parse_packet_untrusted(memoryview(buf), verify_checksum=verify_checksum)
    except MalformedPacket:
        return
    assert isinstance(pkt, Packet)


@given(st.binary(max_size=200), st.booleans())
@example(b"\x45", True)
@example(b"\x60" + bytes(39), True)
def test_arbitrary_bytes(buf: bytes, verify: bool) -> None:
    _parse_or_drop(buf, verify)


@given(st.integers(0, 3), st.binary(max_size=120))
def test_arbitrary_bytes_behind_a_plausible_ip_header(variant: int, tail: bytes) -> None:
    """Random bytes behind a valid-looking IP header reach the TCP and option parsers."""
    base = VALID[2 if variant == 3 else variant]
    header_len = 40 if variant == 3 else 20
    buf = bytearray(base[:header_len]) + tail
    if header_len == 20:
        buf[2:4] = len(buf).to_bytes(2, "big")
        buf[10:12] = b"\x00\x00"
        s = sum(int.from_bytes(buf[i : i + 2], "big") for i in range(0, 20, 2))
        while s >> 16:
            s = (s & 0xFFFF) + (s >> 16)
        buf[10:12] = (~s & 0xFFFF).to_bytes(2, "big")
    else:
        buf[4:6] = len(tail).to_bytes(2, "big")
    _parse_or_drop(buf, verify_checksum=False)
    _parse_or_drop(buf)


@given(st.sampled_from(range(len(VALID))), st.data())
def test_mutated_valid_packets(index: int, data: st.DataObject) -> None:
    buf = bytearray(VALID[index])
    for _ in range(data.draw(st.integers(1, 4))):
        pos = data.draw(st.integers(0, len(buf) - 1))
        buf[pos] = data.draw(st.integers(0, 255))
    _parse_or_drop(buf)
    _parse_or_drop(buf, verify_checksum=False)


@given(st.sampled_from(range(len(VALID))), st.data())
def test_truncated_valid_packets(index: int, data: st.DataObject) -> None:
    buf = VALID[index]
    _parse_or_drop(buf[: data.draw(st.integers(0, len(buf)))])


def test_every_single_byte_value_at_every_position() -> None:
    """Exhaustive single-byte mutation of the SYN (60 positions x 256 values)."""
    for base in VALID[:1]:
        for pos in range(len(base)):
            for value in range(256):
                buf = bytearray(base)
                buf[pos] = value
                _parse_or_drop(buf, verify_checksum=False)


@settings(max_examples=300)
@given(st.binary(max_size=40))
def test_arbitrary_options(buf: bytes) -> None:
    try:
        opts = parse_options_untrusted(buf)
    except MalformedPacket:
        return
    assert isinstance(opts, TcpOptions)
    assert opts.wscale is None or 0 <= opts.wscale <= 14


def test_seeded_random_soup() -> None:
    rng = random.Random(1234)
    for _ in range(3000):
        base = rng.choice(VALID)
        buf = bytearray(base[: rng.randrange(len(base) + 1)])
        for _ in range(rng.randrange(6)):
            if buf:
                buf[rng.randrange(len(buf))] = rng.randrange(256)
        _parse_or_drop(buf, verify_checksum=rng.random() < 0.5)
