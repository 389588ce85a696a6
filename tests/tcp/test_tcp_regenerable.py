"""Regenerable sends (``app_send_ref``, ``txmap.py``): extents, not bytes, are stored;
literal bytes keep dense offsets in the store; a restore reads the extents again."""

from __future__ import annotations

import pytest
from tcp_helpers import LOCAL_SEQ, conn_established, r, sq

from stcp_framework.tcp.delta import TcbSet, TxAppend, TxTrim
from stcp_framework.tcp.machine import Connection
from stcp_framework.tcp.tcb import Tcb
from stcp_framework.tcp.txmap import RefExtent, TxMap

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
    restored = Connection.restore(
        Tcb.from_record(record),
        rx=b"",
        rx_offset=0,
        tx=literal,
        tx_offset=base,
        now=5.0,
        config=conn.config,
        version=conn.version,
        regenerate=regenerate,
    )
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
