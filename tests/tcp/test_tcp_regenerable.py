"""Regenerable sends (``app_send_ref``, ``txmap.py``): extents, not bytes, are stored;
literal bytes keep dense offsets in the store; a restore reads the extents again."""

from __future__ import annotations

from dataclasses import replace

import pytest
from tcp_helpers import (
    CONFIG,
    LOCAL_SEQ,
    MSS,
    REMOTE_SEQ,
    conn_established,
    r,
    restore_record,
    sq,
    tcb_fields,
)

from stcp_framework.tcp.delta import TcbSet, TxAppend, TxTrim
from stcp_framework.tcp.machine import Connection
from stcp_framework.tcp.step import Step
from stcp_framework.tcp.tcb import Tcb
from stcp_framework.tcp.txmap import RefExtent, TxMap
from stcp_framework.wire.seq import Seq, seq_add, seq_diff, seq_lt

SOURCE = bytes(range(256)) * 64  # 16 KiB "file"


def regenerate(name: str, offset: int, size: int) -> bytes:
    assert name == "src"
    return SOURCE[offset : offset + size]


def ops_of(conn: Connection) -> list[object]:
    step = conn.drain()
    return [] if step.delta is None else list(step.delta.ops)


def test_literal_offsets_skip_ref_extents() -> None:
    m = TxMap([])
    m.add(10, 5, "a", 0)
    m.add(15, 5, "a", 5)  # continues the extent in stream and source: merged
    m.add(30, 4, "b", 0)
    assert m.refs == [RefExtent(10, 10, 0, "a"), RefExtent(30, 4, 0, "b")]
    assert [m.literal(x) for x in (0, 10, 15, 20, 30, 34, 40)] == [0, 10, 10, 10, 20, 20, 26]
    assert m.stream_end(26) == 40 and m.stream_end(20) == 34
    assert m.pieces(12, 36) == [(12, 20, m.refs[0]), (20, 30, None), (30, 34, m.refs[1]),
                                (34, 36, None)]  # fmt: skip
    assert m.trim(21) and m.refs == [RefExtent(30, 4, 0, "b")] and m.ref_base == 10
    assert m.literal(40) == 26  # unchanged by dropping acknowledged extents
    assert TxMap.decode(m.encode(), m.ref_base) == m


def test_a_bad_tx_refs_field_is_refused() -> None:
    with pytest.raises(ValueError, match="tx_refs"):
        TxMap.decode("[[1,2]]", 0)


def test_ref_bytes_are_sent_but_never_stored() -> None:
    conn = conn_established()
    conn.app_send(b"HDR:", 1.0)
    conn.app_send_ref(SOURCE[:1000], "src", 0, 1.0)
    conn.app_send(b"END", 1.0)
    step = conn.drain()
    assert step.delta is not None
    ops = list(step.delta.ops)
    # Literal bytes at dense literal offsets: "END" follows "HDR:" at 4, not at 1004.
    assert [op for op in ops if isinstance(op, TxAppend)] == [TxAppend(0, b"HDR:END")]
    fields = {k: v for op in ops if isinstance(op, TcbSet) for k, v in op.fields.items()}
    assert fields["tx_refs"] == '[[4,1000,0,"src"]]'
    # The segment carries the ref's bytes and needs the extent durable first (G2).
    payload = b"".join(bytes(seg.payload) for seg in step.segments)
    assert payload == b"HDR:" + SOURCE[:1000] + b"END"
    assert all(seg.needs_version == step.delta.version for seg in step.segments)


def test_acks_trim_literal_offsets_and_drop_acknowledged_extents() -> None:
    conn = conn_established()
    conn.app_send(b"HDR:", 1.0)
    conn.app_send_ref(SOURCE[:1000], "src", 0, 1.0)
    conn.app_send(b"END", 1.0)
    conn.drain()
    conn.on_segment(r(ack=sq(LOCAL_SEQ, 500)), 1.1)  # inside the extent
    assert TxTrim(4) in ops_of(conn)
    conn.on_segment(r(ack=sq(LOCAL_SEQ, 1005)), 1.2)  # past it, 1 byte of "END"
    ops = ops_of(conn)
    assert TxTrim(5) in ops
    fields = {k: v for op in ops if isinstance(op, TcbSet) for k, v in op.fields.items()}
    assert fields["tx_refs"] == "" and fields["tx_ref_base"] == 1000


