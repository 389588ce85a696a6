"""One benchmark client process: prints one JSON object with its measurement on stdout.

Run by ``bench/run.py`` (``python -m bench.client MODE ...`` from the repository root).
It uses plain blocking kernel sockets (no event loop), so the client's own overhead is
the same for every server under test. Every mode stops at ``--deadline`` seconds and then
reports what it did so far with ``"timed_out": true``: a slow server yields a low figure,
never a hung benchmark.

Modes:
    upload    send ``--size`` bytes to discard (RFC 863), half-close, wait for the
              server's FIN (so every byte was consumed).
    download  read ``--size`` bytes from chargen (RFC 864), check the pattern, close.
    echo      send ``--size`` bytes to echo (RFC 862) from a thread while reading them
              back; check the count and the first bytes.
    conns     ``--count`` connections, ``--concurrency`` at a time: connect, send 100
              bytes to echo, read them back, close.
    scale     hold ``--levels`` (e.g. 100,1000) concurrent echo connections; at each
              level read the server's VmRSS and time rounds of one 100-byte echo on
              every connection.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import selectors
import socket
import statistics
import struct
import sys
import threading
import time
from typing import Any

from stcp_framework.services import chargen_bytes

CHUNK_SIZE = 1 << 20
CONNECT_TIMEOUT = 5.0  # seconds, per connect and per blocking call
MESSAGE = bytes(range(100))  # the 100-byte request of the conns and scale modes
_WANTED_NOFILE = 65536
_TIMEVAL = struct.pack("ll", int(CONNECT_TIMEOUT), 0)  # struct timeval for SO_*TIMEO

Result = dict[str, Any]


def _raise_nofile_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = _WANTED_NOFILE if hard == resource.RLIM_INFINITY else min(hard, _WANTED_NOFILE)
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


_congestion: bytes | None = None  # --cc: every socket's TCP_CONGESTION (None: the default)


def _new_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if _congestion is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_CONGESTION, _congestion)
    return sock


def _connect(host: str, port: int) -> socket.socket:
    sock = _new_socket()
    try:
        sock.settimeout(CONNECT_TIMEOUT)
        sock.connect((host, port))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except BaseException:
        sock.close()
        raise
    return sock


def _recv_exactly(sock: socket.socket, size: int) -> bytes:
    parts: list[bytes] = []
    left = size
    while left:
        data = sock.recv(left)
        if not data:
            raise ConnectionError(f"EOF after {size - left} of {size} bytes")
        parts.append(data)
        left -= len(data)
    return b"".join(parts)


def _rate(done_bytes: int, seconds: float, timed_out: bool) -> Result:
    return {
        "bytes": done_bytes,
        "seconds": seconds,
        "mb_s": done_bytes / seconds / 1e6 if seconds > 0 else 0.0,
        "timed_out": timed_out,
    }


def bulk_upload(host: str, port: int, size: int, deadline_s: float) -> Result:
    """Send ``size`` bytes to discard; the clock stops at the server's FIN."""
    sock = _connect(host, port)
    block = memoryview(os.urandom(CHUNK_SIZE))
    start = time.perf_counter()
    stop_at = start + deadline_s
    sent = 0
    timed_out = False
    try:
        while sent < size:
            if time.perf_counter() > stop_at:
                timed_out = True
                break
            n = min(CHUNK_SIZE, size - sent)
            try:
                sock.sendall(block[:n])
            except TimeoutError:  # a stall of CONNECT_TIMEOUT: report what got through
                timed_out = True
                break
            sent += n
        if not timed_out:
            sock.shutdown(socket.SHUT_WR)
            sock.settimeout(max(0.1, stop_at - time.perf_counter()))
            try:
                if sock.recv(1) != b"":
                    raise ConnectionError("discard server sent data")
            except TimeoutError:
                timed_out = True
    finally:
        sock.close()
    return _rate(sent, time.perf_counter() - start, timed_out)


def bulk_download(host: str, port: int, size: int, deadline_s: float) -> Result:
    """Read ``size`` bytes from chargen and check the first block against RFC 864."""
    sock = _connect(host, port)
    buf = bytearray(CHUNK_SIZE)
    view = memoryview(buf)
    head = bytearray()
    start = time.perf_counter()
    stop_at = start + deadline_s
    got = 0
    timed_out = False
    try:
        while got < size:
            if time.perf_counter() > stop_at:
                timed_out = True
                break
            n = sock.recv_into(view, min(CHUNK_SIZE, size - got))
            if not n:
                raise ConnectionError(f"chargen closed after {got} bytes")
            if len(head) < CHUNK_SIZE:
                head += view[: min(n, CHUNK_SIZE - len(head))]
            got += n
    finally:
        seconds = time.perf_counter() - start
        sock.close()
    if bytes(head) != chargen_bytes(0, len(head)):
        raise ValueError("chargen data does not match the RFC 864 pattern")
    return _rate(got, seconds, timed_out)


