"""Every application call in every state (RFC 9293 §3.10.1-§3.10.5 "USER CALLS").

The table below is the RFC's, with our documented choices:
* SEND in SYN-SENT/SYN-RECEIVED queues the data until ESTABLISHED (RFC); in every state
  after a FIN was queued, or in CLOSED, it raises ``LocalProtocolError`` (RFC "error:
  connection closing" / "connection does not exist").
* RECEIVE never raises: ``b""`` when nothing is buffered (the contract).
* CLOSE is split as in sockets: ``app_shutdown`` (FIN after queued data) and
  ``app_close`` (the same, plus RST for unread data, none in these fixtures). In
  SYN-RECEIVED the FIN is queued until our SYN is acknowledged (RFC: "form a FIN
  segment and send it"; we wait so the FIN never precedes the handshake). A second
  CLOSE in a closing state is "ok" rather than "error: connection closing".
* ABORT sends <SEQ=SND.NXT><CTL=RST,ACK> in SYN-RECEIVED, ESTABLISHED, FIN-WAIT-1/2 and
  CLOSE-WAIT, and nothing in SYN-SENT, CLOSING, LAST-ACK, TIME-WAIT (RFC §3.10.5).
LISTEN is the stack's listener table, not a ``Connection`` state.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tcp_helpers import (
    conn_close_wait,
    conn_closing,
    conn_established,
    conn_fin_wait_1,
    conn_fin_wait_2,
    conn_last_ack,
    conn_syn_received,
    conn_syn_sent,
    conn_time_wait,
)

from stcp_framework.tcp.errors import LocalProtocolError
from stcp_framework.tcp.machine import Connection
from stcp_framework.tcp.state import TcpState as S
from stcp_framework.wire.tcp import ACK, FIN, PSH, RST


def conn_closed() -> Connection:
    conn = conn_established()
    conn.app_abort(0.0)
    conn.drain()
    return conn


FIXTURES: dict[S, Callable[[], Connection]] = {
    S.CLOSED: conn_closed,
    S.SYN_SENT: conn_syn_sent,
    S.SYN_RECEIVED: conn_syn_received,
    S.ESTABLISHED: conn_established,
    S.FIN_WAIT_1: conn_fin_wait_1,
    S.FIN_WAIT_2: conn_fin_wait_2,
    S.CLOSE_WAIT: conn_close_wait,
    S.CLOSING: conn_closing,
    S.LAST_ACK: conn_last_ack,
    S.TIME_WAIT: conn_time_wait,
}

RAISES = "LocalProtocolError"
DATA = ACK | PSH  # a data segment (PSH: the last of the queued bytes)
# state -> call -> (resulting state or RAISES, flags of the segments sent)
TABLE: dict[S, dict[str, tuple[S | str, tuple[int, ...]]]] = {
    S.CLOSED: {
        "send": (RAISES, ()),
        "receive": (S.CLOSED, ()),
        "shutdown": (S.CLOSED, ()),
        "close": (S.CLOSED, ()),
        "abort": (S.CLOSED, ()),
    },
    S.SYN_SENT: {
        "send": (S.SYN_SENT, ()),
        "receive": (S.SYN_SENT, ()),
        "shutdown": (S.CLOSED, ()),
        "close": (S.CLOSED, ()),
        "abort": (S.CLOSED, ()),
    },
    S.SYN_RECEIVED: {
        "send": (S.SYN_RECEIVED, ()),
        "receive": (S.SYN_RECEIVED, ()),
        "shutdown": (S.FIN_WAIT_1, ()),
        "close": (S.FIN_WAIT_1, ()),
        "abort": (S.CLOSED, (RST | ACK,)),
    },
    S.ESTABLISHED: {
        "send": (S.ESTABLISHED, (DATA,)),
        "receive": (S.ESTABLISHED, ()),
        "shutdown": (S.FIN_WAIT_1, (ACK | FIN,)),
        "close": (S.FIN_WAIT_1, (ACK | FIN,)),
        "abort": (S.CLOSED, (RST | ACK,)),
    },
    S.FIN_WAIT_1: {
        "send": (RAISES, ()),
        "receive": (S.FIN_WAIT_1, ()),
        "shutdown": (S.FIN_WAIT_1, ()),
        "close": (S.FIN_WAIT_1, ()),
        "abort": (S.CLOSED, (RST | ACK,)),
    },
    S.FIN_WAIT_2: {
        "send": (RAISES, ()),
        "receive": (S.FIN_WAIT_2, ()),
        "shutdown": (S.FIN_WAIT_2, ()),
        "close": (S.FIN_WAIT_2, ()),
        "abort": (S.CLOSED, (RST | ACK,)),
    },
    S.CLOSE_WAIT: {
        "send": (S.CLOSE_WAIT, (DATA,)),
        "receive": (S.CLOSE_WAIT, ()),
        "shutdown": (S.LAST_ACK, (ACK | FIN,)),
        "close": (S.LAST_ACK, (ACK | FIN,)),
        "abort": (S.CLOSED, (RST | ACK,)),
    },
    S.CLOSING: {
        "send": (RAISES, ()),
        "receive": (S.CLOSING, ()),
        "shutdown": (S.CLOSING, ()),
        "close": (S.CLOSING, ()),
        "abort": (S.CLOSED, ()),
    },
    S.LAST_ACK: {
        "send": (RAISES, ()),
        "receive": (S.LAST_ACK, ()),
        "shutdown": (S.LAST_ACK, ()),
        "close": (S.LAST_ACK, ()),
        "abort": (S.CLOSED, ()),
    },
    S.TIME_WAIT: {
        "send": (RAISES, ()),
        "receive": (S.TIME_WAIT, ()),
        "shutdown": (S.TIME_WAIT, ()),
        "close": (S.TIME_WAIT, ()),
        "abort": (S.CLOSED, ()),
    },
}
CALLS = ("send", "receive", "shutdown", "close", "abort")


def test_table_covers_every_state_and_call() -> None:
    assert set(TABLE) == set(S) - {S.LISTEN}
    assert all(set(row) == set(CALLS) for row in TABLE.values())
    for state, make in FIXTURES.items():
        assert make().state is state


@pytest.mark.parametrize("call", CALLS)
@pytest.mark.parametrize("state", list(FIXTURES), ids=str)
@settings(max_examples=10, deadline=None)
@given(size=st.integers(1, 5000), now=st.floats(0.0, 30.0))
def test_user_call_in_state(state: S, call: str, size: int, now: float) -> None:
    conn = FIXTURES[state]()
    want_state, want_flags = TABLE[state][call]
    rcv_nxt, snd_nxt = conn.tcb.rcv_nxt, conn.tcb.snd_nxt
    try:
        if call == "send":
            accepted = conn.app_send(bytes(size), now)
            assert accepted == size
        elif call == "receive":
            assert conn.app_receive(size, now) == b""
        else:
            getattr(conn, f"app_{call}")(now)
    except LocalProtocolError:
        assert want_state == RAISES
        assert conn.state is state  # a refused call changes nothing
        assert conn.drain().segments == ()
        return
    assert want_state != RAISES, f"{call} in {state} should raise"
    assert conn.state is want_state
    segs = conn.drain().segments
    if want_flags == (DATA,):
        # Data fills segments of up to MSS; only the last carries PSH.
        assert all(seg.flags & ~PSH == ACK for seg in segs)
        assert segs[-1].flags == DATA and segs[0].seq == snd_nxt
        assert sum(len(seg.payload) for seg in segs) == size
    else:
        assert tuple(seg.flags for seg in segs) == want_flags
    for seg in segs:
        if seg.flags & FIN or seg.flags & RST:
            assert seg.seq == snd_nxt  # <SEQ=SND.NXT>
        if seg.flags & ACK:
            assert seg.ack == rcv_nxt
    conn.check_invariants()
    if conn.state is S.CLOSED:
        assert conn.next_deadline() is None
