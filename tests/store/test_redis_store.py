"""What only RedisStore has: key layout, fencing by another client, outages (G7), lost
state, the chunk-key protocol, memory per idle flow, and a 10,000-flow run."""

from __future__ import annotations

import itertools
import re
import socket
import time
from collections.abc import Sequence
from typing import NoReturn, cast

import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st
from store_helpers import RedisServer

from stcp_framework.store import codec
from stcp_framework.store.base import FencedOut, FlowDelta, StoreUnavailable
from stcp_framework.store.keys import CHUNK_SIZE, META_FIELD, flow_tag, tcb_key, validate_service
from stcp_framework.store.redis import FlowLost, RedisStore, _decode_tcb_flat
from stcp_framework.tcp.delta import (
    AppCommit,
    RxAppend,
    RxTrim,
    StateDelta,
    TcbSet,
    TxAppend,
    TxTrim,
)
from stcp_framework.tcp.state import TcpState
from stcp_framework.tcp.tcb import TCB_FIELDS, Tcb
from stcp_framework.wire.seq import Seq

C = CHUNK_SIZE
_services = itertools.count()


def d(flow: str, epoch: int, version: int, *ops: object) -> FlowDelta:
    return FlowDelta(flow, epoch, StateDelta(version, tuple(ops)))  # type: ignore[arg-type]


def new_store(server: RedisServer, service: str | None = None) -> RedisStore:
    return RedisStore.from_url(server.url, service=service or f"r{next(_services)}")


def established_tcb() -> Tcb:
    """A realistic TCB of an idle established connection (large values everywhere)."""
    t = Tcb(iss=Seq(3456789012), tsval_offset=123456789, mss=1448)
    t.state = TcpState.ESTABLISHED
    t.irs, t.rcv_nxt, t.rcv_wup, t.snd_wl1 = (
        Seq(2345678901),
        Seq(2345679901),
        Seq(2345679901),
        Seq(2345679901),
    )
    t.snd_una = t.snd_nxt = t.snd_wl2 = Seq(3456799013)
    t.snd_wnd = t.max_window = 64240 * 128
    t.rcv_wnd = 4 * 1024 * 1024
    t.snd_wscale = t.rcv_wscale = 7
    t.timestamps = True
    t.ts_recent = 3999999999
    t.snd_una_offset, t.rcv_nxt_offset = 10000, 1000
    t.read_offset = t.commit_offset = 1000
    return t


# -- layout -------------------------------------------------------------------------------


async def test_every_key_of_a_flow_shares_its_hash_tag(redis7_server: RedisServer) -> None:
    store = new_store(redis7_server, "layout")
    await store.commit(
        [
            d(
                "198.18.0.2:80-198.18.0.1:40000",
                1,
                1,
                TcbSet({"mss": 1460}),
                RxAppend(0, b"r" * (C + 1)),
                TxAppend(0, b"t"),
                AppCommit(0, b"s"),
            )
        ]
    )
    tag = flow_tag("layout", "198.18.0.2:80-198.18.0.1:40000")
    assert re.fullmatch(r"stcp:\{layout:[0-9a-f]{16}\}", tag)
    names = sorted(k.decode() for k in server_keys(store, "stcp:{layout*"))
    assert names == sorted(
        [
            f"{tag}:tcb",
            f"{tag}:owner",
            f"{tag}:app",
            f"{tag}:rx:0",
            f"{tag}:rx:1",
            f"{tag}:tx:0",
            "stcp:{layout}:flows",
        ]
    )
    assert store.client.hget(f"{tag}:tcb", "ms") == b"1460"
    assert store.client.get(f"{tag}:owner") == b"1"
    await store.aclose()


def test_service_names_that_break_the_hash_tag_are_refused() -> None:
    for bad in ("", "a{b", "a}b", "a b"):
        with pytest.raises(ValueError):
            validate_service(bad)
    with pytest.raises(ValueError, match="unix://"):
        RedisStore.from_url("http://localhost:6379")


def test_codec_aliases_cover_the_tcb_and_are_unique() -> None:
    assert set(codec.ALIASES) == {*TCB_FIELDS, "schema"}
    assert len(set(codec.ALIASES.values())) == len(codec.ALIASES)
    for value in (0, -1, 2**32 - 1, True, False, "ESTABLISHED", "", None, 1.5):
        assert codec.decode_value(codec.encode_value(value)) == value
        assert type(codec.decode_value(codec.encode_value(value))) is type(value)
    assert codec.decode_name(codec.encode_name("new_field")) == "new_field"
    with pytest.raises(ValueError):
        codec.encode_name(".v")
    with pytest.raises(TypeError):
        codec.encode_value([1])


