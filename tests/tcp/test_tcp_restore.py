"""Restore equivalence (STYLE.md §9.4): a connection rebuilt from what its deltas
persisted equals the live one, and its first drain is the kick."""
# mypy: disable-error-code="comparison-overlap,unreachable"
# (a test steps the machine and asserts its state between calls; mypy keeps the state
# narrowed across the calls)

from __future__ import annotations

import copy
from dataclasses import replace

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tcp_helpers import (
    BUF,
    CONFIG,
    LOCAL_SEQ,
    MSS,
    REMOTE_SEQ,
    conn_established,
    conn_syn_received,
    r,
    restore_record,
    sq,
    syn_options,
    tcb_fields,
)
from tcp_peer import drive, likely_segment
from test_tcp_properties import Mirror

from stcp_framework.tcp.config import TcpConfig
from stcp_framework.tcp.machine import Connection
from stcp_framework.tcp.state import TcpState
from stcp_framework.tcp.step import OutSegment
from stcp_framework.tcp.tcb import TCB_FIELDS, Tcb
from stcp_framework.wire.seq import Seq, seq_add, seq_diff, seq_le
from stcp_framework.wire.tcp import ACK, FIN, SYN


def mirrored_established(mirror: Mirror, *, at: float = 0.1) -> Connection:
    """A passive open (SYN in, then the handshake's ACK at ``at``) whose every delta
    ``mirror`` has applied, as a store would have."""
    syn = r(seq=sq(REMOTE_SEQ, -1), ack=0, flags=SYN, options=syn_options())
    conn = Connection.open_passive(
        syn, now=0.0, config=CONFIG, iss=sq(LOCAL_SEQ, -1), tsval_offset=0
    )
    mirror.apply(conn, conn.drain())
    conn.on_segment(r(), at)
    mirror.apply(conn, conn.drain())
    return conn


def test_restore_from_deltas_equals_live_and_kicks() -> None:
    mirror = Mirror()
    conn = mirrored_established(mirror)
    conn.on_segment(r(payload=b"request"), 0.2)
    mirror.apply(conn, conn.drain())
    assert conn.app_receive(3, 0.3) == b"req"
    conn.app_send(bytes(3 * MSS), 0.3)
    mirror.apply(conn, conn.drain())
    conn.on_segment(r(seq=sq(REMOTE_SEQ, 7), ack=sq(LOCAL_SEQ, MSS)), 0.4)
    mirror.apply(conn, conn.drain())

    tcb = Tcb.from_record(mirror.tcb)
    assert tcb == conn.tcb
    restored = Connection.restore(
        tcb,
        rx=bytes(mirror.rx),
        rx_offset=mirror.rx_base,
        tx=bytes(mirror.tx),
        tx_offset=mirror.tx_base,
        now=100.0,
        config=CONFIG,
    )
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


def restore_from(
    mirror: Mirror,
    now: float,
    config: TcpConfig,
    *,
    acked_may_be_lost: bool = False,
    window_tests: bool = True,
) -> Connection:
    """The connection ``Connection.restore`` rebuilds from what ``mirror`` stored."""
    tcb = Tcb.from_record(mirror.tcb)
    return Connection.restore(
        tcb,
        rx=bytes(mirror.rx),
        rx_offset=mirror.rx_base,
        tx=bytes(mirror.tx),
        tx_offset=mirror.tx_base,
        now=now,
        config=config,
        version=mirror.version,
        acked_may_be_lost=acked_may_be_lost,
        window_tests=window_tests,
    )


# Fields the kick itself may move: its ACK records the window it advertises
# (rcv_wnd, rcv_wup), and its segments may include new data or a FIN (snd_nxt, fin_sent).
KICK_FIELDS = ("rcv_wnd", "rcv_wup", "snd_nxt", "fin_sent")


def _unread(conn: Connection) -> bytes:
    """What ``app_receive`` would return, without reading it."""
    buf = conn.rcv_buf
    return b"".join(bytes(piece) for _, piece in buf.pieces_from(buf.read_offset))


