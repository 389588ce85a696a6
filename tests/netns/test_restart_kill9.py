"""``stcp run`` killed with SIGKILL mid-transfer and restarted at once, real Redis store.

The client is the Linux kernel's TCP (``kernel_peer.py`` in its own process); it must
never see an error, and every byte is checked by its stream offset. The server is a
child process killed at random instants (a seeded ``random.Random`` picks byte offsets
of the transfer) and restarted at once with the same ``--instance``: it restores every
flow from the private ``redis-server`` (DESIGN.md "Recovery", G1-G3). Stall figures are
printed (``pytest -s``), never asserted.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import trio
from kernel_peer import wait_for, wait_for_kernel_state
from netns_fixtures import TunNet
from restart_helpers import (
    GB,
    MB,
    Peer,
    RedisServer,
    StcpServer,
    kill_offsets,
    report,
    server_for,
    stall_after,
    stcp_command,
)

pytestmark = [pytest.mark.slow, pytest.mark.netns]

CHARGEN_PORT = 19
ECHO_PORT = 7
DISCARD_PORT = 9


# ACK-on-commit changes what survives a crash (the client's own unacknowledged bytes
# instead of stored ones), so the tests that send to the server run in both modes.
DURABILITIES = pytest.mark.parametrize("durability", ["strict", "ack-on-commit"])


async def transfer_with_kills(
    server: StcpServer, peer: Peer, offsets: list[int], rng: random.Random
) -> list[float]:
    """Kill -9 and restart ``server`` when ``peer`` passes each offset (plus a random
    delay of up to 50 ms); returns the kill instants."""
    kills: list[float] = []
    for offset in offsets:
        await peer.wait_offset(offset)
        await trio.sleep(rng.uniform(0.0, 0.05))
        killed_at, _ = await server.restart()
        kills.append(killed_at)
    return kills


def kill_report(server: StcpServer, kills: list[float], stalls: list[list[float]]) -> list[str]:
    """One line per kill: restart time (exec -> serving) and the client's stall."""
    lines = [f"first start: {server.incarnations[0].start_seconds:.3f} s exec -> serving"]
    for k, killed_at in enumerate(kills):
        until = kills[k + 1] if k + 1 < len(kills) else float("inf")
        stall = stall_after(stalls, killed_at, until)
        life = server.incarnations[k + 1]
        lines.append(
            f"kill {k + 1}: restart {life.start_seconds:.3f} s exec -> serving "
            f"(epoch {life.epoch}, {life.restored} restored); client stall "
            + (f"{stall:.3f} s" if stall is not None else "< 0.02 s")
        )
    return lines


@pytest.mark.parametrize("tun_net", [65000], indirect=True)
@pytest.mark.timeout(150)
async def test_chargen_1gb_with_five_kills_is_byte_exact(
    tun_net: TunNet, redis_server: RedisServer, tmp_path: Path
) -> None:
    rng = random.Random(864)
    size = GB
    server = server_for("chargen", CHARGEN_PORT, tun_net, redis_server, tmp_path)
    async with server.session():
        async with trio.open_nursery() as nursery:
            peer = await Peer.start(
                nursery, "chargen", tun_net.stack_addr, CHARGEN_PORT, size, progress=MB
            )
            with trio.fail_after(120):
                kills = await transfer_with_kills(server, peer, kill_offsets(rng, size, 5), rng)
                result = await peer.result()
        counters = await server.stop()
    lines = kill_report(server, kills, result["stalls"])
    lines.append(f"transfer: {size / MB:.0f} MB in {result['seconds']:.1f} s")
    report("chargen 1 GB, 5 kills", lines)
    assert result["error"] is None, (result["error"], server.stderr_tail())
    assert result["received"] == size
    assert result["mismatch_at"] is None
    assert [life.restored for life in server.incarnations] == [0, 1, 1, 1, 1, 1]
    assert counters.get("rst_sent", 0) == 0, counters


