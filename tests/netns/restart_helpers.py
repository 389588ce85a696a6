"""Helpers of the kill -9 tests (``test_restart_*.py``): real processes, real Redis.

Three kinds of child process, each started and stopped by its PID:

* ``RedisServer``: a private ``redis-server`` on a Unix socket in the test's temporary
  directory (no TCP port), ``appendonly yes``; it can be paused (``SIGSTOP``/``SIGCONT``)
  and shut down and restarted from its AOF, to test a store outage (G7).
* ``StcpServer``: ``stcp run SERVICE --store unix://... --instance NAME`` on a fixture's
  TUN device; ``start()`` waits for its "serving" line and records how long that took,
  ``kill()`` is ``SIGKILL``, ``stop()`` is ``SIGTERM`` and returns the counters the server
  prints on stderr (every incarnation's stderr is kept in its own file, and its packets'
  headers in a pcap beside it, flushed every batch: ``conftest.py`` keeps them in
  ``pcaps/`` when the test fails).
* ``Peer``: ``kernel_peer.py`` (the Linux kernel's TCP) with ``--progress``, so a test
  can act when the transfer reaches a byte offset; its JSON result includes the stalls
  (pauses between received chunks) that ``stall_after`` matches with kill instants.

Times are ``time.monotonic()`` (``CLOCK_MONOTONIC``): the same clock in every process.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis
import trio
from netns_fixtures import TunNet

MB = 1 << 20
HEADERS = 128  # --pcap-snaplen of the servers' captures: every IP and TCP header
GB = 1 << 30
REDIS_START_TIMEOUT = 10.0
STACK_START_TIMEOUT = 30.0  # seconds from exec to "serving" (1,000 flows to restore)
STOP_TIMEOUT = 10.0
PEER = str(Path(__file__).with_name("kernel_peer.py"))


def stcp_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "stcp_framework.cli.main", *args]


# ------------------------------------------------------------------------ redis


class RedisServer:
    """One private ``redis-server`` (Redis 7 from ``PATH``) on ``<directory>/redis.sock``.

    ``extra_args`` go to ``redis-server`` after the defaults (a TLS port, say);
    ``password``, if the server wants one (``--requirepass``), is what ``client()``
    and the start-up PING authenticate with."""

    def __init__(
        self, directory: Path, extra_args: Sequence[str] = (), password: str | None = None
    ) -> None:
        self.directory = directory
        self.socket = directory / "redis.sock"
        self.extra_args = tuple(extra_args)
        self.password = password
        self.proc: subprocess.Popen[bytes] | None = None
        self.paused = False

    @property
    def url(self) -> str:
        return f"unix://{self.socket}"

    @property
    def pid(self) -> int:
        assert self.proc is not None, "redis-server is not running"
        return self.proc.pid

    def client(self) -> redis.Redis:
        return redis.Redis(
            unix_socket_path=str(self.socket), socket_timeout=5.0, password=self.password
        )

    def start(self) -> None:
        """Start (or restart: the AOF in ``directory`` is loaded) and wait for PING."""
        binary = _redis_binary()
        self.directory.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [binary, "--port", "0", "--unixsocket", str(self.socket),
             "--unixsocketperm", "700", "--dir", str(self.directory), "--appendonly", "yes",
             "--appendfsync", "everysec", "--save", "", "--daemonize", "no",
             "--logfile", str(self.directory / "redis.log"), *self.extra_args],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + REDIS_START_TIMEOUT
        client = self.client()
        try:
            while True:
                try:
                    if client.ping():
                        return
                except (
                    redis.exceptions.ConnectionError,
                    redis.exceptions.BusyLoadingError,
                    OSError,
                ):
                    pass
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    log = (self.directory / "redis.log").read_text(errors="replace")
                    self.stop()
                    pytest.fail(f"{binary} did not start: {log[-500:]}")
                time.sleep(0.01)
        finally:
            client.close()

    def pause(self) -> None:
        """``SIGSTOP``: the server holds its socket but answers nothing."""
        os.kill(self.pid, signal.SIGSTOP)
        self.paused = True

    def resume(self) -> None:
        os.kill(self.pid, signal.SIGCONT)
        self.paused = False

    def stop(self) -> None:
        """``SIGTERM`` by PID: Redis writes its AOF and exits (a later ``start`` loads it)."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        if self.paused:
            self.resume_pid(proc.pid)
        proc.terminate()
        try:
            proc.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=STOP_TIMEOUT)

    def resume_pid(self, pid: int) -> None:
        os.kill(pid, signal.SIGCONT)
        self.paused = False

    def flow_ids(self, instance: str) -> set[str]:
        """The flow ids the store's index holds for ``instance``."""
        from stcp_framework.store import keys as K

        client = self.client()
        try:
            members = client.smembers(K.index_key(instance))
            return {m.decode() if isinstance(m, bytes) else str(m) for m in members}
        finally:
            client.close()


