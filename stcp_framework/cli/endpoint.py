"""``--listen`` endpoints: ``ADDR[:PORT]`` with IPv6 in brackets, both ways."""

from __future__ import annotations

import argparse
import fcntl
import ipaddress
import socket
import struct
from collections.abc import Sequence

from ..wire.fmt import endpoint_text

SIOCGIFADDR = 0x8915
SIOCGIFNETMASK = 0x891B


def parse_endpoint(text: str) -> tuple[str, int | None]:
    """``198.18.0.2:7``, ``[2001:db8::2]:7``, or an address alone (``198.18.0.2``,
    ``2001:db8::2``, ``[2001:db8::2]``: the port is then the service's) -> (address,
    port or None). An IPv6 address with a port needs its brackets: ``2001:db8::2:7`` is
    an address."""
    bad = f"{text!r} is not ADDRESS[:PORT] (e.g. 198.18.0.2:7, [2001:db8::2]:7)"
    bare = text[1:-1] if text.startswith("[") and text.endswith("]") else text
    try:
        return str(ipaddress.ip_address(bare)), None
    except ValueError:
        pass
    if text.startswith("["):
        host, sep, port = text[1:].partition("]:")
    else:
        host, sep, port = text.rpartition(":")
        if ":" in host:
            raise argparse.ArgumentTypeError(
                f"{bad}: write an IPv6 address with a port as [ADDR]:PORT"
            )
    if not sep:
        raise argparse.ArgumentTypeError(bad)
    try:
        ipaddress.ip_address(host)
        port_number = int(port)
    except ValueError:
        raise argparse.ArgumentTypeError(bad) from None
    if not 0 < port_number < 65536:
        raise argparse.ArgumentTypeError(f"port {port_number} is not in 1..65535")
    return host, port_number


def format_endpoint(host: str, port: int | None) -> str:
    """The inverse of ``parse_endpoint``: ``[2001:db8::2]:7`` for IPv6."""
    if port is None:
        return f"[{host}]" if ":" in host else host
    return endpoint_text(host, port)


Interface = ipaddress.IPv4Interface | ipaddress.IPv6Interface


def listen_problems(
    addresses: Sequence[str], kernel_side: Sequence[Interface]
) -> tuple[list[str], list[str]]:
    """(errors, warnings) about the stack's ``--listen`` addresses, given the kernel
    side's addresses on the device (``device_interfaces``).

    An error: the kernel's own address -- packets to it stay in the kernel and never
    reach the device. A warning: an address outside every subnet of the device (its
    traffic goes there only if a route says so), or a subnet's network or broadcast
    address.
    """
    errors: list[str] = []
    warnings: list[str] = []
    for text in addresses:
        addr = ipaddress.ip_address(text)
        ours = [i for i in kernel_side if i.version == addr.version]
        inside = [i for i in ours if addr in i.network]
        if any(i.ip == addr for i in ours):
            other = next((h for h in inside[0].network.hosts() if h != addr), None)
            errors.append(
                f"--listen {text}: that is the kernel side's own address on the device; "
                "the stack needs another address of its subnet"
                + (f", e.g. {other}" if other is not None else " (a wider prefix than /32)")
            )
        elif ours and not inside:
            subnets = ", ".join(str(i.network) for i in ours)
            warnings.append(
                f"--listen {text}: outside the device's subnet ({subnets}): the kernel "
                "sends it no traffic unless a route says so"
            )
        elif any(
            addr == i.network.network_address
            or (addr.version == 4 and addr == i.network.broadcast_address)
            for i in inside
            if i.network.num_addresses > 2
        ):
            warnings.append(f"--listen {text}: the network or broadcast address of its subnet")
    return errors, warnings


def device_interfaces(dev: str) -> list[Interface]:
    """The kernel side's addresses on ``dev``: its primary IPv4 address (an ioctl) and
    every IPv6 one (``/proc/net/if_inet6``) -- read in microseconds, without ``ip``, as
    a restart is on the clock."""
    out: list[Interface] = []
    request = struct.pack("16s16x", dev.encode()[:15])
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            addr = fcntl.ioctl(probe.fileno(), SIOCGIFADDR, request)[20:24]
            mask = fcntl.ioctl(probe.fileno(), SIOCGIFNETMASK, request)[20:24]
        except OSError:
            pass  # no IPv4 address (EADDRNOTAVAIL), or no such device
        else:
            out.append(
                ipaddress.IPv4Interface(f"{socket.inet_ntoa(addr)}/{socket.inet_ntoa(mask)}")
            )
    try:
        with open("/proc/net/if_inet6") as table:  # (this namespace's)
            lines = table.read().splitlines()
    except OSError:
        lines = []
    for line in lines:
        fields = line.split()
        if len(fields) == 6 and fields[5] == dev:
            address = ipaddress.IPv6Address(int(fields[0], 16))
            out.append(ipaddress.IPv6Interface(f"{address}/{int(fields[2], 16)}"))
    return out