_tcb_values = st.one_of(
    st.integers(-(2**63), 2**63), st.booleans(), st.text(), st.none(), st.floats(allow_nan=False)
)
_tcb_names = st.one_of(
    st.sampled_from(sorted(codec.ALIASES)),
    st.text(min_size=1).filter(lambda n: not n.startswith(".")),
)


@given(
    fields=st.dictionaries(_tcb_names, _tcb_values, max_size=30),
    meta=st.one_of(st.none(), st.binary(max_size=40)),
)
def test_the_fast_tcb_decoder_equals_the_codec(
    fields: dict[str, object], meta: bytes | None
) -> None:
    flat = [*codec.encode_fields(fields), b".other", b"x"]
    if meta is not None:
        flat += [b".m", meta]
    expected = codec.decode_tcb(dict(zip(flat[::2], flat[1::2], strict=True)))
    assert _decode_tcb_flat(flat) == expected
    assert _decode_tcb_flat(dict(zip(flat[::2], flat[1::2], strict=True))) == expected
    assert expected[0] == fields


async def test_a_real_tcb_round_trips(redis7_server: RedisServer) -> None:
    store = new_store(redis7_server)
    tcb = established_tcb()
    await store.commit([d("f", 1, 1, TcbSet(tcb.to_record()))])
    rec = await store.load("f")
    assert rec is not None and Tcb.from_record(rec.tcb) == tcb
    await store.aclose()


# -- fencing (G5) -------------------------------------------------------------------------


async def test_a_second_client_with_a_newer_epoch_fences_the_first(
    redis7_server: RedisServer,
) -> None:
    old = new_store(redis7_server, "fence")
    new = new_store(redis7_server, "fence")  # another instance: its own connections
    await old.claim("f", 1)
    await old.commit([d("f", 1, 1, RxAppend(0, b"abc"), TcbSet({"rcv_nxt": 3}))])
    await new.claim("f", 2)
    with pytest.raises(FencedOut, match="epoch 1 < owner epoch 2"):
        await old.commit([d("f", 1, 2, RxAppend(3, b"zombie"), TcbSet({"rcv_nxt": 9}))])
    with pytest.raises(FencedOut):
        await old.forget("f", 1)
    await new.commit([d("f", 2, 2, RxAppend(3, b"de"))])
    rec = await new.load("f")
    assert rec is not None and (rec.rx, rec.tcb, rec.epoch) == (b"abcde", {"rcv_nxt": 3}, 2)
    await old.aclose()
    await new.aclose()


async def test_every_client_of_a_service_gets_its_one_secret(redis7_server: RedisServer) -> None:
    """The first of racing clients makes the service's secret; the others, and clients
    that come later, read that one; another service has its own."""
    stores = [new_store(redis7_server, "secret") for _ in range(4)]
    secrets: list[bytes] = []

    async def ask(store: RedisStore) -> None:
        secrets.append(await store.stack_secret())

    async with trio.open_nursery() as nursery:
        for store in stores:
            nursery.start_soon(ask, store)
    later = new_store(redis7_server, "secret")
    other = new_store(redis7_server, "other-secret")
    assert len(set(secrets)) == 1
    assert await later.stack_secret() == secrets[0]
    assert await other.stack_secret() != secrets[0]
    for store in [*stores, later, other]:
        await store.aclose()


async def test_fenced_out_names_every_fenced_flow(redis7_server: RedisServer) -> None:
    store = new_store(redis7_server)
    for flow in ("a", "b", "c"):
        await store.claim(flow, 5 if flow != "b" else 1)
    with pytest.raises(FencedOut) as info:
        await store.commit([d("a", 1, 1), d("b", 1, 1), d("c", 1, 1)])
    assert str(info.value).count("owner epoch 5") == 2 and "b:" not in str(info.value)
    await store.aclose()


# -- lost state ---------------------------------------------------------------------------


