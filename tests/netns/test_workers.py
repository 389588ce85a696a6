"""``stcp run --workers N``: several processes on one multi-queue TUN device.

The kernel spreads the connections over the queues; each worker keeps its own flows
under its own instance name. Killing one worker with SIGKILL changes the number of
queues and their order, so segments reach workers that do not hold their flow: those
forward them (``stack/siblings.py``) instead of answering RST, and the restarted worker
restores its flows. The client is the kernel's TCP and must never see an error.
"""

from __future__ import annotations

import ipaddress
import os
import re
import signal
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio
from kernel_peer import wait_for
from netns_fixtures import TunNet
from restart_helpers import (
    RedisServer,
    StcpServer,
    all_counters,
    children_of,
    report,
    stcp_command,
)

from stcp_framework import MemoryStore, Stack, open_stack
from stcp_framework.errors import StcpConfigError
from stcp_framework.link.sim import SimLink, SimNetwork
from stcp_framework.link.tun import create_persistent_tun
from stcp_framework.services import echo
from stcp_framework.stack.siblings import Siblings
from stcp_framework.wire.icmp import build_too_big
from stcp_framework.wire.packet import build_packet, parse_packet_untrusted
from stcp_framework.wire.tcp import ACK, NO_OPTIONS, RST, SYN

pytestmark = [pytest.mark.netns]

ECHO_PORT = 7
CONNECTIONS = 32
MESSAGE = 3000  # bytes per connection per round


# ------------------------------------------------------------------ the ring itself


def test_forward_reaches_the_next_worker_with_its_hop_count() -> None:
    first, second = Siblings("ringtest0", 0, 2), Siblings("ringtest0", 1, 2)
    try:
        assert first.forward(memoryview(b"\x45packet"), 1)
        assert second.forward(b"\x45back", 1)

        async def receive_both() -> tuple[list[tuple[int, bytes]], list[tuple[int, bytes]]]:
            with trio.fail_after(5):
                got2 = [(h, bytes(p)) for h, p in await second.receive(8)]
                got1 = [(h, bytes(p)) for h, p in await first.receive(8)]
            return got1, got2

        got1, got2 = trio.run(receive_both)
        assert got2 == [(1, b"\x45packet")]
        assert got1 == [(1, b"\x45back")]
        assert first.last_hop == 1
    finally:
        first.close()
        second.close()


def test_forward_to_a_worker_that_is_down_fails_without_raising() -> None:
    lone = Siblings("ringtest1", 0, 3)
    try:
        assert not lone.forward(b"\x45packet", 1)  # worker 1 is not running
    finally:
        lone.close()


def test_a_datagram_from_another_user_is_dropped() -> None:
    """Abstract sockets have no permissions: the sender's uid is checked instead."""
    worker = Siblings("ringtest3", 1, 2)
    try:
        child = os.fork()
        if child == 0:  # pragma: no cover - the child process
            try:
                os.setuid(65534)  # nobody
                Siblings("ringtest3", 0, 2).forward(b"\x45forged", 1)
            finally:
                os._exit(0)
        os.waitpid(child, 0)
        sender = Siblings("ringtest3", 0, 2)  # index 0 is free again: the child is gone
        assert sender.forward(b"\x45ours", 1)
        sender.close()

        async def receive() -> list[tuple[int, bytes]]:
            with trio.fail_after(5):
                return [(h, bytes(p)) for h, p in await worker.receive(8)]

        assert trio.run(receive) == [(1, b"\x45ours")]
        assert worker.rejected == 1
    finally:
        worker.close()


def test_one_process_per_worker_index() -> None:
    held = Siblings("ringtest2", 1, 2)
    try:
        with pytest.raises(StcpConfigError, match="worker 1 of device ringtest2 is already"):
            Siblings("ringtest2", 1, 2)
        with pytest.raises(StcpConfigError, match="need 0 <= index < count"):
            Siblings("ringtest2", 2, 2)
    finally:
        held.close()


# ------------------------------------------------------------------ one worker's runtime

STACK, PEER = "198.18.0.2", "198.18.0.1"
STRAY_ACK = build_packet(
    ipaddress.ip_address(PEER).packed, ipaddress.ip_address(STACK).packed,
    40000, ECHO_PORT, 5000, 9000, ACK, 1000, NO_OPTIONS, b"",
)  # fmt: skip


