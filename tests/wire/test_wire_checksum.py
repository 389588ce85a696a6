"""RFC 1071 checksum: the fast big-integer version against the word-by-word reference."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from wire_strategies import reference_checksum

from stcp_framework.wire.checksum import (
    internet_checksum,
    ones_complement_sum,
    pseudo_header_sum,
    tcp_checksum_ok,
)


def test_rfc1071_section_3_example() -> None:
    """RFC 1071 §3: bytes 00 01 f2 03 f4 f5 f6 f7 sum to ddf2 (checksum 220d)."""
    data = bytes.fromhex("0001f203f4f5f6f7")
    assert ones_complement_sum(data) == 0xDDF2
    assert internet_checksum(data) == 0x220D


def test_ipv4_header_example() -> None:
    """The classic IPv4 header example (checksum field b861 zeroed)."""
    header = bytes.fromhex("450000730000400040110000c0a80001c0a800c7")
    assert internet_checksum(header) == 0xB861
    fixed = header[:10] + (0xB861).to_bytes(2, "big") + header[12:]
    assert internet_checksum(fixed) == 0


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"", 0xFFFF),  # empty sum is +0, complement is 0xFFFF
        (b"\x00\x00", 0xFFFF),
        (b"\xff\xff", 0x0000),  # sum is -0 (0xFFFF)
        (b"\xff\xff\xff\xff", 0x0000),  # a non-zero multiple of 0xFFFF folds to 0xFFFF
        (b"\x01", 0xFEFF),  # odd length padded with a zero byte on the right
        (b"\x12\x34\x56", 0xFFFF - 0x1234 - 0x5600),
    ],
)
def test_zero_and_odd_length_edges(data: bytes, expected: int) -> None:
    assert internet_checksum(data) == expected == reference_checksum(data)


@given(st.binary(max_size=3000), st.integers(0, 2**32))
def test_matches_reference(data: bytes, initial: int) -> None:
    assert internet_checksum(data, initial) == reference_checksum(data, initial)
    assert internet_checksum(memoryview(bytearray(data)), initial) == reference_checksum(
        data, initial
    )


@given(st.integers(8000, 70000), st.integers(0, 255), st.binary(max_size=64))
def test_matches_reference_on_chunked_sizes(size: int, fill: int, tail: bytes) -> None:
    """Buffers above the 8 KiB chunk size, odd and even lengths."""
    data = bytes([fill]) * size + tail
    assert internet_checksum(data) == reference_checksum(data)


@given(st.binary(min_size=2, max_size=200))
def test_verifying_a_filled_in_checksum_gives_zero(data: bytes) -> None:
    data = bytes(len(data) % 2) + data  # even length, checksum field at the front
    csum = internet_checksum(b"\x00\x00" + data[2:])
    assert internet_checksum(csum.to_bytes(2, "big") + data[2:]) == 0


def test_pseudo_header_sums() -> None:
    src, dst = bytes([198, 18, 0, 1]), bytes([198, 18, 0, 2])
    pseudo = src + dst + bytes([0, 6]) + (40).to_bytes(2, "big")
    assert pseudo_header_sum(src, dst, 6, 40) == 0xFFFF - reference_checksum(pseudo)
    src6 = bytes.fromhex("20010db8000000000000000000000001")
    dst6 = bytes.fromhex("20010db8000000000000000000000002")
    pseudo6 = src6 + dst6 + (70000).to_bytes(4, "big") + bytes([0, 0, 0, 6])
    assert pseudo_header_sum(src6, dst6, 6, 70000) == 0xFFFF - reference_checksum(pseudo6)


def test_tcp_checksum_ok_on_a_kernel_segment() -> None:
    """The TCP part of a SYN captured from Linux (see test_wire_packet.KERNEL_SYN_V4)."""
    seg = bytes.fromhex(
        "c82200502b9a52c100000000a002faf000690000020405b40402080a2113589a000000000103030a"
    )
    src, dst = bytes([198, 18, 0, 1]), bytes([198, 18, 0, 2])
    assert tcp_checksum_ok(src, dst, seg)
    assert not tcp_checksum_ok(dst, bytes([198, 18, 0, 3]), seg)
