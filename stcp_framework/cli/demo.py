"""``stcp demo``: kill -9 the server three times while a kernel TCP client streams through it.

It makes its own network namespace (re-running itself under ``unshare --net`` when the
current one looks like the host's), a TUN device there and a private embedded store (a
Redis daemon in a temporary directory), starts ``stcp run echo`` on the user-space stack
and streams data through it from an ordinary kernel-socket client. At random points the
server is killed with SIGKILL and started again at once; the client notices only a
stall. Every byte is verified, a timeline is printed, and everything it made is removed
again -- also on Ctrl-C.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from ..errors import StcpConfigError

DEMO_DEV = "stcpdemo0"
KERNEL_ADDR = "198.18.0.1"
STACK_ADDR = "198.18.0.2"
PORT = 7
PATTERN_SIZE = (1 << 20) - 3  # prime-ish period: a shifted replay cannot look right
STARTUP_TIMEOUT = 30.0  # seconds for a server process to print its "serving" line
TRANSFER_TIMEOUT = 900.0  # seconds for the whole transfer: a bound, not an expectation
SOCKET_TIMEOUT = 60.0  # a single recv/send may stall this long before the demo gives up


def add_demo_parser(sub: Any) -> None:
    p = sub.add_parser(
        "demo",
        help="kill -9 an stcp echo server 3 times under a live TCP stream; verify every byte",
        description=(
            "Create a private network namespace with a TUN device and a private store, run "
            "`stcp run echo` on the user-space stack, stream data through it from a kernel "
            "TCP socket while killing the server with SIGKILL and restarting it, verify "
            "every byte, print a timeline and clean up. Needs root and /dev/net/tun."
        ),
    )
    p.add_argument(
        "--size", type=int, default=256, metavar="MB", help="megabytes to echo (default: 256)"
    )
    p.add_argument(
        "--kills", type=int, default=3, help="how many times to kill the server (default: 3)"
    )
    p.add_argument("--seed", type=int, help="random seed for the kill points")
    p.add_argument("--mtu", type=int, default=65000, help="TUN device MTU (default: 65000)")
    p.add_argument("--inside", action="store_true", help=argparse.SUPPRESS)
    p.set_defaults(func=demo_command)


def _require_privileges() -> None:
    if not os.path.exists("/dev/net/tun"):
        raise StcpConfigError("stcp demo needs /dev/net/tun (load the tun module: modprobe tun)")
    if os.geteuid() != 0:
        raise StcpConfigError(
            "stcp demo needs root (it creates a network namespace and a TUN device): "
            "run it with sudo"
        )


def demo_command(args: argparse.Namespace) -> int:
    _require_privileges()
    if args.size < 1:
        raise StcpConfigError("--size must be at least 1 (MB)")
    if not 0 <= args.kills <= 20:
        raise StcpConfigError("--kills must be between 0 and 20")
    from .net import validate_mtu  # (lazy, as _run_inside's net_up)

    validate_mtu(args.mtu, ipv6=False)  # (before the timeline starts)
    if not args.inside:
        unshare = shutil.which("unshare")
        if unshare is None:
            raise StcpConfigError("stcp demo needs `unshare` (Debian package util-linux)")
        cmd = [unshare, "--net", "--", sys.executable, "-m", "stcp_framework.cli.main", "demo",
               "--inside", "--size", str(args.size), "--kills", str(args.kills),
               "--mtu", str(args.mtu)]  # fmt: skip
        if args.seed is not None:
            cmd += ["--seed", str(args.seed)]
        proc = subprocess.Popen(cmd)
        try:
            return proc.wait()
        except KeyboardInterrupt:
            proc.send_signal(signal.SIGINT)
            return proc.wait()
    seed = args.seed if args.seed is not None else random.randrange(1 << 30)
    return _run_inside(args.size << 20, args.kills, seed, args.mtu)


class Timeline:
    """Prints what happens, stamped with seconds since the start."""

    def __init__(self) -> None:
        self.start = time.monotonic()
        self.lock = threading.Lock()
        self.tty = sys.stdout.isatty()
        self._clear = "\r\033[K" if self.tty else ""
        self._last_tenth = -1

    def stamp(self) -> str:
        return f"[{time.monotonic() - self.start:7.2f}s]"

    def say(self, text: str) -> None:
        with self.lock:
            sys.stdout.write(f"{self._clear}{self.stamp()} {text}\n")
            sys.stdout.flush()

    def progress(self, done: int, total: int, rate: float) -> None:
        """A progress bar redrawn in place on a terminal; a line per 10 % otherwise."""
        tenth = 10 * done // total
        if not self.tty and tenth == self._last_tenth:
            return
        self._last_tenth = tenth
        width = 30
        filled = width * done // total
        bar = f"[{'#' * filled}{'.' * (width - filled)}]"
        end = "" if self.tty else "\n"
        with self.lock:
            sys.stdout.write(
                f"{self._clear}{self.stamp()} {bar} {done >> 20}/{total >> 20} MB verified, "
                f"{rate:.0f} MB/s{end}"
            )
            sys.stdout.flush()


class Server:
    """``stcp run echo`` as a child process, killed with SIGKILL and restarted."""

    def __init__(self, store_url: str, timeline: Timeline) -> None:
        self.store_url = store_url
        self.timeline = timeline
        self.proc: subprocess.Popen[str] | None = None
        # The servers' stderr, kept for the error message of a failed start; it lives as
        # long as the demo.
        self.log = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115

    def start(self) -> float:
        """Start it; returns seconds from exec to its "serving" line."""
        started = time.monotonic()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "stcp_framework.cli.main", "run", "echo", "--dev", DEMO_DEV,
             "--listen", f"{STACK_ADDR}:{PORT}", "--store", self.store_url,
             "--instance", "demo"],
            stdout=subprocess.PIPE, stderr=self.log, text=True,
        )  # fmt: skip
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if "serving" not in line:
            self.log.seek(0)
            tail = self.log.read().strip().splitlines()[-1:] or ["(no output)"]
            raise StcpConfigError(f"the echo server did not start: {tail[0]}")
        elapsed = time.monotonic() - started
        restored = line.split("(", 1)[-1].rstrip(")\n")
        self.timeline.say(f"server pid {self.proc.pid} serving after {elapsed:.2f} s ({restored})")
        return elapsed

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()  # SIGKILL: no cleanup, no FIN, no RST
            self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def _run_inside(total: int, kills: int, seed: int, mtu: int) -> int:
    from ..store import embedded
    from .net import net_down, net_up
    from .netns import check_private_namespace, run_ip

    check_private_namespace("demo")
    run_ip("link", "set", "lo", "up")
    timeline = Timeline()
    timeline.say(
        f"private network namespace; TUN {DEMO_DEV}: kernel {KERNEL_ADDR} <-> stcp "
        f"{STACK_ADDR}, MTU {mtu}"
    )
    net_up(DEMO_DEV, f"{KERNEL_ADDR}/24", mtu=mtu)
    store_dir = tempfile.mkdtemp(prefix="stcp-demo-store-")
    server: Server | None = None
    try:
        store_url = embedded.start(store_dir)
        timeline.say(f"embedded store (Redis, AOF on) at {store_url}")
        server = Server(store_url, timeline)
        start_times = [server.start()]
        ok = _echo_session(total, kills, seed, server, timeline, start_times)
        return 0 if ok else 1
    finally:
        if server is not None:
            server.stop()
        try:
            embedded.stop(store_dir)
        finally:
            shutil.rmtree(store_dir, ignore_errors=True)
            net_down(DEMO_DEV)
        timeline.say("cleaned up: server and store stopped, TUN device removed")


@dataclass
class _Progress:
    received: int = 0
    last_at: float = field(default_factory=time.monotonic)
    stalls: list[float] = field(default_factory=list)


def _echo_session(
    total: int,
    kills: int,
    seed: int,
    server: Server,
    timeline: Timeline,
    start_times: list[float],
) -> bool:
    pattern = hashlib.shake_256(b"stcp demo").digest(PATTERN_SIZE)
    rng = random.Random(seed)
    # One kill at a random point of each of `kills` equal slices of 10 %..90 % of the
    # stream, so kills never bunch up.
    kill_points = [
        int(total * (0.1 + 0.8 * (i + rng.uniform(0.1, 0.9)) / kills)) for i in range(kills)
    ]
    sock = socket.create_connection((STACK_ADDR, PORT), timeout=SOCKET_TIMEOUT)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    local = sock.getsockname()
    timeline.say(
        f"kernel client {local[0]}:{local[1]} connected; echoing {total >> 20} MB, "
        f"{kills} kills (seed {seed})"
    )
    errors: list[BaseException] = []

    def sender() -> None:
        try:
            view = memoryview(pattern)
            sent = 0
            while sent < total:
                start = sent % PATTERN_SIZE
                n = min(PATTERN_SIZE - start, total - sent, 1 << 18)
                sock.sendall(view[start : start + n])
                sent += n
            sock.shutdown(socket.SHUT_WR)
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    progress = _Progress()
    mismatch_at: int | None = None
    started = time.monotonic()
    threading.Thread(target=sender, daemon=True).start()
    buf = bytearray(1 << 20)
    longest_gap = 0.0
    kill_at: float | None = None
    try:
        last_report = 0.0
        while progress.received < total:
            if kill_points and progress.received >= kill_points[0]:
                kill_points.pop(0)
                server.kill()
                kill_at = time.monotonic()
                timeline.say(
                    f"kill -9 server at {progress.received >> 20} MB; restarting it at once"
                )
                start_times.append(server.start())
            if time.monotonic() - started > TRANSFER_TIMEOUT:
                timeline.say("gave up: the transfer took too long")
                return False
            n = sock.recv_into(buf)
            now = time.monotonic()
            if n == 0:
                break
            gap = now - progress.last_at
            longest_gap = max(longest_gap, gap)
            if kill_at is not None:
                progress.stalls.append(now - kill_at)
                timeline.say(f"client resumed: {now - kill_at:.2f} s after the kill, no error")
                kill_at = None
            progress.last_at = now
            start = progress.received % PATTERN_SIZE
            first = min(n, PATTERN_SIZE - start)
            chunk = memoryview(buf)[:n]
            if chunk[:first] != pattern[start : start + first] or (
                n > first and chunk[first:] != pattern[: n - first]
            ):
                mismatch_at = progress.received
                break
            progress.received += n
            if now - last_report >= 0.25:
                timeline.progress(
                    progress.received, total, progress.received / (now - started) / 1e6
                )
                last_report = now
        tail = sock.recv(1) if mismatch_at is None and progress.received == total else b""
    except OSError as exc:
        errors.append(exc)
        tail = b""
    finally:
        sock.close()
    elapsed = time.monotonic() - started
    timeline.progress(progress.received, total, progress.received / max(elapsed, 1e-9) / 1e6)
    if timeline.tty:
        sys.stdout.write("\n")
    timeline.say(
        f"server start times: {', '.join(f'{t:.2f} s' for t in start_times)}; client stalls "
        f"after kills: {', '.join(f'{t:.2f} s' for t in progress.stalls) or 'none'}; longest "
        f"gap between reads {longest_gap:.2f} s"
    )
    if errors:
        timeline.say(f"FAILED: the client's socket failed: {errors[0]!r}")
        return False
    if mismatch_at is not None:
        timeline.say(f"FAILED: wrong byte near offset {mismatch_at}")
        return False
    if progress.received != total or tail:
        timeline.say(f"FAILED: received {progress.received} of {total} bytes")
        return False
    timeline.say(
        f"OK: {total >> 20} MB echoed byte-exact through {len(progress.stalls)} kill -9s in "
        f"{elapsed:.1f} s; the client saw no error, no reset, no lost or repeated byte"
    )
    return True