@asynccontextmanager
async def _worker_and_peer(
    group: str, index: int, count: int
) -> AsyncIterator[tuple[Stack, SimLink]]:
    """Worker ``index`` of ``count`` serving echo, and a raw peer on the same network."""
    net = SimNetwork(1)
    link, peer = net.attach(STACK), net.attach(PEER)
    siblings = Siblings(group, index, count)
    try:
        async with (
            open_stack(link, [STACK], store=MemoryStore(), siblings=siblings) as stack,
            trio.open_nursery() as nursery,
        ):
            await nursery.start(stack.serve, echo, ECHO_PORT)
            yield stack, peer
            nursery.cancel_scope.cancel()
    finally:
        siblings.close()


async def _nothing_arrives(peer: SimLink) -> None:
    with trio.move_on_after(0.3):
        got = await peer.recv_batch(8)
        raise AssertionError(f"the peer got {[bytes(p) for p in got]}")


async def _passed_to_the_next_worker(ring: str, packet: bytes) -> Counter[str]:
    """Worker 0 of a ring of two gets ``packet`` from the peer: it must go to worker 1
    (one hop) and nothing back to the peer. Returns worker 0's stats."""
    next_worker = Siblings(ring, 1, 2)
    try:
        async with _worker_and_peer(ring, 0, 2) as (stack, peer):
            await peer.send_batch([packet])
            with trio.fail_after(5):
                forwarded = await next_worker.receive(8)
            assert [(hops, bytes(p)) for hops, p in forwarded] == [(1, bytes(packet))]
            await _nothing_arrives(peer)
            return stack.runtime.stats.copy()
    finally:
        next_worker.close()


async def test_a_segment_of_an_unknown_flow_goes_to_the_next_worker_not_rst() -> None:
    stats = await _passed_to_the_next_worker("rtring0", bytes(STRAY_ACK))
    assert stats["forwarded"] == 1
    assert stats["rst_sent"] == 0


async def test_the_last_worker_of_the_ring_answers_with_rst() -> None:
    previous = Siblings("rtring1", 0, 2)
    try:
        async with _worker_and_peer("rtring1", 1, 2) as (stack, peer):
            assert previous.forward(bytes(STRAY_ACK), 1)  # worker 0 did not hold the flow
            with trio.fail_after(5):
                [answer] = await peer.recv_batch(8)
            rst = parse_packet_untrusted(answer).tcp
            # RFC 9293 §3.10.7.1: <SEQ=SEG.ACK><CTL=RST> for a segment with ACK
            assert (rst.flags, rst.seq, rst.src_port, rst.dst_port) == (RST, 9000, 7, 40000)
            assert stack.runtime.stats["forwarded_in"] == 1
            assert stack.runtime.stats["rst_sent"] == 1
    finally:
        previous.close()


def _too_big_for_a_flow_elsewhere() -> bytes:
    """A router's ICMP fragmentation needed, quoting a segment from us to the peer of a
    flow the worker under test does not hold."""
    ours = build_packet(
        ipaddress.ip_address(STACK).packed, ipaddress.ip_address(PEER).packed,
        ECHO_PORT, 40000, 9000, 5000, ACK, 1000, NO_OPTIONS, b"x" * 1500,
    )  # fmt: skip
    return build_too_big(
        ipaddress.ip_address(PEER).packed, bytes(ours[12:16]), bytes(ours[:48]), 1400
    )


async def test_icmp_too_big_for_a_flow_elsewhere_goes_round_the_ring() -> None:
    too_big = _too_big_for_a_flow_elsewhere()
    stats = await _passed_to_the_next_worker("rtring4", too_big)
    assert stats["forwarded"] == 1
    previous = Siblings("rtring5", 0, 2)
    try:
        async with _worker_and_peer("rtring5", 1, 2) as (stack, peer):
            assert previous.forward(too_big, 1)  # the last worker: nobody holds the flow
            await _nothing_arrives(peer)
            assert stack.runtime.stats["forwarded_in"] == 1
            assert stack.runtime.stats["icmp_too_big_no_flow"] == 1
            assert stack.runtime.stats["forwarded"] == 0
    finally:
        previous.close()


async def test_a_segment_for_a_worker_that_is_down_is_dropped_silently() -> None:
    async with _worker_and_peer("rtring2", 0, 2) as (stack, peer):
        await peer.send_batch([STRAY_ACK])  # worker 1 is not running
        await _nothing_arrives(peer)
        assert stack.runtime.stats["forward_failed"] == 1
        assert stack.runtime.stats["rst_sent"] == 0


