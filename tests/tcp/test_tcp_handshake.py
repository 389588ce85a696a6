"""Opening: RFC 9293 §3.5 three-way handshake, simultaneous open, SYN retransmission."""
# mypy: disable-error-code="comparison-overlap,unreachable"
# (a test steps the machine and asserts its state between calls; mypy keeps the state
# narrowed across the calls)

from __future__ import annotations

from dataclasses import replace

from tcp_helpers import (
    BUF,
    CONFIG,
    LOCAL_ISS,
    LOCAL_SEQ,
    MSS,
    REMOTE_ISS,
    REMOTE_SEQ,
    conn_established,
    conn_syn_received,
    conn_syn_sent,
    expect,
    expect_nothing,
    r,
    s,
    send,
    sq,
    syn_options,
    tcb_fields,
)

from stcp_framework.tcp.events import Closed, Connected, Reset, TimedOut
from stcp_framework.tcp.machine import Connection
from stcp_framework.tcp.state import TcpState
from stcp_framework.wire.tcp import ACK, RST, SYN, TcpOptions

SYNACK_OPTS = TcpOptions(mss=MSS)


def test_active_open_sends_syn_with_options() -> None:
    conn = Connection.open_active(now=0.0, config=CONFIG, iss=LOCAL_ISS, tsval_offset=0)
    step = expect(conn, [s(seq=LOCAL_ISS, ack=0, flags=SYN, options=SYNACK_OPTS)])
    assert step.segments[0].needs_version == 0
    assert step.delta is not None and step.delta.version == 1
    fields = tcb_fields(step)
    assert fields["state"] == "SYN-SENT"
    assert fields["iss"] == LOCAL_ISS
    assert conn.next_deadline() == 1.0  # RFC 6298 (2.1) initial RTO


def test_active_open_completes_on_syn_ack() -> None:
    conn = conn_syn_sent()
    send(conn, r(seq=REMOTE_ISS, ack=LOCAL_SEQ, flags=SYN | ACK, options=syn_options()), at=0.1)
    step = expect(conn, [s()])
    assert conn.state is TcpState.ESTABLISHED
    assert step.events == (Connected(),)
    assert step.delta is not None
    # The ACK of the peer's SYN waits for the TCB record (rcv_nxt) to be durable.
    assert step.segments[0].needs_version == step.delta.version
    fields = tcb_fields(step)
    assert fields["state"] == "ESTABLISHED"
    assert fields["rcv_nxt"] == REMOTE_SEQ
    assert fields["snd_una"] == LOCAL_SEQ
    assert conn.next_deadline() is None
    assert conn.rtt.srtt is not None and abs(conn.rtt.srtt - 0.1) < 1e-9


def test_syn_ack_without_mss_uses_536() -> None:
    conn = conn_syn_sent()
    send(conn, r(seq=REMOTE_ISS, flags=SYN | ACK, options=syn_options(mss=None)), at=0.1)
    assert conn.tcb.mss == 536  # RFC 9293 §3.7.1 default


def test_mss_clamped_to_ours() -> None:
    conn = conn_syn_sent()
    send(conn, r(seq=REMOTE_ISS, flags=SYN | ACK, options=syn_options(mss=9000)), at=0.1)
    assert conn.tcb.mss == MSS


def test_syn_retransmission_backoff_then_timeout() -> None:
    config = replace(CONFIG, syn_retries=2)
    conn = conn_syn_sent(config)
    syn = s(seq=LOCAL_ISS, ack=0, flags=SYN, options=SYNACK_OPTS)
    expect_nothing(conn, at=0.99)
    expect(conn, [syn], at=1.0)
    assert conn.next_deadline() == 3.0  # doubled
    expect(conn, [syn], at=3.0)
    assert conn.next_deadline() == 7.0
    step = expect(conn, [], at=7.0)  # no RST in SYN-SENT
    assert conn.state is TcpState.CLOSED
    assert step.events == (TimedOut(), Closed())
    assert conn.next_deadline() is None


