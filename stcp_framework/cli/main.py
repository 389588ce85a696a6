"""The ``stcp`` command."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from .._version import __version__
from ..errors import StcpConfigError
from ..store.base import StoreError, StoreRefused

DESCRIPTION = """\
stcp: stateless TCP servers. A user-space TCP stack on trio over a Linux TUN device.

Typical session (as root, inside a private network namespace, e.g. `unshare -n`):
  stcp net up --dev stcp0 --addr 198.18.0.1/24
  stcp run echo --dev stcp0 --listen 198.18.0.2:7 &
  python3 -c 'import socket; s=socket.create_connection(("198.18.0.2", 7)); ...'
  stcp net down --dev stcp0
Or simply: stcp demo
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="stcp", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--version", action="version", version=f"stcp {__version__}")
    parser.add_argument(
        "--log-level",
        default="warning",
        choices=["debug", "info", "warning", "error"],
        help="logging verbosity (default: warning)",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    from .demo import add_demo_parser
    from .flows import add_flows_parser
    from .net import add_net_parser
    from .run import add_run_parser
    from .store import add_store_parser

    add_net_parser(sub)
    add_run_parser(sub)
    add_store_parser(sub)
    add_demo_parser(sub)
    add_flows_parser(sub)
    return parser


def one_line_cause(exc: BaseException) -> StcpConfigError | StoreError | None:
    """The configuration or store error behind ``exc`` -- itself, or inside the
    exception groups trio's nurseries wrap errors in -- if there is one."""
    if isinstance(exc, StcpConfigError | StoreError):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            cause = one_line_cause(inner)
            if cause is not None:
                return cause
    return None


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, args.log_level.upper()),
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    try:
        result: int = args.func(args)
    except KeyboardInterrupt:
        return 130
    except BaseExceptionGroup as group:
        # Ctrl-C inside trio's nurseries comes wrapped (a start-up waiting for its
        # store, say): as quiet as a bare one. Anything else in the group is reported.
        interrupted, rest = group.split(KeyboardInterrupt)
        if interrupted is not None and rest is None:
            return 130
        status = _report(rest if rest is not None else group)
        if status is None:
            raise
        return status
    except Exception as exc:
        status = _report(exc)
        if status is None:
            raise
        return status
    return result


def _report(exc: BaseException) -> int | None:
    """Print the one ``stcp: error:`` line for ``exc`` and return the exit status, or
    None if it is no configuration or store error (the caller re-raises it)."""
    cause = one_line_cause(exc)
    if cause is None:
        return None
    if isinstance(cause, StcpConfigError):
        print(f"stcp: error: {cause}", file=sys.stderr)
        return 2
    if isinstance(cause, StoreRefused):  # credentials, certificate: a setting
        print(f"stcp: error: store: {cause}", file=sys.stderr)
        return 2
    # Unavailable is waited out (G7); what reaches here is a refusal to act on.
    print(f"stcp: error: store: {cause}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
