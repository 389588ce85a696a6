"""The Internet checksum (RFC 1071) and the TCP pseudo-header sums (RFC 9293 §3.1, RFC 8200 §8.1).

This is the one swappable hot function of ``wire`` (STYLE.md §5): a C or Rust
accelerator can later replace it behind the same signatures.

How it is fast in pure Python: the 16-bit one's complement sum of a buffer is,
up to the 0 / 0xFFFF ambiguity, the buffer read as one big integer modulo 0xFFFF,
because ``2**16 == 1 (mod 0xFFFF)`` (RFC 1071 §2 (B), "deferred carries" taken to
the limit). ``int.from_bytes`` converts at about 1 ns per byte; the division by
0xFFFF costs more than the conversion, so large buffers are converted in 8 KiB
chunks whose integers are added first (each chunk starts at an even offset, so
it is congruent to its own word sum), and only the short total is divided.

The buffer is read *little-endian*: that conversion is a little faster, an odd
trailing byte is then automatically padded with a zero on the right, and the sum
of byte-swapped words is the byte-swapped sum (RFC 1071 §2 (A), "byte order
independence"), so one swap at the end gives the network-order result.

The 0 / 0xFFFF equivalence: one's complement arithmetic has two zeros. A sum that
is a non-zero multiple of 0xFFFF folds to 0xFFFF ("negative zero", what an
end-around-carry adder produces); only an all-zero input sums to 0. So a received
segment whose checksum field is correct sums to 0xFFFF and ``internet_checksum``
over it returns 0.
"""

from __future__ import annotations

from typing import TypeAlias

Buffer: TypeAlias = bytes | bytearray | memoryview
"""Anything with the buffer protocol that ``wire`` reads (1-D, byte items)."""

_CHUNK = 8192
"""Bytes per ``int.from_bytes`` call for long buffers (must be even)."""

_from_bytes = int.from_bytes


def _le_sum(data: Buffer) -> int:
    """An integer congruent (mod 0xFFFF) to the byte-swapped word sum of ``data``.

    Not reduced: callers add several of these and reduce once.
    """
    n = len(data)
    if n <= _CHUNK:
        return _from_bytes(data, "little")
    view = memoryview(data)
    total = 0
    for start in range(0, n, _CHUNK):
        total += _from_bytes(view[start : start + _CHUNK], "little")
    return total


def _fold(value: int) -> int:
    """Reduce a non-negative integer to a 16-bit one's complement sum.

    Returns a value in ``[1, 0xFFFF]`` for ``value > 0`` and 0 only for 0, exactly
    what repeated end-around-carry folding gives.
    """
    r = value % 0xFFFF
    if r == 0 and value:
        return 0xFFFF
    return r


def _swap16(value: int) -> int:
    return ((value & 0xFF) << 8) | (value >> 8)


def ones_complement_sum(data: Buffer, initial: int = 0) -> int:
    """The folded 16-bit one's complement sum of ``data`` (network byte order).

    Args:
        data: Any bytes-like object; an odd length is padded with a zero byte
            (RFC 1071 §1).
        initial: A partial sum to start from (any non-negative int, e.g.
            ``pseudo_header_sum(...)``); it is folded first.

    Returns:
        The sum in ``[0, 0xFFFF]``; 0 only when ``data`` and ``initial`` are all zero.
    """
    return _swap16(_fold(_le_sum(data) + _swap16(_fold(initial))))


def internet_checksum(data: Buffer, initial: int = 0) -> int:
    """The Internet checksum of ``data`` (RFC 1071): the complement of the one's complement sum.

    To *compute* a checksum, call it over the header (checksum field zero) and
    payload and write the result in network byte order. To *verify*, call it over
    everything including the checksum field: a correct packet gives 0.

    Args:
        data: Any bytes-like object.
        initial: A partial sum to start from, e.g. ``pseudo_header_sum(...)``.

    Returns:
        The 16-bit checksum.
    """
    return 0xFFFF - ones_complement_sum(data, initial)


def pseudo_header_sum(src: bytes, dst: bytes, proto: int, length: int) -> int:
    """The one's complement sum of the IPv4 or IPv6 pseudo-header.

    IPv4 (RFC 9293 §3.1): source, destination, zero, protocol, TCP length.
    IPv6 (RFC 8200 §8.1): source, destination, 32-bit upper-layer length, three
    zero bytes, next header. Both sum to the same thing: the addresses' words
    plus ``proto`` plus ``length`` (a 32-bit length's two words add up to the
    length modulo 0xFFFF).

    Args:
        src: Packed source address (4 or 16 bytes).
        dst: Packed destination address (same length).
        proto: IP protocol number (6 for TCP).
        length: TCP header plus payload length in bytes.

    Returns:
        A folded sum in ``[0, 0xFFFF]``, to pass as ``initial``.
    """
    return _fold(_from_bytes(src, "big") + _from_bytes(dst, "big") + proto + length)


def tcp_checksum_ok(src: bytes, dst: bytes, segment: Buffer) -> bool:
    """Whether ``segment`` (TCP header + payload, as received) has a correct checksum.

    Args:
        src: Packed source address of the carrying IP packet.
        dst: Packed destination address.
        segment: The whole TCP segment including its checksum field.
    """
    n = len(segment)
    return internet_checksum(segment, pseudo_header_sum(src, dst, 6, n)) == 0
