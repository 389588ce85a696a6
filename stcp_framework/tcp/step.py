"""What one ``Connection.drain()`` returns: deltas, segments and events."""

from __future__ import annotations

from typing import NamedTuple

from ..wire.tcp import TcpOptions
from .delta import StateDelta
from .events import Event


class OutSegment(NamedTuple):
    """A segment to transmit; the stack adds addresses and ports and builds it.

    A ``NamedTuple`` (immutable, and about eight times cheaper to build than a frozen
    dataclass: the machine makes one per segment, STYLE.md §5). The machine builds it
    positionally with ``tuple.__new__`` on its hot path.

    Attributes:
        seq, ack: 32-bit sequence numbers (``ack`` meaningful only with ACK set).
        flags: ``TcpFlags`` bits.
        window: The 16-bit header value, already shifted right by our window scale.
        options: Options to emit.
        payload: Data bytes (a view of the send buffer; valid until the next call
            into the machine).
        needs_version: Transmit only after this connection's deltas up to this
            version are durable (0 = no requirement).
        gso_size: 0 for an ordinary segment. Otherwise the segment is a super-segment
            (``TcpConfig.gso_max``): its payload is longer than one MSS and the device
            splits it into segments of ``gso_size`` payload bytes (the last may be
            shorter), each with the same ACK, window and options (RFC 7323: one TSval,
            as Linux TSO), PSH and FIN on the last only.
    """

    seq: int
    ack: int
    flags: int
    window: int
    options: TcpOptions
    payload: bytes | memoryview
    needs_version: int
    gso_size: int = 0


class Step(NamedTuple):
    """What one ``drain()`` returns (STYLE.md §3); immutable, cheap to build."""

    delta: StateDelta | None
    segments: tuple[OutSegment, ...]
    events: tuple[Event, ...]


EMPTY_STEP = Step(None, (), ())
