"""A Redis primary with a replica, and ``wait_replicas`` (Redis ``WAIT``): a write is
durable -- and so acknowledged to the peer -- only once the replica holds it too, so
losing the primary, machine and all, and serving from the promoted replica loses no
acknowledged byte (DESIGN.md, "Where users outgrow one machine").

Both servers run in the test's private namespace; the replica follows the primary over
loopback TCP (replication takes no Unix socket), the stack talks to each over its Unix
socket.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
import trio
from netns_fixtures import TunNet
from restart_helpers import MB, Peer, RedisServer, report, server_for

from stcp_framework.store.base import FlowDelta, StoreUnavailable
from stcp_framework.store.redis import RedisStore
from stcp_framework.tcp.delta import RxAppend, StateDelta, TcbSet

pytestmark = [pytest.mark.netns]

PRIMARY_PORT, REPLICA_PORT = 16379, 16380
WAIT = "wait_replicas=1&wait_timeout=0.5"


def primary_and_replica(tmp_path: Path) -> tuple[RedisServer, RedisServer]:
    primary = RedisServer(
        tmp_path / "primary", extra_args=["--port", str(PRIMARY_PORT), "--bind", "127.0.0.1"]
    )
    replica = RedisServer(
        tmp_path / "replica",
        extra_args=[
            "--port", str(REPLICA_PORT), "--bind", "127.0.0.1",
            "--replicaof", "127.0.0.1", str(PRIMARY_PORT),
        ],
    )  # fmt: skip
    primary.start()
    replica.start()
    client = replica.client()
    try:
        deadline = time.monotonic() + 10
        while client.info("replication").get("master_link_status") != "up":
            assert time.monotonic() < deadline, "the replica never synced"
            time.sleep(0.05)
    finally:
        client.close()
    return primary, replica


def delta(version: int, offset: int, data: bytes) -> FlowDelta:
    ops = (RxAppend(offset, data), TcbSet({"rcv_nxt": offset + len(data)}))
    return FlowDelta("f", 1, StateDelta(version, ops))


@pytest.mark.parametrize("trio_io", [True, False], ids=["trio-io", "thread"])
async def test_a_write_counts_once_the_replica_holds_it(tmp_path: Path, trio_io: bool) -> None:
    primary, replica = primary_and_replica(tmp_path)
    store = RedisStore.from_url(f"{primary.url}?{WAIT}", service="rep", trio_io=trio_io)
    try:
        assert store.wait_replicas == 1
        assert await store.settings_warnings() == []  # its one replica is connected
        await store.claim("f", 1)
        await store.commit([delta(1, 0, b"held by two")])
        on_replica = RedisStore.from_url(replica.url, service="rep")
        record = await on_replica.load("f")
        assert record is not None and record.rx == b"held by two"
        await on_replica.aclose()
        # The replica stops answering: a write it does not hold in time is no write
        # (G7: held, retried), and the retry, once it is back, lands it once.
        replica.pause()
        with trio.fail_after(10), pytest.raises(StoreUnavailable, match="0 of 1 replicas"):
            await store.commit([delta(2, 11, b", or not")])  # (WAIT's timeout: no hang)
        replica.resume()
        await store.commit([delta(2, 11, b", or not")])
        record = await store.load("f")
        assert record is not None and record.rx == b"held by two, or not"
    finally:
        if replica.paused:
            replica.resume()
        await store.aclose()
        replica.stop()
        primary.stop()


async def test_a_store_waiting_for_replicas_redis_does_not_have_is_warned_of(
    tmp_path: Path,
) -> None:
    alone = RedisServer(tmp_path / "alone")
    alone.start()
    store = RedisStore.from_url(f"{alone.url}?wait_replicas=2", service="rep")
    try:
        assert await store.settings_warnings() == [
            "wait_replicas=2, but Redis has 0 replicas connected: nothing is acknowledged "
            "until enough are"
        ]
    finally:
        await store.aclose()
        alone.stop()


def test_wait_options_are_checked() -> None:
    with pytest.raises(ValueError, match="bad wait_replicas"):
        RedisStore.from_url("redis://127.0.0.1?wait_replicas=one")
    with pytest.raises(ValueError, match="wait_timeout"):
        RedisStore.from_url("redis://127.0.0.1?wait_replicas=1&wait_timeout=9", socket_timeout=1)
    with pytest.raises(ValueError, match="wait_replicas must be"):
        RedisStore.from_url("redis://127.0.0.1?wait_replicas=-1")
    plain = RedisStore.from_url("redis://127.0.0.1/0?wait_timeout=0.2&health_check_interval=3")
    assert plain.wait_replicas == 0
    kwargs = plain.client.connection_pool.connection_kwargs
    assert kwargs["health_check_interval"] == 3 and "wait_timeout" not in kwargs


@pytest.mark.parametrize("tun_net", [65000], indirect=True)
@pytest.mark.parametrize("wait", [True, False], ids=["wait", "no-wait"])
async def test_an_echo_survives_losing_its_redis_primary_with_wait(
    tun_net: TunNet, tmp_path: Path, wait: bool
) -> None:
    """Mid-transfer the replica falls behind (SIGSTOP for 0.3 s), then the primary Redis
    and the server die together (SIGKILL both); the replica is promoted and a new
    server restores from it. With ``wait_replicas=1`` nothing the replica lacked was
    acknowledged (the transfer paused instead): the kernel client's echo completes
    byte-exact and never sees an error. Without, the stack acknowledged what only the
    lost primary held; the restored connection cannot continue byte-exact, and it is
    reset -- never continued with a hole (G3)."""
    primary, replica = primary_and_replica(tmp_path)
    server = server_for("echo", 7, tun_net, primary, tmp_path)
    server.store_url = f"{primary.url}?{WAIT}" if wait else primary.url
    size = 200 * MB  # (not done within the replica's pause, even without WAIT)
    try:
        async with server.session():
            async with trio.open_nursery() as nursery:
                peer = await Peer.start(
                    nursery, "echo", tun_net.stack_addr, 7, size, seed=11, progress=MB
                )
                with trio.fail_after(60):
                    await peer.wait_offset(10 * MB)
                    replica.pause()
                    await trio.sleep(0.3)
                    os.kill(primary.pid, signal.SIGKILL)  # the primary's machine is gone
                    await server.kill()
                    replica.resume()
                    client = replica.client()
                    try:
                        client.execute_command("REPLICAOF", "NO", "ONE")  # type: ignore[no-untyped-call]
                    finally:
                        client.close()
                    server.store_url = replica.url  # (no replica of its own now)
                    life = await server.start()
                    result = await peer.result()
            counters = await server.stop()
    finally:
        if replica.paused:
            replica.resume()
        replica.stop()
        primary.stop()
    report(
        f"Redis primary lost, replica promoted ({'with' if wait else 'without'} WAIT)",
        [
            f"restored {life.restored} from the replica",
            f"{result['received'] / MB:.1f} MB echoed, error: {result['error']}",
        ],
    )
    if wait:
        assert life.restored == 1
        assert result["error"] is None and result.get("sender_errors", []) == []
        assert result["received"] == size and result["mismatch_at"] is None
        assert counters.get("flows_lost", 0) == 0 and counters.get("rst_sent", 0) == 0
    else:
        assert result["mismatch_at"] is None  # no byte wrong: a reset, not a hole
        assert result["error"] is not None or result.get("sender_errors"), result
