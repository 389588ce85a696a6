"""Restore equivalence (STYLE.md §9.4): a connection rebuilt from what its deltas
persisted equals the live one, and its first drain is the kick."""

from __future__ import annotations

from tcp_helpers import CONFIG, LOCAL_SEQ, MSS, REMOTE_SEQ, r, sq, syn_options
from test_tcp_properties import Mirror

from stcp_framework.tcp.machine import Connection
from stcp_framework.tcp.tcb import Tcb
from stcp_framework.wire.tcp import SYN


def test_restore_from_deltas_equals_live_and_kicks() -> None:
    mirror = Mirror()
    syn = r(seq=sq(REMOTE_SEQ, -1), ack=0, flags=SYN, options=syn_options())
    conn = Connection.open_passive(syn, now=0.0, config=CONFIG, iss=sq(LOCAL_SEQ, -1),
                                   tsval_offset=0)
    mirror.apply(conn, conn.drain())
    conn.on_segment(r(), 0.1)
    mirror.apply(conn, conn.drain())
    conn.on_segment(r(payload=b"request"), 0.2)
    mirror.apply(conn, conn.drain())
    assert conn.app_receive(3, 0.3) == b"req"
    conn.app_send(bytes(3 * MSS), 0.3)
    mirror.apply(conn, conn.drain())
    conn.on_segment(r(seq=sq(REMOTE_SEQ, 7), ack=sq(LOCAL_SEQ, MSS)), 0.4)
    mirror.apply(conn, conn.drain())

    tcb = Tcb.from_record(mirror.tcb)
    assert tcb == conn.tcb
    restored = Connection.restore(tcb, rx=bytes(mirror.rx), rx_offset=mirror.rx_base,
                                  tx=bytes(mirror.tx), tx_offset=mirror.tx_base, now=100.0,
                                  config=CONFIG)
    assert restored.tcb == conn.tcb
    assert restored.recv_available == conn.recv_available == 4
    assert restored.app_receive(100, 100.0) == b"uest"
    assert restored.unacked == conn.unacked == 2 * MSS
    step = restored.drain()
    # The kick: unacknowledged data from snd_una again (cwnd restarts), carrying our ACK.
    assert step.segments[0].seq == sq(LOCAL_SEQ, MSS)
    assert bytes(step.segments[0].payload) == bytes(MSS)
    assert all(seg.ack == sq(REMOTE_SEQ, 7) for seg in step.segments)
    assert restored.next_deadline() is not None
