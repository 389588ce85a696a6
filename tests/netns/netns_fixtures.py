"""Helpers behind the fixtures in ``tests/netns/conftest.py``.

The netns test layer runs as a whole inside a private network namespace (``unshare -n``,
done by the test script). Each test that needs a real device gets its own persistent TUN
device ``stcpt<N>`` with its own /24 in 198.18.0.0/15 and /64 in 2001:db8::/32, created
with the same code as ``stcp net up`` and removed with ``stcp net down``'s code.
"""

from __future__ import annotations

import ipaddress
import itertools
import os
import re
from dataclasses import dataclass
from pathlib import Path

from stcp_framework.cli.net import net_down, net_up
from stcp_framework.cli.netns import current_namespace_problems, run_ip
from stcp_framework.errors import StcpConfigError
from stcp_framework.link.tun import TUN_PATH, device_exists

CAP_NET_ADMIN = 12  # linux/include/uapi/linux/capability.h

_TEST_NET4 = ipaddress.IPv4Network("198.18.0.0/15")
_SUBNETS_24 = 512  # /24s in 198.18.0.0/15
_next_index = itertools.count()


@dataclass(frozen=True, slots=True)
class TunNet:
    """A TUN device set up for one test: the kernel owns ``.1``, the stack uses ``.2``."""

    dev: str
    kernel_addr: str  # e.g. "198.18.3.1"
    stack_addr: str  # e.g. "198.18.3.2"
    kernel_addr6: str  # e.g. "2001:db8:0:3::1"
    stack_addr6: str  # e.g. "2001:db8:0:3::2"
    mtu: int
    prefix_len: int = 24
    prefix_len6: int = 64


def has_cap_net_admin() -> bool:
    """Whether this process has CAP_NET_ADMIN in its effective set."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("CapEff:"):
                    return bool(int(line.split()[1], 16) >> CAP_NET_ADMIN & 1)
    except OSError:
        pass
    return os.geteuid() == 0


def netns_problem() -> str | None:
    """Why the netns tests cannot run here (one line), or None if they can."""
    if not has_cap_net_admin():
        return "needs root or CAP_NET_ADMIN (run the suite as root under `unshare -n`)"
    if not os.path.exists(TUN_PATH):
        return f"{TUN_PATH} is missing (load the tun module)"
    try:
        reasons = current_namespace_problems()
    except StcpConfigError as exc:
        return str(exc)
    if reasons:
        return (
            "not in a private network namespace ("
            + "; ".join(reasons[:3])
            + "): run the suite under `unshare -n`"
        )
    return None


def bring_loopback_up() -> None:
    """``ip link set lo up``: a fresh namespace starts with ``lo`` down."""
    run_ip("link", "set", "dev", "lo", "up")


def create_tun_net(mtu: int = 1500) -> TunNet:
    """Create and bring up a uniquely named TUN device with unique test subnets."""
    for _ in range(_SUBNETS_24):
        index = next(_next_index) % _SUBNETS_24
        dev = f"stcpt{index}"
        if device_exists(dev):
            continue  # left over from an earlier crashed run
        base = _TEST_NET4.network_address + index * 256
        net6 = ipaddress.IPv6Network(f"2001:db8:0:{index:x}::/64")
        tun = TunNet(
            dev=dev,
            kernel_addr=str(base + 1),
            stack_addr=str(base + 2),
            kernel_addr6=str(net6.network_address + 1),
            stack_addr6=str(net6.network_address + 2),
            mtu=mtu,
        )
        net_up(
            dev,
            f"{tun.kernel_addr}/{tun.prefix_len}",
            mtu,
            f"{tun.kernel_addr6}/{tun.prefix_len6}" if mtu >= 1280 else None,
        )
        return tun
    raise RuntimeError("no free stcpt<N> device name left")


def remove_tun_net(tun: TunNet) -> None:
    """Remove the device (a no-op if a test already removed it)."""
    if device_exists(tun.dev):
        net_down(tun.dev)


def pcap_path_for(rootpath: Path, nodeid: str) -> Path:
    """``<rootdir>/pcaps/<sanitized test id>.pcap``."""
    name = nodeid.split("/")[-1].replace("::", "__")
    name = re.sub(r"[^A-Za-z0-9_.\-\[\]]+", "_", name).replace("[", "_").replace("]", "")
    return rootpath / "pcaps" / f"{name}.pcap"
