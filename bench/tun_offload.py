"""TUN offloads on and off: bulk MB/s of the stack against the kernel (not a test).

Run as root in a private network namespace::

    unshare -n -- .venv/bin/python bench/tun_offload.py [--size 100] [--repeat 3]

For each MTU (65000, 1500) and device mode — ``off`` (bare packets, checksums in
Python), ``csum`` (``IFF_VNET_HDR`` + ``TUN_F_CSUM``) and ``csum+gso`` (also
``TUN_F_TSO4/6``: the kernel hands over 64 KB super-segments) — the stack serves RFC 863
discard (upload: the kernel client sends) and RFC 864 chargen (download: the kernel
client reads). The stack runs in this process on a fresh attach of one TUN device; the
client is this script in a separate process (``client`` sub-command), an ordinary
Python socket. Each point is the median of ``--repeat`` runs; the machine is shared and
noisy, so compare ratios within one run (ANCHORS.md).
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
import time
from dataclasses import dataclass

import trio

from stcp_framework import open_stack
from stcp_framework.cli.net import net_down, net_up
from stcp_framework.cli.netns import current_namespace_problems, run_ip
from stcp_framework.link.tun import TunDevice, device_exists
from stcp_framework.services import chargen, discard

DEV = "stcpbench0"
KERNEL_ADDR = "198.18.250.1"
STACK_ADDR = "198.18.250.2"
DISCARD_PORT = 9
CHARGEN_PORT = 19
CHUNK = 1 << 20
IO_TIMEOUT = 30.0  # seconds one socket call may block in the client
RUN_TIMEOUT = 120.0  # seconds one transfer may take
MODES = {"off": (False, False), "csum": (True, False), "csum+gso": (True, True)}
MTUS = (65000, 1500)


# ---------------------------------------------------------------- client process


def client(direction: str, size: int) -> dict[str, float]:
    """Upload ``size`` bytes to discard or download them from chargen; time it."""
    port = DISCARD_PORT if direction == "upload" else CHARGEN_PORT
    with socket.create_connection((STACK_ADDR, port), timeout=IO_TIMEOUT) as sock:
        started = time.perf_counter()
        if direction == "upload":
            block = memoryview(bytes(range(256)) * (CHUNK // 256))
            sent = 0
            while sent < size:
                n = min(CHUNK, size - sent)
                sock.sendall(block[:n])
                sent += n
            sock.shutdown(socket.SHUT_WR)
            sock.recv(1)  # the server's FIN: it has read everything
        else:
            buf = memoryview(bytearray(CHUNK))
            received = 0
            while received < size:
                n = sock.recv_into(buf[: min(CHUNK, size - received)])
                if n == 0:
                    raise SystemExit(f"chargen closed after {received} bytes")
                received += n
        seconds = time.perf_counter() - started
    return {"seconds": seconds}


# ---------------------------------------------------------------- stack side


@dataclass(frozen=True, slots=True)
class Point:
    mtu: int
    mode: str
    direction: str
    mb_per_s: float
    rx_gso_packets: int
    avg_rx_packet: float


async def one_run(mtu: int, mode: str, direction: str, size: int) -> Point:
    offload, gso = MODES[mode]
    dev = await TunDevice.open(DEV, offload=offload, gso=gso)
    try:
        async with open_stack(dev, [STACK_ADDR]) as stack, trio.open_nursery() as nursery:
            await nursery.start(stack.serve, discard, DISCARD_PORT)
            await nursery.start(stack.serve, chargen, CHARGEN_PORT)
            with trio.fail_after(RUN_TIMEOUT):
                done = await trio.run_process(
                    [sys.executable, __file__, "client", direction, str(size)],
                    capture_stdout=True,
                )
            nursery.cancel_scope.cancel()
    finally:
        await dev.aclose()
    seconds = json.loads(done.stdout)["seconds"]
    c = dev.counters
    return Point(
        mtu, mode, direction, size / seconds / 1e6, c.rx_gso_packets,
        c.rx_bytes / c.rx_packets if c.rx_packets else 0.0,
    )  # fmt: skip


async def bench(size: int, repeat: int) -> list[Point]:
    medians: list[Point] = []
    for mtu in MTUS:
        if device_exists(DEV):
            net_down(DEV)
        net_up(DEV, f"{KERNEL_ADDR}/24", mtu)
        try:
            for mode in MODES:
                for direction in ("upload", "download"):
                    runs = [await one_run(mtu, mode, direction, size) for _ in range(repeat)]
                    rates = [p.mb_per_s for p in runs]
                    mid = sorted(runs, key=lambda p: p.mb_per_s)[len(runs) // 2]
                    medians.append(mid)
                    print(f"  mtu {mtu:5d} {mode:8s} {direction:8s} "
                          + " ".join(f"{r:7.0f}" for r in rates) + " MB/s",
                          file=sys.stderr, flush=True)  # fmt: skip
        finally:
            net_down(DEV)
    return medians


def table(points: list[Point]) -> str:
    by = {(p.mtu, p.mode, p.direction): p for p in points}
    lines = [
        "| MTU | device | upload (discard) MB/s | download (chargen) MB/s "
        "| avg rx packet (upload) |",
        "|---|---|---|---|---|",
    ]
    for mtu in MTUS:
        for mode in MODES:
            up, down = by[(mtu, mode, "upload")], by[(mtu, mode, "download")]
            lines.append(
                f"| {mtu} | {mode} | {up.mb_per_s:,.0f} | {down.mb_per_s:,.0f} "
                f"| {up.avg_rx_packet:,.0f} B |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["client"]:
        print(json.dumps(client(args[1], int(args[2]))))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=100, help="MB per transfer (default 100)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per point (median)")
    opts = parser.parse_args(args)
    problems = current_namespace_problems()
    if problems:
        parser.error("run in a private network namespace: unshare -n -- ... ("
                     + "; ".join(problems[:2]) + ")")  # fmt: skip
    run_ip("link", "set", "dev", "lo", "up")
    points = trio.run(bench, opts.size * 1_000_000, opts.repeat)
    print(f"\n{opts.size} MB per transfer, median of {opts.repeat} runs")
    print(table(points))
    return 0


if __name__ == "__main__":
    sys.exit(main())
