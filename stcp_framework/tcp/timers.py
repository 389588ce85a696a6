"""Timers as deadline fields (STYLE.md §6); ``None`` = not armed.

Deadlines are absolute times on the driver's clock (runtime only, never persisted:
a restore re-creates them against the new clock).
"""

from __future__ import annotations


class Timers:
    """The deadlines of one connection; ``on_timer`` checks them in this order.

    Attributes:
        retransmit_at: RFC 6298 retransmission timer (also SYN / SYN-ACK / FIN).
        persist_at: Zero-window probe (persist) timer, RFC 9293 §3.8.6.1.
        delayed_ack_at: RFC 9293 §3.8.6.3 delayed ACK.
        keepalive_at: RFC 9293 §3.8.4 keepalive (off unless configured).
        time_wait_at: 2*MSL in TIME-WAIT; also the orphaned FIN-WAIT-2 limit
            (Linux ``tcp_fin_timeout``) after ``app_close``.
        pmtu_at: Try the full MSS again after a path MTU reduction (RFC 1191 §6.3).
        probe_at: Tail loss probe (RFC 8985 §7), before the retransmission timer; with
            a hole SACKed around, RACK's reordering timer (RFC 8985 §6.3) instead.
    """

    __slots__ = (
        "delayed_ack_at",
        "keepalive_at",
        "persist_at",
        "pmtu_at",
        "probe_at",
        "retransmit_at",
        "time_wait_at",
    )

    def __init__(self) -> None:
        self.retransmit_at: float | None = None
        self.persist_at: float | None = None
        self.delayed_ack_at: float | None = None
        self.keepalive_at: float | None = None
        self.time_wait_at: float | None = None
        self.pmtu_at: float | None = None
        self.probe_at: float | None = None

    def next_deadline(self) -> float | None:
        best: float | None = None
        for at in (
            self.retransmit_at,
            self.persist_at,
            self.delayed_ack_at,
            self.keepalive_at,
            self.time_wait_at,
            self.pmtu_at,
            self.probe_at,
        ):
            if at is not None and (best is None or at < best):
                best = at
        return best

    def clear(self) -> None:
        self.retransmit_at = None
        self.persist_at = None
        self.delayed_ack_at = None
        self.keepalive_at = None
        self.time_wait_at = None
        self.pmtu_at = None
        self.probe_at = None
