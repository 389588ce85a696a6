"""Path MTU discovery against a real Linux router: a narrow hop between us and the peer.

The client runs in a namespace of its own behind a veth pair whose end on our side has
MTU 1400, while its own end (and so its MSS) allows 9000: the hop is narrower than
either end says, the case MSS negotiation cannot see. This namespace's kernel forwards
between the TUN device and the veth; every segment of ours above 1400 bytes has DF set
(IPv6: always), so the kernel answers it with ICMP "fragmentation needed" / ICMPv6
"packet too big" instead of forwarding it. Without path MTU discovery the download
stalls for ever (a black hole); with it the stack lowers its MSS on the first message
and the 20 MB chargen download arrives byte-exact.
"""

from __future__ import annotations

import ipaddress
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import trio
from kernel_peer import stack_on, wait_for
from netns_fixtures import TunNet

from stcp_framework import Stream
from stcp_framework.cli.netns import run_ip
from stcp_framework.link.pcap import HEADERS_SNAPLEN
from stcp_framework.services import chargen

SIZE = 20 << 20
HOP_MTU = 1400
PEER_MTU = 9000
VETH_US, VETH_PEER = "stcppmtu0", "stcppmtu1"
LINK4 = ("198.19.250.1", "198.19.250.2", 24)
LINK6 = ("2001:db8:fa::1", "2001:db8:fa::2", 64)
KERNEL_PEER = Path(__file__).with_name("kernel_peer.py")

pytestmark = [pytest.mark.netns, pytest.mark.timeout(120)]


def _sysctl(name: str, value: str | None = None) -> str:
    path = Path("/proc/sys") / name.replace(".", "/")
    old = path.read_text().strip()
    if value is not None:
        path.write_text(value)
    return old


async def _download_behind_narrow_hop(tun: TunNet, version: int) -> dict[str, object]:
    """Run the kernel peer's chargen download in its own namespace, routed through the
    narrow hop to ``tun``'s stack address; return its JSON result."""
    us, peer, plen = LINK4 if version == 4 else LINK6
    target = f"{tun.kernel_addr}/24" if version == 4 else f"{tun.kernel_addr6}/64"
    target_net = ipaddress.ip_interface(target).network
    nodad = "" if version == 4 else "nodad"
    stack = tun.stack_addr if version == 4 else tun.stack_addr6
    family = "-4" if version == 4 else "-6"
    script = f"""
set -e
for i in $(seq 1 200); do ip link show {VETH_PEER} >/dev/null 2>&1 && break; sleep 0.025; done
ip link set lo up
ip link set {VETH_PEER} mtu {PEER_MTU} up
ip {family} addr add {peer}/{plen} dev {VETH_PEER} {nodad}
ip {family} route add {target_net} via {us}
exec {sys.executable} {KERNEL_PEER} chargen --host {stack} --port 19 --size {SIZE}
"""
    process = await trio.lowlevel.open_process(
        ["unshare", "--net", "sh", "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        # `unshare` must have left this namespace before the veth end is moved into the
        # namespace of its pid (else it lands here and the peer never sees it)
        ours = os.readlink("/proc/self/ns/net")
        await wait_for(
            lambda: os.readlink(f"/proc/{process.pid}/ns/net") != ours,
            "the peer's own network namespace",
            within=10,
        )
        run_ip("link", "add", VETH_US, "type", "veth", "peer", "name", VETH_PEER,
               "netns", str(process.pid))  # fmt: skip
        run_ip("link", "set", VETH_US, "mtu", str(HOP_MTU), "up")
        run_ip(family, "addr", "add", f"{us}/{plen}", "dev", VETH_US, *nodad.split())
        assert process.stdout is not None and process.stderr is not None
        out = bytearray()
        with trio.fail_after(60):
            while chunk := await process.stdout.receive_some():
                out += chunk
            await process.wait()
        err = (await process.stderr.receive_some()).decode(errors="replace")
        assert process.returncode == 0, f"peer failed ({process.returncode}): {err}"
        result: dict[str, object] = json.loads(out)
        return result
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
        run_ip("link", "del", VETH_US, check=False)  # (gone with the peer's namespace)


@pytest.mark.parametrize("version", [4, 6])
async def test_download_through_a_narrow_hop(
    tun_net: TunNet, pcap_path: Path, version: int
) -> None:
    mss: list[int] = []
    counters: dict[str, int] = {}
    done = trio.Event()

    async def watched_chargen(stream: Stream) -> None:
        try:
            await chargen(stream)
        finally:
            conn = stream._flow.conn
            mss.append(conn.tcb.mss)
            counters.update(conn.counters)
            done.set()

    forwarding = "net.ipv4.ip_forward" if version == 4 else "net.ipv6.conf.all.forwarding"
    old = _sysctl(forwarding, "1")
    try:
        async with (
            stack_on(tun_net, pcap_path, snaplen=HEADERS_SNAPLEN) as stack,
            trio.open_nursery() as nursery,
        ):
            await nursery.start(stack.serve, watched_chargen, 19)
            result = await _download_behind_narrow_hop(tun_net, version)
            with trio.fail_after(10):
                await done.wait()  # the handler ends when the client's close arrives
            nursery.cancel_scope.cancel()
        stats = dict(stack.runtime.stats)
    finally:
        _sysctl(forwarding, old)
    assert result["error"] is None, result
    assert result["received"] == SIZE and result["mismatch_at"] is None
    assert stats["icmp_too_big"] >= 1
    overhead = 40 if version == 4 else 60
    assert mss == [HOP_MTU - overhead - 12]  # minus the timestamps option
    assert counters["pmtu_lowered"] == 1
