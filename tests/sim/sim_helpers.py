"""Shared pieces of the simulation tests: a two-way bulk transfer and its summary.

The transfer is the simplest one that exercises both directions at once: the client
uploads ``size`` bytes to a hashing sink on the server while the server sends ``size``
bytes of a different deterministic source back; each side then half-closes (FIN after
its data) and reads until the peer's FIN. Byte-exactness is checked with SHA-256 over
everything received, against the hash of what was sent.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio
import trio._core._run

from stcp_framework.api import Stream
from stcp_framework.testing import SimPair, connection_counters

PORT = 5001
RECEIVE_SIZE = 256 * 1024
SEND_CHUNK = 1024 * 1024
SETTLE = 1.0  # virtual seconds after the close, so that no packet is in flight
SNAPSHOT_DIR = Path(__file__).parent / "snapshots"
UPDATE_ENV = "STCP_UPDATE_SNAPSHOTS"


def seed_trio_scheduler(seed: int) -> None:
    """Make trio's choice among simultaneously runnable tasks reproducible from now on.

    trio shuffles every batch of runnable tasks with a private ``random.Random`` to
    shake out ordering bugs, and registers that generator with hypothesis (trio's
    entry-point plugin, active here because ``tests/conftest.py`` imports hypothesis)
    so that examples replay exactly. Two stacks on one virtual clock run many tasks at
    the same instant, and their order decides which packet draws which fault, so a
    summary is only a function of the seed once that generator is seeded too.

    The same plugin (and pytest-trio) also sorts each batch by task creation before the
    shuffle (``_ALLOW_DETERMINISTIC_SCHEDULING``). Without it -- in a script such as
    ``recovery_stats.py`` or ``crash_fuzz.py`` that imports no hypothesis -- a batch
    keeps the order tasks became runnable in, which for timers due at the same instant
    follows trio's deadline tie-break by ``id()`` of the cancel scope, i.e. memory
    layout: the same seed then gave different runs from different script paths or
    imports. So it is set here too. This is the one place the suite reaches into
    trio's internals; under pytest it changes nothing.
    """
    trio._core._run._ALLOW_DETERMINISTIC_SCHEDULING = True  # type: ignore[misc]
    trio._core._run._r.seed(seed)


def payload(seed: int, size: int) -> bytes:
    """``size`` deterministic pseudo-random bytes."""
    return random.Random(seed).randbytes(size)


async def send_then_eof(stream: Stream, data: bytes) -> None:
    view = memoryview(data)
    for start in range(0, len(view), SEND_CHUNK):
        await stream.send_all(view[start : start + SEND_CHUNK])
    await stream.send_eof()


async def receive_until_eof(stream: Stream) -> tuple[int, str]:
    """Read until the peer's FIN: (byte count, SHA-256 hex of the bytes)."""
    digest = hashlib.sha256()
    size = 0
    while data := await stream.receive_some(RECEIVE_SIZE):
        digest.update(data)
        size += len(data)
    return size, digest.hexdigest()


@dataclass
class TransferResult:
    upload: tuple[int, str]  # what the server received
    download: tuple[int, str]  # what the client received
    elapsed: float  # virtual seconds, connect to both EOFs
    client_counters: dict[str, int]
    server_counters: dict[str, int]


async def transfer_both_ways(pair: SimPair, size: int, *, seed: int) -> TransferResult:
    """Connect, move ``size`` bytes each way at once, close; return what arrived."""
    upload = payload(seed, size)
    download = payload(seed + 1, size)
    listener = pair.server.listen(PORT)
    start = trio.current_time()
    client, server = await pair.stream_pair(listener)
    results: dict[str, tuple[int, str]] = {}

    async def side(stream: Stream, data: bytes, key: str) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(send_then_eof, stream, data)
            results[key] = await receive_until_eof(stream)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(side, client, upload, "download")
        nursery.start_soon(side, server, download, "upload")
    elapsed = trio.current_time() - start
    await client.aclose()
    await server.aclose()
    await listener.aclose()
    await trio.sleep(SETTLE)  # the last ACKs and the FIN exchange land
    return TransferResult(
        upload=results["upload"],
        download=results["download"],
        elapsed=elapsed,
        client_counters=connection_counters(client),
        server_counters=connection_counters(server),
    )


def expected(seed: int, size: int) -> tuple[tuple[int, str], tuple[int, str]]:
    """(upload, download) as ``receive_until_eof`` reports them when byte-exact."""
    return (
        (size, hashlib.sha256(payload(seed, size)).hexdigest()),
        (size, hashlib.sha256(payload(seed + 1, size)).hexdigest()),
    )


COUNTER_KEYS = ("retransmit", "fast_retransmit", "rto", "syn_retransmit")


def summary(pair: SimPair, result: TransferResult) -> dict[str, Any]:
    """What a run did, in numbers that are exactly reproducible for a seed."""

    def end(counters: dict[str, int], stats: Any, link: Any) -> dict[str, int]:
        out = {"packets_out": stats["packets_out"], "packets_in": stats["packets_in"]}
        out.update({key: counters.get(key, 0) for key in COUNTER_KEYS})
        out["link_dropped"] = link.counters.dropped
        return out

    net = pair.network.counters
    return {
        "virtual_seconds": round(result.elapsed, 6),
        "client": end(result.client_counters, pair.client.runtime.stats, pair.client_link),
        "server": end(result.server_counters, pair.server.runtime.stats, pair.server_link),
        "network": {
            "sent": net.sent,
            "delivered": net.delivered,
            "dropped": net.dropped,
            "duplicated": net.duplicated,
            "reordered": net.reordered,
            "corrupted": net.corrupted,
        },
    }


def check_conservation(pair: SimPair) -> None:
    """Every packet sent (and every duplicate) was delivered or dropped: none in flight."""
    net = pair.network.counters
    assert net.sent + net.duplicated == net.delivered + net.dropped


def check_snapshot(name: str, key: str, value: dict[str, Any]) -> None:
    """Compare ``value`` with ``snapshots/<name>.json[key]``; rewrite it when
    ``STCP_UPDATE_SNAPSHOTS=1`` (smoltcp ``netsim.snap`` style)."""
    path = SNAPSHOT_DIR / f"{name}.json"
    stored: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}
    if os.environ.get(UPDATE_ENV) == "1":
        stored[key] = value
        SNAPSHOT_DIR.mkdir(exist_ok=True)
        path.write_text(json.dumps(stored, indent=2, sort_keys=True) + "\n")
        return
    assert key in stored, f"no snapshot {key!r} in {path}; run with {UPDATE_ENV}=1"
    assert value == stored[key], f"summary changed (rerun with {UPDATE_ENV}=1 if intended)"
