"""Closing (RFC 9293 §3.6): every close path, TIME-WAIT, half-close, Linux close()."""
# mypy: disable-error-code="comparison-overlap,unreachable"
# (a test steps the machine and asserts its state between calls; mypy keeps the state
# narrowed across the calls)

from __future__ import annotations

from tcp_helpers import (
    BUF,
    CONFIG,
    LOCAL_SEQ,
    MSS,
    REMOTE_ISS,
    REMOTE_SEQ,
    conn_close_wait,
    conn_closing,
    conn_established,
    conn_fin_wait_1,
    conn_fin_wait_2,
    conn_last_ack,
    conn_time_wait,
    expect,
    expect_nothing,
    r,
    s,
    send,
    sq,
    syn_options,
    tcb_fields,
)

from stcp_framework.tcp.events import Closed, DataReadable, EofReceived
from stcp_framework.tcp.state import TcpState
from stcp_framework.tcp.timewait import new_syn_acceptable
from stcp_framework.wire.tcp import ACK, FIN, PSH, RST, SYN, TcpOptions, TcpSegment

TW = CONFIG.time_wait_timeout


def test_active_close_through_time_wait() -> None:
    conn = conn_established()
    conn.app_close(1.0)
    step = expect(conn, [s(flags=ACK | FIN)])
    assert conn.state is TcpState.FIN_WAIT_1
    fields = tcb_fields(step)
    assert fields["state"] == "FIN-WAIT-1" and fields["fin_sent"] is True
    assert fields["app_closed"] is True
    send(conn, r(ack=sq(LOCAL_SEQ, 1)), at=1.1)
    expect_nothing(conn)
    assert conn.state is TcpState.FIN_WAIT_2
    assert conn.next_deadline() == 1.1 + TW  # orphaned FIN-WAIT-2 limit
    send(conn, r(ack=sq(LOCAL_SEQ, 1), flags=ACK | FIN), at=2.0)
    step = expect(conn, [s(seq=sq(LOCAL_SEQ, 1), ack=sq(REMOTE_SEQ, 1), window=BUF - 1)])
    assert conn.state is TcpState.TIME_WAIT
    assert conn.next_deadline() == 2.0 + TW  # 2 MSL
    step = expect_nothing(conn, at=2.0 + TW)
    assert conn.state is TcpState.CLOSED
    assert step.events == (Closed(),)
    assert conn.next_deadline() is None


def test_half_close_keeps_receiving() -> None:
    conn = conn_fin_wait_2()
    assert conn.next_deadline() is None  # shutdown, not close: no orphan timer
    send(conn, r(ack=sq(LOCAL_SEQ, 1), payload=b"still here"), at=1.0)
    step = expect_nothing(conn)
    assert step.events == (DataReadable(),)
    assert conn.app_receive(100, 1.0) == b"still here"
    send(conn, r(seq=sq(REMOTE_SEQ, 10), ack=sq(LOCAL_SEQ, 1), flags=ACK | FIN), at=1.1)
    step = expect(conn, [s(seq=sq(LOCAL_SEQ, 1), ack=sq(REMOTE_SEQ, 11), window=BUF - 11)])
    assert step.events == (EofReceived(),)
    assert conn.at_eof
    assert conn.state is TcpState.TIME_WAIT


def test_fin_and_ack_together_go_straight_to_time_wait() -> None:
    conn = conn_fin_wait_1()
    send(conn, r(ack=sq(LOCAL_SEQ, 1), flags=ACK | FIN), at=1.0)
    # The FIN takes one sequence number; the right edge stays (RFC 7323 §2.4).
    expect(conn, [s(seq=sq(LOCAL_SEQ, 1), ack=sq(REMOTE_SEQ, 1), window=BUF - 1)])
    assert conn.state is TcpState.TIME_WAIT


def test_simultaneous_close() -> None:
    conn = conn_fin_wait_1()
    send(conn, r(flags=ACK | FIN), at=1.0)  # the peer's FIN crosses ours
    expect(conn, [s(seq=sq(LOCAL_SEQ, 1), ack=sq(REMOTE_SEQ, 1), window=BUF - 1)])
    assert conn.state is TcpState.CLOSING
    send(conn, r(seq=sq(REMOTE_SEQ, 1), ack=sq(LOCAL_SEQ, 1)), at=1.1)
    expect_nothing(conn)
    assert conn.state is TcpState.TIME_WAIT
    assert conn.next_deadline() == 1.1 + TW


