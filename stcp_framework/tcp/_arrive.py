"""SEGMENT ARRIVES for SYN-RECEIVED and the synchronized states (RFC 9293 §3.10.7.4).

One function per step of the RFC, called in the RFC's order by ``segment_arrives``:
``check_sequence`` (first, with RFC 7323 PAWS before it), ``check_rst`` (second,
RFC 5961 §3), ``check_syn`` (fourth, RFC 5961 §4), ``check_ack`` (fifth, RFC 5961 §5,
RFC 5681/6582, RFC 6298), ``process_text`` (seventh) and ``check_fin`` (eighth). The
third (security) and sixth (URG) steps are not implemented.

``header_prediction`` is an optimisation of exactly these steps for the common case
of a bulk transfer (an in-order segment in ESTABLISHED), as Van Jacobson's header
prediction in BSD and Linux (``tcp_rcv_established``; RFC 1323 appendix D's PAWS
placement). It decides from the segment and the TCB, before changing anything,
whether every general step would take its "nothing unusual" branch; if so it applies
those branches' effects inline, otherwise it returns False and the general steps run.
``tests/tcp/test_tcp_fast_path.py`` checks that both give identical results.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..wire.seq import SEQ_MASK, Seq, seq_add, seq_diff, seq_le, seq_lt
from ..wire.tcp import ACK, FIN, PSH, RST, SYN, TcpSegment
from . import _output, sack
from .events import Aborted, Connected, DataReadable, EofReceived, Reset
from .state import FIN_QUEUED, TcpState

if TYPE_CHECKING:
    from .machine import Connection

_ESTABLISHED = TcpState.ESTABLISHED
# Tuples, not sets: membership by identity avoids Enum.__hash__ on the hot path.
_RECV_TEXT_STATES = (TcpState.ESTABLISHED, TcpState.FIN_WAIT_1, TcpState.FIN_WAIT_2)
_HALF = 1 << 31  # seq_diff(a, b) inlined: ((a - b + _HALF) & SEQ_MASK) - _HALF
_ACK_PSH = ACK | PSH
_DATA_READABLE = DataReadable()


RECV_OVERFILL = 1 << 16
"""Bytes past the receive buffer that text may take (``check_sequence``): the slack of a
scaled window's rounding up, which a peer sending sub-unit segments could otherwise
grow without limit (Linux bounds the same by its receive memory, ~2x the window)."""
PAWS_IDLE_LIMIT = 24 * 86400.0
"""RFC 7323 §5.5: a TS.Recent older than this (24 days) is invalid -- the peer's clock may
have run half its 32-bit range on since -- so PAWS does not judge by it (Linux
TCP_PAWS_24DAYS)."""
KEEP_VIEW_MIN = 1 << 15  # the store's zero-copy size (store/redis.py _ZERO_COPY_LEN)


def keep_payload(payload: bytes | memoryview) -> bytes | memoryview:
    """``payload`` as an object the buffers and the store may keep for good.

    ``bytes`` as is. A large view of an immutable ``bytes`` object (what ``TunDevice``
    reads into) as is too: nobody can change those bytes, so keeping the view saves
    a copy of every large segment (the app's read joins the pieces anyway). Anything
    else -- a view of a reused buffer, a small payload -- is copied: the one copy.
    """
    if type(payload) is bytes:
        return payload
    if len(payload) >= KEEP_VIEW_MIN and type(payload.obj) is bytes:  # type: ignore[union-attr]
        return payload
    return bytes(payload)


def header_prediction(c: Connection, seg: TcpSegment, now: float) -> bool:
    """SEGMENT ARRIVES for the predicted segment; False (nothing changed) otherwise.

    Predicted (all must hold; each line names the general step it short-cuts):

    * ESTABLISHED, flags ACK with or without PSH: steps 2, 4 and 8 (RST, SYN, FIN)
      have nothing to do and step 5's ACK bit is on;
    * with timestamps, TSval present and not older than TS.Recent: PAWS passes
      (RFC 7323 §5.3 R1);
    * SEG.SEQ == RCV.NXT and the whole text inside RCV.WND: step 1 accepts the segment
      untrimmed (RFC 9293 §3.10.7.4 table);
    * SND.UNA <= SEG.ACK <= SND.NXT, our SYN acknowledged, our FIN not sent, not in
      NewReno recovery, and not a duplicate ACK (RFC 5681 §2): step 5 takes its
      "advance SND.UNA" or "ignore" branch, without fast retransmit;
    * no out-of-order data queued and the application has not closed: step 7 appends
      in order and nothing fills a gap.

    The effects, in the general steps' order: TS.Recent (RFC 7323 §4.3), SND.UNA, RTT
    and congestion window, the window update (snd_wl1/snd_wl2), then the text and the
    delayed-ACK decision.
    """
    tcb = c.tcb
    if tcb.state is not _ESTABLISHED or (seg.flags | PSH) != _ACK_PSH:
        return False
    seq: Seq = seg.seq  # type: ignore[assignment]  # the parser gives 32-bit values
    rcv_nxt = tcb.rcv_nxt
    if seq != rcv_nxt:
        return False
    timestamps = tcb.timestamps
    tsval = 0
    if timestamps:
        ts = seg.options.timestamps
        if ts is None:
            return False
        tsval = ts[0]
        if (tsval - tcb.ts_recent) & SEQ_MASK >= _HALF:
            return False  # PAWS: older than TS.Recent
    payload = seg.payload
    plen = len(payload)
    if plen:
        rcv_wnd = ((tcb.rcv_wup + tcb.rcv_wnd - rcv_nxt + _HALF) & SEQ_MASK) - _HALF
        if (
            plen > rcv_wnd
            or c.reasm
            or tcb.app_closed
            or tcb.rcv_nxt_offset + plen
            > c.rcv_buf.commit_offset + c.config.recv_buffer_size + RECV_OVERFILL
        ):
            return False
    ack: Seq = seg.ack  # type: ignore[assignment]
    snd_una = tcb.snd_una
    d_una = ((ack - snd_una + _HALF) & SEQ_MASK) - _HALF
    if d_una < 0 or tcb.snd_una_offset < 0 or tcb.fin_sent:
        return False
    flight = ((tcb.snd_nxt - snd_una + _HALF) & SEQ_MASK) - _HALF
    if d_una > flight:
        return False
    cc = c.cc
    if cc.in_recovery or cc.frto:
        return False  # (F-RTO: check_ack's _frto)
    if tcb.sack_permitted and (
        seg.options.sack_blocks or c.scoreboard.ranges or c.scoreboard.probe_end >= 0
    ):
        return False  # the scoreboard or a tail loss probe needs check_ack
    scaled_wnd = seg.window << tcb.snd_wscale
    if d_una == 0 and not plen and flight and scaled_wnd == tcb.snd_wnd:
        return False  # a duplicate ACK (RFC 5681 §2): counted by check_ack
    # --- Predicted: every check above passed, now the general steps' effects.
    d = c._dirty
    if (
        timestamps
        and tsval != tcb.ts_recent
        and (rcv_nxt == tcb.rcv_wup or (rcv_nxt - tcb.rcv_wup) & SEQ_MASK >= _HALF)
    ):
        tcb.ts_recent = tsval  # RFC 7323 §4.3 (2): SEG.SEQ <= Last.ACK.sent
        d["ts_recent"] = tsval
        c.ts_recent_at = now
    # Step 5 (check_ack).
    if d_una:
        new_una_off = tcb.snd_una_offset + d_una
        _output.rtt_sample_on_ack(c, seg, new_una_off, now)
        c._ack_sent_data(ack, new_una_off)
        if c.snd_ptr < new_una_off:
            c.snd_ptr = new_una_off
        c.retries = 0
        cc.on_ack(d_una)
        t = c.timers
        if d_una == flight:
            t.retransmit_at = None  # RFC 6298 (5.2)
            t.probe_at = None
        else:
            t.retransmit_at = now + c.rtt.rto  # RFC 6298 (5.3)
            if tcb.sack_permitted:
                _output.arm_probe(c, now)
    c.probes = 0
    if d_una or not tcb.sack_permitted:
        c.dupacks = 0  # (with SACK only a cumulative ACK resets the count, RFC 6675 §5)
    # RFC 9293 step 5 window update: SND.WL1 < SEG.SEQ or (SND.WL1 = SEG.SEQ and
    # SND.WL2 =< SEG.ACK); seq_lt(a, b) is ``(a - b) & SEQ_MASK >= _HALF``.
    wl1 = tcb.snd_wl1
    wl2 = tcb.snd_wl2
    if (wl1 - seq) & SEQ_MASK >= _HALF or (
        wl1 == seq and (wl2 == ack or (wl2 - ack) & SEQ_MASK >= _HALF)
    ):
        if scaled_wnd != tcb.snd_wnd:
            tcb.snd_wnd = scaled_wnd
            d["snd_wnd"] = scaled_wnd
            if scaled_wnd > tcb.max_window:
                tcb.max_window = scaled_wnd
                d["max_window"] = scaled_wnd
            if scaled_wnd:
                c.timers.persist_at = None
                c.persist_backoff = 0
        if wl1 != seq:
            tcb.snd_wl1 = seq
            d["snd_wl1"] = seq
        if wl2 != ack:
            tcb.snd_wl2 = ack
            d["snd_wl2"] = ack
    if not plen:
        return True
    # Step 7 (process_text), in order with no gap to fill.
    if plen > c.rcv_mss:
        c.rcv_mss = min(plen, c.config.mss)
    data = keep_payload(payload)
    off = tcb.rcv_nxt_offset
    c.rcv_buf.append(data)
    if not c._ev_readable:
        c._ev_readable = True
        c._events.append(_DATA_READABLE)
    new_off = off + plen
    new_rcv_nxt: Seq = (rcv_nxt + plen) & SEQ_MASK  # type: ignore[assignment]  # seq_add
    tcb.rcv_nxt = new_rcv_nxt
    tcb.rcv_nxt_offset = new_off
    d["rcv_nxt"] = new_rcv_nxt
    d["rcv_nxt_offset"] = new_off
    if tcb.ack_on_commit:
        # Neither stored nor acknowledged before the app commits it, unless it waits
        # longer than commit_wait (Connection._spill).
        if c.timers.delayed_ack_at is None:
            c.timers.delayed_ack_at = now + c.config.commit_wait
        return True
    c._rx_ops.append((off, data))
    c.rx_needs = c.version + 1
    delayed_ack_rule(c, plen, now)
    return True


def delayed_ack_rule(c: Connection, n: int, now: float) -> None:
    """``n`` more bytes to acknowledge: at once from the second full-sized segment's
    worth on, else within the delayed-ACK timeout (RFC 9293 §3.8.6.3, RFC 5681 §4.2)."""
    c.rcv_unacked += n
    if c.rcv_unacked >= 2 * c.rcv_mss:
        c.ack_now = True
    elif c.timers.delayed_ack_at is None:
        c.timers.delayed_ack_at = now + c.config.delayed_ack_timeout


def segment_arrives(c: Connection, seg: TcpSegment, now: float) -> None:
    """Run the RFC 9293 §3.10.7.4 steps for one segment."""
    tcb = c.tcb
    flags = seg.flags
    if flags & SYN and tcb.state is TcpState.SYN_RECEIVED and seg.seq == tcb.irs:
        if not flags & ACK:
            # A retransmitted SYN: our SYN-ACK was lost; answer it again (Linux).
            if not flags & RST:
                _output.send_syn(c, now, retransmit=True)
            return
        # Simultaneous open: the peer's SYN,ACK; its SYN is already accepted, so only
        # its ACK is news (RFC 9293 figure 8). Its window is not scaled (RFC 7323 §2.2,
        # a MUST), but check_ack scales what it reads: give it the window scaled down,
        # rounded down -- at most 2^snd_wscale - 1 bytes short, never more than offered.
        seg = seg._replace(
            seq=seq_add(Seq(seg.seq), 1),
            flags=flags & ~SYN,
            window=seg.window >> tcb.snd_wscale,
        )
        flags = seg.flags
    ts = seg.options.timestamps
    use_ts = ts is not None and tcb.timestamps and not flags & RST
    # (seq_lt(a, b) inlined below as ``(a - b) & SEQ_MASK >= _HALF``.)
    if (
        use_ts
        and (ts[0] - tcb.ts_recent) & SEQ_MASK >= _HALF  # type: ignore[index]
        and not _ts_recent_expired(c, now)
        and not _disordered_ack(c, seg, ts[0])  # type: ignore[index]
    ):
        # RFC 7323 §5.3 R1 (PAWS): an older TSval than TS.Recent is a duplicate. (A
        # TS.Recent idle for 24 days is invalid, §5.5: the segment goes on.)
        c.count("paws_drop")
        if flags & SYN:
            _output.challenge_ack(c, now)  # (RFC 5961 §7: rate-limited, as Linux)
        elif seg.payload or flags & FIN:
            c.ack_now = True
        else:
            # A pure ACK is answered at most once per interval, as every unacceptable
            # ACK (Linux tcp_oow_rate_limited): one whose TSval went back would
            # otherwise get an ACK for each of its own.
            _output.invalid_segment_ack(c, now)
        return
    accepted = check_sequence(c, seg, now)
    if accepted is None:
        return
    payload, off, fin = accepted
    if flags & RST:
        check_rst(c, seg, now)
        return
    if flags & SYN:
        check_syn(c, now)
        return
    if not flags & ACK:
        return  # RFC 9293 step 5: "if the ACK bit is off, drop the segment"
    if not check_ack(c, seg, now):
        return
    if use_ts:
        # RFC 7323 §4.3 (2): remember TSval if SEG.SEQ <= Last.ACK.sent (rcv_wup) -- only
        # from a segment found acceptable, its ACK included (a blind injection in the
        # window with a TSval 2**31 - 1 ahead, dropped for its ACK, would otherwise set
        # it, and PAWS would then drop the real peer's every segment; Linux bd090dfc634d).
        tsval = ts[0]  # type: ignore[index]
        if (
            tsval != tcb.ts_recent
            and (
                (tsval - tcb.ts_recent) & SEQ_MASK < _HALF  # (not a disordered ACK's)
                or _ts_recent_expired(c, now)
            )
            and seq_le(Seq(seg.seq), tcb.rcv_wup)
        ):
            c._set("ts_recent", tsval)
            c.ts_recent_at = now
    if payload:
        process_text(c, payload, off, now)
    if fin and tcb.state is not TcpState.CLOSED:
        check_fin(c, off + len(payload), now)


def _ts_recent_expired(c: Connection, now: float) -> bool:
    """TS.Recent was set more than 24 days ago (RFC 7323 §5.5): no longer valid."""
    return now - c.ts_recent_at > PAWS_IDLE_LIMIT


def _disordered_ack(c: Connection, seg: TcpSegment, tsval: int) -> bool:
    """A pure duplicate ACK overtaken by a later segment (Linux tcp_disordered_ack): at
    RCV.NXT, acknowledging SND.UNA, no window update, and a TSval at most an RTO older
    than TS.Recent. PAWS lets it through: it tells the sender of a duplicate ACK."""
    tcb = c.tcb
    if seg.payload or seg.flags & (SYN | FIN) or not seg.flags & ACK:
        return False
    seq = seg.seq
    if seq != tcb.rcv_nxt or seg.ack != tcb.snd_una:
        return False
    wl1 = tcb.snd_wl1
    if (wl1 - seq) & SEQ_MASK >= _HALF and wl1 != seq:
        return False  # SND.WL1 < SEG.SEQ: it may update the window
    if wl1 == seq and seg.window << tcb.snd_wscale > tcb.snd_wnd:
        return False
    return (tcb.ts_recent - tsval) & SEQ_MASK <= int(c.rtt.rto * 1000)


def receive_window(c: Connection) -> int:
    """RCV.WND: what is left of the window we advertised (right edge never moves left)."""
    tcb = c.tcb
    wnd = seq_diff(seq_add(tcb.rcv_wup, tcb.rcv_wnd), tcb.rcv_nxt)
    return wnd if wnd > 0 else 0


def check_sequence(
    c: Connection, seg: TcpSegment, now: float
) -> tuple[bytes | memoryview, int, bool] | None:
    """First: is the segment acceptable (RFC 9293 §3.10.7.4 table)? Trim it to the window.

    Returns ``(payload, offset of its first byte, FIN still inside)`` or None (dropped;
    an ACK is queued unless it was a RST, RFC 9293 / RFC 5961 §3.2).
    """
    tcb = c.tcb
    flags = seg.flags
    payload = seg.payload
    plen = len(payload)
    syn = 1 if flags & SYN else 0
    fin = bool(flags & FIN)
    seg_len = plen + syn + (1 if fin else 0)
    rcv_nxt = tcb.rcv_nxt
    # receive_window(c) and seq_diff(SEG.SEQ, RCV.NXT), inlined.
    wnd = ((tcb.rcv_wup + tcb.rcv_wnd - rcv_nxt + _HALF) & SEQ_MASK) - _HALF
    if wnd < 0:
        wnd = 0
    d = ((seg.seq - rcv_nxt + _HALF) & SEQ_MASK) - _HALF  # segment start relative to RCV.NXT
    if seg_len == 0:
        ok = d == 0 if wnd == 0 else 0 <= d < wnd
        if not ok and d < 0 and ((seg.seq - tcb.rcv_wup + _HALF) & SEQ_MASK) - _HALF >= 0:
            # An ACK sent before our last window update, overtaken by later segments:
            # from RCV.WUP on it is acceptable (Linux tcp_sequence), its ACK and window
            # count -- a reordered ACK is not dropped for an ACK in return.
            ok = True
    elif wnd == 0:
        ok = False
        if d == 0 and (plen or fin) and not syn:
            # "Special allowance ... to accept valid ACKs, URGs, and RSTs": process the
            # control information, drop the text (and a FIN: it comes again once the
            # window opens), and tell the peer the window is zero.
            c.ack_now = True
            return b"", tcb.rcv_nxt_offset, False
    else:
        end = d + seg_len - 1
        ok = (0 <= d < wnd) or (0 <= end < wnd)
    if not ok:
        if not flags & RST:
            c.count("out_of_window")
            if flags & SYN:
                _output.challenge_ack(c, now)  # RFC 5961 §4.2
            elif seg_len:
                c.ack_now = True  # data is no part of an ACK war: answered every time
                if (
                    plen
                    and d < 0
                    and tcb.sack_permitted
                    and (
                        not tcb.ack_on_commit
                        or tcb.rcv_nxt_offset + d + syn + plen <= c.ack_offset()
                    )
                ):
                    # RFC 2883: tell the sender it was a duplicate (D-SACK) -- with
                    # ack-on-commit only below the ACK (above, a block that reads as
                    # SACK next to bytes the ACK leaves out: see process_text).
                    c.dsack = (seg.seq, (seg.seq + plen) & SEQ_MASK)
            else:
                _output.invalid_segment_ack(c, now)
            if fin and tcb.state is TcpState.TIME_WAIT:
                # RFC 9293: a retransmitted FIN in TIME-WAIT restarts the 2 MSL timeout.
                c.timers.time_wait_at = now + c.config.time_wait_timeout
        return None
    off = tcb.rcv_nxt_offset + d + syn  # stream offset of the first payload byte
    if off < tcb.rcv_nxt_offset:
        cut = tcb.rcv_nxt_offset - off
        payload = payload[cut:]
        off = tcb.rcv_nxt_offset
        if (
            cut <= plen
            and tcb.sack_permitted
            and (not tcb.ack_on_commit or tcb.rcv_nxt_offset <= c.ack_offset())
        ):
            c.dsack = ((rcv_nxt - cut) & SEQ_MASK, rcv_nxt)  # RFC 2883: the part we had
            c.ack_now = True
    limit = tcb.rcv_nxt_offset + wnd
    # ... and to the buffer (G6), with ``RECV_OVERFILL`` to spare: the window's edge is
    # rounded up to the scale unit (_output.advertise_window), so it may offer up to
    # 2**ws - 1 bytes more than the buffer holds, and again after each ACK: a peer
    # that sends less than a unit per ACK would find it never shrinking, and fill
    # without limit a buffer nobody reads. (Not at the buffer's very end: a window
    # that offers what is then refused never closes, and the peer never probes.)
    room = c.rcv_buf.commit_offset + c.config.recv_buffer_size + RECV_OVERFILL
    if room < limit:
        limit = room
    if off + len(payload) > limit:
        payload = payload[: max(0, limit - off)]
        fin = False
        c.ack_now = True  # the window, as it really is
    elif fin and off + len(payload) + 1 > limit:
        fin = False
    return payload, off, fin


def check_rst(c: Connection, seg: TcpSegment, now: float) -> None:
    """Second: RST (RFC 5961 §3.2): reset only if SEG.SEQ == RCV.NXT exactly, else a
    (rate-limited) challenge ACK."""
    tcb = c.tcb
    if seg.seq != tcb.rcv_nxt:
        _output.challenge_ack(c, now)
        return
    state = tcb.state
    c.count("rst_received")
    if state is TcpState.SYN_RECEIVED:
        c.emit(Reset(refused=True))
    elif state in (
        TcpState.ESTABLISHED,
        TcpState.FIN_WAIT_1,
        TcpState.FIN_WAIT_2,
        TcpState.CLOSE_WAIT,
    ):
        c.emit(Reset())
    c._set_state(TcpState.CLOSED, "RST")


def check_syn(c: Connection, now: float) -> None:
    """Fourth: a SYN in a synchronized state gets a challenge ACK (RFC 5961 §4.2)."""
    _output.challenge_ack(c, now)


def _accept_earlier_send(c: Connection, ack: Seq, d_una: int) -> Seq:
    """Restored: an ACK past SND.NXT of bytes the incarnation before us sent, whose
    SND.NXT never reached the store (``Connection.restore``, ``maybe_sent_end``). The
    peer has them: SND.NXT moves up to its ACK. An ACK of the FIN that followed them:
    if the restored state has our FIN queued (FIN-WAIT-1, CLOSING, LAST-ACK:
    ``fin_maybe_sent``), the FIN left too and the peer has it -- taken whole, or every
    ACK of the peer, all past SND.NXT, would be dropped and the connection hang;
    otherwise it counts up to the bytes only (returned): the app closes again, the FIN
    goes again and the peer acknowledges it again."""
    tcb = c.tcb
    end = tcb.snd_una_offset + d_una
    if c.fin_maybe_sent and end == c.snd_buf.end_offset + 1 and tcb.state in FIN_QUEUED:
        c.count("ack_of_earlier_fin")
        c.fin_maybe_sent = False
        c._advance_snd_nxt(end)
        c._set("fin_sent", True)
        return ack
    if end == c.maybe_sent_end + 1:
        end -= 1
        ack = seq_add(ack, -1)
    if c.snd_nxt_offset() < end <= c.maybe_sent_end:
        c.count("ack_of_earlier_send")
        c._advance_snd_nxt(end)
    return ack


def sent_bytes_lost(c: Connection, seg: TcpSegment, d_nxt: int, now: float) -> bool:
    """Whether this ACK, ``d_nxt`` past SND.NXT on a restored connection that has seen
    no ACK of new data yet (``sent_lost_watch``), proves that the peer has bytes we
    sent which the store no longer holds; if so the connection is reset (RST,
    ``Aborted``) and True returned.

    The peer's ACK names its RCV.NXT. Past everything the restored record holds
    (``_accept_earlier_send`` took what the record may have sent), it means the crash
    lost sent bytes whose delta had not landed (async durability), or the store went
    back to an older state of the flow (Redis restarted from an older AOF, a failover
    that lost writes) -- in strict mode a segment leaves only once its bytes are
    stored. The peer can never go back: every ACK it sends is past SND.NXT and dropped
    (RFC 9293 §3.10.7.4), our retransmissions are old data to it, and the connection
    would hang until our retransmissions gave up. The proof is such an ACK coming
    again ``LOST_ACK_PROOF`` or more after the first (our restore's retransmission and
    ACK make the peer answer): a forged or stray one is not repeated. The RST takes
    <SEQ=SEG.ACK>, the peer's RCV.NXT: our SND.NXT is below its window (RFC 5961 §3.2).
    """
    if now > c.loss_watch_until:
        c.sent_lost_watch = False  # (strict: a loss shows at once after the restore)
        return False
    since = c.sent_lost_since
    if since < 0.0 or seg.ack != c.sent_lost_ack:
        c.sent_lost_since = now  # the peer's RCV.NXT: the same in every answer
        c.sent_lost_ack = seg.ack
        return False
    if now - since < LOST_ACK_PROOF:
        return False
    c.count("sent_bytes_lost")
    _output.send_rst(c, Seq(seg.ack), with_ack=True, now=now)
    c.emit(
        Aborted(
            f"the peer acknowledges {d_nxt} bytes past what the store held: bytes sent "
            "before a crash were lost (async durability, or the store went back to an "
            "older state)"
        )
    )
    c._set_state(TcpState.CLOSED, "sent bytes lost in a crash")
    return True


def check_ack(c: Connection, seg: TcpSegment, now: float) -> bool:
    """Fifth: the ACK field. Returns False if the segment must be dropped."""
    tcb = c.tcb
    ack = Seq(seg.ack)
    if tcb.snd_una_offset < 0:
        # Our SYN is not acknowledged yet (SYN-RECEIVED, or FIN-WAIT-1 entered from it).
        if not (seq_lt(tcb.snd_una, ack) and seq_le(ack, tcb.snd_nxt)):
            _output.send_rst(c, ack, with_ack=False, now=now)  # RFC 9293 step 5
            return False
        _output.rtt_sample_on_ack(c, seg, 0, now)
        c._ack_sent_data(seq_add(tcb.iss, 1), 0)
        c.snd_ptr = 0
        c.retries = 0
        c.timers.retransmit_at = None
        c._set("snd_wnd", seg.window << tcb.snd_wscale)
        c._set("snd_wl1", Seq(seg.seq))
        c._set("snd_wl2", ack)
        if tcb.snd_wnd > tcb.max_window:
            c._set("max_window", tcb.snd_wnd)
        if tcb.state is TcpState.SYN_RECEIVED:
            c._set_state(_ESTABLISHED, "ACK of SYN")
        c.emit(Connected())
    # seq_diff(ack, SND.UNA) and seq_diff(ack, SND.NXT), inlined.
    d_una = ((ack - tcb.snd_una + _HALF) & SEQ_MASK) - _HALF
    d_nxt = ((ack - tcb.snd_nxt + _HALF) & SEQ_MASK) - _HALF
    if d_nxt > 0 and (c.maybe_sent_end or c.fin_maybe_sent):
        ack = _accept_earlier_send(c, ack, d_una)
        d_una = ((ack - tcb.snd_una + _HALF) & SEQ_MASK) - _HALF
        d_nxt = ((ack - tcb.snd_nxt + _HALF) & SEQ_MASK) - _HALF
    if d_nxt > 0:
        # RFC 9293 / RFC 5961 §5.2: acknowledges something not yet sent: ACK, drop.
        if c.sent_lost_watch and sent_bytes_lost(c, seg, d_nxt, now):
            return False
        c.count("ack_too_new")
        if seg.payload:
            c.ack_now = True
        else:
            _output.invalid_segment_ack(c, now)
        return False
    if d_una < -tcb.max_window:
        # RFC 5961 §5.2: older than the largest window ever seen: blind-injection guard.
        c.count("ack_too_old")
        _output.challenge_ack(c, now)
        return False
    scaled_wnd = seg.window << tcb.snd_wscale
    # RFC 5681 §2 duplicate ACK (as far as this segment shows it; judged before the
    # window update below, which would make every window equal).
    duplicate = (
        d_una == 0 and not seg.payload and not seg.flags & (SYN | FIN) and scaled_wnd == tcb.snd_wnd
    )
    una_off = tcb.snd_una_offset
    board = c.scoreboard
    sack_news = False  # this ACK SACKed bytes not SACKed before
    sacked_before = board.sacked_bytes() if board.ranges else 0
    if tcb.sack_permitted and seg.options.sack_blocks:
        sack_news = _update_scoreboard(c, seg, una_off)
        if c.cc.undo_retrans > 0:
            _check_dsack(c, seg, ack, una_off)
    if d_una > 0:
        new_una_off = una_off + d_una
        flight_before = c.snd_nxt_offset() - una_off
        _output.rtt_sample_on_ack(c, seg, new_una_off, now)
        c._ack_sent_data(ack, new_una_off)
        if c.snd_ptr < new_una_off:
            c.snd_ptr = new_una_off
        c.retries = 0
        c.probes = 0
        c.dupacks = 0
        if board.ranges:
            board.trim(new_una_off)
        # What the peer got (RFC 6937 DeliveredData): newly acknowledged plus newly
        # SACKed bytes (SACKed bytes now acknowledged count once).
        delivered = d_una + (board.sacked_bytes() if board.ranges else 0) - sacked_before
        cc = c.cc
        # (a tail loss probe's loss repair reduces cwnd; it is not grown by this ACK)
        repaired = board.probe_end >= 0 and new_una_off >= board.probe_end
        if repaired:
            repaired = _probe_acked(c, seg, ack, new_una_off > board.probe_end)
        if cc.in_recovery:
            if cc.rxt_tsval >= 0:
                _detect_spurious(c, seg)
            if new_una_off >= cc.recover_offset:
                # RFC 6582 §3.2 step 3 full ACK (RFC 6937 with SACK)
                cc.exit_recovery(flight_before - d_una, d_una, prr=tcb.sack_permitted)
                board.end_recovery()
            elif not tcb.sack_permitted:
                cc.on_partial_ack(d_una)  # RFC 6582 §3.2 step 3 partial ACK
                # The segment at the new SND.UNA -- unless the fast retransmit was
                # needless: then the segments after it are on their way too, and
                # resending each in turn as its partial ACK comes would resend the
                # whole window.
                if not cc.spurious:
                    _output.retransmit_first(c, now)
            elif not board.ranges:
                # Nothing SACKed above the new SND.UNA: NewReno's segment there,
                # unless the fast retransmit was needless (as above).
                if not cc.spurious:
                    _output.retransmit_first(c, now)
                _prr_send(c, delivered, now)
            else:
                # Lost resends and holes as the reduction allows, then new data;
                # else RFC 6675 NextSeg rule 3: the first unSACKed segment, even if
                # not deemed lost yet -- or nothing more may ever come to say it is.
                resent = cc.prr_rxt
                _prr_send(c, delivered, now)
                if cc.prr_rxt == resent and board.high_rxt <= new_una_off:
                    _output.retransmit_first(c, now)
        else:
            if not repaired:
                cc.on_ack(d_una)
            if sack_news and board.ranges:
                # RFC 6675 §5: an ACK that SACKs new bytes (above the new SND.UNA)
                # is a duplicate ACK "regardless of its status as a cumulative
                # acknowledgment".
                _on_dupack(c, new_una_off, now, delivered)
        t = c.timers
        if tcb.snd_una == tcb.snd_nxt:
            t.retransmit_at = None  # RFC 6298 (5.2)
            t.probe_at = None
        else:
            t.retransmit_at = now + c.rtt.rto  # RFC 6298 (5.3)
            if tcb.sack_permitted:
                _output.arm_probe(c, now)
    elif d_una == 0:
        c.probes = 0
        if board.probe_end >= 0 and una_off >= board.probe_end:
            _probe_dupack(c, seg, ack, sack_news, scaled_wnd)
        if tcb.snd_una == tcb.snd_nxt:
            pass
        elif tcb.sack_permitted:
            # RFC 6675 §2 DupAck: one that SACKs new bytes. A D-SACK alone reports a
            # duplicate arrival, not a segment that left the network: no fast
            # retransmit on duplication. Only cumulative ACKs reset the count.
            if sack_news:
                _on_dupack(c, una_off, now, board.sacked_bytes() - sacked_before)
        elif duplicate:
            _on_dupack(c, una_off, now, tcb.mss)  # RFC 5681 §2 duplicate ACK
        else:
            c.dupacks = 0
    # RFC 9293 step 5: window update if the segment is not older than the last one:
    # SND.WL1 < SEG.SEQ or (SND.WL1 = SEG.SEQ and SND.WL2 =< SEG.ACK), inlined.
    seq: Seq = seg.seq  # type: ignore[assignment]  # the parser gives 32-bit values
    wl1 = tcb.snd_wl1
    wl2 = tcb.snd_wl2
    if d_una >= 0 and (
        (wl1 - seq) & SEQ_MASK >= _HALF
        or (wl1 == seq and (wl2 == ack or (wl2 - ack) & SEQ_MASK >= _HALF))
    ):
        if scaled_wnd != tcb.snd_wnd:
            c._set("snd_wnd", scaled_wnd)
            if scaled_wnd > tcb.max_window:
                c._set("max_window", scaled_wnd)
            if scaled_wnd:
                c.timers.persist_at = None
                c.persist_backoff = 0
        if wl1 != seq:
            c._set("snd_wl1", seq)
        if wl2 != ack:
            c._set("snd_wl2", ack)
    if c.cc.frto:
        # SACK-enhanced F-RTO (RFC 5682 §3; Linux): an ACK that SACKs new data without
        # advancing SND.UNA says what a duplicate ACK says, even when it also opens the
        # window (the peer's reader drained what arrived in order)
        _frto(c, d_una, duplicate or sack_news)
    # State-specific processing of our FIN being acknowledged.
    if tcb.fin_sent and tcb.snd_una == tcb.snd_nxt:
        state = tcb.state
        if state is TcpState.FIN_WAIT_1:
            c._set_state(TcpState.FIN_WAIT_2, "ACK of FIN")
            if tcb.app_closed:
                _output.arm_orphan_timer(c, now)
        elif state is TcpState.CLOSING:
            c._set_state(TcpState.TIME_WAIT, "ACK of FIN")
            return False
        elif state is TcpState.LAST_ACK:
            c._set_state(TcpState.CLOSED, "ACK of FIN")
            return False
    return True


def _on_dupack(c: Connection, una_off: int, now: float, delivered: int) -> None:
    """A duplicate ACK: fast retransmit at the third (or once the peer SACKed more
    than two segments' worth above SND.UNA), one segment out per further one in
    recovery. Before the third, Limited Transmit (RFC 3042) lets one new segment out
    each (``send_data``), so that a small window still brings three."""
    tcb = c.tcb
    cc = c.cc
    board = c.scoreboard
    c.dupacks += 1
    nxt_off = c.snd_nxt_offset()
    if cc.in_recovery:
        if tcb.sack_permitted:
            _prr_send(c, delivered, now)
        else:
            cc.on_dupack_in_recovery()  # RFC 5681 §3.2 step 4: inflation
    elif (
        c.dupacks >= _dup_thresh(c, una_off, nxt_off)
        or (board.ranges and board.sacked_bytes() > (sack.DUP_THRESH - 1) * tcb.mss)
    ) and una_off >= cc.recover_offset:
        # RFC 5681 §3.2 steps 2-3, RFC 6582 §3.2 step 2: fast retransmit; with SACK
        # also once more than two segments' worth above SND.UNA arrived (RFC 6675 §5:
        # IsLost(HighACK + 1)).
        _fast_retransmit(c, una_off, nxt_off, now, delivered)
    elif tcb.sack_permitted:
        _output.arm_probe(c, now)  # (with a hole SACKed around: the reordering timer)


def _fast_retransmit(c: Connection, una_off: int, nxt_off: int, now: float, delivered: int) -> None:
    """Enter fast recovery and resend the segment at SND.UNA (RFC 5681 §3.2 steps 2-3,
    RFC 6582 §3.2 step 2), then what proportional rate reduction lets out with SACK."""
    tcb = c.tcb
    cc = c.cc
    board = c.scoreboard
    c.count("fast_retransmit")
    cc.enter_recovery(nxt_off - una_off, nxt_off)
    c.timers.probe_at = None
    # The recovery's own reduction ends a tail loss probe episode (Linux resets
    # tlp_high_seq in tcp_init_cwnd_reduction): one response per loss event.
    board.probe_end = -1
    board.probe_resent = False
    _output.retransmit_first(c, now)
    if tcb.timestamps:
        cc.rxt_tsval = c.tsval(now)
    if tcb.sack_permitted:
        _prr_send(c, delivered, now)


def on_reorder_timeout(c: Connection, now: float) -> None:
    """RACK's reordering timer (RFC 8985 §6.3; Linux ``tcp_rack_reo_timeout``) in its
    simplest form: SACKs showed a hole at SND.UNA, too few of them for the duplicate
    ACK threshold, and no ACK has come for a quarter of an RTT since (``arm_probe``).
    Data sent after the hole's segment has arrived and that segment has not: it is
    deemed lost, and fast recovery starts -- not the retransmission timeout, 200 ms
    at least, with its go-back-N and a window of one."""
    tcb = c.tcb
    cc = c.cc
    una_off = tcb.snd_una_offset
    nxt_off = c.snd_nxt_offset()
    if cc.in_recovery or not c.scoreboard.ranges or nxt_off <= una_off:
        return
    if una_off < cc.recover_offset:
        return  # still repairing after a timeout (arm_probe arms nothing then)
    c.count("reorder_timeout")
    _fast_retransmit(c, una_off, nxt_off, now, 0)


def _prr_send(c: Connection, delivered: int, now: float) -> None:
    """Proportional rate reduction (RFC 6937) for an ACK in a SACK recovery: of the
    bytes it lets out, lost resends and holes deemed lost first (RFC 6675 NextSeg rule
    1), the rest as new data (``cwnd`` leaves room for just that much beyond SND.NXT).
    Unlike NewReno's inflation, which sends nothing new for the first half of the
    window, new data keeps going from the start: a resend lost in its turn is then
    found when later data is SACKed (``Scoreboard.lost_resend``)."""
    tcb = c.tcb
    cc = c.cc
    board = c.scoreboard
    una_off = tcb.snd_una_offset
    nxt_off = c.snd_nxt_offset()
    pipe = board.pipe(una_off, nxt_off, (sack.DUP_THRESH - 1) * tcb.mss)
    new_sent = nxt_off - cc.recover_offset
    sndcnt = cc.prr_sndcnt(delivered, pipe, new_sent if new_sent > 0 else 0)
    while sndcnt > 0 and board.ranges:
        resent = cc.prr_rxt
        if not (_output.retransmit_lost_resend(c, now) or _output.retransmit_hole(c, now)):
            break
        sndcnt -= cc.prr_rxt - resent
    cc.cwnd = nxt_off - una_off + (sndcnt if sndcnt > 0 else 0)


def _dup_thresh(c: Connection, una_off: int, nxt_off: int) -> int:
    """Duplicate ACKs that start a fast retransmit: 3, or with fewer than four
    segments in flight and no new data to send, one less than those segments (Early
    Retransmit, RFC 5827): a short reply whose last segments are lost gets its
    duplicate ACKs only from them (a tail loss probe brings the first)."""
    mss = c.tcb.mss
    flight = nxt_off - una_off
    if flight >= sack.DUP_THRESH * mss + mss or c.snd_buf.end_offset > nxt_off:
        return sack.DUP_THRESH
    segments = -(-flight // mss)  # ceil
    return max(1, segments - 1)


def _dsack_block(seg: TcpSegment, ack: int) -> tuple[int, int] | None:
    """The ACK's D-SACK block (RFC 2883 §4): its first SACK block, if that lies below
    the cumulative ACK or within the second block; else None."""
    blocks = seg.options.sack_blocks
    if not blocks:
        return None
    left, right = blocks[0]
    if ((ack - right) & SEQ_MASK) < _HALF:
        return left, right
    if len(blocks) > 1:
        left2, right2 = blocks[1]
        if ((left - left2) & SEQ_MASK) < _HALF and ((right2 - right) & SEQ_MASK) < _HALF:
            return left, right
    return None


def _dsacks(seg: TcpSegment, ack: int) -> bool:
    """Whether the ACK carries a D-SACK (RFC 2883 §4)."""
    return _dsack_block(seg, ack) is not None


def _check_dsack(c: Connection, seg: TcpSegment, ack: int, una_off: int) -> None:
    """A D-SACK reports bytes that arrived twice. Once every byte the last recovery
    resent has been so reported, the originals had all arrived: the recovery was
    needless and its window cut is undone (RFC 3708 §3 detection, RFC 4015 response;
    Linux ``tcp_try_undo_dsack``). It works without timestamps, where Eifel detection
    (``_detect_spurious``) cannot, and also after the recovery has ended: a D-SACK
    comes a round trip after the resend it reports."""
    block = _dsack_block(seg, ack)
    if block is None:
        return
    snd_una = c.tcb.snd_una
    start = una_off + (((block[0] - snd_una + _HALF) & SEQ_MASK) - _HALF)
    end = una_off + (((block[1] - snd_una + _HALF) & SEQ_MASK) - _HALF)
    cc = c.cc
    if cc.on_dsack(start, end):
        cc.undo()
        c.count("dsack_undo")


def _probe_acked(c: Connection, seg: TcpSegment, ack: int, beyond: bool) -> bool:
    """An ACK that covers a tail loss probe (RFC 8985 §7.4; Linux
    ``tcp_process_tlp_ack``). A probe of new data, or one whose resend comes back
    D-SACKed (the original arrived too), ends the episode: no loss. An ACK beyond the
    probe's end without either means the probe repaired a loss: the congestion window
    is halved as for one; returns True then. An ACK of exactly the probe's end leaves
    the episode open: the duplicate ACK the resend gets if the original arrived too
    may follow (``_probe_dupack``)."""
    board = c.scoreboard
    repaired = False
    if board.probe_resent and not _dsacks(seg, ack):
        if not beyond:
            return False
        c.cc.on_probe_repair()
        c.count("probe_recovery")
        repaired = True
    board.probe_end = -1
    board.probe_resent = False
    return repaired


def _probe_dupack(
    c: Connection, seg: TcpSegment, ack: int, sack_news: bool, scaled_wnd: int
) -> None:
    """A duplicate ACK once a resent probe is acknowledged: with a D-SACK, or a pure
    duplicate (no data, no new SACK, the same window), it answers the needless resend --
    the original had arrived; the episode ends without a loss (Linux: "TLP dupack")."""
    board = c.scoreboard  # (only a resent probe's episode outlives the ACK of its end)
    pure = not seg.payload and not sack_news and scaled_wnd == c.tcb.snd_wnd
    if _dsacks(seg, ack) or pure:
        board.probe_end = -1
        board.probe_resent = False


def _frto(c: Connection, d_una: int, duplicate: bool) -> None:
    """Forward RTO-Recovery (RFC 5682 §2; Linux ``tcp_process_loss``), the ACKs after
    a first timeout's retransmission. A timeout can be spurious: the segments and
    their ACKs were only late (a delay spike, a stalled process), and then going back
    to SND.UNA resends a whole window the peer has or is about to get. So:

    * step 2, the first ACK: a duplicate, or one that acknowledges all that was out at
      the timeout (``recover_offset``), says nothing either way -- the usual go-back-N
      goes on (2a). One that acknowledges part of it (2b) lets up to two *new* segments
      out instead of resending the next old ones (go-back-N waits; with no new data
      to send, or no room in the peer's window, 2a after all);
    * step 3, the next ACK: if it acknowledges data, data sent before the timeout and
      never resent arrived -- the timeout was spurious: ``undo_rto`` (3b), and new data
      goes on; a duplicate ACK means the rest was lost -- back to SND.UNA with at most
      three segments (3a).

    ``duplicate`` is also set by the caller for an ACK that SACKs new data (RFC 5682
    §3): a peer whose reader drains what arrived in order opens its window with every
    ACK, so none of them is a duplicate by RFC 5681's letter, and F-RTO would wait in
    step 3 with only new data allowed out -- the connection stalled until the next,
    backed-off, timeout (seen after a 5 s store outage: 5 segments per ~7 s)."""
    cc = c.cc
    tcb = c.tcb
    mss = tcb.mss
    if d_una <= 0:
        if not duplicate:
            return  # (data, a window update, an old ACK): no news about the timeout
        if cc.frto == 2:
            c.snd_ptr = tcb.snd_una_offset  # (3a) go back: the timeout was real,
            if cc.cwnd > 3 * mss:  # with at most three segments
                cc.cwnd = 3 * mss
            c.dupacks = 0  # (no Limited Transmit on top: these are resends)
        cc.frto = 0
        return
    una_off = tcb.snd_una_offset
    nxt_off = c.snd_nxt_offset()
    if cc.frto == 2:
        c.count("spurious_rto")
        cc.undo_rto(nxt_off - una_off, d_una)  # (3b)
        c.snd_ptr = nxt_off
        return
    if una_off >= cc.recover_offset or c.snd_buf.end_offset <= nxt_off:
        cc.frto = 0  # (2a)
        return
    room = min(tcb.snd_wnd, nxt_off - una_off + 2 * mss)
    if una_off + room <= nxt_off:
        cc.frto = 0  # (2a: the peer's window has no room for new data)
        return
    cc.frto = 2  # (2b) up to two new segments, not the old ones after SND.UNA
    cc.cwnd = nxt_off - una_off + 2 * mss
    c.snd_ptr = nxt_off


def _detect_spurious(c: Connection, seg: TcpSegment) -> None:
    """The first ACK of new data in a fast recovery: if it echoes a timestamp older
    than our fast retransmission's, the original segment filled the hole, not the
    retransmission -- it was late, not lost (Eifel detection, RFC 3522; Linux
    ``tcp_packet_delayed``), and the window cut is undone (RFC 4015, ``NewReno.undo``).
    Equal timestamps (the same millisecond) prove nothing. (Linux's
    ``tcp_try_undo_partial`` also waits while other resends are out -- holes SACKs
    showed lost, which the first one's being late says nothing of. Refusing the undo
    outright then cut every window of a reordering path: the 5 % reordering simulation
    took 0.76 s instead of 0.04 s. A review's finding, left open.)"""
    cc = c.cc
    ts = seg.options.timestamps
    if ts is not None and ts[1] and ((ts[1] - cc.rxt_tsval) & SEQ_MASK) >= _HALF:
        cc.undo()
        c.count("spurious_fast_retransmit")
    cc.rxt_tsval = -1


def _update_scoreboard(c: Connection, seg: TcpSegment, una_off: int) -> bool:
    """Record the SACK blocks of an acceptable ACK (RFC 2018 §3, RFC 6675 §3) as
    stream offsets; blocks outside SND.UNA..SND.NXT are ignored (RFC 2883 D-SACK too).
    Returns whether any byte was newly SACKed."""
    tcb = c.tcb
    snd_una = tcb.snd_una
    blocks = [
        (
            una_off + (((left - snd_una + _HALF) & SEQ_MASK) - _HALF),
            una_off + (((right - snd_una + _HALF) & SEQ_MASK) - _HALF),
        )
        for left, right in seg.options.sack_blocks
    ]
    if c.scoreboard.update(una_off, c.snd_nxt_offset(), blocks):
        c.count("sack_blocks_received")
        return True
    return False


def process_text(c: Connection, payload: bytes | memoryview, off: int, now: float) -> None:
    """Seventh: segment text (RFC 9293 step 7; delayed ACK per RFC 9293 §3.8.6.3)."""
    tcb = c.tcb
    if tcb.state not in _RECV_TEXT_STATES:
        return  # CLOSE-WAIT, CLOSING, LAST-ACK, TIME-WAIT: "should not occur; ignore"
    if tcb.app_closed:
        # Linux: data for a socket the application has closed is answered with RST.
        c.count("data_after_close")
        _output.send_rst(c, tcb.snd_nxt, with_ack=True, now=now)
        c._set_state(TcpState.CLOSED, "data after close")
        return
    plen = len(payload)
    if plen > c.rcv_mss:
        c.rcv_mss = min(plen, c.config.mss)
    rcv_off = tcb.rcv_nxt_offset
    aoc = tcb.ack_on_commit
    if off != rcv_off:
        # Out of order: queue, and send an immediate duplicate ACK (RFC 5681 §4.2) --
        # with ack-on-commit only while it names the hole.
        reasm = c.reasm
        took = reasm.insert(off, payload)
        if tcb.sack_permitted:
            if aoc:
                # Make it name the hole: store and acknowledge the uncommitted bytes
                # below (as the strict mode would have), so that the SACK blocks lie
                # above a hole, not next to bytes the ACK leaves out -- which a Linux
                # sender would take for reneging, and resend. Losses are rare; a
                # restored connection's is the one that counts: the peer resends its
                # lost tail at these blocks (RACK), not at its backed-off timer.
                c._spill()
            sack.note_arrival(c.sack_recent, off)  # its block is reported first
            if not took and payload:
                # all of it was held already: a D-SACK block for it (RFC 2883 §4.1.3) --
                # not for a piece the charge pruned at once, which is not held at all
                start = (tcb.rcv_nxt + off - rcv_off) & SEQ_MASK
                c.dsack = (start, (start + len(payload)) & SEQ_MASK)
        if not aoc or c.ack_point() == tcb.rcv_nxt:
            c.ack_now = True
        return
    fin_at = c.reasm.fin_offset
    if fin_at is not None and off + plen > fin_at:
        # Past an out-of-order FIN: the stream ends there (a broken peer's bytes).
        payload = payload[: max(0, fin_at - off)]
        plen = len(payload)
        if not plen:
            return
    data = keep_payload(payload)
    c._rx_append(off, data)
    new_off = off + plen
    reasm = c.reasm
    filled = bool(reasm)
    if filled:
        # Fills (part of) a gap: ACK immediately (RFC 5681 §4.2).
        c.ack_now = not aoc
        for chunk in reasm.pop_from(new_off):
            c._rx_append(new_off, chunk)
            new_off += len(chunk)
    c._advance_rcv(new_off)
    if reasm.fin_offset is not None and reasm.fin_offset == new_off:
        reasm.fin_offset = None
        check_fin(c, new_off, now)
        return
    if aoc and filled and tcb.sack_permitted:
        # A loss being repaired: acknowledge at once as the strict mode does (spill),
        # so the peer's recovery moves on and any blocks left name a hole.
        c._spill()
        c.ack_now = True
        return
    if aoc:
        # Acknowledged when committed (Connection._commit_to), or spilled after
        # commit_wait (Connection._spill).
        if c.timers.delayed_ack_at is None:
            c.timers.delayed_ack_at = now + c.config.commit_wait
        return
    delayed_ack_rule(c, plen, now)


LOSS_WATCH = 30.0
"""Seconds after a strict restore during which the loss proofs may come (a store gone
back shows at once: the peer answers the restore's kick)."""
LOST_ACK_PROOF = 0.2
"""Seconds between arrivals of the same lowest offset above the restored RCV.NXT that
count as resends from there (``acked_bytes_lost``; two prove it): longer than a
duplicated packet's lag, no longer than Linux's smallest retransmission timeout
(200 ms), which is what makes the peer resend. (``sent_bytes_lost`` takes the same
interval between the peer's ACKs past our record.)"""


def acked_bytes_lost(c: Connection, seg: TcpSegment, now: float) -> bool:
    """Whether this data segment proves that the crash before a restore lost bytes the
    old process had acknowledged (``Connection.restore(acked_may_be_lost=True)``, async
    durability); if so the connection is reset (RST, ``Aborted``) and True returned.

    A peer that still holds the bytes from the restored RCV.NXT (``lost_ack_watch``)
    sends them again -- they were never acknowledged, or their ACK died with the old
    process -- and RCV.NXT moves: the watch ends. A peer that discarded them, because
    the old process acknowledged them before their write reached the store, never can:
    its SND.UNA is above our RCV.NXT, our ACKs are older than it (RFC 9293 ignores
    them), and its retransmission timer resends from its SND.UNA, above the gap,
    forever -- often beyond our window, where no segment gets past the acceptability
    test. So the proof is the lowest offset above the gap the peer has sent since the
    restore arriving again, twice, each ``LOST_ACK_PROOF`` or more after the one before.
    (A peer that still had the gap resends it at its retransmission timeout: that
    starts at its SND.UNA, our RCV.NXT. Before that, a tail loss probe -- RFC 8985 §7,
    Linux too -- may resend its last segment, above the gap, once: one resend proves
    nothing. It reset a healthy strict connection so, found by the crash fuzz, seed
    3,603,348: a relay's upstream whose echoes died with the crash.)
    """
    tcb = c.tcb
    watch = c.lost_ack_watch
    if watch is None or tcb.rcv_nxt_offset != watch or not tcb.state.can_recv():
        c.lost_ack_watch = c.gap_start = None  # RCV.NXT moved: the peer had the bytes
        return False
    if seg.flags & (SYN | RST):
        return False
    if now > c.loss_watch_until:
        # Strict: only just after the restore (a store gone back shows at once), so that
        # two blind segments cannot reset a healthy connection later. (No ACK check: the
        # same loss may have taken bytes we sent, so the peer's ACK is past ours too.)
        c.lost_ack_watch = c.gap_start = None
        return False
    off = watch + seq_diff(Seq(seg.seq), tcb.rcv_nxt)
    if off <= watch:
        return False  # from RCV.NXT (or below): the steps below move it
    start = c.gap_start
    if start is None or off < start:
        c.gap_start = off
        c.gap_since = now
        c.gap_resends = 0
        return False
    if off == c.window_test_off and start < off:
        # A window test at SEG.SEQ + 1 that the peer took after it had sent new data
        # from SEG.SEQ moved its SND.UNA there (test_window_above_gap).
        c.gap_start = off
        c.gap_since = now
        c.gap_resends = 0
        c.window_test_off = None
        return False
    if off != start or now - c.gap_since < LOST_ACK_PROOF:
        return False
    c.gap_since = now
    c.gap_resends += 1
    if c.gap_resends < 2:
        return False
    c.count("acked_bytes_lost")
    # <SEQ=SEG.ACK>: what the peer expects from us. The crash may have lost bytes we
    # sent too, and a RST at our restored SND.NXT, below the peer's RCV.NXT, would be
    # outside its window and dropped (RFC 5961 §3.2); at SEG.ACK it is exactly in step.
    rst_seq = Seq(seg.ack) if seg.flags & ACK else tcb.snd_nxt
    _output.send_rst(c, rst_seq, with_ack=True, now=now)
    c.emit(
        Aborted(
            f"the peer resends from {start - watch} bytes past what the store held: "
            "bytes acknowledged before a crash were lost (async durability, or the "
            "store went back to an older state)"
        )
    )
    c._set_state(TcpState.CLOSED, "acknowledged bytes lost in a crash")
    return True


PROBE_REPEAT = 1.5
"""Seconds between the first and a later arrival of the same lowest SEQ above the
restored RCV.NXT on a segment without data before ``test_window_above_gap`` takes it
for the peer's zero-window probe: longer than a peer that is still sending normally
(not in its Loss state after a timeout) waits to retransmit lost data -- its
retransmission timeout, 200 ms and up on Linux, ~1 s only without RTT samples."""


def test_window_above_gap(c: Connection, seg: TcpSegment, now: float) -> None:
    """A segment without data above the restored RCV.NXT on a watched connection
    (``acked_bytes_lost``) may be the peer's zero-window probe, <SEQ=SND.UNA-1>: the old
    process filled our window and acknowledged bytes the store never got. Such a peer
    sends no data the proof could use, and ignores our ACKs (older than its SND.UNA, so
    it never sees the window open) -- it probes for as long as each probe is answered.

    Once the lowest such SEG.SEQ comes again ``PROBE_REPEAT`` or more after it first
    came, with no data above the gap meanwhile, it is answered with an ACK of SEG.SEQ + 1
    (the peer's SND.UNA if it probes) at SEG.ACK (its RCV.NXT): acceptable to the peer,
    it opens the window, and the peer sends from SND.UNA -- data above the gap, which
    ``acked_bytes_lost`` proves lost at its retransmission. Then no more tests.

    A healthy peer sends such segments only as pure ACKs, <SEQ=SND.NXT>, with bytes from
    the gap on in flight; an ACK of SND.NXT + 1 is beyond what it sent, and it drops it
    (RFC 9293 §3.10.7.4). Unless it sent new data in the round trip before our ACK came:
    then it takes the ACK, and the bytes from the gap to SEG.SEQ + 1 with it, which we
    never got. The conditions make that unlikely -- a peer that can still send new data
    (not in its Loss state after a timeout, where Linux sends only retransmissions)
    resends lost data within its retransmission timeout, well before ``PROBE_REPEAT``,
    and that ends the watch; one that sends new data shows it above the gap at once --
    and should it happen anyway, the peer's resends then start at SEG.SEQ + 1, which
    ``acked_bytes_lost`` takes as the gap's end (``window_test_off``): the connection
    resets, as any async connection whose acknowledged bytes are gone, and does not
    hang. The lowest SEG.SEQ, because a probing peer also answers our own window probes
    and retransmissions, at its SND.NXT, between its probes."""
    tcb = c.tcb
    watch = c.lost_ack_watch
    if watch is None or tcb.rcv_nxt_offset != watch or not tcb.state.can_recv():
        return
    if c.gap_start is not None or seg.flags & (SYN | RST | FIN) or not seg.flags & ACK:
        return
    off = watch + seq_diff(Seq(seg.seq), tcb.rcv_nxt)
    if off <= watch:
        return
    lowest = c.probe_off
    if lowest is None or off < lowest:
        c.probe_off = off
        c.probe_since = now
        return
    if off != lowest or now - c.probe_since < PROBE_REPEAT:
        return
    if now - c.window_test_at < PROBE_REPEAT:
        return
    c.window_test_at = now
    c.window_test_off = off + 1
    c.count("lost_ack_window_test")
    _output.send_window_test(c, Seq(seg.ack), seq_add(Seq(seg.seq), 1), now)


def check_fin(c: Connection, fin_off: int, now: float) -> None:
    """Eighth: FIN at stream offset ``fin_off`` (RFC 9293 step 8)."""
    tcb = c.tcb
    state = tcb.state
    if not state.can_recv() or tcb.fin_received:
        if state is TcpState.TIME_WAIT:
            c.timers.time_wait_at = now + c.config.time_wait_timeout
            c.ack_now = True
        return
    if fin_off != tcb.rcv_nxt_offset:
        c.reasm.set_fin(fin_off)  # out of order: processed when the gap fills
        c.ack_now = not tcb.ack_on_commit or c.ack_point() == tcb.rcv_nxt
        return
    if tcb.ack_on_commit:
        if fin_off != c.ack_offset():
            # Acknowledged with the last byte's commit (Connection._commit_to); the
            # app may read up to EOF already.
            if not c.pending_fin:
                c.pending_fin = True
                c.emit(EofReceived())
            return
        c.rx_needs = c.version + 1  # the ACK of the FIN needs fin_received durable
    c._advance_rcv(fin_off + 1)
    c._set("fin_received", True)
    if c.pending_fin:
        c.pending_fin = False  # EOF was reported when the FIN arrived
    else:
        c.emit(EofReceived())
    if state is TcpState.ESTABLISHED or state is TcpState.SYN_RECEIVED:
        # A passive close: the ACK of the FIN is a delayed ACK (RFC 1122 §4.2.3.2, RFC
        # 9293 §3.8.6.3: less than 0.5 s), as Linux does (tcp_fin enters pingpong mode),
        # so that the FIN of an application that closes at once carries it: one segment
        # instead of two. Anything else pending (a filled gap, two full-sized segments)
        # has already set ack_now.
        t = c.timers
        if t.delayed_ack_at is None:
            t.delayed_ack_at = now + c.config.delayed_ack_timeout
        c._set_state(TcpState.CLOSE_WAIT, "FIN")
        return
    c.ack_now = True  # we closed first: the FIN is ACKed at once (Linux tcp_fin)
    if state is TcpState.FIN_WAIT_1:
        if tcb.fin_sent and tcb.snd_una == tcb.snd_nxt:
            c._set_state(TcpState.TIME_WAIT, "FIN")
        else:
            c._set_state(TcpState.CLOSING, "simultaneous close")
    elif state is TcpState.FIN_WAIT_2:
        c._set_state(TcpState.TIME_WAIT, "FIN")
