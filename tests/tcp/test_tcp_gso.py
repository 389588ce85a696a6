"""Send-side segmentation offload (``TcpConfig.gso_max``, ``OutSegment.gso_size``).

A super-segment must carry exactly the bytes the machine would have sent as MSS-sized
segments (RFC 9293 §3.8.6.2.1 sender SWS avoidance, RFC 5681 cwnd and the peer's
window bound the total), with one ACK, window and TSval (RFC 7323 §3; Linux TSO does
the same); retransmissions stay one MSS; RTT timing (RFC 6298 §3, Karn) is unchanged.
"""

from __future__ import annotations

from dataclasses import replace

from hypothesis import given, settings
from hypothesis import strategies as st
from tcp_helpers import (
    CONFIG,
    LOCAL_SEQ,
    MSS,
    REMOTE_SEQ,
    conn_established,
    expect,
    r,
    s,
    send,
    sq,
    syn_options,
)

from stcp_framework.tcp.config import TcpConfig
from stcp_framework.tcp.machine import Connection
from stcp_framework.tcp.step import OutSegment
from stcp_framework.wire.seq import Seq, seq_add
from stcp_framework.wire.tcp import ACK, FIN, PSH, TcpOptions

GSO_MAX = 65000
GSO = replace(CONFIG, gso_max=GSO_MAX, send_buffer_size=1 << 20)
NO_GSO = replace(GSO, gso_max=0)
K = GSO_MAX // MSS  # whole segments per super-segment: 44


def conn_gso(config: TcpConfig = GSO, window: int = 64000) -> Connection:
    conn = conn_established(config)
    if window != 64000:
        send(conn, r(window=window), at=0.5)
        conn.drain()
    return conn


def test_initial_window_goes_out_as_one_super_segment() -> None:
    conn = conn_gso()
    data = bytes(range(256)) * 200  # 51200 bytes: more than the 10-segment cwnd
    conn.app_send(data, 1.0)
    (seg,) = expect(conn, [s(flags=ACK, payload=data[: 10 * MSS], gso_size=MSS)],
                    psh=True).segments  # fmt: skip
    assert seg.seq == LOCAL_SEQ
    assert conn.tcb.snd_nxt == sq(LOCAL_SEQ, 10 * MSS)


def test_without_gso_nothing_changes() -> None:
    conn = conn_gso(NO_GSO)
    data = bytes(20 * MSS)
    conn.app_send(data, 1.0)
    want = [s(seq=sq(LOCAL_SEQ, i * MSS), payload=data[:MSS]) for i in range(10)]
    step = expect(conn, want, psh=True)
    assert all(seg.gso_size == 0 for seg in step.segments)


def test_super_segment_is_capped_at_gso_max_in_whole_segments() -> None:
    big_cwnd = replace(GSO, initial_cwnd_segments=100, recv_buffer_size=1 << 20,
                       window_scaling=True)  # fmt: skip
    conn = conn_established(big_cwnd, options=syn_options(wscale=4))
    conn.on_segment(r(window=0xFFFF), 0.5)  # 1 MB window (scale 4)
    conn.drain()
    data = bytes(100 * MSS)
    conn.app_send(data, 1.0)
    step = conn.drain()
    assert [len(seg.payload) for seg in step.segments] == [K * MSS, K * MSS, 12 * MSS]
    assert [seg.gso_size for seg in step.segments] == [MSS, MSS, MSS]
    assert [seg.seq for seg in step.segments] == [
        LOCAL_SEQ,
        sq(LOCAL_SEQ, K * MSS),
        sq(LOCAL_SEQ, 2 * K * MSS),
    ]
    assert [seg.flags for seg in step.segments] == [ACK, ACK, ACK | PSH]


def test_peer_window_limits_the_total_and_sws_withholds_the_rest() -> None:
    conn = conn_gso(window=3000)
    conn.app_send(bytes(10000), 1.0)
    # 2 * 1460 in one super-segment; the last 80 bytes wait (RFC 9293 §3.8.6.2.1).
    expect(conn, [s(payload=bytes(2 * MSS), gso_size=MSS)])


def test_short_tail_rides_along_when_it_ends_the_data() -> None:
    conn = conn_gso()
    data = b"x" * (2 * MSS + 100)
    conn.app_send(data, 1.0)
    expect(conn, [s(flags=ACK | PSH, payload=data, gso_size=MSS)], psh=True)


def test_a_single_segment_has_no_gso_size() -> None:
    conn = conn_gso()
    conn.app_send(b"y" * MSS, 1.0)
    expect(conn, [s(flags=ACK | PSH, payload=b"y" * MSS)], psh=True)