def test_syn_sent_rst_with_acceptable_ack_is_refused() -> None:
    conn = conn_syn_sent()
    send(conn, r(seq=0, ack=LOCAL_SEQ, flags=RST | ACK), at=0.1)
    step = expect_nothing(conn)
    assert step.events == (Reset(refused=True), Closed())
    assert conn.state is TcpState.CLOSED


def test_syn_sent_rst_with_bad_ack_is_ignored() -> None:
    conn = conn_syn_sent()
    send(conn, r(seq=0, ack=sq(LOCAL_SEQ, 5), flags=RST | ACK), at=0.1)
    expect_nothing(conn)
    send(conn, r(seq=0, ack=0, flags=RST), at=0.1)  # RFC 5961 §3: RST without ACK
    expect_nothing(conn)
    assert conn.state is TcpState.SYN_SENT


def test_syn_sent_unacceptable_ack_gets_rst() -> None:
    conn = conn_syn_sent()
    send(conn, r(seq=REMOTE_ISS, ack=sq(LOCAL_ISS, 100), flags=SYN | ACK), at=0.1)
    expect(conn, [s(seq=sq(LOCAL_ISS, 100), ack=0, flags=RST, window=0)])
    assert conn.state is TcpState.SYN_SENT


def test_passive_open_syn_ack_needs_tcb() -> None:
    syn = r(seq=REMOTE_ISS, ack=0, flags=SYN, options=syn_options())
    conn = Connection.open_passive(syn, now=0.0, config=CONFIG, iss=LOCAL_ISS, tsval_offset=0)
    step = expect(conn, [s(seq=LOCAL_ISS, flags=SYN | ACK, options=SYNACK_OPTS)])
    assert step.delta is not None and step.delta.version == 1
    assert step.segments[0].needs_version == 1
    assert tcb_fields(step)["state"] == "SYN-RECEIVED"
    assert conn.next_deadline() == 1.0


def test_passive_open_completes_on_ack() -> None:
    conn = conn_syn_received()
    send(conn, r(), at=0.2)
    step = expect_nothing(conn)
    assert conn.state is TcpState.ESTABLISHED
    assert step.events == (Connected(),)
    assert tcb_fields(step)["snd_wnd"] == 64000
    assert conn.next_deadline() is None


def test_syn_received_retransmits_syn_ack_on_timeout_and_on_dup_syn() -> None:
    conn = conn_syn_received()
    synack = s(seq=LOCAL_ISS, flags=SYN | ACK, options=SYNACK_OPTS, needs_version=1)
    expect(conn, [synack], at=1.0)
    send(conn, r(seq=REMOTE_ISS, ack=0, flags=SYN, options=syn_options()), at=1.5)
    expect(conn, [synack])


def test_syn_received_bad_ack_gets_rst() -> None:
    conn = conn_syn_received()
    send(conn, r(ack=sq(LOCAL_SEQ, 10)), at=0.1)
    expect(conn, [s(seq=sq(LOCAL_SEQ, 10), ack=0, flags=RST, window=0)])
    assert conn.state is TcpState.SYN_RECEIVED


def test_syn_received_rst_closes() -> None:
    conn = conn_syn_received()
    send(conn, r(flags=RST), at=0.1)
    step = expect_nothing(conn)
    assert step.events == (Reset(refused=True), Closed())


def test_simultaneous_open() -> None:
    conn = conn_syn_sent()
    # The peer's SYN crosses ours: SYN-RECEIVED, SYN-ACK with our ISS.
    send(conn, r(seq=REMOTE_ISS, ack=0, flags=SYN, options=syn_options()), at=0.1)
    step = expect(conn, [s(seq=LOCAL_ISS, flags=SYN | ACK, options=SYNACK_OPTS)])
    assert conn.state is TcpState.SYN_RECEIVED
    assert step.segments[0].needs_version == step.delta.version  # type: ignore[union-attr]
    # The peer's SYN-ACK (acking our SYN) completes the handshake (RFC 9293 figure 8).
    send(conn, r(seq=REMOTE_ISS, ack=LOCAL_SEQ, flags=SYN | ACK, options=syn_options()), at=0.2)
    step = expect_nothing(conn)
    assert conn.state is TcpState.ESTABLISHED
    assert Connected() in step.events