def _redis_binary() -> str:
    from shutil import which

    found = which("redis-server")
    if found is None:
        pytest.fail(
            "redis-server is not installed: `apt-get install redis-server` "
            "(scripts/bootstrap does it)"
        )
    return found


# ------------------------------------------------------------------ stcp run


@dataclass
class Incarnation:
    """One process of a server: when it started and what it said."""

    pid: int
    started_at: float  # monotonic, just before exec
    serving_at: float = 0.0  # monotonic, when the "serving" line was read
    banner: str = ""
    standby_line: str = ""  # ``--standby``: what it said while it waited
    stderr_path: Path = Path()
    killed_at: float | None = None

    @property
    def start_seconds(self) -> float:
        """From exec to the "serving" line (imports, store, device, restore)."""
        return self.serving_at - self.started_at

    @property
    def restored(self) -> int:
        """How many connections this incarnation restored (from its banner)."""
        text = self.banner.rpartition("(")[2]
        return int(text.split(", ")[-1].split()[0])

    @property
    def epoch(self) -> int:
        return int(self.banner.split("epoch ")[1].split(",")[0])


@dataclass
class StcpServer:
    """``stcp run SERVICE`` as a child process that a test kills and restarts."""

    service: str
    dev: str
    listen: str  # "ADDR:PORT"
    store_url: str
    workdir: Path
    instance: str = "t1"
    extra: tuple[str, ...] = ()  # more options of ``stcp run``
    log_level: str = "warning"
    capture: bool = True  # each incarnation's packet headers in a pcap (``--pcap``)
    incarnations: list[Incarnation] = field(default_factory=list)
    _process: trio.Process | None = None

    @property
    def current(self) -> Incarnation:
        return self.incarnations[-1]

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.returncode is None

    async def start(self, *, standby: bool = False) -> Incarnation:
        """Exec the server and wait for its "serving" line on stdout -- with ``standby``
        (``stcp run --standby``) for its "standing by" line: ``wait_serving`` then waits
        for the other, which comes once the server holding the device exits."""
        assert not self.running, "already running"
        number = len(self.incarnations)
        stderr_path = self.workdir / f"{self.service}-{self.instance}-{number}.stderr"
        self.workdir.mkdir(parents=True, exist_ok=True)
        capture = (
            ["--pcap", str(stderr_path.with_suffix(".pcap")), "--pcap-snaplen", str(HEADERS)]
            if self.capture
            else []
        )
        command = stcp_command(
            "--log-level", self.log_level, "run", self.service, "--dev", self.dev,
            "--listen", self.listen, "--store", self.store_url, "--instance", self.instance,
            *self.extra, *capture, *(["--standby"] if standby else []),
        )  # fmt: skip
        with stderr_path.open("wb") as stderr:
            started_at = time.monotonic()
            process = await trio.lowlevel.open_process(
                command, stdout=subprocess.PIPE, stderr=stderr
            )
        self._process = process
        life = Incarnation(pid=process.pid, started_at=started_at, stderr_path=stderr_path)
        self.incarnations.append(life)
        if standby:
            life.standby_line = await self._next_line(life)
            assert life.standby_line.startswith("stcp: standing by for "), (
                life.standby_line,
                self.stderr_tail(),
            )
            return life
        await self.wait_serving(life)
        return life

    async def wait_serving(self, life: Incarnation) -> None:
        """Read the "serving" line of ``life`` (this server's current process)."""
        life.banner = await self._next_line(life)
        life.serving_at = time.monotonic()
        assert life.banner.startswith(f"stcp: serving {self.service} on "), (
            life.banner,
            life.stderr_path.read_text()[-2000:],
        )

    async def _next_line(self, life: Incarnation) -> str:
        process = self._process
        assert process is not None and process.stdout is not None
        try:
            with trio.fail_after(STACK_START_TIMEOUT):
                line = await _read_line(process.stdout)
        except BaseException as exc:
            exc.add_note(f"stcp run stderr: {life.stderr_path.read_text()[-2000:]!r}")
            raise
        return line.decode().strip()

    async def kill(self) -> float:
        """``SIGKILL`` (our own child, by PID) and reap it; returns the kill instant."""
        process = self._process
        assert process is not None and process.returncode is None, "not running"
        killed_at = time.monotonic()
        os.kill(process.pid, signal.SIGKILL)
        self.current.killed_at = killed_at
        with trio.fail_after(STOP_TIMEOUT):
            await process.wait()
        self._process = None
        return killed_at

    async def restart(self) -> tuple[float, Incarnation]:
        """Kill -9 and start again at once; returns the kill instant and the new process."""
        killed_at = await self.kill()
        return killed_at, await self.start()

    def pause(self) -> None:
        assert self._process is not None
        os.kill(self._process.pid, signal.SIGSTOP)

    def resume(self) -> None:
        assert self._process is not None
        os.kill(self._process.pid, signal.SIGCONT)

    async def stop(self) -> dict[str, int]:
        """``SIGTERM``; returns the counters the server printed (``stcp: stopped; k=v``)."""
        process = self._process
        assert process is not None and process.returncode is None, "not running"
        process.send_signal(signal.SIGTERM)
        with trio.fail_after(STOP_TIMEOUT):
            returncode = await process.wait()
        self._process = None
        text = self.current.stderr_path.read_text()
        assert returncode == 0, (returncode, text[-2000:])
        return parse_counters(text)

    async def aclose(self) -> None:
        """Kill whatever is still running (test clean-up)."""
        process = self._process
        if process is not None and process.returncode is None:
            os.kill(process.pid, signal.SIGCONT)  # in case a test left it stopped
            os.kill(process.pid, signal.SIGKILL)
            with trio.move_on_after(STOP_TIMEOUT):
                await process.wait()
        self._process = None

    @asynccontextmanager
    async def session(self) -> AsyncIterator[Incarnation]:
        """Start the server for the block; a failure inside gets the servers' stderr as
        a note, and whatever still runs is killed at the end."""
        try:
            yield await self.start()
        except BaseException as exc:
            exc.add_note(self.stderr_tail())
            raise
        finally:
            await self.aclose()

    def stderr_tail(self, chars: int = 1500) -> str:
        """The end of every incarnation's stderr (for assertion messages)."""
        return "\n".join(
            f"[{i} pid {life.pid}] {life.stderr_path.read_text()[-chars:]}"
            for i, life in enumerate(self.incarnations)
        )


