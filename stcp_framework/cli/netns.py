"""Network-namespace safety: is the current namespace private enough to put devices in?

Theory of operation:
    Every device, address and route stcp creates belongs in a private network namespace
    (DESIGN.md, safety rule). Comparing with PID 1's namespace is not enough (the shell
    may not share PID 1's namespace), so we judge the namespace by what it contains: it
    looks like a host's if it has a default route (IPv4 or IPv6, any routing table) or an
    interface other than loopback, veth, TUN or dummy devices.

    The predicate ``host_like_reasons`` is a pure function over the parsed JSON of
    ``ip -j -d link show`` and ``ip -j route show table all`` (iproute2), so it is unit
    tested with sample output; ``current_namespace_problems`` runs ``ip`` and applies it.

    The kernel adds per-namespace *fallback tunnel devices* (``tunl0``, ``sit0``,
    ``ip6tnl0``, ``gre0``, ...) to every new namespace when their modules are loaded;
    they carry no traffic unless configured, so they are accepted while they are down.
"""

from __future__ import annotations

import ipaddress
import json
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from typing import Any

from ..errors import StcpConfigError

__all__ = [
    "ALLOWED_KINDS",
    "TEST_NET4",
    "TEST_NET6",
    "check_private_namespace",
    "current_namespace_problems",
    "host_like_reasons",
    "ip_json",
    "run_ip",
    "validate_test_address",
]

TEST_NET4 = ipaddress.IPv4Network("198.18.0.0/15")  # RFC 2544 benchmarking range
TEST_NET6 = ipaddress.IPv6Network("2001:db8::/32")  # RFC 3849 documentation range

ALLOWED_KINDS = frozenset({"veth", "tun", "dummy"})

# Devices the kernel creates in every new namespace when the tunnel modules are loaded
# (net/ipv4/ipip.c, net/ipv6/sit.c, ...): harmless while down.
FALLBACK_TUNNELS = frozenset(
    {"tunl0", "sit0", "ip6tnl0", "gre0", "gretap0", "erspan0", "ip6gre0", "ip_vti0", "ip6_vti0"}
)

_NON_FORWARDING_ROUTE_TYPES = frozenset({"unreachable", "blackhole", "prohibit", "throw"})

_IP_TIMEOUT = 10.0  # seconds; `ip` answers in milliseconds


