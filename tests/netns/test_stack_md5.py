"""TCP MD5 signatures (RFC 2385) against Linux's own (``TCP_MD5SIG``), over the real TUN
device: a Linux client with the key echoes 1 MiB through the stack, and the stack
connects to a Linux listener with the key -- Linux drops every segment whose signature
it cannot check (its ``TCPMD5Failure``/``TCPMD5NotFound`` stay 0), so the bytes
getting through is the proof; a Linux client with another key never connects, and the
stack counts each of its SYNs as ``md5_failure``."""

from __future__ import annotations

import socket
import struct
from pathlib import Path

import pytest
import trio
from kernel_peer import stack_on
from netns_fixtures import TunNet
from test_stack_malformed import echo_round_trip
from test_stack_sack import tcp_ext

from stcp_framework.services import echo

PORT = 179
KEY = b"stcp and linux share this"
TCP_MD5SIG = 14  # linux/tcp.h

pytestmark = [pytest.mark.slow, pytest.mark.netns, pytest.mark.timeout(60)]


def md5sig(family: int, peer: str, key: bytes) -> bytes:
    """A ``struct tcp_md5sig`` for ``setsockopt(IPPROTO_TCP, TCP_MD5SIG)``: the peer's
    address in a ``sockaddr_storage`` (128 bytes), flags, prefix length, key length,
    ifindex, and the key in 80 bytes."""
    if family == socket.AF_INET:
        address = struct.pack("=HH4s", family, 0, socket.inet_pton(family, peer))
    else:
        address = struct.pack("=HHI16sI", family, 0, 0, socket.inet_pton(family, peer), 0)
    return (
        address.ljust(128, b"\0") + struct.pack("=BBHi", 0, 0, len(key), 0) + key.ljust(80, b"\0")
    )


def addresses(tun_net: TunNet, family: int) -> tuple[str, str]:
    if family == socket.AF_INET:
        return tun_net.kernel_addr, tun_net.stack_addr
    return tun_net.kernel_addr6, tun_net.stack_addr6


def kernel_socket(family: int, peer: str, key: bytes) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.IPPROTO_TCP, TCP_MD5SIG, md5sig(family, peer, key))
    return sock


FAMILIES = pytest.mark.parametrize(
    "family", [socket.AF_INET, socket.AF_INET6], ids=["ipv4", "ipv6"]
)


@FAMILIES
async def test_a_linux_client_with_the_key_echoes_through_the_stack(
    tun_net: TunNet, pcap_path: Path, family: int
) -> None:
    kernel, stack_addr = addresses(tun_net, family)
    before = tcp_ext()
    async with (
        stack_on(tun_net, pcap_path, md5_keys={kernel: KEY}) as stack,
        trio.open_nursery() as nursery,
    ):
        await nursery.start(stack.serve, echo, PORT)
        sock = kernel_socket(family, stack_addr, KEY)
        sock.bind((kernel, 0))
        with trio.fail_after(20):
            await trio.to_thread.run_sync(sock.connect, (stack_addr, PORT))
            client = trio.SocketStream(trio.socket.from_stdlib_socket(sock))
            await echo_round_trip(client, bytes(range(256)) * 4096)  # 1 MiB
        await client.aclose()
        stats = stack.runtime.stats
        assert stats["md5_failure"] == stats["md5_not_found"] == stats["md5_unexpected"] == 0
        nursery.cancel_scope.cancel()
    after = tcp_ext()
    assert after["TCPMD5Failure"] == before["TCPMD5Failure"]
    assert after["TCPMD5NotFound"] == before["TCPMD5NotFound"]


@FAMILIES
async def test_the_stack_connects_to_a_linux_listener_with_the_key(
    tun_net: TunNet, pcap_path: Path, family: int
) -> None:
    kernel, stack_addr = addresses(tun_net, family)
    listener = kernel_socket(family, stack_addr, KEY)
    listener.bind((kernel, PORT))
    listener.listen()
    listener.setblocking(False)
    async with stack_on(tun_net, pcap_path, md5_keys={kernel: KEY}) as stack:
        with trio.fail_after(20):
            stream = await stack.connect(kernel, PORT)
            peer = trio.SocketStream((await trio.socket.from_stdlib_socket(listener).accept())[0])
            payload = bytes(range(256)) * 1024
            async with trio.open_nursery() as nursery:
                nursery.start_soon(stream.send_all, payload)
                got = b""
                while len(got) < len(payload):
                    got += await peer.receive_some()
            assert got == payload
            await peer.send_all(b"signed answer")
            assert await stream.receive_some() == b"signed answer"
        await stream.aclose()
        await peer.aclose()
    listener.close()


async def test_a_linux_client_with_another_key_never_connects(
    tun_net: TunNet, pcap_path: Path
) -> None:
    kernel, stack_addr = tun_net.kernel_addr, tun_net.stack_addr
    async with (
        stack_on(tun_net, pcap_path, md5_keys={kernel: KEY}) as stack,
        trio.open_nursery() as nursery,
    ):
        await nursery.start(stack.serve, echo, PORT)
        sock = kernel_socket(socket.AF_INET, stack_addr, b"another key")
        sock.settimeout(2.5)  # the SYN and its first retransmissions
        with pytest.raises(TimeoutError):
            await trio.to_thread.run_sync(sock.connect, (stack_addr, PORT))
        sock.close()
        assert stack.runtime.stats["md5_failure"] >= 2
        assert stack.runtime.flows == {}
        nursery.cancel_scope.cancel()
