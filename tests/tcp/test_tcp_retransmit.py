"""Loss recovery: RFC 6298 RTO with backoff, RFC 5681/6582 fast retransmit and
NewReno, zero-window probes (persist timer), retry caps."""
# mypy: disable-error-code="comparison-overlap,unreachable"
# (a test steps the machine and asserts its state between calls; mypy keeps the state
# narrowed across the calls)

from __future__ import annotations

from dataclasses import replace

from tcp_helpers import (
    CONFIG,
    LOCAL_SEQ,
    MSS,
    REMOTE_SEQ,
    conn_established,
    expect,
    expect_nothing,
    r,
    s,
    send,
    sq,
    tcb_fields,
)

from stcp_framework.tcp.events import Closed, TimedOut
from stcp_framework.tcp.state import TcpState
from stcp_framework.wire.tcp import ACK, FIN, PSH, RST

HELLO = s(flags=ACK | PSH, payload=b"hello")


def test_rto_retransmits_with_exponential_backoff() -> None:
    conn = conn_established()
    rto = conn.rtt.rto
    assert rto == CONFIG.min_rto  # handshake sample of 0 s
    conn.app_send(b"hello", 1.0)
    expect(conn, [HELLO])
    assert conn.next_deadline() == 1.0 + rto
    expect_nothing(conn, at=1.0 + rto - 0.001)
    expect(conn, [HELLO], at=1.0 + rto)
    assert conn.next_deadline() == 1.0 + 3 * rto  # RFC 6298 (5.5)-(5.6)
    assert conn.cc.cwnd == MSS  # RFC 5681 §3.1: loss window
    expect(conn, [HELLO], at=1.0 + 3 * rto)
    assert conn.next_deadline() == 1.0 + 7 * rto
    send(conn, r(ack=sq(LOCAL_SEQ, 5)), at=3.0)
    expect_nothing(conn)
    assert conn.next_deadline() is None
    assert conn.rtt.rto == 4 * rto  # Karn: no sample from a retransmitted segment


def test_rto_go_back_n_resends_the_window() -> None:
    conn = conn_established()
    conn.app_send(bytes(3 * MSS), 1.0)
    assert len(conn.drain().segments) == 3
    at = 1.0 + conn.rtt.rto
    expect(conn, [s(payload=bytes(MSS))], at=at)  # cwnd = 1 MSS
    send(conn, r(ack=sq(LOCAL_SEQ, MSS)), at=at + 0.1)
    # cwnd grew by the acked MSS (slow start): the next two are resent.
    step = expect(
        conn,
        [
            s(seq=sq(LOCAL_SEQ, MSS), payload=bytes(MSS)),
            s(seq=sq(LOCAL_SEQ, 2 * MSS), payload=bytes(MSS)),
        ],
    )
    assert conn.tcb.snd_nxt == sq(LOCAL_SEQ, 3 * MSS)  # snd_nxt never moved back
    assert step.delta is None or "snd_nxt" not in step.delta.ops[-1].fields  # type: ignore[union-attr]


def test_retries_exhausted_sends_rst_and_times_out() -> None:
    conn = conn_established(replace(CONFIG, max_retries=2))
    rto = conn.rtt.rto
    conn.app_send(b"hello", 1.0)
    conn.drain()
    expect(conn, [HELLO], at=1.0 + rto)
    expect(conn, [HELLO], at=1.0 + 3 * rto)
    step = expect(conn, [s(seq=sq(LOCAL_SEQ, 5), flags=RST | ACK, window=0)], at=1.0 + 7 * rto)
    assert step.events == (TimedOut(), Closed())
    assert conn.state is TcpState.CLOSED
    assert conn.next_deadline() is None