def test_passive_open_window_scaling_and_timestamps() -> None:
    config = replace(CONFIG, window_scaling=True, timestamps=True, recv_buffer_size=1 << 20)
    syn = r(seq=REMOTE_ISS, ack=0, flags=SYN, options=syn_options(wscale=3, ts=(5000, 0)))
    conn = Connection.open_passive(syn, now=1.0, config=config, iss=LOCAL_ISS, tsval_offset=7)
    step = conn.drain()
    (synack,) = step.segments
    assert synack.options == TcpOptions(mss=MSS, wscale=5, timestamps=(1007, 5000))
    assert synack.window == 0xFFFF  # never scaled in a SYN
    assert conn.tcb.mss == MSS - 12  # timestamps take 12 option bytes per segment
    send(conn, r(window=1000, options=TcpOptions(timestamps=(5001, 1007))), at=1.25)
    assert conn.state is TcpState.ESTABLISHED
    assert conn.tcb.snd_wnd == 8000  # 1000 << 3
    assert conn.rtt.srtt is not None and abs(conn.rtt.srtt - 0.25) < 1e-9  # RTTM (tsecr)
    conn.drain()
    conn.app_send(b"x", 1.5)
    (seg,) = conn.drain().segments
    assert seg.options.timestamps == (1507, 5001)
    assert seg.window == (1 << 20) >> 5
    assert conn.tcb.rcv_wnd == 1 << 20


def test_peer_without_wscale_disables_scaling() -> None:
    config = replace(CONFIG, window_scaling=True, recv_buffer_size=1 << 20)
    conn = conn_established(config)
    assert (conn.tcb.snd_wscale, conn.tcb.rcv_wscale) == (0, 0)
    conn.app_send(b"x", 0.1)
    (seg,) = conn.drain().segments
    assert seg.window == 0xFFFF


def test_active_open_wscale_negotiated() -> None:
    config = replace(CONFIG, window_scaling=True, recv_buffer_size=4 * 1024 * 1024)
    conn = conn_syn_sent(config)
    assert conn.tcb.rcv_wscale == 7  # 0xFFFF << 7 >= 4 MiB
    send(conn, r(seq=REMOTE_ISS, flags=SYN | ACK, options=syn_options(wscale=14)), at=0.1)
    (ack,) = conn.drain().segments
    assert ack.window == (4 * 1024 * 1024) >> 7
    assert conn.tcb.snd_wscale == 14
    assert conn.tcb.rcv_nxt == REMOTE_SEQ
    assert CONFIG.recv_buffer_size == BUF


def test_simultaneous_open_never_scales_the_syn_ack_window() -> None:
    """RFC 7323 §2.2: the window of a segment with SYN is not scaled -- also the peer's
    SYN,ACK that completes a simultaneous open, whose SYN flag the machine sets aside.
    (Scaled, a window of 1000 offered 128,000 bytes, and we sent 14,600 at once.)"""
    config = replace(CONFIG, window_scaling=True, recv_buffer_size=1 << 20)
    conn = conn_syn_sent(config)
    syn_opts = TcpOptions(mss=MSS, wscale=7)
    send(conn, r(seq=REMOTE_ISS, ack=0, flags=SYN, window=1000, options=syn_opts), at=0.1)
    conn.drain()
    send(
        conn,
        r(seq=REMOTE_ISS, ack=LOCAL_SEQ, flags=SYN | ACK, window=1000, options=syn_opts),
        at=0.2,
    )
    assert conn.state is TcpState.ESTABLISHED
    assert conn.tcb.snd_wnd <= 1000
    conn.drain()
    conn.app_send(b"x" * 20000, 0.3)
    assert sum(len(seg.payload) for seg in conn.drain().segments) <= 1000