def parse_counters(stderr: str) -> dict[str, int]:
    """The last ``stcp: stopped; name=value, ...`` line -> ``{name: value}`` (drops too)."""
    every = all_counters(stderr)
    if not every:
        raise AssertionError(f"no counters line in stderr: {stderr[-2000:]!r}")
    return every[-1]


STOPPED_LINE = re.compile(r"stcp: (?:worker \d+: )?stopped(?:; |$)")


def all_counters(stderr: str) -> list[dict[str, int]]:
    """Every ``stcp: stopped; ...`` line, in order (``stcp: worker N: stopped; ...``,
    one per worker, with ``--workers``); the connections' own counters (its ``; tcp:``
    part) as ``tcp.NAME``."""
    out: list[dict[str, int]] = []
    for line in stderr.splitlines():
        stopped = STOPPED_LINE.match(line)
        if stopped:
            counters: dict[str, int] = {}
            head, _, tcp = line[stopped.end() :].partition("; tcp: ")
            parts = [(p, "") for p in head.replace("; drops: ", ", ").split(", ")]
            parts += [(p, "tcp.") for p in tcp.split(", ")] if tcp else []
            for part, prefix in parts:
                name, sep, value = part.partition("=")
                if sep:
                    counters[prefix + name] = int(value)
            out.append(counters)
    return out


def children_of(pid: int) -> set[int]:
    """The child processes of ``pid`` (``/proc/PID/task/*/children``)."""
    out: set[int] = set()
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/children") as f:
            out |= {int(child) for child in f.read().split()}
    return out


async def _read_line(stream: trio.abc.ReceiveStream) -> bytes:
    """One line from a pipe (bounded: 64 KB without a newline is a failure)."""
    line = bytearray()
    while not line.endswith(b"\n"):
        chunk = await stream.receive_some(1)
        assert chunk, f"EOF before a full line: {bytes(line)!r}"
        line += chunk
        assert len(line) < 65536
    return bytes(line)


# ------------------------------------------------------------------------ peer


