"""State deltas: what the machine says must be durable (STYLE.md §4).

Every op is *absolute and idempotent*: applying a delta twice (a retried Redis
pipeline, a failover) gives the same store contents. Offsets are unbounded stream
offsets: byte 0 is the first data byte after the SYN, in each direction. Sequence
numbers never appear in store keys.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class TcbSet:
    """Set these TCB fields (names of ``Tcb`` attributes) to these values."""

    fields: dict[str, Any]


@dataclass(frozen=True, slots=True)
class RxAppend:
    """Received, in-order bytes ``[offset, offset + len(data))`` of the inbound stream
    (a large segment's payload may be a view of an immutable ``bytes``: keep it as is)."""

    offset: int
    data: bytes | memoryview


@dataclass(frozen=True, slots=True)
class RxTrim:
    """Inbound bytes below ``below`` are no longer needed (read and committed).

    ``below`` may lie beyond the stored end (ack-on-commit never stores bytes committed
    at once): the stream then continues, empty, at ``below``. A delta lists it before
    its ``RxAppend`` ops.
    """

    below: int


@dataclass(frozen=True, slots=True)
class TxAppend:
    """Accepted outbound bytes ``[offset, offset + len(data))`` (from ``app_send``)."""

    offset: int
    data: bytes


@dataclass(frozen=True, slots=True)
class TxTrim:
    """Outbound bytes below ``below`` are acknowledged by the peer."""

    below: int


@dataclass(frozen=True, slots=True)
class AppCommit:
    """The application processed the inbound stream up to ``offset``; its ``state``."""

    offset: int
    state: bytes | None


DeltaOp = TcbSet | RxAppend | RxTrim | TxAppend | TxTrim | AppCommit


@dataclass(frozen=True, slots=True)
class StateDelta:
    """All ops produced by one connection since its last ``drain()``.

    ``version`` numbers the deltas of one connection 1, 2, ...; a segment with
    ``needs_version = v`` may leave only once every delta up to ``v`` is durable.
    """

    version: int
    ops: tuple[DeltaOp, ...]


# Fast constructors for the two records every drain() makes. A frozen dataclass's
# __init__ assigns each field with object.__setattr__ (about 0.9 us for two fields);
# writing the slots through their descriptors gives the same object in 0.5 us. They
# are as immutable as ever afterwards. Compiled by mypyc (stcp_framework._core), they
# are native classes: object.__new__ refuses them and their constructors are fast.
_object_new = object.__new__
_RAW_NEW = TcbSet.__new__ is _object_new and StateDelta.__new__ is _object_new


def slot_setter(cls: type, name: str) -> Callable[[object, object], None]:
    """The raw writer of slot ``name`` of a frozen ``slots=True`` dataclass, for a fast
    constructor that fills a fresh instance once (never for changing one)."""
    setter: Callable[[object, object], None] = cls.__dict__[name].__set__
    return setter


_set_tcb_set_fields = slot_setter(TcbSet, "fields")
_set_delta_version = slot_setter(StateDelta, "version")
_set_delta_ops = slot_setter(StateDelta, "ops")


def new_tcb_set(fields: dict[str, Any]) -> TcbSet:
    """``TcbSet(fields)``, built faster (see above)."""
    if not _RAW_NEW:
        return TcbSet(fields)
    op: TcbSet = _object_new(TcbSet)
    _set_tcb_set_fields(op, fields)
    return op


def new_state_delta(version: int, ops: tuple[DeltaOp, ...]) -> StateDelta:
    """``StateDelta(version, ops)``, built faster (see above)."""
    if not _RAW_NEW:
        return StateDelta(version, ops)
    delta: StateDelta = _object_new(StateDelta)
    _set_delta_version(delta, version)
    _set_delta_ops(delta, ops)
    return delta
