"""ACK-on-commit (TCPR): the ACK field is the commit point, received bytes are never
part of a delta, and the peer's FIN is acknowledged with the last byte's commit."""
# mypy: disable-error-code="comparison-overlap,unreachable"
# (a test steps the machine and asserts its state between calls; mypy keeps the state
# narrowed across the calls)

from __future__ import annotations

from dataclasses import replace

from tcp_helpers import (
    BUF,
    CONFIG,
    LOCAL_ISS,
    MSS,
    REMOTE_SEQ,
    conn_established,
    conn_syn_received,
    r,
    restore_record,
    s,
    send,
    sq,
    tcb_fields,
)

from stcp_framework.tcp.delta import RxAppend, RxTrim, TcbSet
from stcp_framework.tcp.machine import Connection
from stcp_framework.tcp.state import TcpState
from stcp_framework.tcp.tcb import Tcb
from stcp_framework.wire.tcp import ACK, FIN, SYN

AOC = replace(CONFIG, ack_on_commit=True)
AOC_MANUAL = replace(AOC, manual_commit=True)


def ops_of(conn: Connection) -> list[object]:
    step = conn.drain()
    return [] if step.delta is None else list(step.delta.ops)


def test_received_bytes_are_neither_acknowledged_nor_stored() -> None:
    conn = conn_established(AOC)
    send(conn, r(payload=b"a" * MSS), at=1.0)
    send(conn, r(seq=sq(REMOTE_SEQ, MSS), payload=b"b" * MSS), at=1.0)
    step = conn.drain()
    assert step.segments == ()  # two full segments, yet no ACK: nothing is committed
    ops = [] if step.delta is None else list(step.delta.ops)
    assert not any(isinstance(op, RxAppend) for op in ops)
    assert conn.next_deadline() == 1.0 + AOC.commit_wait  # the spill timer


def test_bytes_left_uncommitted_for_commit_wait_are_spilled() -> None:
    conn = conn_established(AOC_MANUAL)
    send(conn, r(payload=b"a" * 3000), at=1.0)
    conn.drain()
    conn.app_receive(1000, 1.001)
    conn.app_commit(500, None, 1.001)
    conn.drain()
    conn.on_timer(1.0 + AOC.commit_wait)
    step = conn.drain()
    assert step.delta is not None
    ops = list(step.delta.ops)
    # Trim to the commit point first (the store never saw bytes below it), then the
    # uncommitted bytes -- read or not -- and the ACK that needs them durable.
    assert ops[0] == RxTrim(500)
    assert b"".join(op.data for op in ops if isinstance(op, RxAppend)) == b"a" * 2500
    assert next(op.offset for op in ops if isinstance(op, RxAppend)) == 500
    assert [(seg.ack, seg.needs_version) for seg in step.segments] == [
        (sq(REMOTE_SEQ, 3000), step.delta.version)
    ]
    assert conn.counters["rx_spill"] == 1
    # Committing spilled bytes trims them; the ACK is already past them.
    conn.app_receive(2000, 1.1)
    conn.app_commit(3000, None, 1.1)
    step = conn.drain()
    assert step.delta is not None and RxTrim(3000) in step.delta.ops
    assert step.segments == ()


def test_restore_after_a_spill_replays_the_stored_bytes() -> None:
    conn = conn_established(AOC_MANUAL)
    send(conn, r(payload=b"abcdef"), at=1.0)
    conn.app_receive(2, 1.0)
    conn.app_commit(2, b"s", 1.0)
    conn.on_timer(1.0 + AOC.commit_wait)
    record = conn.tcb.to_record()
    rx = b""
    for op in ops_of(conn):
        if isinstance(op, TcbSet):
            record.update(op.fields)
        elif isinstance(op, RxAppend):
            rx += op.data
    restored = Connection.restore(
        Tcb.from_record(record),
        rx=rx,
        rx_offset=2,
        tx=b"",
        tx_offset=0,
        now=5.0,
        config=AOC_MANUAL,
        version=conn.version,
    )
    assert restored.tcb.rcv_nxt == sq(REMOTE_SEQ, 6)
    assert restored.app_receive(100, 5.0) == b"cdef"


