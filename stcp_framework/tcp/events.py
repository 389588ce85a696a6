"""What happened to a connection, for the API layer to wake (past tense, frozen)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Connected:
    """The three-way handshake completed (ESTABLISHED)."""


@dataclass(frozen=True, slots=True)
class DataReadable:
    """New in-order bytes can be read with ``app_receive``."""


@dataclass(frozen=True, slots=True)
class EofReceived:
    """The peer's FIN arrived in order: after the buffered bytes, reads return EOF."""


@dataclass(frozen=True, slots=True)
class SendSpace:
    """Send buffer space was freed (acknowledged data); ``app_send`` may accept more."""


@dataclass(frozen=True, slots=True)
class Reset:
    """The peer reset the connection (or refused it: RST in SYN-SENT)."""

    refused: bool = False


@dataclass(frozen=True, slots=True)
class Aborted:
    """This side reset the connection because TCP's promise to the peer was broken:
    ``reason`` says how (acknowledged bytes lost in a crash of an async-mode server)."""

    reason: str


@dataclass(frozen=True, slots=True)
class TimedOut:
    """Retransmissions (or SYN / keepalive / zero-window probes) were exhausted."""


@dataclass(frozen=True, slots=True)
class Closed:
    """The connection reached CLOSED and can be removed from the flow table."""


Event = Connected | DataReadable | EofReceived | SendSpace | Reset | Aborted | TimedOut | Closed
