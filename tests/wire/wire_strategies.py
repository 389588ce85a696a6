"""Hypothesis strategies and reference helpers shared by the ``tests/wire`` modules."""

from __future__ import annotations

from hypothesis import strategies as st

from stcp_framework.wire.tcp import FIN, RST, SYN, TcpOptions


def reference_checksum(data: bytes, initial: int = 0) -> int:
    """RFC 1071 §4.1 written out: 16-bit big-endian words, end-around carry, complement."""
    if len(data) % 2:
        data += b"\x00"
    total = initial
    for i in range(0, len(data), 2):
        total += (data[i] << 8) | data[i + 1]
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


u16 = st.integers(0, 0xFFFF)
u32 = st.integers(0, 0xFFFFFFFF)
ports = st.integers(1, 0xFFFF)

# Unicast, specified addresses (what the parser accepts as source and destination).
ipv4_addresses = st.binary(min_size=4, max_size=4).filter(lambda a: 0 < a[0] < 224)
ipv6_addresses = st.binary(min_size=16, max_size=16).filter(lambda a: 0 < a[0] < 0xFF)

tcp_options = st.builds(
    TcpOptions,
    mss=st.none() | u16,
    wscale=st.none() | st.integers(0, 14),
    sack_permitted=st.booleans(),
    timestamps=st.none() | st.tuples(u32, u32),
    sack_blocks=st.lists(st.tuples(u32, u32), max_size=4).map(tuple),
    md5=st.none() | st.binary(min_size=16, max_size=16),
)


def legal_flags(flags: int) -> bool:
    return not (flags & SYN and flags & (FIN | RST))


tcp_flags = st.integers(0, 0xFF).filter(legal_flags)
