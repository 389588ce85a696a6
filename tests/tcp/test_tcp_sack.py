"""Selective acknowledgments (RFC 2018) and SACK-based loss recovery (RFC 6675):
this segment in, exactly these out."""
# mypy: disable-error-code="comparison-overlap,unreachable"
# (a test steps the machine and asserts its state between calls; mypy keeps the state
# narrowed across the calls)

from __future__ import annotations

from dataclasses import replace

import pytest
from tcp_helpers import (
    BUF,
    CONFIG,
    LOCAL_ISS,
    LOCAL_SEQ,
    MSS,
    REMOTE_ISS,
    REMOTE_SEQ,
    conn_established,
    conn_syn_sent,
    expect,
    expect_nothing,
    r,
    s,
    send,
    sq,
    syn_options,
    tcb_fields,
)

from stcp_framework.tcp import sack
from stcp_framework.tcp.config import TcpConfig
from stcp_framework.tcp.delta import RxAppend
from stcp_framework.tcp.machine import Connection
from stcp_framework.tcp.sack import Scoreboard
from stcp_framework.tcp.step import OutSegment
from stcp_framework.tcp.tcb import Tcb
from stcp_framework.wire.seq import Seq, seq_diff
from stcp_framework.wire.tcp import ACK, PSH, SYN, TcpOptions, TcpSegment

SACK = replace(CONFIG, sack=True)
SACK_SYN = syn_options()._replace(sack_permitted=True)


def established() -> Connection:
    return conn_established(SACK, options=SACK_SYN)


def blocks(*pairs: tuple[int, int]) -> TcpOptions:
    """Options carrying SACK blocks, given as offsets from the peer's first data byte."""
    return TcpOptions(sack_blocks=tuple((sq(REMOTE_SEQ, a), sq(REMOTE_SEQ, b)) for a, b in pairs))


def our_blocks(*pairs: tuple[int, int]) -> TcpOptions:
    """SACK blocks the peer sends us, as offsets from our first data byte."""
    return TcpOptions(sack_blocks=tuple((sq(LOCAL_SEQ, a), sq(LOCAL_SEQ, b)) for a, b in pairs))


# ------------------------------------------------------------------ negotiation


def test_our_syn_offers_sack_permitted() -> None:
    conn = Connection.open_active(now=0.0, config=SACK, iss=LOCAL_ISS, tsval_offset=0)
    step = conn.drain()
    assert [seg.options.sack_permitted for seg in step.segments] == [True]


def test_syn_ack_offers_sack_only_when_the_peer_did() -> None:
    for peer_offers, config, agreed in (
        (True, SACK, True),
        (False, SACK, False),
        (True, CONFIG, False),  # sack=False: never offered (RFC 2018 §2)
    ):
        syn = r(
            seq=REMOTE_ISS, ack=0, flags=SYN, options=SACK_SYN._replace(sack_permitted=peer_offers)
        )
        conn = Connection.open_passive(syn, now=0.0, config=config, iss=LOCAL_ISS, tsval_offset=0)
        step = conn.drain()
        assert [seg.options.sack_permitted for seg in step.segments] == [agreed]
        assert conn.tcb.sack_permitted is agreed
        assert tcb_fields(step)["sack_permitted"] is agreed  # persisted with the TCB


def test_syn_ack_with_sack_permitted_completes_an_active_open() -> None:
    conn = conn_syn_sent(SACK)
    send(conn, r(seq=REMOTE_ISS, ack=LOCAL_SEQ, flags=SYN | ACK, options=SACK_SYN), at=0.1)
    expect(conn, [s()])
    assert conn.tcb.sack_permitted


def test_restored_connection_keeps_sack_with_an_empty_scoreboard() -> None:
    conn = established()
    record = conn.tcb.to_record()
    restored = Connection.restore(
        Tcb.from_record(record), rx=b"", rx_offset=0, tx=b"", tx_offset=0, now=5.0, config=SACK
    )
    assert restored.tcb.sack_permitted
    assert restored.scoreboard.ranges == [] and restored.sack_recent == []


# ------------------------------------------------------------------ receiver side


def test_out_of_order_segment_is_acked_at_once_with_its_block() -> None:
    conn = established()
    send(conn, r(seq=sq(REMOTE_SEQ, 100), payload=b"b" * 100), at=1.0)
    expect(conn, [s(options=blocks((100, 200)))])  # RFC 5681 §4.2 + RFC 2018 §4


def test_first_block_is_the_latest_arrival_then_the_earlier_ones() -> None:
    conn = established()
    for at, start in ((1.0, 300), (1.1, 100), (1.2, 500)):
        send(conn, r(seq=sq(REMOTE_SEQ, start), payload=b"x" * 100), at=at)
        conn.drain()
    send(conn, r(seq=sq(REMOTE_SEQ, 700), payload=b"x" * 100), at=1.3)
    expect(conn, [s(options=blocks((700, 800), (500, 600), (100, 200), (300, 400)))])
    # 200..300 joins 100..200 and 300..400 into one block, reported first
    send(conn, r(seq=sq(REMOTE_SEQ, 200), payload=b"x" * 100), at=1.4)
    expect(conn, [s(options=blocks((100, 400), (700, 800), (500, 600)))])


def test_at_most_three_blocks_beside_timestamps() -> None:
    config = replace(SACK, timestamps=True)
    conn = conn_established(config, options=SACK_SYN._replace(timestamps=(100, 0)))
    for i, start in enumerate((100, 300, 500, 700, 900)):
        seg = r(
            seq=sq(REMOTE_SEQ, start),
            payload=b"x" * 100,
            options=TcpOptions(timestamps=(101 + i, 0)),
        )
        send(conn, seg, at=1.0 + i / 10)
        step = conn.drain()
    (ack,) = step.segments
    assert ack.options.timestamps is not None
    assert ack.options.sack_blocks == blocks((900, 1000), (700, 800), (500, 600)).sack_blocks