def run_ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run ``ip ARGS`` (iproute2) and return the completed process.

    Raises:
        StcpConfigError: ``ip`` is not installed, or (with ``check``) it failed; the
            message carries ``ip``'s own one-line error.
    """
    exe = shutil.which("ip")
    if exe is None:
        raise StcpConfigError("the `ip` command is missing: install iproute2")
    try:
        proc = subprocess.run(
            [exe, *args], capture_output=True, text=True, timeout=_IP_TIMEOUT, check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise StcpConfigError(f"`ip {' '.join(args)}` timed out: check the system") from exc
    if check and proc.returncode != 0:
        detail = (proc.stderr.strip().splitlines() or ["failed"])[0]
        raise StcpConfigError(f"`ip {' '.join(args)}` failed: {detail}")
    return proc


def ip_json(*args: str) -> Any:
    """Run ``ip -j ARGS`` and parse its JSON output (``[]`` for empty output)."""
    out = run_ip("-j", *args).stdout.strip()
    return json.loads(out) if out else []


def _link_kind(link: Mapping[str, Any]) -> str | None:
    info = link.get("linkinfo")
    if isinstance(info, Mapping):
        kind = info.get("info_kind")
        if isinstance(kind, str):
            return kind
    return None


def host_like_reasons(
    links: Sequence[Mapping[str, Any]],
    routes4: Sequence[Mapping[str, Any]],
    routes6: Sequence[Mapping[str, Any]],
) -> list[str]:
    """Why a namespace with these links and routes looks like a host's (empty: private).

    Args:
        links: parsed ``ip -j -d link show`` (``-d`` so that ``linkinfo.info_kind`` is set).
        routes4: parsed ``ip -j -4 route show table all``.
        routes6: parsed ``ip -j -6 route show table all``.

    Returns:
        One short reason per finding, e.g. ``"default route via 192.0.2.1 dev eth0"``.
    """
    reasons: list[str] = []
    for family, routes in (("IPv4", routes4), ("IPv6", routes6)):
        for route in routes:
            if route.get("dst") != "default":
                continue
            if route.get("type") in _NON_FORWARDING_ROUTE_TYPES:
                continue  # e.g. "unreachable default": routes nothing out
            via = route.get("gateway")
            dev = route.get("dev")
            where = " ".join(
                part for part in (f"via {via}" if via else "", f"dev {dev}" if dev else "") if part
            )
            reasons.append(f"{family} default route {where}".rstrip())
    for link in links:
        name = str(link.get("ifname", "?"))
        kind = _link_kind(link)
        if link.get("link_type") == "loopback" and name == "lo":
            continue
        if kind in ALLOWED_KINDS:
            continue
        flags = link.get("flags", [])
        if name in FALLBACK_TUNNELS and "UP" not in flags:
            continue
        reasons.append(f"interface {name} ({kind or link.get('link_type', 'unknown')})")
    return reasons


def current_namespace_problems() -> list[str]:
    """``host_like_reasons`` for the network namespace this process is in."""
    links = ip_json("-d", "link", "show")
    routes4 = ip_json("-4", "route", "show", "table", "all")
    routes6 = ip_json("-6", "route", "show", "table", "all")
    return host_like_reasons(links, routes4, routes6)


def check_private_namespace(action: str) -> None:
    """Raise unless the current namespace looks private.

    Args:
        action: what we are about to do, for the message (e.g. ``"net up"``).

    Raises:
        StcpConfigError: one line naming the first findings and what to do.
    """
    reasons = current_namespace_problems()
    if reasons:
        shown = "; ".join(reasons[:3]) + ("; ..." if len(reasons) > 3 else "")
        raise StcpConfigError(
            f"refusing `stcp {action}`: this network namespace looks like the host's "
            f"({shown}); run it inside a private one, e.g. `unshare -n` or `ip netns exec`"
        )


def validate_test_address(
    text: str, *, version: int
) -> ipaddress.IPv4Interface | ipaddress.IPv6Interface:
    """Parse ``ADDR/PREFIX`` and check it lies inside 198.18.0.0/15 or 2001:db8::/32.

    Raises:
        StcpConfigError: unparseable, wrong family, or outside the test ranges.
    """
    if "/" not in text:
        raise StcpConfigError(f"address {text!r} needs a prefix length, e.g. 198.18.0.1/24")
    try:
        iface = ipaddress.ip_interface(text)
    except ValueError as exc:
        raise StcpConfigError(f"bad address {text!r}: {exc}") from exc
    if iface.network.num_addresses < 2:
        raise StcpConfigError(
            f"address {text} leaves no other address in its subnet for the stack: use a "
            "shorter prefix, e.g. /24 (/64 for IPv6)"
        )
    if version == 4:
        if not isinstance(iface, ipaddress.IPv4Interface) or not iface.network.subnet_of(TEST_NET4):
            raise StcpConfigError(
                f"refusing IPv4 address {text}: use one inside {TEST_NET4} "
                "(e.g. 198.18.0.1/24) so tests never collide with real networks"
            )
        if iface.ip in (iface.network.network_address, iface.network.broadcast_address) and (
            iface.network.prefixlen < 31
        ):
            raise StcpConfigError(
                f"address {text} is the network or broadcast address: pick a host address"
            )
        return iface
    if not isinstance(iface, ipaddress.IPv6Interface) or not iface.network.subnet_of(TEST_NET6):
        raise StcpConfigError(
            f"refusing IPv6 address {text}: use one inside {TEST_NET6} "
            "(e.g. 2001:db8::1/64) so tests never collide with real networks"
        )
    return iface
