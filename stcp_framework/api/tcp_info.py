"""``TcpInfo``: a snapshot of one connection's TCP numbers (like Linux ``TCP_INFO``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..tcp.machine import Connection


@dataclass(frozen=True, slots=True)
class TcpInfo:
    """What ``Stream.tcp_info`` reports (what ``ss -ti`` shows for a kernel socket).

    Attributes:
        state: The TCP state, RFC 9293 spelling (``"ESTABLISHED"``).
        mss: Largest payload we send now (after timestamps and path MTU discovery).
        cwnd, ssthresh: Congestion window and slow-start threshold, in bytes.
        srtt, rto: Smoothed round-trip time (``None`` before a sample) and the current
            retransmission timeout, in seconds.
        snd_wnd, rcv_wnd: The peer's window and the one we advertise, in bytes.
        unacked: Bytes sent or queued but not acknowledged.
        in_recovery: In fast recovery (RFC 6582 / RFC 6675).
        sack, timestamps, window_scaling: What was agreed at the handshake.
        counters: Events since this process took the connection over (a restore starts
            them at zero): ``retransmit``, ``fast_retransmit``, ``rto``,
            ``sack_retransmit``, ``sack_ack_sent``, ``dsack_sent``, ``pmtu_lowered``, ...
    """

    state: str
    mss: int
    cwnd: int
    ssthresh: int
    srtt: float | None
    rto: float
    snd_wnd: int
    rcv_wnd: int
    unacked: int
    in_recovery: bool
    sack: bool
    timestamps: bool
    window_scaling: bool
    counters: dict[str, int]


def tcp_info_of(conn: Connection) -> TcpInfo:
    """The numbers of ``conn`` now."""
    tcb = conn.tcb
    cc = conn.cc
    return TcpInfo(
        state=str(tcb.state),
        mss=tcb.mss,
        cwnd=cc.cwnd,
        ssthresh=min(cc.ssthresh, 1 << 31),  # "arbitrarily high" until the first loss
        srtt=conn.rtt.srtt,
        rto=conn.rtt.rto,
        snd_wnd=tcb.snd_wnd,
        rcv_wnd=tcb.rcv_wnd,
        unacked=conn.unacked,
        in_recovery=cc.in_recovery,
        sack=tcb.sack_permitted,
        timestamps=tcb.timestamps,
        window_scaling=tcb.rcv_wscale > 0 or tcb.snd_wscale > 0,
        counters=dict(conn.counters),
    )
