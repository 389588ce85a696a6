"""1,000 concurrent kernel connections to the stack's echo service, every byte checked."""

from __future__ import annotations

import random
import resource
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
from kernel_peer import stack_on, wait_for
from netns_fixtures import TunNet

from stcp_framework.services import echo

CONNECTIONS = 1000
PORT = 7
TEST_TIMEOUT = 60.0  # seconds; the run takes a few seconds

pytestmark = [pytest.mark.slow, pytest.mark.netns, pytest.mark.timeout(120)]


@pytest.fixture
def enough_file_descriptors() -> Iterator[None]:
    """1,000 client sockets need more than the usual soft limit of 1,024 descriptors."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 4 * CONNECTIONS
    if hard != resource.RLIM_INFINITY:
        wanted = min(wanted, hard)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, wanted), hard))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def payload_of(index: int) -> bytes:
    """Distinct data per connection, 4-16 KB."""
    rng = random.Random(index)
    return rng.randbytes(rng.randrange(4096, 16385))


async def test_1000_concurrent_echo_connections_are_byte_exact(
    tun_net: TunNet, pcap_path: Path, enough_file_descriptors: None
) -> None:
    echoed: dict[int, bytes] = {}

    async def client(index: int) -> None:
        data = payload_of(index)
        stream = await trio.open_tcp_stream(tun_net.stack_addr, PORT)
        async with stream:
            await stream.send_all(data)
            await stream.send_eof()
            chunks: list[bytes] = []
            while chunk := await stream.receive_some(65536):
                chunks.append(chunk)
        echoed[index] = b"".join(chunks)

    async with stack_on(tun_net, pcap_path) as stack:
        runtime = stack.runtime
        async with trio.open_nursery() as nursery:
            await nursery.start(stack.serve, echo, PORT)
            with trio.fail_after(TEST_TIMEOUT):
                async with trio.open_nursery() as clients:
                    for index in range(CONNECTIONS):
                        clients.start_soon(client, index)
                # The kernel closed last-but-one (FIN after the echo's FIN): every stack
                # flow goes LAST-ACK -> CLOSED and leaves the table.
                await wait_for(lambda: not runtime.flows, "every stack flow to close")
            nursery.cancel_scope.cancel()
        stats = dict(runtime.stats)
    assert stats["passive_opens"] == CONNECTIONS
    wrong = [i for i in range(CONNECTIONS) if echoed.get(i) != payload_of(i)]
    assert wrong == []