def test_restore_reads_unacknowledged_ref_bytes_again() -> None:
    conn = conn_established()
    conn.app_send(b"HDR:", 1.0)
    conn.app_send_ref(SOURCE[:3000], "src", 0, 1.0)
    conn.app_send(b"END", 1.0)
    literal = b""
    record = conn.tcb.to_record()
    for op in ops_of(conn):
        if isinstance(op, TcbSet):
            record.update(op.fields)
        elif isinstance(op, TxAppend):
            literal += op.data
    conn.on_segment(r(ack=sq(LOCAL_SEQ, 1004)), 1.1)
    for op in ops_of(conn):
        if isinstance(op, TcbSet):
            record.update(op.fields)
        elif isinstance(op, TxTrim):
            literal = literal[op.below :]
            base = op.below
    restored = restore_record(record, conn, tx=literal, tx_offset=base, regenerate=regenerate)
    buf = restored.snd_buf
    assert (buf.base_offset, buf.end_offset) == (1004, 3007)
    assert bytes(buf.view(1004, 2003)) == SOURCE[1000:3000] + b"END"
    with pytest.raises(ValueError, match="no way to read"):
        Connection.restore(
            Tcb.from_record(record),
            rx=b"",
            rx_offset=0,
            tx=literal,
            tx_offset=base,
            now=5.0,
            config=conn.config,
            version=conn.version,
        )
    with pytest.raises(ValueError, match="gave 0 bytes"):
        Connection.restore(
            Tcb.from_record(record),
            rx=b"",
            rx_offset=0,
            tx=literal,
            tx_offset=base,
            now=5.0,
            config=conn.config,
            version=conn.version,
            regenerate=lambda name, offset, size: b"",
        )


# ------------------------------------------------------------ reservation (recorded ahead)

AHEAD_CONFIG = replace(CONFIG, send_buffer_size=8000)  # records up to 4,000 bytes ahead


def tx_refs_of(step: Step) -> str | None:
    """The ``tx_refs`` value the step's delta records, if it records one."""
    fields = tcb_fields(step)
    value = fields.get("tx_refs")
    return None if value is None else str(value)


def test_the_last_extent_is_kept_while_reserved_beyond_its_end() -> None:
    m = TxMap([])
    m.add(0, 100, "a", 0)
    m.reserve(500, 1)
    assert m.encode() == '[[0,500,0,"a"]]'  # recorded as far as reserved
    assert not m.trim(100) and m.refs == [RefExtent(0, 100, 0, "a")]  # more of it comes
    assert m.within_reservation(100, 400, "a", 100)
    assert not m.within_reservation(100, 401, "a", 100)  # past the reservation
    assert not m.within_reservation(100, 10, "a", 7)  # not where the source goes on
    assert not m.within_reservation(100, 10, "b", 100)
    m.unreserve()
    assert m.encode() == '[[0,100,0,"a"]]'
    assert m.trim(100) and m.refs == [] and m.ref_base == 100


def test_a_sized_ref_send_is_recorded_ahead_so_the_next_bytes_need_no_new_version() -> None:
    conn = conn_established(AHEAD_CONFIG)
    conn.app_send_ref(SOURCE[:1000], "src", 0, 1.0, src_end=10_000)
    first = conn.drain()
    assert first.delta is not None
    v1 = first.delta.version
    # Recorded up to half a send buffer past what is queued: [0, 1000 + 4000).
    assert tx_refs_of(first) == '[[0,5000,0,"src"]]'
    assert [seg.needs_version for seg in first.segments] == [v1]
    assert conn.counters["tx_reserve"] == 1

    conn.app_send_ref(SOURCE[1000:2000], "src", 1000, 1.1, src_end=10_000)
    second = conn.drain()
    assert tx_refs_of(second) is None  # inside the record: nothing new to store
    assert second.segments and all(seg.needs_version == v1 for seg in second.segments)

    # Within half a send buffer of the record's end it is extended, in the next
    # version; the bytes queued now are inside the old record and need only that.
    conn.app_send_ref(SOURCE[2000:3500], "src", 2000, 1.2, src_end=10_000)
    third = conn.drain()
    assert third.delta is not None
    v3 = third.delta.version
    assert tx_refs_of(third) == '[[0,7500,0,"src"]]'
    assert third.segments and all(seg.needs_version == v1 for seg in third.segments)
    # Bytes past the old record's end need the extension (and, close to its end
    # again, extend it once more: up to the 10,000 the application said).
    # A call takes bytes up to the end of one record at a time (the old one first).
    conn.on_segment(r(ack=sq(LOCAL_SEQ, 3500)), 1.25)
    conn.drain()
    assert conn.app_send_ref(SOURCE[3500:6000], "src", 3500, 1.3, src_end=10_000) == 1500
    assert conn.app_send_ref(SOURCE[5000:6000], "src", 5000, 1.3, src_end=10_000) == 1000
    fourth = conn.drain()
    assert tx_refs_of(fourth) == '[[0,10000,0,"src"]]'
    ends = [seq_diff(Seq(seg.seq), LOCAL_SEQ) + len(seg.payload) for seg in fourth.segments]
    assert ends == [3500 + MSS, 5000, 6000]
    assert [seg.needs_version for seg in fourth.segments] == [v1, v1, v3]
    assert conn.counters["tx_reserve"] == 3


def test_the_record_stops_at_the_end_the_application_gave() -> None:
    conn = conn_established(AHEAD_CONFIG)
    conn.app_send_ref(SOURCE[100:600], "src", 100, 1.0, src_end=1100)
    assert tx_refs_of(conn.drain()) == '[[0,1000,100,"src"]]'  # not 4,000 ahead: 1,000 left
    conn.app_send_ref(SOURCE[600:1100], "src", 600, 1.1, src_end=1100)
    step = conn.drain()
    assert tx_refs_of(step) is None and step.segments


