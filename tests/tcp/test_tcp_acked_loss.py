"""A restored connection whose crash lost acknowledged bytes (async durability) resets
itself once the peer proves it: ``Connection.restore(acked_may_be_lost=True)``,
``_arrive.acked_bytes_lost``.

The live connection below acknowledged 3,000 bytes; its store holds the first 1,000
(the delta with the next 2,000 had not landed when the process died). The peer has
discarded what was acknowledged, so it can only send from 3,000 on; the restored
RCV.NXT is 1,000.
"""
# mypy: disable-error-code="comparison-overlap,unreachable"
# (a test steps the machine and asserts its state between calls; mypy keeps the state
# narrowed across the calls)

from __future__ import annotations

from tcp_helpers import CONFIG, LOCAL_SEQ, REMOTE_SEQ, r, sq
from test_tcp_properties import Mirror
from test_tcp_restore import mirrored_established, restore_from

from stcp_framework.tcp._arrive import LOSS_WATCH, LOST_ACK_PROOF, PROBE_REPEAT
from stcp_framework.tcp.events import Aborted, Closed
from stcp_framework.tcp.machine import Connection
from stcp_framework.tcp.state import TcpState
from stcp_framework.wire.tcp import ACK, RST

RESTORED_AT = 100.0


def _restored(
    *, acked_may_be_lost: bool, lost: int = 2000, sent: int = 0, window_tests: bool = True
) -> Connection:
    """Restored from the store's view (1,000 bytes), after the live connection had
    acknowledged ``lost`` more (read as they came, never stored); ``sent`` bytes of its
    own are stored (the peer may have them: the ACK it sends is then past them)."""
    mirror = Mirror()
    live = mirrored_established(mirror, at=0.05)
    if sent:
        live.app_send(b"s" * sent, 0.05)
        mirror.apply(live, live.drain())
    live.on_segment(r(payload=b"a" * 1000), 0.1)
    mirror.apply(live, live.drain())  # stored
    live.app_receive(1000, 0.1)
    mirror.apply(live, live.drain())
    for at in range(1000, 1000 + lost, 1000):
        live.on_segment(r(seq=sq(REMOTE_SEQ, at), payload=b"b" * 1000), 0.2)
        live.drain()  # acknowledged (async: the segment left), never stored: the crash
        live.app_receive(1000, 0.2)
    assert live.tcb.rcv_nxt == sq(REMOTE_SEQ, 1000 + lost)
    conn = restore_from(
        mirror,
        RESTORED_AT,
        CONFIG,
        acked_may_be_lost=acked_may_be_lost,
        window_tests=window_tests,
    )
    assert conn.tcb.rcv_nxt == sq(REMOTE_SEQ, 1000)
    conn.drain()  # the kick
    return conn


def _peer_sends(conn: Connection, at_byte: int, size: int, now: float) -> None:
    conn.on_segment(r(seq=sq(REMOTE_SEQ, at_byte), payload=b"c" * size), now)


def test_the_peer_resending_above_the_gap_resets_the_connection() -> None:
    conn = _restored(acked_may_be_lost=True)
    _peer_sends(conn, 3000, 1000, RESTORED_AT + 0.01)  # new data: the gap opens
    step = conn.drain()
    assert [(seg.ack, seg.flags) for seg in step.segments] == [(sq(REMOTE_SEQ, 1000), ACK)]
    _peer_sends(conn, 4000, 1000, RESTORED_AT + 0.02)
    conn.drain()
    # a copy of the first segment above the gap, too soon for a retransmission
    _peer_sends(conn, 3000, 1000, RESTORED_AT + 0.01 + LOST_ACK_PROOF / 2)
    assert conn.tcb.state is TcpState.ESTABLISHED
    conn.drain()
    # the peer's retransmission timer: it resends from its SND.UNA, 3,000 -- once is
    # what a tail loss probe also does (of its last segment), twice proves it
    _peer_sends(conn, 3000, 1000, RESTORED_AT + 0.01 + LOST_ACK_PROOF)
    conn.drain()
    assert conn.tcb.state is TcpState.ESTABLISHED
    _peer_sends(conn, 3000, 1000, RESTORED_AT + 0.01 + 3 * LOST_ACK_PROOF)
    step = conn.drain()
    assert conn.tcb.state is TcpState.CLOSED
    assert [(seg.seq, seg.ack, seg.flags) for seg in step.segments] == [
        (sq(LOCAL_SEQ, 0), sq(REMOTE_SEQ, 1000), RST | ACK)  # <SEQ=SEG.ACK>
    ]
    aborted = [e for e in step.events if isinstance(e, Aborted)]
    assert len(aborted) == 1 and "2000 bytes past what the store held" in aborted[0].reason
    assert any(isinstance(e, Closed) for e in step.events)
    assert conn.counters["acked_bytes_lost"] == 1


