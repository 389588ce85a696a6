"""SYN cookies against the real kernel: spoofed SYNs (raw socket, a source address
nobody in the namespace owns) fill the listener's backlog; a Linux client still
connects -- its SYN is answered with a cookie, its ACK brings the connection back --
and echoes byte-exact, with the window scale, SACK and timestamps it offered."""

from __future__ import annotations

import ipaddress
import socket
from pathlib import Path

import pytest
import trio
from kernel_peer import stack_on
from netns_fixtures import TunNet
from test_stack_malformed import echo_round_trip, ipv4_raw_send, ipv6_raw_send

from stcp_framework.services import echo
from stcp_framework.tcp.syncookie import MSS_TABLE
from stcp_framework.wire.packet import build_packet
from stcp_framework.wire.tcp import SYN, TcpOptions

PORT = 7
BACKLOG = 8

pytestmark = [pytest.mark.slow, pytest.mark.netns, pytest.mark.timeout(60)]


def spoofed_syns(spoofed: str, stack: str, count: int) -> list[bytearray]:
    src, dst = ipaddress.ip_address(spoofed).packed, ipaddress.ip_address(stack).packed
    options = TcpOptions(mss=1460, wscale=7, sack_permitted=True, timestamps=(1, 0))
    return [
        build_packet(src, dst, 30000 + i, PORT, 7919 * i, 0, SYN, 65535, options, b"")
        for i in range(count)
    ]


@pytest.mark.parametrize("tun_net", [1500, 65000], indirect=True)
@pytest.mark.parametrize("family", [socket.AF_INET, socket.AF_INET6], ids=["ipv4", "ipv6"])
async def test_a_linux_client_connects_through_a_syn_flood(
    tun_net: TunNet, pcap_path: Path, family: int
) -> None:
    if family == socket.AF_INET:
        kernel, stack_addr = tun_net.kernel_addr, tun_net.stack_addr
        spoofed = str(ipaddress.ip_address(tun_net.kernel_addr) + 100)
        send = ipv4_raw_send
    else:
        kernel, stack_addr = tun_net.kernel_addr6, tun_net.stack_addr6
        spoofed = str(ipaddress.ip_address(tun_net.kernel_addr6) + 100)
        send = ipv6_raw_send
    async with (
        stack_on(tun_net, pcap_path, syn_backlog=BACKLOG) as stack,
        trio.open_nursery() as nursery,
    ):
        await nursery.start(stack.serve, echo, PORT)
        runtime = stack.runtime
        syns = spoofed_syns(spoofed, stack_addr, 3 * BACKLOG)
        await trio.to_thread.run_sync(send, syns, stack_addr)
        await trio.sleep(0.5)
        assert runtime.stats["syn_cookies_sent"] == 2 * BACKLOG
        assert runtime.stats["passive_opens"] == BACKLOG  # the rest kept nothing
        with trio.fail_after(10):
            client = await trio.open_tcp_stream(stack_addr, PORT, local_address=kernel)
            await echo_round_trip(client, bytes(range(256)) * 4096)  # 1 MiB
        assert runtime.stats["syn_cookies_accepted"] == 1
        port = client.socket.getsockname()[1]
        (flow,) = [f for k, f in runtime.flows.items() if k[1] == port]
        tcb = flow.conn.tcb
        assert (tcb.sack_permitted, tcb.timestamps) == (True, True)
        # Linux's view of the connection: what it offered, all taken (TCP_INFO)
        info = client.socket.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 8)
        options, scales = info[5], info[6]
        assert options & 0x7 == 0x7  # TCPI_OPT_TIMESTAMPS | _SACK | _WSCALE
        assert (scales & 0xF, scales >> 4) == (tcb.rcv_wscale, tcb.snd_wscale)
        # the MSS Linux offered (its MTU less the headers), as the cookie could name it
        offered = tun_net.mtu - (40 if family == socket.AF_INET else 60)
        assert tcb.mss == max(m for m in MSS_TABLE if m <= offered) - 12  # (timestamps)
        await client.aclose()
        nursery.cancel_scope.cancel()
