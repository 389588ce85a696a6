"""The "does this namespace look like the host's?" predicate behind ``stcp net up``.

Sample data is real ``ip -j`` output (trimmed to the fields that matter).
"""

from __future__ import annotations

from typing import Any

import pytest

from stcp_framework.cli.netns import host_like_reasons, validate_test_address
from stcp_framework.errors import StcpConfigError

LO: dict[str, Any] = {
    "ifindex": 1,
    "ifname": "lo",
    "flags": ["LOOPBACK", "UP"],
    "link_type": "loopback",
}
ETH0: dict[str, Any] = {"ifindex": 4, "ifname": "eth0", "flags": ["UP"], "link_type": "ether"}
IFB0: dict[str, Any] = {
    "ifname": "ifb0",
    "flags": [],
    "link_type": "ether",
    "linkinfo": {"info_kind": "ifb"},
}
TUN: dict[str, Any] = {
    "ifname": "stcp0",
    "flags": ["UP"],
    "link_type": "none",
    "linkinfo": {"info_kind": "tun"},
}
VETH: dict[str, Any] = {
    "ifname": "v0",
    "flags": ["UP"],
    "link_type": "ether",
    "linkinfo": {"info_kind": "veth"},
}
DUMMY: dict[str, Any] = {
    "ifname": "d0",
    "flags": [],
    "link_type": "ether",
    "linkinfo": {"info_kind": "dummy"},
}
SIT0_DOWN: dict[str, Any] = {
    "ifname": "sit0",
    "flags": ["NOARP"],
    "link_type": "sit",
    "linkinfo": {"info_kind": "sit"},
}
SIT0_UP: dict[str, Any] = {**SIT0_DOWN, "flags": ["NOARP", "UP"]}

HOST_ROUTES4: list[dict[str, Any]] = [
    {"dst": "default", "gateway": "192.0.2.1", "dev": "eth0", "flags": []},
    {"dst": "192.0.2.0/24", "dev": "eth0", "protocol": "kernel", "scope": "link"},
    {"type": "local", "dst": "127.0.0.1", "dev": "lo", "table": "local"},
]
HOST_ROUTES6: list[dict[str, Any]] = [
    {"dst": "fd00::/64", "dev": "eth0", "protocol": "kernel"},
    {"dst": "default", "gateway": "fd00::1", "dev": "eth0", "metric": 1024},
]
TUN_ROUTES4: list[dict[str, Any]] = [
    {"dst": "198.18.0.0/24", "dev": "stcp0", "protocol": "kernel", "scope": "link"}
]

NO_ROUTES: list[dict[str, Any]] = []


def test_fresh_namespace_is_private() -> None:
    assert host_like_reasons([{**LO, "flags": ["LOOPBACK"]}], [], []) == []


def test_namespace_with_test_devices_is_private() -> None:
    assert host_like_reasons([LO, TUN, VETH, DUMMY, SIT0_DOWN], TUN_ROUTES4, NO_ROUTES) == []


def test_host_namespace_is_refused_with_every_reason() -> None:
    assert host_like_reasons([LO, ETH0, IFB0], HOST_ROUTES4, HOST_ROUTES6) == [
        "IPv4 default route via 192.0.2.1 dev eth0",
        "IPv6 default route via fd00::1 dev eth0",
        "interface eth0 (ether)",
        "interface ifb0 (ifb)",
    ]


def test_default_route_alone_is_enough() -> None:
    assert host_like_reasons([LO, TUN], [{"dst": "default", "dev": "stcp0"}], []) == [
        "IPv4 default route dev stcp0"
    ]


def test_ipv6_default_route_alone_is_enough() -> None:
    routes6 = [{"dst": "default", "gateway": "2001:db8::1", "dev": "v0", "table": "100"}]
    assert host_like_reasons([LO, VETH], [], routes6) == [
        "IPv6 default route via 2001:db8::1 dev v0"
    ]


def test_unreachable_default_routes_nothing_out() -> None:
    assert host_like_reasons([LO], [{"type": "unreachable", "dst": "default"}], []) == []


def test_foreign_interface_alone_is_enough() -> None:
    assert host_like_reasons([LO, ETH0], [], []) == ["interface eth0 (ether)"]


def test_fallback_tunnel_device_counts_once_it_is_up() -> None:
    assert host_like_reasons([LO, SIT0_UP], [], []) == ["interface sit0 (sit)"]


def test_a_device_named_lo_must_be_the_loopback() -> None:
    fake_lo = {"ifname": "lo", "flags": ["UP"], "link_type": "ether"}
    assert host_like_reasons([fake_lo], [], []) == ["interface lo (ether)"]


@pytest.mark.parametrize(
    ("text", "version"),
    [("198.18.0.1/24", 4), ("198.19.255.1/24", 4), ("2001:db8::1/64", 6), ("2001:db8:1::1/48", 6)],
)
def test_test_range_addresses_are_accepted(text: str, version: int) -> None:
    assert str(validate_test_address(text, version=version)) == text


@pytest.mark.parametrize(
    ("text", "version", "message"),
    [
        ("10.0.0.1/24", 4, "use one inside 198.18.0.0/15"),
        ("198.18.0.1/14", 4, "use one inside 198.18.0.0/15"),
        ("198.20.0.1/24", 4, "use one inside 198.18.0.0/15"),
        ("2001:db8::1/64", 4, "use one inside 198.18.0.0/15"),
        ("198.18.0.1", 4, "needs a prefix length"),
        ("198.18.0.0/24", 4, "network or broadcast"),
        ("198.18.0.255/24", 4, "network or broadcast"),
        ("198.18.0.300/24", 4, "bad address"),
        ("fd00::1/64", 6, "use one inside 2001:db8::/32"),
        ("2001:db8::1/31", 6, "use one inside 2001:db8::/32"),
        ("198.18.0.1/24", 6, "use one inside 2001:db8::/32"),
        ("198.18.0.1/32", 4, "leaves no other address"),
        ("2001:db8::1/128", 6, "leaves no other address"),
    ],
)
def test_addresses_outside_the_test_ranges_are_refused(
    text: str, version: int, message: str
) -> None:
    with pytest.raises(StcpConfigError, match=message) as info:
        validate_test_address(text, version=version)
    assert "\n" not in str(info.value)
