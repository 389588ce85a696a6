"""Hostile or broken peers: segments an attacker (blind or on-path) or a buggy stack
sends, and what the connection must do with them (RFC 5961, RFC 7323, RFC 9293)."""

from __future__ import annotations

import sys
from dataclasses import replace
from itertools import pairwise

from hypothesis import given, settings
from hypothesis import strategies as st
from tcp_helpers import (
    BUF,
    CONFIG,
    LOCAL_SEQ,
    MSS,
    REMOTE_SEQ,
    conn_established,
    r,
    restore_record,
    send,
    sq,
    syn_options,
)

from stcp_framework.tcp._arrive import RECV_OVERFILL
from stcp_framework.tcp.buffers import PIECE_OVERHEAD, Reassembly
from stcp_framework.tcp.machine import Connection
from stcp_framework.tcp.sack import SCOREBOARD_MAX_RANGES, merge_ranges
from stcp_framework.tcp.state import TcpState
from stcp_framework.wire.seq import Seq, seq_add, seq_diff
from stcp_framework.wire.tcp import ACK, FIN, SYN, TcpOptions


def ts_conn() -> Connection:
    config = replace(CONFIG, timestamps=True)
    return conn_established(config, options=syn_options(ts=(1000, 0)))


def test_a_segment_dropped_for_its_ack_does_not_move_ts_recent() -> None:
    """RFC 7323 §4.3 updates TS.Recent from an *acceptable* segment; RFC 5961 §5.2
    drops one that ACKs unsent data. A blind (in-window) injection with a TSval 2**31-1
    ahead must not become TS.Recent: every later segment of the real peer would fail
    PAWS and the connection would stall, each answered by an ACK (Linux commit
    bd090dfc634d moved tcp_replace_ts_recent after tcp_ack's checks for this)."""
    conn = ts_conn()
    poison = (1000 + 2**31 - 1) & 0xFFFFFFFF
    send(conn, r(ack=sq(LOCAL_SEQ, 10), options=TcpOptions(timestamps=(poison, 0))), at=1.0)
    conn.drain()
    assert conn.tcb.ts_recent == 1000
    # The real peer's next segment is taken.
    send(conn, r(payload=b"hello", options=TcpOptions(timestamps=(1010, 5))), at=1.1)
    conn.drain()
    assert conn.recv_available == 5
    assert conn.counters.get("paws_drop", 0) == 0


def test_a_syn_or_ackless_segment_does_not_move_ts_recent() -> None:
    """The same for segments dropped at RFC 9293 steps 4 and 5 (a SYN in window gets a
    challenge ACK; a segment without ACK is dropped): neither is acceptable."""
    for seg in (
        r(flags=SYN, ack=0, options=TcpOptions(timestamps=(2**31 + 900, 0))),
        r(flags=0, ack=0, options=TcpOptions(timestamps=(2**31 + 900, 0))),
        r(ack=sq(LOCAL_SEQ, -100000), options=TcpOptions(timestamps=(2**31 + 900, 0))),
    ):
        conn = ts_conn()
        send(conn, seg, at=1.0)
        conn.drain()
        assert conn.tcb.ts_recent == 1000, seg
        assert conn.state is TcpState.ESTABLISHED


def _rcv_window(conn: Connection) -> int:
    tcb = conn.tcb
    return seq_diff(seq_add(tcb.rcv_wup, tcb.rcv_wnd), tcb.rcv_nxt)


def _ack_at_once(conn: Connection, at: float) -> list[int]:
    """Make the connection send its ACK now (a peer gets one at once by repeating an
    old segment: data below RCV.NXT is always answered); returns the windows sent."""
    conn.on_segment(r(seq=sq(conn.tcb.rcv_nxt, -1), payload=b"z"), at)
    return [seg.window for seg in conn.drain().segments]


