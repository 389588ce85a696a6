"""The state store interface (DESIGN.md "Store layout")."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

from ..tcp.delta import RxAppend, StateDelta, TxAppend, slot_setter

SECRET_BYTES = 16
"""Length of a new ``Store.stack_secret``."""


class StoreError(Exception):
    """Base class of store failures."""


class StoreUnavailable(StoreError):
    """Transient: the store cannot be reached. Stop ACKing, keep the flow (G7)."""


class StoreRefused(StoreError):
    """The store refuses this client as configured -- its credentials, or its TLS
    certificate does not verify: no retry cures it, so it is not waited out like
    ``StoreUnavailable``; ``stcp`` exits with one line and status 2, as for a bad
    setting."""


class FencedOut(StoreError):
    """Fatal for the flow on this instance: another owner holds a newer epoch (G5).

    Attributes:
        flow_ids: The fenced flows (empty when the store could not tell).
    """

    def __init__(self, message: str, flow_ids: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.flow_ids = tuple(flow_ids)


class FlowLost(StoreError):
    """The store no longer holds (all of) these flows' state: reset them, keep the others.

    Attributes:
        flow_ids: The flows whose state is gone.
        reasons: One line per flow, for those the store said why.
    """

    def __init__(
        self, flow_ids: Sequence[str], detail: str, reasons: dict[str, str] | None = None
    ) -> None:
        self.flow_ids = tuple(flow_ids)
        self.reasons = {
            flow_id: f"store lost the state of {flow_id}: {why}"
            for flow_id, why in (reasons or {}).items()
        }
        shown = ", ".join(self.flow_ids[:5]) + (", ..." if len(self.flow_ids) > 5 else "")
        super().__init__(f"store lost the state of {shown}: {detail}")


@dataclass(frozen=True, slots=True)
class FlowDelta:
    """One connection's delta in a group commit, tagged with its flow id and epoch."""

    flow_id: str
    epoch: int
    delta: StateDelta


_set_flow_id = slot_setter(FlowDelta, "flow_id")
_set_epoch = slot_setter(FlowDelta, "epoch")
_set_delta = slot_setter(FlowDelta, "delta")


def new_flow_delta(flow_id: str, epoch: int, delta: StateDelta) -> FlowDelta:
    """``FlowDelta(flow_id, epoch, delta)`` without the frozen dataclass ``__init__``
    (``object.__setattr__`` per field): the runtime makes one per drained delta."""
    item: FlowDelta = object.__new__(FlowDelta)
    _set_flow_id(item, flow_id)
    _set_epoch(item, epoch)
    _set_delta(item, delta)
    return item


def payload_bytes(items: Iterable[FlowDelta]) -> int:
    """The stream bytes the deltas ``items`` append (what a store must take in)."""
    total = 0
    for item in items:
        for op in item.delta.ops:
            kind = type(op)
            if kind is RxAppend or kind is TxAppend:
                total += len(op.data)  # type: ignore[union-attr]
    return total


@dataclass(slots=True)
class FlowRecord:
    """Everything the store holds for one flow, as loaded for recovery."""

    flow_id: str
    epoch: int
    version: int
    tcb: dict[str, object]
    rx: bytes
    rx_offset: int
    tx: bytes
    tx_offset: int
    app_state: bytes | None
    commit_offset: int


@dataclass(frozen=True, slots=True)
class FlowInfo:
    """What the store holds for one flow, without the bytes (for ``stcp flows``).

    Attributes:
        flow_id: The flow (``stack.flows.flow_id_of``).
        epoch: The owner's fencing epoch (0 if none).
        version: The version of the last delta applied.
        tcb: The TCB record (``Tcb.to_record`` fields); empty for a claim-only record.
        rx_offset, rx_len: Inbound bytes held: stream offsets ``[rx_offset, rx_offset +
            rx_len)``.
        tx_offset, tx_len: Outbound bytes held (unacknowledged and unsent).
        app_state_len: Size of the app state of the last commit (``None``: no state).
        commit_offset: Inbound offset of the app's last commit.
    """

    flow_id: str
    epoch: int
    version: int
    tcb: dict[str, object]
    rx_offset: int
    rx_len: int
    tx_offset: int
    tx_len: int
    app_state_len: int | None
    commit_offset: int


class Store(Protocol):
    """What the stack needs from a store. ``MemoryStore`` and ``RedisStore`` conform."""

    async def next_epoch(self) -> int:
        """A fencing epoch for this store's flows (a ``RedisStore``'s service), larger than
        any handed out before. The flows a stack restores (``list_flows``) and the epoch
        it claims them with have the one scope: a newer stack on the store -- restarted,
        upgraded, renamed -- takes them over (G5)."""

    async def stack_secret(self) -> bytes:
        """The secret key of this store's stacks (a ``RedisStore``'s service): random,
        made by the first call and the same for every later one, also from another
        process. It keys the ISS function (RFC 6528) and the SYN cookies, so a restarted
        stack takes the cookies its predecessor sent (RFC 4987 keeps no state for them)."""

    async def claim(self, flow_id: str, epoch: int) -> None:
        """Take ownership of a flow with ``epoch``; raises ``FencedOut`` if stale."""

    async def commit(self, batch: Sequence[FlowDelta]) -> None:
        """Make every delta of the batch durable (one round trip); all or raise."""

    async def load(self, flow_id: str) -> FlowRecord | None:
        """Load one flow, or ``None`` if the store does not know it."""

    async def claim_many(self, flow_ids: Sequence[str], epoch: int) -> list[str]:
        """``claim`` for many flows at once (a few round trips per thousand flows).

        Returns:
            The flows claimed, in the order given; a flow whose owner epoch is larger
            than ``epoch`` is left out (fenced), not raised for.
        """

    async def load_many(self, flow_ids: Sequence[str]) -> dict[str, FlowRecord | None]:
        """``load`` for many flows at once (a few round trips per thousand flows).

        Returns:
            Every flow id given, mapped to its record, or to ``None`` if the store does
            not know it -- or no longer holds it whole (its buffers are gone: ``load``
            would raise ``FlowLost``); such a flow cannot be restored, only forgotten.
        """

    async def forget(self, flow_id: str, epoch: int) -> None:
        """Remove a closed flow."""

    async def forget_many(self, items: Sequence[tuple[str, int]]) -> list[str]:
        """Remove closed flows ``(flow_id, epoch)`` in one round trip where the store
        can; returns the ids left alone because a newer epoch owns them (fenced).

        Raises:
            StoreUnavailable: The store is unreachable (nothing or part was removed;
                recovery removes the rest).
        """

    async def list_flows(self) -> list[str]:
        """Every flow id the store holds."""

    async def aclose(self) -> None:
        """Release connections."""
