"""Partitions, corruption and many connections over the simulated network.

Each test seeds the network, both stacks and trio's scheduler, and runs on trio's
``MockClock(autojump_threshold=0)``; budgets and times are virtual seconds.
"""

from __future__ import annotations

import pytest
import trio
import trio.testing
from sim_helpers import (
    check_conservation,
    expected,
    payload,
    seed_trio_scheduler,
    transfer_both_ways,
)

from stcp_framework.api import Stream
from stcp_framework.errors import ConnectionTimedOut
from stcp_framework.link.sim import TapEvent
from stcp_framework.services import echo
from stcp_framework.tcp.config import TcpConfig
from stcp_framework.tcp.state import TcpState
from stcp_framework.testing import connection_counters, open_sim_pair
from stcp_framework.wire.drop import DropReason

MB = 1_000_000
BUDGET = 3600.0


# ---------------------------------------------------------------- partitions


@pytest.mark.slow
async def test_partition_that_heals_mid_transfer(autojump_clock: trio.testing.MockClock) -> None:
    """Cut both directions after 1,000 packets for 5 s: RTO backoff carries the
    connection across (RFC 6298 (5.5)), and the transfer completes byte-exact."""
    seed = 2000
    seed_trio_scheduler(seed)
    cut = trio.Event()
    outage = 5.0
    healed_after: list[float] = []
    with trio.fail_after(BUDGET):
        async with open_sim_pair(seed, loss=0.01) as pair, trio.open_nursery() as nursery:

            def tap(event: TapEvent) -> None:
                if event.phase == "send" and event.number == 1000:
                    pair.network.partition(pair.client_link, pair.server_link)
                    cut.set()

            async def heal_later() -> None:
                await cut.wait()
                cut_at = trio.current_time()
                await trio.sleep(outage)
                pair.network.heal()
                healed_after.append(trio.current_time() - cut_at)

            pair.network.tap = tap
            nursery.start_soon(heal_later)
            result = await transfer_both_ways(pair, 2 * MB, seed=seed)
            assert (result.upload, result.download) == expected(seed, 2 * MB)
            check_conservation(pair)
    assert healed_after == [pytest.approx(outage)]
    assert result.elapsed > outage
    partition_drops = pair.network.counters.dropped_by_reason["partition"]
    assert partition_drops > 0
    # Only retransmission timeouts recover from an outage (no ACKs come back).
    assert result.client_counters.get("rto", 0) + result.server_counters.get("rto", 0) > 0
    # Backoff doubles from at least min_rto (0.2 s): at most ~log2(5 / 0.2) + 1 tries
    # per direction fall into a 5 s hole, plus the segments in flight when it opened.
    assert partition_drops < 200


async def test_partition_that_never_heals_times_out_both_ends(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Retransmissions exhausted: BrokenResourceError caused by ConnectionTimedOut."""
    seed = 2001
    seed_trio_scheduler(seed)
    config = TcpConfig(max_retries=4)
    with trio.fail_after(BUDGET):
        async with open_sim_pair(seed, config=config) as pair:
            listener = pair.server.listen(5001)
            client, server = await pair.stream_pair(listener)
            pair.network.partition(pair.client_link, pair.server_link)
            start = trio.current_time()

            async def expect_timeout(stream: Stream) -> None:
                await stream.send_all(b"x" * 10_000)
                with pytest.raises(trio.BrokenResourceError) as info:
                    await stream.receive_some(10)
                assert isinstance(info.value.__cause__, ConnectionTimedOut)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(expect_timeout, client)
                nursery.start_soon(expect_timeout, server)
            elapsed = trio.current_time() - start
            # RTO 0.2 s (min_rto) doubling: four retransmissions at 0.2, 0.6, 1.4, 3.0 s,
            # and the fifth expiry (3.0 + 3.2 s) gives up.
            assert 6.2 <= elapsed < 7.0
            assert connection_counters(client)["rto"] == config.max_retries
            assert client.tcp_state is TcpState.CLOSED
            assert not pair.client.runtime.flows
            assert not pair.server.runtime.flows


# ---------------------------------------------------------------- corruption


@pytest.mark.slow
async def test_corrupted_packets_are_dropped_and_counted(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Every flipped bit is caught by an IPv4 header or TCP checksum (RFC 1071: one-bit
    errors always change the ones' complement sum), counted, and repaired by
    retransmission."""
    seed = 2002
    seed_trio_scheduler(seed)
    with trio.fail_after(BUDGET):
        async with open_sim_pair(seed, corrupt=0.02) as pair:
            result = await transfer_both_ways(pair, 2 * MB, seed=seed)
            assert (result.upload, result.download) == expected(seed, 2 * MB)
            check_conservation(pair)
            corrupted = pair.network.counters.corrupted
            drops = pair.client.runtime.drops + pair.server.runtime.drops
    assert corrupted > 50
    assert drops[DropReason.BAD_TCP_CHECKSUM] > 0
    assert drops[DropReason.BAD_IP_CHECKSUM] > 0
    malformed = sum(n for reason, n in drops.items() if reason is not DropReason.NO_FLOW)
    assert malformed == corrupted
    assert result.client_counters.get("retransmit", 0) > 0


# ----------------------------------------------------------- many connections


@pytest.mark.slow
async def test_two_hundred_concurrent_connections_over_a_lossy_link(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """200 clients each echo 20 kB through one server at 2 % loss; all byte-exact."""
    seed = 2003
    seed_trio_scheduler(seed)
    count, size = 200, 20_000
    done: list[int] = []
    with trio.fail_after(BUDGET):
        async with (
            open_sim_pair(seed, loss=0.02, jitter=0.001) as pair,
            trio.open_nursery() as servers,
        ):
            await servers.start(pair.server.serve, echo, 7)

            async def client(index: int) -> None:
                data = payload(seed + index, size)
                stream = await pair.client.connect(pair.server_address, 7)
                got = bytearray()

                async def send() -> None:
                    await stream.send_all(data)
                    await stream.send_eof()

                async with trio.open_nursery() as nursery:
                    nursery.start_soon(send)
                    while chunk := await stream.receive_some():
                        got += chunk
                assert bytes(got) == data, f"connection {index}"
                await stream.aclose()
                done.append(index)

            async with trio.open_nursery() as clients:
                for index in range(count):
                    clients.start_soon(client, index)
            await trio.sleep(1)  # the servers' last ACKs land
            assert sorted(done) == list(range(count))
            # The server closed second on every connection: no flow left there.
            # The clients closed first and hold TIME-WAIT (RFC 9293 §3.6), except where
            # jitter delivered a stale duplicate ACK to the server after its flow was
            # gone: its RST (seq = that ACK's ack = the client's RCV.NXT) ends the
            # client's TIME-WAIT early, as RFC 9293 §3.10.7.4 and Linux
            # (tcp_rfc1337 = 0) do; RFC 1337's protection is optional.
            assert not pair.server.runtime.flows
            states = {f.conn.state for f in pair.client.runtime.flows.values()}
            assert states <= {TcpState.TIME_WAIT}
            assert len(pair.client.runtime.flows) > count // 2
            assert pair.server.runtime.stats["passive_opens"] == count
            assert pair.network.counters.dropped_by_reason["loss"] > 0
            servers.cancel_scope.cancel()
