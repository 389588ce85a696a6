"""A Redis connection driven by trio itself: RESP on a non-blocking socket, replies
parsed by hiredis. ``RedisStore.commit`` uses it so that a group commit costs no hop to
a worker thread and back.

Why: the blocking redis-py call in a worker thread (``trio.to_thread.run_sync``) costs
two hand-overs per commit -- into the thread, and the result back to the trio thread --
and on a busy two-core machine each waits for a core and for the GIL: ~0.6-0.8 ms each
way against ~0.3 ms of script time inside Redis (bench/README.md, "Strict mode against
Redis's own ceiling"). Here the trio thread packs the command, writes it and goes on
parsing packets; the reply wakes it through the same epoll as the TUN device.

What it speaks: plain TCP or a Unix socket, ``AUTH`` (user and password; without a
password a ``PING``, so that a server that wants one says so at once) and ``SELECT`` at
connect -- the settings of the redis-py client it is made from. A TLS client
(``rediss://``), a ``credential_provider`` or another connection class keeps the thread
path (``for_client`` returns None).

Errors come out as redis-py's own exceptions, so callers map them as before: a broken
or timed-out connection raises ``ConnectionError`` / ``TimeoutError`` and is closed
(never reused: a reply may be missing); an error *reply* is returned in its place in the
list of replies (``ResponseError`` and subclasses, as redis-py's parser makes them), not
raised, since in a pipeline the others still count.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import hiredis
import redis
import trio
from redis._parsers import _HiredisParser
from redis.connection import Connection, UnixDomainSocketConnection
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import InvalidResponse
from redis.exceptions import TimeoutError as RedisTimeoutError

__all__ = ["RespConnection", "RespPool"]

_READ_SIZE = 1 << 16
_IOV_MAX = os.sysconf("SC_IOV_MAX") if hasattr(os, "sysconf") else 1024
"""Buffers per ``sendmsg`` (more: EMSGSIZE; a group commit of many flows has more)."""
UNIX_SEND_BUFFER = 4 << 20
"""``SO_SNDBUF`` asked for on a Unix socket to Redis (Linux caps it at
``net.core.wmem_max``, 4 MiB on this project's machines, and doubles it). A group
commit of a strict echo carries ~1 MB of answers; with the default ~208 KB buffer it
went out in ~6 writes, each a wait for Redis to read and a wake-up on both sides of a
two-core machine. Written in one: strict echo ~10 % faster, ~8 % less server CPU per
MB (bench/README.md). Over TCP the kernel tunes the buffer itself, and setting it would
stop that, so a TCP socket is left alone."""
_parse_error = _HiredisParser(_READ_SIZE).parse_error  # type: ignore[no-untyped-call]  # error reply -> redis-py exception


class RespConnection:
    """One connection; ``call`` is one pipelined exchange. Not for concurrent use."""

    def __init__(self, sock: socket.socket, timeout: float | None) -> None:
        self._sock = sock
        self._timeout = timeout if timeout is not None else float("inf")
        self._reader = hiredis.Reader(protocolError=InvalidResponse, replyError=_parse_error)
        self.token = trio.lowlevel.current_trio_token()
        self.closed = False

    @classmethod
    async def open(cls, settings: dict[str, Any]) -> RespConnection:
        """Connect as the redis-py connection ``settings`` (its ``connection_kwargs``)
        say; raises ``ConnectionError`` or ``TimeoutError`` (redis-py's)."""
        connect_timeout = settings.get("socket_connect_timeout") or settings.get("socket_timeout")
        try:
            with trio.fail_after(connect_timeout if connect_timeout else float("inf")):
                sock = await _connect(settings)
        except trio.TooSlowError:
            raise RedisTimeoutError("timed out connecting to Redis") from None
        except OSError as exc:
            raise RedisConnectionError(f"cannot connect to Redis: {exc}") from exc
        conn = cls(sock, settings.get("socket_timeout"))
        hello: list[tuple[Any, ...]] = []
        password = settings.get("password")
        if password is not None:
            username = settings.get("username")
            hello.append(("AUTH", username, password) if username else ("AUTH", password))
        else:
            # A server that wants a password answers NOAUTH to this; without it the
            # first large commit got "unauthenticated multibulk length" and a close.
            hello.append(("PING",))
        if settings.get("db"):
            hello.append(("SELECT", settings["db"]))
        if hello:
            replies = await conn.call([hiredis.pack_command(c) for c in hello], len(hello))
            for reply in replies:
                if isinstance(reply, Exception):
                    await conn.aclose()
                    raise reply
        return conn

    async def call(self, packed: Sequence[Any], replies: int) -> list[Any]:
        """Send the RESP buffers ``packed`` (bytes-like, in order) and read ``replies``
        replies. Any failure -- and a cancellation -- closes the connection. The
        timeout bounds each wait for the socket, as a socket timeout does in redis-py,
        not the whole exchange: a commit of hundreds of MB may take seconds."""
        if self.closed:
            raise RedisConnectionError("connection closed")
        try:
            await self._send(packed)
            return await self._read(replies)
        except trio.TooSlowError:
            self._close()
            raise RedisTimeoutError("timeout talking to Redis") from None
        except OSError as exc:
            self._close()
            raise RedisConnectionError(f"Redis connection lost: {exc}") from exc
        except BaseException:
            self._close()  # cancelled, or a protocol error: the replies are out of step
            raise

    async def _send(self, packed: Sequence[Any]) -> None:
        sock = self._sock
        views = [memoryview(b) for b in packed]
        first, count = 0, len(views)
        while first < count:
            try:
                if first == count - 1:
                    sent = sock.send(views[first])
                else:
                    sent = sock.sendmsg(views[first : first + _IOV_MAX])
            except BlockingIOError:
                await self._wait(trio.lowlevel.wait_writable, sock)
                continue
            while first < count and sent >= len(views[first]):
                sent -= len(views[first])
                first += 1
            if sent:
                views[first] = views[first][sent:]
        await trio.lowlevel.checkpoint_if_cancelled()

    async def _read(self, replies: int) -> list[Any]:
        reader = self._reader
        sock = self._sock
        out: list[Any] = []
        while len(out) < replies:
            reply = reader.gets()
            if reply is not False:
                out.append(reply)
                continue
            try:
                data = sock.recv(_READ_SIZE)
            except BlockingIOError:
                await self._wait(trio.lowlevel.wait_readable, sock)
                continue
            if not data:
                raise RedisConnectionError("Redis closed the connection")
            reader.feed(data)
        return out

    async def _wait(
        self, wait: Callable[[socket.socket], Awaitable[None]], sock: socket.socket
    ) -> None:
        """``wait(sock)`` for at most the timeout, else ``trio.TooSlowError``. A bare
        ``CancelScope``: ``trio.fail_after`` is a generator-based context manager, and
        its cost showed (~4 % of a strict echo server's CPU, a wait or two per commit)."""
        with trio.CancelScope(deadline=trio.current_time() + self._timeout) as scope:
            await wait(sock)
        if scope.cancelled_caught:
            raise trio.TooSlowError

    def _close(self) -> None:
        if not self.closed:
            self.closed = True
            self._sock.close()

    async def aclose(self) -> None:
        self._close()
        await trio.lowlevel.checkpoint()

    def __del__(self) -> None:
        # A store dropped without ``aclose`` (as redis-py's connections allow).
        self._close()


class RespPool:
    """Idle ``RespConnection``s of one trio run; one per concurrent caller."""

    def __init__(self, settings: dict[str, Any]) -> None:
        self._settings = settings
        self._idle: list[RespConnection] = []

    @staticmethod
    def for_client(client: redis.Redis) -> RespPool | None:
        """A pool speaking as ``client`` does, or None if it needs what this module does
        not do (TLS, a custom connection class)."""
        pool = client.connection_pool
        if pool.connection_class not in (Connection, UnixDomainSocketConnection):
            return None
        settings = dict(pool.connection_kwargs)
        if settings.get("protocol") not in (None, 2, "2"):
            return None  # RESP3: the replies would differ
        if settings.get("credential_provider") is not None:
            return None  # credentials from a provider: redis-py asks it, we would not
        return RespPool(settings)

    async def call(self, packed: Sequence[Any], replies: int) -> list[Any]:
        """``RespConnection.call`` on an idle connection (a new one if none is idle)."""
        token = trio.lowlevel.current_trio_token()
        conn = None
        while self._idle:
            candidate = self._idle.pop()
            if candidate.token is token and not candidate.closed:
                conn = candidate
                break
            candidate._close()  # of another (finished) trio run
        if conn is None:
            conn = await RespConnection.open(self._settings)
        result = await conn.call(packed, replies)
        self._idle.append(conn)
        return result

    async def aclose(self) -> None:
        idle, self._idle = self._idle, []
        for conn in idle:
            await conn.aclose()


async def _connect(settings: dict[str, Any]) -> socket.socket:
    """A connected non-blocking socket to the server ``settings`` name (its Unix
    ``path``, else each address of ``host``/``port`` in turn)."""
    path = settings.get("path")
    if path:
        targets: list[tuple[int, Any]] = [(socket.AF_UNIX, path)]
    else:
        infos = await trio.socket.getaddrinfo(
            settings.get("host", "localhost"), int(settings.get("port", 6379)),
            type=socket.SOCK_STREAM,
        )  # fmt: skip
        targets = [(info[0], info[4]) for info in infos]
    error: OSError = OSError("no address")
    for family, address in targets:
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setblocking(False)
            if family == socket.AF_UNIX:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, UNIX_SEND_BUFFER)
            else:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            try:
                sock.connect(address)
            except BlockingIOError:
                await trio.lowlevel.wait_writable(sock)
                errno = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if errno:
                    raise OSError(errno, os.strerror(errno)) from None
            return sock
        except BaseException as exc:
            sock.close()
            if not isinstance(exc, OSError):
                raise
            error = exc
    raise error