def test_filling_the_hole_acks_everything_without_blocks() -> None:
    conn = established()
    send(conn, r(seq=sq(REMOTE_SEQ, 100), payload=b"b" * 100), at=1.0)
    conn.drain()
    send(conn, r(seq=REMOTE_SEQ, payload=b"a" * 100), at=1.1)
    expect(conn, [s(ack=sq(REMOTE_SEQ, 200), window=CONFIG.recv_buffer_size - 200)])
    assert conn.app_receive(1000, 1.2) == b"a" * 100 + b"b" * 100


def test_data_segment_carries_no_blocks_but_a_pure_ack_follows() -> None:
    conn = established()
    conn.app_send(b"hello", 1.0)
    conn.drain()
    conn.app_send(b"world", 1.05)  # queued: the ACK of the gap would ride on it
    send(conn, r(seq=sq(REMOTE_SEQ, 100), payload=b"b" * 100), at=1.1)
    expect(
        conn,
        [
            s(seq=sq(LOCAL_SEQ, 5), flags=ACK | PSH, payload=b"world"),
            s(seq=sq(LOCAL_SEQ, 10), options=blocks((100, 200))),
        ],
        psh=True,
    )


AOC_SACK = replace(SACK, ack_on_commit=True, manual_commit=True)


def aoc_established() -> Connection:
    return conn_established(AOC_SACK, options=SACK_SYN)


def test_ack_on_commit_reports_the_block_when_the_ack_names_the_hole() -> None:
    """Everything received is committed (as after a restore): the ACK is RCV.NXT, so
    the block above it is exact and the peer resends the hole at once (RACK), instead
    of at its retransmission timer, backed off while we were down."""
    conn = aoc_established()
    send(conn, r(seq=sq(REMOTE_SEQ, 100), payload=b"b" * 100), at=1.0)
    step = conn.drain()
    ops = () if step.delta is None else step.delta.ops
    assert not any(isinstance(op, RxAppend) for op in ops)  # nothing below it to store
    assert [(seg.ack, seg.options.sack_blocks) for seg in step.segments] == [
        (REMOTE_SEQ, blocks((100, 200)).sack_blocks)
    ]


def test_restored_ack_on_commit_connection_names_the_peer_s_lost_tail() -> None:
    """After a crash, what the peer sent past the commit point is gone and it keeps
    sending above the hole: each of those segments gets a block, so a Linux peer --
    in its Loss state after timeouts while we were down, where duplicate ACKs count
    for nothing -- resends the hole at once (RACK) instead of at its next timeout."""
    conn = aoc_established()
    send(conn, r(payload=b"a" * 100), at=1.0)
    assert conn.app_receive(100, 1.0) == b"a" * 100
    conn.app_commit(100, None, 1.0)
    conn.drain()
    restored = Connection.restore(
        Tcb.from_record(conn.tcb.to_record()), rx=b"", rx_offset=100, tx=b"", tx_offset=0,
        now=5.0, config=AOC_SACK,
    )  # fmt: skip
    restored.drain()  # the kick: ACK 100 and duplicates (for a peer without SACK)
    send(restored, r(seq=sq(REMOTE_SEQ, 300), payload=b"c" * 100), at=5.001)
    step = restored.drain()
    assert [(seg.ack, seg.options.sack_blocks) for seg in step.segments] == [
        (sq(REMOTE_SEQ, 100), blocks((300, 400)).sack_blocks)
    ]


def test_ack_on_commit_stores_uncommitted_bytes_before_a_block() -> None:
    """Bytes 0..50 are received and not committed, so the ACK is 0. A block for 200..210
    above that ACK would sit next to bytes it leaves out (a Linux sender takes that for
    reneging and resends them). They are spilled instead -- stored and acknowledged,
    as the strict mode does -- and the duplicate ACK names the hole 50..200 exactly,
    once the spill is durable."""
    conn = aoc_established()
    send(conn, r(payload=b"a" * 50), at=1.0)
    assert conn.drain().segments == ()
    send(conn, r(seq=sq(REMOTE_SEQ, 200), payload=b"w" * 10), at=1.01)
    step = conn.drain()
    assert step.delta is not None
    assert [op for op in step.delta.ops if isinstance(op, RxAppend)] == [RxAppend(0, b"a" * 50)]
    assert [(seg.ack, seg.options.sack_blocks, seg.needs_version) for seg in step.segments] == [
        (sq(REMOTE_SEQ, 50), blocks((200, 210)).sack_blocks, step.delta.version)
    ]
    assert conn.counters["rx_spill"] == 1


def test_ack_on_commit_acknowledges_a_filled_hole_at_once() -> None:
    """RFC 5681 §4.2: the segment that fills the hole is acknowledged immediately --
    with ack-on-commit by a spill, not after commit_wait: the peer's recovery waits."""
    conn = aoc_established()
    send(conn, r(seq=sq(REMOTE_SEQ, 100), payload=b"b" * 100), at=1.0)
    conn.drain()
    send(conn, r(payload=b"a" * 100), at=1.01)
    step = conn.drain()
    assert step.delta is not None
    stored = b"".join(op.data for op in step.delta.ops if isinstance(op, RxAppend))
    assert stored == b"a" * 100 + b"b" * 100
    assert [(seg.ack, seg.options.sack_blocks, seg.needs_version) for seg in step.segments] == [
        (sq(REMOTE_SEQ, 200), (), step.delta.version)
    ]


def test_ack_on_commit_reports_a_duplicate_only_below_its_ack() -> None:
    conn = aoc_established()
    send(conn, r(payload=b"a" * 50), at=1.0)
    conn.drain()
    # A resend of uncommitted bytes: not acknowledged, so no duplicate to report (a
    # D-SACK above the ACK would read as an ordinary block beside unacknowledged bytes).
    send(conn, r(payload=b"a" * 50), at=1.01)
    step = conn.drain()
    assert [(seg.ack, seg.options.sack_blocks) for seg in step.segments] == [(REMOTE_SEQ, ())]
    assert conn.app_receive(100, 1.02) == b"a" * 50
    conn.app_commit(50, None, 1.02)
    conn.drain()
    send(conn, r(payload=b"a" * 50), at=1.03)  # below the ACK now: a D-SACK (RFC 2883)
    step = conn.drain()
    assert [(seg.ack, seg.options.sack_blocks) for seg in step.segments] == [
        (sq(REMOTE_SEQ, 50), blocks((0, 50)).sack_blocks)
    ]


