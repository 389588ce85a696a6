"""Keepalive (RFC 9293 §3.8.4) and the persist timer giving up (§3.8.6.1)."""

from __future__ import annotations

from dataclasses import replace
from itertools import pairwise

from hypothesis import given, settings
from hypothesis import strategies as st
from tcp_helpers import (
    BUF,
    CONFIG,
    LOCAL_SEQ,
    REMOTE_SEQ,
    conn_established,
    expect,
    expect_nothing,
    r,
    s,
    send,
    sq,
)

from stcp_framework.tcp.events import Closed, TimedOut
from stcp_framework.tcp.machine import Connection
from stcp_framework.tcp.state import TcpState
from stcp_framework.wire.tcp import ACK, RST

IDLE, INTERVAL = 10.0, 2.0
PROBE = s(seq=sq(LOCAL_SEQ, -1))  # <SEQ=SND.UNA-1><ACK=RCV.NXT><CTL=ACK>


def keepalive_conn(probes: int = 3) -> Connection:
    return conn_established(
        replace(CONFIG, keepalive_idle=IDLE, keepalive_interval=INTERVAL, keepalive_probes=probes)
    )


def test_keepalive_is_off_by_default() -> None:
    conn = conn_established()
    assert CONFIG.keepalive_idle is None
    assert conn.next_deadline() is None
    expect_nothing(conn, at=10_000.0)
    assert conn.state is TcpState.ESTABLISHED


def test_keepalive_probes_after_idle_and_answer_resets() -> None:
    conn = keepalive_conn()
    assert conn.next_deadline() == IDLE  # the handshake's ACK arrived at 0.0
    expect(conn, [PROBE], at=IDLE)
    assert conn.next_deadline() == IDLE + INTERVAL
    send(conn, r(), at=IDLE + 0.1)  # the peer answers with an ACK
    expect_nothing(conn, at=IDLE + INTERVAL)  # not idle long enough: rescheduled
    assert conn.next_deadline() == IDLE + 0.1 + IDLE
    expect(conn, [PROBE], at=2 * IDLE + 0.1)


def test_data_postpones_keepalive() -> None:
    conn = keepalive_conn()
    send(conn, r(payload=b"ping"), at=6.0)
    conn.app_receive(10, 6.0)
    ack = sq(REMOTE_SEQ, 4)
    expect(conn, [s(ack=ack, window=BUF - 4)], at=6.04)  # the delayed ACK
    expect_nothing(conn, at=IDLE)
    assert conn.next_deadline() == 6.0 + IDLE
    expect(conn, [s(ack=ack, seq=sq(LOCAL_SEQ, -1), window=BUF - 4)], at=6.0 + IDLE)


def test_no_keepalive_while_data_is_outstanding() -> None:
    conn = keepalive_conn()
    conn.app_send(b"hello", 9.0)
    conn.drain()
    # The retransmission timer watches the peer; the keepalive only reschedules.
    conn.timers.retransmit_at = None  # as if far in the future
    expect_nothing(conn, at=IDLE)
    assert conn.timers.keepalive_at == 2 * IDLE


@settings(max_examples=20, deadline=None)
@given(probes=st.integers(1, 6))
def test_keepalive_gives_up_after_probes(probes: int) -> None:
    conn = keepalive_conn(probes)
    at = IDLE
    for _ in range(probes):
        expect(conn, [PROBE], at=at)
        at += INTERVAL
    step = expect(conn, [s(flags=RST | ACK, window=0)], at=at)
    assert step.events == (TimedOut(), Closed())
    assert conn.state is TcpState.CLOSED
    assert conn.next_deadline() is None


@settings(max_examples=20, deadline=None)
@given(limit=st.integers(1, 6))
def test_persist_timer_gives_up_after_unanswered_probes(limit: int) -> None:
    conn = conn_established(replace(CONFIG, zero_window_probe_max=limit))
    send(conn, r(window=0), at=0.5)
    conn.app_send(b"abc", 1.0)
    expect_nothing(conn)
    intervals = []
    last = 1.0
    for _ in range(limit):
        deadline = conn.next_deadline()
        assert deadline is not None
        intervals.append(deadline - last)
        last = deadline
        expect(conn, [s(seq=sq(LOCAL_SEQ, -1))], at=deadline)
    # Each interval doubles (RFC 9293 §3.8.6.1 / RFC 6298 backoff), capped at max_rto.
    assert all(b >= a for a, b in pairwise(intervals))
    deadline = conn.next_deadline()
    assert deadline is not None
    step = expect(conn, [s(flags=RST | ACK, window=0)], at=deadline)
    assert step.events == (TimedOut(), Closed())
    assert conn.state is TcpState.CLOSED


def test_answered_zero_window_probes_do_not_give_up() -> None:
    """Linux keeps probing a peer that answers (icsk_probes_out resets on an ACK)."""
    conn = conn_established(replace(CONFIG, zero_window_probe_max=2, max_rto=4.0))
    send(conn, r(window=0), at=0.5)
    conn.app_send(b"abc", 1.0)
    for _ in range(6):
        deadline = conn.next_deadline()
        assert deadline is not None
        expect(conn, [s(seq=sq(LOCAL_SEQ, -1))], at=deadline)
        send(conn, r(window=0, flags=ACK), at=deadline + 0.01)
        expect_nothing(conn)
    assert conn.state is TcpState.ESTABLISHED
