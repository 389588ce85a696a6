"""A kernel-socket TCP client for the netns tests, run in its own process.

Bulk tests run this as a script (``python kernel_peer.py MODE ...``) so the client's
socket calls do not compete with the stack for the GIL of the pytest process. It
connects with an ordinary Python socket (the Linux kernel's TCP), does one transfer
and prints one JSON object on stdout; the test decides what is right.

Modes:
    ``send``: send ``--size`` bytes of ``pattern_bytes`` (half-close when done), wait
        for the server's FIN; reports the SHA-256 and CRC-32 of what was sent.
    ``chargen``: read ``--size`` bytes and compare each with the RFC 864 pattern at its
        stream offset (``chargen_bytes``); reports the first differing offset.
    ``echo``: one thread sends ``--size`` pattern bytes then half-closes, the main thread
        reads until EOF and compares every byte with the pattern at its offset.
    ``idle``: open ``--connections`` connections and echo ``--size`` bytes on each, write
        ``ready`` on stderr, wait for a line on stdin (the test restarts the server
        meanwhile), then echo ``--size`` new bytes on each, half-close and expect a clean
        EOF; reports which connections failed and how.

``--progress BYTES`` writes ``progress <offset> <time.monotonic()>`` on stderr each time
another ``BYTES`` have been received (chargen, echo) or sent (send), so a test can act at
a given point of a transfer. Every mode that moves bulk data also reports ``stalls``: the
``[start, end]`` monotonic times of each pause of at least ``STALL_MIN`` seconds between
two received chunks (or two sent chunks in ``send`` mode), and ``local``, the client's
own ``[host, port]``.

The pattern is a seeded pseudo-random block whose length is a prime, repeated: a byte
delivered at the wrong offset (lost, duplicated, reordered segment) is almost surely a
mismatch, unlike with a block length that divides the segment size.

The tests import the same module for the in-process side: ``run_kernel_peer`` (start
this script and parse its JSON), ``kernel_tcp_state`` (the kernel's view of one
connection, from ``ss -tan``), ``wait_for`` (bounded polling of the real kernel) and
``stack_on`` (a stack on a fixture's TUN device, recorded by ``PcapDevice``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import resource
import socket
import sys
import threading
import time
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import trio

from stcp_framework.services import CHARGEN_CYCLE

PATTERN_LEN = 1_048_573  # the largest prime below 2**20
CHUNK = 256 * 1024
IO_TIMEOUT = 20.0  # seconds a single socket call may block
STALL_MIN = 0.02  # seconds: shorter pauses between chunks are not reported as stalls
MAX_STALLS = 10_000  # bound the report


class _Digests:
    """SHA-256 and CRC-32 (what ``stcp run discard`` reports) of a byte stream."""

    def __init__(self) -> None:
        self.sha256 = hashlib.sha256()
        self.crc32 = 0

    def update(self, data: bytes | memoryview) -> None:
        self.sha256.update(data)
        self.crc32 = zlib.crc32(data, self.crc32)


class _Watch:
    """Progress lines and stall records of one transfer direction."""

    def __init__(self, progress_every: int = 0) -> None:
        self.progress_every = progress_every
        self.next_report = progress_every
        self.last_at = time.monotonic()
        self.stalls: list[list[float]] = []

    def advanced(self, offset: int) -> None:
        now = time.monotonic()
        if now - self.last_at >= STALL_MIN and len(self.stalls) < MAX_STALLS:
            self.stalls.append([self.last_at, now])
        self.last_at = now
        if self.progress_every and offset >= self.next_report:
            sys.stderr.write(f"progress {offset} {now:.6f}\n")
            sys.stderr.flush()
            while self.next_report <= offset:
                self.next_report += self.progress_every


def pattern(seed: int) -> bytes:
    """The ``PATTERN_LEN``-byte block of seed ``seed``."""
    return random.Random(seed).randbytes(PATTERN_LEN)


def pattern_bytes(seed: int, offset: int, length: int) -> bytes:
    """Bytes ``[offset, offset + length)`` of the endless pattern stream of ``seed``."""
    block = pattern(seed)
    out = bytearray()
    while len(out) < length:
        start = (offset + len(out)) % PATTERN_LEN
        out += block[start : start + length - len(out)]
    return bytes(out)


class _Cycle:
    """Compares received bytes with an endless repetition of ``block``, by offset."""

    def __init__(self, block: bytes) -> None:
        self.period = len(block)
        # Two periods plus a chunk: any window of CHUNK bytes is one slice.
        reps = (2 * self.period + CHUNK) // self.period + 1
        self.view = memoryview(block * reps)

    def slice(self, offset: int, length: int) -> memoryview:
        start = offset % self.period
        return self.view[start : start + length]

    def first_mismatch(self, offset: int, data: memoryview) -> int | None:
        """The stream offset of the first byte of ``data`` that differs, or None."""
        expected = self.slice(offset, len(data))
        if expected == data:
            return None
        for i in range(len(data)):
            if expected[i] != data[i]:
                return offset + i
        raise AssertionError("unreachable: slices differ but no byte does")


def _connect(host: str, port: int) -> socket.socket:
    sock = socket.create_connection((host, port), timeout=IO_TIMEOUT)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def _send_stream(
    sock: socket.socket,
    cycle: _Cycle,
    size: int,
    digest: Any = None,
    watch: _Watch | None = None,
) -> None:
    offset = 0
    while offset < size:
        chunk = cycle.slice(offset, min(CHUNK, size - offset))
        if digest is not None:
            digest.update(chunk)
        sock.sendall(chunk)
        offset += len(chunk)
        if watch is not None:
            watch.advanced(offset)
    sock.shutdown(socket.SHUT_WR)


def _receive_checked(
    sock: socket.socket, cycle: _Cycle, limit: int | None, watch: _Watch | None = None
) -> tuple[int, int | None, str | None]:
    """Read until EOF (or ``limit`` bytes).

    Returns:
        (bytes read, first mismatching offset or None, the socket error that ended the
        reading early or None): a stalled transfer reports how far it got.
    """
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    received = 0
    mismatch: int | None = None
    while limit is None or received < limit:
        want = CHUNK if limit is None else min(CHUNK, limit - received)
        try:
            n = sock.recv_into(view[:want])
        except OSError as exc:
            return received, mismatch, repr(exc)
        if n == 0:
            break
        if mismatch is None:
            mismatch = cycle.first_mismatch(received, view[:n])
        received += n
        if watch is not None:
            watch.advanced(received)
    return received, mismatch, None


def run_send(host: str, port: int, size: int, seed: int, progress: int = 0) -> dict[str, Any]:
    cycle = _Cycle(pattern(seed))
    digest = _Digests()
    watch = _Watch(progress)
    with _connect(host, port) as sock:
        local = sock.getsockname()[:2]
        started = time.perf_counter()
        watch.last_at = time.monotonic()
        _send_stream(sock, cycle, size, digest, watch)
        tail = sock.recv(1)  # the server's FIN after it read everything
        seconds = time.perf_counter() - started
    return {
        "sent": size,
        "sha256": digest.sha256.hexdigest(),
        "crc32": f"{digest.crc32:08x}",
        "seconds": seconds,
        "tail": tail.hex(),
        "stalls": watch.stalls,
        "local": local,
    }


def run_chargen(host: str, port: int, size: int, progress: int = 0) -> dict[str, Any]:
    cycle = _Cycle(CHARGEN_CYCLE)
    watch = _Watch(progress)
    with _connect(host, port) as sock:
        local = sock.getsockname()[:2]
        started = time.perf_counter()
        received, mismatch, error = _receive_checked(sock, cycle, size, watch)
        seconds = time.perf_counter() - started
    return {
        "received": received,
        "mismatch_at": mismatch,
        "seconds": seconds,
        "error": error,
        "stalls": watch.stalls,
        "local": local,
    }


def run_echo(host: str, port: int, size: int, seed: int, progress: int = 0) -> dict[str, Any]:
    cycle = _Cycle(pattern(seed))
    errors: list[str] = []
    watch = _Watch(progress)

    def sender() -> None:
        try:
            _send_stream(sock, cycle, size)
        except OSError as exc:
            errors.append(repr(exc))

    with _connect(host, port) as sock:
        local = sock.getsockname()[:2]
        started = time.perf_counter()
        thread = threading.Thread(target=sender, daemon=True)
        thread.start()
        received, mismatch, error = _receive_checked(sock, cycle, None, watch)
        seconds = time.perf_counter() - started
        thread.join(IO_TIMEOUT)
    return {
        "sent": size,
        "received": received,
        "mismatch_at": mismatch,
        "seconds": seconds,
        "error": error,
        "sender_errors": errors,
        "stalls": watch.stalls,
        "local": local,
    }


def _raise_fd_limit(wanted: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY:
        wanted = min(wanted, hard)
    if wanted > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


def idle_payload(seed: int, index: int, round_number: int, size: int) -> bytes:
    """The ``size`` bytes connection ``index`` sends in round ``round_number``."""
    return random.Random(f"{seed}/{index}/{round_number}").randbytes(size)


def _echo_round(
    socks: list[socket.socket], seed: int, size: int, round_number: int
) -> dict[int, str]:
    """Send ``size`` bytes on every socket, then read the echo of each back; returns what
    went wrong, by connection index."""
    failed: dict[int, str] = {}
    for index, sock in enumerate(socks):
        try:
            sock.sendall(idle_payload(seed, index, round_number, size))
        except OSError as exc:
            failed[index] = f"send: {exc!r}"
    for index, sock in enumerate(socks):
        if index in failed:
            continue
        expected = idle_payload(seed, index, round_number, size)
        got = bytearray()
        try:
            while len(got) < size:
                chunk = sock.recv(size - len(got))
                if not chunk:
                    break
                got += chunk
        except OSError as exc:
            failed[index] = f"recv after {len(got)} bytes: {exc!r}"
            continue
        if got != expected:
            failed[index] = f"echo of {len(got)} bytes differs from the {size} sent"
    return failed


def run_idle(host: str, port: int, size: int, seed: int, connections: int) -> dict[str, Any]:
    _raise_fd_limit(2 * connections + 64)
    socks: list[socket.socket] = []
    try:
        for _ in range(connections):
            socks.append(_connect(host, port))
        first = _echo_round(socks, seed, size, 0)
        sys.stderr.write("ready\n")
        sys.stderr.flush()
        sys.stdin.readline()  # the test restarts the server, then says go
        started = time.perf_counter()
        second = _echo_round(socks, seed, size, 1)
        seconds = time.perf_counter() - started
        closing: dict[int, str] = {}
        for index, sock in enumerate(socks):
            if index in first or index in second:
                continue
            try:
                sock.shutdown(socket.SHUT_WR)
                tail = sock.recv(1)
            except OSError as exc:
                closing[index] = repr(exc)
                continue
            if tail:
                closing[index] = f"unexpected byte {tail!r} instead of EOF"
    finally:
        for sock in socks:
            sock.close()
    return {
        "connections": connections,
        "first_round_failed": {str(k): v for k, v in first.items()},
        "second_round_failed": {str(k): v for k, v in second.items()},
        "close_failed": {str(k): v for k, v in closing.items()},
        "second_round_seconds": seconds,
    }


# ------------------------------------------------------------------ in the test process


async def run_kernel_peer(
    mode: str, host: str, port: int, size: int, *, seed: int = 1
) -> dict[str, Any]:
    """Run this file as a client process and return its JSON result.

    Raises:
        AssertionError: the client exited non-zero (its stderr is in the message).
    """
    done = await trio.run_process(
        [sys.executable, __file__, mode, "--host", host, "--port", str(port),
         "--size", str(size), "--seed", str(seed)],
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )  # fmt: skip
    stderr = done.stderr.decode(errors="replace").strip()
    assert done.returncode == 0, f"kernel peer {mode} failed ({done.returncode}): {stderr}"
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def _split_endpoint(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host.strip("[]"), int(port)


def _same_endpoint(a: tuple[str, int], b: tuple[str, int]) -> bool:
    return a[1] == b[1] and socket.inet_pton(_family(a[0]), a[0]) == socket.inet_pton(
        _family(b[0]), b[0]
    )


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


async def kernel_tcp_state(local: tuple[str, int], peer: tuple[str, int]) -> str | None:
    """The kernel's state of the TCP socket ``local`` -> ``peer`` (``ss -tan`` spelling:
    ``ESTAB``, ``FIN-WAIT-2``, ``TIME-WAIT``, ``CLOSE-WAIT``, ...), or None if it has none.
    """
    done = await trio.run_process(["ss", "-tanH"], capture_stdout=True)
    for line in done.stdout.decode().splitlines():
        fields = line.split()
        if len(fields) < 5:
            continue
        state, local_text, peer_text = fields[0], fields[3], fields[4]
        if "*" in peer_text:
            continue  # a listener
        if _same_endpoint(_split_endpoint(local_text), local) and _same_endpoint(
            _split_endpoint(peer_text), peer
        ):
            return state
    return None


POLL_DELAY = 0.005  # seconds between looks at the real kernel


async def wait_for(predicate: Callable[[], object], what: str, within: float = 5.0) -> None:
    """Poll ``predicate`` (a real kernel or stack condition) until true, at most ``within`` s.

    Polling, not an event: the condition is the real kernel's (or the stack's, driven by
    the kernel's packets), and nothing signals it.
    """
    with trio.move_on_after(within):
        while not predicate():  # noqa: ASYNC110 -- nothing to wait on but the kernel
            await trio.sleep(POLL_DELAY)
        return
    raise AssertionError(f"timed out after {within} s waiting for {what}")


async def wait_for_kernel_state(
    local: tuple[str, int], peer: tuple[str, int], expected: str | None, within: float = 5.0
) -> None:
    """Poll ``ss`` until the kernel socket ``local`` -> ``peer`` is in ``expected``."""
    seen: list[str | None] = []
    with trio.move_on_after(within):
        while True:
            state = await kernel_tcp_state(local, peer)
            if not seen or seen[-1] != state:
                seen.append(state)
            if state == expected:
                return
            await trio.sleep(POLL_DELAY)
    raise AssertionError(f"kernel socket {local} -> {peer}: wanted {expected}, saw {seen}")


def hashing_discard(
    received: list[tuple[int, str]], counters: dict[str, int] | None = None
) -> Callable[[Any], Awaitable[None]]:
    """An RFC 863 discard handler that also counts and hashes what it threw away: it
    appends ``(bytes, sha256 hex)`` to ``received`` at EOF, and copies the connection's
    counters into ``counters`` if given."""

    async def handler(stream: Any) -> None:
        digest = hashlib.sha256()
        total = 0
        while data := await stream.receive_some():
            digest.update(data)
            total += len(data)
        received.append((total, digest.hexdigest()))
        if counters is not None:
            counters.update(stream._flow.conn.counters)

    return handler


@asynccontextmanager
async def stack_on(
    tun: Any,
    pcap_path: Path,
    *,
    snaplen: int | None = None,
    tun_options: dict[str, Any] | None = None,
    wrap: Callable[[Any], Any] | None = None,
    **options: Any,
) -> AsyncIterator[Any]:
    """``open_stack`` on the fixture's TUN device (IPv4 and, if it has one, IPv6),
    recorded in ``pcap_path``; the device is detached afterwards.

    ``tun_options`` go to ``TunDevice.open`` (e.g. ``offload=False``), ``options`` to
    ``open_stack``; ``wrap`` puts a device between the stack and the recorded device
    (the capture shows what crossed the wire).
    """
    from stcp_framework import open_stack
    from stcp_framework.link.pcap import PcapDevice
    from stcp_framework.link.tun import TunDevice

    tun_device = await TunDevice.open(tun.dev, **(tun_options or {}))
    device = (
        PcapDevice(tun_device, pcap_path)
        if snaplen is None
        else PcapDevice(tun_device, pcap_path, snaplen=snaplen)
    )
    addresses = [tun.stack_addr] + ([tun.stack_addr6] if tun.mtu >= 1280 else [])
    outer = device if wrap is None else wrap(device)
    try:
        async with open_stack(outer, addresses, **options) as stack:
            yield stack
    finally:
        await device.aclose()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=["send", "chargen", "echo", "idle"])
    parser.add_argument("--host", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--size", type=int, required=True, help="bytes to transfer")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--progress",
        type=int,
        default=0,
        metavar="BYTES",
        help="report progress on stderr every BYTES bytes (0: never)",
    )
    parser.add_argument("--connections", type=int, default=1, help="idle mode: how many")
    args = parser.parse_args(argv)
    if args.mode == "send":
        result = run_send(args.host, args.port, args.size, args.seed, args.progress)
    elif args.mode == "chargen":
        result = run_chargen(args.host, args.port, args.size, args.progress)
    elif args.mode == "idle":
        result = run_idle(args.host, args.port, args.size, args.seed, args.connections)
    else:
        result = run_echo(args.host, args.port, args.size, args.seed, args.progress)
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