def test_small_segments_cannot_fill_more_than_the_receive_buffer() -> None:
    """G6 / RFC 9293 §3.8.6.2.2: the window never offers more than the free buffer.
    With window scaling the right edge is rounded *up* to the scale unit so that it
    never moves left (RFC 7323 §2.4). A peer that sends fewer than 2**Rcv.Wind.Shift
    bytes per ACK then never sees the window shrink at all: every ACK rounds the edge
    up again, past the free space, and the application that reads nothing ends up
    holding as much as the peer cares to send (here: the buffer plus 256 KiB). Text
    past the buffer and ``RECV_OVERFILL`` is trimmed."""
    size = 1 << 20
    conn = conn_established(
        replace(CONFIG, recv_buffer_size=size, window_scaling=True), options=syn_options(wscale=0)
    )
    unit = 1 << conn.tcb.rcv_wscale
    assert unit == 32
    now = 1.0
    # Fill the buffer with full-sized segments: the window closes as it should.
    for _ in range(100):
        wnd = _rcv_window(conn)
        if wnd < 4096:
            break
        send(conn, r(seq=conn.tcb.rcv_nxt, payload=b"x" * (min(wnd, 65536) - 1000)), at=now)
        _ack_at_once(conn, now)
    filled = conn.recv_available
    assert size - filled < 8192 and 0 < _rcv_window(conn) < 4096
    # Then trickle unit - 1 bytes at a time, each followed by an ACK.
    for _ in range(256 * 1024 // (unit - 1)):
        now += 0.001
        wnd = _rcv_window(conn)
        if wnd <= 0:
            break
        conn.on_segment(r(seq=conn.tcb.rcv_nxt, payload=b"y" * min(unit - 1, wnd)), now)
        conn.drain()
        _ack_at_once(conn, now)
    over = conn.recv_available - size
    assert 0 < over <= RECV_OVERFILL, f"{over} bytes held beyond the buffer"
    # The window, full from here, still offers a little: what arrives past the slack
    # is refused (trimmed, and the ACK says so), however long the peer goes on.
    before = conn.recv_available
    for _ in range(50):
        now += 0.001
        conn.on_segment(r(seq=conn.tcb.rcv_nxt, payload=b"y" * (unit - 1)), now)
        conn.drain()
    assert conn.recv_available == before


# ------------------------------------------------------------ out-of-order data, SACK

SACK = replace(CONFIG, sack=True)
SACK_SYN = syn_options()._replace(sack_permitted=True)


def _reasm_bytes(conn: Connection) -> int:
    """Memory the reassembly queue's objects take (list, tuples, offsets, payloads)."""
    ranges = conn.reasm._ranges
    return sys.getsizeof(ranges) + sum(
        sys.getsizeof(t) + sys.getsizeof(t[0]) + sys.getsizeof(t[1]) for t in ranges
    )


def _interleaved_bytes(conn: Connection, count: int, at: float) -> None:
    """``count`` one-byte segments at every other offset above RCV.NXT (all inside the
    window, none filling the hole at RCV.NXT)."""
    for i in range(1, count + 1):
        conn.on_segment(r(seq=sq(REMOTE_SEQ, 2 * i), payload=b"q"), at)
        conn.drain()


def test_out_of_order_pieces_cost_at_most_twice_the_buffer() -> None:
    """RFC 9293 step 7 queues out-of-order text; the window bounds its bytes, not its
    pieces: one-byte segments at every other offset made each byte a piece of its own,
    ~120 bytes of objects per byte -- with the 4 MiB default a peer could pin ~200 MB.
    Each piece is charged its bytes and ``PIECE_OVERHEAD``, as Linux charges an skb's
    truesize, and past twice the buffer the highest pieces go (Linux prunes its
    out-of-order queue so; RFC 2018 §8 lets a receiver drop what it SACKed)."""
    conn = conn_established(SACK, options=SACK_SYN)
    limit = 2 * BUF
    count = 3 * limit // (PIECE_OVERHEAD + 1)
    assert 2 * count < BUF  # every byte inside the window
    _interleaved_bytes(conn, count, at=1.0)
    ranges = conn.reasm.ranges()
    kept = len(ranges)
    assert conn.reasm.size == kept < count and kept * (PIECE_OVERHEAD + 1) <= limit
    assert ranges[0] == (2, 3) and ranges[-1] == (2 * kept, 2 * kept + 1)  # the lowest
    assert _reasm_bytes(conn) <= limit
    # The hole filled: the bytes held come in order, the pruned ones are asked again.
    send(conn, r(seq=sq(REMOTE_SEQ, 0), payload=b"h" * 2), at=1.1)
    out = conn.drain()
    assert conn.recv_available == 3
    assert out.segments[-1].ack == sq(REMOTE_SEQ, 3)


def test_a_pruned_new_piece_is_not_reported_as_a_duplicate() -> None:
    """A piece the charge prunes at once (it is the highest) was reported in a D-SACK
    block as "held already": a first block above the ACK reads as an ordinary SACK
    (RFC 2883), and the sender would not resend those bytes before its timeout."""
    conn = conn_established(SACK, options=SACK_SYN)
    _interleaved_bytes(conn, 2 * BUF // (PIECE_OVERHEAD + 1) + 5, at=1.0)
    new_off = conn.reasm.ranges()[-1][1] + 1  # above everything held
    conn.on_segment(r(seq=sq(REMOTE_SEQ, new_off), payload=b"q"), 1.0)
    out = conn.drain()
    assert all(not s <= new_off < e for s, e in conn.reasm.ranges())  # pruned
    blocks = [
        (seq_diff(Seq(left), REMOTE_SEQ), seq_diff(Seq(right), REMOTE_SEQ))
        for seg in out.segments
        for left, right in seg.options.sack_blocks
    ]
    assert blocks and all(not s <= new_off < e for s, e in blocks)


def test_a_window_of_full_sized_segments_out_of_order_is_all_kept() -> None:
    """The charge leaves room for what a lossy path queues: every segment of a full
    window behind one lost segment stays (pruning them would make the sender resend
    SACKed bytes at its timeout)."""
    conn = conn_established(SACK, options=SACK_SYN)
    at = MSS
    while at + MSS <= BUF:
        send(conn, r(seq=sq(REMOTE_SEQ, at), payload=b"w" * MSS), at=1.0)
        at += MSS
    assert conn.reasm.size == at - MSS


def _sender_with_flight(flight: int) -> Connection:
    conn = conn_established(SACK, options=SACK_SYN)
    conn.cc.cwnd = flight
    send(conn, r(window=0xFFFF), at=0.5)
    conn.app_send(b"d" * flight, 1.0)
    conn.drain()
    assert conn.unacked == flight
    return conn


def _byte_sacks(conn: Connection, acks: int, at: float) -> None:
    """``acks`` duplicate ACKs, each SACKing four separate single bytes of our flight
    (what no receiver that stores segments whole can report)."""
    for i in range(acks):
        base = 8 * i + 100
        sacks = tuple(
            (sq(LOCAL_SEQ, base + 2 * k), sq(LOCAL_SEQ, base + 2 * k + 1)) for k in range(4)
        )
        conn.on_segment(r(window=0xFFFF, options=TcpOptions(sack_blocks=sacks)), at)
        conn.drain()


def test_sack_blocks_cannot_split_the_scoreboard_without_limit() -> None:
    """A receiver SACKing single bytes makes one scoreboard range per byte (Linux's
    CVE-2019-11477/11478 were this, per skb), and every ACK walks the scoreboard
    (``Scoreboard.update``, ``sacked_bytes``, ``pipe``, ``next_hole``): it keeps at most
    ``SCOREBOARD_MAX_RANGES``, the lowest (the holes resent first), and goes on."""
    conn = _sender_with_flight(64000)
    _byte_sacks(conn, 1500, at=1.0)  # 6,000 single bytes SACKed
    ranges = conn.scoreboard.ranges
    assert len(ranges) == SCOREBOARD_MAX_RANGES
    assert ranges[0] == (100, 101)
    assert conn.state is TcpState.ESTABLISHED


# ------------------------------------------------------------------------- PAWS


def test_paws_drops_of_pure_acks_are_rate_limited() -> None:
    """A pure ACK that fails PAWS (RFC 7323 §5.3 R1) is answered with an ACK -- but
    like every other unacceptable ACK (``invalid_segment_ack``; Linux
    tcp_oow_rate_limited, LINUX_MIB_TCPACKSKIPPEDPAWS) at most once per 500 ms: a
    peer whose TSval went back got an ACK for every one of its ACKs."""
    conn = ts_conn()
    send(conn, r(payload=b"new", options=TcpOptions(timestamps=(100_000, 5))), at=1.0)
    conn.drain()
    answers = 0
    for _ in range(5):  # 50 s older than TS.Recent: no reordering explains it
        send(conn, r(seq=sq(REMOTE_SEQ, 3), options=TcpOptions(timestamps=(50_000, 5))), at=1.1)
        answers += len(conn.drain().segments)
    assert conn.counters["paws_drop"] == 5
    assert answers == 1


def test_a_disordered_duplicate_ack_passes_paws() -> None:
    """A pure duplicate ACK overtaken by a later segment carries an older TSval; PAWS
    lets it through when it is at most an RTO older (Linux tcp_disordered_ack): it is
    the duplicate ACK it looks like, and TS.Recent does not go back."""
    conn = ts_conn()
    send(conn, r(window=0xFFFF, options=TcpOptions(timestamps=(1005, 0))), at=0.5)
    conn.app_send(b"d" * 3 * MSS, 1.0)
    conn.drain()
    send(conn, r(window=0xFFFF, options=TcpOptions(timestamps=(1020, 5))), at=1.1)
    late = r(window=0xFFFF, options=TcpOptions(timestamps=(1010, 5)))  # sent before
    send(conn, late, at=1.1)
    conn.drain()
    assert conn.counters.get("paws_drop", 0) == 0
    assert conn.dupacks == 2
    assert conn.tcb.ts_recent == 1020


IDLE = 25 * 86400.0  # seconds: past RFC 7323 §5.5's 24 days


def _tsval_after(tsval: int) -> int:
    """The peer's 1 ms TSval clock ``IDLE`` later: wrapped more than half way round."""
    return (tsval + int(IDLE * 1000)) & 0xFFFFFFFF


def test_ts_recent_older_than_24_days_is_invalid() -> None:
    """RFC 7323 §5.5: after 24 days idle TS.Recent is no longer valid -- a 1 ms TSval
    clock has moved 2**31 on, and PAWS would drop every segment of the peer as "old"
    for ever (Linux TCP_PAWS_24DAYS / ts_recent_stamp). An idle connection (keepalive
    is off by default) must take the peer's next segment."""
    conn = ts_conn()
    send(conn, r(payload=b"a", options=TcpOptions(timestamps=(1010, 5))), at=1.0)
    conn.drain()
    conn.on_timer(2.0)  # its delayed ACK: Last.ACK.sent is past it
    assert conn.drain().segments
    tsval = _tsval_after(1010)
    late = r(seq=sq(REMOTE_SEQ, 1), payload=b"b", options=TcpOptions(timestamps=(tsval, 5)))
    send(conn, late, at=1.0 + IDLE)
    conn.drain()
    assert conn.counters.get("paws_drop", 0) == 0
    assert conn.recv_available == 2
    assert conn.tcb.ts_recent == tsval


# ------------------------------------------------------------------ FIN ordering


def test_data_beyond_an_out_of_order_fin_does_not_hide_it() -> None:
    """A FIN fixes where the peer's stream ends (RFC 9293 §3.10.7.4 eighth step): a
    broken peer's out-of-order FIN at offset 10, then data for offsets 10..20, then
    the hole 0..10. The FIN is at 10 whatever came later; here the queued bytes after
    it are delivered, RCV.NXT passes the FIN, ``reasm.fin_offset`` is left behind and
    no EOF ever comes: the connection stays ESTABLISHED, and the peer's retransmitted
    FIN is now below RCV.NXT and only ACKed."""
    conn = conn_established()
    send(conn, r(seq=sq(REMOTE_SEQ, 10), flags=ACK | FIN), at=1.0)
    send(conn, r(seq=sq(REMOTE_SEQ, 10), payload=b"B" * 10), at=1.0)
    send(conn, r(seq=REMOTE_SEQ, payload=b"A" * 10), at=1.0)
    conn.drain()
    send(conn, r(seq=sq(REMOTE_SEQ, 10), flags=ACK | FIN), at=1.2)  # the FIN again
    conn.drain()
    assert conn.app_receive(100, 1.3) == b"A" * 10
    assert conn.at_eof
    assert conn.state is TcpState.CLOSE_WAIT


def test_a_ts_recent_from_the_handshake_idle_24_days_is_invalid_too() -> None:
    """The same when the handshake set TS.Recent last: a peer that says nothing for 25
    days after the connection opened is not PAWS-dropped for ever."""
    conn = ts_conn()
    tsval = _tsval_after(1000)
    late = r(seq=REMOTE_SEQ, payload=b"b", options=TcpOptions(timestamps=(tsval, 5)))
    conn.on_segment(late, 1.0 + IDLE)
    conn.drain()
    assert conn.counters.get("paws_drop", 0) == 0
    assert conn.recv_available == 1


def test_a_restored_ts_recent_idle_24_days_is_invalid_too() -> None:
    """... and when a restore brought TS.Recent back and the connection then idled."""
    conn = ts_conn()
    send(conn, r(payload=b"a", options=TcpOptions(timestamps=(1010, 5))), at=1.0)
    conn.drain()
    conn.on_timer(2.0)
    conn.drain()
    restored = restore_record(conn.tcb.to_record(), conn, rx=b"a", now=3.0)
    restored.drain()
    tsval = _tsval_after(1010)
    late = r(seq=sq(REMOTE_SEQ, 1), payload=b"b", options=TcpOptions(timestamps=(tsval, 5)))
    restored.on_segment(late, 3.0 + IDLE)
    restored.drain()
    assert restored.counters.get("paws_drop", 0) == 0
    assert restored.tcb.ts_recent == tsval


# ----------------------------------------------------- the reassembly queue's invariants


@settings(max_examples=300, deadline=None)
@given(
    ops=st.lists(
        st.one_of(
            st.tuples(st.just("insert"), st.integers(0, 400), st.integers(1, 60)),
            st.tuples(st.just("pop"), st.integers(0, 40), st.just(0)),
            st.tuples(st.just("fin"), st.integers(0, 500), st.just(0)),
        ),
        max_size=60,
    ),
    charge=st.sampled_from([1 << 62, 2000, 600]),
)
def test_reassembly_keeps_its_bytes_its_size_and_its_blocks(
    ops: list[tuple[str, int, int]], charge: int
) -> None:
    """Against a model of the stream's bytes: whatever is inserted, popped, cut at a FIN
    or pruned, the pieces are sorted and disjoint with the right bytes, ``size`` is
    their sum, and ``blocks`` -- the SACK blocks, kept up to date -- is their union."""
    stream = bytes((i * 7 + 3) % 251 for i in range(1000))
    reasm = Reassembly(charge)
    next_offset = 0
    for op, a, b in ops:
        if op == "insert":
            start = next_offset + a
            took = reasm.insert(start, memoryview(stream)[start : start + b])
            assert isinstance(took, bool)
        elif op == "pop":
            next_offset += a
            for chunk in reasm.pop_from(next_offset):
                assert chunk == stream[next_offset : next_offset + len(chunk)]
                next_offset += len(chunk)
        else:
            reasm.set_fin(next_offset + a)
        pieces = reasm._ranges
        assert all(s + len(d) <= s2 for (s, d), (s2, _) in pairwise(pieces))
        assert all(d == stream[s : s + len(d)] and d for s, d in pieces)
        assert reasm.size == sum(len(d) for _, d in pieces)
        assert reasm.size + PIECE_OVERHEAD * len(pieces) <= charge or not pieces
        assert reasm.blocks == merge_ranges(reasm.ranges())
        fin = reasm.fin_offset
        assert fin is None or all(s + len(d) <= fin for s, d in pieces)
