"""The server crashed after every packet of a transfer, restarted from its store.

Each run (``crash_helpers.crash_transfer``) moves the same amount of data each way
between a client stack that never crashes and a ``RestartableServer`` whose app is
level 1 (a sink appending what it reads, a source sending a pattern from
``send_offset``); only the ``MemoryStore`` survives a crash. After every run: both
directions are byte-exact with no duplicate and no gap, the oracle saw no violation
on any packet (G1: no ACK covers a byte the store does not hold; G2/G3: every byte
sent is durable and equals the source; the client never sees RST, an early FIN or
its right window edge moving left), and every restart kicked the flow at once.

How the crash points are chosen, so the file stays near half a minute of wall time
on two cores (a 64 KB run costs ~50 ms, a 2 MB run 1-4 s):

* **Every packet, small transfer.** 64 KB each way is N = ~140 packets crash-free
  (handshake, ~45 data segments each way, ACKs, FINs). ``test_crash_after_packet``
  runs one transfer per k = 1..N and crashes the server right after packet k
  (network send number, both directions counted: a crash after a client packet
  models a crash between two server rounds). N is measured at collection time by the
  crash-free run of the same seed. The sweep runs three times: restart at the same
  instant (packets in flight reach the new incarnation), after 50 ms down (packets due
  in that time are lost, as for a persistent TUN device nobody holds), and with 16 KB
  buffers (N = ~150: flow control binds and windows are unscaled, so the right window
  edge is checked to the byte).
* **Large transfer, strided.** 2 MB each way (~4,100 packets crash-free, ~1,400 data
  segments each way) with a crash after every 50th (and every 37th) packet the
  server is up for, i.e. ~80-110 crashes in one run; with and without downtime, and
  with 1 % loss.
* **Consecutive crashes.** 2 MB each way where, ten times in the run, the server is
  crashed and then each of the next four incarnations right after its first packet
  (its kick): restore of a restore of a restore.

Sizes and strides are constants below; all times are virtual (``MockClock``). About
440 runs in all, ~30 s of wall time.

Two stack bugs found here have regression tests at the end: the scaled window's right
edge moved left by less than one scale unit, and a window update sent from TIME-WAIT
drew a RST from a server that had closed.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Literal

import pytest
import trio
import trio.testing
from crash_helpers import (
    PORT,
    CrashRun,
    Oracle,
    check_bytes,
    check_kicks,
    check_oracle,
    check_run,
    crash_storms,
    crash_transfer,
    every_nth_live_packet,
)
from sim_helpers import seed_trio_scheduler

from stcp_framework.api import Stack
from stcp_framework.link.sim import SimNetwork, TapEvent
from stcp_framework.stack.flows import flow_id_of
from stcp_framework.store.base import FlowDelta
from stcp_framework.store.memory import MemoryStore
from stcp_framework.tcp.config import TcpConfig
from stcp_framework.tcp.delta import RxAppend, StateDelta, TcbSet
from stcp_framework.tcp.state import TcpState
from stcp_framework.testing import (
    CLIENT_ADDRESS,
    SERVER_ADDRESS,
    RestartableServer,
    open_sim_pair,
)
from stcp_framework.wire.packet import build_packet
from stcp_framework.wire.tcp import ACK, FIN, NO_OPTIONS, RST, SYN, TcpOptions

KB = 1024
MB = 1_000_000
SMALL = 64 * KB
LARGE = 2 * MB
SWEEP_SEED = 3000
LARGE_SEED = 3100
DOWNTIME = 0.05  # virtual seconds between a crash and the restart
BUDGET = 600.0  # virtual seconds per run


def _run(
    seed: int,
    size: int,
    crash_after: set[int] | None = None,
    config: TcpConfig | None = None,
    durability: str = "strict",
    regenerable: bool = False,
    sized_source: bool = False,
) -> CrashRun:
    """One whole run in a fresh ``trio.run`` (used at collection time)."""

    async def main() -> CrashRun:
        seed_trio_scheduler(seed)
        with trio.fail_after(BUDGET):
            return await crash_transfer(
                seed=seed,
                size=size,
                crash_after=crash_after or set(),
                config=config,
                durability=durability,
                regenerable=regenerable,
                sized_source=sized_source,
            )

    return trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


SWEEP_PACKETS = _run(SWEEP_SEED, SMALL).packets  # crash-free


# ------------------------------------------------------------ crash-free baseline


async def test_crash_free_run_is_clean(autojump_clock: trio.testing.MockClock) -> None:
    """The baseline every crash point is taken from: exact, quiet, no violation."""
    seed_trio_scheduler(SWEEP_SEED)
    with trio.fail_after(BUDGET):
        run = await crash_transfer(seed=SWEEP_SEED, size=SMALL)
    check_run(run)
    assert run.server.incarnation == 1
    assert run.server.restarts == []
    assert run.packets == SWEEP_PACKETS
    assert 100 < SWEEP_PACKETS < 400  # ~45 data segments each way, their ACKs, SYNs, FINs


# --------------------------------------------------------- every packet, 64 KB


@pytest.mark.parametrize("downtime", [0.0, DOWNTIME], ids=["instant", "down50ms"])
@pytest.mark.parametrize("after_packet", range(1, SWEEP_PACKETS + 1))
async def test_crash_after_packet(
    autojump_clock: trio.testing.MockClock, after_packet: int, downtime: float
) -> None:
    seed_trio_scheduler(SWEEP_SEED)
    with trio.fail_after(BUDGET):
        run = await crash_transfer(
            seed=SWEEP_SEED, size=SMALL, crash_after={after_packet}, downtime=downtime
        )
    check_run(run)
    (restart,) = run.server.restarts
    assert restart.after_packet == after_packet
    assert restart.restarted_at - restart.crashed_at == pytest.approx(downtime)


SMALL_BUFFERS = TcpConfig(recv_buffer_size=16 * KB, send_buffer_size=16 * KB)
SMALL_BUFFER_PACKETS = _run(SWEEP_SEED, SMALL, config=SMALL_BUFFERS).packets  # crash-free


@pytest.mark.parametrize("after_packet", range(1, SMALL_BUFFER_PACKETS + 1))
async def test_crash_after_packet_small_buffers(
    autojump_clock: trio.testing.MockClock, after_packet: int
) -> None:
    """16 KB buffers: flow control binds, windows are unscaled (so the right edge is
    checked to the byte) and the sender waits on the window across restarts."""
    seed_trio_scheduler(SWEEP_SEED)
    with trio.fail_after(BUDGET):
        run = await crash_transfer(
            seed=SWEEP_SEED,
            size=SMALL,
            crash_after={after_packet},
            config=SMALL_BUFFERS,
            strict_window=True,
        )
    check_bytes(run)
    check_kicks(run)
    check_oracle(run, allow_rst_after_close=True)
    (restart,) = run.server.restarts
    assert restart.after_packet == after_packet


# Other ways to persist: (name, crash_transfer options, what it promises beyond G1-G3).
# ack-on-commit: an ACK covers committed bytes only (the oracle's G1 for this mode),
# nothing received is stored, and what a crash loses the client sends again.
# regenerable: the download is a send_from source; the store holds extents, not bytes
# (the oracle's G2 counts extents as durable) and every incarnation re-reads what the
# client has not acknowledged from the source (G3: byte-identical retransmissions).
# reserved: the same from a source with a size, so the extent is recorded ahead of the
# bytes (tcp/txmap.py) and they leave before their round's commit; a restart goes on
# after the recorded end, and the FIN still comes at the download's end.
MODES: dict[str, dict[str, Any]] = {
    "ack-on-commit": {"durability": "ack-on-commit"},
    "regenerable": {"regenerable": True},
    "reserved": {"regenerable": True, "sized_source": True},
}
MODE_POINTS = [
    (mode, after_packet)
    for mode, options in MODES.items()
    for after_packet in range(1, _run(SWEEP_SEED, SMALL, **options).packets + 1)
]


@pytest.mark.parametrize(("mode", "after_packet"), MODE_POINTS)
async def test_crash_after_packet_other_modes(
    autojump_clock: trio.testing.MockClock, mode: str, after_packet: int
) -> None:
    seed_trio_scheduler(SWEEP_SEED)
    with trio.fail_after(BUDGET):
        run = await crash_transfer(
            seed=SWEEP_SEED,
            size=SMALL,
            crash_after={after_packet},
            downtime=DOWNTIME,
            **MODES[mode],
        )
    check_run(run)
    (restart,) = run.server.restarts
    assert restart.after_packet == after_packet
    if mode in ("regenerable", "reserved"):
        assert run.oracle.max_tx_stored == 0  # no byte of the download was ever stored


@pytest.mark.parametrize("mode", ["strict", *MODES])
@pytest.mark.parametrize("after_packet", [1, 2, 3])  # after the SYN, SYN-ACK, ACK
async def test_crash_in_the_handshake_with_an_instant_restart(
    autojump_clock: trio.testing.MockClock, mode: str, after_packet: int
) -> None:
    """A flow restored in SYN-RECEIVED sends its SYN-ACK again and nothing before it:
    the oracle flags an ACK without SYN before any SYN-ACK, and a window edge that the
    SYN's unscaled window moves back (both seen once in ack-on-commit mode, whose kick
    added three duplicate ACKs whatever the state)."""
    seed_trio_scheduler(SWEEP_SEED)
    with trio.fail_after(BUDGET):
        run = await crash_transfer(
            seed=SWEEP_SEED, size=SMALL, crash_after={after_packet}, **MODES.get(mode, {})
        )
    check_run(run)


# ------------------------------------------------------------ 2 MB, strided


@pytest.mark.slow
@pytest.mark.parametrize("stride", [50, 37], ids=["every50", "every37"])
async def test_two_megabytes_recorded_ahead_with_a_crash_every_nth_packet(
    autojump_clock: trio.testing.MockClock, stride: int
) -> None:
    """The download from a sized source with a 64 KiB send buffer: its record is
    extended every 16 KiB and most segments leave before their round's commit; crashes
    every ``stride`` packets land between a record and the bytes it covers, and the
    oracle checks G1-G3 on every segment."""
    seed_trio_scheduler(LARGE_SEED)
    with trio.fail_after(BUDGET):
        run = await crash_transfer(
            seed=LARGE_SEED,
            size=LARGE,
            crash_after=every_nth_live_packet(stride, 4000),
            regenerable=True,
            sized_source=True,
            config=TcpConfig(send_buffer_size=64 * KB),
        )
    check_run(run)
    assert run.oracle.max_tx_stored == 0  # no byte of the download was ever stored
    assert run.server.restarts


@pytest.mark.slow
@pytest.mark.parametrize(
    ("stride", "downtime", "loss"),
    [(50, 0.0, 0.0), (50, DOWNTIME, 0.0), (37, 0.0, 0.0), (50, 0.0, 0.01)],
    ids=["every50", "every50-down50ms", "every37", "every50-loss1pct"],
)
async def test_two_megabytes_with_a_crash_every_nth_packet(
    autojump_clock: trio.testing.MockClock, stride: int, downtime: float, loss: float
) -> None:
    seed_trio_scheduler(LARGE_SEED)
    limit = 4000  # crash points among the first 4,000 live packets (~4,100 crash-free)
    with trio.fail_after(BUDGET):
        run = await crash_transfer(
            seed=LARGE_SEED,
            size=LARGE,
            crash_after=every_nth_live_packet(stride, limit),
            downtime=downtime,
            loss=loss,
        )
    check_run(run)
    assert len(run.server.restarts) == limit // stride
    assert run.server.incarnation == limit // stride + 1


@pytest.mark.slow
async def test_two_megabytes_with_consecutive_crashes(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Ten storms of five crashes: each new incarnation dies right after its kick."""
    seed_trio_scheduler(LARGE_SEED + 1)
    starts = set(range(300, 4000, 370))
    with trio.fail_after(BUDGET):
        run = await crash_transfer(
            seed=LARGE_SEED + 1, size=LARGE, crash_after=crash_storms(starts, 5)
        )
    check_run(run)
    assert len(run.server.restarts) == 5 * len(starts)
    # The four incarnations after the first crash of each storm died right after
    # their first packet: exactly one packet of each reached the wire.
    sent = Counter(s.incarnation for s in run.oracle.sends)
    one_packet = [incarnation for incarnation, n in sent.items() if n == 1]
    assert len(one_packet) == 4 * len(starts)


