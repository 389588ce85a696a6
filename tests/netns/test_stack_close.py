"""Opening and closing against the Linux kernel's TCP, over IPv4 and IPv6.

Each test ends by checking both sides' view of the connection (RFC 9293 §3.6): the
stack's from ``Stream.tcp_state`` and ``runtime.flows``, the kernel's from ``ss -tan``. The
side that sends the first FIN (the active closer) ends in TIME-WAIT; the other side's
connection is gone (CLOSED). A RST leaves nothing on either side.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
from kernel_peer import stack_on, wait_for, wait_for_kernel_state
from netns_fixtures import TunNet

from stcp_framework import Stream
from stcp_framework.errors import ConnectionResetByPeer
from stcp_framework.stack.flows import Flow
from stcp_framework.stack.runtime import Runtime
from stcp_framework.tcp.state import TcpState

PORT = 5000
STEP_TIMEOUT = 10.0  # seconds for a whole test; each step normally takes milliseconds
DATA = bytes(range(256)) * 400  # 102,400 bytes: several segments, more than one window round

pytestmark = [
    pytest.mark.slow,
    pytest.mark.netns,
    pytest.mark.timeout(60),
    pytest.mark.parametrize("family", [socket.AF_INET, socket.AF_INET6], ids=["ipv4", "ipv6"]),
]


def addresses(tun: TunNet, family: int) -> tuple[str, str]:
    """(kernel address, stack address) of ``family``."""
    if family == socket.AF_INET:
        return tun.kernel_addr, tun.stack_addr
    return tun.kernel_addr6, tun.stack_addr6


def flow_of(runtime: Runtime, stream: Stream) -> Flow | None:
    """The stack's flow-table entry of ``stream`` (None once it reached CLOSED)."""
    (local, lport), (remote, rport) = stream.local_address, stream.remote_address
    family = socket.AF_INET6 if ":" in local else socket.AF_INET
    key = (socket.inet_pton(family, remote), rport, socket.inet_pton(family, local), lport)
    return runtime.flows.get(key)


def stack_state(runtime: Runtime, stream: Stream) -> TcpState:
    """The state the flow table holds for ``stream`` (CLOSED when it has left it)."""
    flow = flow_of(runtime, stream)
    return TcpState.CLOSED if flow is None else flow.conn.state


