"""``stcp demo``: an echo session through the user-space stack, in a private namespace.

It makes its own network namespace (re-running itself under ``unshare --net`` when the
current one looks like the host's), creates a TUN device there, starts
``stcp run echo`` as a separate process and pipes data through it from an ordinary
kernel-socket client, verifying every byte, then removes everything it made -- also on
Ctrl-C. (Issue 3 turns this into the kill -9 demo.)
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import Any

from ..errors import StcpConfigError

DEMO_DEV = "stcpdemo0"
KERNEL_ADDR = "198.18.0.1"
STACK_ADDR = "198.18.0.2"
PORT = 7
PATTERN_SIZE = 1 << 20
STARTUP_TIMEOUT = 20.0  # seconds for the server process to come up
TRANSFER_TIMEOUT = 600.0  # seconds for the whole transfer, a bound, not an expectation


def add_demo_parser(sub: Any) -> None:
    p = sub.add_parser(
        "demo",
        help="echo data through the stack in a private network namespace and verify it",
        description=(
            "Create a private network namespace with a TUN device, run `stcp run echo` "
            "on the user-space stack, stream data through it from a kernel TCP socket, "
            "verify every byte and clean up. Needs root and /dev/net/tun."
        ),
    )
    p.add_argument(
        "--size", type=int, default=256, metavar="MB", help="megabytes to echo (default: 256)"
    )
    p.add_argument("--mtu", type=int, default=65000, help="TUN device MTU (default: 65000)")
    p.add_argument("--inside", action="store_true", help=argparse.SUPPRESS)
    p.set_defaults(func=demo_command)


def _require_privileges() -> None:
    if not os.path.exists("/dev/net/tun"):
        raise StcpConfigError("stcp demo needs /dev/net/tun (load the tun module: modprobe tun)")
    if os.geteuid() != 0:
        raise StcpConfigError(
            "stcp demo needs root (it creates a network namespace and a TUN "
            "device): run it with sudo"
        )


def demo_command(args: argparse.Namespace) -> int:
    _require_privileges()
    if args.size < 1:
        raise StcpConfigError("--size must be at least 1 (MB)")
    if not args.inside:
        unshare = shutil.which("unshare")
        if unshare is None:
            raise StcpConfigError("stcp demo needs `unshare` (Debian package util-linux)")
        cmd = [
            unshare,
            "--net",
            "--",
            sys.executable,
            "-m",
            "stcp_framework.cli.main",
            "demo",
            "--inside",
            "--size",
            str(args.size),
            "--mtu",
            str(args.mtu),
        ]
        proc = subprocess.Popen(cmd)
        try:
            return proc.wait()
        except KeyboardInterrupt:
            proc.send_signal(signal.SIGINT)
            return proc.wait()
    return _run_inside(args.size << 20, args.mtu)


def _run_inside(total: int, mtu: int) -> int:
    from .net import net_down, net_up
    from .netns import check_private_namespace, run_ip

    check_private_namespace("demo")
    run_ip("link", "set", "lo", "up")
    print(
        f"stcp demo: private network namespace; TUN {DEMO_DEV} {KERNEL_ADDR}/24 "
        f"(kernel) <-> {STACK_ADDR} (stcp), MTU {mtu}"
    )
    net_up(DEMO_DEV, f"{KERNEL_ADDR}/24", mtu=mtu)
    server: subprocess.Popen[str] | None = None
    try:
        server = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "stcp_framework.cli.main",
                "run",
                "echo",
                "--dev",
                DEMO_DEV,
                "--listen",
                f"{STACK_ADDR}:{PORT}",
                "--store",
                "memory",
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        started = time.monotonic()
        assert server.stdout is not None
        line = server.stdout.readline()
        if "serving" not in line:
            raise StcpConfigError(f"the echo server did not start (exit code {server.poll()})")
        print(
            f"stcp demo: server pid {server.pid} up in {time.monotonic() - started:.2f} s: "
            f"{line.strip()}"
        )
        ok = _echo_session(total)
        return 0 if ok else 1
    finally:
        if server is not None and server.poll() is None:
            server.send_signal(signal.SIGTERM)
            try:
                server.wait(timeout=10)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
        net_down(DEMO_DEV)
        print("stcp demo: cleaned up (server stopped, TUN device removed)")


def _echo_session(total: int) -> bool:
    pattern = hashlib.shake_256(b"stcp demo").digest(PATTERN_SIZE)
    sock = socket.create_connection((STACK_ADDR, PORT), timeout=30)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    print(
        f"stcp demo: connected {sock.getsockname()[0]}:{sock.getsockname()[1]} -> "
        f"{STACK_ADDR}:{PORT}; echoing {total >> 20} MB"
    )
    send_error: list[BaseException] = []

    def sender() -> None:
        try:
            sent = 0
            view = memoryview(pattern)
            while sent < total:
                n = min(PATTERN_SIZE - sent % PATTERN_SIZE, total - sent)
                start = sent % PATTERN_SIZE
                sock.sendall(view[start : start + n])
                sent += n
            sock.shutdown(socket.SHUT_WR)
        except BaseException as exc:  # reported by the main thread
            send_error.append(exc)

    thread = threading.Thread(target=sender, daemon=True)
    started = time.monotonic()
    thread.start()
    received = 0
    mismatch_at: int | None = None
    last_report = started
    buf = bytearray(1 << 20)
    try:
        while received < total:
            if time.monotonic() - started > TRANSFER_TIMEOUT:
                print("stcp demo: gave up: transfer timed out")
                return False
            n = sock.recv_into(buf)
            if n == 0:
                break
            start = received % PATTERN_SIZE
            chunk = memoryview(buf)[:n]
            first = min(n, PATTERN_SIZE - start)
            if chunk[:first] != pattern[start : start + first] or (
                n > first and chunk[first:] != pattern[: n - first]
            ):
                mismatch_at = received
                break
            received += n
            now = time.monotonic()
            if now - last_report >= 0.5 or received == total:
                _progress(received, total, now - started)
                last_report = now
        tail = sock.recv(1) if mismatch_at is None and received == total else b""
    finally:
        sock.close()
    thread.join(timeout=10)
    elapsed = time.monotonic() - started
    print()
    if send_error:
        print(f"stcp demo: FAILED: the client's send failed: {send_error[0]!r}")
        return False
    if mismatch_at is not None:
        print(f"stcp demo: FAILED: wrong byte near offset {mismatch_at}")
        return False
    if received != total or tail:
        print(f"stcp demo: FAILED: received {received} of {total} bytes")
        return False
    print(
        f"stcp demo: OK: {total >> 20} MB echoed byte-exact in {elapsed:.2f} s "
        f"({2 * total / elapsed / 1e6:.0f} MB/s through the stack, both directions)"
    )
    return True


def _progress(done: int, total: int, elapsed: float) -> None:
    width = 40
    filled = width * done // total
    rate = done / elapsed / 1e6 if elapsed > 0 else 0.0
    sys.stdout.write(
        f"\r[{'#' * filled}{'.' * (width - filled)}] {done >> 20}/{total >> 20} MB  {rate:.0f} MB/s"
    )
    sys.stdout.flush()