# ------------------------------------------------------------ the kick


@pytest.mark.slow
async def test_restart_resumes_before_the_clients_rto(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Crash mid-transfer and stay down 150 ms, long enough for every packet in flight
    to be lost: the new incarnation sends its kick (ACK of the durable ``rcv_nxt`` with
    the window, and retransmission from ``snd_una``) in its first round, before it read
    anything; the client receives it one network delay later and new download bytes
    a few round trips later, sooner than its own retransmission timer would fire
    (DESIGN.md "Recovery")."""
    seed = LARGE_SEED + 2
    seed_trio_scheduler(seed)
    downtime = 0.15
    with trio.fail_after(BUDGET):
        run = await crash_transfer(seed=seed, size=LARGE, crash_after={2000}, downtime=downtime)
    check_run(run)  # includes check_kicks
    (restart,) = run.server.restarts
    (tcb,) = restart.restored
    oracle = run.oracle
    kick = [s for s in oracle.sends if s.incarnation == 2 and s.now == restart.restarted_at]
    assert kick[0].flags & ACK and kick[0].ack == tcb.rcv_nxt
    assert any(s.seq == tcb.snd_una and s.length for s in kick), "no retransmission"
    delivered_at, client_rto = oracle.first_delivery[2]
    assert delivered_at - restart.restarted_at == pytest.approx(0.001)  # one network delay
    assert delivered_at - restart.restarted_at < client_rto
    # New bytes (beyond anything the client had before the crash) arrive at once too.
    before = max(end for at, end in oracle.client_progress if at <= restart.crashed_at)
    resumed_at = min(at for at, end in oracle.client_progress if end > before)
    # The kick resends from snd_una first (bytes whose ACKs died with the old
    # incarnation), so new bytes follow within a few round trips, not an RTO.
    assert resumed_at - restart.restarted_at < min(client_rto, 0.01)


# ----------------------------------------------------------- the oracle itself


async def test_oracle_catches_acks_that_run_ahead_of_the_store(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """In ``async`` durability the stack writes segments before their commit: the
    oracle must see ACKs (and the SYN-ACK) that cover state the store lacks."""
    seed_trio_scheduler(SWEEP_SEED)
    with trio.fail_after(BUDGET):
        run = await crash_transfer(seed=SWEEP_SEED, size=SMALL, durability="async")
    check_bytes(run)  # no crash: the bytes still arrive
    g1 = [v for v in run.oracle.violations if "G1" in v or "no durable TCB" in v]
    # How many depends on how the write-behind commits interleave with the sends (a
    # MemoryStore commits at its first checkpoint); at least the SYN-ACK runs ahead.
    assert g1
    with pytest.raises(AssertionError, match="violations"):
        check_oracle(run)


CLIENT_PORT = 40000
_CLI = bytes([198, 18, 0, 1])
_SRV = bytes([198, 18, 0, 2])


def _event(
    phase: Literal["send", "deliver"],
    from_server: bool,
    seq: int,
    ack: int,
    flags: int,
    window: int,
    options: TcpOptions = NO_OPTIONS,
    payload: bytes = b"",
) -> TapEvent:
    if from_server:
        packet = build_packet(
            _SRV, _CLI, PORT, CLIENT_PORT, seq, ack, flags, window, options, payload
        )
        return TapEvent(phase, 1, 0.0, SERVER_ADDRESS, CLIENT_ADDRESS, bytes(packet))
    packet = build_packet(_CLI, _SRV, CLIENT_PORT, PORT, seq, ack, flags, window, options, payload)
    return TapEvent(phase, 1, 0.0, CLIENT_ADDRESS, SERVER_ADDRESS, bytes(packet))


def _synthetic_oracle() -> Oracle:
    """An oracle that watched a made-up handshake: client ISS 1000, server ISS 5000,
    window scales 7 (client) and 2 (server); the server's store holds received bytes
    up to offset 100, and the client last saw the right edge 1101 + (20000 << 2)."""

    async def app(stack: Stack) -> None:
        await trio.sleep_forever()

    server = RestartableServer(SimNetwork(0), SERVER_ADDRESS, app)
    store = MemoryStore()
    record = {"irs": 1000, "rcv_nxt_offset": 100, "read_offset": 0}
    flow_id = flow_id_of((_CLI, CLIENT_PORT, _SRV, PORT), 5000)
    store.commit_sync(
        [FlowDelta(flow_id, 1, StateDelta(1, (RxAppend(0, bytes(100)), TcbSet(record))))]
    )
    oracle = Oracle(server, store, upload=bytes(1000), download=bytes(1000))
    for event in (
        _event("send", False, 1000, 0, SYN, 65535, TcpOptions(wscale=7)),
        _event("send", True, 5000, 1001, SYN | ACK, 65535, TcpOptions(wscale=2)),
        _event("deliver", True, 5000, 1001, SYN | ACK, 65535, TcpOptions(wscale=2)),
        _event("send", True, 5001, 1101, ACK, 20000),  # acks offset 100: durable
        _event("deliver", True, 5001, 1101, ACK, 20000),
    ):
        oracle(event)
    return oracle


@pytest.mark.parametrize(
    ("event", "expect"),
    [
        (_event("send", True, 5001, 1102, ACK, 20000), "G1: ACK covers stream offset 101"),
        (_event("send", True, 5001, 1101, RST | ACK, 0), "the server sent a RST"),
        (_event("deliver", True, 5001, 0, RST, 0), "the client received a RST"),
        (
            _event("deliver", True, 5001, 1101, FIN | ACK, 20000, payload=bytes(10)),
            "FIN at stream offset 10",
        ),
        (_event("deliver", True, 5001, 1101, ACK, 19900), "edge moved left by 400 bytes"),
    ],
    ids=["ack-ahead-of-store", "server-rst", "client-gets-rst", "early-fin", "shrunk-window"],
)
def test_oracle_flags_what_must_never_happen(event: TapEvent, expect: str) -> None:
    oracle = _synthetic_oracle()
    assert oracle.violations == []
    oracle(event)
    assert len(oracle.violations) == 1
    assert expect in oracle.violations[0]


def test_oracle_lets_a_moving_window_pass() -> None:
    oracle = _synthetic_oracle()
    for ack, window in ((1201, 19975), (1301, 21000), (1401, 20975)):
        oracle(_event("deliver", True, 5001, ack, ACK, window))  # edge 81101, 85301, 85301
    assert oracle.violations == []


# ------------------------------------------------------------ regressions found here


async def test_window_edge_never_moves_left_without_crashes(
    autojump_clock: trio.testing.MockClock,
) -> None:
    seed_trio_scheduler(SWEEP_SEED)
    with trio.fail_after(BUDGET):
        run = await crash_transfer(seed=SWEEP_SEED, size=SMALL, strict_window=True)
    check_oracle(run)


def test_kick_check_is_not_vacuous() -> None:
    """Most sweep points restore a live flow, so ``check_kicks`` asserts something."""
    run = _run(SWEEP_SEED, SMALL, crash_after={SWEEP_PACKETS // 2})
    check_kicks(run)
    (restart,) = run.server.restarts
    assert len(restart.restored) == 1


async def test_no_window_update_after_the_peers_fin(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Without any crash: once the peer's FIN is in, the peer sends no more data, so a
    read must not send a window update (Linux ``tcp_cleanup_rbuf`` skips it under
    ``RCV_SHUTDOWN``). ``Connection.app_receive`` sends one in any synchronized state;
    from TIME-WAIT it reaches a server that has closed and forgotten the flow, whose RST
    then ends the client's TIME-WAIT (RFC 1337 hazard)."""
    seed_trio_scheduler(SWEEP_SEED)
    async with open_sim_pair(SWEEP_SEED, config=SMALL_BUFFERS) as pair:
        listener = pair.server.listen(PORT)
        client, server = await pair.stream_pair(listener)
        await client.send_eof()
        assert await server.receive_some(1) == b""
        await server.send_all(bytes(12_000))  # unread by the client for now
        await server.aclose()
        await trio.sleep(1)
        assert client.tcp_state is TcpState.TIME_WAIT
        assert not pair.server.runtime.flows  # LAST-ACK -> CLOSED, forgotten
        received = 0
        while data := await client.receive_some():
            received += len(data)
        await trio.sleep(1)
        assert received == 12_000
        assert pair.server.runtime.stats["rst_sent"] == 0
        assert client.tcp_state is TcpState.TIME_WAIT
