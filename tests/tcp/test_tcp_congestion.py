"""Congestion window growth (RFC 5681 §3.1, RFC 3465 byte counting) with stretch ACKs."""

from __future__ import annotations

from stcp_framework.tcp.congestion import NewReno

MSS = 1000


def test_slow_start_credits_every_byte_a_stretch_ack_covers() -> None:
    # Linux tcp_slow_start: no L = 2*SMSS limit per ACK, so a receiver that ACKs
    # once per batch (GRO, TcpConfig.ack_stretch_max) does not slow our ramp.
    cc = NewReno(MSS, 10)
    cc.on_ack(8 * MSS)
    assert cc.cwnd == 18 * MSS


def test_slow_start_stops_at_ssthresh_and_the_rest_counts_for_avoidance() -> None:
    cc = NewReno(MSS, 10)
    cc.ssthresh = 12 * MSS
    cc.on_ack(14 * MSS)  # 2 SMSS to reach ssthresh, 12 SMSS = one cwnd in avoidance
    assert cc.cwnd == 13 * MSS
    assert cc.bytes_acked == 0


def test_congestion_avoidance_adds_one_smss_per_cwnd_acknowledged() -> None:
    cc = NewReno(MSS, 10)
    cc.ssthresh = 10 * MSS
    for _ in range(9):
        cc.on_ack(MSS)
    assert cc.cwnd == 10 * MSS
    cc.on_ack(MSS)  # a whole cwnd acknowledged (RFC 5681 (3))
    assert cc.cwnd == 11 * MSS


def test_a_stretch_ack_in_congestion_avoidance_adds_one_smss_per_cwnd_it_covers() -> None:
    cc = NewReno(MSS, 10)
    cc.ssthresh = 10 * MSS
    cc.on_ack(10 * MSS + 11 * MSS)  # one cwnd at 10, the next at 11
    assert cc.cwnd == 12 * MSS
    assert cc.bytes_acked == 0


def test_dsacks_count_each_resend_once() -> None:
    """RFC 3708 §3 counting: a range resent twice needs two D-SACKs; one D-SACK block
    may cover two resends; bytes never resent count for nothing."""
    cc = NewReno(MSS, 10)
    cc.enter_recovery(10 * MSS, 10 * MSS)
    cc.on_resend(0, MSS)
    cc.on_resend(0, MSS)  # the resend was lost, and resent
    assert not cc.on_dsack(5 * MSS, 6 * MSS)
    assert not cc.on_dsack(0, MSS)
    assert cc.on_dsack(0, MSS)
    cc.enter_recovery(10 * MSS, 20 * MSS)
    cc.on_resend(10 * MSS, 11 * MSS)
    cc.on_resend(11 * MSS, 12 * MSS)
    assert cc.on_dsack(10 * MSS, 12 * MSS)


def test_no_dsack_undo_after_a_timeout() -> None:
    cc = NewReno(MSS, 10)
    cc.enter_recovery(10 * MSS, 10 * MSS)
    cc.on_resend(0, MSS)
    cc.on_rto(10 * MSS, first=True)
    assert not cc.on_dsack(0, MSS)