def test_a_peer_that_resends_from_the_restore_point_lost_nothing() -> None:
    """Bytes above the gap first (the peer's in-flight data outran its retransmission),
    then the gap filled: the peer had the bytes; later gaps are the network's."""
    conn = _restored(acked_may_be_lost=True)
    _peer_sends(conn, 2000, 1000, RESTORED_AT + 0.01)
    _peer_sends(conn, 1000, 1000, RESTORED_AT + 0.02)  # the gap fills: RCV.NXT moves
    assert conn.tcb.rcv_nxt == sq(REMOTE_SEQ, 3000)
    conn.drain()
    _peer_sends(conn, 4000, 1000, RESTORED_AT + 0.03)  # lost in the network: a gap
    _peer_sends(conn, 4000, 1000, RESTORED_AT + 1.0)  # a resend above it, long after
    conn.drain()
    assert conn.tcb.state is TcpState.ESTABLISHED
    assert conn.lost_ack_watch is None
    assert "acked_bytes_lost" not in conn.counters


def test_only_a_resend_of_the_first_bytes_above_the_gap_counts() -> None:
    conn = _restored(acked_may_be_lost=True)
    _peer_sends(conn, 3000, 1000, RESTORED_AT + 0.01)
    _peer_sends(conn, 4000, 1000, RESTORED_AT + 0.02)
    _peer_sends(conn, 4000, 1000, RESTORED_AT + 1.0)  # not where the peer's SND.UNA is
    conn.drain()
    assert conn.tcb.state is TcpState.ESTABLISHED


def test_without_the_flag_the_same_segments_only_get_duplicate_acks() -> None:
    """Strict and ack-on-commit restores never acknowledged what the store lacks."""
    conn = _restored(acked_may_be_lost=False)
    assert conn.lost_ack_watch is None
    _peer_sends(conn, 3000, 1000, RESTORED_AT + 0.01)
    _peer_sends(conn, 3000, 1000, RESTORED_AT + 1.0)
    step = conn.drain()
    assert conn.tcb.state is TcpState.ESTABLISHED
    # one immediate duplicate ACK per out-of-order segment (RFC 5681 §4.2), no RST
    assert [(seg.ack, seg.flags) for seg in step.segments] == [(sq(REMOTE_SEQ, 1000), ACK)] * 2


def test_a_tail_loss_probe_above_the_gap_proves_nothing() -> None:
    """A healthy peer whose segments from the restored RCV.NXT on died with the crash
    (never acknowledged): the first to arrive is above the gap, then its tail loss probe
    (RFC 8985 §7) resends its last segment -- the same one, a probe timeout later --
    and only then its retransmission timer resends from SND.UNA, filling the gap. One
    resend above the gap is no proof (it was: crash fuzz seed 3,603,348 reset a strict
    relay's upstream so)."""
    conn = _restored(acked_may_be_lost=True, lost=0)  # nothing acknowledged was lost
    _peer_sends(conn, 3000, 1000, RESTORED_AT + 0.01)  # (1,000-3,000 lost on the way)
    conn.drain()
    _peer_sends(conn, 3000, 1000, RESTORED_AT + 0.4)  # its tail loss probe
    conn.drain()
    assert conn.tcb.state is TcpState.ESTABLISHED
    _peer_sends(conn, 1000, 2000, RESTORED_AT + 0.6)  # its timer: from SND.UNA
    conn.drain()
    assert conn.tcb.state is TcpState.ESTABLISHED
    assert conn.tcb.rcv_nxt == sq(REMOTE_SEQ, 4000)
    assert "acked_bytes_lost" not in conn.counters


def test_resends_beyond_the_window_count_too() -> None:
    """More was lost than the window holds: every segment the peer can send is beyond
    RCV.NXT + RCV.WND, unacceptable (answered with an ACK, dropped), and still the
    proof: the same lowest offset again, a retransmission timeout later."""
    conn = _restored(acked_may_be_lost=True, lost=20_000)
    assert conn.tcb.rcv_wnd < 20_000
    _peer_sends(conn, 21_000, 1000, RESTORED_AT + 0.01)
    _peer_sends(conn, 22_000, 1000, RESTORED_AT + 0.02)
    step = conn.drain()
    assert conn.tcb.state is TcpState.ESTABLISHED and not conn.reasm
    assert all(seg.flags == ACK for seg in step.segments)
    _peer_sends(conn, 21_000, 1000, RESTORED_AT + 0.01 + LOST_ACK_PROOF)
    conn.drain()
    _peer_sends(conn, 21_000, 1000, RESTORED_AT + 0.01 + 3 * LOST_ACK_PROOF)
    step = conn.drain()
    assert conn.tcb.state is TcpState.CLOSED
    assert [seg.flags for seg in step.segments] == [RST | ACK]
    assert any(isinstance(e, Aborted) for e in step.events)


