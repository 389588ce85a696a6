"""``stcp net up`` / ``stcp net down``: the persistent TUN device a server attaches to.

Theory of operation:
    ``net up`` creates a persistent TUN device (``link.tun.create_persistent_tun``), gives
    the *kernel side* an address (the stack takes another address of the same subnet,
    e.g. the kernel has 198.18.0.1/24 and the stack answers as 198.18.0.2), sets the MTU
    and brings the link up. The device outlives every stcp process (DESIGN.md
    "Recovery"): while no process holds it the kernel drops its packets silently, so peers
    retransmit and never see an RST.

    Both commands refuse to run in a namespace that looks like the host's
    (``netns.check_private_namespace``) and refuse addresses outside 198.18.0.0/15 and
    2001:db8::/32: stcp's tests and demos never touch a real network.

    The default MTU is 65000: per-packet Python work is the cost of a user-space stack
    (about a million packets per second per core, ANCHORS.md), so big segments are the
    lever -- receiving from a kernel TCP sender runs at 2.7 GB/s with MTU 65000 against
    854 MB/s with MTU 1500. 65000 stays below the 65535-byte IPv4 total-length limit.

    The queue of packets the kernel holds for the stack (``txqueuelen``) is 10,000, not
    the TUN default of 500: a round on 1,000 echo connections brings 1,000 segments at
    once, and with 500 the kernel dropped ~2,000 of 6,000 (``ip -s link``: TX dropped),
    each recovered by its sender's retransmission timer -- a round took ~240 ms, ~70-130
    with 10,000. Senders' windows bound what really queues (TSQ charges it to them).
"""

from __future__ import annotations

import argparse
import logging
import os

from ..errors import StcpConfigError
from ..link.tun import create_persistent_tun, device_exists, validate_device_name
from .netns import check_private_namespace, ip_json, run_ip, validate_test_address

__all__ = ["DEFAULT_MTU", "add_net_parser", "net_down", "net_up"]

logger = logging.getLogger("stcp.net")

DEFAULT_MTU = 65000
MIN_MTU = 68  # RFC 791: every IPv4 module must forward a 68-octet datagram
MIN_MTU_IPV6 = 1280  # RFC 8200 §5: the kernel disables IPv6 on smaller links
MAX_MTU = 65535  # linux drivers/net/tun.c MAX_MTU
TX_QUEUE_LEN = 10_000  # packets the kernel queues for the stack (TUN default: 500)


def validate_mtu(mtu: int, *, ipv6: bool) -> None:
    """Raise ``StcpConfigError`` for an MTU a TUN device (with IPv6: its IPv6) cannot have."""
    low = MIN_MTU_IPV6 if ipv6 else MIN_MTU
    if not low <= mtu <= MAX_MTU:
        why = " (IPv6 needs at least 1280)" if ipv6 else ""
        raise StcpConfigError(f"bad MTU {mtu}: use a value between {low} and {MAX_MTU}{why}")


def _enable_ipv6(dev: str) -> None:
    """Make sure IPv6 is enabled on ``dev`` (``net.ipv6.conf.<dev>.disable_ipv6=0``)."""
    path = f"/proc/sys/net/ipv6/conf/{dev}/disable_ipv6"
    if not os.path.exists(path):
        raise StcpConfigError(
            "IPv6 is disabled in this kernel (no /proc/sys/net/ipv6): drop --addr6 or boot "
            "with ipv6 enabled"
        )
    with open(path, "w") as f:
        f.write("0\n")


UNIX_DGRAM_QLEN = 1024
"""``net.unix.max_dgram_qlen`` in the namespace (``stcp net up``): the datagrams a Unix
socket queues. The workers forward misdirected segments to each other over such
sockets (``stack/siblings.py``), and the default, 10 in every new namespace, dropped
all but ~11 of a burst whatever their socket buffers (a review found it)."""


def _raise_unix_dgram_queue() -> None:
    path = "/proc/sys/net/unix/max_dgram_qlen"
    try:
        with open(path) as f:
            if int(f.read()) >= UNIX_DGRAM_QLEN:
                return
        with open(path, "w") as f:
            f.write(str(UNIX_DGRAM_QLEN))
    except (OSError, ValueError) as exc:  # (not fatal: forwards drop sooner)
        logger.warning("could not raise %s to %d: %s", path, UNIX_DGRAM_QLEN, exc)


