"""``RedisStore.settings_warnings``: Redis's own settings that weaken the guarantees
(no AOF; an eviction policy that may drop any key), one line each, as ``stcp run``
logs them after its banner; nothing for a Redis set up as the embedded store is, or
when ``CONFIG GET`` is not allowed."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

import pytest
from store_helpers import RedisServer, system_redis_binary

from stcp_framework.store.redis import RedisStore

_services = itertools.count()


@pytest.fixture
def lax_redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(
        system_redis_binary(),
        tmp_path / "redis",
        extra_args=[
            *("--appendonly", "no", "--maxmemory-policy", "allkeys-lru"),
            *("--maxmemory", "1gb"),
        ],
    )
    server.start()
    yield server
    server.stop()


def store_at(url: str) -> RedisStore:
    return RedisStore.from_url(url, service=f"settings{next(_services)}")


async def test_no_aof_and_evicting_any_key_are_each_a_warning(lax_redis: RedisServer) -> None:
    store = store_at(lax_redis.url)
    try:
        warnings = await store.settings_warnings()
    finally:
        await store.aclose()
    assert len(warnings) == 2, warnings
    assert "appendonly no" in warnings[0] and "set appendonly yes" in warnings[0]
    assert "maxmemory-policy allkeys-lru" in warnings[1] and "noeviction" in warnings[1]


async def test_a_redis_with_aof_that_evicts_nothing_gets_no_warning(
    redis7_server: RedisServer,
) -> None:
    store = store_at(redis7_server.url)
    try:
        assert await store.settings_warnings() == []
    finally:
        await store.aclose()


async def test_an_eviction_policy_without_a_memory_limit_evicts_nothing(
    redis7_server: RedisServer,
) -> None:
    admin = redis7_server.client()
    admin.config_set("maxmemory-policy", "allkeys-lru")  # maxmemory 0: no limit
    store = store_at(redis7_server.url)
    try:
        assert await store.settings_warnings() == []
    finally:
        admin.config_set("maxmemory-policy", "noeviction")
        admin.close()
        await store.aclose()


async def test_a_user_without_config_get_gets_no_warning_and_no_error(
    lax_redis: RedisServer,
) -> None:
    admin = lax_redis.client()
    try:
        admin.acl_setuser(
            "app", enabled=True, passwords=["+pw"], keys=["*"], commands=["+@all", "-config"]
        )
    finally:
        admin.close()
    store = store_at(f"unix://app:pw@{lax_redis.socket}")
    try:
        assert await store.settings_warnings() == []
    finally:
        await store.aclose()