def bulk_echo(host: str, port: int, size: int, deadline_s: float) -> Result:
    """Send ``size`` bytes to echo from a thread and read them back here."""
    sock = _connect(host, port)
    block = os.urandom(CHUNK_SIZE)
    start = time.perf_counter()
    stop_at = start + deadline_s
    sender_error: list[BaseException] = []
    sent = [0]

    def send() -> None:
        try:
            while sent[0] < size and time.perf_counter() < stop_at:
                n = min(CHUNK_SIZE, size - sent[0])
                sock.sendall(memoryview(block)[:n])
                sent[0] += n
            sock.shutdown(socket.SHUT_WR)
        except OSError as exc:
            sender_error.append(exc)

    thread = threading.Thread(target=send, daemon=True)
    thread.start()
    buf = bytearray(CHUNK_SIZE)
    view = memoryview(buf)
    head = bytearray()
    got = 0
    timed_out = False
    try:
        while True:
            if time.perf_counter() > stop_at:
                timed_out = True
                break
            try:
                n = sock.recv_into(view)
            except TimeoutError:
                continue  # bounded by stop_at
            if not n:
                break
            if len(head) < CHUNK_SIZE:
                head += view[: min(n, CHUNK_SIZE - len(head))]
            got += n
    finally:
        seconds = time.perf_counter() - start
        thread.join(timeout=CONNECT_TIMEOUT)
        sock.close()
    if sender_error and not timed_out:
        raise sender_error[0]
    if not timed_out and got != size:
        raise ValueError(f"echo returned {got} of {size} bytes")
    if bytes(head) != block[: len(head)]:
        raise ValueError("echo returned different bytes")
    return _rate(got, seconds, timed_out)


def _one_request(host: str, port: int) -> None:
    # Lean on purpose (this loop is what limits a Python client): a numeric address
    # (no getaddrinfo) and kernel timeouts instead of Python's poll-based ones.
    sock = _new_socket()
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, _TIMEVAL)  # bounds connect too
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, _TIMEVAL)
        sock.connect((host, port))
        sock.sendall(MESSAGE)
        if _recv_exactly(sock, len(MESSAGE)) != MESSAGE:
            raise ValueError("echo returned different bytes")
    finally:
        sock.close()


def connections(host: str, port: int, count: int, concurrency: int, deadline_s: float) -> Result:
    """``count`` echo request/response connections, ``concurrency`` at a time."""
    lock = threading.Lock()
    state = {"next": 0, "ok": 0, "failed": 0}
    errors: list[str] = []
    start = time.perf_counter()
    stop_at = start + deadline_s

    def worker() -> None:
        while time.perf_counter() < stop_at:
            with lock:
                if state["next"] >= count:
                    return
                state["next"] += 1
            try:
                _one_request(host, port)
            except (OSError, ValueError) as exc:
                with lock:
                    state["failed"] += 1
                    if len(errors) < 5:
                        errors.append(repr(exc))
            else:
                with lock:
                    state["ok"] += 1

    if concurrency == 1:
        worker()
    else:
        threads = [threading.Thread(target=worker, daemon=True) for _ in range(concurrency)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=max(0.0, stop_at - time.perf_counter()) + 2 * CONNECT_TIMEOUT)
    seconds = time.perf_counter() - start
    return {
        "connections": state["ok"],
        "failed": state["failed"],
        "concurrency": concurrency,
        "seconds": seconds,
        "per_s": state["ok"] / seconds if seconds > 0 else 0.0,
        "timed_out": state["ok"] + state["failed"] < count,
        "errors": errors,
    }