async def sock_send_all(sock: trio.socket.SocketType, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[await sock.send(view) :]


async def recv_exactly(sock: trio.socket.SocketType, size: int) -> bytes:
    chunks = bytearray()
    while len(chunks) < size:
        chunk = await sock.recv(size - len(chunks))
        assert chunk, f"EOF after {len(chunks)} of {size} bytes"
        chunks += chunk
    return bytes(chunks)


async def receive_exactly(stream: Stream, size: int) -> bytes:
    chunks = bytearray()
    while len(chunks) < size:
        chunk = await stream.receive_some(size - len(chunks))
        assert chunk, f"EOF after {len(chunks)} of {size} bytes"
        chunks += chunk
    return bytes(chunks)


class Pair:
    """A kernel socket connected to a stack stream, with both sides' 4-tuple views."""

    def __init__(self, runtime: Runtime, sock: trio.socket.SocketType, stream: Stream) -> None:
        self.runtime = runtime
        self.sock = sock
        self.stream = stream
        local: Any = sock.getsockname()
        self.kernel_end: tuple[str, int] = (local[0], local[1])
        self.stack_end = stream.local_address

    def stack_state(self) -> TcpState:
        return stack_state(self.runtime, self.stream)

    async def kernel_state_is(self, expected: str | None) -> None:
        await wait_for_kernel_state(self.kernel_end, self.stack_end, expected)

    async def stack_state_is(self, expected: TcpState) -> None:
        await wait_for(lambda: self.stack_state() is expected, f"stack state {expected}")


@asynccontextmanager
async def kernel_to_stack(tun: TunNet, family: int, pcap_path: Path) -> AsyncIterator[Pair]:
    """A stack listening on ``PORT``; a kernel socket connected to it; the accepted stream."""
    kernel_addr, stack_addr = addresses(tun, family)
    async with stack_on(tun, pcap_path) as stack:
        listener = stack.listen(PORT)
        sock = trio.socket.socket(family, socket.SOCK_STREAM)
        with sock, trio.fail_after(STEP_TIMEOUT):
            await sock.bind((kernel_addr, 0))
            await sock.connect((stack_addr, PORT))
            stream = await listener.accept()
            await listener.aclose()
            yield Pair(stack.runtime, sock, stream)


# ------------------------------------------------------------------ active open


async def test_stack_connects_to_kernel_listener_data_both_ways_stack_closes_first(
    tun_net: TunNet, family: int, pcap_path: Path
) -> None:
    kernel_addr, _ = addresses(tun_net, family)
    async with stack_on(tun_net, pcap_path) as stack:
        listening = trio.socket.socket(family, socket.SOCK_STREAM)
        with listening, trio.fail_after(STEP_TIMEOUT):
            await listening.bind((kernel_addr, 0))
            listening.listen()
            port = listening.getsockname()[1]
            stream = await stack.connect(kernel_addr, port)
            assert stack_state(stack.runtime, stream) is TcpState.ESTABLISHED
            sock, _ = await listening.accept()
            with sock:
                pair = Pair(stack.runtime, sock, stream)
                assert pair.kernel_end == (kernel_addr, port)
                await stream.send_all(DATA)
                assert await recv_exactly(sock, len(DATA)) == DATA
                await sock_send_all(sock, DATA[::-1])
                assert await receive_exactly(stream, len(DATA)) == DATA[::-1]
                # The stack closes first: FIN-WAIT-1/2, then TIME-WAIT after the kernel's FIN.
                await stream.aclose()
                assert await sock.recv(1) == b""
                await pair.kernel_state_is("CLOSE-WAIT")
                await pair.stack_state_is(TcpState.FIN_WAIT_2)
            await pair.kernel_state_is(None)  # LAST-ACK acknowledged: gone
            await pair.stack_state_is(TcpState.TIME_WAIT)
            assert stream.tcp_state is TcpState.TIME_WAIT


async def test_stack_connects_to_kernel_listener_kernel_closes_first(
    tun_net: TunNet, family: int, pcap_path: Path
) -> None:
    kernel_addr, _ = addresses(tun_net, family)
    async with stack_on(tun_net, pcap_path) as stack:
        listening = trio.socket.socket(family, socket.SOCK_STREAM)
        with listening, trio.fail_after(STEP_TIMEOUT):
            await listening.bind((kernel_addr, 0))
            listening.listen()
            port = listening.getsockname()[1]
            stream = await stack.connect(kernel_addr, port)
            sock, _ = await listening.accept()
            pair = Pair(stack.runtime, sock, stream)
            with sock:
                await sock_send_all(sock, DATA)
                await stream.send_all(DATA[::-1])
                assert await recv_exactly(sock, len(DATA)) == DATA[::-1]
            # The kernel closes first (every byte it got was read: FIN, not RST).
            assert await receive_exactly(stream, len(DATA)) == DATA
            assert await stream.receive_some() == b""
            await pair.stack_state_is(TcpState.CLOSE_WAIT)
            await pair.kernel_state_is("FIN-WAIT-2")
            await stream.aclose()
            await pair.stack_state_is(TcpState.CLOSED)
            await pair.kernel_state_is("TIME-WAIT")
            assert stream.tcp_state is TcpState.CLOSED


# ---------------------------------------------------------------- passive open


async def test_stack_closes_first_and_sits_in_time_wait(
    tun_net: TunNet, family: int, pcap_path: Path
) -> None:
    async with kernel_to_stack(tun_net, family, pcap_path) as pair:
        await pair.stream.send_all(b"bye")
        await pair.stream.aclose()
        assert await recv_exactly(pair.sock, 3) == b"bye"
        assert await pair.sock.recv(1) == b""
        await pair.stack_state_is(TcpState.FIN_WAIT_2)
        await pair.kernel_state_is("CLOSE-WAIT")
        pair.sock.close()
        await pair.stack_state_is(TcpState.TIME_WAIT)
        await pair.kernel_state_is(None)


async def test_kernel_closes_first_and_sits_in_time_wait(
    tun_net: TunNet, family: int, pcap_path: Path
) -> None:
    async with kernel_to_stack(tun_net, family, pcap_path) as pair:
        await sock_send_all(pair.sock, b"bye")
        pair.sock.close()
        assert await receive_exactly(pair.stream, 3) == b"bye"
        assert await pair.stream.receive_some() == b""
        await pair.stack_state_is(TcpState.CLOSE_WAIT)
        await pair.kernel_state_is("FIN-WAIT-2")
        await pair.stream.aclose()
        await pair.stack_state_is(TcpState.CLOSED)
        await pair.kernel_state_is("TIME-WAIT")


async def test_kernel_reset_breaks_the_stack_stream(
    tun_net: TunNet, family: int, pcap_path: Path
) -> None:
    async with kernel_to_stack(tun_net, family, pcap_path) as pair:
        # SO_LINGER {on, 0 s}: close() sends RST (Linux tcp_disconnect).
        pair.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        pair.sock.close()
        with pytest.raises(trio.BrokenResourceError) as info:
            await pair.stream.receive_some()
        assert isinstance(info.value.__cause__, ConnectionResetByPeer)
        await pair.stack_state_is(TcpState.CLOSED)
        assert pair.stream.tcp_state is TcpState.CLOSED
        await pair.kernel_state_is(None)


async def test_stack_abort_resets_the_kernel_socket(
    tun_net: TunNet, family: int, pcap_path: Path
) -> None:
    async with kernel_to_stack(tun_net, family, pcap_path) as pair:
        await pair.stream.abort()
        with pytest.raises(ConnectionResetError):
            await pair.sock.recv(1)
        await pair.kernel_state_is(None)
        await pair.stack_state_is(TcpState.CLOSED)


async def test_stack_close_with_unread_data_resets(
    tun_net: TunNet, family: int, pcap_path: Path
) -> None:
    async with kernel_to_stack(tun_net, family, pcap_path) as pair:
        await sock_send_all(pair.sock, b"never read")
        await wait_for(
            lambda: (
                (flow := flow_of(pair.runtime, pair.stream)) is not None
                and flow.conn.recv_available == 10
            ),
            "the stack to buffer the data",
        )
        # Linux close(): unread received data means RST, not FIN (RFC 2525 §2.17).
        await pair.stream.aclose()
        with pytest.raises(ConnectionResetError):
            await pair.sock.recv(1)
        await pair.kernel_state_is(None)
        await pair.stack_state_is(TcpState.CLOSED)


async def test_kernel_half_close_stack_keeps_sending(
    tun_net: TunNet, family: int, pcap_path: Path
) -> None:
    async with kernel_to_stack(tun_net, family, pcap_path) as pair:
        await sock_send_all(pair.sock, b"request")
        pair.sock.shutdown(socket.SHUT_WR)
        assert await receive_exactly(pair.stream, 7) == b"request"
        assert await pair.stream.receive_some() == b""
        await pair.stack_state_is(TcpState.CLOSE_WAIT)
        await pair.kernel_state_is("FIN-WAIT-2")
        # The other direction still works after the half-close.
        await pair.stream.send_all(DATA)
        assert await recv_exactly(pair.sock, len(DATA)) == DATA
        await pair.stream.send_eof()
        assert await pair.sock.recv(1) == b""
        await pair.kernel_state_is("TIME-WAIT")
        await pair.stack_state_is(TcpState.CLOSED)
        await pair.stream.aclose()


async def test_stack_half_close_kernel_keeps_sending(
    tun_net: TunNet, family: int, pcap_path: Path
) -> None:
    async with kernel_to_stack(tun_net, family, pcap_path) as pair:
        await pair.stream.send_all(b"request")
        await pair.stream.send_eof()
        assert await recv_exactly(pair.sock, 7) == b"request"
        assert await pair.sock.recv(1) == b""
        await pair.kernel_state_is("CLOSE-WAIT")
        await pair.stack_state_is(TcpState.FIN_WAIT_2)
        await sock_send_all(pair.sock, DATA)
        assert await receive_exactly(pair.stream, len(DATA)) == DATA
        pair.sock.shutdown(socket.SHUT_WR)
        assert await pair.stream.receive_some() == b""
        await pair.stack_state_is(TcpState.TIME_WAIT)
        await pair.kernel_state_is(None)
        await pair.stream.aclose()
        assert pair.stack_state() is TcpState.TIME_WAIT
