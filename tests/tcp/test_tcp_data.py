"""Data both ways: delayed ACKs, reassembly, windows, deltas and needs_version."""

from __future__ import annotations

from dataclasses import replace

from tcp_helpers import (
    BUF,
    CONFIG,
    LOCAL_SEQ,
    MSS,
    REMOTE_SEQ,
    conn_established,
    expect,
    expect_nothing,
    r,
    s,
    send,
    sq,
    tcb_fields,
)

from stcp_framework.tcp.delta import RxAppend, RxTrim, TcbSet, TxAppend, TxTrim
from stcp_framework.tcp.events import DataReadable, SendSpace
from stcp_framework.tcp.machine import Connection
from stcp_framework.wire.tcp import ACK, PSH


def test_in_order_segment_is_acked_after_delay() -> None:
    conn = conn_established()
    send(conn, r(payload=b"abcdef"), at=1.0)
    step = expect_nothing(conn)
    assert step.events == (DataReadable(),)
    assert step.delta is not None
    assert step.delta.ops[0] == RxAppend(0, b"abcdef")
    assert tcb_fields(step)["rcv_nxt"] == sq(REMOTE_SEQ, 6)
    version = step.delta.version
    assert conn.next_deadline() == 1.04  # delayed_ack_timeout
    step = expect(conn, [s(ack=sq(REMOTE_SEQ, 6), window=BUF - 6)], at=1.04)
    # The right edge does not move left (RFC 7323 §2.4): window stays at rcv_wup + wnd.
    assert step.segments[0].needs_version == version
    assert conn.app_receive(100, 1.1) == b"abcdef"
    assert conn.at_eof is False


def test_ack_every_second_full_segment() -> None:
    conn = conn_established()
    send(conn, r(payload=b"a" * MSS), at=1.0)
    expect_nothing(conn)
    send(conn, r(seq=sq(REMOTE_SEQ, MSS), payload=b"b" * MSS), at=1.001)
    step = expect(conn, [s(ack=sq(REMOTE_SEQ, 2 * MSS), window=BUF - 2 * MSS)])
    assert step.delta is not None
    assert step.delta.ops[0] == RxAppend(MSS, b"b" * MSS)
    assert step.segments[0].needs_version == step.delta.version
    assert conn.next_deadline() is None


def test_receive_window_shrinks_with_unread_data_and_opens_on_read() -> None:
    conn = conn_established()
    data = bytes(range(256)) * 44  # 11264 bytes: 7 full segments and 1044 bytes
    for i in range(0, len(data), MSS):
        send(conn, r(seq=sq(REMOTE_SEQ, i), payload=data[i : i + MSS]), at=1.0)
    # One stretch ACK for the batch; the right edge stays put as free space shrinks.
    expect(conn, [s(ack=sq(REMOTE_SEQ, 11264), window=BUF - 11264)])
    expect_nothing(conn, at=1.04)  # nothing left for the delayed-ACK timer
    # A small read does not double the window: no update (Linux tcp_cleanup_rbuf).
    assert conn.app_receive(1000, 1.1) == data[:1000]
    expect_nothing(conn)
    # Reading the rest lets the window double: window update at once.
    assert conn.app_receive(20000, 1.1) == data[1000:]
    step = expect(conn, [s(ack=sq(REMOTE_SEQ, 11264), window=BUF)])
    assert step.delta is not None
    assert RxTrim(11264) in step.delta.ops
    assert tcb_fields(step)["read_offset"] == 11264


def test_every_second_full_segment_is_acked_without_stretch_acks() -> None:
    # RFC 5681 §4.2 / RFC 9293 §3.8.6.3: an ACK at least every second full-sized
    # segment; the rest waits for the delayed-ACK timer.
    conn = conn_established(replace(CONFIG, ack_stretch_max=0))
    data = bytes(range(256)) * 44  # 11264 bytes: 7 full segments and 1044 bytes
    for i in range(0, len(data), MSS):
        send(conn, r(seq=sq(REMOTE_SEQ, i), payload=data[i : i + MSS]), at=1.0)
    expect(conn, [s(ack=sq(REMOTE_SEQ, k * MSS), window=BUF - k * MSS) for k in (2, 4, 6)])
    expect(conn, [s(ack=sq(REMOTE_SEQ, 11264), window=BUF - 11264)], at=1.04)


def test_stretch_ack_covers_at_most_ack_stretch_max_bytes() -> None:
    # Past ack_stretch_max unacknowledged bytes the ACK leaves at once (with the
    # segment that set it due), then stretching starts over.
    conn = conn_established(replace(CONFIG, ack_stretch_max=3 * MSS))
    for k in range(7):
        send(conn, r(seq=sq(REMOTE_SEQ, k * MSS), payload=b"x" * MSS), at=1.0)
    expect(conn, [s(ack=sq(REMOTE_SEQ, k * MSS), window=BUF - k * MSS) for k in (3, 6)])
    expect(conn, [s(ack=sq(REMOTE_SEQ, 7 * MSS), window=BUF - 7 * MSS)], at=1.04)  # delayed


