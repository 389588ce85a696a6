"""Connection states with their RFC 9293 §3.3.2 spellings."""

from __future__ import annotations

import enum


class TcpState(enum.Enum):
    CLOSED = "CLOSED"
    LISTEN = "LISTEN"
    SYN_SENT = "SYN-SENT"
    SYN_RECEIVED = "SYN-RECEIVED"
    ESTABLISHED = "ESTABLISHED"
    FIN_WAIT_1 = "FIN-WAIT-1"
    FIN_WAIT_2 = "FIN-WAIT-2"
    CLOSE_WAIT = "CLOSE-WAIT"
    CLOSING = "CLOSING"
    LAST_ACK = "LAST-ACK"
    TIME_WAIT = "TIME-WAIT"

    def __str__(self) -> str:
        return self.value

    def synchronized(self) -> bool:
        """True once the SYNs have been exchanged (RFC 9293 §3.10.7.4)."""
        return self not in _UNSYNCHRONIZED

    def can_send(self) -> bool:
        """The application may still queue data (no FIN queued yet)."""
        return self in _CAN_SEND

    def can_recv(self) -> bool:
        """The peer may still send data (no FIN received yet)."""
        return self in _CAN_RECV


# Tuples, not sets: membership tests identity first, where a set would call the
# (Python-level) Enum.__hash__; these predicates run on every app call.
FIN_QUEUED = (TcpState.FIN_WAIT_1, TcpState.CLOSING, TcpState.LAST_ACK)
"""States with our FIN queued and not yet acknowledged (sent, or to send next)."""
_UNSYNCHRONIZED = (TcpState.CLOSED, TcpState.LISTEN, TcpState.SYN_SENT)
_CAN_SEND = (TcpState.ESTABLISHED, TcpState.CLOSE_WAIT, TcpState.SYN_SENT, TcpState.SYN_RECEIVED)
_CAN_RECV = (
    TcpState.ESTABLISHED,
    TcpState.FIN_WAIT_1,
    TcpState.FIN_WAIT_2,
    TcpState.SYN_SENT,
    TcpState.SYN_RECEIVED,
)
