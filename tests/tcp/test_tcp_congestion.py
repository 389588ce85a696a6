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


def test_after_an_idle_longer_than_the_rto_the_window_restarts() -> None:
    """RFC 5681 §4.1: a window grown by 200 request/response round trips (each ACK
    grew it, one segment in flight) is no measure of the path after a minute of
    silence. The next write leaves as the restart window, min(IW, cwnd) -- not as
    one burst of the 210 segments cwnd had reached (a review found that)."""
    from dataclasses import replace

    from tcp_helpers import CONFIG, LOCAL_SEQ, conn_established, r, sq, syn_options

    config = replace(CONFIG, sack=True, send_buffer_size=4 << 20, window_scaling=True)
    conn = conn_established(config, options=syn_options()._replace(sack_permitted=True, wscale=7))
    mss = conn.tcb.mss
    t, acked = 1.0, 0
    for _ in range(200):
        conn.app_send(bytes(mss), t)
        conn.drain()
        acked += mss
        conn.on_segment(r(ack=sq(LOCAL_SEQ, acked), window=65535), t + 0.01)
        conn.drain()
        t += 0.02
    assert conn.cc.cwnd > 100 * mss
    conn.app_send(bytes(400 * mss), t + 60.0)
    assert len(conn.drain().segments) == config.initial_cwnd_segments
    # busy, no idle: the window is the one it has
    conn2 = conn_established(config, options=syn_options()._replace(sack_permitted=True, wscale=7))
    conn2.cc.cwnd = 50 * mss
    conn2.app_send(bytes(400 * mss), 1.0)
    assert len(conn2.drain().segments) == 50