def test_fin_goes_on_the_super_segment() -> None:
    conn = conn_gso()
    data = b"z" * (13 * MSS)
    conn.app_send(data, 1.0)
    conn.app_shutdown(1.0)
    (first,) = conn.drain().segments  # the 10-segment initial window, no FIN yet
    assert (len(first.payload), first.flags) == (10 * MSS, ACK)
    send(conn, r(ack=sq(LOCAL_SEQ, 10 * MSS)), at=1.1)
    expect(conn, [s(seq=sq(LOCAL_SEQ, 10 * MSS), flags=ACK | PSH | FIN, payload=data[:3 * MSS],
                    gso_size=MSS)], psh=True)  # fmt: skip
    assert conn.tcb.snd_nxt == sq(LOCAL_SEQ, 13 * MSS + 1)


def test_retransmission_after_timeout_is_one_mss() -> None:
    conn = conn_gso()
    data = bytes(range(256)) * 40
    conn.app_send(data, 1.0)
    (first,) = conn.drain().segments
    assert first.gso_size == MSS
    deadline = conn.next_deadline()
    assert deadline is not None
    expect(conn, [s(payload=data[:MSS])], at=deadline)  # RFC 6298 (5.4): cwnd = 1 MSS
    assert conn.rtt_offset is None  # Karn


def test_rtt_is_timed_on_the_first_mss_as_without_gso() -> None:
    conns = [conn_gso(GSO), conn_gso(NO_GSO)]
    for conn in conns:
        conn.app_send(bytes(5 * MSS), 1.0)
        conn.drain()
        assert conn.rtt_offset == MSS  # RFC 6298 §3: time the first new segment
        srtt_before = conn.rtt.srtt
        send(conn, r(ack=sq(LOCAL_SEQ, MSS)), at=1.1)
        assert conn.rtt.srtt != srtt_before  # sampled
    assert conns[0].rtt.srtt == conns[1].rtt.srtt
    assert conns[0].rtt.rto == conns[1].rtt.rto


def test_one_tsval_for_the_whole_super_segment() -> None:
    ts_config = replace(GSO, timestamps=True)
    conn = conn_established(ts_config, options=syn_options(ts=(100, 0)))
    conn.app_send(bytes(4 * MSS), 2.0)
    (seg,) = conn.drain().segments
    assert seg.gso_size == conn.tcb.mss == MSS - 12  # the effective MSS (RFC 7323 §3)
    assert len(seg.payload) == 4 * MSS
    assert seg.options.timestamps == (conn.tsval(2.0), 100)


# ---------------------------------------------------------------- equivalence


def split(seg: OutSegment) -> list[tuple[object, ...]]:
    """What the device makes of a segment: MSS pieces, PSH/FIN on the last only."""
    payload = bytes(seg.payload)
    if not seg.gso_size:
        return [(seg.seq, seg.ack, seg.flags, seg.window, seg.options, payload)]
    size = seg.gso_size
    starts = range(0, len(payload), size)
    last = starts[-1]
    return [
        (seq_add(Seq(seg.seq), i), seg.ack, seg.flags if i == last else seg.flags & ~(PSH | FIN),
         seg.window, seg.options, payload[i : i + size])
        for i in starts
    ]  # fmt: skip


@settings(max_examples=150, deadline=None)
@given(
    sends=st.lists(st.integers(1, 30000), min_size=1, max_size=6),
    windows=st.lists(st.integers(0, 64000), min_size=1, max_size=8),
    acks=st.lists(st.integers(0, 20000), min_size=1, max_size=8),
    timestamps=st.booleans(),
    shutdown=st.booleans(),
)
def test_super_segments_carry_exactly_what_single_segments_would(
    sends: list[int],
    windows: list[int],
    acks: list[int],
    timestamps: bool,
    shutdown: bool,
) -> None:
    options = syn_options(ts=(7, 0)) if timestamps else None
    conns = [
        conn_established(replace(cfg, timestamps=timestamps), options=options)
        for cfg in (GSO, NO_GSO)
    ]
    gso, plain = conns
    acked = 0
    now = 1.0
    for round_index in range(max(len(sends), len(windows), len(acks))):
        now += 0.01
        for conn in conns:
            if round_index < len(sends):
                conn.app_send(bytes([round_index]) * sends[round_index], now)
            if shutdown and round_index == len(sends) - 1:
                conn.app_shutdown(now)
        got = [piece for seg in gso.drain().segments for piece in split(seg)]
        want = [piece for seg in plain.drain().segments for piece in split(seg)]
        assert got == want
        assert gso.tcb.to_record() == plain.tcb.to_record()
        assert gso.rtt_offset == plain.rtt_offset
        in_flight = plain.snd_nxt_offset() - plain.tcb.snd_una_offset
        acked += min(acks[round_index % len(acks)], in_flight)
        ts = TcpOptions(timestamps=(9, gso.tsval(now))) if timestamps else None
        for conn in conns:
            seg = r(ack=sq(LOCAL_SEQ, acked), window=windows[round_index % len(windows)],
                    seq=REMOTE_SEQ)  # fmt: skip
            if ts is not None:
                seg = seg._replace(options=ts)
            conn.on_segment(seg, now + 0.005)
            conn.check_invariants()
        assert gso.rtt.srtt == plain.rtt.srtt