def test_the_reset_takes_its_sequence_number_from_the_peers_ack() -> None:
    """The crash may have lost bytes we sent as well: the peer acknowledged 500 bytes
    that the restored SND.NXT does not cover. A RST at SND.NXT would fall outside the
    peer's window (dropped, RFC 5961 §3.2); at SEG.ACK the peer takes it."""
    conn = _restored(acked_may_be_lost=True)
    ahead = sq(LOCAL_SEQ, 500)
    conn.on_segment(r(seq=sq(REMOTE_SEQ, 3000), ack=ahead, payload=b"c" * 1000), RESTORED_AT)
    conn.drain()
    conn.on_segment(r(seq=sq(REMOTE_SEQ, 3000), ack=ahead, payload=b"c" * 1000), RESTORED_AT + 1)
    step = conn.drain()
    assert [(seg.seq, seg.flags) for seg in step.segments] == [(ahead, RST | ACK)]


def _probe(conn: Connection, peer_snd_una: int, now: float, *, ack: int = 0) -> None:
    """The peer's zero-window probe (Linux ``tcp_xmit_probe_skb``): <SEQ=SND.UNA-1>,
    no data."""
    conn.on_segment(r(seq=sq(REMOTE_SEQ, peer_snd_una - 1), ack=sq(LOCAL_SEQ, ack)), now)


def _tests(conn: Connection) -> list[tuple[int, int, int]]:
    """The window tests among what the connection sends now: (SEQ, ACK, window)."""
    return [
        (seg.seq, seg.ack, seg.window)
        for seg in conn.drain().segments
        if seg.ack != sq(REMOTE_SEQ, 1000)  # (the rest acknowledge RCV.NXT)
    ]


def test_a_probe_above_the_gap_is_answered_with_an_ack_of_the_peers_snd_una() -> None:
    """The old process filled the window and acknowledged bytes the store lacks: the
    peer only probes. Its probe, come again ``PROBE_REPEAT`` later, gets an ACK of
    SEG.SEQ + 1 (its SND.UNA), at SEG.ACK (its RCV.NXT), with our window open: it sends
    from there, above the gap, and its retransmission of that proves the loss."""
    conn = _restored(acked_may_be_lost=True, sent=200)
    t = RESTORED_AT + 0.01
    _probe(conn, 3000, t, ack=200)
    assert _tests(conn) == []  # once is no pattern yet
    conn.on_segment(r(seq=sq(REMOTE_SEQ, 3000), ack=sq(LOCAL_SEQ, 200)), t + 0.1)  # SND.NXT
    _probe(conn, 3000, t + PROBE_REPEAT / 2, ack=200)
    assert _tests(conn) == []
    _probe(conn, 3000, t + PROBE_REPEAT, ack=200)
    ((seq, ack, window),) = _tests(conn)
    assert (seq, ack) == (sq(LOCAL_SEQ, 200), sq(REMOTE_SEQ, 3000)) and window > 0
    assert conn.tcb.rcv_nxt == sq(REMOTE_SEQ, 1000)  # nothing of ours moved
    assert conn.counters["lost_ack_window_test"] == 1
    _probe(conn, 3000, t + 1.5 * PROBE_REPEAT, ack=200)  # too soon for another
    assert _tests(conn) == []
    # the window open, the peer sends from its SND.UNA, then resends it at its timer
    t += 2 * PROBE_REPEAT
    _peer_sends(conn, 3000, 1000, t)
    conn.drain()
    _probe(conn, 3000, t + PROBE_REPEAT, ack=200)  # data came: no more tests
    assert _tests(conn) == []
    _peer_sends(conn, 3000, 1000, t + PROBE_REPEAT + LOST_ACK_PROOF)
    conn.drain()
    _peer_sends(conn, 3000, 1000, t + PROBE_REPEAT + 3 * LOST_ACK_PROOF)
    step = conn.drain()
    assert conn.tcb.state is TcpState.CLOSED
    assert [seg.flags for seg in step.segments] == [RST | ACK]


