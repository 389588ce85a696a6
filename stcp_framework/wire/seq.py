"""32-bit TCP sequence number arithmetic (RFC 9293 §3.4, RFC 1982 style).

Sequence numbers wrap at 2**32, so they are compared only through these helpers,
never with ``<``. ``seq_diff(a, b)`` is the signed distance from ``b`` to ``a`` in
``[-2**31, 2**31)``; every comparison is derived from it.
"""

from __future__ import annotations

from typing import NewType

Seq = NewType("Seq", int)
"""A 32-bit sequence number (``0 <= s < 2**32``)."""

SEQ_MOD = 1 << 32
SEQ_MASK = SEQ_MOD - 1
_HALF = 1 << 31


def seq(value: int) -> Seq:
    """Reduce any integer to a sequence number."""
    return Seq(value & SEQ_MASK)


def seq_add(a: Seq, n: int) -> Seq:
    """``a + n`` modulo 2**32 (``n`` may be negative)."""
    return Seq((a + n) & SEQ_MASK)


def seq_diff(a: Seq, b: Seq) -> int:
    """Signed distance ``a - b`` in ``[-2**31, 2**31)``."""
    return ((a - b + _HALF) & SEQ_MASK) - _HALF


def seq_lt(a: Seq, b: Seq) -> bool:
    return seq_diff(a, b) < 0


def seq_le(a: Seq, b: Seq) -> bool:
    return seq_diff(a, b) <= 0


def seq_gt(a: Seq, b: Seq) -> bool:
    return seq_diff(a, b) > 0


def seq_ge(a: Seq, b: Seq) -> bool:
    return seq_diff(a, b) >= 0


def seq_max(a: Seq, b: Seq) -> Seq:
    return a if seq_ge(a, b) else b


def seq_min(a: Seq, b: Seq) -> Seq:
    return a if seq_le(a, b) else b


def seq_in_window(s: Seq, start: Seq, size: int) -> bool:
    """``start <= s < start + size`` in sequence space (``size`` >= 0)."""
    return 0 <= seq_diff(s, start) < size
