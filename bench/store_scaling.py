"""How store costs grow with the number of flows (issue 3), not a test:
``.venv/bin/python bench/store_scaling.py [--quick]``.

Theory of operation:
    For N in 1, 100, 1,000 and 10,000 flows, ``MemoryStore`` and ``RedisStore`` side by
    side. The RedisStore talks to a private ``redis-server`` that this script starts in
    the foreground (its own child, ``PR_SET_PDEATHSIG``) on a Unix socket in a temporary
    directory, configured like the embedded store (``stcp_framework/store/embedded.py``:
    no TCP port, AOF on, ``appendfsync everysec``, no RDB snapshots; the same binary,
    ``embedded.find_server``), and stops by its PID (SIGTERM, then SIGKILL) on success,
    error, Ctrl-C and SIGTERM. Its directory is removed afterwards.

    The flows are real: each is a ``Connection`` driven in memory through a passive
    open and one request/reply (as ``tests/store/flow_factory.py`` does), and every delta
    its drains produced is committed, so the store holds what a running stack would
    leave for an idle keep-alive connection. Each N gets its own service (key prefix) in
    Redis and its own ``MemoryStore``.

    Measurements:

    1. Group commit: one ``store.commit(batch)`` with one delta per flow, in two shapes:
       the *data round* of an established flow (``RxAppend`` of 64 bytes + ``TcbSet`` of
       ``rcv_nxt``, ``rcv_nxt_offset``) and its *ACK round* (``TcbSet`` of ``snd_una``,
       ``snd_una_offset``, ``snd_wl1``, ``snd_wl2``). Median per batch over several
       repetitions, and per flow. For RedisStore a breakdown of the data round: the
       client's ``_encode`` and ``_ScriptCall.pack`` (thread CPU time, run once more outside
       the timed call), the server's time in ``EVALSHA`` (``INFO commandstats``), the
       server main thread's CPU (``/proc/PID/schedstat``), and the rest of the wall time
       (thread hand-off, socket, reply parsing, waiting for a core).
    2. Restore: what ``stack/recovery.py`` does at start, ``claim_many`` then
       ``load_many`` of every flow, ``RESTORE_BATCH`` flows at a time, with a new epoch
       and a fresh store client (empty caches, as a restarted process).
    3. Memory per idle established flow: Redis ``INFO memory`` ``used_memory`` before and
       after creating N flows in a fresh service (the store's connection closed first, so
       its query buffer is not counted); for MemoryStore the bytes ``tracemalloc`` sees
       the commits allocate and keep.

Output: one table per measurement (Markdown, as ``bench/run.py``'s ``render_table``),
each with the ratio of the per-flow figure to the one at N = 1, and a verdict on
linearity (per-flow cost at 10,000 flows over that at 100). Benchmarks are not tests:
nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

import redis
import trio

from stcp_framework.cli.workers import die_with_parent
from stcp_framework.stack.flows import flow_id_of
from stcp_framework.stack.recovery import RESTORE_BATCH
from stcp_framework.store.base import FlowDelta, Store
from stcp_framework.store.embedded import find_server
from stcp_framework.store.memory import MemoryStore
from stcp_framework.store.redis import RedisStore
from stcp_framework.tcp.config import TcpConfig
from stcp_framework.tcp.delta import DeltaOp, RxAppend, StateDelta, TcbSet
from stcp_framework.tcp.machine import Connection
from stcp_framework.tcp.state import TcpState
from stcp_framework.wire.seq import Seq, seq_add
from stcp_framework.wire.tcp import ACK, NO_OPTIONS, SYN, TcpOptions, TcpSegment

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # as a script: the repo root
from bench.run import render_table, stop_process

LEVELS = (1, 100, 1_000, 10_000)
EPOCH = 1
PAYLOAD = b"x" * 64  # the data round's request bytes
START_TIMEOUT = 10.0
STOP_TIMEOUT = 10.0

# repetitions per level: (group commit, restore)
REPS_FULL = {1: (200, 50), 100: (50, 20), 1_000: (15, 5), 10_000: (7, 3)}
REPS_QUICK = {1: (50, 10), 100: (15, 5), 1_000: (5, 2), 10_000: (3, 1)}

# the driven connections (as tests/store/flow_factory.py)
_CONFIG = TcpConfig(mss=1460)
_PEER_ISS = Seq(4_000_000_000)
_REQUEST = b"GET / HTTP/1.1\r\n\r\n"
_REPLY = b"HTTP/1.1 204 No Content\r\n\r\n"


class BenchError(Exception):
    """A setup step failed; the message says which."""


# ------------------------------------------------------------------ flows


@dataclass
class IdleFlow:
    """One idle established connection: its id, every delta its drains produced, and
    where its streams stand (for the next rounds' deltas)."""

    flow_id: str
    deltas: list[FlowDelta]
    rcv_nxt: int
    rx_end: int  # next inbound stream offset
    snd_una: int
    tx_end: int
    snd_wl1: int
    version: int = field(default=0)

    def __post_init__(self) -> None:
        self.version = self.deltas[-1].delta.version


def _peer(
    lport: int,
    rport: int,
    seq: Seq,
    ack: Seq,
    flags: int,
    payload: bytes = b"",
    options: TcpOptions = NO_OPTIONS,
) -> TcpSegment:
    return TcpSegment(
        src_port=rport,
        dst_port=lport,
        seq=seq,
        ack=ack,
        flags=flags,
        window=65535,
        urgent=0,
        options=options,
        payload=payload,
    )


def drive_idle_flow(i: int) -> IdleFlow:
    """Flow ``i``: passive open, one request read by the app, one reply acknowledged."""
    local, lport = "198.18.0.2", 80
    remote, rport = f"198.19.{i // 62500}.{i % 250 + 1}", 10000 + (i // 250) % 50000
    iss = Seq(0x1000_0000 + 7919 * i)
    syn = _peer(lport, rport, _PEER_ISS, Seq(0), SYN, options=TcpOptions(mss=1460, wscale=7))
    conn = Connection.open_passive(syn, now=0.0, config=_CONFIG, iss=iss, tsval_offset=0)
    key = (ipaddress.ip_address(remote).packed, rport, ipaddress.ip_address(local).packed, lport)
    flow_id = flow_id_of(key, conn.tcb.iss)
    deltas: list[FlowDelta] = []

    def drain() -> None:
        step = conn.drain()
        if step.delta is not None:
            deltas.append(FlowDelta(flow_id, EPOCH, step.delta))

    drain()
    peer_seq, our_seq = seq_add(_PEER_ISS, 1), seq_add(iss, 1)
    conn.on_segment(_peer(lport, rport, peer_seq, our_seq, ACK), 0.01)
    drain()
    conn.on_segment(_peer(lport, rport, peer_seq, our_seq, ACK, _REQUEST), 0.02)
    drain()
    if conn.app_receive(len(_REQUEST), 0.03) != _REQUEST:
        raise BenchError("driven flow: the app did not read the request")
    drain()
    if conn.app_send(_REPLY, 0.04) != len(_REPLY):
        raise BenchError("driven flow: the reply was not accepted")
    drain()
    peer_now = seq_add(peer_seq, len(_REQUEST))
    conn.on_segment(_peer(lport, rport, peer_now, seq_add(our_seq, len(_REPLY)), ACK), 0.05)
    drain()
    if conn.state is not TcpState.ESTABLISHED:
        raise BenchError(f"driven flow ended in {conn.state}")
    tcb = conn.tcb
    return IdleFlow(
        flow_id,
        deltas,
        rcv_nxt=int(tcb.rcv_nxt),
        rx_end=len(_REQUEST),
        snd_una=int(tcb.snd_una),
        tx_end=len(_REPLY),
        snd_wl1=int(tcb.snd_wl1),
    )


def data_round(flows: Sequence[IdleFlow]) -> list[FlowDelta]:
    """One delta per flow: 64 request bytes arrived (``RxAppend`` + ``rcv_nxt``)."""
    batch = []
    for f in flows:
        f.version += 1
        ops: tuple[DeltaOp, ...] = (
            RxAppend(f.rx_end, PAYLOAD),
            TcbSet(
                {
                    "rcv_nxt": (f.rcv_nxt + len(PAYLOAD)) % 2**32,
                    "rcv_nxt_offset": f.rx_end + len(PAYLOAD),
                }
            ),
        )
        f.rx_end += len(PAYLOAD)
        f.rcv_nxt = (f.rcv_nxt + len(PAYLOAD)) % 2**32
        batch.append(FlowDelta(f.flow_id, EPOCH, StateDelta(f.version, ops)))
    return batch


def ack_round(flows: Sequence[IdleFlow]) -> list[FlowDelta]:
    """One delta per flow: the peer acknowledged 100 more bytes (``TcbSet`` of 4 fields)."""
    batch = []
    for f in flows:
        f.version += 1
        f.snd_una = (f.snd_una + 100) % 2**32
        f.tx_end += 100
        fields = {
            "snd_una": f.snd_una,
            "snd_una_offset": f.tx_end,
            "snd_wl1": f.rcv_nxt,
            "snd_wl2": f.snd_una,
        }
        batch.append(FlowDelta(f.flow_id, EPOCH, StateDelta(f.version, (TcbSet(fields),))))
    return batch


async def create(store: Store, flows: Sequence[IdleFlow], batch: int = 1000) -> None:
    """Commit every flow's handshake and request/reply deltas, in order, ``batch``
    deltas per group commit."""
    depth = max(len(f.deltas) for f in flows)
    for level in range(depth):
        items = [f.deltas[level] for f in flows if level < len(f.deltas)]
        for start in range(0, len(items), batch):
            await store.commit(items[start : start + batch])


def fresh_copies(flows: Sequence[IdleFlow]) -> list[IdleFlow]:
    """The same flows as created (versions and offsets reset), for another store."""
    return [
        IdleFlow(f.flow_id, f.deltas, f.rcv_nxt, f.rx_end, f.snd_una, f.tx_end, f.snd_wl1)
        for f in flows
    ]


# ------------------------------------------------------------------ redis-server


class RedisServer:
    """A private redis-server in the foreground, on ``<dir>/redis.sock``, stopped by PID."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.socket = directory / "redis.sock"
        self.binary = find_server()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"unix://{self.socket}"

    @property
    def pid(self) -> int:
        if self.proc is None:
            raise BenchError("redis-server is not running")
        return self.proc.pid

    def client(self) -> redis.Redis:
        return redis.Redis(unix_socket_path=str(self.socket), socket_timeout=30)

    def start(self) -> None:
        # as embedded._config, but in the foreground (our child, stopped by its PID)
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
                "--daemonize",
                "no",
                "--appendonly",
                "yes",
                "--appendfsync",
                "everysec",
                "--save",
                "",
                "--logfile",
                str(self.directory / "redis.log"),
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=die_with_parent,
        )
        client = self.client()
        deadline = time.monotonic() + START_TIMEOUT
        try:
            while True:
                with contextlib.suppress(redis.exceptions.ConnectionError, OSError):
                    if client.ping():
                        return
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise BenchError(
                        f"{self.binary} did not start: see {self.directory / 'redis.log'}"
                    )
                time.sleep(0.02)
        finally:
            client.close()

    def stop(self) -> bool:
        """SIGTERM (Redis flushes the AOF and exits), wait, SIGKILL; True if it ran."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return False
        stop_process(proc, STOP_TIMEOUT)
        return True

    def main_thread_cpu_ns(self) -> int | None:
        """CPU time of the server's main thread (where scripts run), or None."""
        try:
            with open(f"/proc/{self.pid}/schedstat") as f:
                return int(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def wait_clients(self, count: int, timeout: float = 2.0) -> None:
        """Until at most ``count`` clients are connected (a closed connection is freed
        by the server's next event loop turn), or ``timeout``."""
        client = self.client()
        deadline = time.monotonic() + timeout
        try:
            while (
                int(client.info("clients")["connected_clients"]) > count
                and time.monotonic() < deadline
            ):
                time.sleep(0.01)
        finally:
            client.close()

    def used_memory(self) -> int:
        client = self.client()
        try:
            return int(client.info("memory")["used_memory"])
        finally:
            client.close()


@contextlib.contextmanager
def private_redis() -> Iterator[RedisServer]:
    """A started ``RedisServer`` in a fresh temporary directory; always stopped and
    removed, also on error, Ctrl-C (KeyboardInterrupt) and SIGTERM (SystemExit)."""
    directory = Path(tempfile.mkdtemp(prefix="stcp-scale-"))
    server = RedisServer(directory)
    previous = signal.getsignal(signal.SIGTERM)

    def on_sigterm(signum: int, frame: FrameType | None) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_sigterm)
    try:
        server.start()
        progress(f"redis-server {server.binary} pid {server.pid} on {server.socket}")
        yield server
    finally:
        pid = server.proc.pid if server.proc is not None else None
        if server.stop():
            progress(f"redis-server pid {pid} stopped")
        signal.signal(signal.SIGTERM, previous)
        shutil.rmtree(directory, ignore_errors=True)


# ------------------------------------------------------------------ measurements


def progress(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


@dataclass
class Breakdown:
    """RedisStore data-round commit, per batch (seconds; None: not measurable)."""

    encode: float
    pack: float
    server_cmd: float | None  # EVALSHA time in the server (INFO commandstats, mean)
    server_cpu: float | None  # server main thread CPU during the commit (median)
    wall: float  # the whole ``await store.commit`` (median)


@dataclass
class Level:
    """Every figure of one N."""

    n: int
    commit: dict[tuple[str, str], float] = field(default_factory=dict)  # (store, shape)
    restore: dict[str, float] = field(default_factory=dict)
    memory: dict[str, float] = field(default_factory=dict)  # bytes per flow
    breakdown: Breakdown | None = None


def _evalsha_usec(client: redis.Redis) -> float | None:
    stats = client.info("commandstats").get("cmdstat_evalsha")
    return float(stats["usec_per_call"]) if stats else None


async def measure_commits(
    level: Level, flows: Sequence[IdleFlow], server: RedisServer, reps: int
) -> None:
    """Group commits of both shapes into both stores (flows created first)."""
    n = level.n
    memory = MemoryStore()
    mem_flows = fresh_copies(flows)
    await create(memory, mem_flows)
    redis_store = RedisStore.from_url(server.url, service=f"scale{n}", socket_timeout=60)
    red_flows = fresh_copies(flows)
    await create(redis_store, red_flows)
    info = server.client()
    try:
        for shape, make in (("data", data_round), ("ack", ack_round)):
            stores: list[tuple[str, Store, list[IdleFlow]]] = [
                ("memory", memory, mem_flows),
                ("redis", redis_store, red_flows),
            ]
            for store_name, store, store_flows in stores:
                await store.commit(make(store_flows))  # warm-up (and script load)
                walls: list[float] = []
                cpus: list[float] = []
                encode = pack = 0.0
                if store_name == "redis":
                    info.config_resetstat()
                for _ in range(reps):
                    batch = make(store_flows)
                    cpu_before = server.main_thread_cpu_ns()
                    started = time.perf_counter()
                    await store.commit(batch)
                    walls.append(time.perf_counter() - started)
                    cpu_after = server.main_thread_cpu_ns()
                    if cpu_before is not None and cpu_after is not None:
                        cpus.append((cpu_after - cpu_before) / 1e9)
                level.commit[store_name, shape] = statistics.median(walls)
                if store_name == "redis" and shape == "data":
                    server_cmd = _evalsha_usec(info)
                    # the client side once more, outside the timed call (no writes)
                    batch = make(store_flows)
                    t0 = time.thread_time()
                    call = redis_store._encode(batch)
                    t1 = time.thread_time()
                    call.pack(redis_store._commit.sha)
                    t2 = time.thread_time()
                    encode, pack = t1 - t0, t2 - t1
                    await redis_store.commit(batch)
                    level.breakdown = Breakdown(
                        encode=encode,
                        pack=pack,
                        server_cmd=None if server_cmd is None else server_cmd / 1e6,
                        server_cpu=statistics.median(cpus) if cpus else None,
                        wall=level.commit["redis", "data"],
                    )
    finally:
        info.close()
        await redis_store.aclose()


async def measure_restore(
    level: Level, flows: Sequence[IdleFlow], server: RedisServer, reps: int, first_epoch: int
) -> None:
    """``claim_many`` + ``load_many`` of every flow, as ``recovery.restore_flows``."""
    n = level.n
    ids = [f.flow_id for f in flows]
    memory = MemoryStore()
    await create(memory, fresh_copies(flows))
    for store_name in ("memory", "redis"):
        times = []
        for rep in range(reps + 1):  # the first is a warm-up
            store: Store = (
                memory
                if store_name == "memory"
                else RedisStore.from_url(server.url, service=f"scale{n}", socket_timeout=60)
            )
            epoch = first_epoch + rep
            started = time.perf_counter()
            loaded = 0
            for start in range(0, n, RESTORE_BATCH):
                claimed = await store.claim_many(ids[start : start + RESTORE_BATCH], epoch)
                records = await store.load_many(claimed)
                loaded += sum(1 for r in records.values() if r is not None and r.tcb)
            elapsed = time.perf_counter() - started
            if store is not memory:
                await store.aclose()
            if loaded != n:
                raise BenchError(f"{store_name}: restored {loaded} of {n} flows")
            if rep:
                times.append(elapsed)
        level.restore[store_name] = statistics.median(times)


async def measure_memory(level: Level, flows: Sequence[IdleFlow], server: RedisServer) -> None:
    """Bytes per idle established flow in each store."""
    n = level.n
    # warm-up: the first commit after other work allocates ~50 KB once (not per flow)
    warm = RedisStore.from_url(server.url, service=f"memwarm{n}", socket_timeout=60)
    await create(warm, fresh_copies(flows[:1]))
    await warm.aclose()
    server.wait_clients(1)
    before = server.used_memory()
    store = RedisStore.from_url(server.url, service=f"mem{n}", socket_timeout=60)
    await create(store, fresh_copies(flows))
    await store.aclose()  # its connection's query buffer is not the flows' memory
    server.wait_clients(1)
    level.memory["redis"] = (server.used_memory() - before) / n

    copies = fresh_copies(flows)
    memory = MemoryStore()
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        await create(memory, copies)
        level.memory["memory"] = (tracemalloc.get_traced_memory()[0] - base) / n
    finally:
        tracemalloc.stop()


# ------------------------------------------------------------------ output


def fmt(value: float | None) -> str:
    """Three significant digits (whole numbers from 100 on, with thousands separators)."""
    if value is None:
        return "-"
    if abs(value) >= 99.95:
        return f"{value:,.0f}"
    return f"{value:#.3g}".rstrip(".")


def ratio(value: float, base: float) -> str:
    return f"{value / base:.2f}x" if base > 0 else "-"


def verdict(name: str, per_flow: dict[int, float]) -> str:
    """One line: per-flow cost at the largest level over that at 100."""
    if 100 not in per_flow or max(per_flow) == 100:
        return f"{name}: not enough levels for a verdict"
    top = max(per_flow)
    r = per_flow[top] / per_flow[100]
    if r <= 0.8:
        word = "sublinear (fixed per-call costs amortized)"
    elif r <= 1.5:
        word = "linear (within this machine's noise)"
    elif r <= 2.5:
        word = "near-linear (a working set past the CPU caches costs about this much)"
    else:
        word = "SUPERLINEAR: look for a cost that grows with the batch"
    return f"{name}: per flow, {top:,} flows cost {r:.2f}x what 100 flows cost: {word}"


def store_table(
    title: str,
    levels: Sequence[Level],
    get: Callable[[Level, str], float],
    unit: str,
    scale: float,
    total_unit: str,
    total_scale: float,
) -> str:
    """N rows; per store: total, per flow, per-flow ratio to N = 1; then Redis/Memory."""
    base = {s: get(levels[0], s) / levels[0].n for s in ("memory", "redis")}
    rows = []
    for lv in levels:
        row = [f"{lv.n:,}"]
        for s in ("memory", "redis"):
            total = get(lv, s)
            row += [
                fmt(total * total_scale),
                fmt(total / lv.n * scale),
                ratio(total / lv.n, base[s]),
            ]
        row.append(ratio(get(lv, "redis"), get(lv, "memory")))
        rows.append(row)
    headers = ["flows"]
    for s in ("MemoryStore", "RedisStore"):
        headers += [f"{s} {total_unit}", f"{s} {unit}/flow", "x N=1"]
    headers.append("Redis/Mem")
    lines = [
        verdict(s, {lv.n: get(lv, key) / lv.n for lv in levels})
        for s, key in (("MemoryStore", "memory"), ("RedisStore", "redis"))
    ]
    return render_table(title, headers, rows, note="\n".join(lines))


def memory_table(levels: Sequence[Level]) -> str:
    base = {s: levels[0].memory[s] for s in ("memory", "redis")}
    rows = []
    for lv in levels:
        row = [f"{lv.n:,}"]
        for s in ("memory", "redis"):
            row += [fmt(lv.memory[s]), ratio(lv.memory[s], base[s])]
        row.append(ratio(lv.memory["redis"], lv.memory["memory"]))
        rows.append(row)
    headers = ["flows", "MemoryStore B/flow", "x N=1", "RedisStore B/flow", "x N=1", "Redis/Mem"]
    lines = [
        verdict(s, {lv.n: lv.memory[key] for lv in levels})
        for s, key in (("MemoryStore", "memory"), ("RedisStore", "redis"))
    ]
    note = (
        "MemoryStore: bytes tracemalloc sees the commits keep; RedisStore: used_memory "
        "delta after a one-flow warm-up (keys, index entry, the keyspace's hash table "
        "growth).\n" + "\n".join(lines)
    )
    return render_table("Memory per idle established flow (bytes)", headers, rows, note)


def breakdown_table(levels: Sequence[Level]) -> str:
    rows = []
    for lv in levels:
        b = lv.breakdown
        if b is None:
            continue
        us = 1e6 / lv.n
        known = b.encode + b.pack + (b.server_cmd or 0.0)
        rows.append(
            [
                f"{lv.n:,}",
                fmt(b.encode * us),
                fmt(b.pack * us),
                fmt(None if b.server_cmd is None else b.server_cmd * us),
                fmt(None if b.server_cpu is None else b.server_cpu * us),
                fmt(b.wall * us),
                fmt(max(b.wall - known, 0.0) * us),
            ]
        )
    headers = ["flows", "encode", "pack", "EVALSHA in server", "server CPU", "wall", "rest"]
    note = (
        "µs per flow. encode/pack: client thread CPU of RedisStore._encode and "
        "_ScriptCall.pack; EVALSHA in server: INFO commandstats usec_per_call; server CPU: "
        "redis main thread, /proc/PID/schedstat (median); rest = wall - encode - pack - "
        "EVALSHA: thread hand-off, socket, AOF write, reply parsing, waiting for a core."
    )
    return render_table(
        "RedisStore group commit (data round), where the time goes", headers, rows, note
    )


# ------------------------------------------------------------------ main


async def run(server: RedisServer, levels: Sequence[int], quick: bool) -> list[Level]:
    reps = REPS_QUICK if quick else REPS_FULL
    started = time.perf_counter()
    progress(f"driving {max(levels):,} connections in memory ...")
    all_flows = [drive_idle_flow(i) for i in range(max(levels))]
    progress(f"  {time.perf_counter() - started:.1f} s")
    results = []
    for n in levels:
        level = Level(n)
        commit_reps, restore_reps = reps.get(n, (3, 1))
        flows = all_flows[:n]
        progress(f"N = {n:,}: group commits ({commit_reps} each) ...")
        await measure_commits(level, flows, server, commit_reps)
        progress(f"N = {n:,}: restore ({restore_reps}) ...")
        await measure_restore(level, flows, server, restore_reps, first_epoch=EPOCH + 1)
        progress(f"N = {n:,}: memory ...")
        await measure_memory(level, flows, server)
        results.append(level)
        progress(f"  {time.perf_counter() - started:.1f} s so far")
    return results


def report(levels: Sequence[Level], server_binary: str, quick: bool) -> str:
    def commit_of(shape: str) -> Callable[[Level, str], float]:
        return lambda lv, s: lv.commit[s, shape]

    parts = [
        f"# Store scaling ({'--quick, ' if quick else ''}{server_binary}, AOF everysec)",
        "",
        store_table(
            "Group commit, data round (RxAppend 64 B + TcbSet 2 fields): one "
            "commit of one delta per flow",
            levels,
            commit_of("data"),
            "µs",
            1e6,
            "ms/batch",
            1e3,
        ),
        "",
        store_table(
            "Group commit, ACK round (TcbSet 4 fields)",
            levels,
            commit_of("ack"),
            "µs",
            1e6,
            "ms/batch",
            1e3,
        ),
        "",
        breakdown_table(levels),
        "",
        store_table(
            "Restore: claim_many + load_many of every flow",
            levels,
            lambda lv, s: lv.restore[s],
            "µs",
            1e6,
            "ms",
            1e3,
        ),
        "",
        memory_table(levels),
    ]
    return "\n".join(parts)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="fewer repetitions")
    parser.add_argument(
        "--levels",
        default=",".join(str(n) for n in LEVELS),
        help="comma-separated flow counts (default %(default)s)",
    )
    args = parser.parse_args(argv)
    levels = sorted({int(x) for x in args.levels.split(",") if x.strip()})
    if not levels or levels[0] < 1:
        parser.error("--levels: positive integers")
    try:
        with private_redis() as server:
            binary = os.path.basename(server.binary)
            client = server.client()
            try:
                version = str(client.info("server")["redis_version"])
            finally:
                client.close()
            results = trio.run(run, server, levels, args.quick)
    except BenchError as exc:
        print(f"store_scaling: {exc}", file=sys.stderr)
        return 1
    print(report(results, f"{binary} {version}", args.quick))
    return 0


if __name__ == "__main__":
    sys.exit(main())
