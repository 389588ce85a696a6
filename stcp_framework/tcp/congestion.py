"""Congestion control: Reno with NewReno fast recovery (RFC 5681, RFC 6582); with SACK,
proportional rate reduction in recovery (RFC 6937).

Runtime only: after a restore the window restarts conservatively (DESIGN.md).
Fast-retransmit decisions are taken by the machine (``_arrive.check_ack``); this
object owns the numbers.
"""

from __future__ import annotations

UNDO_MAX_RESENDS = 64  # resends of one recovery that D-SACKs may still prove needless
REO_WND_MULT_MAX = 4  # RACK's reordering window at most a whole RTT (4 quarters)
REO_WND_PERSIST = 16  # recoveries it stays widened (RFC 8985 §6.2 step 4)


class NewReno:
    """cwnd/ssthresh bookkeeping in bytes.

    Attributes:
        cwnd: Congestion window (bytes).
        ssthresh: Slow start threshold (bytes).
        in_recovery: In NewReno fast recovery until ``recover`` is acknowledged.
        recover_offset: Stream offset of ``snd_nxt`` when recovery started (RFC 6582 §3.2).
        rxt_tsval: The TSval of this recovery's fast retransmission until the first ACK
            of new data is checked against it (-1: none; ``_arrive._detect_spurious``).
        spurious: This recovery's fast retransmission was needless (RFC 3522); its
            congestion response is undone (``undo``, RFC 4015).
        pipe_prev: RFC 4015's ``pipe_prev``: ``max(FlightSize, ssthresh)`` when this
            recovery began, the ssthresh ``undo`` restores.
        frto: Forward RTO-Recovery (RFC 5682 §2), to tell a spurious retransmission
            timeout from a real one: 0 off, 1 after a first timeout's retransmission
            (step 1), 2 once the first ACK after it let new data out (step 2b).
        reo_wnd_mult, reo_wnd_persist: RACK's reordering window adaptation (RFC 8985
            §6.2 step 4): the window is ``reo_wnd_mult`` quarters of an RTT; each
            recovery found needless (``undo``) widens it by one, up to a whole RTT,
            and 16 recoveries in a row that were not bring it back to one quarter.
        undo_retrans, undo_ranges: D-SACK detection (RFC 3708 §3, as Linux's
            ``undo_retrans``): the bytes the last recovery resent that no D-SACK has
            yet reported as duplicates, and those resends as ``(start, end)`` stream
            offsets (-1: nothing to undo -- no recovery yet, a timeout or a probe's
            repair came since, it was undone, or it resent more than
            ``UNDO_MAX_RESENDS`` times). When every resent byte came back D-SACKed, the
            originals had arrived: ``undo``, during the recovery or after it.
        recover_fs, prr_delivered, prr_rxt: Proportional rate reduction (RFC 6937) with
            SACK: the flight when recovery started, the bytes the peer got since
            (cumulatively or SACKed), the bytes resent since (new data sent since is
            SND.NXT beyond ``recover_offset``).
    """

    __slots__ = (
        "bytes_acked",
        "cwnd",
        "frto",
        "in_recovery",
        "mss",
        "pipe_prev",
        "prr_delivered",
        "prr_rxt",
        "recover_fs",
        "recover_offset",
        "reo_wnd_mult",
        "reo_wnd_persist",
        "rxt_tsval",
        "spurious",
        "ssthresh",
        "undo_ranges",
        "undo_retrans",
    )

    def __init__(self, mss: int, initial_segments: int) -> None:
        self.mss = mss
        # RFC 6928 / RFC 5681 §3.1: IW; Linux default 10 segments.
        self.cwnd = max(1, initial_segments) * mss
        self.ssthresh = 1 << 62  # RFC 5681 §3.1: "arbitrarily high"
        self.in_recovery = False
        self.recover_offset = 0
        self.bytes_acked = 0
        self.rxt_tsval = -1
        self.spurious = False
        self.recover_fs = 0
        self.prr_delivered = 0
        self.prr_rxt = 0
        self.pipe_prev = 0
        self.undo_retrans = -1
        self.undo_ranges: list[tuple[int, int]] = []
        self.frto = 0
        self.reo_wnd_mult = 1
        self.reo_wnd_persist = 0

    def _halved(self, amount: int) -> int:
        """RFC 5681 (4): ``max(FlightSize / 2, 2 * SMSS)``, the ssthresh of a response."""
        return max(amount // 2, 2 * self.mss)

    def set_mss(self, mss: int, initial_segments: int) -> None:
        self.mss = mss
        self.cwnd = max(1, initial_segments) * mss

    def on_ack(self, acked: int) -> None:
        """New data acknowledged outside fast recovery (RFC 5681 §3.1)."""
        mss = self.mss
        if self.cwnd < self.ssthresh:
            # Slow start, counting bytes (RFC 3465 ABC) without its L = 2*SMSS limit
            # per ACK, as Linux's tcp_slow_start does: a stretch ACK (a GRO receiver's,
            # or ours, TcpConfig.ack_stretch_max) credits all it covers, up to ssthresh;
            # the rest counts towards congestion avoidance.
            grown = min(self.cwnd + acked, self.ssthresh)
            acked -= grown - self.cwnd
            self.cwnd = grown
            if not acked:
                return
        # Congestion avoidance: +1 SMSS per cwnd of acknowledged bytes (RFC 5681 (3)),
        # for every cwnd a stretch ACK covers (Linux tcp_cong_avoid_ai).
        self.bytes_acked += acked
        while self.bytes_acked >= self.cwnd:
            self.bytes_acked -= self.cwnd
            self.cwnd += mss

    def enter_recovery(self, flight: int, snd_nxt_offset: int) -> None:
        """Third duplicate ACK (RFC 5681 §3.2 steps 2-3; RFC 6582 §3.2 step 2)."""
        self.pipe_prev = max(flight, self.ssthresh)  # RFC 4015 §3.1 step (1)
        self.ssthresh = self._halved(flight)
        self.cwnd = self.ssthresh + 3 * self.mss
        self.in_recovery = True
        self.recover_offset = snd_nxt_offset
        self.rxt_tsval = -1
        self.spurious = False
        self.recover_fs = flight
        self.prr_delivered = 0
        self.prr_rxt = 0
        self.undo_retrans = 0
        self.undo_ranges = []
        if self.reo_wnd_persist > 0:
            self.reo_wnd_persist -= 1
            if not self.reo_wnd_persist:
                self.reo_wnd_mult = 1

    def on_resend(self, start: int, end: int) -> None:
        """Stream bytes ``[start, end)`` resent in this recovery (RFC 6937 ``prr_out``;
        RFC 3708's count)."""
        self.prr_rxt += end - start
        if self.undo_retrans < 0:
            return
        if len(self.undo_ranges) >= UNDO_MAX_RESENDS:
            self._no_undo()  # a long repair: a needless one would have shown by now
            return
        self.undo_retrans += end - start
        self.undo_ranges.append((start, end))

    def on_dsack(self, start: int, end: int) -> bool:
        """The peer reports ``[start, end)`` (stream offsets) arrived twice (a D-SACK,
        RFC 2883). What of it this recovery resent counts against its resent bytes,
        each resend once (RFC 3708 §3; duplicates the network made of bytes never
        resent do not count, as Linux counts only segments marked retransmitted);
        True when that leaves none: every resend was a duplicate, the recovery was
        needless, and ``undo`` should follow."""
        if self.undo_retrans <= 0:
            return False
        pending = [(start, end)]  # the reported bytes not yet matched to a resend
        kept: list[tuple[int, int]] = []
        for resend in self.undo_ranges:
            r_start, r_end = resend
            matched = sum(
                max(0, min(r_end, d_end) - max(r_start, d_start)) for d_start, d_end in pending
            )
            if not matched:
                kept.append(resend)
                continue
            self.undo_retrans -= matched
            left = [resend]
            for piece in pending:
                left = _without(left, piece)
            kept.extend(left)
            pending = _without(pending, resend)
        self.undo_ranges = kept
        return self.undo_retrans <= 0

    def _no_undo(self) -> None:
        self.undo_retrans = -1
        self.undo_ranges = []

    def prr_sndcnt(self, delivered: int, pipe: int, new_sent: int) -> int:
        """RFC 6937 §3: the bytes this ACK lets out, given what it ``delivered``, the
        bytes in flight (``pipe``, RFC 6675) and the new data sent in this recovery.
        Above ssthresh, sends in proportion to what is delivered (ssthresh/RecoverFS,
        about one segment per two); at or below, up to ssthresh (slow-start reduction
        bound, PRR-SSRB)."""
        self.prr_delivered += delivered
        prr_out = self.prr_rxt + new_sent
        if pipe > self.ssthresh:
            sndcnt = -(-self.prr_delivered * self.ssthresh // max(self.recover_fs, 1)) - prr_out
        else:
            limit = max(self.prr_delivered - prr_out, delivered) + self.mss
            sndcnt = min(self.ssthresh - pipe, limit)
        return sndcnt if sndcnt > 0 else 0

    def restart_after_idle(self, initial_segments: int) -> None:
        """RFC 5681 §4.1: no data sent for longer than the retransmission timeout, so
        the window no longer reflects the path: start again from the restart window,
        min(IW, cwnd) (Linux ``tcp_cwnd_restart``, which also halves per RTO idle)."""
        restart = max(1, initial_segments) * self.mss
        if self.cwnd > restart and not self.in_recovery:
            self.cwnd = restart

    def on_dupack_in_recovery(self) -> None:
        """RFC 5681 §3.2 step 4: inflate by one SMSS per further duplicate ACK."""
        self.cwnd += self.mss

    def on_partial_ack(self, acked: int) -> None:
        """RFC 6582 §3.2 step 3 (partial ACK): deflate by the amount acked, add back SMSS."""
        self.cwnd = max(self.cwnd - acked, 0) + (self.mss if acked >= self.mss else 0)
        self.cwnd = max(self.cwnd, self.mss)

    def on_probe_repair(self) -> None:
        """A tail loss probe repaired a loss (RFC 8985 §7.4.2): the response to one
        loss, without a recovery -- halve (Linux CWR state, ``tcp_process_tlp_ack``).
        A later D-SACK of the last recovery's resends no longer undoes anything."""
        self.ssthresh = self._halved(self.cwnd)
        self.cwnd = self.ssthresh
        self._no_undo()

    def undo(self) -> None:
        """The last recovery's fast retransmission was needless (Eifel detection, RFC
        3522, or D-SACKs, RFC 3708): the segment was late, not lost, so there was no
        congestion to respond to. RFC 4015 §3.2 step (4): ssthresh goes back to
        ``pipe_prev``. In the recovery the rest of it then sends as slow start would
        (RFC 6937's bound once pipe is below ssthresh), and ``exit_recovery`` restarts
        from the flight, not from the halved window; after it (the D-SACKs come a
        round trip after the resends they report), the window grows back in slow
        start, without a burst (RFC 4015 §3.2 step (6)'s aim)."""
        self.spurious = self.in_recovery
        self.ssthresh = max(self.ssthresh, self.pipe_prev)
        self._no_undo()
        if self.reo_wnd_mult < REO_WND_MULT_MAX:  # (RACK: a wider reordering window)
            self.reo_wnd_mult += 1
        self.reo_wnd_persist = REO_WND_PERSIST
        self.rxt_tsval = -1  # (found needless already: Eifel has nothing left to check)

    def exit_recovery(self, flight: int, acked: int, *, prr: bool = False) -> None:
        """RFC 6582 §3.2 step 3 (full ACK): ``min(ssthresh, max(FlightSize, SMSS) + SMSS)``;
        after a proportional rate reduction, ssthresh (RFC 6937 §3). After ``undo``,
        RFC 4015 §3.2 step (6): ``FlightSize + min(bytes_acked, IW)``, slow start
        from there up to the restored ssthresh (no burst of the whole old window) --
        but never less than the halved window it replaces (an application-limited
        flight may be small)."""
        if self.spurious:
            iw = 4 * self.mss  # RFC 3390's IW, as RFC 4015 uses it
            self.cwnd = max(self._halved(self.recover_fs), max(flight, self.mss) + min(acked, iw))
        elif prr:
            self.cwnd = self.ssthresh
        else:
            self.cwnd = min(self.ssthresh, max(flight, self.mss) + self.mss)
        self.in_recovery = False
        self.bytes_acked = 0

    def on_rto(self, flight: int, *, first: bool) -> None:
        """RFC 5681 §3.1 (4): ssthresh = max(FlightSize/2, 2*SMSS); cwnd = 1 SMSS (LW).
        The ``first`` of a row starts F-RTO (RFC 5682 §2 step 1), with ``pipe_prev``
        kept for ``undo_rto`` -- unless a fast recovery was under way, whose resends
        an ACK could acknowledge (RFC 5682 §3.1 step 1 leaves F-RTO out then); a later
        timeout in the row only backs off."""
        self.frto = 1 if first and not self.in_recovery else 0
        if self.frto:
            self.pipe_prev = max(flight, self.ssthresh)
        self.ssthresh = self._halved(flight)
        self.cwnd = self.mss
        self.in_recovery = False
        self.bytes_acked = 0
        self._no_undo()  # (a spurious timeout is F-RTO's to find: ``undo_rto``)

    def undo_rto(self, flight: int, acked: int) -> None:
        """F-RTO found the timeout spurious (RFC 5682 §2 step 3b): the segments were
        delayed, not lost. The Eifel response to it (RFC 4015 §3.2 steps (4) and (6)):
        ssthresh back to ``pipe_prev``, cwnd = FlightSize + min(bytes_acked, IW), so
        that new data keeps going at the rate the delayed ACKs come in, and slow start
        takes the window back up (no burst)."""
        self.frto = 0
        self.ssthresh = max(self.ssthresh, self.pipe_prev)
        self.cwnd = max(flight, self.mss) + min(acked, 4 * self.mss)


def _without(ranges: list[tuple[int, int]], cut: tuple[int, int]) -> list[tuple[int, int]]:
    """The parts of ``ranges`` outside ``[cut[0], cut[1])``."""
    out: list[tuple[int, int]] = []
    for start, end in ranges:
        if start < cut[0]:
            out.append((start, min(end, cut[0])))
        if end > cut[1]:
            out.append((max(start, cut[1]), end))
    return out
