"""Sequence numbers across 2**32 in every fixture (LOCAL_ISS and REMOTE_ISS sit just
below the wrap: the peer's data wraps after 499 bytes, ours after 999)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from tcp_helpers import (
    LOCAL_ISS,
    LOCAL_SEQ,
    REMOTE_ISS,
    REMOTE_SEQ,
    conn_close_wait,
    conn_established,
    conn_fin_wait_1,
    conn_fin_wait_2,
    r,
    send,
    sq,
)

from stcp_framework.tcp.machine import Connection
from stcp_framework.wire.tcp import ACK, PSH

RECEIVING: list[Callable[[], Connection]] = [conn_established, conn_fin_wait_1, conn_fin_wait_2]
SENDING: list[Callable[[], Connection]] = [conn_established, conn_close_wait]


def test_fixtures_sit_below_the_wrap() -> None:
    assert LOCAL_ISS > 2**32 - 1001 and REMOTE_ISS > 2**32 - 501


@pytest.mark.parametrize("make", RECEIVING, ids=lambda f: f.__name__)
def test_receive_across_the_wrap(make: Callable[[], Connection]) -> None:
    conn = make()
    ack = conn.tcb.snd_nxt
    data = bytes(range(256)) * 4
    for i in range(0, 1024, 400):  # 400 + 400 + 224: the second segment wraps
        send(conn, r(seq=sq(REMOTE_SEQ, i), ack=ack, payload=data[i : i + 400]), at=1.0)
    assert conn.tcb.rcv_nxt == sq(REMOTE_SEQ, 1024) < 1024  # wrapped
    assert conn.app_receive(2000, 1.1) == data
    # An old duplicate from before the wrap is still recognised as old.
    send(conn, r(seq=REMOTE_SEQ, ack=ack, payload=data[:400]), at=1.2)
    segs = conn.drain().segments
    assert segs and segs[-1].ack == sq(REMOTE_SEQ, 1024)
    assert conn.recv_available == 0


@pytest.mark.parametrize("make", SENDING, ids=lambda f: f.__name__)
def test_send_and_ack_across_the_wrap(make: Callable[[], Connection]) -> None:
    conn = make()
    rcv = conn.tcb.rcv_nxt
    data = bytes(range(256)) * 8  # 2048 bytes: crosses LOCAL's wrap at 999
    conn.app_send(data, 1.0)
    segs = conn.drain().segments
    assert [s.seq for s in segs] == [LOCAL_SEQ, sq(LOCAL_SEQ, 1460)]
    assert segs[-1].flags == ACK | PSH and segs[1].seq < 2**31  # past the wrap
    for acked in (500, 999, 1000, 1500, 2048):
        send(conn, r(seq=rcv, ack=sq(LOCAL_SEQ, acked)), at=1.1)
        assert conn.unacked == 2048 - acked
    assert conn.tcb.snd_una == sq(LOCAL_SEQ, 2048) == conn.tcb.snd_nxt
    assert conn.next_deadline() is None