def test_reading_commits_and_the_ack_follows_the_commit() -> None:
    conn = conn_established(AOC)
    send(conn, r(payload=b"a" * (2 * MSS)), at=1.0)
    conn.drain()
    assert conn.app_receive(2 * MSS, 1.1) == b"a" * (2 * MSS)
    step = conn.drain()
    assert step.delta is not None
    assert tcb_fields(step)["commit_offset"] == 2 * MSS
    assert not any(isinstance(op, (RxAppend, RxTrim)) for op in step.delta.ops)
    # The ACK waits for the version that records the commit; the window counts from it.
    assert list(step.segments) == [
        s(ack=sq(REMOTE_SEQ, 2 * MSS), window=BUF, needs_version=step.delta.version)
    ]


def test_a_small_commit_is_acknowledged_by_the_timer() -> None:
    conn = conn_established(AOC)
    send(conn, r(payload=b"hello"), at=1.0)
    conn.drain()
    conn.app_receive(5, 1.001)
    first = conn.drain()
    assert first.segments == ()
    assert conn.next_deadline() == 1.0 + AOC.commit_wait  # armed at arrival
    conn.on_timer(1.0 + AOC.commit_wait)
    step = conn.drain()
    # The right edge stays put: opening it by 5 bytes would be silly-window growth.
    assert [(seg.ack, seg.window) for seg in step.segments] == [(sq(REMOTE_SEQ, 5), BUF - 5)]


def test_the_window_edge_is_commit_plus_buffer_and_never_moves_left() -> None:
    conn = conn_established(AOC)
    send(conn, r(payload=b"x" * BUF), at=1.0)  # fills the whole window, uncommitted
    conn.drain()
    send(conn, r(seq=sq(REMOTE_SEQ, BUF), payload=b"y"), at=1.0)  # beyond the edge
    step = conn.drain()
    # Out of window: ACK (the commit point) with the unchanged edge, data dropped.
    assert [(seg.ack, seg.window) for seg in step.segments] == [(REMOTE_SEQ, BUF)]
    assert conn.recv_available == BUF
    conn.app_receive(BUF, 1.1)
    step = conn.drain()
    assert [(seg.ack, seg.window) for seg in step.segments] == [(sq(REMOTE_SEQ, BUF), BUF)]


def test_manual_commit_acknowledges_only_what_is_committed() -> None:
    conn = conn_established(AOC_MANUAL)
    send(conn, r(payload=b"abcdef" * 1000), at=1.0)
    conn.drain()
    conn.app_receive(6000, 1.1)
    assert conn.drain().segments == ()
    conn.app_commit(4000, b"state", 1.2)
    step = conn.drain()
    assert [seg.ack for seg in step.segments] == [sq(REMOTE_SEQ, 4000)]


def test_a_commit_after_the_answer_is_acknowledged_at_once() -> None:
    """A request/response app answers, then commits what it answered: the answer left
    with the older ACK, so the commit's ACK goes at once, not at the delayed-ACK timer
    (a client whose Nagle waits for it would wait that long every round)."""
    conn = conn_established(AOC_MANUAL)
    send(conn, r(payload=b"ping"), at=1.0)
    conn.drain()
    assert conn.app_receive(100, 1.1) == b"ping"
    conn.app_send(b"pong", 1.1)
    answer = conn.drain().segments
    assert [(seg.ack, bytes(seg.payload)) for seg in answer] == [(REMOTE_SEQ, b"pong")]
    conn.app_commit(4, None, 1.1)
    step = conn.drain()
    assert [(seg.ack, bytes(seg.payload)) for seg in step.segments] == [(sq(REMOTE_SEQ, 4), b"")]


