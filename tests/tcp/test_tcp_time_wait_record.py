"""A quiet TIME-WAIT connection as a compact record (tcp/timewait.py): when it may be
frozen, and that the connection thawed from it answers every input exactly as the
original does (RFC 9293 §3.10.7.4 in TIME-WAIT, RFC 5961, RFC 6191, RFC 7323)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from tcp_helpers import (
    BUF,
    CONFIG,
    LOCAL_SEQ,
    MSS,
    REMOTE_ISS,
    REMOTE_SEQ,
    conn_established,
    conn_fin_wait_2,
    conn_time_wait,
    r,
    send,
    sq,
    syn_options,
)

from stcp_framework.tcp.config import TcpConfig
from stcp_framework.tcp.machine import Connection
from stcp_framework.tcp.state import TcpState
from stcp_framework.tcp.step import Step
from stcp_framework.wire.tcp import ACK, FIN, RST, SYN, TcpOptions, TcpSegment

TW = CONFIG.time_wait_timeout
TS_CONFIG = TcpConfig(
    mss=MSS, recv_buffer_size=BUF, send_buffer_size=65536, timestamps=True, sack=True
)
PEER_TS = 5000


def ts(val: int, ecr: int = 0) -> TcpOptions:
    return TcpOptions(timestamps=(val, ecr))


def tw_plain() -> Connection:
    """TIME-WAIT after we sent 5 bytes and closed first (no options)."""
    conn = conn_established()
    conn.app_send(b"hello", 0.1)
    conn.app_shutdown(0.1)
    conn.drain()
    conn.on_segment(r(ack=sq(LOCAL_SEQ, 6)), 0.2)  # data and FIN acknowledged
    conn.drain()
    conn.on_segment(r(ack=sq(LOCAL_SEQ, 6), flags=ACK | FIN), 0.3)
    conn.drain()
    assert conn.state is TcpState.TIME_WAIT
    return conn


def tw_timestamps() -> Connection:
    """TIME-WAIT with timestamps, window scaling and SACK agreed; the peer sent 3 bytes."""
    conn = conn_established(TS_CONFIG, syn_options(wscale=7, ts=(PEER_TS, 0)))
    conn.on_segment(r(payload=b"abc", options=ts(PEER_TS + 1)), 0.1)
    assert conn.app_receive(100, 0.1) == b"abc"
    conn.drain()
    conn.app_shutdown(0.2)
    conn.drain()
    conn.on_segment(r(seq=sq(REMOTE_SEQ, 3), ack=sq(LOCAL_SEQ, 1), options=ts(PEER_TS + 2)), 0.3)
    conn.drain()
    conn.on_segment(
        r(seq=sq(REMOTE_SEQ, 3), ack=sq(LOCAL_SEQ, 1), flags=ACK | FIN, options=ts(PEER_TS + 3)),
        0.4,
    )
    conn.drain()
    assert conn.state is TcpState.TIME_WAIT
    return conn


def thawed(make: Callable[[], Connection]) -> Connection:
    record = make().freeze_time_wait()
    assert record is not None
    conn = Connection.thaw_time_wait(record)
    conn.check_invariants()
    return conn


def outcome(conn: Connection, act: Callable[[Connection], object]) -> tuple[object, ...]:
    result = act(conn)
    step: Step = conn.drain()
    conn.check_invariants()
    segments = [
        (x.seq, x.ack, x.flags, x.window, x.options, bytes(x.payload), x.needs_version)
        for x in step.segments
    ]
    delta = None if step.delta is None else (step.delta.version, step.delta.ops)
    return result, segments, step.events, delta, conn.state, conn.next_deadline()


PLAIN_FIN = sq(REMOTE_SEQ, 0)  # the peer's FIN in tw_plain (no data from it)
TS_FIN = sq(REMOTE_SEQ, 3)

INPUTS: dict[str, tuple[Callable[[], Connection], Callable[[Connection], object]]] = {
    "retransmitted FIN": (
        tw_plain,
        lambda c: c.on_segment(r(seq=PLAIN_FIN, ack=sq(LOCAL_SEQ, 6), flags=ACK | FIN), 10.0),
    ),
    "retransmitted FIN, timestamps": (
        tw_timestamps,
        lambda c: c.on_segment(
            r(seq=TS_FIN, ack=sq(LOCAL_SEQ, 1), flags=ACK | FIN, options=ts(PEER_TS + 9)), 10.0
        ),
    ),
    "old timestamp (PAWS)": (
        tw_timestamps,
        lambda c: c.on_segment(
            r(seq=TS_FIN, ack=sq(LOCAL_SEQ, 1), flags=ACK | FIN, options=ts(PEER_TS - 9)), 10.0
        ),
    ),
    "RST at RCV.NXT": (
        tw_plain,
        lambda c: c.on_segment(r(seq=sq(PLAIN_FIN, 1), ack=0, flags=RST), 10.0),
    ),
    "RST in window, not exact (challenge ACK)": (
        tw_plain,
        lambda c: c.on_segment(r(seq=sq(PLAIN_FIN, 100), ack=0, flags=RST), 10.0),
    ),
    "RST out of window": (
        tw_plain,
        lambda c: c.on_segment(r(seq=sq(PLAIN_FIN, -5000), ack=0, flags=RST), 10.0),
    ),
    "newer SYN (RFC 6191)": (
        tw_plain,
        lambda c: c.on_segment(
            r(seq=sq(REMOTE_SEQ, 100000), ack=0, flags=SYN, options=syn_options()), 10.0
        ),
    ),
    "older SYN": (
        tw_plain,
        lambda c: c.on_segment(
            r(seq=sq(REMOTE_ISS, -100), ack=0, flags=SYN, options=syn_options()), 10.0
        ),
    ),
    "newer SYN, timestamps": (
        tw_timestamps,
        lambda c: c.on_segment(
            r(
                seq=sq(REMOTE_ISS, -100),
                ack=0,
                flags=SYN,
                options=syn_options(ts=(PEER_TS + 50, 0)),
            ),
            10.0,
        ),
    ),
    "duplicate data": (
        tw_timestamps,
        lambda c: c.on_segment(
            r(seq=REMOTE_SEQ, ack=sq(LOCAL_SEQ, 1), payload=b"abc", options=ts(PEER_TS + 9)), 10.0
        ),
    ),
    "new data after the FIN": (
        tw_plain,
        lambda c: c.on_segment(r(seq=sq(PLAIN_FIN, 1), ack=sq(LOCAL_SEQ, 6), payload=b"x"), 10.0),
    ),
    "pure ACK": (
        tw_plain,
        lambda c: c.on_segment(r(seq=sq(PLAIN_FIN, 1), ack=sq(LOCAL_SEQ, 6)), 10.0),
    ),
    "ACK of unsent data": (
        tw_plain,
        lambda c: c.on_segment(r(seq=sq(PLAIN_FIN, 1), ack=sq(LOCAL_SEQ, 900)), 10.0),
    ),
    "2*MSL passes": (tw_plain, lambda c: c.on_timer(0.3 + TW)),
    "2*MSL not yet": (tw_plain, lambda c: c.on_timer(0.3 + TW - 1)),
    "app reads at EOF": (tw_timestamps, lambda c: c.app_receive(100, 10.0)),
    "app closes": (tw_plain, lambda c: c.app_close(10.0)),
    "app aborts": (tw_plain, lambda c: c.app_abort(10.0)),
}


@pytest.mark.parametrize("name", list(INPUTS))
def test_the_thawed_connection_answers_as_the_original(name: str) -> None:
    make, act = INPUTS[name]
    original = make()
    want = outcome(original, act)
    got = outcome(thawed(make), act)
    assert got == want


def test_a_second_challenge_ack_follows_the_original() -> None:
    """Two inputs in a row, the second one answered from the first one's state."""
    make = tw_plain
    a, b = make(), thawed(make)
    for conn in (a, b):
        send(conn, r(seq=sq(PLAIN_FIN, 1), ack=sq(LOCAL_SEQ, 6), flags=ACK | FIN), at=10.0)
        conn.drain()
    fin = r(seq=PLAIN_FIN, ack=sq(LOCAL_SEQ, 6), flags=ACK | FIN)
    assert outcome(a, lambda c: c.on_segment(fin, 20.0)) == outcome(
        b, lambda c: c.on_segment(fin, 20.0)
    )


