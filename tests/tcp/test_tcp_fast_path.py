"""Header prediction (``_arrive.header_prediction``, the ``on_segment`` fast path) is
an optimisation of RFC 9293 §3.10.7.4 only: for every segment in every reachable
state it must leave the connection exactly as the general steps do."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from tcp_helpers import CONFIG, LOCAL_SEQ, MSS, REMOTE_SEQ, conn_established, r, sq, syn_options
from tcp_peer import Replay, Tape, drive, likely_segment, plain_step, snapshot

from stcp_framework.tcp import _arrive, _output
from stcp_framework.tcp.machine import Connection
from stcp_framework.tcp.state import TcpState
from stcp_framework.wire.tcp import ACK, FIN, PSH, TcpOptions, TcpSegment


def general_on_segment(conn: Connection, seg: TcpSegment, now: float) -> None:
    """``Connection.on_segment`` with the general RFC steps only (no prediction)."""
    state = conn.state
    if state in (TcpState.SYN_SENT, TcpState.CLOSED, TcpState.TIME_WAIT):
        conn.on_segment(seg, now)  # prediction never applies outside ESTABLISHED
        return
    conn.last_rx_at = now
    _arrive.segment_arrives(conn, seg, now)
    _output.transmit(conn, now)


Params = tuple[bool, int | None, int, bool, bool]


def _compared_segments(
    data: st.DataObject | Tape | Replay, params: Params
) -> Iterator[tuple[Connection, TcpSegment, float]]:
    """A connection driven through random steps, then each segment to compare (with the
    connection and the clock); the caller applies it before asking for the next."""
    ts, wscale, mss, aoc, sack = params
    config = replace(
        CONFIG,
        mss=mss,
        timestamps=ts,
        sack=sack,
        window_scaling=wscale is not None,
        ack_on_commit=aoc,
        recv_buffer_size=data.draw(st.sampled_from([4000, 16384, 1 << 20])),
        send_buffer_size=40000,
    )
    options = syn_options(mss=mss, wscale=wscale, ts=(100, 0) if ts else None)
    conn = conn_established(config, options=options._replace(sack_permitted=sack))
    now = drive(data, conn, 1.0, data.draw(st.integers(0, 15), label="steps"))  # type: ignore[arg-type]
    for _ in range(data.draw(st.integers(1, 8), label="segments compared")):
        if data.draw(st.booleans(), label="app call between"):
            if conn.state.can_send() and not conn.tcb.app_closed:
                conn.app_send(bytes(data.draw(st.integers(0, 5000))), now)
            conn.app_receive(data.draw(st.integers(0, 5000)), now)
            conn.drain()
        yield conn, likely_segment(data, conn, now), now  # type: ignore[arg-type]
        now += 0.001


def _twin(tape: Tape, params: Params, index: int) -> Connection:
    """A second connection in the state the taped one had before its ``index``-th
    compared segment (the earlier ones applied by ``on_segment``, as there)."""
    for i, (twin, seg, now) in enumerate(_compared_segments(Replay(tape.values), params)):
        if i == index:
            return twin
        twin.on_segment(seg, now)
        twin.drain()
    raise AssertionError("the replay ended early")


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.data(),
    st.booleans(),
    st.sampled_from([None, 0, 3, 14]),
    st.sampled_from([536, 1460, 9000]),
    st.booleans(),
    st.booleans(),
)
def test_fast_path_equals_general_steps(
    data: st.DataObject, ts: bool, wscale: int | None, mss: int, aoc: bool, sack: bool
) -> None:
    params: Params = (ts, wscale, mss, aoc, sack)
    tape = Tape(data)
    for i, (conn, seg, now) in enumerate(_compared_segments(tape, params)):
        probe = _twin(tape, params, i)
        assert snapshot(probe) == snapshot(conn)  # the replay made a true twin
        before = snapshot(probe)
        predicted = _arrive.header_prediction(probe, seg, now)
        event("predicted" if predicted else f"general ({conn.state})")
        if not predicted:
            assert snapshot(probe) == before  # decided before changing anything
        twin = _twin(tape, params, i)
        conn.on_segment(seg, now)
        general_on_segment(twin, seg, now)
        assert plain_step(conn.drain()) == plain_step(twin.drain())
        assert snapshot(conn) == snapshot(twin)
        conn.check_invariants()


def _established_with_ts() -> Connection:
    config = replace(CONFIG, timestamps=True)
    return conn_established(config, options=syn_options(ts=(100, 0)))


def test_in_order_data_is_predicted() -> None:
    conn = conn_established()
    assert _arrive.header_prediction(conn, r(payload=b"x" * MSS, flags=ACK | PSH), 1.0)
    assert conn.tcb.rcv_nxt == sq(REMOTE_SEQ, MSS)
    assert conn.recv_available == MSS


def test_pure_ack_of_new_data_is_predicted() -> None:
    conn = conn_established()
    conn.app_send(b"hello", 1.0)
    conn.drain()
    assert _arrive.header_prediction(conn, r(ack=sq(LOCAL_SEQ, 5)), 1.1)
    assert conn.unacked == 0


def test_timestamps_in_order_are_predicted_and_recorded() -> None:
    conn = _established_with_ts()
    seg = r(payload=b"abc", options=TcpOptions(timestamps=(101, 0)))
    assert _arrive.header_prediction(conn, seg, 1.0)
    assert conn.tcb.ts_recent == 101


def test_unpredicted_segments_fall_back() -> None:
    conn = conn_established()
    assert not _arrive.header_prediction(conn, r(seq=sq(REMOTE_SEQ, 10), payload=b"x"), 1.0)
    assert not _arrive.header_prediction(conn, r(flags=ACK | FIN), 1.0)
    assert not _arrive.header_prediction(conn, r(ack=sq(LOCAL_SEQ, 1)), 1.0)  # too new
    conn.app_send(b"hello", 1.0)
    conn.drain()
    assert not _arrive.header_prediction(conn, r(), 1.0)  # a duplicate ACK
    ts_conn = _established_with_ts()
    assert not _arrive.header_prediction(ts_conn, r(payload=b"x"), 1.0)  # TS missing
    old = r(payload=b"x", options=TcpOptions(timestamps=(99, 0)))
    assert not _arrive.header_prediction(ts_conn, old, 1.0)  # PAWS