async def test_a_vanished_flow_is_reported_and_others_are_untouched(
    redis7_server: RedisServer,
) -> None:
    store = new_store(redis7_server)
    await store.commit([d("a", 1, 1, RxAppend(0, b"a")), d("b", 1, 1, RxAppend(0, b"b"))])
    store.client.delete(*store.flow_keys_sync("b"))  # eviction, FLUSH, a lossy failover
    assert await store.load("b") is None
    with pytest.raises(FlowLost) as info:
        await store.commit([d("a", 1, 2, RxAppend(1, b"2")), d("b", 1, 2, RxAppend(1, b"2"))])
    assert info.value.flow_ids == ("b",)
    rec = await store.load("a")
    assert rec is not None and rec.rx == b"a"  # the refused batch wrote nothing
    await store.commit([d("a", 1, 2, RxAppend(1, b"2"))])  # the stack drops b, retries
    rec = await store.load("a")
    assert rec is not None and rec.rx == b"a2"
    await store.aclose()


async def test_a_flow_that_redis_rolled_back_is_reported_not_patched(
    redis7_server: RedisServer,
) -> None:
    """Redis lost writes it had acknowledged (restarted from an older AOF, a failover
    to a replica that missed them): the next delta does not follow the stored version,
    so the flow is lost -- applied, it would have mixed its fields into an older
    state -- and its batch writes nothing; a retried delta (<= stored) stays harmless."""
    store = new_store(redis7_server)
    await store.commit([d("a", 1, 1, RxAppend(0, b"a")), d("b", 1, 1, RxAppend(0, b"b"))])
    await store.commit([d("a", 1, 2, RxAppend(1, b"2")), d("b", 1, 2, RxAppend(1, b"2"))])
    await store.commit([d("a", 1, 1, RxAppend(0, b"a"))])  # a retry: skipped, no error
    # b back at version 1, as the older copy of Redis had it
    tcb = tcb_key(flow_tag(store.service, "b"))
    meta = store.client.hget(tcb, META_FIELD)
    assert isinstance(meta, bytes) and meta.split()[0] == b"2"
    store.client.hset(tcb, META_FIELD, b"1" + meta[1:])
    with pytest.raises(FlowLost, match="does not follow the stored 1") as info:
        await store.commit([d("a", 1, 3, RxAppend(2, b"3")), d("b", 1, 3, RxAppend(2, b"3"))])
    assert info.value.flow_ids == ("b",)
    rec = await store.load("a")
    assert rec is not None and rec.rx == b"a2"  # the refused batch wrote nothing
    await store.commit([d("a", 1, 3, RxAppend(2, b"3"))])
    await store.aclose()


async def test_a_lost_chunk_is_detected(redis7_server: RedisServer) -> None:
    store = new_store(redis7_server)
    await store.commit([d("f", 1, 1, TxAppend(0, b"x" * (C + 5)))])
    store.client.delete(f"{flow_tag(store.service, 'f')}:tx:1")
    with pytest.raises(FlowLost):
        await store.load("f")
    with pytest.raises(FlowLost, match="chunk"):
        await store.commit([d("f", 1, 2, TxAppend(C + 5, b"y"))])
    await store.aclose()