def test_without_window_tests_a_probe_is_not_tested_but_a_resend_still_proves() -> None:
    """Strict durability: a crash loses no acknowledged byte, only a store gone back to
    an older state does -- the probe goes unanswered by a window test (a healthy peer
    might take one for an ACK), while a resend above the gap still proves the loss."""
    conn = _restored(acked_may_be_lost=True, sent=200, window_tests=False)
    t = RESTORED_AT + 0.01
    for at in (0.0, PROBE_REPEAT, 2 * PROBE_REPEAT, 4 * PROBE_REPEAT):
        _probe(conn, 3000, t + at, ack=200)
        assert _tests(conn) == []
    assert "lost_ack_window_test" not in conn.counters
    t += 5 * PROBE_REPEAT
    _peer_sends(conn, 3000, 1000, t)
    conn.drain()
    _peer_sends(conn, 3000, 1000, t + LOST_ACK_PROOF)
    conn.drain()
    _peer_sends(conn, 3000, 1000, t + 3 * LOST_ACK_PROOF)
    step = conn.drain()
    assert conn.tcb.state is TcpState.CLOSED
    assert [seg.flags for seg in step.segments] == [RST | ACK]


def test_a_healthy_peer_that_took_a_window_test_is_reset_not_left_hanging() -> None:
    """The race the conditions make unlikely: a healthy peer's pure ACK <SEQ=SND.NXT>
    (3,000) twice, a window test of 3,001, but the peer had sent new data from 3,000
    just before it came: it takes the ACK, and with it the bytes from 1,000 we never
    got. Its resends now start at 3,001 -- which the proof takes as the gap's end."""
    conn = _restored(acked_may_be_lost=True, lost=0)  # nothing acknowledged was lost
    t = RESTORED_AT + 0.01
    conn.on_segment(r(seq=sq(REMOTE_SEQ, 3000)), t)  # (1,000-3,000 lost in the network)
    conn.on_segment(r(seq=sq(REMOTE_SEQ, 3000)), t + PROBE_REPEAT)
    assert [ack for _, ack, _ in _tests(conn)] == [sq(REMOTE_SEQ, 3001)]
    _peer_sends(conn, 3000, 1000, t + PROBE_REPEAT + 0.001)  # sent before our ACK came
    conn.drain()
    _peer_sends(conn, 3001, 999, t + PROBE_REPEAT + 0.3)  # its timer: from its SND.UNA
    conn.drain()
    assert conn.tcb.state is TcpState.ESTABLISHED
    _peer_sends(conn, 3001, 999, t + PROBE_REPEAT + 0.3 + 1.5 * LOST_ACK_PROOF)
    conn.drain()
    assert conn.tcb.state is TcpState.ESTABLISHED
    _peer_sends(conn, 3001, 999, t + PROBE_REPEAT + 0.3 + 3 * LOST_ACK_PROOF)
    step = conn.drain()
    assert conn.tcb.state is TcpState.CLOSED
    assert [seg.flags for seg in step.segments] == [RST | ACK]


def test_pure_acks_at_the_restore_point_or_with_data_between_get_no_window_test() -> None:
    """<SEQ=RCV.NXT> without data is what a healthy peer sends (its SND.NXT is our
    RCV.NXT); a peer that sends new data above the gap shows that an ACK of SEG.SEQ + 1
    might cover bytes we never got; a connection without the watch tests nothing."""
    conn = _restored(acked_may_be_lost=True)
    for at in (0.01, 0.01 + PROBE_REPEAT):
        conn.on_segment(r(seq=sq(REMOTE_SEQ, 1000)), RESTORED_AT + at)
        assert _tests(conn) == []
    busy = _restored(acked_may_be_lost=True)
    _peer_sends(busy, 2500, 500, RESTORED_AT + 0.01)  # new data above the gap
    for at in (0.02, 0.02 + PROBE_REPEAT):
        busy.on_segment(r(seq=sq(REMOTE_SEQ, 3000)), RESTORED_AT + at)
        assert _tests(busy) == []
    plain = _restored(acked_may_be_lost=False)
    for at in (0.01, 0.01 + PROBE_REPEAT):
        _probe(plain, 3000, RESTORED_AT + at)
        assert _tests(plain) == []
    assert "lost_ack_window_test" not in plain.counters


def test_without_window_tests_a_late_resend_proves_nothing() -> None:
    """Strict: the proof must come within ``LOSS_WATCH`` of the restore (a store gone
    back shows at once) -- else two blind segments far above RCV.NXT, any SEQ, could
    reset a healthy restored connection at any time later."""
    late = _restored(acked_may_be_lost=True, window_tests=False)
    t = RESTORED_AT + LOSS_WATCH + 1
    _peer_sends(late, 3000, 1000, t)
    _peer_sends(late, 3000, 1000, t + LOST_ACK_PROOF)
    late.drain()
    assert late.tcb.state is TcpState.ESTABLISHED