def test_the_record_keeps_what_an_answer_needs() -> None:
    conn = tw_timestamps()
    record = conn.freeze_time_wait()
    assert record is not None
    assert record.tcb is conn.tcb  # taken over, not copied
    assert record.version == conn.version
    assert record.time_wait_at == conn.next_deadline() == 0.4 + TW
    assert record.rcv_end == 3  # the three bytes (the FIN is no stream byte)
    thawed_conn = Connection.thaw_time_wait(record)
    assert thawed_conn.tcb.ts_recent == PEER_TS + 3
    assert thawed_conn.tcb.timestamps and thawed_conn.tcb.snd_wscale == 7
    assert thawed_conn.at_eof and thawed_conn.recv_available == 0 and thawed_conn.unacked == 0
    assert thawed_conn.rcv_buf.read_offset == conn.rcv_buf.read_offset
    assert thawed_conn.snd_buf.end_offset == conn.snd_buf.end_offset


def test_only_a_quiet_time_wait_connection_freezes() -> None:
    assert conn_established().freeze_time_wait() is None
    assert conn_fin_wait_2().freeze_time_wait() is None
    assert conn_time_wait().freeze_time_wait() is not None

    pending = conn_fin_wait_2()  # the ACK of the peer's FIN not drained yet
    pending.on_segment(r(ack=sq(LOCAL_SEQ, 1), flags=ACK | FIN), 0.0)
    assert pending.state is TcpState.TIME_WAIT
    assert pending.freeze_time_wait() is None
    pending.drain()
    assert pending.freeze_time_wait() is not None