async def test_load_many_maps_a_flow_with_a_lost_chunk_to_none_and_loads_the_rest(
    redis7_server: RedisServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = new_store(redis7_server)
    await store.commit(
        [
            d("a", 1, 1, RxAppend(0, b"a" * (C + 5))),
            d("f", 1, 1, TxAppend(0, b"x" * (C + 5))),
            d("z", 1, 1, TxAppend(0, b"z")),
        ]
    )
    store.client.delete(f"{flow_tag(store.service, 'f')}:tx:1")
    records = await store.load_many(["a", "f", "z"])
    assert records["f"] is None
    assert [r.rx if r else None for r in records.values()] == [b"a" * (C + 5), None, b""]
    assert "[f] the store lost its buffers" in caplog.text
    assert (await store.describe_many(["f"]))["f"] is not None  # describe reads no chunk
    await store.aclose()


async def test_batched_calls_survive_a_script_cache_flush(redis7_server: RedisServer) -> None:
    store = new_store(redis7_server)
    await store.commit([d("f", 1, 1, RxAppend(0, b"a"))])
    store.client.script_flush()
    assert await store.claim_many(["f"], 2) == ["f"]
    store.client.script_flush()
    rec = (await store.load_many(["f"]))["f"]
    assert rec is not None and (rec.rx, rec.epoch) == (b"a", 2)
    await store.aclose()


async def test_claim_many_fences_the_previous_owner_of_another_client(
    redis7_server: RedisServer,
) -> None:
    old = new_store(redis7_server, "fence-many")
    new = new_store(redis7_server, "fence-many")
    await old.commit([d("f", 1, 1, RxAppend(0, b"a")), d("g", 1, 1, RxAppend(0, b"b"))])
    assert await new.claim_many(["f", "g"], 2) == ["f", "g"]
    with pytest.raises(FencedOut) as info:
        await old.commit([d("f", 1, 2, RxAppend(1, b"zombie")), d("g", 1, 2, RxTrim(1))])
    assert set(info.value.flow_ids) == {"f", "g"}
    assert await old.claim_many(["f", "g"], 1) == []
    await old.aclose()
    await new.aclose()


# -- the chunk-key protocol ---------------------------------------------------------------


async def test_an_instance_that_never_saw_the_flow_declares_keys_by_retrying(
    redis7_server: RedisServer,
) -> None:
    first = new_store(redis7_server, "handover")
    await first.commit([d("f", 1, 1, RxAppend(0, bytes(5 * C)))])
    await first.commit([d("f", 1, 2, RxTrim(C + 1))])
    second = new_store(redis7_server, "handover")  # no hint: guesses from its ops
    await second.commit([d("f", 1, 3, RxTrim(5 * C))])  # must delete chunks 1..4
    assert second.key_retries == 1
    assert store_chunk_keys(second, "f") == []
    await second.commit([d("f", 1, 4, RxAppend(5 * C, b"z"))])
    assert second.key_retries == 1  # the reply taught it the first live chunk
    rec = await second.load("f")
    assert rec is not None and (rec.rx, rec.rx_offset) == (b"z", 5 * C)
    await first.aclose()
    await second.aclose()


async def test_a_new_instance_retries_a_multi_delta_batch_once_for_keys(
    redis7_server: RedisServer,
) -> None:
    """Several deltas of a flow the client never saw: one KEYS retry declares, for every
    one of them, the chunks from the flow's first live chunk before the batch."""
    first = new_store(redis7_server, "handover-many")
    await first.commit([d("f", 1, 1, RxAppend(0, bytes(5 * C)))])
    await first.commit([d("f", 1, 2, RxTrim(C + 1))])
    second = new_store(redis7_server, "handover-many")
    await second.commit(
        [
            d("f", 1, 3, RxTrim(3 * C)),
            d("f", 1, 4, RxTrim(5 * C)),
            d("f", 1, 5, RxAppend(5 * C, b"z")),
        ]
    )
    assert second.key_retries == 1
    assert store_chunk_keys(second, "f") == [f"{flow_tag(second.service, 'f')}:rx:5".encode()]
    rec = await second.load("f")
    assert rec is not None and (rec.rx, rec.rx_offset, rec.version) == (b"z", 5 * C, 5)
    await first.aclose()
    await second.aclose()


async def test_a_new_flows_deltas_in_one_batch_need_no_key_retry(
    redis7_server: RedisServer,
) -> None:
    """A flow created in the batch: its later deltas declare from chunk 0 too, so a trim
    of chunks its first delta wrote succeeds at once and leaves no chunk behind."""
    store = new_store(redis7_server)
    await store.commit(
        [
            d("f", 1, 1, TxAppend(0, bytes(4 * C))),
            d("f", 1, 2, TxTrim(3 * C)),
            d("f", 1, 3, TxTrim(4 * C)),
            d("f", 1, 4, TxAppend(4 * C, b"t")),
        ]
    )
    assert store.key_retries == 0
    assert store_chunk_keys(store, "f") == [f"{flow_tag(store.service, 'f')}:tx:4".encode()]
    await store.aclose()


async def test_a_refused_multi_delta_batch_writes_nothing(redis7_server: RedisServer) -> None:
    """All or nothing: the gap in f's second delta refuses f's first delta and g's."""
    store = new_store(redis7_server)
    await store.commit([d("g", 1, 1, RxAppend(0, b"g"))])
    before = server_keys(store, f"stcp:{{{store.service}*")
    with pytest.raises(ValueError, match="f: append at 150, have up to 100"):
        await store.commit(
            [
                d("g", 1, 2, RxAppend(1, b"h"), TcbSet({"x": 1})),
                d("f", 1, 1, RxAppend(0, b"a" * 100)),
                d("f", 1, 2, RxAppend(150, b"b")),
            ]
        )
    assert server_keys(store, f"stcp:{{{store.service}*") == before
    assert await store.load("f") is None
    rec = await store.load("g")
    assert rec is not None and (rec.rx, rec.version, rec.tcb) == (b"g", 1, {})
    await store.aclose()


async def test_a_lost_flow_is_named_once_for_all_its_deltas(redis7_server: RedisServer) -> None:
    store = new_store(redis7_server)
    await store.commit([d("a", 1, 1, RxAppend(0, b"a")), d("b", 1, 1, RxAppend(0, b"b"))])
    store.client.delete(*store.flow_keys_sync("b"))
    with pytest.raises(FlowLost) as info:
        await store.commit(
            [
                d("b", 1, 2, RxAppend(1, b"2")),
                d("a", 1, 2, RxAppend(1, b"2")),
                d("b", 1, 3, RxAppend(2, b"3")),
            ]
        )
    assert info.value.flow_ids == ("b",)
    rec = await store.load("a")
    assert rec is not None and rec.rx == b"a"
    await store.aclose()


def server_keys(store: RedisStore, pattern: str) -> list[bytes]:
    """``KEYS pattern``, sorted (the client does not decode replies)."""
    return sorted(cast(list[bytes], store.client.keys(pattern)))


def store_chunk_keys(store: RedisStore, flow: str) -> list[bytes]:
    tag = flow_tag(store.service, flow)
    return sorted(server_keys(store, f"{tag}:rx:*") + server_keys(store, f"{tag}:tx:*"))


async def test_full_chunks_are_sized_exactly(redis7_server: RedisServer) -> None:
    """Many small appends grow a chunk greedily; a full one is copied to its exact size."""
    store = new_store(redis7_server)
    offset = 0
    for version in range(1, 2 * C // 1448 + 2):
        await store.commit([d("f", 1, version, RxAppend(offset, b"x" * 1448))])
        offset += 1448
    full = f"{flow_tag(store.service, 'f')}:rx:0"
    assert store.client.strlen(full) == C
    usage = store.client.memory_usage(full, samples=0)
    assert usage is not None and usage <= C + 256
    await store.aclose()


# -- staged chunks (keys.py) --------------------------------------------------------------


def staged_keys(store: RedisStore) -> list[bytes]:
    return [
        k
        for k in server_keys(store, f"stcp:{{{store.service}:*")
        if re.search(rb":(rx|tx):\d+:e\d+(:\d+)?$", k)
    ]


def rename_calls(store: RedisStore) -> int:
    stats = cast(dict[str, dict[str, int]], store.client.info("commandstats"))
    return stats.get("cmdstat_rename", {}).get("calls", 0)


async def test_whole_chunks_are_moved_in_and_no_staged_key_outlives_a_commit(
    redis7_server: RedisServer,
) -> None:
    """Whole chunks travel as staged keys the script RENAMEs (their bytes never enter
    Lua), and so do large parts of a chunk; small parts as script arguments. Moved,
    skipped or refused, none is left."""
    store = new_store(redis7_server)
    data = bytes(i % 241 for i in range(3 * C + 100))
    before = rename_calls(store)
    # offset 50: chunk 0 a large part, 1 and 2 whole, 3 a small part; tx chunk 0 whole
    await store.commit([d("f", 1, 1, RxAppend(0, data[:50])), d("g", 1, 1, TxAppend(0, data[:C]))])
    await store.commit([d("f", 1, 2, RxAppend(50, data[50:]))])
    assert rename_calls(store) - before == 4
    assert staged_keys(store) == []
    await store.commit([d("f", 1, 2, RxAppend(50, data[50:]))])  # a retry: skipped
    assert staged_keys(store) == [] and rename_calls(store) - before == 4
    f, g = await store.load("f"), await store.load("g")
    assert f is not None and g is not None and (f.rx, g.tx) == (data, data[:C])
    await store.claim("f", 2)
    with pytest.raises(FencedOut):
        await store.commit([d("f", 1, 3, RxAppend(len(data), b"z" * (2 * C)))])
    assert staged_keys(store) == []
    rec = await store.load("f")
    assert rec is not None and rec.rx == data
    await store.aclose()


def command_calls(store: RedisStore, name: str) -> int:
    stats = cast(dict[str, dict[str, int]], store.client.info("commandstats"))
    return stats.get(f"cmdstat_{name}", {}).get("calls", 0)


def chunk_memory(store: RedisStore, flow: str, stream: str, n: int) -> int:
    tag = flow_tag(store.service, flow)
    return cast(int, store.client.memory_usage(f"{tag}:{stream}:{n}"))


async def test_large_parts_of_a_chunk_are_staged_on_a_copy_of_it(
    redis7_server: RedisServer,
) -> None:
    """Segment-sized appends that do not fill a chunk: each is staged on top of a copy
    of the chunk's earlier bytes (or of this batch's previous part of it), and the
    script moves it into place -- no byte through Lua (no GETRANGE, no SETRANGE). A
    chunk filled that way is stored at its size, not APPEND's greedy allocation."""
    store = new_store(redis7_server)
    seg = C // 3  # every part is a third of a chunk (none small enough for ARGV)
    data = bytes(i % 251 for i in range(7 * seg))
    getrange, setrange = command_calls(store, "getrange"), command_calls(store, "setrange")
    await store.commit([d("f", 1, 1, RxAppend(0, data[:seg]))])  # a fresh chunk
    await store.commit([d("f", 1, 2, RxAppend(seg, data[seg : 2 * seg]))])  # on a copy
    # deltas of one flow in one batch (held back during an outage): the third one's
    # part of chunk 1 is staged on a copy of the second one's staged key
    await store.commit(
        [
            d("f", 1, 3, RxAppend(2 * seg, data[2 * seg : 3 * seg])),  # fills chunk 0
            d("f", 1, 4, RxAppend(3 * seg, data[3 * seg : 4 * seg])),  # chunk 1, fresh
            d("f", 1, 5, RxAppend(4 * seg, data[4 * seg : 5 * seg])),  # chunk 1, chained
        ]
    )
    await store.commit([d("f", 1, 6, RxAppend(5 * seg, data[5 * seg :]))])  # chunks 1, 2
    assert command_calls(store, "getrange") == getrange
    assert command_calls(store, "setrange") == setrange
    assert staged_keys(store) == []
    rec = await store.load("f")
    assert rec is not None and rec.rx == data
    for n in (0, 1):
        assert chunk_memory(store, "f", "rx", n) < C + 1024  # compacted, not up to 2 * C
    await store.aclose()


async def test_a_part_staged_on_stale_bytes_is_taken_from_its_tail(
    redis7_server: RedisServer,
) -> None:
    """A retried batch whose first delta was applied already: the second one's part
    was staged on a copy that already holds the first one's bytes, so its staged key
    does not fit the chunk; the script appends just the part (its key's tail)."""
    store = new_store(redis7_server)
    seg = 20_000
    data = bytes(i % 239 for i in range(3 * seg))
    first = d("f", 1, 1, RxAppend(0, data[:seg]))
    await store.commit([first])
    getrange = command_calls(store, "getrange")
    await store.commit([first, d("f", 1, 2, RxAppend(seg, data[seg : 2 * seg]))])
    assert command_calls(store, "getrange") == getrange + 1  # the slow path, once
    await store.commit([d("f", 1, 3, RxAppend(2 * seg, data[2 * seg :]))])
    assert command_calls(store, "getrange") == getrange + 1
    rec = await store.load("f")
    assert rec is not None and rec.rx == data
    assert staged_keys(store) == []
    await store.aclose()


async def test_a_part_after_small_bytes_in_the_same_batch_stays_exact(
    redis7_server: RedisServer,
) -> None:
    """A small append (in ARGV) and then a large part of the same chunk in one batch:
    the staged copy lacks the small bytes, so the part is appended from its tail."""
    store = new_store(redis7_server)
    data = bytes(i % 233 for i in range(100 + 30_000 + 100))
    await store.commit(
        [
            d("f", 1, 1, RxAppend(0, data[:100])),
            d("f", 1, 2, RxAppend(100, data[100:30_100])),
            d("f", 1, 3, RxAppend(30_100, data[30_100:])),
        ]
    )
    rec = await store.load("f")
    assert rec is not None and rec.rx == data
    assert staged_keys(store) == []
    await store.aclose()


class _Killed(BaseException):
    """The writer's process dies (kill -9) in the middle of sending a commit."""


@pytest.mark.parametrize("trio_io", [True, False], ids=["trio-io", "worker-thread"])
async def test_a_writer_killed_while_sending_leaves_no_staged_key(
    redis7_server: RedisServer, monkeypatch: pytest.MonkeyPatch, trio_io: bool
) -> None:
    """A part's staged key gets its expiry only after its APPEND: prelude and script go
    in one MULTI/EXEC, so a commit cut off right after the APPEND runs none of it."""
    import redis.connection

    from stcp_framework.store.resp import RespConnection

    store = RedisStore.from_url(redis7_server.url, service=f"r{next(_services)}", trio_io=trio_io)
    seg = C // 3
    data = bytes(i % 229 for i in range(2 * seg))
    await store.commit([d("f", 1, 1, RxAppend(0, data[:seg]))])

    def cut_off_at_pexpire(sock: socket.socket, command: Sequence[object]) -> NoReturn:
        flat = b"".join(bytes(cast(bytes, piece)) for piece in command)
        sock.sendall(flat[: flat.index(b"*3\r\n$7\r\nPEXPIRE")])
        raise _Killed

    def cut_off(
        self: redis.connection.AbstractConnection, command: list[object], **_: object
    ) -> None:
        cut_off_at_pexpire(self._sock, command)  # type: ignore[arg-type]

    async def cut_off_trio(self: RespConnection, command: Sequence[object]) -> None:
        sock = self._sock
        sock.setblocking(True)
        cut_off_at_pexpire(sock, command)

    with monkeypatch.context() as patch:
        if trio_io:
            patch.setattr(RespConnection, "_send", cut_off_trio)
        else:
            patch.setattr(redis.connection.AbstractConnection, "send_packed_command", cut_off)
        with pytest.raises(_Killed):
            await store.commit([d("f", 1, 2, RxAppend(seg, data[seg:]))])
    await store.aclose()  # the dead writer's connection closes
    await trio.sleep(0.2)
    fresh = new_store(redis7_server, store.service)
    assert staged_keys(fresh) == []
    rec = await fresh.load("f")
    assert rec is not None and (rec.rx, rec.version) == (data[:seg], 1)
    await fresh.commit([d("f", 2, 2, RxAppend(seg, data[seg:]))])  # the restarted writer
    rec = await fresh.load("f")
    assert rec is not None and rec.rx == data
    assert staged_keys(fresh) == []
    await fresh.aclose()


async def test_a_stale_owners_whole_chunk_never_lands(redis7_server: RedisServer) -> None:
    old = new_store(redis7_server, "stage-fence")
    new = new_store(redis7_server, "stage-fence")
    await old.claim("f", 1)
    await old.commit([d("f", 1, 1, TxAppend(0, b"a" * 10))])
    await new.claim("f", 2)
    with pytest.raises(FencedOut):  # the old app wrote other bytes after the restart
        await old.commit([d("f", 1, 2, TxAppend(10, b"old" * C))])
    await new.commit([d("f", 2, 2, TxAppend(10, b"new" * C))])
    rec = await new.load("f")
    assert rec is not None and rec.tx == b"a" * 10 + b"new" * C
    assert staged_keys(new) == []
    await old.aclose()
    await new.aclose()


async def test_a_vanished_staged_chunk_refuses_the_batch_and_is_sent_again(
    redis7_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A staged key gone when the script runs (it expired while the server stood
    still between the SET and the script) refuses the batch without writing; the
    client sends the batch again, staged chunks included."""
    import stcp_framework.store.redis as redis_module

    store = new_store(redis7_server)
    await store.commit([d("f", 1, 1, RxAppend(0, b"a"))])
    real = redis_module._staged_sets
    lost: list[int] = []

    def lose_them(staged: list[redis_module._Staged]) -> list[object]:
        lost.append(1)
        if len(lost) > 3:
            return real(staged)
        return real([entry._replace(key=entry.key + ":elsewhere") for entry in staged])

    monkeypatch.setattr(redis_module, "_staged_sets", lose_them)
    batch = [d("f", 1, 2, RxAppend(1, b"b" * (2 * C)), TcbSet({"rcv_nxt": 7}))]
    with pytest.raises(StoreUnavailable, match="vanished"):  # refused on every try
        await store.commit(batch)
    rec = await store.load("f")
    assert rec is not None and (rec.rx, rec.tcb, rec.version) == (b"a", {}, 1)
    await store.commit(batch)  # the fourth try stages them
    rec = await store.load("f")
    assert rec is not None and (rec.rx, rec.tcb) == (b"a" + b"b" * (2 * C), {"rcv_nxt": 7})
    assert staged_keys(store) == []
    store.client.delete(*server_keys(store, "*:elsewhere"))
    await store.aclose()


async def test_script_cache_flush_is_survived(redis7_server: RedisServer) -> None:
    store = new_store(redis7_server)
    await store.commit([d("f", 1, 1, RxAppend(0, b"a"))])
    store.client.script_flush()  # as after a server restart: EVALSHA gets NOSCRIPT
    await store.commit([d("f", 1, 2, RxAppend(1, b"b"))])
    rec = await store.load("f")
    assert rec is not None and rec.rx == b"ab"
    await store.aclose()


# -- outages (G7) -------------------------------------------------------------------------


async def test_store_unavailable_while_the_server_is_down_then_recovery(
    own_redis: RedisServer,
) -> None:
    store = new_store(own_redis, "outage")
    await store.commit([d("f", 1, 1, RxAppend(0, b"before"))])
    own_redis.stop()
    batch = [d("f", 1, 2, RxAppend(6, b"-during"))]
    with pytest.raises(StoreUnavailable):
        await store.commit(batch)
    with pytest.raises(StoreUnavailable):
        await store.load("f")
    with pytest.raises(StoreUnavailable):
        await store.claim("f", 1)
    with pytest.raises(StoreUnavailable):
        await store.claim_many(["f"], 1)
    with pytest.raises(StoreUnavailable):
        await store.load_many(["f"])
    with pytest.raises(StoreUnavailable):
        await store.describe_many(["f"])
    own_redis.start()  # same directory: the AOF brings the first commit back
    await store.commit(batch)  # the stack's retry of the same batch
    await store.commit(batch)  # ...twice (the first reply was lost): harmless
    rec = await store.load("f")
    assert rec is not None and (rec.rx, rec.version) == (b"before-during", 2)
    await store.aclose()


async def test_a_server_refusing_writes_is_unavailable_not_fatal(
    own_redis: RedisServer,
) -> None:
    store = new_store(own_redis)
    store.client.config_set("min-replicas-to-write", 1)  # NOREPLICAS on every write
    with pytest.raises(StoreUnavailable, match="NOREPLICAS"):
        await store.commit([d("f", 1, 1, RxAppend(0, b"a"))])
    store.client.config_set("min-replicas-to-write", 0)
    await store.commit([d("f", 1, 1, RxAppend(0, b"a"))])
    await store.aclose()


# -- memory and scale ---------------------------------------------------------------------


async def test_an_idle_established_flow_stays_under_1_kb(redis7_server: RedisServer) -> None:
    store = new_store(redis7_server)
    flow = "198.18.0.2:80-198.18.0.1:54321"
    await store.claim(flow, 1700000000123)
    tcb = established_tcb()
    await store.commit(
        [
            d(
                flow,
                1700000000123,
                1,
                TcbSet(tcb.to_record()),
                RxAppend(0, b"r" * 1000),
                TxAppend(0, b"t" * 10000),
            )
        ]
    )
    await store.commit(
        [
            d(
                flow,
                1700000000123,
                2,
                RxTrim(1000),
                TxTrim(10000),
                AppCommit(1000, b"16 bytes of app."),
            )
        ]
    )
    assert store_chunk_keys(store, flow) == []
    used = store.memory_usage_sync(flow)
    print(f"idle established flow: {used} bytes in its keys (+ its index entry)")
    assert used <= 1024 - 100  # room for the flow's entry in the service index
    await store.aclose()


@pytest.mark.slow
async def test_ten_thousand_flows_commit_list_and_load(redis7_server: RedisServer) -> None:
    """No timed assertion: the figures are printed for the report (pytest -s)."""
    store = new_store(redis7_server, "scale")
    record = established_tcb().to_record()
    flows = [f"198.18.{i // 250}.{i % 250 + 1}:80-198.19.0.1:{10000 + i}" for i in range(10_000)]
    started = time.perf_counter()
    for first in range(0, len(flows), 1000):
        await store.commit(
            [
                d(f, 1, 1, TcbSet(record), RxAppend(0, f.encode()))
                for f in flows[first : first + 1000]
            ]
        )
    committed = time.perf_counter()
    listed = await store.list_flows()
    assert listed == sorted(flows)
    listed_at = time.perf_counter()
    loaded: dict[str, bytes] = {}
    limiter = trio.CapacityLimiter(8)

    async def load(flow: str) -> None:
        async with limiter:
            rec = await store.load(flow)
        assert rec is not None
        loaded[flow] = rec.rx

    async with trio.open_nursery() as nursery:
        for flow in flows:
            nursery.start_soon(load, flow)
    done = time.perf_counter()
    assert loaded == {f: f.encode() for f in flows}
    print(
        f"10,000 flows: commit {committed - started:.2f} s (10 batches of 1000), "
        f"list {listed_at - committed:.3f} s, load {done - listed_at:.2f} s"
    )
    await store.aclose()
