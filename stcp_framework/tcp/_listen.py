"""The passive-open SYN (RFC 9293 §3.10.7.2) and SYN-SENT (§3.10.7.3).

Kept apart from the synchronized states as the RFC and Linux
(``tcp_rcv_synsent_state_process``) do. The LISTEN state itself is the stack's
listener table: a Connection starts at the SYN.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

from ..wire.options import MD5_OPTION_LEN
from ..wire.seq import Seq, seq_add, seq_gt, seq_le
from ..wire.tcp import ACK, FIN, RST, SYN, TcpOptions, TcpSegment
from . import _arrive, _output
from .events import Connected, Reset
from .state import TcpState

if TYPE_CHECKING:
    from .machine import Connection

TS_OPTION_LEN = 12  # RFC 7323 §3: 10 bytes + 2 NOPs, deducted from every segment


def option_overhead(timestamps: bool, md5: bool) -> int:
    """Option bytes every segment of a connection carries (deducted from its MSS)."""
    return (TS_OPTION_LEN if timestamps else 0) + (MD5_OPTION_LEN if md5 else 0)


DEFAULT_MSS = 536  # RFC 9293 §3.7.1: send MSS when the peer sent no MSS option (IPv4)
MIN_MSS = 48  # Linux tcp_min_snd_mss: never build smaller segments than this
MAX_WSCALE = 14  # RFC 7323 §2.3


@functools.cache
def choose_rcv_wscale(recv_buffer_size: int) -> int:
    """Smallest shift so that a 16-bit window covers the whole buffer (RFC 7323 §2.3).

    (Cached: one value per configured buffer size, asked at every SYN.)
    """
    ws = 0
    while ws < MAX_WSCALE and (0xFFFF << ws) < recv_buffer_size:
        ws += 1
    return ws


def negotiate(c: Connection, opts: TcpOptions) -> None:
    """Apply the peer's SYN options (RFC 9293 §3.7.1, RFC 7323 §2.2 and §3.2)."""
    config = c.config
    ts_ok = config.timestamps and opts.timestamps is not None
    if c.offer_wscale and opts.wscale is not None:
        snd_wscale = min(opts.wscale, MAX_WSCALE)  # RFC 7323 §2.3: clamp to 14
        rcv_wscale = choose_rcv_wscale(config.recv_buffer_size)
    else:
        snd_wscale = rcv_wscale = 0
        c.offer_wscale = False
    peer_mss = opts.mss if opts.mss else DEFAULT_MSS
    mss = max(MIN_MSS, min(peer_mss, config.mss) - option_overhead(ts_ok, config.md5))
    fields = {
        "timestamps": ts_ok,
        "snd_wscale": snd_wscale,
        "rcv_wscale": rcv_wscale,
        "mss": mss,
        "sack_permitted": config.sack and opts.sack_permitted,  # RFC 2018 §2
    }
    if ts_ok:
        assert opts.timestamps is not None
        fields["ts_recent"] = opts.timestamps[0]
    c._set_many(fields)
    c.cc.set_mss(mss, config.initial_cwnd_segments)


def _accept_peer_syn(c: Connection, seg: TcpSegment) -> None:
    """Record IRS, RCV.NXT and the unscaled SYN window (RFC 9293 §3.10.7.2/3)."""
    irs = Seq(seg.seq)
    rcv_nxt = seq_add(irs, 1)
    c._set_many(
        {
            "irs": irs,
            "rcv_nxt": rcv_nxt,
            "rcv_nxt_offset": 0,
            "rcv_wup": rcv_nxt,
            "snd_wnd": seg.window,  # RFC 7323 §2.2: the window in a SYN is never scaled
            "max_window": seg.window,
            "snd_wl1": irs,
            "snd_wl2": Seq(seg.ack),
        }
    )
    c.rx_needs = c.version + 1


def accept_syn(c: Connection, syn: TcpSegment, now: float) -> None:
    """A SYN at a listening port: SYN-RECEIVED and a SYN-ACK (RFC 9293 §3.10.7.2)."""
    c.offer_wscale = c.config.window_scaling and syn.options.wscale is not None
    negotiate(c, syn.options)
    _accept_peer_syn(c, syn)
    c._set_state(TcpState.SYN_RECEIVED, "passive open")
    _output.send_syn(c, now)
    # The first delta is the whole record (a restarted instance must know the flow
    # the peer's ACK belongs to): every field as it is now, the ones set above too.
    c._dirty = c.tcb.to_record()


def syn_sent_arrives(c: Connection, seg: TcpSegment, now: float) -> None:
    """SEGMENT ARRIVES in SYN-SENT (RFC 9293 §3.10.7.3)."""
    tcb = c.tcb
    flags = seg.flags
    ack = Seq(seg.ack)
    ack_ok = False
    # First: the ACK bit.
    if flags & ACK:
        if seq_le(ack, tcb.iss) or seq_gt(ack, tcb.snd_nxt):
            if not flags & RST:
                _output.send_rst(c, ack, with_ack=False, now=now)
            return
        ack_ok = True
    # Second: the RST bit (RFC 5961 §3: acceptable only with an acceptable ACK).
    if flags & RST:
        if ack_ok:
            c.emit(Reset(refused=True))
            c._set_state(TcpState.CLOSED, "connection refused")
        return
    # Third (security) is not implemented. Fourth: the SYN bit.
    if not flags & SYN:
        return
    negotiate(c, seg.options)
    _accept_peer_syn(c, seg)
    if not ack_ok:
        # Simultaneous open: SYN-RECEIVED, send SYN,ACK with our ISS.
        c._set_state(TcpState.SYN_RECEIVED, "simultaneous open")
        c.retries = 0
        _output.send_syn(c, now)
        return
    _output.rtt_sample_on_ack(c, seg, 0, now)
    c._ack_sent_data(ack, 0)
    c.snd_ptr = 0
    c.retries = 0
    c.timers.retransmit_at = None
    c._set_state(TcpState.ESTABLISHED, "SYN-ACK")
    c.emit(Connected())
    c.ack_now = True
    # RFC 9293: "If there are other controls or text in the segment, continue
    # processing at the sixth step": text and FIN after the SYN.
    if seg.payload or flags & FIN:
        rest = seg._replace(seq=seq_add(Seq(seg.seq), 1), flags=flags & ~SYN)
        payload, off, fin = rest.payload, 0, bool(flags & FIN)
        window = c.tcb.rcv_wnd
        if len(payload) > window:
            payload, fin = payload[:window], False
        if payload:
            _arrive.process_text(c, payload, off, now)
        if fin and c.tcb.state is not TcpState.CLOSED:
            _arrive.check_fin(c, off + len(payload), now)
