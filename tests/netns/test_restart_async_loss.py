"""Async durability against the Linux kernel: a crash that lost acknowledged bytes while
our window was full ends in a reset the client sees, not in a client that probes the
window for ever (``tcp/_arrive.py`` ``test_window_above_gap`` and ``acked_bytes_lost``).

The client (a plain socket) fills the echo server's window with Redis running, so all
of it is stored; with Redis frozen it reads a little of the echo, which opens the window
again, and fills it again: those bytes are acknowledged (async mode writes behind) and
never stored. The server is killed, Redis thawed, the server started again. Linux's
SND.UNA is now above the restored RCV.NXT: it ignores our ACKs (older than SND.UNA,
RFC 9293) and sends nothing but zero-window probes <SEQ=SND.UNA-1>.
"""

from __future__ import annotations

import errno
import socket
import struct
import time
from pathlib import Path
from typing import NamedTuple

import pytest
import trio
from netns_fixtures import TunNet
from restart_helpers import RedisServer, report, server_for

pytestmark = [pytest.mark.slow, pytest.mark.netns, pytest.mark.timeout(120)]

PORT = 7
LOST_MAX = 768 << 10  # below async mode's 1 MB of writes queued behind a commit
RESET_WITHIN = 20.0  # seconds after the restart (the client's probes back off)


class _Info(NamedTuple):
    """The fields of Linux's ``struct tcp_info`` this test reads."""

    probes: int
    unacked: int
    notsent: int
    snd_wnd: int

    @classmethod
    def of(cls, sock: socket.socket) -> _Info:
        raw = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 232)
        return cls(raw[3], *struct.unpack_from("I", raw, 24), *struct.unpack_from("I", raw, 144),
                   *struct.unpack_from("I", raw, 228))  # fmt: skip


def _send(sock: socket.socket, size: int, deadline: float) -> None:
    """Hand ``size`` bytes to the kernel."""
    while size > 0:
        assert time.monotonic() < deadline, "the kernel took no more bytes"
        try:
            size -= sock.send(b"z" * min(size, 1 << 16))
        except BlockingIOError:
            time.sleep(0.01)


def _settled(sock: socket.socket, deadline: float) -> _Info:
    """Wait until everything sent is acknowledged and nothing waits but on the window."""
    while time.monotonic() < deadline:
        info = _Info.of(sock)
        if info.unacked == 0 and (info.notsent == 0 or info.snd_wnd == 0):
            return info
        time.sleep(0.02)
    raise AssertionError(f"never settled: {_Info.of(sock)}")


def _fill_to(sock: socket.socket, window: int, deadline: float) -> int:
    """Send until the server's window is below ``window``, everything acknowledged;
    returns the bytes sent. (It starts small: first what opens it.)"""
    sent = 1 << 20
    _send(sock, sent, deadline)
    while (info := _settled(sock, deadline)).snd_wnd >= window:
        step = max(info.snd_wnd - window + 1, 1 << 16)
        _send(sock, step, deadline)
        sent += step
    return sent


def _probing(sock: socket.socket, deadline: float) -> _Info:
    """Wait until the client probes a zero window with nothing in flight."""
    while time.monotonic() < deadline:
        info = _Info.of(sock)
        if info.probes > 0 and info.unacked == 0 and info.snd_wnd == 0:
            return info
        time.sleep(0.02)
    raise AssertionError(f"the client does not probe: {_Info.of(sock)}")


def _wait_for_reset(sock: socket.socket, deadline: float) -> float:
    """Poll the socket until it fails; returns when it did (``SO_ERROR``: a ``recv``
    would return the echo bytes the kernel holds first)."""
    while time.monotonic() < deadline:
        err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            assert err == errno.ECONNRESET, errno.errorcode.get(err, err)
            return time.monotonic()
        time.sleep(0.02)
    raise AssertionError("the client's connection is still open: it waits for ever")


@pytest.mark.parametrize("tun_net", [65000], indirect=True)
async def test_a_linux_client_probing_a_window_lost_in_a_crash_is_reset(
    tun_net: TunNet, redis_server: RedisServer, tmp_path: Path
) -> None:
    server = server_for("echo", PORT, tun_net, redis_server, tmp_path, durability="async")
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 << 10)
    try:
        async with server.session():
            sock.settimeout(5.0)
            await trio.to_thread.run_sync(sock.connect, (tun_net.stack_addr, PORT))
            sock.setblocking(False)
            deadline = time.monotonic() + 60
            # the echo's answers fill the client's small buffer and our send buffer,
            # then our receive buffer fills: the window shrinks; all of it stored
            stored = await trio.to_thread.run_sync(_fill_to, sock, LOST_MAX, deadline)
            redis_server.pause()
            try:
                # the rest of the window: acknowledged at once, written behind, never
                # stored; the client keeps more queued and probes the closed window
                window = _Info.of(sock).snd_wnd
                await trio.to_thread.run_sync(_send, sock, window + (256 << 10), deadline)
                probing = await trio.to_thread.run_sync(_probing, sock, deadline)
                await server.kill()
            finally:
                redis_server.resume()
            await server.start()
            restarted = time.monotonic()
            reset_at = await trio.to_thread.run_sync(
                _wait_for_reset, sock, restarted + RESET_WITHIN
            )
            counters = await server.stop()
    finally:
        sock.close()
        if redis_server.paused:
            redis_server.resume()
    report(
        "async: a Linux client probing a window whose bytes a crash lost",
        [
            f"sent {stored} bytes (stored), then {window} (acknowledged, not stored)",
            f"client before the kill: {probing}",
            f"client reset {reset_at - restarted:.2f} s after the restart",
            "counters: " + ", ".join(f"{k}={v}" for k, v in sorted(counters.items())),
        ],
    )
    assert counters.get("reset_after_loss", 0) == 1, counters
    assert counters.get("tcp.lost_ack_window_test", 0) >= 1, counters  # not a data resend
