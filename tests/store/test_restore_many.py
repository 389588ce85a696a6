"""Restoring flows on start (stack/recovery.py) through a Runtime, with the batched store
calls: what is restored, forgotten, fenced or left alone, and 10,000 flows at once."""

from __future__ import annotations

import itertools
import time
from collections.abc import AsyncIterator

import pytest
import trio
from flow_factory import (
    DrivenFlow,
    commit_all,
    drive_established,
    idle_established_flows,
)
from store_helpers import RedisServer

from stcp_framework.link.sim import SimLink, SimNetwork
from stcp_framework.stack import recovery
from stcp_framework.stack.flows import FlowKey, flow_key_of
from stcp_framework.stack.runtime import Runtime
from stcp_framework.store.base import FlowDelta, Store
from stcp_framework.store.memory import MemoryStore
from stcp_framework.store.redis import RedisStore
from stcp_framework.tcp.delta import StateDelta, TcbSet
from stcp_framework.wire.packet import parse_packet_untrusted
from stcp_framework.wire.tcp import ACK

LOCAL = "198.18.0.2"
_services = itertools.count()


@pytest.fixture(params=["memory", "redis"])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[Store]:
    s: Store
    if request.param == "memory":
        s = MemoryStore()
    else:
        server: RedisServer = request.getfixturevalue("redis7_server")
        s = RedisStore.from_url(server.url, service=f"restore{next(_services)}")
    yield s
    await s.aclose()


async def _later(store: Store, flow: DrivenFlow, version_after: int, **fields: object) -> None:
    """One more delta for ``flow``, setting TCB ``fields``."""
    await store.commit(
        [
            FlowDelta(
                flow.flow_id, flow.deltas[0].epoch, StateDelta(version_after + 1, (TcbSet(fields),))
            )
        ]
    )


async def test_restore_keeps_live_flows_forgets_dead_ones_and_skips_fenced_ones(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(recovery, "RESTORE_BATCH", 2)  # several batches of a few flows
    old_epoch = await store.next_epoch()
    flows = {
        name: drive_established(
            local,
            7,
            "198.19.0.1",
            port,
            epoch=old_epoch,
            iss=port * 1000,
            received=b"hello world",
            read_len=5,
            sent=b"reply!",
            acked_len=2,
        )
        for name, local, port in [
            ("live", LOCAL, 1001),
            ("live2", LOCAL, 1002),
            ("closed", LOCAL, 1003),
            ("foreign", "198.18.0.9", 1004),
            ("fenced", LOCAL, 1005),
            ("newer-schema", LOCAL, 1006),
            ("live3", LOCAL, 1007),
        ]
    }
    await commit_all(store, list(flows.values()))
    versions = {name: f.deltas[-1].delta.version for name, f in flows.items()}
    await _later(store, flows["closed"], versions["closed"], state="CLOSED")
    await _later(store, flows["newer-schema"], versions["newer-schema"], schema=99)
    await store.claim(flows["fenced"].flow_id, old_epoch + 100)  # a newer instance owns it
    claim_only = "198.18.0.2:7-198.19.0.1:1008/00000001"
    await store.claim(claim_only, old_epoch)
    await store.claim("not a flow id", old_epoch)

    network = SimNetwork(seed=1)
    runtime = Runtime(network.attach(LOCAL), store, [LOCAL])
    async with trio.open_nursery() as nursery:
        await nursery.start(runtime.run)
        assert runtime.restored == 3
        restored = {flow.flow_id: flow for flow in runtime.flows.values()}
        assert set(restored) == {flows[n].flow_id for n in ("live", "live2", "live3")}
        for name in ("live", "live2", "live3"):
            flow = restored[flows[name].flow_id]
            assert flow.recovered and flow.conn.tcb == flows[name].conn.tcb
            assert flow.durable_version == versions[name]
            assert flow.conn.app_receive(100, trio.current_time()) == b" world"
            assert flow.conn.unacked == 4
        nursery.cancel_scope.cancel()
    left = await store.list_flows()
    assert sorted(left) == sorted(
        [
            "not a flow id",
            flows["fenced"].flow_id,
            flows["newer-schema"].flow_id,
            *(flows[n].flow_id for n in ("live", "live2", "live3")),
        ]
    )  # closed, foreign and claim-only records are forgotten
    owners = await store.load_many(left)
    assert {fid: rec.epoch for fid, rec in owners.items() if rec is not None} == {
        "not a flow id": old_epoch,  # not touched
        flows["fenced"].flow_id: old_epoch + 100,  # not claimed
        flows["newer-schema"].flow_id: runtime.epoch,  # claimed, left alone
        **{flows[n].flow_id: runtime.epoch for n in ("live", "live2", "live3")},
    }


async def _collect_kicks(peer: SimLink, count: int) -> dict[FlowKey, tuple[int, int]]:
    """Flow key -> (seq, ack) of the segments the peers get, until ``count`` flows sent."""
    got: dict[FlowKey, tuple[int, int]] = {}
    with trio.fail_after(60):
        while len(got) < count:
            for raw in await peer.recv_batch(4096):
                packet = parse_packet_untrusted(raw)
                seg = packet.tcp
                assert seg.flags == ACK and not seg.payload
                key = (packet.dst, seg.dst_port, packet.src, seg.src_port)
                assert key not in got  # one kick per flow
                got[key] = (seg.seq, seg.ack)
    return got


@pytest.mark.slow
async def test_ten_thousand_idle_flows_restore_through_a_runtime(
    redis7_server: RedisServer,
) -> None:
    """Every one of 10,000 idle established flows comes back exactly, is offered to the
    listener, and kicks its peer once. Not timed: the figures are printed (pytest -s)."""
    service = f"restore{next(_services)}"
    writer = RedisStore.from_url(redis7_server.url, service=service)
    flows = idle_established_flows(10_000, epoch=await writer.next_epoch())
    await commit_all(writer, flows)
    await writer.aclose()

    store = RedisStore.from_url(redis7_server.url, service=service)
    network = SimNetwork(seed=1)
    peer = network.attach(*{flow_key_of(f.flow_id)[0] for f in flows})
    runtime = Runtime(network.attach(LOCAL), store, [LOCAL], instance=service)
    async with trio.open_nursery() as nursery:
        started = time.perf_counter()
        await nursery.start(runtime.run)
        elapsed = time.perf_counter() - started
        kicks = await _collect_kicks(peer, len(flows))
        listener = runtime.listen(7)
        nursery.cancel_scope.cancel()
    print(f"restored {runtime.restored} flows in {elapsed:.2f} s")
    assert runtime.restored == len(flows) == len(runtime.flows) == len(listener.queue)
    for driven in flows:
        key = flow_key_of(driven.flow_id)
        flow = runtime.flows[key]
        assert flow.recovered and flow.conn.tcb == driven.conn.tcb
        assert kicks[key] == (driven.conn.tcb.snd_nxt, driven.conn.tcb.rcv_nxt)
    described = await store.describe_many([f.flow_id for f in flows])
    assert {info.epoch for info in described.values() if info is not None} == {runtime.epoch}
    await store.aclose()
