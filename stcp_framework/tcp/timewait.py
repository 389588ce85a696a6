"""A quiet TIME-WAIT connection, kept as a compact record instead of a ``Connection``.

A connection in TIME-WAIT has nothing left to send or read: both FINs are through and
acknowledged. It only waits out 2*MSL (RFC 9293 §3.10.8), answering the odd segment
that still comes -- a retransmitted FIN gets an ACK, an in-window RST or a new SYN
(RFC 6191) ends it early -- and most never see one. Its ``Connection`` (~2 KB in the
process with buffers, congestion state, RTT estimator, scoreboard and lists) is then
dead weight: a server that closes first holds one per connection of the last minute
(Linux keeps a ~0.2 KB ``inet_timewait_sock`` instead).

``Connection.freeze_time_wait`` returns a ``TimeWaitRecord`` when the connection is
quiet -- TIME-WAIT, no timer but 2*MSL, no pending output, no unread, unsent or
out-of-order byte -- and ``Connection.thaw_time_wait`` builds an equivalent connection
from it when a segment arrives: the same ``Tcb`` object (every field RFC 9293 and RFC
7323 need to answer: SND.NXT, RCV.NXT, the windows and scales, TS.Recent and our
timestamp clock), the same delta version, 2*MSL deadline, counters and the runtime
fields that shape an answer -- among them the rate limits of RFC 5961 challenge ACKs and
of ACKs to unacceptable segments, which a rebuild must not reset: a connection frozen
again after each stray segment would otherwise answer every one. What restarts is what
a restore restarts too and TIME-WAIT never uses: the RTT estimate, congestion state.

The store is not involved: the flow's record there is the one the last delta left,
and stays until the flow is forgotten.
"""

from __future__ import annotations

from typing import NamedTuple

from ..wire.seq import Seq, seq_gt
from ..wire.tcp import ACK, RST, SYN, TcpSegment
from .config import TcpConfig
from .state import TcpState
from .tcb import Tcb


class TimeWaitRecord(NamedTuple):
    """What a quiet TIME-WAIT connection needs to be rebuilt (see the module docstring)."""

    tcb: Tcb
    config: TcpConfig
    version: int  # the last delta version drained: a rebuilt machine numbers after it
    time_wait_at: float  # the 2*MSL deadline
    last_rx_at: float
    snd_end: int  # the send stream's end offset: every byte acknowledged
    snd_ptr: int
    rcv_end: int  # the receive stream's end offset: every byte read and committed
    rcv_mss: int
    mss_max: int
    maybe_sent_end: int
    challenge_window_at: float
    challenge_count: int
    invalid_ack_at: float
    name: str
    counters: dict[str, int]


def new_syn_acceptable(tcb: Tcb, seg: TcpSegment) -> bool:
    """RFC 6191: may this SYN open a new incarnation of a flow in TIME-WAIT?

    With timestamps on both incarnations the SYN's TSval must be newer than
    ``ts_recent``, or equal to it with a seq above ``rcv_nxt`` (a client that reconnects
    within one TS tick); otherwise its seq must be above ``rcv_nxt``. The stack then drops
    the old connection and opens a new one with the SYN (its ISS from RFC 6528 is then
    normally above ``tcb.snd_nxt``, as RFC 6191 wants). Needs the ``Tcb`` only, so a
    frozen connection answers without a rebuild.
    """
    if tcb.state is not TcpState.TIME_WAIT or seg.flags & (SYN | ACK | RST) != SYN:
        return False
    ts = seg.options.timestamps
    if tcb.timestamps and ts is not None and ts[0] != tcb.ts_recent:
        return seq_gt(Seq(ts[0]), Seq(tcb.ts_recent))
    return seq_gt(Seq(seg.seq), tcb.rcv_nxt)