async def test_a_restored_half_open_connection_passes_a_sibling_s_ack_on() -> None:
    """Worker 0 got a SYN and stored its SYN-RECEIVED, then died; the peer's
    retransmitted SYN reached worker 1 meanwhile, and the peer completed the handshake
    with worker 1's SYN-ACK. Worker 0, restarted, restores its half-open connection;
    the peer's ACK -- of worker 1's SYN, not ours -- then reaches it. It goes round the
    ring, never answered with the RST that is exactly the peer's RCV.NXT (a restored
    flow has no backlog, and was answered so: a review found it)."""
    store, net = MemoryStore(), SimNetwork(1)
    peer, client, stack_addr = (
        net.attach(PEER),
        ipaddress.ip_address(PEER).packed,
        ipaddress.ip_address(STACK).packed,
    )
    next_worker = Siblings("rtring6", 1, 2)

    def from_peer(seq: int, ack: int, flags: int) -> bytearray:
        return build_packet(
            client, stack_addr, 40010, ECHO_PORT, seq, ack, flags, 1000, NO_OPTIONS, b""
        )

    try:
        iss = 0
        for life in (1, 2):
            link, siblings = net.attach(STACK), Siblings("rtring6", 0, 2)
            try:
                async with (
                    open_stack(
                        link, [STACK], store=store, siblings=siblings, instance="t.w0"
                    ) as stack,
                    trio.open_nursery() as nursery,
                ):
                    await nursery.start(stack.serve, echo, ECHO_PORT)
                    if life == 1:
                        syn = from_peer(7000, 0, SYN)
                        await peer.send_batch([syn])
                        with trio.fail_after(5):
                            [synack] = await peer.recv_batch(8)
                        iss = parse_packet_untrusted(synack).tcp.seq
                        await trio.sleep(0.3)  # SYN-RECEIVED stored; then the crash
                    else:
                        assert stack.runtime.restored == 1
                        with trio.move_on_after(0.3):
                            while True:
                                await peer.recv_batch(8)  # (the restore's SYN-ACK)
                        siblings_ack = (iss + 1_000_000) & 0xFFFFFFFF  # worker 1's SYN + 1
                        ack = from_peer(7001, siblings_ack, ACK)
                        await peer.send_batch([ack])
                        with trio.fail_after(5):
                            forwarded = await next_worker.receive(8)
                        assert [bytes(p) for _, p in forwarded] == [bytes(ack)]
                        await _nothing_arrives(peer)
                        assert stack.runtime.stats["half_open_passed_on"] == 1
                        assert stack.runtime.stats["rst_sent"] == 0
                    nursery.cancel_scope.cancel()
            finally:
                siblings.close()
                await link.aclose()
    finally:
        next_worker.close()


async def test_every_worker_accepts_a_syn_itself() -> None:
    async with _worker_and_peer("rtring3", 0, 2) as (stack, peer):
        syn = build_packet(
            ipaddress.ip_address(PEER).packed, ipaddress.ip_address(STACK).packed,
            40001, ECHO_PORT, 7000, 0, SYN, 1000, NO_OPTIONS, b"",
        )  # fmt: skip
        await peer.send_batch([syn])
        with trio.fail_after(5):
            [answer] = await peer.recv_batch(8)
        seg = parse_packet_untrusted(answer).tcp
        assert seg.flags == SYN | ACK and seg.ack == 7001
        assert stack.runtime.stats["forwarded"] == 0


async def test_an_ack_for_a_sibling_s_syn_ack_goes_round_the_ring_not_rst() -> None:
    """A SYN retransmitted while the queues change reached two workers, and both
    answered. The peer took the other worker's SYN-ACK; its ACK of that one reaches
    this worker, which holds the flow in SYN-RECEIVED with its own ISS. RFC 9293's RST
    (<SEQ=SEG.ACK>, the peer's RCV.NXT) would reset the connection the sibling just
    completed: the ACK goes to the next worker instead, and the half-open connection
    here is dropped silently. An ACK of our own SYN-ACK completes the handshake here."""
    ring = "rtring6"
    next_worker = Siblings(ring, 1, 2)
    peer_addr, stack_addr = ipaddress.ip_address(PEER).packed, ipaddress.ip_address(STACK).packed
    try:
        async with _worker_and_peer(ring, 0, 2) as (stack, peer):
            for port, ours in ((40002, False), (40003, True)):
                syn = build_packet(
                    peer_addr, stack_addr, port, ECHO_PORT, 7000, 0, SYN, 1000, NO_OPTIONS, b"",
                )  # fmt: skip
                await peer.send_batch([syn])
                with trio.fail_after(5):
                    [syn_ack] = await peer.recv_batch(8)
                iss = parse_packet_untrusted(syn_ack).tcp.seq
                acked = (iss + 1) if ours else (iss + 1_000_000)  # the sibling's ISS + 1
                ack = build_packet(
                    peer_addr, stack_addr, port, ECHO_PORT, 7001, acked & 0xFFFFFFFF, ACK,
                    1000, NO_OPTIONS, b"",
                )  # fmt: skip
                await peer.send_batch([ack])
                if not ours:
                    with trio.fail_after(5):
                        forwarded = await next_worker.receive(8)
                    assert [(hops, bytes(p)) for hops, p in forwarded] == [(1, bytes(ack))]
                    await _nothing_arrives(peer)
                    assert not stack.runtime.flows
                    assert stack.runtime.stats["half_open_passed_on"] == 1
                    assert stack.runtime.stats["rst_sent"] == 0
                else:
                    await wait_for(
                        lambda: any(f.connected for f in stack.runtime.flows.values()), "handshake"
                    )
                    assert stack.runtime.stats["half_open_passed_on"] == 1
    finally:
        next_worker.close()