def _check_kick(live: Connection, restored: Connection, mirror: Mirror, now: float) -> None:
    """The restored machine equals the live one, and its first drain is the kick."""
    tcb = live.tcb
    got = restored.tcb
    for name in TCB_FIELDS:
        if name not in KICK_FIELDS:
            assert getattr(got, name) == getattr(tcb, name), name
    assert seq_le(tcb.snd_nxt, got.snd_nxt)
    assert restored.recv_available == live.recv_available
    assert restored.at_eof == live.at_eof
    assert restored.unacked == live.unacked
    buf = live.snd_buf
    assert bytes(restored.snd_buf.view(buf.base_offset, len(buf))) == bytes(
        buf.view(buf.base_offset, len(buf))
    )
    step = restored.drain()
    after = copy.deepcopy(mirror)
    after.apply(restored, step)  # what the kick changed is in its delta
    assert _unread(restored) == _unread(live)
    segs = step.segments
    state = tcb.state
    if state in (TcpState.CLOSED, TcpState.TIME_WAIT):
        assert segs == ()
        return
    assert segs, f"no kick in {state}"
    first = segs[0]
    if tcb.snd_una_offset < 0 or state is TcpState.SYN_SENT:
        assert first.flags & SYN and first.seq == tcb.iss  # SYN / SYN-ACK again
        return
    assert all(seg.flags & ACK and seg.ack == tcb.rcv_nxt for seg in segs)
    flight = seq_diff(tcb.snd_nxt, tcb.snd_una)
    if flight and tcb.snd_wnd >= min(tcb.mss, live.unacked):
        # (A smaller peer window waits for the RTO: sender SWS avoidance, as live.)
        assert first.seq == tcb.snd_una  # retransmission from snd_una
        assert first.payload or first.flags & FIN
    # The current window: recorded as advertised, never beyond the free buffer (G6; it
    # may open wider than the live one would, as rcv_mss restarts small) and never a
    # shrunken right edge (G3, RFC 7323 §2.4).
    ws = tcb.rcv_wscale
    assert (got.rcv_wnd, got.rcv_wup) == (first.window << ws, tcb.rcv_nxt)
    free = restored.config.recv_buffer_size - live.recv_available
    assert first.window << ws <= max(free, 0) + (1 << ws) - 1 or first.window == 0
    right_edge = seq_add(tcb.rcv_nxt, first.window << ws)
    assert seq_le(seq_add(tcb.rcv_wup, tcb.rcv_wnd), right_edge) or first.window == 0xFFFF


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data(), st.booleans(), st.booleans())
def test_restore_after_random_steps_equals_live(data: st.DataObject, ts: bool, ws: bool) -> None:
    config = replace(CONFIG, timestamps=ts, window_scaling=ws, send_buffer_size=30000)
    opts = syn_options(wscale=2 if ws else None, ts=(100, 0) if ts else None)
    mirror = Mirror()
    syn = r(seq=sq(REMOTE_SEQ, -1), ack=0, flags=SYN, options=opts)
    conn = Connection.open_passive(
        syn, now=0.0, config=config, iss=sq(LOCAL_SEQ, -1), tsval_offset=12345
    )
    mirror.apply(conn, conn.drain())
    _check_kick(conn, restore_from(mirror, 50.0, config), mirror, 50.0)
    now = 0.0
    for _ in range(data.draw(st.integers(1, 25), label="steps")):
        now = drive(data, conn, now, 0)
        now += 0.01
        kind = data.draw(st.sampled_from(["peer"] * 4 + ["send", "recv", "timer", "close"]))
        if kind == "peer":
            conn.on_segment(likely_segment(data, conn, now), now)
        elif kind == "send":
            if conn.state.can_send() and not conn.tcb.app_closed:
                conn.app_send(bytes(range(256)) * data.draw(st.integers(1, 20)), now)
        elif kind == "recv":
            conn.app_receive(data.draw(st.integers(1, 3000)), now)
        elif kind == "timer":
            deadline = conn.next_deadline()
            if deadline is not None:
                now = max(now, deadline)
                conn.on_timer(now)
        else:
            conn.app_shutdown(now)
        mirror.apply(conn, conn.drain())
        later = now + data.draw(st.floats(0.0, 100.0), label="restart after")
        _check_kick(conn, restore_from(mirror, later, config), mirror, later)


def test_restore_in_syn_received_offers_window_scaling_as_agreed() -> None:
    """RFC 7323 §2.2: scaling is in effect only if both SYNs carry the option. With a
    buffer that needs no shift ours is 0 but still sent; the SYN-ACK sent again after a
    restore must carry it too, or the peer reads its own windows unscaled while we
    scale them by its shift (7 here: 128 times what it can take)."""
    config = replace(CONFIG, window_scaling=True)
    conn = conn_syn_received(config, syn_options(wscale=7))
    assert (conn.tcb.rcv_wscale, conn.tcb.snd_wscale) == (0, 7)  # BUF < 64 KB
    assert BUF < 0xFFFF
    restored = Connection.restore(
        Tcb.from_record(conn.tcb.to_record()),
        rx=b"",
        rx_offset=0,
        tx=b"",
        tx_offset=0,
        now=5.0,
        config=config,
        version=conn.version,
    )
    (syn_ack,) = restored.drain().segments
    assert syn_ack.flags == SYN | ACK
    assert syn_ack.options.wscale == 0


