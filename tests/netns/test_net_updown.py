"""``stcp net up`` / ``net down`` for real, in the private test namespace."""

from __future__ import annotations

import argparse
import json
import subprocess
from collections.abc import Iterator

import pytest
from netns_fixtures import TunNet

from stcp_framework.cli.net import add_net_parser, net_down, net_up
from stcp_framework.cli.netns import current_namespace_problems, run_ip
from stcp_framework.errors import StcpConfigError
from stcp_framework.link.tun import device_exists

DEV = "stcpupdown0"


def ip_json(*args: str) -> list[dict[str, object]]:
    out = subprocess.run(["ip", "-j", *args], capture_output=True, text=True, check=True)
    result: list[dict[str, object]] = json.loads(out.stdout or "[]")
    return result


@pytest.fixture
def cleanup_dev() -> Iterator[str]:
    yield DEV
    if device_exists(DEV):
        run_ip("link", "del", "dev", DEV)


def test_net_up_creates_persistent_tun_with_addresses(cleanup_dev: str) -> None:
    net_up(cleanup_dev, "198.18.200.1/24", 65000, "2001:db8:200::1/64")
    [link] = ip_json("-d", "addr", "show", "dev", cleanup_dev)
    assert link["mtu"] == 65000
    assert link["txqlen"] == 10_000  # bursts from 1,000 connections are not dropped
    assert "UP" in link["flags"]  # type: ignore[operator]
    info = link["linkinfo"]
    assert info["info_kind"] == "tun"  # type: ignore[index]
    assert info["info_data"]["pi"] is False  # type: ignore[index]
    assert info["info_data"]["persist"] is True  # type: ignore[index]
    addrs = {(a["local"], a["prefixlen"]) for a in link["addr_info"]}  # type: ignore[attr-defined]
    assert ("198.18.200.1", 24) in addrs
    assert ("2001:db8:200::1", 64) in addrs
    assert current_namespace_problems() == []  # a TUN device keeps the namespace "private"
    # workers forward misdirected segments over Unix datagram sockets: not 10 a burst
    with open("/proc/sys/net/unix/max_dgram_qlen") as f:
        assert int(f.read()) >= 1024

    net_down(cleanup_dev)
    assert not device_exists(cleanup_dev)


def test_net_up_twice_is_refused(cleanup_dev: str) -> None:
    net_up(cleanup_dev, "198.18.201.1/24", 1500, None)
    with pytest.raises(StcpConfigError, match="already exists"):
        net_up(cleanup_dev, "198.18.201.1/24", 1500, None)


def test_net_down_of_missing_device(cleanup_dev: str) -> None:
    with pytest.raises(StcpConfigError, match="not found: nothing to remove"):
        net_down(cleanup_dev)


def test_net_down_refuses_non_tun_device() -> None:
    with pytest.raises(StcpConfigError, match="refusing to remove lo: it is not a TUN device"):
        net_down("lo")


def test_bad_address_is_refused_before_anything_is_created(cleanup_dev: str) -> None:
    with pytest.raises(StcpConfigError, match=r"inside 198\.18\.0\.0/15"):
        net_up(cleanup_dev, "10.0.0.1/24", 1500, None)
    assert not device_exists(cleanup_dev)


def test_ipv6_below_minimum_mtu_is_refused(cleanup_dev: str) -> None:
    with pytest.raises(StcpConfigError, match="IPv6 needs at least 1280"):
        net_up(cleanup_dev, "198.18.202.1/24", 1000, "2001:db8:202::1/64")
    assert not device_exists(cleanup_dev)


def test_host_like_namespace_is_refused(tun_net: TunNet, cleanup_dev: str) -> None:
    # Make this private namespace look like a host: a default route.
    run_ip("route", "add", "default", "dev", tun_net.dev)
    try:
        with pytest.raises(StcpConfigError) as info:
            net_up(cleanup_dev, "198.18.203.1/24", 1500, None)
        message = str(info.value)
        assert message.startswith("refusing `stcp net up`: this network namespace looks like")
        assert f"IPv4 default route dev {tun_net.dev}" in message
        assert "\n" not in message
        assert not device_exists(cleanup_dev)
        with pytest.raises(StcpConfigError, match="refusing `stcp net down`"):
            net_down(tun_net.dev)
    finally:
        run_ip("route", "del", "default", "dev", tun_net.dev)


def test_foreign_interface_kind_is_refused(cleanup_dev: str) -> None:
    run_ip("link", "add", "stcpbr0", "type", "bridge")
    try:
        with pytest.raises(StcpConfigError, match=r"interface stcpbr0 \(bridge\)"):
            net_up(cleanup_dev, "198.18.204.1/24", 1500, None)
    finally:
        run_ip("link", "del", "dev", "stcpbr0")
    assert not device_exists(cleanup_dev)


def test_cli_parser_runs_net_up_and_down(
    cleanup_dev: str, capsys: pytest.CaptureFixture[str]
) -> None:
    parser = argparse.ArgumentParser(prog="stcp")
    add_net_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(
        ["net", "up", "--dev", cleanup_dev, "--addr", "198.18.205.1/24", "--mtu", "2000"]
    )
    assert args.func(args) == 0
    assert ip_json("link", "show", "dev", cleanup_dev)[0]["mtu"] == 2000
    args = parser.parse_args(["net", "down", "--dev", cleanup_dev])
    assert args.func(args) == 0
    assert not device_exists(cleanup_dev)
    assert capsys.readouterr().out.splitlines() == [
        f"{cleanup_dev} is up: kernel side 198.18.205.1/24",
        f"{cleanup_dev} removed",
    ]
