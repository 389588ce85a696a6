"""One TCP connection as a sans-IO state machine (RFC 9293, 7323, 5681/6582, 6298, 5961).

Theory of operation
-------------------
Inputs are segments (``on_segment``), application calls (``app_*``) and the clock
(``on_timer``); every entry point takes ``now`` (float seconds, the stack's clock).
Nothing here does I/O, sleeps, reads a clock or draws randomness (ISS comes in).
Outputs accumulate until ``drain()`` returns them as one ``Step``: the ``StateDelta``
to persist, the ``OutSegment``s to send (each with ``needs_version``) and the
``Event``s for the API layer. ``next_deadline()`` tells the driver when to call
``on_timer`` next.

Code map: ``_listen.py`` handles SYN-SENT (RFC 9293 §3.10.7.3) and the passive-open SYN;
``_arrive.py`` runs SEGMENT ARRIVES for the other states (§3.10.7.4) one step per
function; ``_output.py`` decides what to send now. This module owns the entry points,
the persisted ``Tcb`` and its mutators: every write to a ``Tcb`` field goes through
``_set`` (or ``_set_state``), which also records it in the pending ``TcbSet``.

Versions: ``drain()`` numbers its deltas 1, 2, ... A segment that carries an ACK has
``needs_version`` = the version of the delta that recorded its ``rcv_nxt`` (G1) and the
commit point its window counts from (RFC 7323 §2.4 across a crash); a segment with
data or FIN also needs the version that recorded its bytes (G2).

ACK-on-commit (``TcpConfig.ack_on_commit``, TCPR): received bytes are held in memory
only and the ACK field is the *commit point* (``ack_point``), so an ACK needs the
version that recorded the commit, and ``rcv_wup`` (the base of the advertised window)
is the commit point too. Segment arrival then sends no ACK of its own (the ACK could
not move, and the peer would count it as a duplicate); a commit does, with the usual
delayed-ACK rule. An in-order FIN waits (``pending_fin``) until every byte before it
is committed; the application sees EOF as soon as it has read them. An application
that commits less often than the peer's window fills would stall the peer, so bytes
left unacknowledged for ``TcpConfig.commit_wait`` are *spilled*: stored as in the
strict mode (``RxAppend``) and then acknowledged (``rx_stored``).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Any, overload

from ..wire.seq import Seq, seq_add, seq_diff, seq_le, seq_lt
from ..wire.tcp import ACK, NO_OPTIONS, TcpSegment
from . import _arrive, _listen, _output
from ._listen import DEFAULT_MSS, MIN_MSS, choose_rcv_wscale, option_overhead
from .buffers import Reassembly, RecvBuffer, SendBuffer
from .config import TcpConfig
from .congestion import NewReno
from .delta import (
    AppCommit,
    DeltaOp,
    RxAppend,
    RxTrim,
    StateDelta,
    TxAppend,
    TxTrim,
    new_state_delta,
    new_tcb_set,
)
from .errors import LocalProtocolError
from .events import Closed, DataReadable, Event, SendSpace
from .rtt import RttEstimator
from .sack import Scoreboard
from .state import FIN_QUEUED, TcpState
from .step import EMPTY_STEP, OutSegment, Step
from .tcb import TCB_FIELDS, Tcb
from .timers import Timers
from .timewait import TimeWaitRecord, new_syn_acceptable
from .txmap import TxMap

logger = logging.getLogger("stcp.tcp")

COALESCE_LIMIT = 64 * 1024  # join contiguous appends of one drain up to this size
KICK_DUPACKS = 3  # ack-on-commit restore: duplicate ACKs after the kick (RFC 5681 §3.2)
# RFC 9293 §3.10.5 ABORT: the states that send <SEQ=SND.NXT><CTL=RST>.
_ABORT_RST_STATES = (
    TcpState.ESTABLISHED,
    TcpState.SYN_RECEIVED,
    TcpState.FIN_WAIT_1,
    TcpState.FIN_WAIT_2,
    TcpState.CLOSE_WAIT,
)
_new_tuple = tuple.__new__  # Step built positionally
# Field-less events are equal to each other: emit one shared instance of each.
_CLOSED = Closed()
_DATA_READABLE = DataReadable()
_SEND_SPACE = SendSpace()


_Piece = tuple[int, "bytes | memoryview"]  # received data: bytes or a kept view


@overload
def _coalesce(pieces: list[tuple[int, bytes]]) -> list[tuple[int, bytes]]: ...
@overload
def _coalesce(pieces: list[_Piece]) -> list[_Piece]: ...
def _coalesce(pieces: list[Any]) -> list[Any]:
    """Join contiguous pieces while small; large pieces keep their own op (no copy)."""
    out: list[_Piece] = []
    run: list[bytes | memoryview] = []
    run_start = run_end = 0
    run_len = 0
    for off, data in pieces:
        if run and off == run_end and run_len + len(data) <= COALESCE_LIMIT:
            run.append(data)
            run_len += len(data)
            run_end += len(data)
            continue
        if run:
            out.append((run_start, run[0] if len(run) == 1 else b"".join(run)))
        run = [data]
        run_start, run_end, run_len = off, off + len(data), len(data)
    if run:
        out.append((run_start, run[0] if len(run) == 1 else b"".join(run)))
    return out


Regenerate = Callable[[str, int, int], bytes]
"""``(source name, source offset, length) -> bytes``: re-reads a regenerable send."""


def _rebuild_send_buffer(
    txmap: TxMap, tcb: Tcb, tx: bytes, tx_offset: int, regenerate: Regenerate | None
) -> SendBuffer:
    """The unacknowledged send stream from the stored literal bytes (``tx`` from literal
    offset ``tx_offset``) and the ref extents, re-read through ``regenerate``."""
    end = txmap.stream_end(tx_offset + len(tx))
    start = min(max(tcb.snd_una_offset, 0), end)
    if not (txmap.refs or txmap.ref_base):
        start = tx_offset  # literal == stream offsets: the store's base is the start
    buf = SendBuffer(start)
    view = memoryview(tx)
    for a, b, ref in txmap.pieces(start, end):
        if ref is None:
            lo = txmap.literal(a) - tx_offset
            buf.append(bytes(view[lo : lo + (b - a)]))
            continue
        if regenerate is None:
            raise ValueError(f"send bytes [{a}, {b}) come from {ref.name!r}: no way to read them")
        data = regenerate(ref.name, ref.src_offset + (a - ref.start), b - a)
        if len(data) != b - a:
            raise ValueError(
                f"source {ref.name!r} gave {len(data)} bytes at {ref.src_offset + a - ref.start}"
                f", {b - a} were sent"
            )
        buf.append(bytes(data))
    return buf


class Connection:
    """One connection: see the module docstring and docs/internals.md."""

    # Slots: a connection's ~50 fields in ~0.5 KB instead of a ~1.6 KB instance dict
    # (every connection, idle ones too).
    __slots__ = (
        "_app_commit",
        "_dirty",
        "_ev_readable",
        "_ev_space",
        "_events",
        "_out",
        "_rx_ops",
        "_rx_trim",
        "_tx_ops",
        "_tx_trim",
        "ack_deferred_at",
        "ack_lagged",
        "ack_now",
        "cc",
        "challenge_count",
        "challenge_window_at",
        "config",
        "counters",
        "dsack",
        "dupacks",
        "fin_maybe_sent",
        "gap_resends",
        "gap_since",
        "gap_start",
        "invalid_ack_at",
        "last_data_at",
        "last_rx_at",
        "loss_watch_until",
        "lost_ack_watch",
        "maybe_sent_end",
        "mss_max",
        "name",
        "offer_wscale",
        "pending_fin",
        "persist_backoff",
        "probe_off",
        "probe_since",
        "probes",
        "rcv_buf",
        "rcv_mss",
        "rcv_unacked",
        "reasm",
        "retries",
        "rtt",
        "rtt_offset",
        "rtt_sent_at",
        "rx_needs",
        "rx_stored",
        "sack_recent",
        "scoreboard",
        "sent_lost_ack",
        "sent_lost_since",
        "sent_lost_watch",
        "snd_buf",
        "snd_ptr",
        "tcb",
        "timers",
        "ts_options",
        "ts_recent_at",
        "tx_low_end",
        "tx_low_needs",
        "tx_needs",
        "txmap",
        "version",
        "window_test_at",
        "window_test_off",
    )

    def __init__(self, *, now: float, config: TcpConfig, iss: Seq, tsval_offset: int) -> None:
        """Use ``open_active``, ``open_passive`` or ``restore``."""
        self.config = config
        self.name = ""  # the stack may set "[src:port>dst:port]" for log lines
        self.tcb = Tcb(iss=iss, tsval_offset=tsval_offset & 0xFFFFFFFF, mss=DEFAULT_MSS)
        self.tcb.manual_commit = config.manual_commit
        self.tcb.ack_on_commit = config.ack_on_commit
        self.timers = Timers()
        self.rtt = RttEstimator(config.initial_rto, config.min_rto, config.max_rto)
        self.cc = NewReno(DEFAULT_MSS, config.initial_cwnd_segments)
        self.snd_buf = SendBuffer(0)
        self.txmap = TxMap([])  # regenerable sends (txmap.py); mirrors tcb.tx_refs
        self.rcv_buf = RecvBuffer(0, keep_read=config.ack_on_commit and config.manual_commit)
        self.rx_stored = 0  # ack-on-commit: inbound bytes below this are spilled (stored)
        # Out-of-order pieces may take twice the buffer with their overhead (a window
        # of full-sized segments takes 1.18x): Linux's receive memory is ~2x its window.
        self.reasm = Reassembly(2 * config.recv_buffer_size)
        self.sack_recent: list[int] = []  # recent out-of-order arrivals (sack.note_arrival)
        self.mss_max = 0  # the MSS before a path MTU reduction (0: none)
        self.dsack: tuple[int, int] | None = None  # a duplicate to report (RFC 2883)
        self.scoreboard = Scoreboard()  # what the peer SACKed (sender side)
        # Outputs pending until drain().
        self._out: list[OutSegment] = []
        self._events: list[Event] = []
        self._dirty: dict[str, Any] = {}
        self._rx_ops: list[_Piece] = []
        self._tx_ops: list[tuple[int, bytes]] = []
        self._rx_trim: int | None = None
        self._app_commit: AppCommit | None = None
        self._tx_trim: int | None = None
        self._ev_readable = False
        self._ev_space = False
        # Versions (see module docstring).
        self.version = 0  # last version returned by drain()
        self.rx_needs = 0  # version that recorded the current rcv_nxt and commit point
        self.tx_needs = 0  # version that recorded the newest accepted bytes
        # Bytes below stream offset tx_low_end need only version tx_low_needs (what
        # tx_needs was before the bytes after them raised it): _output.transmit.
        self.tx_low_end = 0
        self.tx_low_needs = 0
        # Runtime (rebuilt on restore, never persisted).
        self.ack_now = False  # send an ACK in this call's output
        self.ack_lagged = False  # ack-on-commit: data left with an ACK behind RCV.NXT
        self.ack_deferred_at: float | None = None  # ack_now set at this time; drain() sends
        self.pending_fin = False  # ack-on-commit: FIN received in order, data uncommitted
        self.rcv_unacked = 0  # bytes received since our last ACK (delayed ACK)
        self.rcv_mss = min(config.mss, DEFAULT_MSS)  # largest segment seen (Linux rcv_mss)
        self.snd_ptr = 0  # offset of the next byte to (re)send; < snd_nxt after an RTO
        self.retries = 0  # consecutive retransmission timeouts
        self.dupacks = 0
        self.probes = 0  # zero-window / keepalive probes without an answer
        self.persist_backoff = 0  # zero-window probes sent while the window stays shut
        self.rtt_offset: int | None = None  # Karn timing: sample when this offset is acked
        self.rtt_sent_at = 0.0
        self.offer_wscale = config.window_scaling
        self.ts_options = NO_OPTIONS  # the last timestamps option built (_output._options)
        # When TS.Recent was last set, or this connection made or restored (RFC 7323 §5.5)
        self.ts_recent_at = now
        self.challenge_window_at = -1e18
        self.invalid_ack_at = -1e18  # the last ACK to an unacceptable segment without data
        self.maybe_sent_end = 0  # restored: a past incarnation may have sent up to here
        self.fin_maybe_sent = False  # restored with our FIN queued: it may have left too
        # Restored after a crash that may have lost acknowledged bytes (async durability):
        # the restored RCV.NXT offset until the peer shows it has the bytes after it,
        # and the lowest offset above it the peer has sent since, and when it first came
        # (_arrive.acked_bytes_lost).
        self.lost_ack_watch: int | None = None
        self.gap_start: int | None = None
        self.gap_since = 0.0
        self.gap_resends = 0  # its arrivals since, each LOST_ACK_PROOF after the last
        self.last_data_at = -1.0  # when a data segment last left (_output.send_data)
        # The lowest offset above it of a segment without data, when it first came, and
        # the last ACK that tested the peer's window (_arrive.test_window_above_gap).
        self.probe_off: int | None = None
        self.probe_since = 0.0
        self.window_test_at = -1e18
        self.window_test_off: int | None = None  # the offset its ACK named
        # Restored with sent bytes: until the peer acknowledges new data, an ACK past
        # everything the store held (and when the first came) may prove that the crash,
        # or a store gone back to an older state, lost bytes it has (_arrive.check_ack).
        self.sent_lost_watch = False
        self.sent_lost_since = -1.0
        self.sent_lost_ack = 0  # the peer's first ACK past the record
        # Restored: how long the loss proofs may come (both end sooner in step with
        # the peer); +inf for the async lost-ACK watch, which waits for its proof.
        self.loss_watch_until = math.inf
        self.challenge_count = 0
        self.last_rx_at = now
        self.counters: dict[str, int] = {}

    # ------------------------------------------------------------------ constructors

    @classmethod
    def open_active(
        cls, *, now: float, config: TcpConfig, iss: Seq, tsval_offset: int
    ) -> Connection:
        """Active OPEN (RFC 9293 §3.10.1): SYN-SENT; the SYN is in the first ``drain()``."""
        c = cls(now=now, config=config, iss=iss, tsval_offset=tsval_offset)
        tcb = c.tcb
        tcb.rcv_wscale = choose_rcv_wscale(config.recv_buffer_size) if c.offer_wscale else 0
        tcb.timestamps = config.timestamps
        tcb.mss = max(MIN_MSS, min(DEFAULT_MSS, config.mss))
        tcb.active_open = True
        c._dirty.update(tcb.to_record())
        c._set_state(TcpState.SYN_SENT, "open_active")
        _output.send_syn(c, now)
        return c

    @classmethod
    def open_passive(
        cls,
        syn: TcpSegment,
        *,
        now: float,
        config: TcpConfig,
        iss: Seq,
        tsval_offset: int,
    ) -> Connection:
        """A SYN arrived at a listening port (RFC 9293 §3.10.7.2): SYN-RECEIVED.

        The SYN-ACK is in the first ``drain()``; it needs version 1 (the TCB) so that a
        restarted instance knows the flow the peer's ACK belongs to. Data on the SYN is
        not accepted (no TFO): the peer retransmits it.
        """
        c = cls(now=now, config=config, iss=iss, tsval_offset=tsval_offset)
        _listen.accept_syn(c, syn, now)
        return c

    @classmethod
    def from_syn_cookie(
        cls,
        syn: TcpSegment,
        ack: TcpSegment,
        *,
        now: float,
        config: TcpConfig,
        iss: Seq,
        tsval_offset: int,
    ) -> Connection:
        """The ACK of a SYN-ACK we sent with a SYN cookie (``tcp/syncookie.py``): the
        connection as if ``syn`` -- rebuilt from the cookie, its options from the ACK's
        TSecr -- had been kept in SYN-RECEIVED, then ``ack`` arriving; ESTABLISHED if
        the ACK is acceptable. Its first delta is the whole record, as after a SYN.

        Args:
            iss: The cookie (SEG.ACK - 1 of ``ack``).
            tsval_offset: So that our TSval now is the one the SYN-ACK carried, which
                the peer echoes in TSecr: our timestamps go on from there.
        """
        c = cls(now=now, config=config, iss=iss, tsval_offset=tsval_offset)
        _listen.accept_syn(c, syn, now)
        c._out.clear()  # that SYN-ACK left long ago, statelessly, with the cookie
        c.on_segment(ack, now)
        # Its send time is unknown: the TSecr sample the ACK gave is 0 (our clock was
        # set to it), which would pin the RTO to its minimum whatever the path.
        c.rtt = RttEstimator(config.initial_rto, config.min_rto, config.max_rto)
        c.rtt_offset = None
        return c

    @classmethod
    def restore(
        cls,
        tcb: Tcb,
        *,
        rx: bytes,
        rx_offset: int,
        tx: bytes,
        tx_offset: int,
        now: float,
        config: TcpConfig,
        version: int = 0,
        regenerate: Regenerate | None = None,
        acked_may_be_lost: bool = False,
        window_tests: bool = True,
    ) -> Connection:
        """Rebuild a connection from its persisted record and buffers (STYLE.md §4.5).

        Timers and congestion state restart; the first ``drain()`` carries the "kick":
        an ACK with the current window and a retransmission from ``snd_una``.

        Args:
            tcb: The record (``Tcb.from_record``).
            rx, rx_offset: Stored inbound bytes starting at stream offset ``rx_offset``.
            tx, tx_offset: Stored outbound bytes (unacknowledged + unsent).
            version: The durable version loaded with the record (``FlowRecord.version``):
                the restored machine numbers its deltas after it, since a store skips a
                delta whose version it already holds (idempotent retries).
            regenerate: ``(name, src_offset, length) -> bytes`` reads a regenerable
                send's bytes again (``app_send_ref``); needed when ``tcb.tx_refs``.
            acked_may_be_lost: The record may be older than what the crashed process
                acknowledged (async durability; or a store that went back to an older
                state). The connection then watches for the proof that it was
                (``_arrive.acked_bytes_lost``) and resets itself rather than wait
                forever for bytes the peer has discarded. (Sent bytes the record lacks
                are proved lost by the peer's ACKs in any case: ``sent_bytes_lost``.)
            window_tests: With ``acked_may_be_lost``: a peer that only probes is
                answered with a window test (``_arrive.test_window_above_gap``), which
                a healthy peer may, rarely, take for an ACK of bytes it sent meanwhile
                (then the connection resets). Worth it where a crash loses acknowledged
                bytes as a matter of course (async durability), not where only a store
                gone back to an older state does (strict). ``False`` also bounds both
                loss proofs to ``_arrive.LOSS_WATCH`` after the restore.

        Raises:
            ValueError: Regenerable bytes cannot be read again (no ``regenerate``, or it
                returned fewer bytes than were sent).
        """
        c = cls._adopt(tcb, now=now, config=config, version=version)
        if tcb.ack_on_commit and tcb.rcv_nxt_offset >= 0:
            # Nothing past the commit point (or the spilled bytes) was stored or
            # acknowledged: the peer still holds it and sends it again (FIN included:
            # only a FIN after acknowledged bytes is ever processed).
            c.rx_stored = rx_offset + len(rx)
            acked = max(tcb.commit_offset, c.rx_stored) + (1 if tcb.fin_received else 0)
            tcb.rcv_nxt = seq_add(tcb.irs, 1 + acked)
            tcb.rcv_nxt_offset = acked
        rcv_end = tcb.rcv_nxt_offset - (1 if tcb.fin_received else 0)
        # Reading resumes at the commit point: level 2 replays what was read but not
        # committed (G4); in level 1 the two offsets are equal.
        resume = tcb.read_offset = tcb.commit_offset
        c.rcv_buf = RecvBuffer(resume, keep_read=tcb.ack_on_commit and tcb.manual_commit)
        start = resume - rx_offset
        if start >= 0 and resume < rcv_end:
            c.rcv_buf.append(bytes(memoryview(rx)[start : rcv_end - rx_offset]))
        c.rcv_buf.end_offset = max(rcv_end, resume)
        c.txmap = TxMap.decode(tcb.tx_refs, tcb.tx_ref_base)
        c.snd_buf = _rebuild_send_buffer(c.txmap, tcb, tx, tx_offset, regenerate)
        c.snd_ptr = max(tcb.snd_una_offset, 0)
        if tcb.snd_una_offset >= 0 and c.snd_buf.end_offset > c.snd_nxt_offset():
            # The SND.NXT of the last durable delta may be behind what left: a segment
            # needs its bytes durable (G2), not the SND.NXT it moved (a store outage
            # withholds that delta, and a retransmission timer sends the bytes anyway).
            # The peer may have any stored byte, so its ACK of one is no ACK of unsent
            # data (which RFC 9293 §3.10.7.4 drops): see _arrive.check_ack.
            c.maybe_sent_end = c.snd_buf.end_offset
        state = tcb.state
        if not tcb.fin_sent and state in FIN_QUEUED:
            # The FIN needs its state change durable, not the SND.NXT its sending
            # moved: the incarnation before us may have sent it (_arrive.check_ack).
            c.fin_maybe_sent = True
        if acked_may_be_lost and state.can_recv() and tcb.rcv_nxt_offset >= 0:
            c.lost_ack_watch = tcb.rcv_nxt_offset
            if not window_tests:
                c.window_test_at = math.inf  # "the last test was just now", for ever
        if not window_tests:
            # Where a crash loses nothing (strict), only a store gone back does, and the
            # peer shows it at once (it answers the kick): a watch left open for ever
            # would let two blind segments reset a healthy connection.
            c.loss_watch_until = now + _arrive.LOSS_WATCH
        if tcb.snd_una_offset >= 0 and state.synchronized():
            c.sent_lost_watch = True
        if state is TcpState.TIME_WAIT:
            c.timers.time_wait_at = now + config.time_wait_timeout
        elif state is TcpState.SYN_SENT:
            _output.send_syn(c, now)
        elif state is not TcpState.CLOSED:
            if tcb.snd_una_offset < 0:
                _output.send_syn(c, now)
            else:
                c.ack_now = True
                if tcb.snd_una != tcb.snd_nxt:
                    c.timers.retransmit_at = now + c.rtt.rto
                if state is TcpState.ESTABLISHED or state is TcpState.CLOSE_WAIT:
                    _output.arm_keepalive(c, now)
                elif state is TcpState.FIN_WAIT_2 and tcb.app_closed:
                    # orphaned, as before the restart: its timer died with the old
                    # process, and without one nothing ever ends it (a peer that never
                    # closes kept it, and its record, for good)
                    _output.arm_orphan_timer(c, now)
            _output.transmit(c, now)
            if (
                tcb.snd_una_offset >= 0
                and c.snd_buf.end_offset > c.snd_nxt_offset()
                and tcb.snd_wnd - (c.snd_nxt_offset() - tcb.snd_una_offset) < tcb.mss
            ):
                # Data waits on a closed window: the peer's window update may have died
                # with the old process, and it never repeats one. A probe makes it
                # answer with its window now, instead of at our persist timer (1 s after
                # a restore, as the RTT estimate starts over): the byte at SND.UNA,
                # which it takes if its window is open, or answers as a duplicate or a
                # zero-window probe. Not a zero-length <SEQ=SND.UNA-1>: Linux answers
                # those at most once per 500 ms (tcp_oow_rate_limited, exempting only
                # segments with data), so a second restart that soon after the first
                # stalled for the persist timer (1 s, a kill-9 netns test 2 in 15).
                c.count("restore_window_probe")
                una = tcb.snd_una_offset
                _output.make_segment(c, tcb.snd_una, ACK, c.snd_buf.view(una, 1), now)
            if tcb.ack_on_commit and tcb.snd_una_offset >= 0 and state.can_recv():
                # What the peer sent past the ACK point died with the old process, and
                # it is waiting on its retransmission timer, backed off while we were
                # down. Three duplicate ACKs after the kick (which may move its window)
                # make a peer without SACK that has not timed out yet retransmit at once
                # (RFC 5681 §3.2 fast retransmit). One that timed out (Linux: Loss
                # state) ignores them; with SACK, the blocks for what it sends next
                # bring the resend (process_text), measured ~1 ms after the restart
                # against ~350 ms without. Not in SYN-RECEIVED: no ACK without SYN goes
                # out before the handshake is done.
                for _ in range(KICK_DUPACKS):
                    _output.send_ack(c, now)
        return c

    @classmethod
    def _adopt(cls, tcb: Tcb, *, now: float, config: TcpConfig, version: int) -> Connection:
        """A connection around an existing ``Tcb`` (``restore``, ``thaw_time_wait``):
        deltas numbered after ``version``, options and MSS as the TCB agreed."""
        c = cls(now=now, config=config, iss=tcb.iss, tsval_offset=tcb.tsval_offset)
        c.version = c.rx_needs = c.tx_needs = version
        c.tcb = tcb
        # Window scaling was agreed if either shift is non-zero (RFC 7323 §2.2): a
        # SYN-ACK sent again from SYN-RECEIVED must carry the option then, even with
        # our shift 0 (small buffers); with both 0, leaving it out changes nothing.
        c.offer_wscale = tcb.rcv_wscale > 0 or tcb.snd_wscale > 0
        c.cc.set_mss(tcb.mss, config.initial_cwnd_segments)
        return c

    def freeze_time_wait(self) -> TimeWaitRecord | None:
        """This connection as a compact ``TimeWaitRecord`` if it is a quiet TIME-WAIT
        one (``tcp/timewait.py``), else None. Call after ``drain()``: anything pending
        (a segment, an event, a field to persist) keeps it a ``Connection``."""
        tcb = self.tcb
        if tcb.state is not TcpState.TIME_WAIT:
            return None
        t = self.timers
        time_wait_at = t.time_wait_at
        if time_wait_at is None or t.next_deadline() != time_wait_at:
            return None  # another timer is due first (a delayed ACK, say)
        rcv, snd = self.rcv_buf, self.snd_buf
        if (
            self._out
            or self._events
            or self._dirty
            or self._rx_ops
            or self._tx_ops
            or self._rx_trim is not None
            or self._tx_trim is not None
            or self._app_commit is not None
            or self.ack_now
            or self.ack_deferred_at is not None
            or self.pending_fin
            or self.reasm
            or len(snd)
            or rcv.read_offset != rcv.end_offset
            or rcv.commit_offset != rcv.end_offset
            or tcb.commit_offset != rcv.end_offset
        ):
            return None
        return TimeWaitRecord(
            tcb=tcb,
            config=self.config,
            version=self.version,
            time_wait_at=time_wait_at,
            last_rx_at=self.last_rx_at,
            snd_end=snd.end_offset,
            snd_ptr=self.snd_ptr,
            rcv_end=rcv.end_offset,
            rcv_mss=self.rcv_mss,
            mss_max=self.mss_max,
            maybe_sent_end=self.maybe_sent_end,
            challenge_window_at=self.challenge_window_at,
            challenge_count=self.challenge_count,
            invalid_ack_at=self.invalid_ack_at,
            name=self.name,
            counters=self.counters,
        )

    @classmethod
    def thaw_time_wait(cls, record: TimeWaitRecord) -> Connection:
        """The connection ``record`` was frozen from, to take a segment or a call: it
        answers every input as the original would (``tcp/timewait.py`` says what
        restarts). The record's ``Tcb`` is taken over, not copied."""
        tcb = record.tcb
        c = cls._adopt(tcb, now=record.last_rx_at, config=record.config, version=record.version)
        c.rcv_buf = RecvBuffer(record.rcv_end, keep_read=tcb.ack_on_commit and tcb.manual_commit)
        c.snd_buf = SendBuffer(record.snd_end)
        c.txmap = TxMap.decode(tcb.tx_refs, tcb.tx_ref_base)
        c.snd_ptr = record.snd_ptr
        c.rcv_mss = record.rcv_mss
        c.mss_max = record.mss_max
        c.maybe_sent_end = record.maybe_sent_end
        c.challenge_window_at = record.challenge_window_at
        c.challenge_count = record.challenge_count
        c.invalid_ack_at = record.invalid_ack_at
        c.name = record.name
        c.counters = record.counters
        c.timers.time_wait_at = record.time_wait_at
        return c

    # ------------------------------------------------------------------ public surface

    @property
    def state(self) -> TcpState:
        return self.tcb.state

    @property
    def recv_available(self) -> int:
        """Bytes ``app_receive`` can return now."""
        return self.rcv_buf.end_offset - self.rcv_buf.read_offset

    @property
    def at_eof(self) -> bool:
        """The peer's FIN arrived and every byte before it has been read."""
        return (self.tcb.fin_received or self.pending_fin) and (
            self.rcv_buf.end_offset == self.rcv_buf.read_offset
        )

    def ack_point(self) -> Seq:
        """The ACK field we send: RCV.NXT, or with ack-on-commit the commit point."""
        tcb = self.tcb
        if not tcb.ack_on_commit:
            return tcb.rcv_nxt
        acked = tcb.commit_offset
        if self.rx_stored > acked:
            acked = self.rx_stored
        lag = self.rcv_buf.end_offset - acked
        return tcb.rcv_nxt if lag <= 0 else seq_add(tcb.rcv_nxt, -lag)

    def ack_offset(self) -> int:
        """Stream offset of the ACK point with ack-on-commit: committed or spilled."""
        commit = self.tcb.commit_offset
        return commit if commit >= self.rx_stored else self.rx_stored

    @property
    def send_space(self) -> int:
        """Bytes ``app_send`` would accept now (G6 cap)."""
        if not self.tcb.state.can_send():
            return 0
        return max(0, self.config.send_buffer_size - len(self.snd_buf))

    @property
    def unacked(self) -> int:
        """Bytes sent or queued but not acknowledged."""
        return len(self.snd_buf)

    def next_deadline(self) -> float | None:
        """When ``on_timer`` must run next (None: only input can change anything)."""
        return self.timers.next_deadline()

    def delta_pending(self) -> bool:
        """Whether the next ``drain()`` returns a delta (version ``version + 1``): a
        persisted field, received or sent bytes, a commit or a trim is waiting. The one
        definition ``drain`` and ``Runtime.durable_target`` share: a waiter whose idea
        of "a delta is coming" differs from the drain's waits forever."""
        return bool(
            self._dirty
            or self._rx_ops
            or self._tx_ops
            or self._app_commit is not None
            or self._rx_trim is not None
            or self._tx_trim is not None
        )

    def drain_may_wait(self) -> bool:
        """Whether what the input since the last drain left pending may wait for a later
        drain: in ESTABLISHED or CLOSE-WAIT, no segment to send or ACK due, no event but
        ``SendSpace``, no received bytes, commit or state change to record.

        That is what a pure ACK of sent data leaves (or a window update that opens
        nothing to send). Its delta -- SND.UNA, the send buffer's trim, SND.WND,
        TS.Recent -- only frees store space: restored from the delta before, a
        connection resends bytes the peer already has, which it drops and acknowledges
        again. The stack drains such a connection with its next round or at its timer
        (``Runtime._arrive``) instead of committing a delta for every ACK.
        """
        state = self.tcb.state
        if state is not TcpState.ESTABLISHED and state is not TcpState.CLOSE_WAIT:
            return False
        if (
            self._out
            or self.ack_now
            or self.ack_deferred_at is not None
            or self._rx_ops
            or self._tx_ops
            or self._app_commit is not None
            or self._rx_trim is not None
        ):
            return False
        for event in self._events:
            if event is not _SEND_SPACE:
                return False
        return "state" not in self._dirty

    def accepts_new_syn(self, seg: TcpSegment) -> bool:
        """RFC 6191: may this SYN open a new incarnation of a flow in TIME-WAIT?
        (``timewait.new_syn_acceptable``)"""
        return new_syn_acceptable(self.tcb, seg)

    def on_packet_too_big(self, path_mss: int, seq: int, now: float) -> bool:
        """ICMP says our segment at ``seq`` was too big for a hop whose MTU leaves
        ``path_mss`` bytes after the IP and TCP headers (RFC 1191, RFC 8201).

        Only a quote of a segment in flight counts (RFC 5927 §7.2: SND.UNA <= seq <
        SND.NXT); then the MSS goes down and what is in flight is sent again in
        segments that fit, at once and without a congestion response (Linux
        ``tcp_simple_retransmit``): the hop dropped them, the path is not congested.
        ``config.pmtu_expires`` later the MSS from before is tried again (RFC 1191
        §6.3): if the hop is still there, it says so again. The new MSS is persisted,
        so a restored connection keeps it (and does not try the old one again).
        Returns whether the MSS went down.
        """
        tcb = self.tcb
        if tcb.snd_una_offset < 0 or not self.state.synchronized():
            return False
        if not (seq_le(tcb.snd_una, Seq(seq)) and seq_lt(Seq(seq), tcb.snd_nxt)):
            self.count("icmp_too_big_out_of_window")
            return False
        mss = max(MIN_MSS, path_mss - option_overhead(tcb.timestamps, self.config.md5))
        if mss >= tcb.mss:
            return False
        if not self.mss_max:
            self.mss_max = tcb.mss
        self.timers.pmtu_at = now + self.config.pmtu_expires
        self._set("mss", mss)
        self.cc.mss = mss  # (cwnd stays in bytes)
        self.count("pmtu_lowered")
        self.snd_ptr = tcb.snd_una_offset
        self.rtt_offset = None  # Karn: what is resent now gives no sample
        _output.send_data(self, now, force=True)
        return True

    def on_segment(self, seg: TcpSegment, now: float) -> None:
        """A segment for this connection arrived (ports already matched)."""
        self.last_rx_at = now
        if _arrive.header_prediction(self, seg, now):
            # The common in-order segment in ESTABLISHED: the general steps' results
            # without their checks (see _arrive's module docstring).
            if self.ack_now and seg.payload and self.rcv_unacked < self.config.ack_stretch_max:
                # Stretch ACK: in-order data that arrives between two drains (one batch
                # from the device) is acknowledged once, by drain(). Those ACKs would
                # leave in one burst anyway, so the others tell the peer nothing new;
                # each costs a build, a write and the peer kernel's work (Linux's GRO
                # receiver acknowledges its super-segments the same way).
                if self.ack_deferred_at is None:
                    self.ack_deferred_at = now
                return
            _output.transmit(self, now)
            return
        state = self.tcb.state
        if state is TcpState.SYN_SENT:
            _listen.syn_sent_arrives(self, seg, now)
        elif state is TcpState.CLOSED or state is TcpState.LISTEN:
            return  # the stack answers segments for non-existent connections
        elif state is TcpState.TIME_WAIT and self.accepts_new_syn(seg):
            # RFC 6191: the stack should have replaced us before; do it ourselves.
            self._set_state(TcpState.CLOSED, "new SYN in TIME-WAIT (RFC 6191)")
            return
        elif (
            self.lost_ack_watch is not None
            and seg.payload
            and _arrive.acked_bytes_lost(self, seg, now)
        ):
            return  # reset: the RST and the events wait for drain()
        else:
            if self.lost_ack_watch is not None and not seg.payload:
                _arrive.test_window_above_gap(self, seg, now)
            _arrive.segment_arrives(self, seg, now)
        _output.transmit(self, now)

    def on_timer(self, now: float) -> None:
        """Fire every deadline that is due, in STYLE.md §6 order."""
        t = self.timers
        at = t.retransmit_at
        if at is not None and now >= at:
            t.retransmit_at = None
            _output.on_retransmit_timeout(self, now)
        at = t.probe_at
        if at is not None and now >= at:
            t.probe_at = None
            if self.scoreboard.ranges:
                _arrive.on_reorder_timeout(self, now)  # (RACK's, not a tail loss probe)
            else:
                _output.on_probe_timeout(self, now)
        at = t.persist_at
        if at is not None and now >= at and self.tcb.state is not TcpState.CLOSED:
            t.persist_at = None
            _output.on_persist_timeout(self, now)
        at = t.delayed_ack_at
        if at is not None and now >= at:
            t.delayed_ack_at = None
            self.ack_now = True
            if self.tcb.ack_on_commit:
                self._spill()
        at = t.keepalive_at
        if at is not None and now >= at and self.tcb.state is not TcpState.CLOSED:
            t.keepalive_at = None
            _output.on_keepalive_timeout(self, now)
        at = t.time_wait_at
        if at is not None and now >= at and self.tcb.state is not TcpState.CLOSED:
            t.time_wait_at = None
            reason = "2MSL" if self.tcb.state is TcpState.TIME_WAIT else "FIN-WAIT-2 timeout"
            self._set_state(TcpState.CLOSED, reason)
        at = t.pmtu_at
        if at is not None and now >= at:
            t.pmtu_at = None
            if self.mss_max > self.tcb.mss:  # RFC 1191 §6.3: try the larger size again
                self._set("mss", self.mss_max)
                self.cc.mss = self.mss_max
                self.count("pmtu_raised")
            self.mss_max = 0
        _output.transmit(self, now)

    def resend_withheld(self, now: float) -> None:
        """The stack withheld this connection's segments while the store was out (G7);
        its state is durable again: send now what the peer waits for, rather than at a
        timer backed off during the outage -- an ACK of everything received, with the
        current window, and a retransmission timeout that fired meanwhile (its resend
        never left) once more. A SYN or SYN,ACK not yet acknowledged goes again too."""
        tcb = self.tcb
        if tcb.state is TcpState.CLOSED:
            return
        self.count("withheld_resent")
        t = self.timers
        at = t.retransmit_at
        if at is not None and at > now and (self.retries or tcb.snd_una_offset < 0):
            t.retransmit_at = now
        if tcb.snd_una_offset >= 0:
            self.ack_now = True
        self.on_timer(now)

    def app_send(self, data: bytes | memoryview, now: float) -> int:
        """Queue ``data`` (RFC 9293 §3.10.2 SEND); returns the bytes accepted (G6 cap).

        Raises:
            LocalProtocolError: The send side is closed (shutdown, close, reset).
        """
        txmap = self.txmap
        if txmap.reserved:
            self._cut_reservation()  # these bytes come after what was queued
        accepted = self._accept(data)
        if accepted is None:
            return 0
        chunk, offset = accepted
        self._tx_needs_from(offset, self.version + 1)
        if txmap.refs or txmap.ref_base:
            offset = txmap.literal(offset)  # the store holds literal bytes only
        self._tx_ops.append((offset, chunk))
        _output.transmit(self, now)
        return len(chunk)

    def _accept(self, data: bytes | memoryview) -> tuple[bytes, int] | None:
        """SEND's common part: refuse a closed send side, take what the send buffer cap
        allows (G6) into the buffer; (the chunk kept, its stream offset) or None if full.

        Raises:
            LocalProtocolError: The send side is closed (shutdown, close, reset).
        """
        tcb = self.tcb
        if not tcb.state.can_send() or tcb.app_closed:
            raise LocalProtocolError(f"send in state {tcb.state}")
        n = min(len(data), self.config.send_buffer_size - len(self.snd_buf))
        if n <= 0:
            return None
        chunk = data if (type(data) is bytes and n == len(data)) else bytes(data[:n])
        return chunk, self.snd_buf.append(chunk)

    def app_send_ref(
        self,
        data: bytes | memoryview,
        name: str,
        src_offset: int,
        now: float,
        src_end: int | None = None,
    ) -> int:
        """Queue ``data``, which is source ``name``'s bytes from ``src_offset``: a
        regenerable send (``txmap.py``). The store records the extent, not the bytes;
        a restore reads them from the source again. Returns the bytes accepted.

        ``src_end``: the application will go on sending this source, contiguously, up
        to source offset ``src_end``. The extent is then recorded ahead, up to half a
        send buffer past what is queued (a *reservation*, ``txmap.py``), so the bytes
        that follow leave without waiting for a commit of their own; a restore
        regenerates the whole recorded extent. Anything else sent, a FIN or
        ``end_reservation`` cuts it back to what was queued.

        Raises:
            LocalProtocolError: The send side is closed (shutdown, close, reset).
        """
        txmap = self.txmap
        if txmap.reserved:
            start = self.snd_buf.end_offset
            if not txmap.within_reservation(start, 0, name, src_offset):
                self._cut_reservation()  # another source, or not where the extent goes on
            else:
                # Up to the end of a record (the durable one first, then its
                # extension) per call: the bytes up to it need only that version.
                for stop in (txmap.prior_reserved, txmap.reserved):
                    if start < stop < start + len(data):
                        data = memoryview(data)[: stop - start]
                        break
        accepted = self._accept(data)
        if accepted is None:
            return 0
        chunk, offset = accepted
        n = len(chunk)
        end = offset + n
        # Inside the record, the bytes need the version that recorded them; otherwise
        # the extent grows and is durable before its bytes leave.
        changed = not txmap.within_reservation(offset, n, name, src_offset)
        txmap.add(offset, n, name, src_offset)
        self._tx_needs_from(offset, self.version + 1 if changed else txmap.version_for(end))
        if src_end is not None:
            ahead = self.config.send_buffer_size >> 1
            want = min(end + (src_end - src_offset - n), end + ahead)
            if want > txmap.reserved and txmap.reserved - end < ahead >> 1:
                txmap.reserve(want, self.version + 1)  # the bytes up to end need no more
                self.count("tx_reserve")
                changed = True
        if changed:
            self._set("tx_refs", txmap.encode())
        _output.transmit(self, now)
        return n

    def end_reservation(self) -> bool:
        """The application sends no more of the reserved extent (``app_send_ref``): the
        record goes back to what was queued, so nothing unsent is regenerated. True if
        that changed the record (a delta to drain)."""
        return self._cut_reservation() if self.txmap.reserved else False

    def _cut_reservation(self) -> bool:
        txmap = self.txmap
        recorded_beyond = txmap.reserved > self.snd_buf.end_offset
        txmap.unreserve()
        if recorded_beyond:
            self._set("tx_refs", txmap.encode())
            # What is sent after the extent's end needs the shorter record durable.
            self._tx_needs_from(self.snd_buf.end_offset, self.version + 1)
        return recorded_beyond

    def _tx_needs_from(self, offset: int, version: int) -> None:
        """What is sent from stream offset ``offset`` on (and a FIN) needs ``version``
        durable; the bytes before it keep needing what they did."""
        if version > self.tx_needs:
            self.tx_low_end = offset
            self.tx_low_needs = self.tx_needs
            self.tx_needs = version

    def app_receive(self, max_bytes: int, now: float) -> bytes:
        """Take up to ``max_bytes`` received bytes (b"" when none are buffered).

        Level 1: reading commits (``read_offset`` = ``commit_offset``; ``RxTrim``), and a
        read that opens the window significantly sends a window update in this call's
        output (the next ``drain()``, unless a data segment or FIN carries it). Level 2
        (``manual_commit``): reading only moves the in-memory cursor; the bytes stay
        stored and keep their window space until ``app_commit``.
        """
        buf = self.rcv_buf
        data = buf.read(max_bytes)
        if data and not self.tcb.manual_commit:
            self._commit_to(buf.read_offset, now)
        return data

    def app_commit(self, offset: int, state: bytes | None, now: float) -> None:
        """Level 2: the app has durably processed the inbound stream up to ``offset``.

        Records ``AppCommit(offset, state)`` atomically with the trim of the stored bytes
        below ``offset`` (G4); the freed window may be announced at once.

        Raises:
            ValueError: ``offset`` is below the last commit or beyond what was read.
        """
        self.check_commit(offset)
        self._app_commit = AppCommit(offset, state)
        self._commit_to(offset, now)

    def check_commit(self, offset: int) -> None:
        """Raise ``ValueError`` unless ``app_commit(offset)`` may be called: ``offset``
        in ``[commit_offset, read_offset]``, committed .. read."""
        buf = self.rcv_buf
        if not buf.commit_offset <= offset <= buf.read_offset:
            raise ValueError(
                f"commit offset {offset} outside [{buf.commit_offset}, {buf.read_offset}]"
                " (committed .. read)"
            )

    def _commit_to(self, offset: int, now: float) -> None:
        buf = self.rcv_buf
        buf.commit_offset = offset
        tcb = self.tcb
        if offset != tcb.commit_offset:
            old_commit = tcb.commit_offset
            old_ack = self.ack_offset() if tcb.ack_on_commit else 0
            tcb.read_offset = tcb.commit_offset = offset
            d = self._dirty
            d["read_offset"] = offset
            d["commit_offset"] = offset
            if tcb.ack_on_commit:
                buf.release(offset)
                if self.rx_stored > old_commit:
                    self._rx_trim = offset  # spilled bytes below offset: not needed
                advanced = self.ack_offset() - old_ack
                if advanced > 0:
                    # The ACK moves with the commit, so it needs the commit durable;
                    # the delayed-ACK rule counts committed bytes (RFC 5681 §4.2).
                    self.rx_needs = self.version + 1
                    _arrive.delayed_ack_rule(self, advanced, now)
                    if self.ack_lagged:
                        # Not delayed: what it would wait for, an answer to carry it,
                        # left already, with the older ACK (an app that answers, then
                        # commits what it answered), and a client whose Nagle waits
                        # for this one would wait a delayed-ACK timeout a round. (An
                        # answer sent after the commit in this step still carries it:
                        # drain() sends it alone only if nothing did.)
                        self.ack_lagged = False
                        self.ack_now = True
                if self.pending_fin and self.ack_offset() == buf.end_offset:
                    _arrive.check_fin(self, offset, now)
                if self.ack_now:
                    self.ack_deferred_at = now  # as a window update: a reply may carry it
                # Committing spilled bytes moves the right edge but not the ACK: the
                # window update below is then the only news for the peer.
            else:
                self._rx_trim = offset
                # The window every segment advertises from now on counts from this
                # commit (``_output.advertise_window``): it must be durable before one
                # leaves, or a crash restores the older commit, replays the bytes after
                # it, and the restored window's right edge lies left of the one the
                # peer saw (RFC 7323 §2.4). Only an outage tells the difference: a
                # round's segments leave after its commit anyway.
                self.rx_needs = self.version + 1
        # No window update once the peer's FIN arrived (Linux tcp_cleanup_rbuf under
        # RCV_SHUTDOWN): it can send nothing more, and from TIME-WAIT an update would
        # meet a peer that already forgot the connection (and answers RST).
        if tcb.state.synchronized() and tcb.state.can_recv() and _output.window_update_due(self):
            # The window update is due in this call's output, but only ``drain()`` sends
            # it on its own (``ack_deferred_at``): data or a FIN the application sends
            # before the drain carries it instead (one segment, not two).
            self.ack_now = True
            self.ack_deferred_at = now
            if tcb.ack_on_commit:
                # Its right edge is the new commit point + buffer: a restore must not
                # find an older commit and shrink the window the peer saw (G3).
                self.rx_needs = self.version + 1

    def app_shutdown(self, now: float) -> None:
        """Half-close (RFC 9293 §3.10.4 CLOSE of the send side): FIN after queued data.

        The FIN needs the state change durable before it leaves (like data, G2): a
        restore must not find a connection that may still send after its FIN.
        """
        if self.txmap.reserved:
            self._cut_reservation()  # the FIN follows the bytes queued, not those recorded
        state = self.tcb.state
        if state is TcpState.SYN_SENT:
            self._set_state(TcpState.CLOSED, "app_shutdown in SYN-SENT")
        elif state is TcpState.SYN_RECEIVED or state is TcpState.ESTABLISHED:
            self._set_state(TcpState.FIN_WAIT_1, "app_shutdown")
        elif state is TcpState.CLOSE_WAIT:
            self._set_state(TcpState.LAST_ACK, "app_shutdown")
        else:
            return
        self._tx_needs_from(self.snd_buf.end_offset, self.version + 1)
        _output.transmit(self, now)

    def app_close(self, now: float) -> None:
        """Full close, as Linux ``close()``: RST if unread data remains (RFC 2525 §2.17),
        otherwise a FIN after queued data, and inbound data afterwards gets a RST."""
        tcb = self.tcb
        state = tcb.state
        if state is TcpState.CLOSED:
            return
        if state is TcpState.SYN_SENT:
            self._set_state(TcpState.CLOSED, "app_close in SYN-SENT")
            return
        if state is not TcpState.TIME_WAIT and (self.recv_available or self.reasm):
            self.app_abort(now)
            return
        if tcb.ack_on_commit and self.rcv_buf.commit_offset < self.rcv_buf.read_offset:
            # Closing says the app is done with what it read: acknowledge it (and a
            # pending FIN), or the peer would retransmit it for ever.
            self._commit_to(self.rcv_buf.read_offset, now)
            if tcb.state is TcpState.CLOSED:
                return
        if not tcb.app_closed:
            self._set("app_closed", True)
        self.app_shutdown(now)
        if tcb.state is TcpState.FIN_WAIT_2:
            _output.arm_orphan_timer(self, now)

    def app_abort(self, now: float) -> None:
        """ABORT (RFC 9293 §3.10.5): CLOSED, with a RST in SYN-RECEIVED, ESTABLISHED,
        FIN-WAIT-1/2 and CLOSE-WAIT; in CLOSING, LAST-ACK and TIME-WAIT the RFC says
        only "delete the TCB" (no RST; Linux ``tcp_need_reset`` agrees)."""
        tcb = self.tcb
        state = tcb.state
        if state is TcpState.CLOSED:
            return
        if not tcb.app_closed:
            self._set("app_closed", True)  # (the app dropped what it did not commit)
        if state in _ABORT_RST_STATES:
            _output.send_rst(self, tcb.snd_nxt, with_ack=True, now=now)
        self._set_state(TcpState.CLOSED, "app_abort")

    def drain(self) -> Step:
        """Everything produced since the last drain: delta, segments, events.

        A window update deferred by a read (``_commit_to``) that no segment has carried
        since is sent now, stamped with the time of that read.
        """
        deferred_at = self.ack_deferred_at
        if deferred_at is not None:
            self.ack_deferred_at = None
            if self.ack_now:
                _output.transmit(self, deferred_at)
        out = self._out
        events = self._events
        if not (out or events or self.delta_pending()):
            return EMPTY_STEP
        dirty = self._dirty
        rx_ops = self._rx_ops
        tx_ops = self._tx_ops
        ops: list[DeltaOp] = []
        rx_trim = self._rx_trim
        if rx_trim is not None:
            # Before the appends: a trim may move the stored stream's end up to where
            # the appends start (ack-on-commit spills), and bytes appended and
            # committed in the same delta are not written at all.
            ops.append(RxTrim(rx_trim))
            self._rx_trim = None
            if rx_ops and rx_ops[0][0] < rx_trim:
                rx_ops = [
                    (o, d) if o >= rx_trim else (rx_trim, d[rx_trim - o :])
                    for o, d in rx_ops
                    if o + len(d) > rx_trim
                ]
                self._rx_ops = []
        if rx_ops:
            if len(rx_ops) > 1:
                rx_ops = _coalesce(rx_ops)
            for o, data in rx_ops:
                ops.append(RxAppend(o, data))
            self._rx_ops = []
        if tx_ops:
            if len(tx_ops) > 1:
                tx_ops = _coalesce(tx_ops)
            for o, data in tx_ops:
                ops.append(TxAppend(o, data))
            self._tx_ops = []
        if self._app_commit is not None:
            ops.append(self._app_commit)
            self._app_commit = None
        if self._tx_trim is not None:
            ops.append(TxTrim(self._tx_trim))
            self._tx_trim = None
        if dirty:
            ops.append(new_tcb_set(dirty))
            self._dirty = {}
        delta: StateDelta | None = None
        if ops:
            self.version += 1
            delta = new_state_delta(self.version, tuple(ops))
        if out:
            self._out = []
        if events:
            self._events = []
        self._ev_readable = self._ev_space = False
        return _new_tuple(Step, (delta, tuple(out), tuple(events)))

    # ------------------------------------------------------------------ mutators

    def _set(self, name: str, value: Any) -> None:
        """The one generic writer of persisted fields: assign and record."""
        setattr(self.tcb, name, value)
        self._dirty[name] = value

    def _set_many(self, fields: dict[str, Any]) -> None:
        """``_set`` for several fields at once."""
        tcb = self.tcb
        for name, value in fields.items():
            setattr(tcb, name, value)
        self._dirty.update(fields)

    def _set_state(self, new: TcpState, reason: str) -> None:
        """The only writer of ``tcb.state``: logs, records, arms/clears timers, emits."""
        tcb = self.tcb
        old = tcb.state
        if old is new:
            return
        tcb.state = new
        self._dirty["state"] = new._value_  # (``.value`` is a property: two calls)
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug("%s %s -> %s (%s)", self.name, old, new, reason)
        if new is TcpState.CLOSED:
            self.timers.clear()
            self._events.append(_CLOSED)
        elif new is TcpState.TIME_WAIT:
            t = self.timers
            t.clear()
            t.time_wait_at = self.last_rx_at + self.config.time_wait_timeout
        elif new is TcpState.ESTABLISHED:
            # Only a segment (the ACK of our SYN, or the SYN-ACK) gets us here.
            _output.arm_keepalive(self, self.last_rx_at)

    def _advance_rcv(self, new_offset: int) -> None:
        """Move ``rcv_nxt`` to stream offset ``new_offset`` (data and/or FIN accepted)."""
        tcb = self.tcb
        rcv_nxt = seq_add(tcb.rcv_nxt, new_offset - tcb.rcv_nxt_offset)
        tcb.rcv_nxt = rcv_nxt
        tcb.rcv_nxt_offset = new_offset
        d = self._dirty
        d["rcv_nxt"] = rcv_nxt
        d["rcv_nxt_offset"] = new_offset
        if not tcb.ack_on_commit:
            self.rx_needs = self.version + 1

    def _rx_append(self, offset: int, data: bytes | memoryview) -> None:
        self.rcv_buf.append(data)
        if not self.tcb.ack_on_commit:
            self._rx_ops.append((offset, data))
        if not self._ev_readable:
            self._ev_readable = True
            self._events.append(_DATA_READABLE)

    def _spill(self) -> None:
        """Ack-on-commit: store the unacknowledged inbound bytes so they can be ACKed
        (the app commits too rarely for the peer's window; see the module docstring)."""
        tcb = self.tcb
        start = self.ack_offset()
        buf = self.rcv_buf
        end = buf.end_offset
        if end <= start or not tcb.state.synchronized():
            return
        self.count("rx_spill")
        # The store's stream may end below ``start`` (committed bytes never stored): a
        # trim to the commit point moves its end up there first (drain puts RxTrim
        # before RxAppend); spilled bytes from the commit point on stay.
        commit = tcb.commit_offset
        self._rx_trim = commit if self._rx_trim is None else max(self._rx_trim, commit)
        for offset, data in buf.pieces_from(start):
            self._rx_ops.append((offset, data))
        self.rx_stored = end
        self.rx_needs = self.version + 1
        if self.pending_fin:
            _arrive.check_fin(self, end, self.last_rx_at)

    def _ack_sent_data(self, ack: Seq, new_una_offset: int) -> None:
        """``snd_una`` advances to ``ack``; trims acknowledged data (``TxTrim``)."""
        self.sent_lost_watch = False  # restored in step with the peer (sent_bytes_lost)
        tcb = self.tcb
        tcb.snd_una = ack
        tcb.snd_una_offset = new_una_offset
        d = self._dirty
        d["snd_una"] = ack
        d["snd_una_offset"] = new_una_offset
        buf = self.snd_buf
        below = min(new_una_offset, buf.end_offset)
        if below > buf.base_offset:
            buf.trim(below)
            txmap = self.txmap
            if txmap.refs or txmap.ref_base:
                self._tx_trim = txmap.literal(below)
                if txmap.trim(below):
                    self._set("tx_refs", txmap.encode())
                    self._set("tx_ref_base", txmap.ref_base)
            else:
                self._tx_trim = below
            if not self._ev_space:
                self._ev_space = True
                self._events.append(_SEND_SPACE)

    def _advance_snd_nxt(self, new_offset: int) -> None:
        tcb = self.tcb
        snd_nxt = seq_add(tcb.snd_una, new_offset - tcb.snd_una_offset)
        tcb.snd_nxt = snd_nxt
        self._dirty["snd_nxt"] = snd_nxt

    # ------------------------------------------------------------------ helpers

    def snd_nxt_offset(self) -> int:
        tcb = self.tcb
        return tcb.snd_una_offset + seq_diff(tcb.snd_nxt, tcb.snd_una)

    def tsval(self, now: float) -> int:
        """Our TSval at ``now`` (RFC 7323 §5.4: 1 ms ticks from the persisted base, G3)."""
        return (int(now * 1000) + self.tcb.tsval_offset) & 0xFFFFFFFF

    def count(self, name: str) -> None:
        self.counters[name] = self.counters.get(name, 0) + 1

    def emit(self, event: Event) -> None:
        self._events.append(event)

    def pending_events(self) -> list[Event]:
        """The events the next ``drain()`` reports (read only: a look ahead, e.g. for
        the cause of a state the application meets before that drain)."""
        return self._events

    def emit_segment(self, seg: OutSegment) -> None:
        self._out.append(seg)

    def check_invariants(self) -> None:
        """For tests: assert the identities the code maintains."""
        tcb = self.tcb
        assert set(TCB_FIELDS) <= set(dir(tcb))
        assert seq_diff(tcb.snd_nxt, tcb.snd_una) >= 0
        if tcb.state is not TcpState.CLOSED:
            assert self.recv_available <= self.config.recv_buffer_size
        assert self.snd_buf.base_offset <= self.snd_buf.end_offset
