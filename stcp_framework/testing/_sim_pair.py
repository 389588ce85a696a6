"""``open_sim_pair``: two running stacks joined by one seeded ``SimNetwork``.

Theory of operation:
    The pair is the smallest complete system: a client stack and a server stack, each
    on its own ``SimLink`` of one ``SimNetwork``, each with a ``MemoryStore``. Every source
    of randomness is derived from ``seed`` (the network's fault draws, each stack's
    ephemeral ports and timestamp offsets, each stack's RFC 6528 ISS secret), and every
    delay is on trio's clock. Run under ``trio.testing.MockClock(autojump_threshold=0)``
    and the same seed gives the same packets at the same virtual times (trio
    ``test_dtls.py`` ``FakeNet``; smoltcp ``examples/loopback.rs``).
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass

import trio

from ..api import Listener, Stack, Stream, open_stack
from ..link.sim import SimLink, SimNetwork, Tap
from ..tcp.config import TcpConfig

CLIENT_ADDRESS = "198.18.0.1"
SERVER_ADDRESS = "198.18.0.2"
CLIENT_ADDRESS6 = "2001:db8::1"
SERVER_ADDRESS6 = "2001:db8::2"


@dataclass(frozen=True, slots=True)
class SimPair:
    """Two running stacks over one simulated network (from ``open_sim_pair``).

    Attributes:
        network: The ``SimNetwork`` (fault settings, ``partition``/``heal``, counters).
        client: The client stack (``client.connect(pair.server_address, port)``).
        server: The server stack (``server.serve(handler, port)`` / ``server.listen``).
        client_link: The client's ``SimLink`` (per-link counters).
        server_link: The server's ``SimLink``.
        client_address: The client's IP address (text).
        server_address: The server's IP address (text).
    """

    network: SimNetwork
    client: Stack
    server: Stack
    client_link: SimLink
    server_link: SimLink
    client_address: str
    server_address: str

    async def stream_pair(self, listener: Listener) -> tuple[Stream, Stream]:
        """Connect the client to ``listener`` (on the server) and accept the connection.

        Returns:
            ``(client_stream, server_stream)``, both ESTABLISHED.
        """
        client_stream = await self.client.connect(self.server_address, listener.port)
        try:
            server_stream = await listener.accept()
        except BaseException:
            await trio.aclose_forcefully(client_stream)
            raise
        return client_stream, server_stream


def stack_rng(seed: int, role: str) -> random.Random:
    """The RNG a stack of the pair uses for ports and timestamp offsets."""
    return random.Random(f"stcp-{role}-{seed}")


def stack_iss_secret(seed: int, role: str) -> bytes:
    """The RFC 6528 ISS secret of a stack of the pair."""
    return f"stcp-iss-{role}-{seed}".encode()


@asynccontextmanager
async def open_sim_pair(
    seed: int,
    *,
    loss: float = 0.0,
    duplicate: float = 0.0,
    reorder: float = 0.0,
    corrupt: float = 0.0,
    delay: float = 0.001,
    jitter: float = 0.0,
    mtu: int = 1500,
    config: TcpConfig | None = None,
    ipv6: bool = False,
    tap: Tap | None = None,
) -> AsyncIterator[SimPair]:
    """Run a client and a server stack over one seeded ``SimNetwork`` until the block exits.

    The client answers for 198.18.0.1 and the server for 198.18.0.2 (with ``ipv6=True``:
    2001:db8::1 and 2001:db8::2). Use it under
    ``trio.testing.MockClock(autojump_threshold=0)`` (pytest-trio's ``autojump_clock``
    fixture) so that delays, retransmission timeouts and TIME-WAIT cost no wall time.

    Args:
        seed: Seeds the network's fault draws and both stacks' RNGs and ISS secrets.
        loss, duplicate, reorder, corrupt, delay, jitter, mtu, tap: passed to
            ``SimNetwork``.
        config: TCP settings of both stacks (MSS follows ``mtu`` unless set).
        ipv6: Use the IPv6 addresses instead of the IPv4 ones.

    Yields:
        A ``SimPair``.
    """
    network = SimNetwork(
        seed,
        loss=loss,
        duplicate=duplicate,
        reorder=reorder,
        corrupt=corrupt,
        delay=delay,
        jitter=jitter,
        mtu=mtu,
        tap=tap,
    )
    client_address, server_address = (
        (CLIENT_ADDRESS6, SERVER_ADDRESS6) if ipv6 else (CLIENT_ADDRESS, SERVER_ADDRESS)
    )
    client_link = network.attach(client_address)
    server_link = network.attach(server_address)

    def open_side(link: SimLink, address: str, role: str) -> AbstractAsyncContextManager[Stack]:
        return open_stack(
            link,
            [address],
            config=config,
            rng=stack_rng(seed, role),
            iss_secret=stack_iss_secret(seed, role),
        )

    try:
        async with (
            open_side(client_link, client_address, "client") as client,
            open_side(server_link, server_address, "server") as server,
        ):
            yield SimPair(
                network=network,
                client=client,
                server=server,
                client_link=client_link,
                server_link=server_link,
                client_address=client_address,
                server_address=server_address,
            )
    finally:
        with trio.CancelScope(shield=True):
            await client_link.aclose()
            await server_link.aclose()
