"""One benchmark server process: echo, discard and chargen on kernel sockets or on stcp.

Run by ``bench/run.py`` (``python -m bench.server ...`` from the repository root), one
process per server so that each gets a core of its own. Both kinds run the very same
service functions from ``stcp_framework.services`` (RFC 862/863/864), so the benchmark
compares the TCP stacks, not the services.

* ``kernel``: ``trio.serve_tcp`` on every local address (kernel TCP).
* ``stcp --dev NAME --addr ADDR``: attach to the persistent TUN device ``NAME`` (created
  by the orchestrator with ``net_up``) and answer as ``ADDR`` with a ``MemoryStore``.

The process prints ``READY <pid>`` on stdout once every port listens, then serves until
SIGINT or SIGTERM, and writes the stack's counters to stderr when it exits.
"""

from __future__ import annotations

import argparse
import inspect
import json
import logging
import os
import resource
import signal
import sys
import time
from collections.abc import Awaitable, Callable

import trio

from stcp_framework.services import DEFAULT_PORTS, SERVICES, SOURCES

Service = Callable[[trio.abc.Stream], Awaitable[None]]

# Enough descriptors for the scaling phase's 1,000 connections on kernel sockets.
_WANTED_NOFILE = 65536


def raise_nofile_limit() -> None:
    """Raise the soft ``RLIMIT_NOFILE`` towards the hard limit (kernel sockets are fds)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = _WANTED_NOFILE if hard == resource.RLIM_INFINITY else min(hard, _WANTED_NOFILE)
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


def tune_heap() -> bool:
    """Keep freed memory in the heap and collect garbage less often, as ``stcp run`` does
    (``stcp_framework/cli/heap.py``): the same settings for every server row alike, so
    ratios stay fair. Returns whether glibc took the heap settings."""
    from stcp_framework.cli.heap import collect_garbage_less_often, keep_freed_memory

    collect_garbage_less_often()
    return keep_freed_memory()


def _tolerant(service: Service) -> Callable[[trio.SocketStream], Awaitable[None]]:
    """Wrap a service so that one peer's reset does not stop ``trio.serve_tcp``.

    ``trio.serve_tcp`` lets a handler's exception crash the whole server; the stcp
    ``Stack.serve`` already resets just that connection. A client that closes early
    (the download phase closes with unread data: RST) is normal in a benchmark.
    """

    async def handler(stream: trio.SocketStream) -> None:
        try:
            await service(stream)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass

    return handler


def _announce_ready() -> None:
    print(f"READY {os.getpid()}", flush=True)


async def _wait_for_stop_signal() -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for _ in signals:
            return


async def serve_kernel() -> None:
    """Serve echo/discard/chargen with trio on kernel sockets until a stop signal."""
    async with trio.open_nursery() as nursery:
        for name, service in SERVICES.items():
            await nursery.start(trio.serve_tcp, _tolerant(service), DEFAULT_PORTS[name])
        _announce_ready()
        await _wait_for_stop_signal()
        nursery.cancel_scope.cancel()


async def serve_stcp(
    dev: str,
    addr: str,
    offload: bool | None,
    store_url: str = "memory",
    durability: str = "strict",
    worker: int = 0,
    workers: int = 1,
) -> None:
    """Serve echo/discard/chargen with stcp on TUN device ``dev`` until a stop signal.

    Args:
        dev: The persistent TUN device (already up, kernel side addressed).
        addr: The stack's own address on that subnet.
        offload: Passed to ``TunDevice.open(offload=...)`` when not ``None``; the
            orchestrator only asks for it when the signature has that keyword.
        store_url: ``memory`` (MemoryStore) or a Redis URL (RedisStore).
        durability: ``strict`` or ``async`` (see ``open_stack``).
        worker: This process's queue of the multi-queue device (``--workers``).
        workers: How many worker processes share the device (``stack/siblings.py``).
    """
    from stcp_framework import MemoryStore, open_stack
    from stcp_framework.link.tun import TunDevice
    from stcp_framework.store.base import Store

    kwargs: dict[str, object] = {}
    if offload is not None:
        kwargs["offload"] = offload
    device = await TunDevice.open(dev, queue=worker, **kwargs)  # type: ignore[arg-type]
    siblings = None
    if workers > 1:
        from stcp_framework.cli.workers import pin_worker
        from stcp_framework.stack.siblings import Siblings

        pin_worker(worker)  # as `stcp run --workers` does by default

        siblings = Siblings(dev, worker, workers)
    try:
        store: Store
        if store_url == "memory":
            store = MemoryStore()
        else:
            from stcp_framework.store.redis import RedisStore

            store = RedisStore.from_url(store_url, service=f"bench-{dev}-w{worker}")
        async with (
            open_stack(
                device,
                [addr],
                store=store,
                durability=durability,
                sources=SOURCES,
                siblings=siblings,
            ) as stack,
            trio.open_nursery() as nursery,
        ):
            for name, service in SERVICES.items():
                await nursery.start(stack.serve, service, DEFAULT_PORTS[name])
            _announce_ready()
            await _wait_for_stop_signal()
            counters = {
                "stats": dict(stack.runtime.stats),
                "drops": {str(k): v for k, v in stack.runtime.drops.items()},
                "tcp": dict(stack.runtime.tcp_totals()),
                "tun": {
                    k: getattr(device.counters, k)
                    for k in ("rx_packets", "tx_packets", "tx_errors", "tx_blocked")
                },
            }
            print(f"stcp counters: {json.dumps(counters)}", file=sys.stderr, flush=True)
            nursery.cancel_scope.cancel()
    finally:
        await device.aclose()
        if siblings is not None:
            siblings.close()


def run_workers(argv: list[str], workers: int) -> int:
    """Start ``workers`` copies of this server (``--worker I``), READY when all are.

    Each child dies with this process (``PR_SET_PDEATHSIG``); a stop signal here is
    passed on to every child. The orchestrator's CPU figure sums this process's
    descendants (``bench/run.py`` ``server_cpu_s``).
    """
    import subprocess

    from stcp_framework.cli.workers import die_with_parent

    children = []
    for index in range(workers):
        child = subprocess.Popen(
            [sys.executable, "-m", "bench.server", *argv, "--worker", str(index)],
            stdout=subprocess.PIPE,
            text=True,
            preexec_fn=die_with_parent,
        )
        children.append(child)
        assert child.stdout is not None
        line = child.stdout.readline()
        if not line.startswith("READY"):
            for started in children:
                started.kill()
            print(f"worker {index} did not start: {line!r}", file=sys.stderr)
            return 1
    stop = {"signal": 0}

    def on_signal(number: int, _frame: object) -> None:
        stop["signal"] = number

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    _announce_ready()
    while not stop["signal"] and all(c.poll() is None for c in children):
        time.sleep(0.2)
    for child in children:
        if child.poll() is None:
            child.terminate()
    status = 0
    for child in children:
        try:
            status |= child.wait(timeout=10)
        except subprocess.TimeoutExpired:
            child.kill()
            status = 1
    return status


def tun_supports_offload() -> bool:
    """Whether ``TunDevice.open`` takes an ``offload=`` keyword (added in a later change)."""
    from stcp_framework.link.tun import TunDevice

    return "offload" in inspect.signature(TunDevice.open).parameters


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.server", description=__doc__)
    sub = parser.add_subparsers(dest="kind", required=True)
    sub.add_parser("kernel", help="trio.serve_tcp on kernel sockets")
    stcp = sub.add_parser("stcp", help="stcp (MemoryStore or Redis) on a TUN device")
    stcp.add_argument("--dev", required=True)
    stcp.add_argument("--addr", required=True)
    stcp.add_argument("--offload", choices=("on", "off"), default=None)
    stcp.add_argument("--store", default="memory", help="memory or a redis:// / unix:// URL")
    stcp.add_argument("--workers", type=int, default=1, help="processes on the device's queues")
    stcp.add_argument("--worker", type=int, default=None, help="(internal) this one's queue")
    stcp.add_argument(
        "--durability", choices=("strict", "async", "ack-on-commit"), default="strict"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    raise_nofile_limit()
    tune_heap()
    if args.kind == "kernel":
        trio.run(serve_kernel)
    else:
        if args.workers > 1 and args.worker is None:
            return run_workers(list(argv if argv is not None else sys.argv[1:]), args.workers)
        offload = None if args.offload is None else args.offload == "on"
        trio.run(
            serve_stcp,
            args.dev,
            args.addr,
            offload,
            args.store,
            args.durability,
            args.worker or 0,
            args.workers,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
