"""Sequence-number arithmetic across the 2**32 wrap (RFC 9293 §3.4, RFC 1982)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from stcp_framework.wire.seq import (
    Seq,
    seq,
    seq_add,
    seq_diff,
    seq_ge,
    seq_gt,
    seq_in_window,
    seq_le,
    seq_lt,
    seq_max,
    seq_min,
)

seqs = st.integers(0, 2**32 - 1).map(Seq)
near_wrap = st.integers(2**32 - 70000, 2**32 - 1).map(Seq)
distances = st.integers(-(2**31) + 1, 2**31 - 1)


@given(seqs, seqs)
def test_diff_is_antisymmetric(a: Seq, b: Seq) -> None:
    d = seq_diff(a, b)
    assert -(2**31) <= d < 2**31
    if d != -(2**31):
        assert seq_diff(b, a) == -d


@given(seqs, distances)
def test_add_and_diff_are_inverse(a: Seq, n: int) -> None:
    b = seq_add(a, n)
    assert 0 <= b < 2**32
    assert seq_diff(b, a) == n


@given(near_wrap, st.integers(1, 2**31 - 1))
def test_ordering_across_the_wrap(a: Seq, n: int) -> None:
    b = seq_add(a, n)  # usually wrapped past zero, so b < a as plain ints
    assert seq_lt(a, b) and seq_le(a, b) and seq_gt(b, a) and seq_ge(b, a)
    assert not seq_lt(b, a) and not seq_gt(a, b)
    assert seq_max(a, b) == b and seq_min(a, b) == a


@given(seqs)
def test_equal_values(a: Seq) -> None:
    assert seq_le(a, a) and seq_ge(a, a) and not seq_lt(a, a) and not seq_gt(a, a)
    assert seq_diff(a, a) == 0


def test_concrete_wrap_points() -> None:
    top = Seq(2**32 - 1)
    assert seq_add(top, 1) == 0
    assert seq_lt(top, Seq(0)) and seq_gt(Seq(5), top)
    assert seq_diff(Seq(0), top) == 1
    assert seq(-1) == top and seq(2**32) == 0


@given(near_wrap, st.integers(0, 2**20), st.integers(-(2**20), 2**21))
def test_in_window_across_the_wrap(start: Seq, size: int, delta: int) -> None:
    s = seq_add(start, delta)
    assert seq_in_window(s, start, size) == (0 <= delta < size)
