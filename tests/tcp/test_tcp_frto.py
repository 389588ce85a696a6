"""Forward RTO-Recovery (RFC 5682 §2): telling a spurious retransmission timeout from
a real one by what the two ACKs after it acknowledge. This segment in, exactly these
out."""

from __future__ import annotations

from dataclasses import replace

import pytest
from tcp_helpers import CONFIG, LOCAL_SEQ, MSS, conn_established, r, send, sq, syn_options

from stcp_framework.tcp.config import TcpConfig
from stcp_framework.tcp.machine import Connection
from stcp_framework.wire.seq import Seq, seq_diff
from stcp_framework.wire.tcp import TcpSegment

SACK = replace(CONFIG, sack=True)


def _timed_out(config: TcpConfig, queued: int) -> Connection:
    """20 segments out (cwnd opened to 20), ``queued`` more waiting, and the
    retransmission timer fired: segment 0 is resent (go-back-N, a window of 1)."""
    options = syn_options()._replace(sack_permitted=config.sack)
    conn = conn_established(config, options=options)
    conn.cc.cwnd = 20 * MSS
    conn.app_send(bytes((20 + queued) * MSS), 1.0)
    assert len(conn.drain().segments) == 20
    at = conn.timers.retransmit_at
    assert at is not None
    conn.on_timer(at)
    assert _sent(conn) == [0]
    assert conn.cc.frto == 1 and conn.cc.ssthresh == 10 * MSS
    return conn


def _sent(conn: Connection) -> list[int]:
    """Which segments (by number) the next drain sends."""
    return [seq_diff(Seq(seg.seq), LOCAL_SEQ) // MSS for seg in conn.drain().segments]


def _ack(segments: int) -> TcpSegment:
    return r(ack=sq(LOCAL_SEQ, segments * MSS))


@pytest.mark.parametrize("config", [CONFIG, SACK], ids=["no-sack", "sack"])
def test_a_spurious_timeout_resends_nothing_more_and_is_undone(config: TcpConfig) -> None:
    """The segments were late, not lost: the ACKs of the originals come in after the
    timeout. The first (of 0..4) lets two new segments out instead of resending 5 and 6
    (step 2b); the second acknowledges data that was never resent (5..9): spurious
    (step 3b). The window cut is undone (RFC 4015): ssthresh back to what it was
    ("arbitrarily high": the connection was in slow start), cwnd = FlightSize +
    min(acked, IW), and new data goes on -- nothing of 10..19 is resent."""
    conn = _timed_out(config, 10)
    send(conn, _ack(5), at=1.5)
    assert _sent(conn) == [20, 21]
    send(conn, _ack(10), at=1.51)
    assert conn.counters["spurious_rto"] == 1 and conn.cc.frto == 0
    assert conn.cc.ssthresh == 1 << 62
    assert conn.cc.cwnd == (22 - 10) * MSS + 4 * MSS
    assert _sent(conn) == [22, 23, 24, 25]
    assert conn.counters["retransmit"] == 1


def test_a_duplicate_ack_after_the_new_data_means_the_timeout_was_real() -> None:
    """Segments 0 and 5 were lost. The resend of 0 brings the ACK of 0..4 (step 2b:
    20 and 21 go); 20's arrival brings a duplicate ACK -- 5 is still missing: the
    timeout was real (step 3a), and go-back-N resumes at 5 with a window of three."""
    conn = _timed_out(CONFIG, 10)
    send(conn, _ack(5), at=1.5)
    assert _sent(conn) == [20, 21]
    send(conn, _ack(5), at=1.51)
    assert _sent(conn) == [5, 6, 7]
    assert conn.cc.frto == 0 and "spurious_rto" not in conn.counters
    assert conn.cc.ssthresh == 10 * MSS


def test_an_ack_of_everything_out_at_the_timeout_says_nothing() -> None:
    """Only segment 0 was lost: its resend brings the ACK of all 20 (step 2a). That
    cannot tell a late segment from a lost one: no undo, slow start from the loss
    window goes on with new data."""
    conn = _timed_out(CONFIG, 10)
    send(conn, _ack(20), at=1.5)
    assert conn.cc.frto == 0 and "spurious_rto" not in conn.counters
    assert conn.cc.ssthresh == 10 * MSS
    assert _sent(conn)[0] == 20


def test_with_no_new_data_to_send_go_back_n_goes_on() -> None:
    """Step 2b needs new data; with none queued the first ACK falls back to the usual
    recovery (2a): the old segments after SND.UNA are resent in slow start."""
    conn = _timed_out(CONFIG, 0)
    send(conn, _ack(5), at=1.5)
    assert conn.cc.frto == 0
    assert _sent(conn)[:2] == [5, 6]


def test_a_second_timeout_in_a_row_does_not_start_frto() -> None:
    conn = _timed_out(CONFIG, 10)
    at = conn.timers.retransmit_at
    assert at is not None
    conn.on_timer(at)
    assert _sent(conn) == [0] and conn.cc.frto == 0


def test_a_window_update_in_between_is_no_news_about_the_timeout() -> None:
    """Between the two ACKs the peer only opens its window (same ACK, a new window): not
    a duplicate ACK (RFC 5681 §2), so step 3 still waits for the next ACK."""
    conn = _timed_out(CONFIG, 10)
    send(conn, _ack(5), at=1.5)
    assert _sent(conn) == [20, 21]
    window = conn.tcb.snd_wnd
    send(conn, r(ack=sq(LOCAL_SEQ, 5 * MSS), window=window + 4 * MSS), at=1.505)
    assert conn.cc.frto == 2 and conn.tcb.snd_wnd == window + 4 * MSS
    send(conn, _ack(10), at=1.51)
    assert conn.counters["spurious_rto"] == 1


def test_sacks_of_the_new_data_mean_the_timeout_was_real_even_with_a_new_window() -> None:
    """Segments 5.. were lost (withheld during a store outage). The resend of 0 brings
    the ACK of 0..4 (step 2b: 20 and 21 go). Their arrival brings ACKs that SACK them
    -- and open the window, because the peer's reader drains what came in order: not
    duplicates by RFC 5681's letter, but they say what one says (RFC 5682 §3). The
    timeout was real (3a): go-back-N resumes at 5, instead of waiting for the next,
    backed-off, timeout with only new data allowed out."""
    conn = _timed_out(SACK, 10)
    send(conn, _ack(5), at=1.5)
    assert _sent(conn) == [20, 21]
    window = conn.tcb.snd_wnd
    sack = syn_options(mss=None)._replace(
        sack_blocks=((sq(LOCAL_SEQ, 20 * MSS), sq(LOCAL_SEQ, 22 * MSS)),)
    )
    send(conn, r(ack=sq(LOCAL_SEQ, 5 * MSS), window=window + MSS, options=sack), at=1.51)
    assert conn.cc.frto == 0 and "spurious_rto" not in conn.counters
    assert _sent(conn)[:3] == [5, 6, 7]
