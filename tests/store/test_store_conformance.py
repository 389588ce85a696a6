"""The store conformance suite (STYLE.md §9.6); RedisStore joins the parametrization
when it exists (issue 3), which makes MemoryStore a verified fake."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from stcp_framework.store.base import FencedOut, FlowDelta, Store
from stcp_framework.store.memory import MemoryStore
from stcp_framework.tcp.delta import (
    AppCommit,
    RxAppend,
    RxTrim,
    StateDelta,
    TcbSet,
    TxAppend,
    TxTrim,
)


@pytest.fixture(params=["memory"])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[Store]:
    s = MemoryStore()
    yield s
    await s.aclose()


def d(flow: str, epoch: int, version: int, *ops: object) -> FlowDelta:
    return FlowDelta(flow, epoch, StateDelta(version, tuple(ops)))  # type: ignore[arg-type]


async def test_unknown_flow_loads_none(store: Store) -> None:
    assert await store.load("nope") is None
    assert await store.list_flows() == []


async def test_commit_then_load_roundtrip(store: Store) -> None:
    await store.claim("f", 1)
    await store.commit([
        d("f", 1, 1, TcbSet({"state": "ESTABLISHED", "rcv_nxt": 5}), RxAppend(0, b"hello"),
          TxAppend(0, b"world!")),
    ])
    rec = await store.load("f")
    assert rec is not None
    assert rec.tcb == {"state": "ESTABLISHED", "rcv_nxt": 5}
    assert (rec.rx, rec.rx_offset, rec.tx, rec.tx_offset) == (b"hello", 0, b"world!", 0)
    assert rec.version == 1 and rec.epoch == 1


async def test_trim_and_append_track_offsets(store: Store) -> None:
    await store.claim("f", 1)
    await store.commit([d("f", 1, 1, RxAppend(0, b"abcdef"), TxAppend(0, b"012345"))])
    await store.commit([d("f", 1, 2, RxTrim(4), TxTrim(2), RxAppend(6, b"gh"))])
    rec = await store.load("f")
    assert rec is not None
    assert (rec.rx, rec.rx_offset) == (b"efgh", 4)
    assert (rec.tx, rec.tx_offset) == (b"2345", 2)


async def test_reapplying_a_batch_is_harmless(store: Store) -> None:
    """Deltas are absolute and idempotent: a retried group commit changes nothing."""
    await store.claim("f", 1)
    batch = [d("f", 1, 1, TcbSet({"rcv_nxt": 3}), RxAppend(0, b"abc"))]
    await store.commit(batch)
    await store.commit(batch)
    rec = await store.load("f")
    assert rec is not None and rec.rx == b"abc" and rec.version == 1


async def test_overlapping_append_keeps_only_new_bytes(store: Store) -> None:
    await store.claim("f", 1)
    await store.commit([d("f", 1, 1, RxAppend(0, b"abc"))])
    await store.commit([d("f", 1, 2, RxAppend(1, b"bcde"))])
    rec = await store.load("f")
    assert rec is not None and rec.rx == b"abcde"


async def test_commit_and_app_state_are_atomic(store: Store) -> None:
    await store.claim("f", 1)
    await store.commit([d("f", 1, 1, RxAppend(0, b"abc"), AppCommit(2, b"state-2"))])
    rec = await store.load("f")
    assert rec is not None and (rec.commit_offset, rec.app_state) == (2, b"state-2")


async def test_stale_epoch_is_fenced_and_writes_nothing(store: Store) -> None:
    await store.claim("f", 1)
    await store.claim("f", 2)  # a new owner
    with pytest.raises(FencedOut):
        await store.commit([d("f", 1, 1, TcbSet({"rcv_nxt": 9}))])
    with pytest.raises(FencedOut):
        await store.claim("f", 1)
    rec = await store.load("f")
    assert rec is not None and rec.tcb == {} and rec.epoch == 2


async def test_group_commit_is_all_or_nothing_on_fencing(store: Store) -> None:
    await store.claim("a", 1)
    await store.claim("b", 3)
    with pytest.raises(FencedOut):
        await store.commit([d("a", 1, 1, TcbSet({"x": 1})), d("b", 2, 1, TcbSet({"x": 2}))])
    rec = await store.load("a")
    assert rec is not None and rec.tcb == {}


async def test_forget_and_list(store: Store) -> None:
    for name in ("b", "a"):
        await store.claim(name, 1)
        await store.commit([d(name, 1, 1, TcbSet({"state": "ESTABLISHED"}))])
    assert await store.list_flows() == ["a", "b"]
    await store.forget("a", 1)
    assert await store.list_flows() == ["b"]