def test_a_commit_before_the_answer_rides_on_it() -> None:
    """Committed first (``send_all_and_commit``), the answer carries the ACK: one
    segment, as with the delayed ACK a reply carries (RFC 9293 §3.8.6.3)."""
    conn = conn_established(AOC_MANUAL)
    send(conn, r(payload=b"ping"), at=1.0)
    conn.drain()
    assert conn.app_receive(100, 1.1) == b"ping"
    conn.app_commit(4, None, 1.1)
    conn.app_send(b"pong", 1.1)
    step = conn.drain()
    assert [(seg.ack, bytes(seg.payload)) for seg in step.segments] == [
        (sq(REMOTE_SEQ, 4), b"pong")
    ]


def test_out_of_order_data_gets_a_duplicate_ack_only_when_it_names_the_hole() -> None:
    conn = conn_established(AOC)
    send(conn, r(seq=sq(REMOTE_SEQ, 100), payload=b"z" * 10), at=1.0)
    assert [seg.ack for seg in conn.drain().segments] == [REMOTE_SEQ]  # all committed
    send(conn, r(payload=b"a" * 50), at=1.0)  # in order, uncommitted
    conn.drain()
    send(conn, r(seq=sq(REMOTE_SEQ, 200), payload=b"w" * 10), at=1.0)
    assert conn.drain().segments == ()  # an ACK of 0 would send the peer to byte 0


def test_fin_waits_for_the_commit_of_every_byte_before_it() -> None:
    conn = conn_established(AOC)
    send(conn, r(payload=b"last", flags=ACK | FIN), at=1.0)
    step = conn.drain()
    assert step.segments == ()
    assert conn.state is TcpState.ESTABLISHED and not conn.tcb.fin_received
    assert conn.app_receive(100, 1.1) == b"last"
    assert conn.at_eof
    step = conn.drain()
    assert step.delta is not None
    fields = tcb_fields(step)
    assert fields["fin_received"] is True and fields["state"] == "CLOSE-WAIT"
    # A passive close: the FIN's ACK is a delayed ACK (RFC 1122 §4.2.3.2; Linux), which
    # the app's own FIN would carry; here the app does not close, so the timer sends it.
    assert step.segments == ()
    deadline = conn.next_deadline()  # (here the spill timer armed by the arrival)
    assert deadline is not None and deadline <= 1.1 + AOC.delayed_ack_timeout
    version = step.delta.version
    conn.on_timer(max(deadline, 1.1))
    step = conn.drain()
    assert list(step.segments) == [  # the FIN's ACK needs fin_received durable
        s(ack=sq(REMOTE_SEQ, 5), window=BUF - 5, needs_version=version)
    ]


def test_eof_is_readable_before_a_manual_commit_and_close_commits() -> None:
    conn = conn_established(AOC_MANUAL)
    send(conn, r(payload=b"req", flags=ACK | FIN), at=1.0)
    conn.drain()
    assert conn.app_receive(100, 1.1) == b"req"
    assert conn.at_eof and conn.state is TcpState.ESTABLISHED
    conn.app_close(1.2)
    step = conn.drain()
    assert conn.state is TcpState.LAST_ACK
    assert [(seg.ack, seg.flags & FIN) for seg in step.segments] == [(sq(REMOTE_SEQ, 4), FIN)]


def test_restore_resumes_at_the_commit_point_and_acknowledges_it() -> None:
    conn = conn_established(AOC)
    send(conn, r(payload=b"a" * 3000), at=1.0)
    conn.app_receive(1000, 1.1)
    record = conn.tcb.to_record()
    for op in ops_of(conn):
        if isinstance(op, TcbSet):
            record.update(op.fields)
    assert record["rcv_nxt_offset"] == 3000 and record["commit_offset"] == 1000
    restored = restore_record(record, conn)
    assert restored.tcb.rcv_nxt == sq(REMOTE_SEQ, 1000)
    assert restored.recv_available == 0
    kick = restored.drain()
    # The kick, then three duplicates: the peer fast-retransmits what died with us.
    assert [(seg.ack, seg.window) for seg in kick.segments] == [(sq(REMOTE_SEQ, 1000), BUF)] * 4
    # The peer resends from the commit point; the stream continues there.
    send(restored, r(seq=sq(REMOTE_SEQ, 1000), payload=b"b" * 10), at=5.1)
    assert restored.app_receive(100, 5.2) == b"b" * 10


