"""Level 2 commits (G4, G6): reading does not free the window, committing does, and a
restore replays from the commit offset."""

from __future__ import annotations

from dataclasses import replace

import pytest
from tcp_helpers import BUF, CONFIG, REMOTE_SEQ, conn_established, r, s, send, sq, tcb_fields

from stcp_framework.tcp.delta import AppCommit, RxAppend, RxTrim
from stcp_framework.tcp.machine import Connection
from stcp_framework.tcp.tcb import Tcb

MANUAL = replace(CONFIG, manual_commit=True)


def delta_ops(conn: Connection) -> list[object]:
    step = conn.drain()
    return [] if step.delta is None else list(step.delta.ops)


def test_manual_commit_is_persisted_in_the_first_record() -> None:
    conn = conn_established(MANUAL)
    assert conn.tcb.manual_commit is True
    assert conn.tcb.to_record()["manual_commit"] is True


def test_reading_does_not_commit_or_trim() -> None:
    conn = conn_established(MANUAL)
    send(conn, r(payload=b"abcdef"), at=1.0)
    conn.drain()
    assert conn.app_receive(4, 1.1) == b"abcd"
    ops = delta_ops(conn)
    assert not any(isinstance(op, (RxTrim, AppCommit)) for op in ops)
    assert conn.tcb.commit_offset == 0


def test_commit_records_offset_state_and_trim_in_one_delta() -> None:
    conn = conn_established(MANUAL)
    send(conn, r(payload=b"abcdef"), at=1.0)
    conn.drain()
    conn.app_receive(6, 1.1)
    conn.app_commit(4, b"st", 1.2)
    step = conn.drain()
    assert step.delta is not None
    ops = list(step.delta.ops)
    assert RxTrim(4) in ops and AppCommit(4, b"st") in ops
    assert tcb_fields(step)["commit_offset"] == 4
    assert conn.tcb.commit_offset == conn.tcb.read_offset == 4


@pytest.mark.parametrize("offset", [-1, 7])
def test_commit_outside_committed_to_read_is_refused(offset: int) -> None:
    conn = conn_established(MANUAL)
    send(conn, r(payload=b"abcdef"), at=1.0)
    conn.app_receive(6, 1.1)
    with pytest.raises(ValueError, match="outside"):
        conn.app_commit(offset, None, 1.2)


def test_uncommitted_bytes_keep_the_window_closed_until_commit() -> None:
    conn = conn_established(MANUAL)
    data = b"x" * BUF
    send(conn, r(payload=data), at=1.0)
    step = conn.drain()
    assert [seg.window for seg in step.segments] == [0]  # buffer full
    assert conn.app_receive(BUF, 1.1) == data
    assert [seg.window for seg in conn.drain().segments] == []  # read: still held
    conn.app_commit(BUF, None, 1.2)
    step = conn.drain()
    assert [(seg.ack, seg.window) for seg in step.segments] == [(sq(REMOTE_SEQ, BUF), BUF)]


def test_level_one_read_opens_the_window() -> None:
    conn = conn_established()
    send(conn, r(payload=b"x" * BUF), at=1.0)
    conn.drain()
    conn.app_receive(BUF, 1.1)
    step = conn.drain()
    assert [seg.window for seg in step.segments] == [BUF]
    assert RxTrim(BUF) in (step.delta.ops if step.delta else ())


@pytest.mark.parametrize("config", [CONFIG, MANUAL], ids=["level-1", "level-2"])
def test_a_window_counted_from_a_commit_needs_that_commit_durable(config: object) -> None:
    """RFC 7323 §2.4 across a crash: once the app commits, every segment's window
    counts from the new commit point, so each needs the version that recorded it --
    a duplicate ACK too, whose ACK field did not move. Sent before that commit landed
    (a store outage lets older versions' segments out) and followed by a crash, the
    restored connection would replay the bytes after the older commit and advertise a
    right edge left of the one the peer saw (crash fuzz seed 156879)."""
    conn = conn_established(config)  # type: ignore[arg-type]
    send(conn, r(payload=b"x" * 1000), at=1.0)
    first = conn.drain()
    assert first.delta is not None
    conn.app_receive(1000, 1.1)
    if config is MANUAL:
        conn.app_commit(1000, None, 1.1)
    committed = conn.drain()
    assert committed.delta is not None and committed.delta.version > first.delta.version
    send(conn, r(seq=sq(REMOTE_SEQ, 3000), payload=b"y" * 500), at=1.2)  # out of order
    (dupack,) = conn.drain().segments
    assert (dupack.ack, dupack.window) == (sq(REMOTE_SEQ, 1000), BUF)
    assert dupack.needs_version >= committed.delta.version


def test_restore_replays_from_the_commit_offset() -> None:
    conn = conn_established(MANUAL)
    rx = b""
    rx_offset = 0
    send(conn, r(payload=b"abcdef"), at=1.0)
    conn.app_receive(6, 1.1)
    conn.app_commit(2, b"s2", 1.2)
    record: dict[str, object] = {}
    version = 0
    # build the store contents from the deltas, as a store would
    for op in delta_ops(conn):
        if isinstance(op, RxAppend):
            # The trim to 2 comes first: only bytes from the commit point are written.
            assert (op.offset, op.data) == (2, b"cdef")
            rx, rx_offset = bytes(op.data), op.offset
        elif hasattr(op, "fields"):
            record.update(op.fields)
    version = conn.version
    full = conn.tcb.to_record()
    full.update(record)
    restored = Connection.restore(
        Tcb.from_record(full),
        rx=rx,
        rx_offset=rx_offset,
        tx=b"",
        tx_offset=0,
        now=5.0,
        config=MANUAL,
        version=version,
    )
    assert restored.app_receive(100, 5.0) == b"cdef"
    kick = restored.drain()
    assert kick.segments and kick.segments[0].ack == sq(REMOTE_SEQ, 6)
    assert s().flags == kick.segments[0].flags