def test_unread_bytes_keep_the_connection() -> None:
    """Bytes the app has not read (or, level 2, not committed) stay in a Connection."""
    conn = conn_established()
    conn.app_shutdown(0.1)
    conn.drain()
    conn.on_segment(r(ack=sq(LOCAL_SEQ, 1), payload=b"unread"), 0.2)
    conn.drain()
    conn.on_segment(r(seq=sq(REMOTE_SEQ, 6), ack=sq(LOCAL_SEQ, 1), flags=ACK | FIN), 0.3)
    conn.drain()
    assert conn.state is TcpState.TIME_WAIT
    assert conn.freeze_time_wait() is None
    assert conn.app_receive(100, 0.4) == b"unread"
    conn.drain()
    assert conn.freeze_time_wait() is not None

    level2 = TcpConfig(mss=MSS, recv_buffer_size=BUF, timestamps=False, manual_commit=True)
    conn = conn_established(level2)
    conn.app_shutdown(0.1)
    conn.drain()
    conn.on_segment(r(ack=sq(LOCAL_SEQ, 1), payload=b"data"), 0.2)
    conn.on_segment(r(seq=sq(REMOTE_SEQ, 4), ack=sq(LOCAL_SEQ, 1), flags=ACK | FIN), 0.3)
    assert conn.app_receive(100, 0.3) == b"data"
    conn.drain()
    assert conn.state is TcpState.TIME_WAIT
    assert conn.freeze_time_wait() is None  # read, not committed: replayed after a crash
    conn.app_commit(4, None, 0.4)
    conn.drain()
    assert conn.freeze_time_wait() is not None


def arrives(seg: TcpSegment, at: float) -> Callable[[Connection], object]:
    return lambda c: c.on_segment(seg, at)


def test_frozen_again_after_every_segment_it_answers_as_the_original() -> None:
    """The runtime freezes the connection again after each round: a burst of stray
    segments gets the answers the original gives, rate limits included (RFC 5961 §7
    challenge ACKs, ACKs to unacceptable segments)."""
    burst = [
        r(seq=sq(PLAIN_FIN, 100), ack=0, flags=RST),  # in window, not exact: challenge
        r(seq=sq(PLAIN_FIN, 200), ack=0, flags=RST),
        r(seq=sq(PLAIN_FIN, -3000), ack=sq(LOCAL_SEQ, 6)),  # unacceptable: ACK
        r(seq=sq(PLAIN_FIN, -3000), ack=sq(LOCAL_SEQ, 6)),
        r(seq=PLAIN_FIN, ack=sq(LOCAL_SEQ, 6), flags=ACK | FIN),
        r(seq=sq(PLAIN_FIN, 300), ack=0, flags=RST),
    ]
    original = tw_plain()
    frozen = tw_plain()
    answers: list[list[tuple[object, ...]]] = [[], []]
    for i, seg in enumerate(burst):
        at = 10.0 + i * 0.01
        for n in (0, 1):
            conn = original if n == 0 else frozen
            if n == 1:
                record = conn.freeze_time_wait()
                assert record is not None
                conn = frozen = Connection.thaw_time_wait(record)
            answers[n].append(outcome(conn, arrives(seg, at)))
    assert answers[0] == answers[1]
    sent = [a[1] for a in answers[0]]
    assert sum(len(x) for x in sent if isinstance(x, list)) < len(burst)  # rate-limited
