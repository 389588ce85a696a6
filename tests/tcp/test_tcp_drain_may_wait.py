"""``Connection.drain_may_wait``: what a segment left pending may wait for a later drain
only when it is a pure acknowledgment of sent data (or a window update that sends
nothing) in a data-transfer state. Everything a peer or task waits for -- a segment
to send, received bytes, a state change, an event other than ``SendSpace`` -- says no.
Deferred, nothing is lost: the next drain carries it all."""

# mypy: disable-error-code="comparison-overlap,unreachable"

from __future__ import annotations

from tcp_helpers import (
    LOCAL_SEQ,
    REMOTE_SEQ,
    conn_close_wait,
    conn_established,
    conn_fin_wait_1,
    expect,
    r,
    s,
    send,
    sq,
    tcb_fields,
)

from stcp_framework.tcp.delta import TxTrim
from stcp_framework.tcp.events import SendSpace
from stcp_framework.tcp.machine import Connection
from stcp_framework.tcp.state import TcpState
from stcp_framework.wire.tcp import ACK, FIN, PSH


def _sent(data: bytes = b"x" * 500) -> Connection:
    conn = conn_established()
    conn.app_send(data, 1.0)
    expect(conn, [s(flags=ACK | PSH, payload=data)], psh=True)
    return conn


def test_a_pure_ack_of_sent_data_may_wait_and_the_next_drain_carries_it() -> None:
    conn = _sent()
    send(conn, r(ack=sq(LOCAL_SEQ, 500)), at=1.1)
    assert conn.drain_may_wait()
    send(conn, r(ack=sq(LOCAL_SEQ, 500), window=60000), at=1.2)  # a window update too
    assert conn.drain_may_wait()
    step = conn.drain()  # later: the round the flow's next activity or timer brings
    assert step.segments == ()
    assert step.events == (SendSpace(),)
    assert tcb_fields(step)["snd_una"] == sq(LOCAL_SEQ, 500)
    assert step.delta is not None and TxTrim(500) in step.delta.ops


def test_an_ack_that_lets_more_data_go_may_not_wait() -> None:
    conn = conn_established()
    conn.app_send(b"x" * 70000, 1.0)  # more than the initial window
    first = conn.drain().segments
    assert first
    sent = sum(len(seg.payload) for seg in first)
    send(conn, r(ack=sq(LOCAL_SEQ, sent)), at=1.1)
    assert not conn.drain_may_wait()  # new segments to send


def test_received_data_may_not_wait() -> None:
    conn = _sent()
    send(conn, r(ack=sq(LOCAL_SEQ, 500), payload=b"y" * 100), at=1.1)
    assert not conn.drain_may_wait()  # bytes to store, an ACK due


def test_a_fin_may_not_wait() -> None:
    conn = _sent()
    send(conn, r(ack=sq(LOCAL_SEQ, 500), flags=ACK | FIN), at=1.1)
    assert conn.state is TcpState.CLOSE_WAIT
    assert not conn.drain_may_wait()


def test_the_ack_of_our_fin_may_not_wait() -> None:
    conn = conn_fin_wait_1()
    send(conn, r(ack=conn.tcb.snd_nxt), at=2.0)
    assert conn.state is TcpState.FIN_WAIT_2
    assert not conn.drain_may_wait()  # a state change


def test_only_the_data_transfer_states_defer() -> None:
    conn = conn_close_wait()
    conn.app_send(b"z" * 10, 2.0)
    conn.drain()
    send(conn, r(seq=sq(REMOTE_SEQ, 1), ack=sq(LOCAL_SEQ, 10)), at=2.1)
    assert conn.state is TcpState.CLOSE_WAIT
    assert conn.drain_may_wait()
    conn = conn_fin_wait_1()
    send(conn, r(ack=LOCAL_SEQ), at=2.0)  # acknowledges nothing new
    assert not conn.drain_may_wait()


def test_a_duplicate_ack_that_triggers_fast_retransmit_may_not_wait() -> None:
    conn = conn_established()
    conn.app_send(b"x" * 5000, 1.0)
    conn.drain()
    for i in range(3):
        send(conn, r(ack=LOCAL_SEQ), at=1.1 + i * 0.01)
    assert not conn.drain_may_wait()  # the retransmission is due