# ------------------------------------------------------------------ real processes


async def _echo_round(streams: list[trio.SocketStream], round_number: int) -> None:
    async def one(i: int, stream: trio.SocketStream) -> None:
        message = (f"{round_number}:{i}:".encode() * MESSAGE)[:MESSAGE]
        await stream.send_all(message)
        got = bytearray()
        while len(got) < len(message):
            chunk = await stream.receive_some(65536)
            assert chunk, f"connection {i} ended in round {round_number}"
            got += chunk
        assert bytes(got) == message, f"connection {i}, round {round_number}"

    async with trio.open_nursery() as nursery:
        for i, stream in enumerate(streams):
            nursery.start_soon(one, i, stream)


def _two_workers(tun: TunNet, store: RedisServer, tmp_path: Path, *extra: str) -> StcpServer:
    """``stcp run echo --workers 2`` on ``tun`` (and ``extra`` options)."""
    return StcpServer(
        "echo", tun.dev, f"{tun.stack_addr}:{ECHO_PORT}", store.url, tmp_path / "stcp",
        extra=("--workers", "2", *extra),
    )  # fmt: skip


async def _connect_all(tun: TunNet) -> list[trio.SocketStream]:
    """``CONNECTIONS`` kernel connections to the echo port."""
    return [await trio.open_tcp_stream(tun.stack_addr, ECHO_PORT) for _ in range(CONNECTIONS)]


async def _new_child(parent: int, known: set[int]) -> int:
    """The first child process of ``parent`` not in ``known`` (polled, bounded)."""
    await wait_for(lambda: children_of(parent) - known, "a new worker", within=10)
    return (children_of(parent) - known).pop()


@pytest.mark.slow
async def test_two_workers_share_connections_and_survive_a_worker_kill(
    make_tun_net: Callable[..., TunNet], redis_server: RedisServer, tmp_path: Path
) -> None:
    tun = make_tun_net(mtu=65000)
    server = _two_workers(tun, redis_server, tmp_path)
    async with server.session() as first:
        with trio.fail_after(60):
            streams = await _connect_all(tun)
            for number in range(3):
                await _echo_round(streams, number)
            # The kernel spread the connections over both queues, so both workers
            # hold flows (all on one of two queues: a 2**-31 chance).
            held0 = redis_server.flow_ids("t1.w0")
            held1 = redis_server.flow_ids("t1.w1")
            assert held0 and held1 and len(held0) + len(held1) == CONNECTIONS
            # The whole server: SIGKILL of the supervisor takes its workers with it
            # (PR_SET_PDEATHSIG); the next one restores every flow, each in its worker.
            _, life = await server.restart()
            assert first.banner != life.banner
            for number in range(10, 13):
                await _echo_round(streams, number)
            match = re.search(r"with 2 workers \(pids (\d+), (\d+)\)", life.banner)
            assert match, life.banner
            worker0 = int(match.group(1))
            # --cpu-affinity auto: worker I runs on the I-th allowed CPU only.
            cpus = [os.sched_getaffinity(int(pid)) for pid in match.groups()]
            allowed = sorted(os.sched_getaffinity(0))
            assert cpus == [{allowed[i % len(allowed)]} for i in range(2)], cpus
            # One worker: the supervisor restarts it, at another queue index; its
            # successor is killed too, while it starts: the supervisor tries again.
            os.kill(worker0, signal.SIGKILL)  # the supervisor's child
            started = trio.current_time()
            successor = await _new_child(life.pid, known={worker0, int(match.group(2))})
            os.kill(successor, signal.SIGKILL)
            await _echo_round(streams, 100)
            resumed = trio.current_time() - started
            for number in range(101, 106):
                await _echo_round(streams, number)
            # Idle past the kernel's flow-table ageing (3 s): queues by hash again; and
            # past trio's idle-thread timeout (10 s): a worker forked from a trio thread
            # would get PR_SET_PDEATHSIG's SIGKILL when that thread ends.
            await trio.sleep(11)
            for number in range(200, 203):
                await _echo_round(streams, number)
            for stream in streams:
                await stream.aclose()
        await server.stop()
    stderr = life.stderr_path.read_text()
    counters = all_counters(stderr)
    assert f"stcp: worker 0 (pid {worker0}) killed by SIGKILL: restarting" in stderr
    assert "stcp: worker 0 did not start (killed by SIGKILL): retrying" in stderr
    assert stderr.count("restarting") == 1, stderr[-2000:]  # no other worker died
    assert len(counters) == 2, stderr[-2000:]
    for index in (0, 1):  # each worker's counters say whose they are
        assert f"stcp: worker {index}: stopped; " in stderr, stderr[-2000:]
    forwarded = sum(c.get("forwarded", 0) for c in counters)
    forwarded_in = sum(c.get("forwarded_in", 0) for c in counters)
    report(
        "two workers, worker 0 killed",
        [
            f"flows per worker {len(held0)}/{len(held1)}; first round after the kill "
            f"{resumed:.2f} s",
            f"forwarded {forwarded}, taken {forwarded_in}, failed "
            f"{sum(c.get('forward_failed', 0) for c in counters)}",
        ],
    )
    # The restarted worker came back at another queue index: segments crossed.
    assert forwarded_in > 0
    assert all(c.get("rst_sent", 0) == 0 for c in counters), counters


