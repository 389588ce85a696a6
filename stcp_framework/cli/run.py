"""``stcp run SERVICE``: serve echo / discard / chargen on the stack."""

from __future__ import annotations

import argparse
import functools
import logging
import signal
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import trio

from ..api import open_stack
from ..errors import StcpConfigError
from ..link.base import PacketDevice
from ..link.claim import claim_name
from ..link.handover import handover_name, offer, standby_name, take
from ..link.pcap import HEADERS_SNAPLEN, PcapDevice
from ..link.tun import TunDevice, device_exists, missing_device_error, wait_for_queue
from ..services import COMMIT_MODES, DEFAULT_PORTS, SERVICES, SOURCES, discard
from ..stack.clock import MonotonicClock
from ..stack.siblings import Siblings
from ..store.base import Store
from ..store.keys import validate_service
from ..store.memory import MemoryStore
from .endpoint import device_interfaces, format_endpoint, listen_problems, parse_endpoint
from .heap import collect_garbage_less_often, keep_freed_memory
from .workers import pin_worker, say, worker_instance

logger = logging.getLogger("stcp.cli")

MAX_WORKERS = 64


def _snaplen(text: str) -> int:
    """``--pcap-snaplen``: a positive byte count."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"not a positive number of bytes: {text!r}")
    return value


def add_run_parser(sub: Any) -> None:
    p = sub.add_parser(
        "run",
        help="serve echo, discard or chargen on the user-space stack",
        description=(
            "Serve an RFC 862/863/864 service (echo, discard, chargen) on the stcp stack, "
            "attached to a persistent TUN device made by `stcp net up`. Runs until "
            "SIGINT/SIGTERM, then prints its counters."
        ),
    )
    p.add_argument("service", choices=sorted(SERVICES), help="the service to run")
    p.add_argument("--dev", default="stcp0", help="TUN device name (default: stcp0)")
    p.add_argument(
        "--listen",
        action="append",
        type=parse_endpoint,
        metavar="ADDR[:PORT]",
        help="stack address and port to serve on, e.g. 198.18.0.2:7 or [2001:db8::2]:7 "
        "(without a port: the service's well-known one, 7, 9 or 19); repeatable: the "
        "stack answers on every address given, with every port given on each",
    )
    p.add_argument(
        "--store",
        default="embedded",
        metavar="STORE",
        help="where connection state lives: `embedded` (default: the private Redis of "
        "`stcp store up`, started when needed), a URL (redis://[:password@]host:port/db, "
        "rediss://..., unix:///path/redis.sock) or `memory` (lost on exit: no recovery)",
    )
    p.add_argument(
        "--store-dir",
        metavar="DIR",
        help="directory of the embedded store (default: as `stcp store up`)",
    )
    p.add_argument(
        "--instance",
        default="default",
        help="instance name: on start the server restores every connection the store "
        "holds for this name and fences off any older process of the same name "
        "(default: default)",
    )
    p.add_argument(
        "--durability",
        choices=["strict", "async", "ack-on-commit"],
        default="strict",
        help="strict (default): nothing is acknowledged before it is durable in the "
        "store; async: acknowledge at once and write behind (faster; a crash may lose "
        "what was acknowledged in the last moments); ack-on-commit: acknowledge only "
        "what the service has committed, so received bytes never go to the store (the "
        "client resends the rest after a crash)",
    )
    p.add_argument(
        "--pcap",
        metavar="FILE",
        help="write every packet to this libpcap file, flushed as packets pass; a "
        "restarted server continues the capture in it; with --workers N, worker I "
        "writes FILE.wI",
    )
    p.add_argument(
        "--pcap-snaplen",
        type=_snaplen,
        default=None,
        metavar="BYTES",
        help="with --pcap: keep only the first BYTES of each packet, as tcpdump -s "
        f"({HEADERS_SNAPLEN} holds every IP and TCP header; default: whole packets)",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=1,
        metavar="N",
        help="run N worker processes, one per queue of the (multi-queue) device, to use N "
        "cores; each worker keeps its flows under the instance name NAME.wI and is "
        "restarted if it dies (default: 1, a single process)",
    )
    p.add_argument(
        "--cpu-affinity",
        choices=["auto", "none"],
        default="auto",
        help="with --workers: auto (default) pins worker I to the I-th CPU this command "
        "may use; none leaves placement to the scheduler",
    )
    p.add_argument(
        "--standby",
        action="store_true",
        help="start now, but serve only once the process now serving this device exits "
        "(killed, crashed or stopped), then restore its connections at once: with its "
        "imports and store done in advance, clients stall for the restore alone, not "
        "for a process start (also a way to upgrade: start the new version with "
        "--standby, then stop the old one); with --workers, each worker gets such a "
        "standby, started again after each takeover",
    )
    p.add_argument("--worker", type=int, default=None, help=argparse.SUPPRESS)
    p.set_defaults(func=run_command)


def open_store(spec: str, *, instance: str, store_dir: str | None) -> Store:
    """``memory``, ``embedded`` or a Redis URL -> a store (before ``trio.run``)."""
    if spec == "memory":
        return MemoryStore()
    from ..store import embedded
    from ..store.redis import RedisStore

    url = embedded.ensure_running(store_dir) if spec == "embedded" else spec
    if not url.startswith(("redis://", "rediss://", "unix://")):
        raise StcpConfigError(
            f"--store {spec!r}: use embedded, memory or a redis://, rediss:// or unix:// URL"
        )
    try:
        return RedisStore.from_url(url, service=instance, socket_timeout=1.0)
    except ValueError as exc:
        raise StcpConfigError(f"--store {spec!r}: {exc}") from exc


def run_command(args: argparse.Namespace) -> int:
    if not args.listen:
        raise StcpConfigError("give the stack's address to serve on: --listen 198.18.0.2[:PORT]")
    try:
        validate_service(args.instance)  # (it names the flows' store keys)
    except ValueError:
        raise StcpConfigError(
            f"--instance {args.instance!r}: use a non-empty name without braces or spaces"
        ) from None
    if args.pcap_snaplen is not None and not args.pcap:
        raise StcpConfigError("--pcap-snaplen goes with --pcap FILE")
    if args.store_dir and args.store != "embedded":
        raise StcpConfigError("--store-dir applies to the embedded store only")  # (as flows)
    if not 1 <= args.workers <= MAX_WORKERS:
        raise StcpConfigError(f"--workers {args.workers}: use 1 to {MAX_WORKERS}")
    if args.worker is not None and not 0 <= args.worker < args.workers:
        raise StcpConfigError(f"--worker {args.worker}: use 0 to {args.workers - 1}")
    if args.workers > 1 and args.worker is None:
        from ..store import embedded
        from .workers import supervise

        _check_before_the_store(args)
        # One embedded store for all: started here, not raced by N workers.
        store = embedded.ensure_running(args.store_dir) if args.store == "embedded" else args.store
        return supervise(args, store)
    keep_freed_memory()  # (cli/heap.py: ~10 % of a bulk transfer's CPU otherwise)
    collect_garbage_less_often()  # (~14 % of the CPU at 1,000 echo connections otherwise)
    try:
        # CLOCK_MONOTONIC, not trio's randomly offset clock: a restarted process must
        # continue the TCP timestamps of the flows it restores (stack/clock.py, G3).
        trio.run(_serve, args, clock=MonotonicClock())
    except KeyboardInterrupt:
        pass
    return 0


def _check_before_the_store(args: argparse.Namespace) -> None:
    """What a ``--workers`` supervisor can check before it starts an embedded store
    (which outlives it): a mistyped device or address must not leave a daemon behind."""
    if not device_exists(args.dev):
        raise missing_device_error(args.dev)
    errors, _ = listen_problems(sorted({h for h, _ in args.listen}), device_interfaces(args.dev))
    if errors:
        raise StcpConfigError(errors[0])
    if args.pcap and not Path(args.pcap).parent.is_dir():
        raise StcpConfigError(f"--pcap {args.pcap}: no such directory")


async def _serve(args: argparse.Namespace) -> None:
    handler = SERVICES[args.service]
    addresses = sorted({host for host, _ in args.listen})
    ports = sorted({port or DEFAULT_PORTS[args.service] for _, port in args.listen})
    # The device first: a missing device or privilege is the likeliest mistake, and its
    # one-line error should not wait for (or depend on) the store.
    index = args.worker or 0
    if args.worker is not None and args.cpu_affinity == "auto":
        cpu = pin_worker(index)
        logger.info("worker %d pinned to CPU %s", index, "none" if cpu is None else cpu)
    instance = args.instance if args.worker is None else worker_instance(args.instance, index)
    open_our_store = functools.partial(
        open_store, args.store, instance=instance, store_dir=args.store_dir
    )
    waiting = claim_name(standby_name(args.dev, index), wait=0)
    if waiting is None:
        raise StcpConfigError(
            f"a standby (`stcp run --standby`) waits for {args.dev}"
            + (f" (queue {index})" if index else "")
            + ": it takes over when the serving process exits; stop it first"
        )
    store: Store | None = None
    if args.standby:
        tun, store = await _stand_by(args.dev, index, instance, open_our_store, waiting)
    else:
        waiting.close()  # (only checked: nobody waits)
        tun = await TunDevice.open(args.dev, queue=index)
    errors, warnings = listen_problems(addresses, device_interfaces(args.dev))
    if errors:
        await tun.aclose()
        raise StcpConfigError(errors[0])
    for line in warnings if index == 0 else ():
        logger.warning("%s", line)
    device: PacketDevice = tun
    siblings = Siblings(args.dev, index, args.workers) if args.workers > 1 else None
    if args.pcap:
        try:
            snaplen = {} if args.pcap_snaplen is None else {"snaplen": args.pcap_snaplen}
            device = PcapDevice(device, args.pcap, append=True, **snaplen)
        except OSError as exc:
            await tun.aclose()
            raise StcpConfigError(f"--pcap {args.pcap}: {exc.strerror or exc}") from exc
        except ValueError as exc:
            await tun.aclose()
            raise StcpConfigError(f"--pcap: {exc}") from exc
    if store is None:
        # (after the checks above: an embedded store started for a mistyped address
        # would outlive this process)
        store = await trio.to_thread.run_sync(open_our_store)
    async with open_stack(
        device,
        addresses,
        store=store,
        instance=instance,
        durability=args.durability,
        sources=SOURCES,
        siblings=siblings,
    ) as stack:
        async with trio.open_nursery() as nursery:
            # A standby started later takes this queue from here (link/handover.py).
            await nursery.start(
                functools.partial(offer, tun.fileno(), handover_name(args.dev, index)),
                tun.handover_settings(),
            )
            if args.service == "discard":
                handler = functools.partial(discard, report=_report)
            for port in ports:
                await nursery.start(
                    functools.partial(stack.serve, commit=COMMIT_MODES[args.service]),
                    handler,
                    port,
                )
            where = ", ".join(format_endpoint(a, p) for a in addresses for p in ports)
            restored = stack.runtime.restored
            print(
                f"stcp: serving {args.service} on {where} via {args.dev} "
                f"(instance {instance}, epoch {stack.runtime.epoch}, "
                f"{restored} connection{'' if restored == 1 else 's'} restored)",
                flush=True,
            )
            if index == 0:  # (once, not once per worker)
                nursery.start_soon(_warn_about_store, store)
            with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                async for _ in signals:
                    break
            nursery.cancel_scope.cancel()
        stats = stack.runtime.stats
        drops = stack.runtime.drops
        tcp = stack.runtime.tcp_totals()
        line = (
            (f"stcp: worker {index}: stopped" if args.workers > 1 else "stcp: stopped")
            + ("; " if stats else "")
            + ", ".join(f"{k}={v}" for k, v in sorted(stats.items()))
            + ("; drops: " + ", ".join(f"{r.value}={n}" for r, n in drops.items()) if drops else "")
            + ("; tcp: " + ", ".join(f"{k}={v}" for k, v in sorted(tcp.items())) if tcp else "")
        )
        say(line)
    await device.aclose()
    if siblings is not None:
        siblings.close()


async def _stand_by(
    dev: str,
    queue: int,
    instance: str,
    open_our_store: Callable[[], Store],
    waiting: socket.socket,
) -> tuple[TunDevice, Store]:
    """``--standby``: everything that takes time first -- imports, the store, the
    serving process's queue (``link/handover.py``; unread until the claim is ours, so
    nothing arriving in the gap is lost) -- then wait for the queue's claim. ``waiting``
    (the standby's name) is released once this process serves."""
    if not device_exists(dev):
        raise missing_device_error(dev)
    store = await trio.to_thread.run_sync(open_our_store)
    handed = await trio.to_thread.run_sync(take, handover_name(dev, queue))
    print(
        f"stcp: standing by for {dev} (instance {instance}): serving once the process "
        "holding it exits" + (", its queue held meanwhile" if handed is not None else ""),
        flush=True,
    )
    claim = await wait_for_queue(dev, queue)
    waiting.close()  # a standby no more
    if handed is not None:
        return TunDevice.adopt(handed, dev, queue=queue, claim=claim), store
    return await TunDevice.open(dev, queue=queue, claim=claim), store


async def _warn_about_store(store: Store) -> None:
    """A warning line for each store setting that weakens the guarantees (after the
    banner: not on the way to serving restored connections)."""
    check = getattr(store, "settings_warnings", None)  # (RedisStore)
    if check is not None:
        for line in await check():
            logger.warning("store: %s", line)


def _report(line: str) -> None:
    say(f"stcp: {line}")
