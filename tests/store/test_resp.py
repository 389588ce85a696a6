"""``store/resp.py``: group commits on a connection trio drives, against a real server.

The conformance suite already runs every ``commit`` this way; these tests cover what is
particular to the connection: no worker thread, the client's password and database,
a connection lost or timed out in the middle, a cancelled commit, and the clients it
leaves to the thread path.
"""

from __future__ import annotations

import itertools
import os
import signal
import socket
from typing import Any

import hiredis
import pytest
import redis
import trio
from store_helpers import RedisServer

from stcp_framework.store.base import FlowDelta, StoreRefused, StoreUnavailable
from stcp_framework.store.redis import RedisStore
from stcp_framework.store.resp import UNIX_SEND_BUFFER, RespPool
from stcp_framework.tcp.delta import RxAppend, StateDelta

_services = itertools.count()


def d(flow: str, epoch: int, version: int, data: bytes, at: int) -> FlowDelta:
    return FlowDelta(flow, epoch, StateDelta(version, (RxAppend(at, data),)))


def store_at(url: str, socket_timeout: float = 5.0) -> RedisStore:
    return RedisStore.from_url(url, service=f"resp{next(_services)}", socket_timeout=socket_timeout)


async def test_a_commit_needs_no_worker_thread(
    redis7_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = store_at(redis7_server.url)

    async def no_thread(*_: object, **__: object) -> None:
        raise AssertionError("a commit went to a worker thread")

    monkeypatch.setattr(trio.to_thread, "run_sync", no_thread)
    await store.commit([d("f", 1, 1, b"x" * 100_000, 0)])  # staged chunk: MULTI/EXEC
    await store.commit([d("f", 1, 2, b"y", 100_000)])  # a plain EVALSHA
    monkeypatch.undo()
    record = await store.load("f")
    assert record is not None and record.rx == b"x" * 100_000 + b"y"
    assert record.version == 2
    await store.aclose()


async def test_the_clients_password_and_database_are_used(own_redis: RedisServer) -> None:
    admin = own_redis.client()
    admin.config_set("requirepass", "s3cret")
    store = store_at(f"{own_redis.url}?password=s3cret&db=3")
    await store.commit([d("f", 1, 1, b"abc", 0)])
    record = await store.load("f")
    assert record is not None and record.rx == b"abc"
    in_db3 = redis.Redis(unix_socket_path=str(own_redis.socket), password="s3cret", db=3)
    in_db0 = redis.Redis(unix_socket_path=str(own_redis.socket), password="s3cret", db=0)
    assert in_db3.dbsize() > 0 and in_db0.dbsize() == 0
    wrong = store_at(f"{own_redis.url}?password=wrong")
    with pytest.raises(StoreRefused, match="commit: Redis refused the credentials"):
        await wrong.commit([d("g", 1, 1, b"abc", 0)])  # a setting, not an outage
    for client in (in_db3, in_db0):
        client.close()
    await store.aclose()
    await wrong.aclose()


async def test_a_connection_killed_between_commits_is_replaced(
    redis7_server: RedisServer,
) -> None:
    store = store_at(redis7_server.url)
    await store.commit([d("f", 1, 1, b"a", 0)])
    admin = redis7_server.client()
    assert admin.client_kill_filter(_type="normal", skipme=True) >= 1
    await store.commit([d("f", 1, 2, b"b", 1)])  # the dead connection: one retry
    record = await store.load("f")
    assert record is not None and record.rx == b"ab"
    admin.close()
    await store.aclose()


async def test_a_frozen_server_times_out_and_a_cancelled_commit_is_harmless(
    own_redis: RedisServer,
) -> None:
    """A commit to a server that stopped answering raises StoreUnavailable after the
    socket timeout (one retry on a new connection included); a cancelled commit
    closes its connection. Whatever of them lands later is a retried delta."""
    store = store_at(own_redis.url, socket_timeout=0.3)
    await store.commit([d("f", 1, 1, b"a", 0)])
    assert own_redis.proc is not None
    pid = own_redis.proc.pid
    os.kill(pid, signal.SIGSTOP)
    try:
        with trio.fail_after(30), pytest.raises(StoreUnavailable, match="Redis unreachable"):
            await store.commit([d("f", 1, 2, b"b", 1)])  # (it gives up: no hang)
        with trio.move_on_after(0.1) as scope:
            await store.commit([d("f", 1, 2, b"b", 1)])
        assert scope.cancelled_caught
    finally:
        os.kill(pid, signal.SIGCONT)
    # the stack sends the held deltas again, in order, with the next ones
    await store.commit([d("f", 1, 2, b"b", 1), d("f", 1, 3, b"c", 2)])
    record = await store.load("f")
    assert record is not None and (record.rx, record.version) == (b"abc", 3)
    await store.aclose()


async def test_more_buffers_than_one_sendmsg_takes(redis7_server: RedisServer) -> None:
    """A group commit of many flows is thousands of buffers; ``sendmsg`` takes IOV_MAX
    (1,024 on Linux) at most and refuses more with EMSGSIZE (an async-mode echo bench
    once stalled retrying that as an outage)."""
    pool = RespPool.for_client(redis7_server.client())
    assert pool is not None
    ping = hiredis.pack_command(("PING",))
    pieces = [ping[i : i + 1] for i in range(len(ping))] * 500  # 7,000 buffers
    assert await pool.call(pieces, 500) == [b"PONG"] * 500
    store = store_at(redis7_server.url)
    await store.commit([d(f"f{i}", 1, 1, b"x" * 40_000, 0) for i in range(1_500)])
    record = await store.load("f1499")
    assert record is not None and record.rx == b"x" * 40_000
    await pool.aclose()
    await store.aclose()


def test_tls_clients_keep_the_thread_path() -> None:
    client = redis.Redis.from_url("rediss://198.18.0.1:6380")
    assert RespPool.for_client(client) is None
    assert RespPool.for_client(redis.Redis.from_url("redis://198.18.0.1:6380")) is not None
    assert RespPool.for_client(redis.Redis(protocol=3)) is None


def _wmem_max() -> int:
    with open("/proc/sys/net/core/wmem_max") as f:
        return int(f.read())


async def test_a_unix_socket_gets_room_for_a_whole_group_commit(
    redis7_server: RedisServer,
) -> None:
    """The send buffer is raised (``UNIX_SEND_BUFFER``, as far as ``wmem_max`` lets it),
    so that a ~1 MB commit need not wait for Redis to read part of it first."""
    pool = RespPool.for_client(redis7_server.client())
    assert pool is not None
    assert await pool.call([hiredis.pack_command(("PING",))], 1) == [b"PONG"]
    (conn,) = pool._idle
    granted = conn._sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)
    # Linux doubles what it grants; left alone, a socket has net.core.wmem_default
    # (212,992 on Debian), undoubled
    assert granted >= 2 * min(UNIX_SEND_BUFFER, _wmem_max())
    value = b"v" * 1_000_000
    command: tuple[Any, ...] = ("SET", "big", value)
    reply = await pool.call([hiredis.pack_command(command)], 1)
    assert reply == [b"OK"]
    assert redis7_server.client().strlen("big") == len(value)
    await pool.aclose()