@pytest.mark.parametrize("then", ["literal", "other source", "shutdown", "end_reservation"])
def test_anything_else_sent_cuts_the_record_back_to_what_was_queued(then: str) -> None:
    conn = conn_established(AHEAD_CONFIG)
    conn.app_send_ref(SOURCE[:1000], "src", 0, 1.0, src_end=10_000)
    assert tx_refs_of(conn.drain()) == '[[0,5000,0,"src"]]'
    if then == "literal":
        conn.app_send(b"END", 1.1)
        expected = '[[0,1000,0,"src"]]'
    elif then == "other source":
        conn.app_send_ref(b"xyz", "other", 0, 1.1)
        expected = '[[0,1000,0,"src"],[1000,3,0,"other"]]'
    elif then == "shutdown":
        conn.app_shutdown(1.1)
        expected = '[[0,1000,0,"src"]]'
    else:
        assert conn.end_reservation()
        assert not conn.end_reservation()  # nothing left to cut
        expected = '[[0,1000,0,"src"]]'
    step = conn.drain()
    assert step.delta is not None
    assert tx_refs_of(step) == expected
    # What follows the extent (bytes, FIN) needs the shorter record durable first.
    assert conn.tx_needs == step.delta.version
    assert all(seg.needs_version == step.delta.version for seg in step.segments)
    assert bool(step.segments) is (then != "end_reservation")


def test_a_restore_regenerates_the_whole_record_and_the_app_goes_on_after_it() -> None:
    conn = conn_established(AHEAD_CONFIG)
    conn.app_send_ref(SOURCE[:1000], "src", 0, 1.0, src_end=10_000)
    record = conn.tcb.to_record()
    record.update(tcb_fields(conn.drain()))
    restored = restore_record(record, conn, regenerate=regenerate)
    buf = restored.snd_buf
    # Bytes up to the record's end may have left before the crash: they are queued
    # again, and the application continues at 5,000 (Stream.send_offset).
    assert (buf.base_offset, buf.end_offset) == (0, 5000)
    assert bytes(buf.view(0, 5000)) == SOURCE[:5000]
    assert restored.maybe_sent_end == 5000


def test_near_the_end_the_record_is_not_written_again() -> None:
    """Once the record reaches the end the application gave, the bytes up to it need
    the version that recorded them: no same-value rewrite per call (review)."""
    conn = conn_established(AHEAD_CONFIG)
    conn.app_send_ref(SOURCE[:1000], "src", 0, 1.0, src_end=5000)
    first = conn.drain()
    assert first.delta is not None and tx_refs_of(first) == '[[0,5000,0,"src"]]'
    v1 = first.delta.version
    for at, stop in ((1000, 3500), (3500, 5000)):
        conn.on_segment(r(ack=sq(LOCAL_SEQ, at)), 1.0 + at / 1e5)
        conn.drain()
        assert conn.app_send_ref(SOURCE[at:stop], "src", at, 1.1, src_end=5000) == stop - at
        step = conn.drain()
        assert tx_refs_of(step) is None
        assert step.segments and all(seg.needs_version <= v1 for seg in step.segments)
    assert conn.counters["tx_reserve"] == 1


def test_ack_on_commit_a_commit_inside_spilled_bytes_moves_the_edge_with_its_version() -> None:
    """Ack-on-commit: committing bytes already spilled (stored and ACKed) moves the
    window's right edge but not the ACK. A recorded-ahead data segment, which needs
    only an old version, carries that edge: it must wait for the version that records
    the commit, or a crash restores the older commit and a window left of the one the
    peer saw (G3; a review's scratch test of the first version)."""
    aoc = replace(CONFIG, ack_on_commit=True, manual_commit=True, send_buffer_size=8000)
    conn = conn_established(aoc)
    conn.on_segment(r(window=500), 0.01)
    conn.drain()
    conn.app_send_ref(SOURCE[:500], "src", 0, 0.02, src_end=10_000)
    conn.drain()
    for i in range(6):  # 3,000 bytes the app does not commit in time: spilled
        conn.on_segment(r(seq=sq(REMOTE_SEQ, 500 * i), payload=b"x" * 500, window=500), 0.03)
    conn.on_timer(0.03 + aoc.commit_wait + 0.001)
    conn.drain()
    assert conn.rx_stored == 3000
    conn.on_segment(r(seq=sq(REMOTE_SEQ, 3000), ack=sq(LOCAL_SEQ, 500), window=8000), 0.1)
    durable = conn.drain()
    assert durable.delta is not None
    assert conn.app_receive(1000, 0.2) == b"x" * 1000
    conn.app_commit(1000, None, 0.2)
    conn.app_send_ref(SOURCE[500:1500], "src", 500, 0.2, src_end=10_000)
    step = conn.drain()
    assert step.delta is not None and step.segments
    old_edge = seq_add(REMOTE_SEQ, aoc.recv_buffer_size)  # commit 0 + buffer
    moved = [seg for seg in step.segments if seq_lt(old_edge, seq_add(Seq(seg.ack), seg.window))]
    assert moved  # commit 1,000 + buffer
    assert all(seg.needs_version == step.delta.version for seg in moved)  # the commit's
