"""``check_stcp_stream``: trio's generic stream conformance suite, run on stcp streams.

Theory of operation:
    ``trio.testing.check_half_closeable_stream`` needs a *stream maker* (a connected
    ``(client, server)`` pair per call) and optionally a *clogged* stream maker: a pair
    in which ``send_all`` and ``wait_send_all_might_not_block`` block until the other
    side calls ``receive_some`` (in both directions, as the pair is also used flipped).
    For TCP that is flow control doing its job: each end sends until the other's
    receive buffer is full (the advertised window is zero, RFC 9293 §3.8.6) and its own
    send buffer is full (G6). Small buffers make that quick; each direction then sits
    in persist mode (RFC 9293 §3.8.6.1) until the receiver reads.
"""

from __future__ import annotations

import trio
import trio.testing

from ..api import Stream
from ..tcp.config import TcpConfig
from ._sim_pair import open_sim_pair

CHECK_PORT = 7
CHECK_CONFIG = TcpConfig(recv_buffer_size=64 * 1024, send_buffer_size=64 * 1024)
"""Small buffers, so that clogging a stream takes 128 KiB instead of 8 MiB."""

_CLOG_SETTLE = 1.0  # virtual seconds for in-flight segments to land
_CLOG_MAX_ROUNDS = 1000


def send_space(stream: Stream) -> int:
    """Bytes ``stream.send_all`` would accept now without waiting (0 once closed)."""
    flow = stream._flow
    return 0 if flow.closed else flow.conn.send_space


def connection_counters(stream: Stream) -> dict[str, int]:
    """The TCP machine's event counters of ``stream``'s connection (a copy).

    Keys include ``retransmit``, ``rto``, ``fast_retransmit``, ``syn_retransmit``,
    ``zero_window_probe``, ``out_of_window``, ``rst_received``; absent keys are 0.
    """
    return dict(stream._flow.conn.counters)


async def clog(stream: Stream) -> None:
    """Send zeros on ``stream`` until the peer's window and our send buffer are both full.

    Afterwards ``stream.send_all`` and ``stream.wait_send_all_might_not_block`` block
    until the peer reads. The peer must not be reading meanwhile.

    Raises:
        RuntimeError: the stream did not clog (the peer keeps reading).
    """
    chunk = memoryview(bytes(64 * 1024))
    for _ in range(_CLOG_MAX_ROUNDS):
        space = send_space(stream)
        if space:
            await stream.send_all(chunk[: min(space, len(chunk))])
            continue
        await trio.sleep(_CLOG_SETTLE)
        if send_space(stream) == 0:
            return
    raise RuntimeError("the stream did not clog: is the peer reading?")


async def check_stcp_stream(
    *,
    seed: int = 0,
    config: TcpConfig | None = None,
    ipv6: bool = False,
    loss: float = 0.0,
    duplicate: float = 0.0,
    reorder: float = 0.0,
    delay: float = 0.001,
) -> None:
    """Run ``trio.testing.check_half_closeable_stream`` on stcp streams over the simulator.

    Every stream pair is a fresh connection between the two stacks of one
    ``open_sim_pair(seed, ...)``; the clogged pairs are connections whose two ends
    have each filled the other's receive buffer (zero window both ways). Run it under
    ``trio.testing.MockClock(autojump_threshold=0)``; a lossy network (``loss`` > 0)
    checks the same contract through retransmissions.

    Args:
        seed: Seed of the simulated network and both stacks.
        config: TCP settings of both stacks; default ``CHECK_CONFIG`` (64 KiB buffers).
        ipv6: Run over IPv6 instead of IPv4.
        loss, duplicate, reorder, delay: Faults of the simulated network.

    Raises:
        AssertionError: a conformance check failed.
    """
    async with open_sim_pair(
        seed,
        loss=loss,
        duplicate=duplicate,
        reorder=reorder,
        delay=delay,
        config=config or CHECK_CONFIG,
        ipv6=ipv6,
    ) as pair:
        listener = pair.server.listen(CHECK_PORT)

        async def stream_maker() -> tuple[Stream, Stream]:
            return await pair.stream_pair(listener)

        async def clogged_stream_maker() -> tuple[Stream, Stream]:
            client_stream, server_stream = await pair.stream_pair(listener)
            # Both directions: check_two_way_stream also uses the pair flipped.
            await clog(client_stream)
            await clog(server_stream)
            return client_stream, server_stream

        await trio.testing.check_half_closeable_stream(stream_maker, clogged_stream_maker)
        await listener.aclose()
