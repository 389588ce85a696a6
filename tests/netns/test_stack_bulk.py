"""1 GB through discard, chargen and echo on the real stack, the Linux kernel as client.

The stack runs in this process on a TUN device with MTU 65000 (about 64 KB segments);
the client is ``kernel_peer.py`` in its own process, an ordinary Python socket. Every
byte is checked: discard hashes what it received and compares with the client's hash,
chargen's bytes are compared with RFC 864's pattern at their stream offset, echo's with
the pattern the client sent. The capture keeps headers only (``HEADERS_SNAPLEN``).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import trio
from kernel_peer import hashing_discard, run_kernel_peer, stack_on
from netns_fixtures import TunNet

from stcp_framework.link.pcap import HEADERS_SNAPLEN
from stcp_framework.services import chargen, echo
from stcp_framework.wire.drop import DropReason

GB = 1 << 30
MTU = 65000
TRANSFER_TIMEOUT = 60.0  # seconds; each transfer takes about 5-12 s on the 2-core machine

pytestmark = [pytest.mark.slow, pytest.mark.netns, pytest.mark.timeout(120)]


def report(name: str, size: int, seconds: float) -> None:
    """Print the rate (shown with ``pytest -s``; also in the log of a failed test)."""
    print(f"\n{name}: {size >> 20} MiB in {seconds:.2f} s = {size / seconds / 1e6:.0f} MB/s",
          file=sys.stderr)  # fmt: skip


@pytest.mark.parametrize("tun_net", [MTU], indirect=True)
async def test_1gb_to_discard_is_received_byte_exact(tun_net: TunNet, pcap_path: Path) -> None:
    received: list[tuple[int, str]] = []
    async with stack_on(tun_net, pcap_path, snaplen=HEADERS_SNAPLEN) as stack:
        async with trio.open_nursery() as nursery:
            await nursery.start(stack.serve, hashing_discard(received), 9)
            with trio.fail_after(TRANSFER_TIMEOUT):
                result = await run_kernel_peer("send", tun_net.stack_addr, 9, GB, seed=9)
            nursery.cancel_scope.cancel()
        drops = dict(stack.runtime.drops)
    report("discard", GB, result["seconds"])
    assert result["tail"] == ""  # the server closed after reading everything
    assert received == [(GB, result["sha256"])]
    assert set(drops) <= {DropReason.NOT_TCP}, drops  # only the kernel's ICMPv6/MLD


@pytest.mark.parametrize("tun_net", [MTU], indirect=True)
async def test_1gb_from_chargen_follows_rfc864_pattern(tun_net: TunNet, pcap_path: Path) -> None:
    async with (
        stack_on(tun_net, pcap_path, snaplen=HEADERS_SNAPLEN) as stack,
        trio.open_nursery() as nursery,
    ):
        await nursery.start(stack.serve, chargen, 19)
        with trio.fail_after(TRANSFER_TIMEOUT):
            result = await run_kernel_peer("chargen", tun_net.stack_addr, 19, GB)
        nursery.cancel_scope.cancel()
    report("chargen", GB, result["seconds"])
    assert result["error"] is None, result
    assert result["received"] == GB
    assert result["mismatch_at"] is None


@pytest.mark.parametrize("tun_net", [MTU], indirect=True)
async def test_1gb_through_echo_comes_back_byte_exact(tun_net: TunNet, pcap_path: Path) -> None:
    async with (
        stack_on(tun_net, pcap_path, snaplen=HEADERS_SNAPLEN) as stack,
        trio.open_nursery() as nursery,
    ):
        await nursery.start(stack.serve, echo, 7)
        with trio.fail_after(TRANSFER_TIMEOUT):
            result = await run_kernel_peer("echo", tun_net.stack_addr, 7, GB, seed=7)
        nursery.cancel_scope.cancel()
    report("echo", GB, result["seconds"])
    assert result["error"] is None and result["sender_errors"] == [], result
    assert result["received"] == GB
    assert result["mismatch_at"] is None


@pytest.mark.parametrize("tun_net", [MTU], indirect=True)
async def test_100mb_through_echo_over_ipv6(tun_net: TunNet, pcap_path: Path) -> None:
    size = 100 << 20
    async with (
        stack_on(tun_net, pcap_path, snaplen=HEADERS_SNAPLEN) as stack,
        trio.open_nursery() as nursery,
    ):
        await nursery.start(stack.serve, echo, 7)
        with trio.fail_after(TRANSFER_TIMEOUT):
            result = await run_kernel_peer("echo", tun_net.stack_addr6, 7, size, seed=6)
        nursery.cancel_scope.cancel()
    report("echo over IPv6", size, result["seconds"])
    assert result["error"] is None and result["sender_errors"] == [], result
    assert result["received"] == size
    assert result["mismatch_at"] is None