def read_vm_rss_kb(pid: int) -> int:
    """The resident set size in KiB (``VmRSS`` in /proc/PID/status) of process ``pid``
    and its descendants (a server's workers: before, only their supervisor was read)."""
    from bench.run import process_tree

    total = 0
    for process in process_tree(pid):
        with open(f"/proc/{process}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
                    break
            else:
                raise ValueError(f"no VmRSS for pid {process}")
    return total


def _echo_round(socks: list[socket.socket], selector: selectors.BaseSelector) -> float:
    """Send one message on every connection, then collect every answer; seconds taken.

    Answers are collected in whatever order they come (epoll over all connections):
    reading them in connection order would block once per late answer, and on a busy
    machine each of those wake-ups costs a scheduling delay that grows the round
    faster than the number of connections.

    Each answer is acknowledged at once (``TCP_QUICKACK`` once it is read), so every
    connection costs the server the same three packets per round at every level.
    Left to Linux's delayed ACK, an answer waits for the next message to carry its
    ACK unless the round lasts more than the 40 ms delayed-ACK timer: then a pure ACK
    goes for the answers read early, and a server whose round at the high level is
    slower than that gets up to 40 % more packets there than at the low level.
    """
    start = time.perf_counter()
    for sock in socks:
        sock.sendall(MESSAGE)
    pending = {sock.fileno(): bytearray() for sock in socks}
    stop_at = start + CONNECT_TIMEOUT
    while pending:
        left = stop_at - time.perf_counter()
        events = selector.select(left) if left > 0 else []
        if not events:
            raise TimeoutError(f"{len(pending)} of {len(socks)} echoes missing")
        for key, _mask in events:
            fd = key.fd
            if fd not in pending:
                raise ValueError("echo sent more than the message")
            got = pending[fd]
            data = key.fileobj.recv(len(MESSAGE) - len(got))  # type: ignore[union-attr]
            if not data:
                raise ConnectionError("echo server closed a connection")
            got += data
            if len(got) == len(MESSAGE):
                if got != MESSAGE:
                    raise ValueError("echo returned different bytes")
                del pending[fd]
                key.fileobj.setsockopt(  # type: ignore[union-attr]
                    socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1
                )
    return time.perf_counter() - start


def scale(
    host: str, port: int, levels: list[int], rounds: int, server_pid: int, deadline_s: float
) -> Result:
    """Grow to each level of concurrent echo connections; RSS and echo-round time there,
    and the server's CPU time per round (the client's own epoll loop grows faster than
    linearly, so its wall time overstates the server's cost at high levels)."""
    from bench.run import server_cpu_s  # the same clock as the CPU table

    _raise_nofile_limit()
    socks: list[socket.socket] = []
    selector = selectors.DefaultSelector()
    stop_at = time.perf_counter() + deadline_s
    out: list[Result] = []
    base_rss_kb = read_vm_rss_kb(server_pid)
    timed_out = False
    try:
        for level in sorted(levels):
            open_start = time.perf_counter()
            while len(socks) < level:
                if time.perf_counter() > stop_at:
                    timed_out = True
                    break
                socks.append(_connect(host, port))
            if timed_out:
                break
            open_s = time.perf_counter() - open_start
            for sock in socks[len(selector.get_map()) :]:
                selector.register(sock, selectors.EVENT_READ)
            _echo_round(socks, selector)  # warm-up: buffers and per-connection state exist now
            rss_kb = read_vm_rss_kb(server_pid)
            times: list[float] = []
            cpu_before = server_cpu_s(server_pid)
            for _ in range(rounds):
                if time.perf_counter() > stop_at:
                    timed_out = True
                    break
                times.append(_echo_round(socks, selector))
            if not times:
                break
            cpu_after = server_cpu_s(server_pid)
            server_ms = (
                None
                if cpu_before is None or cpu_after is None
                else (cpu_after - cpu_before) / len(times) * 1e3
            )
            out.append(
                {
                    "connections": level,
                    "rss_kb": rss_kb,
                    "rss_after_rounds_kb": read_vm_rss_kb(server_pid),
                    "round_ms": statistics.median(times) * 1e3,
                    "round_ms_min": min(times) * 1e3,
                    "server_cpu_ms": server_ms,
                    "open_s": open_s,
                }
            )
    finally:
        selector.close()
        for sock in socks:
            sock.close()
    return {"base_rss_kb": base_rss_kb, "levels": out, "timed_out": timed_out}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.client", description=__doc__)
    parser.add_argument("mode", choices=("upload", "download", "echo", "conns", "scale"))
    parser.add_argument("--host", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--size", type=int, default=100_000_000, help="bytes (bulk modes)")
    parser.add_argument("--count", type=int, default=1000, help="connections (conns)")
    parser.add_argument("--concurrency", type=int, default=1, help="parallel clients (conns)")
    parser.add_argument("--levels", default="100,1000", help="connection counts (scale)")
    parser.add_argument("--rounds", type=int, default=5, help="timed echo rounds (scale)")
    parser.add_argument("--server-pid", type=int, default=0, help="whose VmRSS (scale)")
    parser.add_argument("--deadline", type=float, default=60.0, help="seconds for the work")
    parser.add_argument(
        "--cc", default=None, help="TCP congestion control of every socket (default: the system's)"
    )
    args = parser.parse_args(argv)
    global _congestion
    _congestion = args.cc.encode() if args.cc else None
    usage_before = resource.getrusage(resource.RUSAGE_SELF)
    result: Result
    if args.mode == "upload":
        result = bulk_upload(args.host, args.port, args.size, args.deadline)
    elif args.mode == "download":
        result = bulk_download(args.host, args.port, args.size, args.deadline)
    elif args.mode == "echo":
        result = bulk_echo(args.host, args.port, args.size, args.deadline)
    elif args.mode == "conns":
        result = connections(args.host, args.port, args.count, args.concurrency, args.deadline)
    else:
        levels = [int(x) for x in args.levels.split(",") if x]
        result = scale(args.host, args.port, levels, args.rounds, args.server_pid, args.deadline)
    usage_after = resource.getrusage(resource.RUSAGE_SELF)
    result["client_cpu_s"] = (
        usage_after.ru_utime + usage_after.ru_stime - usage_before.ru_utime - usage_before.ru_stime
    )
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