@DURABILITIES
@pytest.mark.parametrize("tun_net", [65000], indirect=True)
@pytest.mark.timeout(120)
async def test_echo_100mb_with_ten_kills_is_byte_exact(
    tun_net: TunNet, redis_server: RedisServer, tmp_path: Path, durability: str
) -> None:
    rng = random.Random(862)
    size = 100 * MB
    server = server_for("echo", ECHO_PORT, tun_net, redis_server, tmp_path, durability)
    async with server.session():
        async with trio.open_nursery() as nursery:
            peer = await Peer.start(
                nursery, "echo", tun_net.stack_addr, ECHO_PORT, size, seed=862, progress=MB
            )
            with trio.fail_after(100):
                kills = await transfer_with_kills(server, peer, kill_offsets(rng, size, 10), rng)
                result = await peer.result()
        counters = await server.stop()
    lines = kill_report(server, kills, result["stalls"])
    lines.append(
        f"transfer: {result['received'] / MB:.1f} of {size / MB:.0f} MB echoed in "
        f"{result['seconds']:.1f} s; first wrong byte at {result['mismatch_at']}"
    )
    report(f"echo 100 MB, 10 kills, {durability}", lines)
    assert result["error"] is None and result["sender_errors"] == [], (
        result["error"],
        result["sender_errors"],
        server.stderr_tail(),
    )
    # Level 2 (G4): echo answers and commits each input atomically, so no byte is
    # lost or echoed twice across the kills.
    assert result["mismatch_at"] is None
    assert result["received"] == size
    assert [life.restored for life in server.incarnations] == [0] + [1] * 10
    assert counters.get("rst_sent", 0) == 0, counters


@DURABILITIES
@pytest.mark.parametrize("tun_net", [65000], indirect=True)
@pytest.mark.timeout(150)
async def test_discard_upload_of_1gb_with_five_kills_completes(
    tun_net: TunNet, redis_server: RedisServer, tmp_path: Path, durability: str
) -> None:
    """The client's send of 1 GB completes without an error and the server's FIN comes
    after it (the kernel's TIME-WAIT proves the FIN exchange), the server forgets the
    flow, and -- level 2 (G4) -- the discard service, which commits its byte count and
    CRC-32 with the stream offset every MiB, reports exactly the bytes that were sent,
    each counted once across the kills."""
    rng = random.Random(863)
    size = GB
    server = server_for("discard", DISCARD_PORT, tun_net, redis_server, tmp_path, durability)
    peer_endpoint = (tun_net.stack_addr, DISCARD_PORT)
    async with server.session():
        async with trio.open_nursery() as nursery:
            peer = await Peer.start(
                nursery, "send", tun_net.stack_addr, DISCARD_PORT, size, seed=863, progress=MB
            )
            with trio.fail_after(130):
                kills = await transfer_with_kills(server, peer, kill_offsets(rng, size, 5), rng)
                result = await peer.result()
        local = (result["local"][0], result["local"][1])
        await wait_for_kernel_state(local, peer_endpoint, "TIME-WAIT")
        await wait_for(lambda: not redis_server.flow_ids("t1"), "the server to forget the flow")
        counters = await server.stop()
    lines = kill_report(server, kills, result["stalls"])
    lines.append(f"transfer: {size / MB:.0f} MB sent in {result['seconds']:.1f} s")
    report(f"discard 1 GB upload, 5 kills, {durability}", lines)
    assert result["sent"] == size
    assert result["tail"] == "", "the server's FIN, not data, ends the upload"
    reports = [line for life in server.incarnations
               for line in life.stderr_path.read_text().splitlines()
               if line.startswith("stcp: discard: ")]  # fmt: skip
    assert reports == [f"stcp: discard: received {size} bytes, crc32 {result['crc32']}"]
    assert [life.restored for life in server.incarnations] == [0, 1, 1, 1, 1, 1]
    assert counters.get("rst_sent", 0) == 0, counters


IDLE_CONNECTIONS = 1000