def test_fast_retransmit_and_newreno_partial_ack() -> None:
    conn = conn_established()
    data = bytes(range(256)) * 40  # 10240 bytes: 7 segments
    conn.app_send(data[: 5 * MSS], 1.0)
    assert len(conn.drain().segments) == 5
    send(conn, r(ack=sq(LOCAL_SEQ, MSS)), at=1.1)
    conn.drain()
    for _ in range(2):
        send(conn, r(ack=sq(LOCAL_SEQ, MSS)), at=1.11)
        expect_nothing(conn)
    # Third duplicate ACK: fast retransmit of the first unacknowledged segment.
    send(conn, r(ack=sq(LOCAL_SEQ, MSS)), at=1.12)
    expect(conn, [s(seq=sq(LOCAL_SEQ, MSS), payload=data[MSS : 2 * MSS])])
    assert conn.cc.in_recovery
    flight = 4 * MSS
    assert conn.cc.ssthresh == flight // 2
    # Partial ACK (RFC 6582): retransmit the next hole at once, stay in recovery.
    send(conn, r(ack=sq(LOCAL_SEQ, 3 * MSS)), at=1.2)
    expect(conn, [s(seq=sq(LOCAL_SEQ, 3 * MSS), payload=data[3 * MSS : 4 * MSS])])
    assert conn.cc.in_recovery
    # Full ACK: recovery ends with cwnd = min(ssthresh, flight + MSS).
    send(conn, r(ack=sq(LOCAL_SEQ, 5 * MSS)), at=1.3)
    expect_nothing(conn)
    assert not conn.cc.in_recovery
    assert conn.cc.cwnd == min(conn.cc.ssthresh, 2 * MSS)
    assert conn.next_deadline() is None


def test_zero_window_probe_with_backoff() -> None:
    conn = conn_established()
    send(conn, r(window=0), at=0.5)
    conn.app_send(b"abc", 1.0)
    expect_nothing(conn)
    rto = conn.rtt.rto
    assert conn.next_deadline() == 1.0 + rto  # persist timer
    probe = s(seq=sq(LOCAL_SEQ, -1))  # Linux: an old seq elicits the window
    expect(conn, [probe], at=1.0 + rto)
    assert conn.next_deadline() == 1.0 + 3 * rto
    send(conn, r(window=0), at=1.0 + rto + 0.01)  # the peer answers: still shut
    expect_nothing(conn)
    expect(conn, [probe], at=1.0 + 3 * rto)
    assert conn.next_deadline() == 1.0 + 7 * rto  # backed off again
    send(conn, r(window=1000), at=2.0)
    expect(conn, [s(flags=ACK | PSH, payload=b"abc")])
    assert conn.next_deadline() == 2.0 + rto  # now the retransmission timer


def test_unanswered_zero_window_probes_time_out() -> None:
    conn = conn_established(replace(CONFIG, zero_window_probe_max=2))
    send(conn, r(window=0), at=0.5)
    conn.app_send(b"abc", 1.0)
    for _ in range(2):
        expect(conn, [s(seq=sq(LOCAL_SEQ, -1))], at=conn.next_deadline())
    deadline = conn.next_deadline()
    assert deadline is not None
    step = expect(conn, [s(flags=RST | ACK, window=0)], at=deadline)
    assert step.events == (TimedOut(), Closed())


def test_small_window_forced_segment_after_persist() -> None:
    conn = conn_established()
    send(conn, r(window=100), at=0.5)  # max_window is 64000: 100 B is "silly"
    conn.app_send(bytes(500), 1.0)
    expect_nothing(conn)  # sender SWS avoidance waits
    expect(conn, [s(payload=bytes(100))], at=conn.next_deadline())


def test_fin_is_retransmitted() -> None:
    conn = conn_established()
    conn.app_shutdown(1.0)
    fin = s(flags=ACK | FIN)
    expect(conn, [fin])
    expect(conn, [fin], at=conn.next_deadline())
    assert conn.tcb.rcv_nxt == REMOTE_SEQ


def test_rto_resends_into_a_zero_window() -> None:
    """Data in flight when the peer shuts its window is still retransmitted on RTO
    (RFC 9293 §3.8.6.1), so a live peer is asked again instead of timing out."""
    conn = conn_established()
    conn.app_send(b"hello", 1.0)
    conn.drain()
    send(conn, r(window=0), at=1.05)  # acknowledges nothing, window shut
    expect_nothing(conn)
    expect(conn, [HELLO], at=1.0 + conn.rtt.rto)


# ---------------------------------------------------------------- path MTU (RFC 1191/8201)