def test_out_of_order_data_is_not_stretched() -> None:
    # Out of order: a duplicate ACK per segment, at once (RFC 5681 §4.2), so the
    # peer's fast retransmit counts them.
    conn = conn_established()
    for k in (1, 2, 3):
        send(conn, r(seq=sq(REMOTE_SEQ, k * MSS), payload=b"x" * MSS), at=1.0)
    expect(conn, [s(), s(), s()])


def test_out_of_order_segments_are_reassembled() -> None:
    conn = conn_established()
    send(conn, r(seq=sq(REMOTE_SEQ, 6), payload=b"ghijkl"), at=1.0)
    step = expect(conn, [s()])  # immediate duplicate ACK (RFC 5681 §4.2)
    assert step.delta is None or not any(isinstance(op, RxAppend) for op in step.delta.ops)
    # Nothing new is acknowledged: it needs only the handshake's version (rcv_nxt).
    assert step.segments[0].needs_version == 1
    send(conn, r(seq=sq(REMOTE_SEQ, 12), payload=b"mnop"), at=1.0)
    expect(conn, [s()])
    send(conn, r(seq=REMOTE_SEQ, payload=b"abcdef"), at=1.01)
    step = expect(conn, [s(ack=sq(REMOTE_SEQ, 16), window=BUF - 16)])  # gap filled: ACK at once
    assert step.delta is not None
    assert step.delta.ops[0] == RxAppend(0, b"abcdefghijklmnop")  # coalesced
    assert conn.app_receive(100, 1.1) == b"abcdefghijklmnop"


def test_overlapping_retransmission_is_trimmed() -> None:
    conn = conn_established()
    send(conn, r(payload=b"abcdef"), at=1.0)
    conn.drain()
    send(conn, r(payload=b"abcdefghij"), at=1.01)  # starts before rcv_nxt
    step = conn.drain()
    assert step.delta is not None
    assert step.delta.ops[0] == RxAppend(6, b"ghij")
    assert conn.app_receive(100, 1.1) == b"abcdefghij"


def test_old_duplicate_is_acked_and_dropped() -> None:
    conn = conn_established()
    send(conn, r(payload=b"abc"), at=1.0)
    conn.drain()
    send(conn, r(payload=b"abc"), at=1.01)
    step = expect(conn, [s(ack=sq(REMOTE_SEQ, 3), window=BUF - 3)])
    assert step.delta is None or all(not isinstance(op, RxAppend) for op in step.delta.ops)


def test_segment_beyond_window_is_trimmed() -> None:
    conn = conn_established(replace(CONFIG, recv_buffer_size=4000))
    send(conn, r(payload=b"x" * 5000), at=1.0)
    step = conn.drain()
    assert step.delta is not None
    assert step.delta.ops[0] == RxAppend(0, b"x" * 4000)
    assert conn.recv_available == 4000


def test_zero_window_still_processes_ack() -> None:
    conn = conn_established(replace(CONFIG, recv_buffer_size=1000))
    send(conn, r(payload=b"x" * 1000), at=1.0)
    expect(conn, [s(ack=sq(REMOTE_SEQ, 1000), window=0)], at=1.04)
    conn.app_send(b"hello", 1.1)
    conn.drain()
    # Data at rcv_nxt into a zero window: text dropped, ACK processed, ACK sent.
    send(conn, r(seq=sq(REMOTE_SEQ, 1000), ack=sq(LOCAL_SEQ, 5), payload=b"y"), at=1.2)
    expect(conn, [s(seq=sq(LOCAL_SEQ, 5), ack=sq(REMOTE_SEQ, 1000), window=0)])
    assert conn.unacked == 0


def test_send_data_and_ack_trims_buffer() -> None:
    conn = conn_established()
    assert conn.app_send(b"hello", 1.0) == 5
    step = expect(conn, [s(flags=ACK | PSH, payload=b"hello")], psh=True)
    assert step.delta is not None
    assert step.delta.ops == (TxAppend(0, b"hello"), TcbSet({"snd_nxt": sq(LOCAL_SEQ, 5)}))
    assert step.segments[0].needs_version == step.delta.version
    # The handshake's RTT sample (0 s) gave RTO = min_rto (RFC 6298 (2.4), Linux 200 ms).
    assert conn.next_deadline() == 1.0 + CONFIG.min_rto
    assert conn.unacked == 5
    send(conn, r(ack=sq(LOCAL_SEQ, 5)), at=1.1)
    step = expect_nothing(conn)
    assert step.delta is not None
    assert TxTrim(5) in step.delta.ops
    assert step.events == (SendSpace(),)
    assert conn.unacked == 0
    assert conn.next_deadline() is None
    assert conn.rtt.srtt is not None and abs(conn.rtt.srtt - 0.1 / 8) < 1e-9  # RFC 6298 (2.3)