@pytest.mark.parametrize("tun_net", [65000], indirect=True)
@pytest.mark.timeout(120)
async def test_1000_idle_echo_connections_survive_a_kill(
    tun_net: TunNet, redis_server: RedisServer, tmp_path: Path
) -> None:
    rng = random.Random(1000)
    server = server_for("echo", ECHO_PORT, tun_net, redis_server, tmp_path)
    async with server.session():
        async with trio.open_nursery() as nursery:
            peer = await Peer.start(
                nursery, "idle", tun_net.stack_addr, ECHO_PORT, 1000, seed=1000,
                progress=0, connections=IDLE_CONNECTIONS,
            )  # fmt: skip
            with trio.fail_after(100):
                await peer.ready.wait()
                await trio.sleep(rng.uniform(0.0, 0.2))
                killed_at, life = await server.restart()
                await peer.go()
                result = await peer.result()
        counters = await server.stop()
    report(
        "1,000 idle echo connections, 1 kill",
        [
            f"first start: {server.incarnations[0].start_seconds:.3f} s exec -> serving",
            f"restart with {life.restored} flows: {life.start_seconds:.3f} s exec -> serving",
            f"second echo round on all: {result['second_round_seconds']:.2f} s",
        ],
    )
    del killed_at
    assert result["first_round_failed"] == {}
    assert life.restored == IDLE_CONNECTIONS
    assert result["second_round_failed"] == {}, list(result["second_round_failed"].items())[:5]
    assert result["close_failed"] == {}, list(result["close_failed"].items())[:5]
    assert counters.get("rst_sent", 0) == 0, counters


@pytest.mark.parametrize("tun_net", [65000], indirect=True)
@pytest.mark.timeout(120)
async def test_a_standby_takes_over_a_killed_server_without_a_process_start(
    tun_net: TunNet, redis_server: RedisServer, tmp_path: Path
) -> None:
    """``stcp run --standby`` starts while another process serves the device -- imports
    and store done, and a duplicate of the server's TUN queue in hand, unread -- and
    waits. The server is killed with SIGKILL; the standby claims the queue as the kernel
    frees it, reads what queued up meanwhile and restores the connection: the client's
    echo goes on byte-exact, after a stall of the restore rather than a process start."""
    size = 50 * MB
    active = server_for("echo", ECHO_PORT, tun_net, redis_server, tmp_path)
    spare = server_for("echo", ECHO_PORT, tun_net, redis_server, tmp_path, label="standby")
    async with active.session() as first:
        try:
            await spare.start(standby=True)
            # Meanwhile a plain start on the device is refused: it would attach a new
            # queue beside the one the standby keeps attached, and nobody reads that.
            plain = await trio.run_process(
                stcp_command("run", "echo", "--dev", tun_net.dev, "--listen",
                             f"{tun_net.stack_addr}:{ECHO_PORT}", "--store", redis_server.url),
                capture_stdout=True, capture_stderr=True, check=False,
            )  # fmt: skip
            async with trio.open_nursery() as nursery:
                peer = await Peer.start(
                    nursery, "echo", tun_net.stack_addr, ECHO_PORT, size, seed=866, progress=MB
                )
                with trio.fail_after(60):
                    await peer.wait_offset(size // 3)
                    killed_at = await active.kill()
                    await spare.wait_serving(spare.current)
                    result = await peer.result()
            counters = await spare.stop()
        finally:
            await spare.aclose()
    took_over = spare.current.serving_at - killed_at
    stall = stall_after(result["stalls"], killed_at, float("inf"))
    report(
        "standby takeover after kill -9, echo 50 MB",
        [
            f"first start: {first.start_seconds:.3f} s exec -> serving",
            f"kill -> standby serving: {took_over:.3f} s; client stall "
            + (f"{stall:.3f} s" if stall is not None else "< 0.02 s"),
            f"transfer: {result['received'] / MB:.0f} MB in {result['seconds']:.1f} s",
        ],
    )
    assert result["error"] is None and result["sender_errors"] == [], result
    assert result["received"] == size and result["mismatch_at"] is None
    assert spare.current.standby_line.endswith("its queue held meanwhile")
    lines = plain.stderr.decode().splitlines()
    assert plain.returncode == 2 and len(lines) == 1 and "a standby" in lines[0], lines
    assert spare.current.restored == 1
    assert counters.get("rst_sent", 0) == 0, counters
