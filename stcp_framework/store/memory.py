"""``MemoryStore``: the in-process store, with the same semantics as the Redis one.

It applies the same absolute, idempotent ops, enforces the same fencing epochs, and
``crash()`` models a process death: only what ``commit`` returned for survives. It is
the store of unit and simulation tests and of benchmarks of the stack alone.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

from ..tcp.delta import AppCommit, RxAppend, RxTrim, TcbSet, TxAppend, TxTrim
from .base import SECRET_BYTES, FencedOut, FlowDelta, FlowInfo, FlowLost, FlowRecord

_NO_CHUNKS: deque[bytes | memoryview] = deque()  # shared while empty: never appended to


@dataclass(slots=True, init=False)
class _Stream:
    """Bytes ``[base, end)`` of one direction's stream, as a deque of chunks.

    Appends keep the delta's own ``bytes`` objects (no copy, no resize of a big
    buffer); trimming drops whole chunks and only moves ``head`` inside the first one
    (slicing it would copy the rest of the chunk at every ACK: a 1 MiB ``send_all``
    chunk acknowledged 64 KB at a time was copied ~8 MB over). An empty stream holds
    the shared ``_NO_CHUNKS`` instead of a deque of its own (~0.6 KB each: an idle or
    TIME-WAIT flow's two streams are empty).
    """

    base: int
    end: int
    chunks: deque[bytes | memoryview]  # views: immutable
    head: int  # bytes of chunks[0] below ``base`` (already trimmed)

    def __init__(self) -> None:  # (hand-written: one pair per new flow, no factories)
        self.base = self.end = self.head = 0
        self.chunks = _NO_CHUNKS

    def append(self, offset: int, chunk: bytes | memoryview) -> None:
        if offset > self.end:
            raise ValueError(f"gap in stream: append at {offset}, have up to {self.end}")
        skip = self.end - offset  # idempotent re-apply: only the part past `end` is new
        if skip < len(chunk):
            new = chunk[skip:] if skip > 0 else chunk
            chunks = self.chunks
            if chunks is _NO_CHUNKS:
                chunks = self.chunks = deque()
            chunks.append(new)
            self.end += len(new)

    def trim(self, below: int) -> None:
        if below > self.end:
            # Bytes up to ``below`` were never stored (ack-on-commit): the stream
            # continues there, empty.
            self.chunks = _NO_CHUNKS
            self.head = 0
            self.base = self.end = below
            return
        chunks = self.chunks
        while chunks and self.base < below:
            avail = len(chunks[0]) - self.head
            n = below - self.base
            if n >= avail:
                chunks.popleft()
                self.base += avail
                self.head = 0
            else:
                self.head += n
                self.base = below
        self.base = max(self.base, below)
        if not chunks:
            self.chunks = _NO_CHUNKS

    @property
    def size(self) -> int:
        return self.end - self.base

    def read(self) -> bytes:
        chunks = self.chunks
        if not chunks:
            return b""
        if not self.head:
            return b"".join(chunks)
        return b"".join([memoryview(chunks[0])[self.head :], *list(chunks)[1:]])


@dataclass(slots=True, init=False)
class _Flow:
    epoch: int
    version: int
    tcb: dict[str, object]
    rx: _Stream
    tx: _Stream
    app_state: bytes | None
    commit_offset: int

    def __init__(self, epoch: int) -> None:  # (hand-written: one per new flow)
        self.epoch = epoch
        self.version = self.commit_offset = 0
        self.tcb = {}
        self.rx = _Stream()
        self.tx = _Stream()
        self.app_state = None


class MemoryStore:
    """A ``Store`` kept in this process's memory."""

    def __init__(self) -> None:
        self._flows: dict[str, _Flow] = {}
        self._epoch = 0
        self._secret: bytes | None = None
        self.commits = 0  # group commits served (for tests and benchmarks)

    async def stack_secret(self) -> bytes:
        if self._secret is None:
            self._secret = os.urandom(SECRET_BYTES)
        return self._secret

    async def next_epoch(self) -> int:
        self._epoch += 1
        return self._epoch

    async def claim(self, flow_id: str, epoch: int) -> None:
        self.claim_sync(flow_id, epoch)

    def claim_sync(self, flow_id: str, epoch: int) -> None:
        flow = self._flows.get(flow_id)
        if flow is None:
            self._flows[flow_id] = _Flow(epoch=epoch)
        elif epoch < flow.epoch:
            raise FencedOut(f"{flow_id}: epoch {epoch} < owner epoch {flow.epoch}", [flow_id])
        else:
            flow.epoch = epoch

    async def commit(self, batch: Sequence[FlowDelta]) -> None:
        self.commit_sync(batch)

    def commit_sync(self, batch: Sequence[FlowDelta]) -> None:
        """Apply a group commit. Every item is checked first, following each flow's
        version and stream ends through the batch in order, as the Redis script does:
        fencing, then that each delta follows its flow's version (else ``FlowLost``;
        here it catches a stack that skipped a version), then that no append leaves a
        gap (``ValueError``); nothing is written unless every item passes."""
        flows = self._flows
        fenced: list[str] = []
        skipped: list[str] = []
        gap: str | None = None
        running: dict[str, list[int]] = {}  # flow -> [version, rx end, tx end] so far
        for item in batch:
            flow = flows.get(item.flow_id)
            if flow is not None and item.epoch < flow.epoch:
                fenced.append(item.flow_id)
                continue
            state = running.get(item.flow_id)
            if state is None:
                state = running[item.flow_id] = (
                    [flow.version, flow.rx.end, flow.tx.end] if flow else [0, 0, 0]
                )
            version = item.delta.version
            if version > state[0] + 1:
                skipped.append(item.flow_id)  # (Redis: "no TCB" for a first one, same)
                continue
            if version <= state[0]:
                continue  # already applied (a retried batch)
            state[0] = version
            for op in item.delta.ops:
                kind = type(op)
                if kind is RxTrim or kind is TxTrim:
                    side = 1 if kind is RxTrim else 2
                    state[side] = max(state[side], op.below)  # type: ignore[union-attr]
                elif kind is RxAppend or kind is TxAppend:
                    side = 1 if kind is RxAppend else 2
                    offset, size = op.offset, len(op.data)  # type: ignore[union-attr]
                    if offset > state[side] and gap is None:
                        gap = f"gap in stream: append at {offset}, have up to {state[side]}"
                    state[side] = max(state[side], offset + size)
        if fenced:
            raise FencedOut(f"stale epoch for {', '.join(fenced[:5])}", fenced)
        if skipped:
            raise FlowLost(
                list(dict.fromkeys(skipped)), "a delta does not follow the stored version"
            )
        if gap is not None:
            raise ValueError(gap)
        for item in batch:
            flow = flows.get(item.flow_id)
            if flow is None:
                flow = flows[item.flow_id] = _Flow(epoch=item.epoch)
            delta = item.delta
            if delta.version <= flow.version:
                continue  # already applied (a retried batch)
            for op in delta.ops:
                kind = type(op)
                if kind is TcbSet:
                    flow.tcb.update(op.fields)  # type: ignore[union-attr]
                elif kind is RxAppend:
                    flow.rx.append(op.offset, op.data)  # type: ignore[union-attr]
                elif kind is TxAppend:
                    flow.tx.append(op.offset, op.data)  # type: ignore[union-attr]
                elif kind is RxTrim:
                    flow.rx.trim(op.below)  # type: ignore[union-attr]
                elif kind is TxTrim:
                    flow.tx.trim(op.below)  # type: ignore[union-attr]
                elif kind is AppCommit:
                    flow.commit_offset = op.offset  # type: ignore[union-attr]
                    flow.app_state = op.state  # type: ignore[union-attr]
            flow.version = delta.version
        self.commits += 1

    async def claim_many(self, flow_ids: Sequence[str], epoch: int) -> list[str]:
        claimed = []
        for flow_id in flow_ids:
            try:
                self.claim_sync(flow_id, epoch)
            except FencedOut:
                continue
            claimed.append(flow_id)
        return claimed

    async def load_many(self, flow_ids: Sequence[str]) -> dict[str, FlowRecord | None]:
        return {flow_id: self.load_sync(flow_id) for flow_id in flow_ids}

    async def describe_many(self, flow_ids: Sequence[str]) -> dict[str, FlowInfo | None]:
        """What the store holds for each flow, without the bytes (``None``: unknown)."""
        out: dict[str, FlowInfo | None] = {}
        for flow_id in flow_ids:
            flow = self._flows.get(flow_id)
            out[flow_id] = (
                None
                if flow is None
                else FlowInfo(
                    flow_id=flow_id,
                    epoch=flow.epoch,
                    version=flow.version,
                    tcb=dict(flow.tcb),
                    rx_offset=flow.rx.base,
                    rx_len=flow.rx.size,
                    tx_offset=flow.tx.base,
                    tx_len=flow.tx.size,
                    app_state_len=None if flow.app_state is None else len(flow.app_state),
                    commit_offset=flow.commit_offset,
                )
            )
        return out

    async def load(self, flow_id: str) -> FlowRecord | None:
        return self.load_sync(flow_id)

    def load_sync(self, flow_id: str) -> FlowRecord | None:
        flow = self._flows.get(flow_id)
        if flow is None:
            return None
        return FlowRecord(
            flow_id=flow_id,
            epoch=flow.epoch,
            version=flow.version,
            tcb=dict(flow.tcb),
            rx=flow.rx.read(),
            rx_offset=flow.rx.base,
            tx=flow.tx.read(),
            tx_offset=flow.tx.base,
            app_state=flow.app_state,
            commit_offset=flow.commit_offset,
        )

    async def forget(self, flow_id: str, epoch: int) -> None:
        flow = self._flows.get(flow_id)
        if flow is not None:
            if epoch < flow.epoch:
                raise FencedOut(f"{flow_id}: epoch {epoch} < owner epoch {flow.epoch}", [flow_id])
            del self._flows[flow_id]

    async def forget_many(self, items: Sequence[tuple[str, int]]) -> list[str]:
        fenced = []
        for flow_id, epoch in items:
            flow = self._flows.get(flow_id)
            if flow is None:
                continue
            if epoch < flow.epoch:
                fenced.append(flow_id)
            else:
                del self._flows[flow_id]
        return fenced

    async def list_flows(self) -> list[str]:
        return sorted(self._flows)

    def bytes_buffered(self, flow_id: str) -> tuple[int, int]:
        """(receive, send) bytes held for a flow."""
        flow = self._flows[flow_id]
        return flow.rx.size, flow.tx.size

    async def aclose(self) -> None:
        return None