def test_restore_in_syn_received_without_scaling_sends_no_window_scale() -> None:
    conn = conn_syn_received(replace(CONFIG, window_scaling=True), syn_options(wscale=None))
    restored = Connection.restore(
        Tcb.from_record(conn.tcb.to_record()),
        rx=b"",
        rx_offset=0,
        tx=b"",
        tx_offset=0,
        now=5.0,
        config=replace(CONFIG, window_scaling=True),
        version=conn.version,
    )
    (syn_ack,) = restored.drain().segments
    assert syn_ack.options.wscale is None  # the peer's SYN had none (RFC 7323 §1.3)


def test_restore_counts_every_stored_byte_as_possibly_sent() -> None:
    """Bytes leave once they are durable (G2), but the delta with the SND.NXT they moved
    may not be (a store outage withholds it, a retransmission timer sends them anyway).
    The restored connection must take the peer's ACK of them, not drop it as an ACK of
    unsent data (RFC 9293 §3.10.7.4) -- which, with the peer answering every ACK we
    sent about it, was an ACK war until the peer gave up."""
    conn = conn_established()
    stale = conn.tcb.to_record()  # SND.NXT = LOCAL_SEQ: the last delta the store took
    conn.app_send(b"x" * 3000, 1.0)
    assert len(conn.drain().segments) == 3  # left, while their SND.NXT was not stored
    stale["snd_wnd"] = MSS  # and the peer's window then let one segment out at a time
    restored = restore_record(stale, conn, tx=b"x" * 3000)
    kick = restored.drain()
    assert [len(seg.payload) for seg in kick.segments][:1] == [MSS]  # again from SND.UNA
    restored.on_segment(r(ack=sq(LOCAL_SEQ, 3000)), 5.1)  # the peer had them all
    assert restored.unacked == 0
    assert "ack_too_new" not in restored.counters


def test_restore_takes_an_ack_of_stored_bytes_and_the_fin_after_them() -> None:
    """The incarnation before also sent its FIN, and neither reached the store: the
    peer's ACK of the FIN counts for the bytes; the app closes again, and the FIN that
    goes again is acknowledged again."""
    conn = conn_established()
    stale = conn.tcb.to_record()
    stale["snd_wnd"] = MSS
    restored = restore_record(stale, conn, tx=b"x" * 3000)
    restored.drain()
    restored.on_segment(r(ack=sq(LOCAL_SEQ, 3001)), 5.1)
    assert restored.unacked == 0 and restored.state is TcpState.ESTABLISHED
    restored.app_shutdown(5.2)
    (fin,) = restored.drain().segments
    assert fin.flags & FIN and fin.seq == sq(LOCAL_SEQ, 3000)
    restored.on_segment(r(ack=sq(LOCAL_SEQ, 3001)), 5.3)
    assert restored.state is TcpState.FIN_WAIT_2


def test_restore_with_its_fin_queued_takes_the_peer_s_ack_of_that_fin() -> None:
    """The store holds FIN-WAIT-1 (a FIN needs its state change durable) with every
    byte counted as sent, but not the SND.NXT that sending the FIN moved. The
    incarnation before sent it, and the peer acknowledged it: its ACK, one past the
    restored SND.NXT, is the ACK of our FIN -- taken, not dropped as an ACK of unsent
    data. (Dropped, every segment of the peer was: the restored side never took its
    data or its FIN, and the peer's LAST-ACK timed out. Crash fuzz seed 1501240.)"""
    conn = conn_established()
    conn.app_send(b"x" * 3000, 1.0)
    conn.app_shutdown(1.0)
    step = conn.drain()
    assert step.segments[-1].flags & FIN  # the bytes and the FIN left
    stale = conn.tcb.to_record()  # FIN-WAIT-1, stored with the state change...
    stale["snd_nxt"] = sq(LOCAL_SEQ, 3000)  # ...but not the SND.NXT the FIN moved
    stale["fin_sent"] = False
    stale["snd_wnd"] = MSS  # (the restore's kick resends one segment, not the FIN)
    restored = restore_record(stale, conn, tx=b"x" * 3000)
    assert not any(seg.flags & FIN for seg in restored.drain().segments)
    # The peer's ACK of the FIN, with data of its own (it answered and closed too).
    restored.on_segment(r(ack=sq(LOCAL_SEQ, 3001), payload=b"bye", flags=ACK | FIN), 5.1)
    assert "ack_too_new" not in restored.counters
    assert restored.state is TcpState.TIME_WAIT  # FIN acknowledged, the peer's FIN taken
    assert restored.app_receive(10, 5.2) == b"bye"
    (ack,) = restored.drain().segments
    assert ack.seq == sq(LOCAL_SEQ, 3001) and ack.ack == sq(REMOTE_SEQ, 4)