def test_report_blocks_merges_touching_ranges() -> None:
    held = [(10, 20), (20, 30), (50, 60), (40, 45)]
    assert sack.report_blocks(held, [], 4) == [(50, 60), (40, 45), (10, 30)]
    assert sack.report_blocks(held, [41, 12], 2) == [(40, 45), (10, 30)]


# ------------------------------------------------------------------ sender side


def _eight_segments() -> tuple[Connection, bytes]:
    conn = established()
    data = bytes(range(256)) * 46  # 11,776 bytes: 8 segments of 1460 + 96
    conn.app_send(data[: 8 * MSS], 1.0)
    assert len(conn.drain().segments) == 8
    return conn, data


def seg_of(data: bytes, i: int) -> OutSegment:
    return s(seq=sq(LOCAL_SEQ, i * MSS), payload=data[i * MSS : (i + 1) * MSS])


def test_sack_recovery_resends_each_hole_once_without_waiting_a_round_trip() -> None:
    """Segments 1 and 4 of 0..7 are lost. NewReno would resend 4 only after the
    partial ACK of 1's retransmission; with SACK it goes as soon as three segments
    above it are SACKed (RFC 6675 IsLost), and the partial ACK resends nothing."""
    conn, data = _eight_segments()
    send(conn, r(ack=sq(LOCAL_SEQ, MSS)), at=1.1)  # segment 0 arrived
    expect_nothing(conn)
    dup = r(ack=sq(LOCAL_SEQ, MSS))
    send(conn, dup._replace(options=our_blocks((2 * MSS, 3 * MSS))), at=1.11)
    expect_nothing(conn)
    send(conn, dup._replace(options=our_blocks((2 * MSS, 4 * MSS))), at=1.12)
    expect_nothing(conn)
    # Third duplicate ACK: fast retransmit of segment 1.
    send(conn, dup._replace(options=our_blocks((5 * MSS, 6 * MSS), (2 * MSS, 4 * MSS))), at=1.13)
    expect(conn, [seg_of(data, 1)])
    assert conn.cc.in_recovery and conn.scoreboard.high_rxt == 2 * MSS
    # Two segments SACKed above the hole at 4: not lost yet (reordering?).
    send(conn, dup._replace(options=our_blocks((5 * MSS, 7 * MSS), (2 * MSS, 4 * MSS))), at=1.14)
    step = conn.drain()
    assert all(seg.seq != sq(LOCAL_SEQ, 4 * MSS) for seg in step.segments)
    # Three above it: segment 4 is lost; resent at once.
    send(conn, dup._replace(options=our_blocks((5 * MSS, 8 * MSS), (2 * MSS, 4 * MSS))), at=1.15)
    expect(conn, [seg_of(data, 4)])
    assert conn.counters["sack_retransmit"] == 1
    # Segment 1's retransmission arrives: a partial ACK; 4 was resent already.
    send(conn, r(ack=sq(LOCAL_SEQ, 4 * MSS), options=our_blocks((5 * MSS, 8 * MSS))), at=1.2)
    expect_nothing(conn)
    assert conn.cc.in_recovery
    # Segment 4's retransmission arrives: everything is acknowledged.
    send(conn, r(ack=sq(LOCAL_SEQ, 8 * MSS)), at=1.25)
    expect_nothing(conn)
    assert not conn.cc.in_recovery
    assert conn.scoreboard.ranges == [] and conn.scoreboard.high_rxt == 0


def test_a_cumulative_ack_that_sacks_new_bytes_is_also_a_duplicate_ack() -> None:
    """RFC 6675 §5 ("regardless of its status as a cumulative acknowledgment"): the
    ACK moves SND.UNA (slow start: one more segment) and SACKs 2 (Limited Transmit,
    RFC 3042: one more beyond cwnd)."""
    conn = established()
    conn.app_send(bytes(12 * MSS), 1.0)
    assert len(conn.drain().segments) == 10
    send(conn, r(ack=sq(LOCAL_SEQ, MSS), options=our_blocks((2 * MSS, 3 * MSS))), at=1.1)
    last = s(seq=sq(LOCAL_SEQ, 11 * MSS), payload=bytes(MSS), flags=ACK | PSH)
    expect(conn, [s(seq=sq(LOCAL_SEQ, 10 * MSS), payload=bytes(MSS)), last])
    assert conn.dupacks == 1 and not conn.cc.in_recovery


def test_duplicate_acks_with_only_a_dsack_start_no_recovery() -> None:
    """RFC 6675 §2 DupAck: with SACK, a duplicate ACK counts only if it SACKs new
    bytes. Three that report duplicates the network made (D-SACK, RFC 2883) say
    nothing was lost."""
    conn, _ = _eight_segments()
    send(conn, r(ack=sq(LOCAL_SEQ, MSS)), at=1.1)
    expect_nothing(conn)
    for i in range(4):
        dsack = r(ack=sq(LOCAL_SEQ, MSS), options=our_blocks((0, MSS)))
        send(conn, dsack, at=1.11 + i / 100)
        expect_nothing(conn)
    assert not conn.cc.in_recovery and "fast_retransmit" not in conn.counters


def _eight_with_timestamps(config: TcpConfig) -> tuple[Connection, int]:
    """Eight segments sent at 1.0 s (TSval 1000) on a connection with timestamps."""
    conn = conn_established(config, options=SACK_SYN._replace(timestamps=(100, 0)))
    mss = conn.tcb.mss  # 1448 beside timestamps
    conn.app_send(bytes(8 * mss), 1.0)
    assert [seg.options.timestamps for seg in conn.drain().segments] == [(1000, 100)] * 8
    return conn, mss


def _ack(mss: int, segments: int, tsecr: int, sacked: tuple[int, int] | None = None) -> TcpSegment:
    """The peer's ACK of ``segments`` segments, echoing ``tsecr``, maybe SACKing."""
    blocks: tuple[tuple[int, int], ...] = ()
    if sacked is not None:
        blocks = ((sq(LOCAL_SEQ, sacked[0] * mss), sq(LOCAL_SEQ, sacked[1] * mss)),)
    options = TcpOptions(timestamps=(200, tsecr), sack_blocks=blocks)
    return r(ack=sq(LOCAL_SEQ, segments * mss), options=options)