def test_packet_too_big_lowers_the_mss_and_resends_what_is_in_flight() -> None:
    conn = conn_established()
    data = bytes(range(256)) * 18  # 4608 bytes
    conn.app_send(data[: 3 * MSS], 1.0)
    assert len(conn.drain().segments) == 3
    cwnd = conn.cc.cwnd
    assert conn.on_packet_too_big(1000, LOCAL_SEQ, 1.01)  # a hop with MTU 1040 (IPv4)
    step = expect(
        conn,
        [
            s(seq=sq(LOCAL_SEQ, i), payload=data[i : min(i + 1000, 3 * MSS)])
            for i in range(0, 3 * MSS, 1000)
        ],
    )
    assert tcb_fields(step)["mss"] == 1000  # persisted: a restored connection keeps it
    assert conn.cc.cwnd == cwnd and not conn.cc.in_recovery  # not a congestion signal
    assert conn.counters["pmtu_lowered"] == 1
    # A later quote of a resent segment, or a larger MTU, changes nothing more.
    assert not conn.on_packet_too_big(1200, sq(LOCAL_SEQ, 1000), 1.02)
    assert not conn.on_packet_too_big(1000, sq(LOCAL_SEQ, 1000), 1.02)
    expect_nothing(conn)


def test_packet_too_big_must_quote_a_segment_in_flight() -> None:
    """RFC 5927 §7.2: a blind attacker cannot shrink the MSS without SND.UNA..SND.NXT."""
    conn = conn_established()
    conn.app_send(b"hello", 1.0)
    conn.drain()
    for seq in (sq(LOCAL_SEQ, -1), sq(LOCAL_SEQ, 5), sq(LOCAL_SEQ, 100000)):
        assert not conn.on_packet_too_big(500, seq, 1.1)
    assert conn.tcb.mss == MSS
    assert conn.counters["icmp_too_big_out_of_window"] == 3
    expect_nothing(conn)


def test_the_full_mss_is_tried_again_after_pmtu_expires() -> None:
    """RFC 1191 §6.3: a path MTU estimate is raised again after ~10 minutes; if the
    narrow hop is still there, its next ICMP lowers it once more."""
    conn = conn_established()
    conn.app_send(bytes(MSS), 1.0)
    conn.drain()
    assert conn.on_packet_too_big(1000, LOCAL_SEQ, 1.01)
    conn.drain()
    send(conn, r(ack=sq(LOCAL_SEQ, MSS)), at=1.1)
    conn.drain()
    expires = 1.01 + CONFIG.pmtu_expires
    assert conn.next_deadline() == expires
    expect_nothing(conn, at=expires - 1)
    assert conn.tcb.mss == 1000
    step = expect(conn, [], at=expires)
    assert conn.tcb.mss == MSS and tcb_fields(step)["mss"] == MSS
    assert conn.counters["pmtu_raised"] == 1
    conn.app_send(bytes(2 * MSS), expires + 1)
    assert [len(seg.payload) for seg in conn.drain().segments] == [MSS, MSS]


def test_limited_transmit_sends_new_data_on_the_first_two_duplicate_acks() -> None:
    """RFC 3042 (RFC 5681 §3.2 SHOULD): each of the first two duplicate ACKs lets one
    new segment out beyond cwnd, so that a small window still brings a third."""
    conn = conn_established()
    conn.app_send(bytes(12 * MSS), 1.0)
    assert len(conn.drain().segments) == 10  # the initial window (RFC 6928)
    dup = r(ack=LOCAL_SEQ)
    send(conn, dup, at=1.1)
    expect(conn, [s(seq=sq(LOCAL_SEQ, 10 * MSS), payload=bytes(MSS))])
    send(conn, dup, at=1.11)
    expect(conn, [s(seq=sq(LOCAL_SEQ, 11 * MSS), payload=bytes(MSS), flags=ACK | PSH)])
    assert conn.cc.cwnd == 10 * MSS  # cwnd itself unchanged
    send(conn, dup, at=1.12)
    expect(conn, [s(payload=bytes(MSS))])  # the fast retransmit
    assert conn.cc.in_recovery
