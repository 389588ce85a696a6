"""``MemoryStore``: the in-process store, with the same semantics as the Redis one.

It applies the same absolute, idempotent ops, enforces the same fencing epochs, and
``crash()`` models a process death: only what ``commit`` returned for survives. It is
the store of unit and simulation tests and of benchmarks of the stack alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from ..tcp.delta import AppCommit, RxAppend, RxTrim, TcbSet, TxAppend, TxTrim
from .base import FencedOut, FlowDelta, FlowRecord


@dataclass(slots=True)
class _Stream:
    """Bytes ``[base, base + len(data))`` of one direction's stream."""

    base: int = 0
    data: bytearray = field(default_factory=bytearray)

    def append(self, offset: int, chunk: bytes) -> None:
        end = self.base + len(self.data)
        if offset > end:
            raise ValueError(f"gap in stream: append at {offset}, have up to {end}")
        skip = end - offset  # idempotent re-apply: only the part past `end` is new
        if skip < len(chunk):
            self.data += chunk[skip:] if skip > 0 else chunk

    def trim(self, below: int) -> None:
        n = below - self.base
        if n <= 0:
            return
        if n >= len(self.data):
            self.data.clear()
        else:
            del self.data[:n]
        self.base = below


@dataclass(slots=True)
class _Flow:
    epoch: int
    version: int = 0
    tcb: dict[str, object] = field(default_factory=dict)
    rx: _Stream = field(default_factory=_Stream)
    tx: _Stream = field(default_factory=_Stream)
    app_state: bytes | None = None
    commit_offset: int = 0


class MemoryStore:
    """A ``Store`` kept in this process's memory."""

    def __init__(self) -> None:
        self._flows: dict[str, _Flow] = {}
        self.commits = 0  # group commits served (for tests and benchmarks)

    async def claim(self, flow_id: str, epoch: int) -> None:
        self.claim_sync(flow_id, epoch)

    def claim_sync(self, flow_id: str, epoch: int) -> None:
        flow = self._flows.get(flow_id)
        if flow is None:
            self._flows[flow_id] = _Flow(epoch=epoch)
        elif epoch < flow.epoch:
            raise FencedOut(f"{flow_id}: epoch {epoch} < owner epoch {flow.epoch}")
        else:
            flow.epoch = epoch

    async def commit(self, batch: Sequence[FlowDelta]) -> None:
        self.commit_sync(batch)

    def commit_sync(self, batch: Sequence[FlowDelta]) -> None:
        """Apply a group commit. Fencing is checked for the whole batch first."""
        flows = self._flows
        for item in batch:
            flow = flows.get(item.flow_id)
            if flow is not None and item.epoch < flow.epoch:
                raise FencedOut(f"{item.flow_id}: epoch {item.epoch} < owner {flow.epoch}")
        for item in batch:
            flow = flows.get(item.flow_id)
            if flow is None:
                flow = flows[item.flow_id] = _Flow(epoch=item.epoch)
            delta = item.delta
            if delta.version <= flow.version:
                continue  # already applied (a retried batch)
            for op in delta.ops:
                if type(op) is RxAppend:
                    flow.rx.append(op.offset, op.data)
                elif type(op) is TxAppend:
                    flow.tx.append(op.offset, op.data)
                elif type(op) is TcbSet:
                    flow.tcb.update(op.fields)
                elif type(op) is RxTrim:
                    flow.rx.trim(op.below)
                elif type(op) is TxTrim:
                    flow.tx.trim(op.below)
                elif type(op) is AppCommit:
                    flow.commit_offset = op.offset
                    flow.app_state = op.state
            flow.version = delta.version
        self.commits += 1

    async def load(self, flow_id: str) -> FlowRecord | None:
        flow = self._flows.get(flow_id)
        if flow is None:
            return None
        return FlowRecord(
            flow_id=flow_id,
            epoch=flow.epoch,
            version=flow.version,
            tcb=dict(flow.tcb),
            rx=bytes(flow.rx.data),
            rx_offset=flow.rx.base,
            tx=bytes(flow.tx.data),
            tx_offset=flow.tx.base,
            app_state=flow.app_state,
            commit_offset=flow.commit_offset,
        )

    async def forget(self, flow_id: str, epoch: int) -> None:
        flow = self._flows.get(flow_id)
        if flow is not None:
            if epoch < flow.epoch:
                raise FencedOut(f"{flow_id}: epoch {epoch} < owner epoch {flow.epoch}")
            del self._flows[flow_id]

    async def list_flows(self) -> list[str]:
        return sorted(self._flows)

    def bytes_buffered(self, flow_id: str) -> tuple[int, int]:
        """(receive, send) bytes held for a flow."""
        flow = self._flows[flow_id]
        return len(flow.rx.data), len(flow.tx.data)

    async def aclose(self) -> None:
        return None