def test_closing_fixture() -> None:
    assert conn_closing().state is TcpState.CLOSING


def test_passive_close() -> None:
    conn = conn_established()
    send(conn, r(payload=b"bye", flags=ACK | FIN), at=1.0)
    # The FIN's ACK is a delayed ACK (RFC 1122 §4.2.3.2, RFC 9293 §3.8.6.3), as Linux
    # delays it on a passive close (tcp_fin: pingpong mode): our own FIN carries it if
    # the application closes within the delay -- one segment instead of two.
    step = expect_nothing(conn)
    assert conn.next_deadline() == 1.0 + CONFIG.delayed_ack_timeout
    assert step.events == (DataReadable(), EofReceived())
    assert conn.state is TcpState.CLOSE_WAIT
    assert not conn.at_eof
    assert conn.app_receive(10, 1.0) == b"bye"
    assert conn.at_eof
    expect_nothing(conn)  # no window update once the peer's FIN arrived
    conn.app_close(1.01)
    expect(conn, [s(ack=sq(REMOTE_SEQ, 4), flags=ACK | FIN, window=BUF - 4)])
    assert conn.state is TcpState.LAST_ACK
    send(conn, r(seq=sq(REMOTE_SEQ, 4), ack=sq(LOCAL_SEQ, 1)), at=1.2)
    step = expect_nothing(conn)
    assert step.events == (Closed(),)
    assert conn.state is TcpState.CLOSED


def test_passive_close_acks_the_fin_at_the_delayed_ack_deadline() -> None:
    conn = conn_established()
    send(conn, r(flags=ACK | FIN), at=1.0)
    expect_nothing(conn, at=1.0 + CONFIG.delayed_ack_timeout / 2)
    assert conn.state is TcpState.CLOSE_WAIT
    delack = s(ack=sq(REMOTE_SEQ, 1), window=BUF - 1)  # the edge stays (RFC 7323 §2.4)
    expect(conn, [delack], at=1.0 + CONFIG.delayed_ack_timeout)
    conn.app_close(2.0)  # later: the FIN alone
    expect(conn, [s(ack=sq(REMOTE_SEQ, 1), flags=ACK | FIN, window=BUF - 1)])
    assert conn.state is TcpState.LAST_ACK


def test_passive_close_acks_at_once_what_else_is_due() -> None:
    # Two full-sized segments with the FIN: RFC 5681 §4.2 wants their ACK at once.
    conn = conn_established()
    send(conn, r(payload=b"x" * MSS), at=1.0)
    send(conn, r(seq=sq(REMOTE_SEQ, MSS), payload=b"y" * MSS, flags=ACK | FIN), at=1.0)
    expect(conn, [s(ack=sq(REMOTE_SEQ, 2 * MSS + 1), window=BUF - 2 * MSS - 1)])
    assert conn.state is TcpState.CLOSE_WAIT


def test_last_ack_retransmits_fin() -> None:
    conn = conn_last_ack()
    fin = s(ack=sq(REMOTE_SEQ, 1), flags=ACK | FIN, window=BUF - 1)
    expect(conn, [fin], at=conn.next_deadline())
    send(conn, r(seq=sq(REMOTE_SEQ, 1), ack=sq(LOCAL_SEQ, 1)), at=5.0)
    expect_nothing(conn)
    assert conn.state is TcpState.CLOSED


def test_close_wait_can_still_send() -> None:
    conn = conn_close_wait()
    conn.app_send(b"reply", 1.0)
    expect(
        conn,
        [s(ack=sq(REMOTE_SEQ, 1), payload=b"reply", flags=ACK | PSH, window=BUF - 1)],
        psh=True,
    )
    conn.app_shutdown(1.0)
    expect(conn, [s(seq=sq(LOCAL_SEQ, 5), ack=sq(REMOTE_SEQ, 1), flags=ACK | FIN, window=BUF - 1)])
    send(conn, r(seq=sq(REMOTE_SEQ, 1), ack=sq(LOCAL_SEQ, 6)), at=1.1)
    assert conn.state is TcpState.CLOSED


def test_fin_after_queued_data_is_piggybacked() -> None:
    conn = conn_established()
    conn.app_send(b"last words", 1.0)
    conn.app_shutdown(1.0)
    # One app_send segment already left; the FIN follows alone.
    expect(
        conn,
        [s(flags=ACK | PSH, payload=b"last words"), s(seq=sq(LOCAL_SEQ, 10), flags=ACK | FIN)],
        psh=True,
    )