def net_up(dev: str, addr: str, mtu: int = DEFAULT_MTU, addr6: str | None = None) -> None:
    """Create persistent TUN device ``dev`` with kernel-side addresses and bring it up.

    Args:
        dev: interface name, e.g. ``"stcp0"``.
        addr: kernel-side IPv4 address with prefix inside 198.18.0.0/15, e.g.
            ``"198.18.0.1/24"``.
        mtu: device MTU (default 65000, see the module docstring).
        addr6: optional kernel-side IPv6 address with prefix inside 2001:db8::/32; added
            with ``nodad`` so it is usable at once.

    Raises:
        StcpConfigError: host-like namespace, address outside the test ranges, bad MTU or
            name, device already present, missing privilege or ``/dev/net/tun``.
    """
    validate_device_name(dev)
    iface4 = validate_test_address(addr, version=4)
    iface6 = validate_test_address(addr6, version=6) if addr6 is not None else None
    validate_mtu(mtu, ipv6=iface6 is not None)
    check_private_namespace("net up")
    create_persistent_tun(dev)
    try:
        run_ip("link", "set", "dev", dev, "mtu", str(mtu), "txqueuelen", str(TX_QUEUE_LEN))
        _raise_unix_dgram_queue()
        run_ip("-4", "addr", "add", str(iface4), "dev", dev)
        if iface6 is not None:
            _enable_ipv6(dev)
            run_ip("-6", "addr", "add", str(iface6), "dev", dev, "nodad")
        run_ip("link", "set", "dev", dev, "up")
    except BaseException:
        run_ip("link", "del", "dev", dev, check=False)
        raise


def net_down(dev: str) -> None:
    """Remove the TUN device ``dev`` created by ``net_up`` (even if a process holds it).

    Raises:
        StcpConfigError: host-like namespace, no such device, or not a TUN device.
    """
    validate_device_name(dev)
    check_private_namespace("net down")
    if not device_exists(dev):
        raise StcpConfigError(
            f"device {dev} not found: nothing to remove (run this in the namespace where "
            "`stcp net up` ran)"
        )
    links = ip_json("-d", "link", "show", "dev", dev)
    kind = None
    if links and isinstance(links[0].get("linkinfo"), dict):
        kind = links[0]["linkinfo"].get("info_kind")
    if kind != "tun":
        raise StcpConfigError(
            f"refusing to remove {dev}: it is not a TUN device ({kind or 'unknown kind'})"
        )
    run_ip("link", "del", "dev", dev)


def _cmd_net_up(args: argparse.Namespace) -> int:
    net_up(args.dev, args.addr, args.mtu, args.addr6)
    print(f"{args.dev} is up: kernel side {args.addr}" + (f", {args.addr6}" if args.addr6 else ""))
    return 0


def _cmd_net_down(args: argparse.Namespace) -> int:
    net_down(args.dev)
    print(f"{args.dev} removed")
    return 0


def add_net_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``net up`` and ``net down`` on the ``stcp`` command's subparsers.

    Each leaf parser sets ``func``: call ``args.func(args)`` (returns an exit status;
    raises ``StcpConfigError`` with a one-line message on bad input).
    """
    net = subparsers.add_parser(
        "net",
        help="create or remove the TUN device (in a private network namespace)",
        description=(
            "Manage the persistent TUN device stcp servers attach to. Run these commands "
            "as root inside a private network namespace (e.g. `unshare -n` or `ip netns "
            "exec NAME`); they refuse to run in a namespace that looks like the host's "
            "(a default route, or an interface other than lo, veth, tun or dummy)."
        ),
    )
    net_sub = net.add_subparsers(dest="net_command", metavar="{up,down}", required=True)

    up = net_sub.add_parser(
        "up",
        help="create the persistent TUN device with the kernel-side address",
        description=(
            "Create a persistent TUN device, assign the kernel-side address(es), set the "
            "MTU and bring it up. The device outlives stcp processes: a restarted server "
            "re-attaches to it. The stack uses another address of the same subnet "
            "(e.g. kernel 198.18.0.1/24, stack 198.18.0.2)."
        ),
        epilog="example: unshare -n -- sh -c 'stcp net up --dev stcp0 --addr 198.18.0.1/24 && ...'",
    )
    up.add_argument("--dev", default="stcp0", help="interface name (default: %(default)s)")
    up.add_argument(
        "--addr",
        required=True,
        help="kernel-side IPv4 address/prefix inside 198.18.0.0/15, e.g. 198.18.0.1/24",
    )
    up.add_argument(
        "--addr6",
        default=None,
        help="kernel-side IPv6 address/prefix inside 2001:db8::/32, e.g. 2001:db8::1/64",
    )
    up.add_argument(
        "--mtu",
        type=int,
        default=DEFAULT_MTU,
        help=(
            "device MTU (default: %(default)s; large segments are what make a Python stack "
            "fast, use 1500 to mimic Ethernet)"
        ),
    )
    up.set_defaults(func=_cmd_net_up)

    down = net_sub.add_parser(
        "down",
        help="remove the TUN device",
        description="Remove a TUN device created by `stcp net up` (processes holding it lose it).",
    )
    down.add_argument("--dev", default="stcp0", help="interface name (default: %(default)s)")
    down.set_defaults(func=_cmd_net_down)