def test_an_ack_sent_meanwhile_does_not_cancel_the_spill() -> None:
    """A duplicate segment is answered at once (RFC 9293 §3.10.7.4), with the ACK at
    the commit point. That ACK leaves the bytes past it unacknowledged, so the spill
    timer stays: once cancelled, a peer that only retransmits what we hold (its RTO
    after a restore) never saw them ACKed and timed out (a level-2 app that commits
    every MiB, seen by a randomized crash sweep)."""
    conn = conn_established(AOC_MANUAL)
    send(conn, r(payload=b"a" * 3000), at=1.0)
    conn.drain()
    send(conn, r(seq=sq(REMOTE_SEQ, -1000), payload=b"z" * 1000), at=1.01)  # a duplicate
    assert [seg.ack for seg in conn.drain().segments] == [REMOTE_SEQ]
    assert conn.next_deadline() == 1.0 + AOC.commit_wait  # still armed
    conn.on_timer(1.0 + AOC.commit_wait)
    assert [seg.ack for seg in conn.drain().segments] == [sq(REMOTE_SEQ, 3000)]
    assert conn.counters["rx_spill"] == 1


def test_restore_in_syn_received_sends_the_syn_ack_alone() -> None:
    """The peer's ACK of our SYN-ACK died with the old process: the kick is the SYN-ACK
    again, and nothing else -- the three duplicate ACKs come only once the handshake is
    done (an ACK without SYN from SYN-RECEIVED once made the peer's view of our window
    jump back from the scaled to the SYN's unscaled one)."""
    conn = conn_syn_received(AOC)
    restored = Connection.restore(
        Tcb.from_record(conn.tcb.to_record()),
        rx=b"",
        rx_offset=0,
        tx=b"",
        tx_offset=0,
        now=5.0,
        config=AOC,
        version=conn.version,
    )
    kick = restored.drain()
    assert [(seg.seq, seg.ack, seg.flags) for seg in kick.segments] == [
        (LOCAL_ISS, REMOTE_SEQ, SYN | ACK)
    ]


def test_records_without_the_field_mean_ack_on_commit_off() -> None:
    record = conn_established(CONFIG).tcb.to_record()
    del record["ack_on_commit"]
    assert Tcb.from_record(record).ack_on_commit is False


def test_spilled_bytes_still_count_against_the_buffer_until_committed() -> None:
    """G6: the right edge stays commit + buffer size; spilling moves the ACK, not it."""
    conn = conn_established(AOC)
    send(conn, r(payload=b"a" * 3000), at=1.0)
    conn.drain()
    conn.on_timer(1.0 + AOC.commit_wait)
    step = conn.drain()
    assert [(seg.ack, seg.window) for seg in step.segments] == [(sq(REMOTE_SEQ, 3000), BUF - 3000)]
    send(conn, r(seq=sq(REMOTE_SEQ, 3000), payload=b"b" * BUF), at=1.1)
    assert conn.recv_available == BUF  # trimmed to the edge


def test_a_read_after_a_spill_reopens_the_window_with_an_update() -> None:
    """Spilled bytes already ACKed fill the window; committing them (a read) moves the
    right edge but not the ACK, so only a window update tells the peer -- without it
    the peer waits on its zero-window probe timer (seen once as a 37 s stall)."""
    conn = conn_established(AOC)
    send(conn, r(payload=b"x" * BUF), at=1.0)
    conn.drain()
    conn.on_timer(1.0 + AOC.commit_wait)  # spill: everything stored and acknowledged
    step = conn.drain()
    assert [(seg.ack, seg.window) for seg in step.segments] == [(sq(REMOTE_SEQ, BUF), 0)]
    assert conn.app_receive(BUF // 2, 1.1) == b"x" * (BUF // 2)
    step = conn.drain()
    assert [(seg.ack, seg.window) for seg in step.segments] == [(sq(REMOTE_SEQ, BUF), BUF // 2)]
