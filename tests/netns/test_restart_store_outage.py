"""G7 with a real ``redis-server``: the store goes away for 5 s in the middle of a transfer.

Two kinds of outage: the server frozen (``SIGSTOP`` ... ``SIGCONT``: commands time out,
the socket stays), and the server shut down and started again from its AOF (connections
refused, then a new server with the same data). Either way the stack must stop
acknowledging and sending what is not durable, keep the connection, and resume when the
store is back: the kernel client completes its transfer byte-exact and never sees an
error, and the server's counters show that it noticed (``store_unavailable``) and held
segments back (``segments_withheld``).
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import trio
from netns_fixtures import TunNet
from restart_helpers import MB, Peer, RedisServer, report, server_for, stall_after

pytestmark = [pytest.mark.slow, pytest.mark.netns, pytest.mark.timeout(90)]

OUTAGE_SECONDS = 5.0
SIZE = 100 * MB
OUTAGE_AT = 30 * MB  # client offset at which the store goes away


async def outage(store: RedisServer, kind: str) -> None:
    """Take the store away for ``OUTAGE_SECONDS``, then bring it back."""
    if kind == "sigstop":
        store.pause()
        await trio.sleep(OUTAGE_SECONDS)
        store.resume()
    else:
        await trio.to_thread.run_sync(store.stop)  # SIGTERM: Redis writes its AOF
        await trio.sleep(OUTAGE_SECONDS)
        await trio.to_thread.run_sync(store.start)  # loads the AOF


@pytest.mark.parametrize("tun_net", [65000], indirect=True)
@pytest.mark.parametrize(
    ("kind", "service", "port"),
    [("sigstop", "chargen", 19), ("restart", "echo", 7)],
    ids=["sigstop-chargen", "restart-from-aof-echo"],
)
async def test_store_outage_of_5s_mid_transfer_loses_nothing(
    tun_net: TunNet,
    redis_server: RedisServer,
    tmp_path: Path,
    kind: str,
    service: str,
    port: int,
) -> None:
    server = server_for(service, port, tun_net, redis_server, tmp_path)
    try:
        async with server.session():
            async with trio.open_nursery() as nursery:
                peer = await Peer.start(
                    nursery, service, tun_net.stack_addr, port, SIZE, seed=7, progress=MB
                )
                with trio.fail_after(60):
                    await peer.wait_offset(OUTAGE_AT)
                    outage_at = time.monotonic()
                    await outage(redis_server, kind)
                    result = await peer.result()
            counters = await server.stop()
    finally:
        if redis_server.paused:  # never leave the store frozen
            redis_server.resume()
    stall = stall_after(result["stalls"], outage_at, float("inf"))
    report(
        f"store outage ({kind}, {OUTAGE_SECONDS:g} s) during {service}",
        [
            f"client stall: {stall:.3f} s" if stall is not None else "client stall: none",
            f"transfer: {SIZE / MB:.0f} MB in {result['seconds']:.1f} s",
            "counters: " + ", ".join(f"{k}={v}" for k, v in sorted(counters.items())),
        ],
    )
    assert result["error"] is None, result["error"]
    assert result.get("sender_errors", []) == []
    assert result["received"] == SIZE
    assert result["mismatch_at"] is None
    assert counters.get("store_unavailable", 0) >= 1, counters
    assert counters.get("segments_withheld", 0) >= 1, counters
    assert counters.get("rst_sent", 0) == 0, counters
    assert counters.get("flows_lost", 0) == 0, counters
    assert stall is not None and stall >= OUTAGE_SECONDS / 2, "the transfer paused meanwhile"
    # and resumed once the store was back: within a retransmission timeout backed off
    # during the outage, not a minute later (F-RTO once waited in step 3 while every
    # ACK SACKed its new data: 5 segments per ~7 s after the outage)
    assert stall <= OUTAGE_SECONDS + 15, f"the transfer stalled {stall:.1f} s"


@pytest.mark.parametrize("tun_net", [65000], indirect=True)
async def test_a_server_restarted_while_the_store_is_frozen_waits_for_it(
    tun_net: TunNet, redis_server: RedisServer, tmp_path: Path
) -> None:
    """Kill -9 while Redis is frozen (``SIGSTOP``), start again at once: the new process
    cannot claim its flows until Redis answers. It waits for it -- one warning line
    per try, no traceback, no exit -- then restores the connection, which the kernel
    client never sees break."""
    server = server_for("echo", 7, tun_net, redis_server, tmp_path)
    try:
        async with server.session():
            async with trio.open_nursery() as nursery:
                peer = await Peer.start(
                    nursery, "echo", tun_net.stack_addr, 7, 20 * MB, seed=9, progress=MB
                )
                with trio.fail_after(60):
                    await peer.wait_offset(5 * MB)
                    redis_server.pause()
                    await server.kill()

                    async def thaw() -> None:
                        await trio.sleep(OUTAGE_SECONDS / 2)
                        redis_server.resume()

                    nursery.start_soon(thaw)
                    life = await server.start()  # "serving" only once Redis answers
                    result = await peer.result()
            counters = await server.stop()
    finally:
        if redis_server.paused:
            redis_server.resume()
    stderr = life.stderr_path.read_text()
    report(
        "restart while the store is frozen",
        [
            f"exec -> serving {life.start_seconds:.3f} s (store frozen for "
            f"{OUTAGE_SECONDS / 2:g} s), {life.restored} restored",
            f"transfer: {result['received'] / MB:.0f} MB in {result['seconds']:.1f} s",
        ],
    )
    assert "Traceback" not in stderr, stderr[-2000:]
    assert "store unavailable at start" in stderr
    assert life.restored == 1 and life.start_seconds >= OUTAGE_SECONDS / 2 - 0.5
    assert result["error"] is None and result.get("sender_errors", []) == []
    assert result["received"] == 20 * MB and result["mismatch_at"] is None
    assert counters.get("rst_sent", 0) == 0, counters