def test_fin_piggybacks_on_window_limited_data() -> None:
    conn = conn_established()
    send(conn, r(window=0), at=0.5)
    conn.app_send(b"queued", 1.0)
    conn.app_shutdown(1.0)
    expect_nothing(conn)
    send(conn, r(window=1000), at=1.1)
    expect(conn, [s(flags=ACK | PSH | FIN, payload=b"queued")], psh=True)


def test_time_wait_acks_retransmitted_fin_and_restarts_timer() -> None:
    conn = conn_time_wait()
    send(conn, r(ack=sq(LOCAL_SEQ, 1), flags=ACK | FIN), at=10.0)
    expect(conn, [s(seq=sq(LOCAL_SEQ, 1), ack=sq(REMOTE_SEQ, 1), window=BUF - 1)])
    assert conn.next_deadline() == 10.0 + TW


def test_time_wait_accepts_new_syn_rfc6191() -> None:
    conn = conn_time_wait()
    newer = r(seq=sq(REMOTE_SEQ, 100000), ack=0, flags=SYN, options=syn_options())
    older = r(seq=sq(REMOTE_ISS, -100), ack=0, flags=SYN, options=syn_options())
    assert conn.accepts_new_syn(newer)
    assert not conn.accepts_new_syn(older)
    assert not conn.accepts_new_syn(newer._replace(flags=SYN | ACK))
    send(conn, older, at=5.0)
    expect(conn, [s(seq=sq(LOCAL_SEQ, 1), ack=sq(REMOTE_SEQ, 1), window=BUF - 1)])  # challenge
    send(conn, newer, at=5.0)
    step = expect_nothing(conn)
    assert conn.state is TcpState.CLOSED
    assert step.events == (Closed(),)


def test_close_with_unread_data_sends_rst() -> None:
    conn = conn_established()
    send(conn, r(payload=b"unread"), at=1.0)
    conn.drain()
    conn.app_close(1.1)
    step = expect(conn, [s(ack=sq(REMOTE_SEQ, 6), flags=RST | ACK, window=0)])
    assert step.events == (Closed(),)
    assert conn.state is TcpState.CLOSED


def test_data_after_close_gets_rst() -> None:
    conn = conn_established()
    conn.app_close(1.0)
    conn.drain()
    send(conn, r(ack=sq(LOCAL_SEQ, 1), payload=b"late"), at=1.1)
    step = expect(conn, [s(seq=sq(LOCAL_SEQ, 1), flags=RST | ACK, window=0)])
    assert step.events == (Closed(),)
    assert conn.state is TcpState.CLOSED


def test_abort_sends_rst() -> None:
    conn = conn_established()
    conn.app_abort(1.0)
    expect(conn, [s(flags=RST | ACK, window=0)])
    assert conn.state is TcpState.CLOSED


def test_an_abort_s_rst_needs_the_closed_state_recorded() -> None:
    """The RST of an abort leaves once CLOSED is stored (it may leave before its
    round's commit, Runtime._round): a crash in between must not restore a connection
    the peer has already reset."""
    conn = conn_established()
    durable = conn.version
    conn.app_abort(1.0)
    step = conn.drain()
    (rst,) = step.segments
    assert rst.flags == RST | ACK
    assert step.delta is not None and step.delta.version == durable + 1
    assert tcb_fields(step)["state"] == "CLOSED"
    assert rst.needs_version == durable + 1


def test_time_wait_takes_a_syn_with_an_equal_tsval_and_a_higher_seq() -> None:
    """RFC 6191 §2: a client that reconnects within one timestamp tick sends the same
    TSval; a SEQ above RCV.NXT still lets its SYN in (as Linux: PAWS passes an equal
    TSval). An older TSval does not, whatever the SEQ; a newer one does."""
    tcb = conn_time_wait().tcb
    tcb.timestamps, tcb.ts_recent = True, 1001

    def syn(seq_off: int, tsval: int) -> TcpSegment:
        return r(
            seq=sq(REMOTE_SEQ, seq_off), ack=0, flags=SYN, options=TcpOptions(timestamps=(tsval, 0))
        )

    assert new_syn_acceptable(tcb, syn(100000, 1001))
    assert not new_syn_acceptable(tcb, syn(-100, 1001))
    assert not new_syn_acceptable(tcb, syn(100000, 1000))
    assert new_syn_acceptable(tcb, syn(-100, 1002))
