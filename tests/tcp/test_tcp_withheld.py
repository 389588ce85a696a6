"""``Connection.resend_withheld``: the store is back after an outage (G7), and what the
stack withheld meanwhile goes out at once. The machine believes it sent those
segments; this is the call that says they never left. This state in, exactly these
out."""

from __future__ import annotations

from tcp_helpers import (
    BUF,
    LOCAL_ISS,
    LOCAL_SEQ,
    REMOTE_SEQ,
    conn_established,
    conn_fin_wait_2,
    conn_syn_received,
    expect,
    expect_nothing,
    r,
    s,
    send,
    sq,
)

from stcp_framework.tcp.state import TcpState
from stcp_framework.wire.tcp import ACK, FIN, PSH, SYN


def test_an_ack_withheld_goes_again_with_the_current_window() -> None:
    conn = conn_established()
    send(conn, r(payload=b"a" * 100), at=1.0)
    conn.drain()  # its ACK: withheld by the stack (the delta did not land)
    send(conn, r(seq=sq(REMOTE_SEQ, 100), payload=b"b" * 200), at=1.1)
    conn.drain()  # withheld too
    conn.resend_withheld(3.0)
    expect(conn, [s(ack=sq(REMOTE_SEQ, 300), window=BUF - 300)])
    assert conn.counters["withheld_resent"] == 1


def test_a_timeout_that_fired_during_the_outage_fires_again_at_once() -> None:
    conn = conn_established()
    conn.app_send(b"x" * 500, 1.0)
    sent = conn.drain().segments  # withheld: its bytes were not durable
    assert len(sent) == 1
    at = conn.timers.retransmit_at
    assert at is not None
    conn.on_timer(at)
    conn.drain()  # the resend: withheld too; the timer backs off
    backed_off = conn.timers.retransmit_at
    assert backed_off is not None and backed_off - at >= 2 * (at - 1.0) - 1e-9
    now = at + 0.3
    conn.resend_withheld(now)
    # the data segment carries the ACK: no ACK of its own
    expect(conn, [s(flags=ACK | PSH, payload=b"x" * 500)], psh=True)
    assert conn.counters["rto"] == 2
    assert conn.timers.retransmit_at is not None and conn.timers.retransmit_at > now


def test_a_timer_that_has_not_fired_is_left_alone() -> None:
    """Only segments sent since the outage began were withheld; what left before it
    may well have arrived: no go-back-N, the ACK goes and the timer runs on."""
    conn = conn_established()
    conn.app_send(b"x" * 500, 1.0)
    conn.drain()
    at = conn.timers.retransmit_at
    assert at is not None and at > 1.1
    conn.resend_withheld(1.1)
    expect(conn, [s(seq=sq(LOCAL_SEQ, 500))])
    assert conn.timers.retransmit_at == at
    assert "rto" not in conn.counters


def test_a_syn_ack_withheld_goes_again_without_waiting() -> None:
    conn = conn_syn_received()
    conn.resend_withheld(0.5)
    step = conn.drain()
    assert [(seg.seq, seg.flags) for seg in step.segments] == [(LOCAL_ISS, SYN | ACK)]
    assert conn.state is TcpState.SYN_RECEIVED


def test_the_last_ack_of_time_wait_goes_again() -> None:
    conn = conn_fin_wait_2()
    send(conn, r(ack=sq(LOCAL_SEQ, 1), flags=ACK | FIN), at=1.0)
    (last_ack,) = conn.drain().segments  # withheld
    assert conn.state is TcpState.TIME_WAIT
    conn.resend_withheld(2.0)
    assert conn.drain().segments == (last_ack._replace(needs_version=conn.version),)
    assert conn.state is TcpState.TIME_WAIT


def test_a_closed_connection_sends_nothing() -> None:
    conn = conn_established()
    send(conn, r(flags=ACK | 0x04), at=1.0)  # RST
    conn.drain()
    assert conn.state is TcpState.CLOSED
    conn.resend_withheld(2.0)
    expect_nothing(conn)