def test_restore_with_data_waiting_on_a_closed_window_probes_at_once() -> None:
    """The peer's window update may have been lost while we were down: the kick adds a
    probe, the byte at SND.UNA, that the peer answers with its window whether it takes
    it, holds it already or has no room (RFC 9293 §3.8.6.1). A zero-length probe
    <SEQ=SND.UNA-1> would do as an unacceptable segment, but Linux answers those at
    most once per 500 ms (``tcp_oow_rate_limited``; segments with data are exempt)."""
    conn = conn_established()
    conn.on_segment(r(window=0), 0.5)  # the peer's window closes
    conn.app_send(b"x" * 5000, 1.0)
    step = conn.drain()
    assert not any(seg.payload for seg in step.segments)
    record = conn.tcb.to_record()
    restored = Connection.restore(
        Tcb.from_record(record),
        rx=b"",
        rx_offset=0,
        tx=b"x" * 5000,
        tx_offset=0,
        now=5.0,
        config=CONFIG,
        version=conn.version,
    )
    kick = restored.drain()
    assert [(seg.seq, seg.flags, bytes(seg.payload)) for seg in kick.segments] == [
        (LOCAL_SEQ, ACK, b""),
        (LOCAL_SEQ, ACK, b"x"),
    ]
    assert restored.counters["restore_window_probe"] == 1
    # The peer's window was open after all: it takes the byte and says so.
    restored.on_segment(r(ack=sq(LOCAL_SEQ, 1), window=64000), 5.01)
    step = restored.drain()
    assert restored.tcb.snd_una == sq(LOCAL_SEQ, 1)
    assert step.segments and step.segments[0].seq == sq(LOCAL_SEQ, 1)  # sending resumes


def test_the_record_has_every_field_in_order_and_reads_back() -> None:
    """``Tcb.to_record`` spells its fields out (for speed): it must name every field of
    ``TCB_FIELDS``, in order, with the live value, and ``from_record`` must invert it."""
    conn = conn_established()
    tcb = conn.tcb
    record = tcb.to_record()
    assert list(record) == [*TCB_FIELDS, "schema"]
    for name in TCB_FIELDS:
        want = tcb.state.value if name == "state" else getattr(tcb, name)
        assert record[name] == want, name
    assert Tcb.from_record(record) == tcb


def _edge(seg: OutSegment, ws: int) -> Seq:
    return seq_add(Seq(seg.ack), seg.window << ws)


SCALED = replace(CONFIG, window_scaling=True, recv_buffer_size=4 * 1024 * 1024)  # shift 7


def test_a_segment_that_moves_the_right_edge_needs_the_edge_recorded() -> None:
    """RFC 7323 §2.4 across a restart (crash fuzz seeds 1185928, 1186023): a restore
    starts from the stored edge, and rounds its first window down to the scale unit
    if the edge the peer saw is not there. So a segment that moves the edge -- even a
    pure ACK that needs nothing else -- waits for the version that records it."""
    conn = conn_established(SCALED, syn_options(wscale=7))
    assert conn.tcb.rcv_wnd == 0xFFFF  # the SYN-ACK's (unscaled), stored with the handshake
    durable = conn.version
    conn.on_segment(r(seq=sq(REMOTE_SEQ, -1000), payload=bytes(10)), 1.0)  # an old duplicate
    step = conn.drain()
    (ack,) = step.segments
    assert step.delta is not None and step.delta.version == durable + 1
    assert seq_diff(_edge(ack, 7), REMOTE_SEQ) == SCALED.recv_buffer_size  # moved right
    assert tcb_fields(step)["rcv_wnd"] == SCALED.recv_buffer_size
    assert ack.needs_version == durable + 1  # not `durable`: it would leave first
    conn.on_segment(r(seq=sq(REMOTE_SEQ, -1000), payload=bytes(10)), 1.1)
    (again,) = conn.drain().segments
    assert _edge(again, 7) == _edge(ack, 7) and again.needs_version == durable + 1


def test_restore_of_an_orphaned_fin_wait_2_ends_it_at_its_timer() -> None:
    """The app closed and our FIN was acknowledged: FIN-WAIT-2, orphaned, ended by its
    timer (Linux ``tcp_fin_timeout``) if the peer never closes. Restored, it gets the
    timer again -- it had none, and a peer that never closed kept it, and its store
    record, for good (a review found it, twenty-second session)."""
    conn = conn_established()
    conn.app_close(1.0)
    (fin,) = conn.drain().segments
    assert fin.flags & FIN
    conn.on_segment(r(ack=sq(LOCAL_SEQ, 1)), 1.1)
    assert conn.state is TcpState.FIN_WAIT_2
    restored = restore_record(conn.tcb.to_record(), conn, now=5.0)
    restored.drain()
    deadline = restored.next_deadline()
    assert deadline == 5.0 + conn.config.time_wait_timeout
    restored.on_timer(deadline)
    assert restored.state is TcpState.CLOSED