class Peer:
    """``kernel_peer.py MODE`` as a child process whose progress the test follows."""

    def __init__(self, process: trio.Process, mode: str) -> None:
        self.process = process
        self.mode = mode
        self.offset = 0
        self.ready = trio.Event()
        self.other_stderr: list[str] = []
        self._changed = trio.Event()
        self._stdout = bytearray()
        self._done = trio.Event()

    @classmethod
    async def start(
        cls,
        nursery: trio.Nursery,
        mode: str,
        host: str,
        port: int,
        size: int,
        *,
        seed: int = 1,
        progress: int = MB,
        connections: int = 1,
    ) -> Peer:
        command = [
            sys.executable, PEER, mode, "--host", host, "--port", str(port),
            "--size", str(size), "--seed", str(seed), "--progress", str(progress),
            "--connections", str(connections),
        ]  # fmt: skip
        process = await trio.lowlevel.open_process(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        peer = cls(process, mode)
        nursery.start_soon(peer._read_stderr)
        nursery.start_soon(peer._read_stdout)
        return peer

    async def _read_stderr(self) -> None:
        assert self.process.stderr is not None
        pending = b""
        async for chunk in self.process.stderr:
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for raw in lines:
                line = raw.decode(errors="replace")
                if line.startswith("progress "):
                    self.offset = int(line.split()[1])
                elif line == "ready":
                    self.ready.set()
                else:
                    self.other_stderr.append(line)
            self._changed.set()
            self._changed = trio.Event()
        self._done.set()
        self._changed.set()

    async def _read_stdout(self) -> None:
        assert self.process.stdout is not None
        async for chunk in self.process.stdout:
            self._stdout += chunk
            assert len(self._stdout) < 64 * MB

    async def wait_offset(self, offset: int) -> None:
        """Until the peer reports ``offset`` bytes moved (or fails if it ends first)."""
        while self.offset < offset:
            if self._done.is_set():
                await self.process.wait()
                raise AssertionError(
                    f"peer ended at offset {self.offset} before {offset}: "
                    f"{bytes(self._stdout)[:2000]!r} {self.other_stderr[-20:]}"
                )
            await self._changed.wait()

    async def go(self) -> None:
        """Let an ``idle`` peer start its second round."""
        assert self.process.stdin is not None
        await self.process.stdin.send_all(b"go\n")

    async def result(self) -> dict[str, Any]:
        """Wait for the peer to exit; its JSON result."""
        returncode = await self.process.wait()
        await self._done.wait()
        assert returncode == 0, f"kernel peer {self.mode} failed ({returncode}): " + "\n".join(
            self.other_stderr[-20:]
        )
        result: dict[str, Any] = json.loads(bytes(self._stdout))
        return result

    def kill(self) -> None:
        if self.process.returncode is None:
            self.process.kill()


def kill_offsets(
    rng: Any, size: int, kills: int, low: float = 0.05, high: float = 0.9
) -> list[int]:
    """``kills`` random byte offsets in ``[low, high) * size``, sorted, at least
    ``size / (2 * kills)`` apart from each other so every incarnation moves data."""
    span = (high - low) * size
    gap = size // (2 * kills)
    for _ in range(1000):
        points = sorted(int(low * size + rng.random() * span) for _ in range(kills))
        if all(b - a >= gap for a, b in itertools.pairwise(points)):
            return points
    return [int(low * size + i * span / kills) for i in range(kills)]


def stall_after(stalls: list[list[float]], killed_at: float, next_kill_at: float) -> float | None:
    """The longest pause the client saw because of the kill at ``killed_at``: one that
    ended after it (and not after the next kill), measured from the last byte before to
    the first byte after. ``None`` if none was at least ``kernel_peer.STALL_MIN`` long."""
    spans = [end - start for start, end in stalls if killed_at < end <= next_kill_at]
    return max(spans) if spans else None


def report(title: str, lines: list[str]) -> None:
    """Print figures for the test log (``pytest -s`` shows them; never asserted)."""
    print(f"\n== {title}")
    for line in lines:
        print(f"   {line}")


def server_for(
    service: str,
    port: int,
    tun: TunNet,
    store: RedisServer,
    tmp_path: Path,
    durability: str = "strict",
    label: str = "stcp",
) -> StcpServer:
    """``stcp run SERVICE`` on the fixture's device and Redis, listening on ``port``
    (its processes' stderr files under ``tmp_path / label``)."""
    return StcpServer(
        service=service,
        dev=tun.dev,
        listen=f"{tun.stack_addr}:{port}",
        store_url=store.url,
        workdir=tmp_path / label,
        extra=("--durability", durability),
    )