@pytest.mark.slow
async def test_a_worker_s_standby_takes_over_and_a_new_standby_follows(
    make_tun_net: Callable[..., TunNet], redis_server: RedisServer, tmp_path: Path
) -> None:
    """``--workers 2 --standby``: each worker has a standby process waiting for its
    queue. Worker 0 killed with SIGKILL: its standby serves instead -- no restart, no
    process start on the way -- the connections go on, and the supervisor starts a
    new standby for worker 0."""
    tun = make_tun_net(mtu=65000)
    server = _two_workers(tun, redis_server, tmp_path, "--standby")
    async with server.session() as life:
        with trio.fail_after(60):
            streams = await _connect_all(tun)
            await _echo_round(streams, 0)
            match = re.search(r"with 2 workers \(pids (\d+), (\d+)\)", life.banner)
            assert match, life.banner
            workers = {int(match.group(1)), int(match.group(2))}
            # two workers and two standbys, ready (imported, store open, queue in hand)
            ready = life.stderr_path.read_text
            await wait_for(lambda: ready().count(") ready") == 2, "the standbys", within=20)
            spares = children_of(life.pid) - workers
            assert len(spares) == 2
            worker0 = int(match.group(1))
            os.kill(worker0, signal.SIGKILL)  # the supervisor's child
            killed = trio.current_time()
            await _echo_round(streams, 1)
            resumed = trio.current_time() - killed
            # the standby serves; a new standby replaces it
            await wait_for(
                lambda: (
                    len(children_of(life.pid) - workers - spares) == 1
                    and len(children_of(life.pid)) == 4
                ),
                "a new standby",
                within=20,
            )
            for number in range(2, 5):
                await _echo_round(streams, number)
            for stream in streams:
                await stream.aclose()
        await server.stop()
    stderr = life.stderr_path.read_text()
    took_over = re.search(
        rf"stcp: worker 0 \(pid {worker0}\) killed by SIGKILL: its standby \(pid (\d+)\)"
        " took over",
        stderr,
    )
    report(
        "two workers with standbys, worker 0 killed",
        [f"first echo round after the kill: {resumed:.3f} s"],
    )
    assert took_over and int(took_over.group(1)) in spares, stderr[-2000:]
    assert "restarting" not in stderr, stderr[-2000:]
    assert all(c.get("rst_sent", 0) == 0 for c in all_counters(stderr)), stderr[-2000:]


async def test_workers_need_a_multi_queue_device() -> None:
    name = "stcpsq0"
    create_persistent_tun(name, multi_queue=False)
    try:
        result = await trio.run_process(
            stcp_command("run", "echo", "--dev", name, "--listen", "198.18.0.2:7",
                         "--store", "memory", "--workers", "2"),
            capture_stdout=True, capture_stderr=True, check=False,
        )  # fmt: skip
    finally:
        await trio.run_process(["ip", "link", "del", "dev", name])
    lines = result.stderr.decode().splitlines()
    assert result.returncode == 2 and result.stdout == b""
    assert lines == [
        f"stcp: error: TUN device {name} has a single queue, so it takes one worker: "
        f"recreate it with `stcp net down --dev {name}` and `stcp net up`"
    ]