def _sent(conn: Connection, mss: int) -> list[int]:
    """Which segments (by number) the next drain sends."""
    return [seq_diff(Seq(seg.seq), LOCAL_SEQ) // mss for seg in conn.drain().segments]


@pytest.mark.parametrize("sack_on", [True, False], ids=["sack", "no-sack"])
def test_after_a_needless_fast_retransmit_partial_acks_resend_nothing(sack_on: bool) -> None:
    """Segment 0 of 0..7 was late, not lost, but 1..3 arrived first: a fast
    retransmit. The ACK of 0 echoes the original's TSval, older than the
    retransmission's: the original filled the hole (Eifel detection, RFC 3522). The
    ACKs that follow are partial until 8; NewReno would resend the segment at
    SND.UNA at each one -- the whole window again, one segment per ACK."""
    conn, mss = _eight_with_timestamps(replace(SACK, timestamps=True, sack=sack_on))
    for i in range(3):
        send(conn, _ack(mss, 0, 1000, (1, 2 + i) if sack_on else None), at=1.1)
    assert _sent(conn, mss) == [0]  # the fast retransmit, TSval 1100
    send(conn, _ack(mss, 4, 1000), at=1.2)  # echoes 1000: the late original
    assert _sent(conn, mss) == []
    for i in (5, 6, 7, 8):
        send(conn, _ack(mss, i, 1000), at=1.2 + i / 100)
        assert _sent(conn, mss) == []
    assert not conn.cc.in_recovery
    assert conn.counters["retransmit"] == 1 and conn.counters["spurious_fast_retransmit"] == 1


@pytest.mark.parametrize("sack_on", [True, False], ids=["sack", "no-sack"])
def test_a_needless_fast_retransmit_is_undone(sack_on: bool) -> None:
    """The late segment 0 again, with 24 segments to send. The fast retransmit halves
    the window (ssthresh 6 segments: the flight is 10 and the two Limited Transmit
    sent); the ACK that proves it needless
    undoes that (RFC 4015): ssthresh back to pipe_prev (the initial "arbitrarily high":
    the connection was in slow start), and the recovery ends in slow start from
    FlightSize + IW, not at the halved window."""
    config = replace(SACK, timestamps=True, sack=sack_on)
    conn = conn_established(config, options=SACK_SYN._replace(timestamps=(100, 0)))
    mss = conn.tcb.mss
    conn.app_send(bytes(24 * mss), 1.0)
    assert len(conn.drain().segments) == 10  # the initial window
    for i in range(3):
        send(conn, _ack(mss, 0, 1000, (1, 2 + i) if sack_on else None), at=1.1)
    assert 0 in _sent(conn, mss)  # the fast retransmit (and Limited Transmit's new data)
    assert conn.cc.ssthresh == 6 * mss
    send(conn, _ack(mss, 4, 1000), at=1.2)  # echoes the original's TSval
    assert conn.counters["spurious_fast_retransmit"] == 1
    assert conn.cc.ssthresh == 1 << 62
    conn.drain()
    sent = conn.snd_nxt_offset()
    send(conn, _ack(mss, 12, 1000), at=1.3)  # the full ACK (of the recovery point)
    assert not conn.cc.in_recovery
    flight = sent - 12 * mss
    cwnd = conn.cc.cwnd
    assert cwnd == max(6 * mss, flight + 4 * mss)
    conn.drain()
    send(conn, _ack(mss, 14, 1000), at=1.4)
    assert conn.cc.cwnd == cwnd + 2 * mss  # slow start, towards the restored ssthresh


def _fast_retransmit_of_0(segments: int) -> Connection:
    """``segments`` segments queued (no timestamps: no Eifel detection), the initial
    window sent, and 1..3 SACKed: segment 0 is resent at once (fast retransmit)."""
    conn = established()
    conn.app_send(bytes(segments * MSS), 1.0)
    conn.drain()
    for i in range(3):
        send(conn, r(ack=LOCAL_SEQ, options=our_blocks((MSS, (2 + i) * MSS))), at=1.1)
    assert 0 in _sent(conn, MSS) and conn.cc.in_recovery
    return conn


def _dsack(acked: int, dup: int) -> TcpSegment:
    """The peer's ACK of ``acked`` segments reporting segment ``dup`` arrived twice:
    a D-SACK block below the cumulative ACK (RFC 2883 §4)."""
    return r(ack=sq(LOCAL_SEQ, acked * MSS), options=our_blocks((dup * MSS, (dup + 1) * MSS)))


def test_a_fast_retransmit_reported_duplicate_by_a_dsack_is_undone() -> None:
    """Without timestamps Eifel detection has nothing to go on; the D-SACK the
    needless resend draws does (RFC 3708): segment 0 was late, and the ACK of its
    resend (the ACK of the original was lost) reports it arrived twice. The window cut
    is undone (RFC 4015): ssthresh back to pipe_prev, no NewReno resend of segment 4
    at this partial ACK, and the recovery ends in slow start from FlightSize + IW."""
    conn = _fast_retransmit_of_0(24)
    assert conn.cc.ssthresh == 6 * MSS  # the flight of 10 and two Limited Transmit
    send(conn, _dsack(4, 0), at=1.2)
    assert conn.counters["dsack_undo"] == 1 and conn.cc.ssthresh == 1 << 62
    assert conn.cc.in_recovery and 4 not in _sent(conn, MSS)
    sent = conn.snd_nxt_offset()
    send(conn, r(ack=sq(LOCAL_SEQ, 12 * MSS)), at=1.3)  # the full ACK
    assert not conn.cc.in_recovery
    assert conn.cc.cwnd == max(6 * MSS, sent - 12 * MSS + 4 * MSS)
    assert "spurious_fast_retransmit" not in conn.counters  # (that counts Eifel's)


def test_a_dsack_after_the_recovery_restores_ssthresh_and_slow_start_regrows() -> None:
    """The D-SACK comes a round trip after the resend, here after the full ACK ended
    the recovery at the halved window: ssthresh goes back to pipe_prev, and the
    window grows back in slow start (no burst of the old window at once)."""
    conn = _fast_retransmit_of_0(8)
    send(conn, r(ack=sq(LOCAL_SEQ, 8 * MSS)), at=1.2)  # the original filled the hole
    assert not conn.cc.in_recovery and conn.cc.cwnd == conn.cc.ssthresh == 4 * MSS
    send(conn, _dsack(8, 0), at=1.25)
    assert conn.counters["dsack_undo"] == 1
    assert conn.cc.ssthresh == 1 << 62 and conn.cc.cwnd == 4 * MSS
    conn.app_send(bytes(8 * MSS), 1.3)
    assert len(conn.drain().segments) == 4
    send(conn, r(ack=sq(LOCAL_SEQ, 10 * MSS)), at=1.4)
    assert conn.cc.cwnd == 6 * MSS  # slow start: grown by all it acknowledged


def test_every_resend_of_the_recovery_must_come_back_dsacked() -> None:
    """Segments 0 and 4 are both resent (0 at the third duplicate ACK, 4 at the
    partial ACK, NewReno's rule). A D-SACK of 0 alone proves nothing about 4; the
    undo waits for the D-SACK of 4 too."""
    conn = _fast_retransmit_of_0(8)
    send(conn, r(ack=sq(LOCAL_SEQ, 4 * MSS)), at=1.2)  # partial: 4 goes again
    assert _sent(conn, MSS) == [4]
    send(conn, _dsack(4, 0), at=1.25)
    assert "dsack_undo" not in conn.counters and conn.cc.ssthresh == 4 * MSS
    send(conn, _dsack(8, 4), at=1.3)
    assert conn.counters["dsack_undo"] == 1 and conn.cc.ssthresh == 1 << 62


def test_a_dsack_of_bytes_never_resent_undoes_nothing() -> None:
    """Segment 0 was lost and its resend repaired it; the network then duplicates
    segment 5 and the peer reports that (D-SACK). 5 was never resent: the recovery
    stays a real one (Linux counts only segments marked retransmitted)."""
    conn = _fast_retransmit_of_0(8)
    send(conn, r(ack=sq(LOCAL_SEQ, 8 * MSS)), at=1.2)
    send(conn, _dsack(8, 5), at=1.25)
    assert "dsack_undo" not in conn.counters and conn.cc.ssthresh == 4 * MSS


@pytest.mark.parametrize("sack_on", [True, False], ids=["sack", "no-sack"])
def test_after_a_needed_fast_retransmit_a_partial_ack_resends_the_next_segment(
    sack_on: bool,
) -> None:
    """Segments 0 and 4 of 0..7 are lost. The ACK of 0 echoes the retransmission's
    TSval: it was needed, and the partial ACK resends 4 (RFC 6582)."""
    conn, mss = _eight_with_timestamps(replace(SACK, timestamps=True, sack=sack_on))
    for i in range(3):
        send(conn, _ack(mss, 0, 1000, (1, 2 + i) if sack_on else None), at=1.1)
    assert _sent(conn, mss) == [0]
    send(conn, _ack(mss, 4, 1100), at=1.2)
    assert _sent(conn, mss) == [4]
    send(conn, _ack(mss, 8, 1200), at=1.3)
    assert not conn.cc.in_recovery and "spurious_fast_retransmit" not in conn.counters


def test_a_lost_last_segment_is_resent_at_the_partial_ack() -> None:
    """Segments 0 and 7 of 0..7 are lost. After 0's retransmission the partial ACK
    SACKs nothing: 7 goes at once (nothing SACKed above it can say whether it is
    lost), not after a retransmission timeout."""
    conn, data = _eight_segments()
    send(conn, r(ack=LOCAL_SEQ, options=our_blocks((MSS, 4 * MSS))), at=1.1)
    expect(conn, [seg_of(data, 0)])
    send(conn, r(ack=LOCAL_SEQ, options=our_blocks((MSS, 7 * MSS))), at=1.11)
    expect_nothing(conn)
    send(conn, r(ack=sq(LOCAL_SEQ, 7 * MSS)), at=1.2)
    expect(conn, [seg_of(data, 7)])
    send(conn, r(ack=sq(LOCAL_SEQ, 8 * MSS)), at=1.25)
    expect_nothing(conn)
    assert not conn.cc.in_recovery and "rto" not in conn.counters


def test_ack_on_commit_agrees_to_sack() -> None:
    """Without SACK a Linux peer recovers a restored connection's lost tail only at its
    retransmission timer: duplicate ACKs do not count in its Loss state."""
    conn = Connection.open_active(now=0.0, config=AOC_SACK, iss=LOCAL_ISS, tsval_offset=0)
    assert [seg.options.sack_permitted for seg in conn.drain().segments] == [True]
    syn = r(seq=REMOTE_ISS, ack=0, flags=SYN, options=SACK_SYN)
    conn = Connection.open_passive(syn, now=0.0, config=AOC_SACK, iss=LOCAL_ISS, tsval_offset=0)
    assert [seg.options.sack_permitted for seg in conn.drain().segments] == [True]
    assert conn.tcb.sack_permitted


def test_enough_sacked_bytes_start_recovery_before_three_duplicate_acks() -> None:
    """RFC 6675 §5: IsLost(HighACK + 1) -- more than two segments' worth SACKed above
    SND.UNA -- starts loss recovery even when ACKs were thinned (one per 3 segments)."""
    conn, data = _eight_segments()
    dup = r(ack=LOCAL_SEQ)
    send(conn, dup._replace(options=our_blocks((MSS, 4 * MSS))), at=1.1)
    expect(conn, [seg_of(data, 0)])
    assert conn.cc.in_recovery and conn.counters["fast_retransmit"] == 1


def test_a_lost_retransmission_is_resent_once_later_data_is_sacked() -> None:
    """Segment 0 is lost and so is its fast retransmission. New data sent after the
    retransmission (12 and 13) arriving first shows it: 0 goes again at once, not
    after a retransmission timeout (Linux's ``tcp_mark_lost_retrans``)."""
    conn = established()
    data = bytes(range(256)) * (14 * MSS // 256 + 1)
    conn.app_send(data[: 14 * MSS], 1.0)
    assert len(conn.drain().segments) == 10
    sent: list[int] = []
    at = 1.1
    for top in range(2, 12):  # the peer SACKs 1..top-1 as they arrive
        send(conn, r(ack=LOCAL_SEQ, options=our_blocks((MSS, top * MSS))), at=at)
        sent += [seq_diff(Seq(seg.seq), LOCAL_SEQ) // MSS for seg in conn.drain().segments]
        at += 0.001
    # Limited Transmit 10, 11; the fast retransmit of 0; new data as cwnd inflates.
    assert sent[:3] == [10, 11, 0] and 12 in sent
    assert "lost_retransmit" not in conn.counters
    send(conn, r(ack=LOCAL_SEQ, options=our_blocks((MSS, 13 * MSS))), at=at)
    expect(conn, [seg_of(data, 0)])
    assert conn.counters["lost_retransmit"] == 1
    # Only once per sign: the next SACK of older data asks nothing again.
    send(conn, r(ack=LOCAL_SEQ, options=our_blocks((MSS, 13 * MSS + 1))), at=at + 0.001)
    assert all(seg.seq != LOCAL_SEQ for seg in conn.drain().segments)


def test_scoreboard_finds_a_lost_resend_only_after_later_data_arrived() -> None:
    board = Scoreboard()
    board.resent = [[0, 100, 1000]]  # resent 0..100 when SND.NXT was 1000
    board.update(0, 2000, [(100, 1000)])
    assert board.lost_resend(0, 2000) is None  # nothing sent after it arrived yet
    board.update(0, 2000, [(1000, 1100)])
    assert board.lost_resend(0, 2000) == (0, 100)
    assert board.resent == [[0, 100, 2000]]  # sent again now: a new mark
    assert board.lost_resend(0, 2000) is None
    board.update(0, 3000, [(0, 50), (2000, 2100)])
    assert board.lost_resend(0, 3000) == (50, 100)  # only what is still missing
    board.update(0, 3000, [(50, 100)])
    assert board.lost_resend(0, 3000) is None  # it arrived
    board.trim(100)
    assert board.resent == []  # acknowledged: forgotten


def test_a_timeout_keeps_the_scoreboard_a_second_one_forgets_it() -> None:
    """After a timeout go-back-N skips what the peer SACKed, as Linux does; a second
    timeout in a row may mean the receiver reneged (RFC 2018 §8): everything again."""
    conn, data = _eight_segments()
    send(conn, r(ack=LOCAL_SEQ, options=our_blocks((MSS, 2 * MSS))), at=1.1)
    conn.drain()
    assert conn.scoreboard.ranges == [(MSS, 2 * MSS)]
    at = 1.0 + conn.rtt.rto
    expect(conn, [seg_of(data, 0)], at=at)  # cwnd = 1 MSS
    assert conn.scoreboard.ranges == [(MSS, 2 * MSS)]
    at2 = conn.next_deadline()
    assert at2 is not None
    expect(conn, [seg_of(data, 0)], at=at2)  # nothing came back: a second timeout
    assert conn.scoreboard.ranges == []
    send(conn, r(ack=sq(LOCAL_SEQ, MSS)), at=at2 + 0.01)
    step = conn.drain()
    assert step.segments[0].seq == sq(LOCAL_SEQ, MSS)  # the SACKed segment, again


def test_after_a_timeout_bytes_sacked_again_are_not_resent() -> None:
    """RFC 6675 §5.1: the slow start after a timeout uses the SACK information of the
    ACKs since. Of segments 0..8, 0 and 1 are lost and the peer holds 2..7; after the
    timeout 0, 1 and 8 go again, not 2..7."""
    conn, data = _eight_segments()
    conn.app_send(data[8 * MSS :], 1.05)  # a short ninth segment
    assert len(conn.drain().segments) == 1
    at = 1.0 + conn.rtt.rto
    expect(conn, [seg_of(data, 0)], at=at)  # the timeout: cwnd = 1 MSS, board cleared
    # Segment 0 arrives; the ACK SACKs 2..7 again: segment 1 goes (cwnd 2 MSS).
    send(conn, r(ack=sq(LOCAL_SEQ, MSS), options=our_blocks((2 * MSS, 8 * MSS))), at=at + 0.01)
    expect(conn, [seg_of(data, 1)])
    # Segment 1 arrives: everything up to 8 is acknowledged; 8 goes, 2..7 never did.
    send(conn, r(ack=sq(LOCAL_SEQ, 8 * MSS)), at=at + 0.02)
    expect(conn, [s(seq=sq(LOCAL_SEQ, 8 * MSS), payload=data[8 * MSS :], flags=ACK | PSH)])
    assert conn.counters["retransmit"] == 3
    send(conn, r(ack=sq(LOCAL_SEQ, len(data))), at=at + 0.03)
    expect_nothing(conn)
    assert conn.scoreboard.ranges == []


def test_after_a_timeout_a_hole_shorter_than_a_segment_is_resent_alone() -> None:
    """A resend stops where SACKed bytes begin, even short of one MSS."""
    conn, data = _eight_segments()
    at = 1.0 + conn.rtt.rto
    expect(conn, [seg_of(data, 0)], at=at)
    send(conn, r(ack=sq(LOCAL_SEQ, MSS), options=our_blocks((MSS + 500, 8 * MSS))), at=at + 0.01)
    expect(conn, [s(seq=sq(LOCAL_SEQ, MSS), payload=data[MSS : MSS + 500])])


def test_blocks_outside_our_flight_are_ignored() -> None:
    conn, _ = _eight_segments()
    send(conn, r(ack=sq(LOCAL_SEQ, MSS)), at=1.1)
    stale = our_blocks((0, MSS), (9 * MSS, 10 * MSS), (3 * MSS, 3 * MSS))  # D-SACK, ahead, empty
    send(conn, r(ack=sq(LOCAL_SEQ, MSS), options=stale), at=1.2)
    conn.drain()
    assert conn.scoreboard.ranges == []
    assert "sack_blocks_received" not in conn.counters


def test_scoreboard_holes_and_loss_rule() -> None:
    board = Scoreboard()
    assert board.update(0, 100, [(10, 20), (30, 40), (40, 50), (-5, 2), (90, 120)])
    assert board.ranges == [(0, 2), (10, 20), (30, 50), (90, 100)]
    assert not board.update(0, 100, [(12, 18)])  # nothing new
    assert board.next_hole(0, 0) == (2, 10)
    assert board.next_hole(0, 39) == (2, 10)  # 10 + 20 + 10 = 40 bytes SACKed above 2
    assert board.next_hole(0, 40) is None  # (must be more than lost_above)
    assert board.next_hole(20, 29) == (20, 30)  # 30 SACKed above 20
    assert board.next_hole(20, 30) is None  # not more than 30
    assert board.next_hole(95, 0) is None  # nothing SACKed above
    board.trim(35)
    assert board.ranges == [(35, 50), (90, 100)]


# ------------------------------------------------------------------ D-SACK (RFC 2883)


def test_a_duplicate_below_rcv_nxt_is_reported_as_a_dsack_block() -> None:
    conn = established()
    send(conn, r(payload=b"a" * 100), at=1.0)
    conn.drain()
    send(conn, r(payload=b"a" * 100), at=1.1)  # the same segment again
    expect(conn, [s(ack=sq(REMOTE_SEQ, 100), window=BUF - 100, options=blocks((0, 100)))])
    assert conn.counters["dsack_sent"] == 1
    send(conn, r(seq=sq(REMOTE_SEQ, 100), payload=b"b" * 10), at=1.2)
    step = conn.drain()
    assert all(not seg.options.sack_blocks for seg in step.segments)  # reported once


def test_a_partial_duplicate_reports_the_part_we_had() -> None:
    conn = established()
    send(conn, r(payload=b"a" * 100), at=1.0)
    conn.drain()
    send(conn, r(seq=sq(REMOTE_SEQ, 50), payload=b"a" * 50 + b"b" * 50), at=1.1)
    expect(conn, [s(ack=sq(REMOTE_SEQ, 150), window=BUF - 150, options=blocks((50, 100)))])


def test_a_duplicate_of_held_data_comes_first_then_its_block() -> None:
    conn = established()
    send(conn, r(seq=sq(REMOTE_SEQ, 100), payload=b"b" * 100), at=1.0)
    conn.drain()
    send(conn, r(seq=sq(REMOTE_SEQ, 120), payload=b"b" * 50), at=1.1)  # held already
    expect(conn, [s(options=blocks((120, 170), (100, 200)))])


# ------------------------------------------------------------------ tail loss probe


def test_a_silent_tail_gets_a_probe_of_its_last_segment_before_the_rto() -> None:
    """RFC 8985 §7: no ACK for 2 * SRTT (here the 10 ms floor: the handshake measured
    0) and no new data: the last segment goes again, and the RTO is re-armed. Its ACK
    without a D-SACK, and no duplicate ACK before data beyond it is acknowledged, says
    it repaired a loss: cwnd is halved then (Linux ``tcp_process_tlp_ack``)."""
    conn, data = _eight_segments()
    assert conn.next_deadline() == 1.01  # the probe, before the RTO at 1.2
    expect(
        conn,
        [s(seq=sq(LOCAL_SEQ, 7 * MSS), payload=data[7 * MSS : 8 * MSS], flags=ACK | PSH)],
        at=1.01,
    )
    assert conn.counters["tail_loss_probe"] == 1 and conn.counters["retransmit"] == 1
    assert conn.next_deadline() == 1.01 + conn.rtt.rto
    send(conn, r(ack=sq(LOCAL_SEQ, 8 * MSS)), at=1.05)
    expect_nothing(conn)
    assert "probe_recovery" not in conn.counters  # a duplicate ACK may still come
    assert conn.next_deadline() is None
    assert conn.cc.cwnd == 18 * MSS  # slow start: 10 + the 8 acknowledged
    conn.app_send(bytes(MSS), 1.06)
    conn.drain()
    send(conn, r(ack=sq(LOCAL_SEQ, 9 * MSS)), at=1.07)  # beyond the probe, no duplicate
    assert conn.counters["probe_recovery"] == 1 and conn.cc.cwnd == 9 * MSS  # halved


def test_a_probe_answered_by_a_duplicate_ack_repaired_nothing() -> None:
    """The probe's resend and the original both arrived: the ACK of the original, then
    a duplicate ACK for the resend (a receiver without SACK's D-SACK). No loss."""
    conn, _ = _eight_segments()
    conn.on_timer(1.01)
    conn.drain()
    send(conn, r(ack=sq(LOCAL_SEQ, 8 * MSS)), at=1.05)
    send(conn, r(ack=sq(LOCAL_SEQ, 8 * MSS)), at=1.051)  # the duplicate
    conn.app_send(bytes(MSS), 1.06)
    conn.drain()
    send(conn, r(ack=sq(LOCAL_SEQ, 9 * MSS)), at=1.07)
    assert "probe_recovery" not in conn.counters
    assert conn.cc.cwnd == 19 * MSS  # slow start went on


def test_a_probe_that_comes_back_dsacked_repaired_nothing() -> None:
    conn, _ = _eight_segments()
    conn.on_timer(1.01)
    conn.drain()
    send(conn, r(ack=sq(LOCAL_SEQ, 8 * MSS), options=our_blocks((7 * MSS, 8 * MSS))), at=1.05)
    assert "probe_recovery" not in conn.counters
    assert conn.cc.cwnd == 18 * MSS  # slow start went on


def test_a_probe_sends_new_data_when_there_is_some() -> None:
    """Beyond cwnd, if the peer's window has room: new data also asks for SACKs."""
    conn = established()
    conn.cc.cwnd = 2 * MSS
    conn.app_send(bytes(3 * MSS), 1.0)
    assert len(conn.drain().segments) == 2
    expect(conn, [s(seq=sq(LOCAL_SEQ, 2 * MSS), payload=bytes(MSS), flags=ACK | PSH)], at=1.01)
    assert "retransmit" not in conn.counters
    send(conn, r(ack=sq(LOCAL_SEQ, 3 * MSS)), at=1.05)
    assert "probe_recovery" not in conn.counters


def test_one_segment_in_flight_waits_for_a_delayed_ack_before_a_probe() -> None:
    """PTO gets the peer's delayed-ACK allowance (200 ms) with one segment out: here
    that is the RTO's time, so no probe at all."""
    conn = established()
    conn.app_send(b"x" * 100, 1.0)
    conn.drain()
    assert conn.timers.probe_at is None and conn.next_deadline() == 1.0 + conn.rtt.rto


def test_no_probe_without_sack() -> None:
    conn = conn_established()
    conn.app_send(bytes(3 * MSS), 1.0)
    conn.drain()
    assert conn.timers.probe_at is None


# ------------------------------------------------------------------ RACK's reordering timer


def test_a_hole_short_of_the_threshold_is_resent_after_a_quarter_rtt() -> None:
    """Segment 0 of 0..7 is lost, and of the rest only 1 and 2 arrive (or their ACKs
    do): two segments SACKed above the hole, one short of RFC 6675's threshold, and
    nothing more will come. RACK (RFC 8985 §6.3) deems 0 lost a reordering window
    (SRTT / 4) after the last ACK: fast recovery, not the retransmission timeout."""
    conn, data = _eight_segments()
    conn.rtt.srtt = 0.04
    send(conn, r(ack=LOCAL_SEQ, options=our_blocks((MSS, 3 * MSS))), at=1.1)
    expect_nothing(conn)
    assert conn.timers.probe_at == pytest.approx(1.11)  # 1.1 + 40 ms / 4
    expect_nothing(conn, at=1.109)
    expect(conn, [seg_of(data, 0)], at=1.11)
    assert conn.counters["reorder_timeout"] == 1 and conn.cc.in_recovery
    assert "rto" not in conn.counters and "tail_loss_probe" not in conn.counters


def test_needless_recoveries_widen_the_reordering_window() -> None:
    """Each recovery found needless (here by Eifel or D-SACKs: ``undo``) widens the
    window by a quarter RTT, up to a whole one (RFC 8985 §6.2 step 4), so that a path
    that reorders stops setting it off."""
    conn, _ = _eight_segments()
    conn.rtt.srtt = 0.04
    for mult in (2, 3, 4, 4):
        conn.cc.undo()
        assert conn.cc.reo_wnd_mult == mult
    send(conn, r(ack=LOCAL_SEQ, options=our_blocks((MSS, 3 * MSS))), at=1.1)
    assert conn.timers.probe_at == pytest.approx(1.14)  # a whole SRTT
    for _ in range(16):  # 16 recoveries that were needed bring it back
        conn.cc.enter_recovery(8 * MSS, 8 * MSS)
    assert conn.cc.reo_wnd_mult == 1


def test_early_retransmit_with_a_small_flight_and_nothing_more_to_send() -> None:
    """RFC 5827: three segments out, no new data: two duplicate ACKs are all that can
    come (0 and 1 lost), so two start the fast retransmit."""
    conn = established()
    conn.app_send(bytes(3 * MSS), 1.0)
    assert len(conn.drain().segments) == 3
    send(conn, r(ack=LOCAL_SEQ, options=our_blocks((2 * MSS, 3 * MSS))), at=1.001)
    expect_nothing(conn)
    send(conn, r(ack=LOCAL_SEQ, options=our_blocks((MSS, 3 * MSS))), at=1.002)
    expect(conn, [s(payload=bytes(MSS))])
    assert conn.counters["fast_retransmit"] == 1


def test_a_lost_tail_of_two_is_repaired_by_a_probe_and_early_retransmit() -> None:
    """Segments 2 and 3 of 0..3 are lost: nothing comes back for them. The probe
    resends 3, its SACK is the one duplicate ACK two segments in flight can bring, and
    it is enough (RFC 5827): 2 goes at once -- no retransmission timeout."""
    conn = established()
    data = bytes(range(256)) * (4 * MSS // 256 + 1)
    conn.app_send(data[: 4 * MSS], 1.0)
    assert len(conn.drain().segments) == 4
    send(conn, r(ack=sq(LOCAL_SEQ, 2 * MSS)), at=1.001)
    expect_nothing(conn)
    probe = s(seq=sq(LOCAL_SEQ, 3 * MSS), payload=data[3 * MSS : 4 * MSS], flags=ACK | PSH)
    expect(conn, [probe], at=1.011)
    send(conn, r(ack=sq(LOCAL_SEQ, 2 * MSS), options=our_blocks((3 * MSS, 4 * MSS))), at=1.012)
    expect(conn, [seg_of(data, 2)])
    send(conn, r(ack=sq(LOCAL_SEQ, 4 * MSS)), at=1.013)
    expect_nothing(conn)
    assert not conn.cc.in_recovery and "rto" not in conn.counters
    assert conn.counters["tail_loss_probe"] == 1 and conn.counters["fast_retransmit"] == 1
    assert conn.next_deadline() is None


def test_recovery_sends_new_data_in_proportion_to_what_arrives() -> None:
    """RFC 6937: 20 segments out and 0 lost. Limited Transmit sends 20 and 21, the third
    duplicate ACK the fast retransmit; ssthresh is half the 22 out, and from then on one
    new segment goes for every two the peer gets -- where NewReno's inflation would
    send none before half the window came back."""
    conn = established()
    conn.cc.cwnd = 20 * MSS
    conn.app_send(bytes(30 * MSS), 1.0)
    assert len(conn.drain().segments) == 20
    at = 1.1
    sent: list[list[int]] = []
    for top in range(2, 10):  # the peer SACKs 1..top-1 as they arrive
        send(conn, r(ack=LOCAL_SEQ, options=our_blocks((MSS, top * MSS))), at=at)
        sent.append([seq_diff(Seq(seg.seq), LOCAL_SEQ) // MSS for seg in conn.drain().segments])
        at += 0.001
    assert sent == [[20], [21], [0], [], [], [22], [], [23]]
    assert conn.cc.ssthresh == 11 * MSS and conn.cc.in_recovery
    # The full ACK ends the recovery at cwnd = ssthresh.
    send(conn, r(ack=sq(LOCAL_SEQ, 24 * MSS)), at=at)
    assert not conn.cc.in_recovery and conn.cc.cwnd == 11 * MSS