def test_send_is_segmented_by_mss_and_limited_by_cwnd() -> None:
    conn = conn_established()
    data = bytes(20 * MSS)
    conn.app_send(data, 1.0)
    step = conn.drain()
    assert len(step.segments) == 10  # RFC 6928 initial window
    assert [x.seq for x in step.segments] == [sq(LOCAL_SEQ, i * MSS) for i in range(10)]
    assert all(len(x.payload) == MSS for x in step.segments)
    assert all(isinstance(x.payload, memoryview) for x in step.segments)  # zero copy
    # One ACK for two segments: slow start grows cwnd by 2 MSS -> 4 more segments.
    send(conn, r(ack=sq(LOCAL_SEQ, 2 * MSS)), at=1.1)
    assert len(conn.drain().segments) == 4


def test_send_limited_by_peer_window() -> None:
    conn = conn_established()
    send(conn, r(window=3000), at=0.5)
    conn.drain()
    conn.app_send(bytes(10000), 1.0)
    step = conn.drain()
    # 1460 + 1460, and the last 80 bytes are withheld (sender SWS avoidance).
    assert [len(x.payload) for x in step.segments] == [MSS, MSS]


def test_send_buffer_cap() -> None:
    conn = conn_established()
    assert conn.send_space == 65536
    assert conn.app_send(bytes(70000), 1.0) == 65536
    assert conn.send_space == 0
    assert conn.app_send(b"x", 1.0) == 0


def test_data_version_gating_across_drains() -> None:
    conn = conn_established()
    send(conn, r(payload=b"a" * 10), at=1.0)
    v1 = conn.drain().delta.version  # type: ignore[union-attr]
    # A later pure ACK still carries the version that made rcv_nxt durable.
    step = expect(conn, [s(ack=sq(REMOTE_SEQ, 10), window=BUF - 10)], at=1.04)
    assert step.segments[0].needs_version == v1


def test_bulk_64k_segments_zero_copy() -> None:
    big = replace(
        CONFIG, mss=65000, recv_buffer_size=1 << 22, send_buffer_size=1 << 22, window_scaling=True
    )
    from tcp_helpers import syn_options

    conn = conn_established(big, options=syn_options(mss=65000, wscale=7))
    payload = bytes(range(256)) * 254  # 65024 bytes
    conn.app_send(payload, 1.0)
    (seg,) = conn.drain().segments[:1]
    assert len(seg.payload) == 65000
    assert isinstance(seg.payload, memoryview)
    assert seg.payload.obj is payload  # a view of the very bytes the app gave
    incoming = memoryview(bytearray(b"z" * 65000))
    send(conn, r(payload=incoming), at=1.1)
    step = conn.drain()
    assert step.delta is not None
    rx = [op for op in step.delta.ops if isinstance(op, RxAppend)]
    assert rx[0].data == bytes(incoming)
    out = conn.app_receive(1 << 20, 1.2)
    assert out is rx[0].data  # the delta's bytes and the app's bytes are one copy


def _rx_appends(conn: Connection) -> list[RxAppend]:
    step = conn.drain()
    assert step.delta is not None
    return [op for op in step.delta.ops if isinstance(op, RxAppend)]


def test_a_large_view_of_immutable_bytes_is_kept_uncopied() -> None:
    # What TunDevice reads into (a fresh bytes object per packet): nobody can change it.
    conn = conn_established(replace(CONFIG, recv_buffer_size=1 << 16))
    packet = bytes(range(256)) * 200
    payload = memoryview(packet)[1000:41000]
    send(conn, r(payload=payload), at=1.0)
    (op,) = _rx_appends(conn)
    assert isinstance(op.data, memoryview) and op.data.obj is packet  # no copy
    assert conn.app_receive(1 << 16, 1.0) == packet[1000:41000]


def test_a_view_of_a_reusable_buffer_or_a_small_view_is_copied() -> None:
    conn = conn_established(replace(CONFIG, recv_buffer_size=1 << 16))
    pool = bytearray(range(256)) * 200  # a device's reused receive buffer
    send(conn, r(payload=memoryview(pool)[1000:41000]), at=1.0)
    small = bytes(range(100))
    send(conn, r(seq=sq(REMOTE_SEQ, 40000), payload=memoryview(small)[:50]), at=1.0)
    ops = _rx_appends(conn)
    assert all(type(op.data) is bytes for op in ops)
    expected = bytes(pool[1000:41000]) + small[:50]
    pool[1000:41000] = bytes(40000)  # the device reuses its buffer
    assert conn.app_receive(1 << 16, 1.0) == expected


def test_a_bare_fin_at_a_zero_window_still_delivers_its_ack() -> None:
    """RFC 9293 §3.10.7.4: with RCV.WND zero, "special allowance should be made to accept
    valid ACKs": a bare FIN at RCV.NXT acknowledging our data moves SND.UNA (the FIN
    itself comes again once the window opens), as a data segment there does."""
    conn = conn_established()
    send(conn, r(payload=b"a" * BUF), at=0.0)  # never read: the window is zero
    conn.drain()
    conn.app_send(b"z" * 100, 0.0)
    conn.drain()
    send(conn, r(seq=sq(REMOTE_SEQ, BUF), ack=sq(LOCAL_SEQ, 100), flags=ACK | 1), at=0.1)
    step = conn.drain()
    assert conn.tcb.snd_una_offset == 100
    assert conn.timers.retransmit_at is None
    assert [seg.window for seg in step.segments] == [0]  # the zero window, told again
