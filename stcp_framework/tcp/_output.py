"""What to send now: SYN, data, FIN, ACK, RST and probes; windows; timer expiries.

Sender side: segments of up to ``tcb.mss`` inside ``min(cwnd, snd_wnd)``, with sender
SWS avoidance (RFC 9293 §3.8.6.2.1; Nagle is off, as with ``TCP_NODELAY``).
Receiver side: the advertised window is ``min(free buffer, 0xFFFF << rcv_wscale)``,
opened only in steps of ``min(buffer/2, MSS)`` (RFC 9293 §3.8.6.2.2) and never moved
left (RFC 7323 §2.4).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..wire.seq import SEQ_MASK, Seq, seq_add
from ..wire.tcp import ACK, FIN, NO_OPTIONS, PSH, RST, SYN, TcpOptions, TcpSegment
from . import sack
from .events import TimedOut
from .state import FIN_QUEUED, TcpState
from .step import OutSegment

if TYPE_CHECKING:
    from .machine import Connection

# Tuples, not sets: membership by identity avoids Enum.__hash__ on the hot path.
_DATA_STATES = (
    TcpState.ESTABLISHED,
    TcpState.CLOSE_WAIT,
    TcpState.FIN_WAIT_1,
    TcpState.CLOSING,
    TcpState.LAST_ACK,
)
CHALLENGE_ACK_INTERVAL = 1.0  # RFC 5961 §7: limit per interval (config.challenge_ack_limit)
INVALID_ACK_INTERVAL = 0.5  # Linux net.ipv4.tcp_invalid_ratelimit (500 ms)
MAX_WINDOW = 0xFFFF
_HALF = 1 << 31  # seq_diff inlined on the hot path: ((a - b + _HALF) & SEQ_MASK) - _HALF
_new = tuple.__new__  # OutSegment/TcpOptions built positionally, without keyword parsing


def _free_space(c: Connection) -> int:
    """Receive buffer space not holding uncommitted bytes (G6: the window never exceeds it)."""
    buf = c.rcv_buf
    free = c.config.recv_buffer_size - (buf.end_offset - buf.commit_offset)
    return free if free > 0 else 0


def advertise_window(c: Connection) -> int:
    """The 16-bit window field for the next non-SYN segment; records rcv_wnd/rcv_wup.

    Calling it again with nothing changed (same rcv_nxt, free space and rcv_mss)
    returns the same value and records nothing, so a burst computes it once.
    """
    tcb = c.tcb
    ws = tcb.rcv_wscale
    config = c.config
    size = config.recv_buffer_size
    buf = c.rcv_buf
    if tcb.ack_on_commit:
        # The window counts from the ACK point (the commit point, or the end of spilled
        # bytes): its right edge is commit + buffer size, as in the normal mode (G6).
        rcv_nxt = c.ack_point()
        free = size - (c.ack_offset() - buf.commit_offset)
    else:
        rcv_nxt = tcb.rcv_nxt
        free = size - (buf.end_offset - buf.commit_offset)
        if free < 0:
            free = 0
    rcv_wnd = tcb.rcv_wnd
    # cur = seq_diff(seq_add(rcv_wup, rcv_wnd), rcv_nxt), inlined (hot path).
    cur = ((tcb.rcv_wup + rcv_wnd - rcv_nxt + _HALF) & SEQ_MASK) - _HALF
    if cur < 0:
        cur = 0
    target = MAX_WINDOW << ws
    if free < target:
        target = free
    threshold = size >> 1
    if c.rcv_mss < threshold:
        threshold = c.rcv_mss
    wnd = target if target - cur >= threshold else cur  # RFC 9293 §3.8.6.2.2
    header = wnd >> ws
    if (header << ws) < cur:
        # Keep the right edge (RFC 7323 §2.4): round up to the next scale unit, as Linux
        # tcp_select_window does, even if that offers up to 2**ws - 1 bytes more than
        # the free space; the edge must never move left.
        header += 1
    if header > MAX_WINDOW:
        header = MAX_WINDOW
    new_wnd = header << ws
    if new_wnd != rcv_wnd:
        tcb.rcv_wnd = new_wnd
        c._dirty["rcv_wnd"] = new_wnd
        if new_wnd > cur:
            # The right edge moves right: the segment needs it recorded. A restore
            # from an older edge could otherwise round its first window down to the
            # scale unit, left of what the peer saw (RFC 7323 §2.4; crash fuzz seeds
            # 1185928 and 1186023, once segments durable already left before their
            # round's commit, which had recorded it on the way).
            c.rx_needs = c.version + 1
    if tcb.rcv_wup != rcv_nxt:
        tcb.rcv_wup = rcv_nxt
        c._dirty["rcv_wup"] = rcv_nxt
    return header


def window_update_due(c: Connection) -> bool:
    """After a read: would the window at least double and grow by the SWS threshold
    (Linux ``tcp_cleanup_rbuf``)? Then a window update is sent at once."""
    tcb = c.tcb
    cur = ((tcb.rcv_wup + tcb.rcv_wnd - c.ack_point() + _HALF) & SEQ_MASK) - _HALF
    if cur < 0:
        cur = 0
    buf = c.rcv_buf
    size = c.config.recv_buffer_size
    if tcb.ack_on_commit:
        target = size - (c.ack_offset() - buf.commit_offset)  # see advertise_window
    else:
        target = size - (buf.end_offset - buf.commit_offset)  # free space
        if target < 0:
            target = 0
    cap = MAX_WINDOW << tcb.rcv_wscale
    if cap < target:
        target = cap
    threshold = size >> 1
    if c.rcv_mss < threshold:
        threshold = c.rcv_mss
    return target - cur >= threshold and target >= 2 * cur


def _options(c: Connection, now: float) -> TcpOptions:
    """The options of a non-SYN segment: timestamps (RFC 7323 §3) or none.

    The ``TcpOptions`` value is reused while TSval and TS.Recent stay the same (every
    segment of a burst), instead of building one per segment.
    """
    tcb = c.tcb
    if not tcb.timestamps:
        return NO_OPTIONS
    tsval = (int(now * 1000) + tcb.tsval_offset) & SEQ_MASK
    opts = c.ts_options
    ts = opts.timestamps
    if ts is None or ts[0] != tsval or ts[1] != tcb.ts_recent:
        opts = c.ts_options = _new(
            TcpOptions, (None, None, False, (tsval, tcb.ts_recent), (), None)
        )
    return opts


def _sack_to_report(c: Connection) -> bool:
    """Whether a pure ACK now carries SACK blocks: out-of-order data waits or a duplicate
    is to be reported, SACK was agreed, and -- with ack-on-commit -- the ACK is RCV.NXT
    (blocks next to bytes the ACK leaves out would read as reneging)."""
    tcb = c.tcb
    return (
        bool(c.reasm.size or c.dsack is not None)
        and tcb.sack_permitted
        and (not tcb.ack_on_commit or c.ack_point() == tcb.rcv_nxt)
    )


def _sack_options(c: Connection, now: float) -> TcpOptions:
    """``_options`` plus SACK blocks for the out-of-order data we hold (RFC 2018 §4),
    after a D-SACK block for a duplicate that just arrived (RFC 2883 §4: first)."""
    tcb = c.tcb
    opts = _options(c, now)
    if c.config.md5:
        # 40 - 20 for the signature: room for two blocks, none beside timestamps
        limit = 0 if tcb.timestamps else sack.MAX_BLOCKS_WITH_MD5
    else:
        limit = sack.MAX_BLOCKS_WITH_TS if tcb.timestamps else sack.MAX_BLOCKS
    dsack = c.dsack
    c.dsack = None  # reported once
    if dsack is not None:
        limit -= 1
    blocks = sack.report_merged(c.reasm.blocks, c.sack_recent, limit) if c.reasm.size else []
    base_off = tcb.rcv_nxt_offset
    rcv_nxt = tcb.rcv_nxt
    seqs = tuple(
        ((rcv_nxt + start - base_off) & SEQ_MASK, (rcv_nxt + end - base_off) & SEQ_MASK)
        for start, end in blocks
    )
    if dsack is not None:
        seqs = (dsack, *seqs)
        c.count("dsack_sent")
    c.count("sack_ack_sent")
    return opts._replace(sack_blocks=seqs)


def make_segment(
    c: Connection, seq: Seq, flags: int, payload: bytes | memoryview, now: float
) -> None:
    """Emit one non-SYN segment carrying our ACK, window and timestamps -- and, on one
    without data, SACK blocks while out-of-order data waits (data segments carry none:
    the MSS leaves room for timestamps only)."""
    window = advertise_window(c)
    needs = c.rx_needs
    if payload or flags & FIN:
        tx = c.tx_needs
        if tx > needs:
            needs = tx
    tcb = c.tcb
    ack = c.ack_point() if tcb.ack_on_commit else tcb.rcv_nxt
    opts = _sack_options(c, now) if not payload and _sack_to_report(c) else _options(c, now)
    c._out.append(_new(OutSegment, (seq, ack, flags | ACK, window, opts, payload, needs, 0)))
    _ack_sent(c)


def _ack_sent(c: Connection) -> None:
    """What a segment carrying our ACK settles: the pending ACK and the delayed-ACK
    timer. In ack-on-commit mode that timer also spills received bytes the ACK does not
    cover (``Connection._spill``): it stays armed while there are any, or a peer that
    only retransmits what we hold already (as after a restore) never sees them ACKed."""
    c.ack_now = False
    c.rcv_unacked = 0
    if not c.tcb.ack_on_commit or c.rcv_buf.end_offset <= c.ack_offset():
        c.timers.delayed_ack_at = None


def send_ack(c: Connection, now: float) -> None:
    """A pure ACK <SEQ=SND.NXT><ACK=RCV.NXT><CTL=ACK>."""
    make_segment(c, c.tcb.snd_nxt, ACK, b"", now)


def invalid_segment_ack(c: Connection, now: float) -> None:
    """The ACK an unacceptable segment without data gets (RFC 9293 §3.10.7.4), at most
    one per ``INVALID_ACK_INTERVAL`` per connection, as Linux ``tcp_oow_rate_limited``:
    two ends that each find the other's ACK unacceptable would otherwise answer each
    other for ever (an ACK war, made worse by every duplicate the network adds)."""
    if now - c.invalid_ack_at < INVALID_ACK_INTERVAL:
        c.count("invalid_ack_suppressed")
        return
    c.invalid_ack_at = now
    c.ack_now = True


def challenge_ack(c: Connection, now: float) -> None:
    """RFC 5961 §3.2/§4.2/§5.2 challenge ACK, rate-limited per connection (§7)."""
    if now - c.challenge_window_at >= CHALLENGE_ACK_INTERVAL:
        c.challenge_window_at = now
        c.challenge_count = 0
    if c.challenge_count >= c.config.challenge_ack_limit:
        c.count("challenge_ack_suppressed")
        return
    c.challenge_count += 1
    c.count("challenge_ack")
    send_ack(c, now)


def send_rst(c: Connection, seq: Seq, *, with_ack: bool, now: float) -> None:
    """A RST; ``with_ack`` for an abort of a synchronized connection (Linux sends
    RST,ACK <SEQ=SND.NXT>), without for a reply to an unacceptable ACK (<SEQ=SEG.ACK>)."""
    c.count("rst_sent")
    if with_ack:
        # An abort: the move to CLOSED that follows it in the same call is recorded
        # before it leaves, or a crash would restore a connection the peer has reset.
        c._out.append(
            OutSegment(seq, c.ack_point(), RST | ACK, 0, _options(c, now), b"", c.version + 1)
        )
    else:
        c._out.append(OutSegment(seq, 0, RST, 0, NO_OPTIONS, b"", 0))


def send_window_test(c: Connection, seq: Seq, ack: Seq, now: float) -> None:
    """An ACK <SEQ=seq><ACK=ack> with our window and timestamps, for a peer whose
    SND.UNA may be above our RCV.NXT (``_arrive.test_window_above_gap``); it settles
    nothing of ours (no pending ACK, no timer)."""
    c._out.append(
        _new(OutSegment, (seq, ack, ACK, advertise_window(c), _options(c, now), b"", c.rx_needs, 0))
    )


def send_syn(c: Connection, now: float, *, retransmit: bool = False) -> None:
    """SYN (SYN-SENT) or SYN,ACK (otherwise) with our SYN options; arms the timer."""
    tcb = c.tcb
    config = c.config
    ws = tcb.rcv_wscale if c.offer_wscale else None
    state = tcb.state
    active = state is TcpState.SYN_SENT
    ts: tuple[int, int] | None = None
    if tcb.timestamps:
        ts = (c.tsval(now), 0 if active else tcb.ts_recent)
    # SACK-permitted (RFC 2018 §2): offered in our SYN, and in a SYN,ACK if the peer did
    sack = config.sack if active else tcb.sack_permitted
    opts = _new(TcpOptions, (config.mss, ws, sack, ts, (), None))
    window = _free_space(c)
    if window > MAX_WINDOW:
        window = MAX_WINDOW  # RFC 7323 §2.2: never scaled in a SYN
    if window != tcb.rcv_wnd:
        c._set("rcv_wnd", window)
    if active:
        c._out.append(_new(OutSegment, (tcb.iss, 0, SYN, window, opts, b"", 0, 0)))
    else:
        c._out.append(
            _new(OutSegment, (tcb.iss, tcb.rcv_nxt, SYN | ACK, window, opts, b"", c.rx_needs, 0))
        )
        c.ack_now = False
    if tcb.snd_nxt == tcb.iss:
        c._advance_snd_nxt(0)
    if retransmit:
        c.count("syn_retransmit")
        c.rtt_offset = None  # Karn
    elif c.rtt_offset is None:
        c.rtt_offset = 0
        c.rtt_sent_at = now
    if c.timers.retransmit_at is None or not retransmit:
        c.timers.retransmit_at = now + c.rtt.rto


def rtt_sample_on_ack(c: Connection, seg: TcpSegment, new_una_off: int, now: float) -> None:
    """Take an RTT sample from an ACK that advances SND.UNA (RFC 7323 §4 RTTM with
    TSecr, else RFC 6298 §3 timing with Karn's rule)."""
    tcb = c.tcb
    ts = seg.options.timestamps
    if tcb.timestamps and ts is not None and ts[1]:
        ms = (c.tsval(now) - ts[1]) & 0xFFFFFFFF
        if ms < 0x7FFFFFFF:
            c.rtt.sample(ms / 1000)
        c.rtt_offset = None
        return
    rtt_off = c.rtt_offset
    if rtt_off is not None and new_una_off >= rtt_off:
        c.rtt.sample(now - c.rtt_sent_at)
        c.rtt_offset = None


def transmit(c: Connection, now: float) -> None:
    """Send whatever is due now: data and FIN within the windows, else a pending ACK."""
    tcb = c.tcb
    state = tcb.state
    # A data segment carries no SACK blocks (make_segment): when out-of-order data
    # made this ACK due, it goes out on its own as well (RFC 2018 §4, RFC 5681 §4.2).
    sack_due = c.ack_now and _sack_to_report(c)
    if state in _DATA_STATES and tcb.snd_una_offset >= 0:
        send_data(c, now, force=False)
        if sack_due:
            c.ack_now = True
    if c.ack_now and state is not TcpState.CLOSED and state is not TcpState.SYN_SENT:
        if tcb.snd_una_offset < 0 and state is TcpState.SYN_RECEIVED:
            c.ack_now = False  # our SYN,ACK carries the ACK; nothing else to send
        else:
            send_ack(c, now)


def send_data(c: Connection, now: float, *, force: bool) -> None:
    """Segmentize queued data (and FIN) from ``snd_ptr`` within min(cwnd, snd_wnd).

    ``force`` sends one segment even if sender SWS avoidance would wait (persist timer).
    Every segment of one call carries the same ACK, window and timestamps, so those are
    computed once, at the first segment (``make_segment`` would give the same values).

    With ``config.gso_max`` (segmentation offload), new data goes out in super-segments
    of up to ``gso_max`` bytes (``OutSegment.gso_size`` = MSS): exactly the bytes, in
    the same order, that the loop would have sent as MSS-sized segments, because the
    windows and sender SWS avoidance bound the total and a super-segment ends at a
    multiple of the MSS unless it ends the queued data. Retransmissions stay one MSS.
    """
    tcb = c.tcb
    buf = c.snd_buf
    end = buf.end_offset
    una_off = tcb.snd_una_offset
    ptr = c.snd_ptr
    if ptr < una_off:
        ptr = una_off
    fin_queued = tcb.state in FIN_QUEUED
    t = c.timers
    if ptr >= end and not fin_queued:
        # Nothing to send (a receiver's common case): only the timer bookkeeping below.
        c.snd_ptr = ptr
        if t.persist_at is not None and tcb.snd_una != tcb.snd_nxt:
            t.persist_at = None
        return
    snd_una = tcb.snd_una
    nxt_off = una_off + (((tcb.snd_nxt - snd_una + _HALF) & SEQ_MASK) - _HALF)
    old_nxt_off = nxt_off
    if nxt_off == una_off and 0.0 <= c.last_data_at < now - c.rtt.rto:
        # Nothing in flight, and nothing sent for longer than the RTO (RFC 5681 §4.1):
        # a window grown before would now leave as one burst.
        c.cc.restart_after_idle(c.config.initial_cwnd_segments)
    mss = tcb.mss
    gso_chunk = c.config.gso_max // mss * mss  # super-segment payload cap; <= mss: off
    cc = c.cc
    cwnd = cc.cwnd
    if c.dupacks and not cc.in_recovery:
        # Limited Transmit (RFC 3042): a new segment for each of the first two
        # duplicate ACKs, beyond cwnd, so that they can bring a third.
        cwnd += (c.dupacks if c.dupacks < 2 else 2) * mss
    wnd = tcb.snd_wnd if tcb.snd_wnd < cwnd else cwnd
    limit = una_off + wnd  # right edge of the usable window (offset)
    if c.sent_lost_since >= 0.0 and c.sent_lost_watch and now <= c.loss_watch_until:
        # A restored connection whose peer acknowledged bytes past our record
        # (_arrive.sent_bytes_lost): it holds bytes the crash took from us. Until that
        # is proven (a RST) or the watch ends, nothing may reach the peer's RCV.NXT: new
        # bytes from there on would follow the lost ones, a stream spliced from two
        # processes' sends; below it the peer drops them as duplicates, and answers
        # with the ACK that completes the proof.
        peer_nxt = una_off + (((c.sent_lost_ack - snd_una + _HALF) & SEQ_MASK) - _HALF)
        if peer_nxt - 1 < limit:
            limit = peer_nxt - 1
    half_max = tcb.max_window >> 1
    needs = c.rx_needs
    if c.tx_needs > needs:
        needs = c.tx_needs
    # Bytes below tx_low_end need an older version than those after them (a
    # regenerable send recorded ahead, Connection._tx_needs_from).
    low_end = c.tx_low_end
    low_needs = c.tx_low_needs if c.tx_low_needs > c.rx_needs else c.rx_needs
    out = c._out
    window = -1  # the header fields, computed at the first segment
    ack: int = 0
    opts = NO_OPTIONS
    fin_sent = sent = False
    # Going back to SND.UNA after a timeout, bytes that ACKs since have SACKed again
    # are not resent (RFC 6675 §5.1). (They still count against the window: taking
    # them out of the flight, as RFC 6675's pipe would, measured slower in the
    # simulation -- more new data into a lossy path before the old holes are filled.)
    sacked = c.scoreboard.ranges if ptr < nxt_off else _NO_RANGES
    while ptr < end:
        hole_end = end
        if sacked and ptr < nxt_off:
            ptr, hole_end = _skip_sacked(sacked, ptr)
            if ptr >= end:
                break
        unsent = end - ptr
        usable = limit - ptr
        n = mss
        gso_size = 0
        if gso_chunk > mss and ptr >= nxt_off and unsent > mss and usable > mss:
            # Segmentation offload: as many whole MSS-sized segments as the windows
            # allow, plus the short tail when that ends the queued data.
            n = gso_chunk
            if unsent <= n and unsent <= usable:
                n = unsent
            else:
                if usable < n:
                    n = usable
                n -= n % mss
            gso_size = mss
        if unsent < n:
            n = unsent
        if usable < n:
            n = usable
        if n <= 0:
            break
        if n < mss and n < unsent and n < half_max and not force:
            break  # RFC 9293 §3.8.6.2.1: wait for a useful amount of window
        if hole_end - ptr < n:
            n = hole_end - ptr  # a resend stops where the peer's SACKed bytes begin
        force = False
        if window < 0:
            window = advertise_window(c)
            opts = _options(c, now)
            if tcb.ack_on_commit:
                ack = c.ack_point()
                if ack != tcb.rcv_nxt:
                    c.ack_lagged = True  # (its commit then ACKs at once: _commit_to)
            else:
                ack = tcb.rcv_nxt
            if c.rx_needs > needs:  # the window's edge moved (advertise_window)
                needs = c.rx_needs
            if c.rx_needs > low_needs:
                low_needs = c.rx_needs
        new_ptr = ptr + n
        flags = ACK
        seg_needs = needs if new_ptr > low_end else low_needs
        if new_ptr == end:
            flags = ACK | PSH
            if fin_queued:
                flags = ACK | PSH | FIN
                seg_needs = needs
        out.append(
            _new(
                OutSegment,
                (
                    (snd_una + ptr - una_off) & SEQ_MASK,
                    ack,
                    flags,
                    window,
                    opts,
                    buf.view(ptr, n),
                    seg_needs,
                    gso_size if n > mss else 0,
                ),
            )
        )
        if flags & FIN:
            new_ptr += 1
        if new_ptr > nxt_off:
            if ptr < nxt_off:
                c.count("retransmit")
            nxt_off = new_ptr
            if flags & FIN:
                fin_sent = True
            if c.rtt_offset is None and not tcb.timestamps:
                # The end of the first MSS-sized segment, as if sent one by one.
                c.rtt_offset = ptr + mss if n > mss else new_ptr
                c.rtt_sent_at = now
        else:
            c.count("retransmit")
            c.rtt_offset = None  # Karn's rule
        ptr = new_ptr
        sent = True
    if sent:
        c.last_data_at = now
        _ack_sent(c)  # once for the burst, as make_segment does per segment
        if nxt_off != old_nxt_off:
            c._advance_snd_nxt(nxt_off)
        if fin_sent:
            c._set("fin_sent", True)
    if fin_queued and ptr == end and una_off <= end and (nxt_off == end or ptr < nxt_off):
        # A FIN alone: all data is sent (or resent after a timeout). FIN needs no window.
        make_segment(c, seq_add(snd_una, end - una_off), ACK | FIN, b"", now)
        ptr = end + 1
        if ptr > nxt_off:
            c._advance_snd_nxt(ptr)
            c._set("fin_sent", True)
        else:
            c.count("retransmit")
        sent = True
    c.snd_ptr = ptr
    if sent and t.retransmit_at is None:
        t.retransmit_at = now + c.rtt.rto  # RFC 6298 (5.1)
    if nxt_off != old_nxt_off and tcb.sack_permitted:
        arm_probe(c, now)  # new data left: (re)start the tail loss probe
    if ptr < end and tcb.snd_una == tcb.snd_nxt and t.retransmit_at is None:
        if t.persist_at is None:
            t.persist_at = now + _persist_timeout(c)
    elif t.persist_at is not None and tcb.snd_una != tcb.snd_nxt:
        t.persist_at = None


_NO_RANGES: list[tuple[int, int]] = []


def _skip_sacked(ranges: list[tuple[int, int]], ptr: int) -> tuple[int, int]:
    """Past the SACKed range holding ``ptr``, if any: ``(ptr, end of the hole there)``;
    the hole ends where the next SACKed range begins (or is unbounded)."""
    for s, e in ranges:
        if e <= ptr:
            continue
        if s <= ptr:
            ptr = e  # ranges do not touch: the next one starts above ``e``
            continue
        return ptr, s
    return ptr, _UNBOUNDED


_UNBOUNDED = 1 << 62


def _persist_timeout(c: Connection) -> float:
    config = c.config
    return min(max(c.rtt.rto, config.min_rto) * (1 << min(c.persist_backoff, 16)), config.max_rto)


def retransmit_first(c: Connection, now: float) -> None:
    """Resend the segment at SND.UNA (fast retransmit, NewReno partial ACK)."""
    tcb = c.tcb
    buf = c.snd_buf
    una_off = tcb.snd_una_offset
    nxt_off = c.snd_nxt_offset()
    data_end = min(buf.end_offset, nxt_off)
    n = min(tcb.mss, data_end - una_off)
    _send_again(c, una_off, una_off + n, now)
    board = c.scoreboard
    if n > 0 and tcb.sack_permitted:
        if board.high_rxt < una_off + n:
            board.high_rxt = una_off + n
        if c.cc.in_recovery:
            board.resent.append([una_off, una_off + n, nxt_off])


def _send_again(c: Connection, begin: int, end: int, now: float) -> None:
    """Resend the sent bytes ``[begin, end)`` as one segment, with PSH (and our FIN, if
    sent) when they end the queued data; ``begin == end``: the FIN alone, if sent."""
    tcb = c.tcb
    buf = c.snd_buf
    c.count("retransmit")
    c.rtt_offset = None  # Karn's rule
    if c.cc.in_recovery and end > begin:
        c.cc.on_resend(begin, end)
    seq = seq_add(tcb.snd_una, begin - tcb.snd_una_offset)
    if begin < end:
        flags = ACK
        if end == buf.end_offset:
            flags |= PSH
            if tcb.fin_sent:
                flags |= FIN
        make_segment(c, seq, flags, buf.view(begin, end - begin), now)
    elif tcb.fin_sent and begin == buf.end_offset:
        make_segment(c, seq, ACK | FIN, b"", now)


def retransmit_hole(c: Connection, now: float) -> bool:
    """Resend the first hole the peer's SACK blocks show lost and that this recovery
    has not resent yet (RFC 6675 §4 NextSeg rule 1), at most one MSS. False if none."""
    tcb = c.tcb
    board = c.scoreboard
    una_off = tcb.snd_una_offset
    start = board.high_rxt if board.high_rxt > una_off else una_off
    hole = board.next_hole(start, (sack.DUP_THRESH - 1) * tcb.mss)
    if hole is None:
        return False
    begin, end = hole
    buf = c.snd_buf
    n = min(tcb.mss, end - begin, buf.end_offset - begin)
    if n <= 0:
        return False
    _resend(c, begin, n, now)
    board.high_rxt = begin + n
    return True


def retransmit_lost_resend(c: Connection, now: float) -> bool:
    """Resend a retransmission that was lost in its turn (``Scoreboard.lost_resend``),
    at most one MSS. False if there is none."""
    tcb = c.tcb
    lost = c.scoreboard.lost_resend(tcb.snd_una_offset, c.snd_nxt_offset())
    if lost is None:
        return False
    begin, end = lost
    n = min(tcb.mss, end - begin, c.snd_buf.end_offset - begin)
    if n <= 0:
        return False
    c.count("lost_retransmit")
    _resend(c, begin, n, now, record=False)  # (its record's mark moved already)
    return True


def _resend(c: Connection, begin: int, n: int, now: float, *, record: bool = True) -> None:
    """Resend ``n`` bytes from stream offset ``begin`` in this SACK recovery, noted in
    ``Scoreboard.resent`` (unless ``record`` is False: a lost resend's note moved)."""
    c.count("sack_retransmit")
    _send_again(c, begin, begin + n, now)
    if record:
        c.scoreboard.resent.append([begin, begin + n, c.snd_nxt_offset()])


_DELAYED_ACK_ALLOWANCE = 0.2  # RFC 8985 §7.2 WCDelAckT (Linux TCP_DELACK_MAX)
_MIN_PTO = 0.01  # Linux: never sooner than 10 ms
_MIN_REO_WND = 0.001  # the clock's granularity (our timestamps tick in ms)


def arm_probe(c: Connection, now: float) -> None:
    """(Re)start the tail loss probe timer (RFC 8985 §7.2): in open state, with SACK,
    data in flight and no probe out, at PTO = 2 * SRTT (plus the peer's delayed-ACK
    allowance when one segment is in flight), if that comes before the RTO. With a
    hole SACKed around, the same timer is RACK's reordering timer instead (a quarter
    of SRTT, or more after needless recoveries: ``NewReno.reo_wnd_mult``)."""
    t = c.timers
    tcb = c.tcb
    cc = c.cc
    srtt = c.rtt.srtt
    board = c.scoreboard
    una_off = tcb.snd_una_offset
    flight = c.snd_nxt_offset() - una_off
    if (
        srtt is None
        or flight <= 0
        or cc.in_recovery
        or una_off < cc.recover_offset  # still repairing after a timeout
        or c.retries
        or not tcb.state.synchronized()
    ):
        t.probe_at = None
        return
    rto_at = t.retransmit_at
    if board.ranges:
        # A hole SACKed around but short of the duplicate ACK threshold: RACK's
        # reordering window (RFC 8985 §6.2 step 4: min_RTT / 4 widened by needless
        # recoveries; SRTT here) from the last ACK, then the hole is lost
        # (``_arrive.on_reorder_timeout``).
        at = now + max(srtt * cc.reo_wnd_mult / 4, _MIN_REO_WND)
        t.probe_at = at if rto_at is None or at < rto_at else None
        return
    if board.probe_end >= 0:
        t.probe_at = None
        return
    pto = 2 * srtt
    if flight <= tcb.mss:
        pto = max(pto, 1.5 * srtt + _DELAYED_ACK_ALLOWANCE)
    at = now + max(pto, _MIN_PTO)
    t.probe_at = at if rto_at is None or at < rto_at else None


def on_probe_timeout(c: Connection, now: float) -> None:
    """Send a tail loss probe (RFC 8985 §7.3): one new segment if the peer's window
    has room, else the last segment again, so that a loss at the end of a flight
    (nothing after it to bring duplicate ACKs) gets an ACK with SACK information --
    and fast recovery -- instead of a retransmission timeout. Then the RTO is re-armed."""
    tcb = c.tcb
    cc = c.cc
    board = c.scoreboard
    una_off = tcb.snd_una_offset
    nxt_off = c.snd_nxt_offset()
    if nxt_off <= una_off or cc.in_recovery or board.probe_end >= 0:
        return
    buf = c.snd_buf
    mss = tcb.mss
    c.count("tail_loss_probe")
    emitted = len(c._out)
    unsent = buf.end_offset - nxt_off
    if unsent > 0 and tcb.snd_wnd >= nxt_off - una_off + min(mss, unsent):
        cwnd = cc.cwnd
        cc.cwnd = nxt_off - una_off + mss  # one new segment, beyond cwnd
        send_data(c, now, force=True)
        cc.cwnd = cwnd
    if len(c._out) == emitted:
        end = min(buf.end_offset, nxt_off)
        _send_again(c, max(una_off, end - mss), end, now)  # the last segment
        c.count("probe_retransmit")
        board.probe_resent = True
    board.probe_end = c.snd_nxt_offset()
    c.timers.probe_at = None
    c.timers.retransmit_at = now + c.rtt.rto  # RFC 8985 §7.3: the RTO, not another PTO


def time_out(c: Connection, now: float, *, rst: bool) -> None:
    """Give up: TimedOut and CLOSED (with a RST like Linux ``tcp_write_err`` paths)."""
    tcb = c.tcb
    if rst and tcb.state.synchronized():
        send_rst(c, tcb.snd_nxt, with_ack=True, now=now)
    c.emit(TimedOut())
    c._set_state(TcpState.CLOSED, "timed out")


def on_retransmit_timeout(c: Connection, now: float) -> None:
    """RFC 6298 §5 (5.4)-(5.7) with RFC 5681 §3.1 (4) loss window; go-back-N from
    SND.UNA. SYN and SYN,ACK are limited by ``syn_retries``, data by ``max_retries``."""
    tcb = c.tcb
    state = tcb.state
    config = c.config
    if state is TcpState.CLOSED or state is TcpState.TIME_WAIT:
        return
    if tcb.snd_una == tcb.snd_nxt:
        return
    c.retries += 1
    c.rtt.backoff()  # RFC 6298 (5.5)
    if tcb.snd_una_offset < 0:
        if c.retries > config.syn_retries:
            time_out(c, now, rst=False)
            return
        send_syn(c, now, retransmit=True)
        c.timers.retransmit_at = now + c.rtt.rto
        return
    if c.retries > config.max_retries:
        time_out(c, now, rst=True)
        return
    c.count("rto")
    c.timers.probe_at = None
    board = c.scoreboard
    board.probe_end = -1
    board.probe_resent = False
    if c.retries > 1:
        board.clear()  # RFC 2018 §8: the receiver may have reneged
    else:
        # The first timeout keeps what the peer SACKed, as Linux does (RFC 2018 §8
        # says SHOULD clear, for receivers that renege): go-back-N then resends only
        # the holes (``send_data``). A receiver that did renege stops the ACKs at a
        # SACKed range; the next timeout clears the scoreboard and resends it all.
        board.end_recovery()
    flight = c.snd_nxt_offset() - tcb.snd_una_offset
    c.cc.on_rto(flight, first=c.retries == 1)
    c.cc.recover_offset = c.snd_nxt_offset()  # RFC 6582 §3.2 step 4 (after an RTO)
    c.dupacks = 0
    c.rtt_offset = None  # Karn
    c.snd_ptr = tcb.snd_una_offset
    c.timers.retransmit_at = now + c.rtt.rto  # RFC 6298 (5.6)
    c.timers.persist_at = None
    emitted = len(c._out)
    send_data(c, now, force=True)
    if len(c._out) == emitted:
        # The peer shut its window with our data in flight: resend the first segment
        # anyway (RFC 9293 §3.8.6.1: keep retransmitting into a zero window; Linux
        # tcp_retransmit_timer), or a live peer would never be asked again.
        retransmit_first(c, now)


def on_persist_timeout(c: Connection, now: float) -> None:
    """Zero-window probe (RFC 9293 §3.8.6.1), or one forced segment if the window is
    open but too small for SWS avoidance; the interval backs off."""
    tcb = c.tcb
    if tcb.state not in _DATA_STATES or tcb.snd_una_offset < 0:
        return
    if c.snd_ptr >= c.snd_buf.end_offset or tcb.snd_una != tcb.snd_nxt:
        return
    c.probes += 1
    if c.probes > c.config.zero_window_probe_max:
        time_out(c, now, rst=True)
        return
    c.persist_backoff += 1
    wnd = min(tcb.snd_wnd, c.cc.cwnd)
    if wnd > 0:
        send_data(c, now, force=True)
    else:
        # Linux tcp_xmit_probe_skb: an old sequence number makes the peer answer with
        # its current window, without putting a byte beyond the window in flight.
        c.count("zero_window_probe")
        make_segment(c, seq_add(tcb.snd_una, -1), ACK, b"", now)
    if tcb.snd_una == tcb.snd_nxt:
        c.timers.persist_at = now + _persist_timeout(c)


def on_keepalive_timeout(c: Connection, now: float) -> None:
    """RFC 9293 §3.8.4 keepalive probe <SEQ=SND.UNA-1>; RST + TimedOut when exhausted.

    Armed on entering ESTABLISHED (``arm_keepalive``) when ``keepalive_idle`` is set.
    While data is outstanding the retransmission or persist timer watches the peer,
    so the keepalive only reschedules itself (Linux ``tcp_keepalive_timer``).
    """
    config = c.config
    idle = config.keepalive_idle
    tcb = c.tcb
    if idle is None or tcb.state not in (TcpState.ESTABLISHED, TcpState.CLOSE_WAIT):
        return
    if c.snd_buf.end_offset > tcb.snd_una_offset or tcb.snd_una != tcb.snd_nxt:
        c.timers.keepalive_at = now + idle
        return
    if now - c.last_rx_at < idle and c.probes == 0:
        c.timers.keepalive_at = c.last_rx_at + idle
        return
    if c.probes >= config.keepalive_probes:
        time_out(c, now, rst=True)
        return
    c.probes += 1
    make_segment(c, seq_add(tcb.snd_una, -1), ACK, b"", now)
    c.timers.keepalive_at = now + config.keepalive_interval


def arm_keepalive(c: Connection, now: float) -> None:
    """Start the keepalive timer (RFC 9293 §3.8.4; off unless ``keepalive_idle``)."""
    idle = c.config.keepalive_idle
    if idle is not None:
        c.timers.keepalive_at = now + idle


def arm_orphan_timer(c: Connection, now: float) -> None:
    """FIN-WAIT-2 after ``app_close``: nobody can read, so do not wait forever
    (Linux ``tcp_fin_timeout``; we reuse ``time_wait_timeout``)."""
    c.timers.time_wait_at = now + c.config.time_wait_timeout
