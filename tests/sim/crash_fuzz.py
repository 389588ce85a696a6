"""Randomized crash sweeps: scenarios drawn from a seed, each crashing the server at
random packets while data moves both ways, with the same checks as the fixed sweeps.

The fixed sweeps (``test_sim_crash.py``) crash once, at every packet of one seed. These
draw everything else too -- durability mode, commit level, buffer sizes, loss,
reordering, duplication, downtime, store outages, several crashes per run -- so they reach
combinations the fixed ones do not (two defects so far: a restore in SYN-RECEIVED, a
spill timer cancelled by a duplicate's ACK). ``test_sim_crash_random.py`` runs a fixed
set of seeds in CI; for a long search run this file::

    .venv/bin/python tests/sim/crash_fuzz.py --minutes 10 [--start SEED]

which prints every failing scenario as one line and how to replay it
(``--only SEED``). Everything is on a virtual clock: a run is reproducible from its seed.
Mind its memory: the process grows by ~200 KB a scenario (~0.6 GB a minute here; not
found yet -- a plain simulated transfer leaks nothing, and no Python object holds the
scenarios' payloads once run), so on a 24 GB machine keep ``--minutes`` under ~30 and
start another run for more.

Two kinds of scenario:

* ``level1``: ``crash_transfer`` (the upload read by a level-1 sink, the download sent
  as stored or regenerable bytes), checked byte-exact and by the oracle (G1-G3, no RST,
  no early FIN, no shrunken window).
* ``level2``: a real service served with ``commit="manual"``: ``echo`` (every byte
  answered exactly once, via ``send_all_and_commit``), ``discard`` (its byte count and
  CRC-32 are committed as state, so its final report must match the upload exactly) or
  ``relay`` (to an echo server that does not crash, through transactions across the
  two streams and ``Stack.reattach``: the client must read its bytes back exactly).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import random
import signal
import sys
import time
import traceback
import zlib
from collections.abc import Sequence
from dataclasses import dataclass

import trio
import trio.testing
from crash_helpers import check_bytes, check_oracle, crash_transfer
from sim_helpers import seed_trio_scheduler

from stcp_framework.api import Stack, Stream, open_stack
from stcp_framework.link.sim import SimNetwork
from stcp_framework.services import discard, echo
from stcp_framework.store.base import FlowDelta, StoreUnavailable
from stcp_framework.store.memory import MemoryStore
from stcp_framework.tcp.config import TcpConfig
from stcp_framework.testing import (
    CLIENT_ADDRESS,
    CLIENT_ADDRESS6,
    SERVER_ADDRESS,
    SERVER_ADDRESS6,
    RestartableServer,
    crash_after_each_packet,
)
from stcp_framework.testing._sim_pair import stack_iss_secret, stack_rng

BUDGET = 2000.0  # virtual seconds per run: a stall shows as trio.TooSlowError
SMALL_BUFFERS = TcpConfig(recv_buffer_size=16 * 1024, send_buffer_size=16 * 1024)
ECHO_PORT, DISCARD_PORT, RELAY_PORT = 7, 9, 2222
RELAY_READS_FROM = 2_100_000  # seeds from here draw the relay's read size too
# The relay's upstream: an echo server that never crashes.
BACKEND_ADDRESS, BACKEND_ADDRESS6 = "198.18.0.3", "2001:db8::3"


@dataclass(frozen=True)
class Scenario:
    """One randomized run; ``draw(seed)`` gives the same one every time."""

    seed: int
    kind: str  # "level1" | "level2"
    app: str  # level2: "echo" | "discard"; level1: "transfer"
    size: int
    durability: str  # "strict" | "ack-on-commit"
    loss: float
    reorder: float
    duplicate: float
    downtime: float
    small_buffers: bool
    regenerable: bool  # level1: the download is a send_from source
    sized_source: bool  # ... with a size: its extent is recorded ahead (reservation)
    crash_after: tuple[int, ...]  # network send numbers
    outages: tuple[tuple[float, float], ...]  # (start, seconds) the store refuses commits
    ipv6: bool = False  # level2: every stack on 2001:db8::/32
    relay_read: int = 65536  # the relay's receive_some size (small: a reader with bytes
    # waiting takes them at once, holding its flow -- where a transaction split, G4)

    def __str__(self) -> str:
        return (
            f"seed={self.seed} {self.kind}/{self.app} {self.size} B {self.durability}"
            f" loss={self.loss} reorder={self.reorder} dup={self.duplicate}"
            f" down={self.downtime}s{' small-buffers' if self.small_buffers else ''}"
            f"{' regenerable' if self.regenerable else ''}{' sized' if self.sized_source else ''}"
            f" crash_after={list(self.crash_after)}"
            f"{f' outages={list(self.outages)}' if self.outages else ''}"
            f"{' ipv6' if self.ipv6 else ''}"
            f"{f' relay-read={self.relay_read}' if self.relay_read != 65536 else ''}"
        )


def draw(seed: int) -> Scenario:
    r = random.Random(seed)
    kind = r.choice(["level1", "level2"])
    size = r.choice([16_000, 64_000, 200_000])
    small = r.random() < 0.3
    # Crash points spread over roughly the packets a run of this size sends.
    span = {16_000: 60, 64_000: 150, 200_000: 400}[size] * (3 if small else 1)
    scenario = Scenario(
        seed=seed,
        kind=kind,
        app="transfer" if kind == "level1" else r.choice(["echo", "discard", "relay"]),
        size=size,
        durability=r.choice(["strict", "strict", "ack-on-commit"]),
        loss=r.choice([0.0, 0.0, 0.01, 0.03]),
        reorder=r.choice([0.0, 0.0, 0.02]),
        duplicate=r.choice([0.0, 0.0, 0.02]),
        downtime=r.choice([0.0, 0.05, 0.5]),
        small_buffers=small,
        # (one draw for both, as before there was a sized source: old seeds keep their
        # scenarios, half of their regenerable ones now sized)
        regenerable=(regen := r.random() if kind == "level1" else 1.0) < 0.3,
        sized_source=regen < 0.15,
        crash_after=tuple(sorted(r.sample(range(1, span), r.choice([1, 2, 3, 6])))),
        outages=tuple(
            (round(r.uniform(0.0, 0.3), 3), r.choice([0.05, 0.3, 2.0]))
            for _ in range(r.choice([0, 0, 0, 1, 2]))
        ),
        ipv6=kind == "level2" and r.random() < 0.3,
    )
    if scenario.app == "relay" and seed >= RELAY_READS_FROM:
        # (drawn last, and only for newer seeds: older ones keep their scenarios)
        scenario = dataclasses.replace(scenario, relay_read=r.choice([65536, 1000, 4096]))
    return scenario


class OutageStore(MemoryStore):
    """A ``MemoryStore`` that refuses commits during the scenario's outages (G7: the
    stack holds its ACKs and retries; nothing is lost, nothing reset).

    With ``relay``, it also checks after every group commit that each relayed pair is
    exactly-once at that durable point (G4): an inbound stream's state names its
    upstream flow, and what either has committed as read is what the other has stored
    as sent -- a crash at any point restores both as they are here."""

    def __init__(self, outages: tuple[tuple[float, float], ...], *, relay: bool = False) -> None:
        super().__init__()
        self.outages = outages
        self.relay = relay
        self.relay_checks = 0  # durable points a relayed pair was checked at

    async def commit(self, batch: Sequence[FlowDelta]) -> None:
        now = trio.current_time()
        if any(start <= now < start + length for start, length in self.outages):
            raise StoreUnavailable("a scripted outage")
        await super().commit(batch)
        if self.relay:
            self._check_relayed()

    def _check_relayed(self) -> None:
        flows = self._flows
        for inbound in flows.values():
            upstream = flows.get(inbound.app_state.decode()) if inbound.app_state else None
            if upstream is None:
                continue
            self.relay_checks += 1
            pair = (inbound.commit_offset, upstream.tx.end, upstream.commit_offset)
            assert pair[0] == pair[1] and pair[2] == inbound.tx.end, (
                f"relay not exactly-once at a durable point: inbound read {pair[0]} / "
                f"upstream sent {pair[1]}, upstream read {pair[2]} / inbound sent "
                f"{inbound.tx.end}"
            )


def run(scenario: Scenario) -> None:
    """Run one scenario to the end; raises (AssertionError, trio.TooSlowError) if not met."""

    async def main() -> None:
        seed_trio_scheduler(scenario.seed)
        with trio.fail_after(BUDGET):
            if scenario.kind == "level1":
                await _level1(scenario)
            else:
                await _level2(scenario)

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


async def _level1(sc: Scenario) -> None:
    run = await crash_transfer(
        seed=sc.seed,
        size=sc.size,
        crash_after=set(sc.crash_after),
        downtime=sc.downtime,
        durability=sc.durability,
        loss=sc.loss,
        reorder=sc.reorder,
        duplicate=sc.duplicate,
        config=SMALL_BUFFERS if sc.small_buffers else None,
        regenerable=sc.regenerable,
        sized_source=sc.sized_source,
        store=OutageStore(sc.outages),
        reordered=sc.reorder > 0.0 or sc.duplicate > 0.0,
    )
    check_bytes(run)
    check_oracle(run, allow_rst_after_close=True)


async def _level2(sc: Scenario) -> None:
    payload = random.Random(sc.seed).randbytes(sc.size)
    config = SMALL_BUFFERS if sc.small_buffers else None
    network = SimNetwork(sc.seed, loss=sc.loss, reorder=sc.reorder, duplicate=sc.duplicate)
    reports: list[str] = []
    port = {"echo": ECHO_PORT, "discard": DISCARD_PORT, "relay": RELAY_PORT}[sc.app]
    client_address, server_address, backend_address = (
        (CLIENT_ADDRESS6, SERVER_ADDRESS6, BACKEND_ADDRESS6)
        if sc.ipv6
        else (CLIENT_ADDRESS, SERVER_ADDRESS, BACKEND_ADDRESS)
    )

    async def discard_and_report(stream: Stream) -> None:
        await discard(stream, report=reports.append)

    async def app(stack: Stack) -> None:
        if sc.app == "relay":
            await stack.serve(
                lambda inbound: relay(stack, inbound, backend_address, sc.relay_read),
                port,
                commit="manual",
            )
        handler = echo if sc.app == "echo" else discard_and_report
        await stack.serve(handler, port, commit="manual")

    store = OutageStore(sc.outages, relay=sc.app == "relay")
    server = RestartableServer(
        network,
        server_address,
        app,
        store=store,
        config=config,
        seed=sc.seed,
        downtime=sc.downtime,
        durability=sc.durability,
    )
    network.tap = crash_after_each_packet(server, set(sc.crash_after))
    link = network.attach(client_address)
    received = bytearray()
    async with trio.open_nursery() as nursery:
        await nursery.start(server.run)
        if sc.app == "relay":
            await nursery.start(_backend, network, backend_address, sc.seed)
        async with open_stack(
            link,
            [client_address],
            config=config,
            rng=stack_rng(sc.seed, "client"),
            iss_secret=stack_iss_secret(sc.seed, "client"),
        ) as client:
            stream = await client.connect(server_address, port)

            async def send() -> None:
                await stream.send_all(payload)
                await stream.send_eof()

            async with trio.open_nursery() as inner:
                inner.start_soon(send)
                while data := await stream.receive_some(65536):
                    received += data
            await stream.aclose()
        nursery.cancel_scope.cancel()
    if sc.app == "relay":
        assert store.relay_checks, "no durable point held a relayed pair to check"
    if sc.app in ("echo", "relay"):
        if bytes(received) != payload:
            first = next(
                (i for i, (a, b) in enumerate(zip(received, payload, strict=False)) if a != b),
                min(len(received), len(payload)),
            )
            raise AssertionError(
                f"echo: got {len(received)} of {len(payload)} bytes, first difference at {first}"
            )
    else:
        want = f"discard: received {len(payload)} bytes, crc32 {zlib.crc32(payload):08x}"
        assert reports[-1:] == [want], f"discard reported {reports}, want {want!r}"


async def relay(stack: Stack, inbound: Stream, upstream: str, read_size: int = 65536) -> None:
    """Forward both ways between ``inbound`` and an upstream connection, every byte
    exactly once across crashes: each piece is sent on one stream and committed on the
    other in one transaction. The upstream's ``flow_id`` is the inbound commit state,
    so that a restarted relay takes the same upstream stream back (``reattach``)."""
    if inbound.recovered and inbound.state:
        outbound = stack.reattach(inbound.state.decode())
    else:
        outbound = await stack.connect(upstream, ECHO_PORT, commit="manual")
        await inbound.commit(state=outbound.flow_id.encode())
    state = inbound.state

    async def pump(src: Stream, dst: Stream, src_state: bytes | None) -> None:
        while data := await src.receive_some(read_size):
            txn = stack.transaction()
            txn.send(dst, data)
            txn.commit(src, state=src_state)
            await txn.apply()
        await dst.send_eof()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(pump, inbound, outbound, state)
        nursery.start_soon(pump, outbound, inbound, None)


async def _backend(
    network: SimNetwork,
    address: str,
    seed: int,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    async with (
        open_stack(
            network.attach(address),
            [address],
            rng=stack_rng(seed, "backend"),
            iss_secret=stack_iss_secret(seed, "backend"),
        ) as backend,
        trio.open_nursery() as nursery,
    ):
        await nursery.start(backend.serve, echo, ECHO_PORT)
        task_status.started()
        await trio.sleep_forever()


def main(argv: list[str] | None = None) -> int:
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]  # (a file too)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=1.0, help="search for this long")
    parser.add_argument("--start", type=int, default=1_000_000, help="first seed")
    parser.add_argument("--only", type=int, help="replay one seed, with its traceback")
    parser.add_argument(
        "--hang-after", type=float, default=60.0, help="real seconds before a run counts as hung"
    )
    args = parser.parse_args(argv)
    if args.only is not None:
        scenario = draw(args.only)
        print(scenario)
        run(scenario)
        print("ok")
        return 0
    # The stack's warnings (store outages, handler failures) are expected by the
    # thousand in a search; --only shows them for the one scenario replayed.
    logging.getLogger("stcp").setLevel(logging.CRITICAL)
    deadline = time.monotonic() + 60 * args.minutes
    seed, runs, failures = args.start, 0, 0
    signal.signal(signal.SIGALRM, _hung)
    while time.monotonic() < deadline:
        scenario = draw(seed)
        signal.setitimer(signal.ITIMER_REAL, args.hang_after)
        try:
            run(scenario)
        except Exception as exc:  # report and go on: the search is for all of them
            failures += 1
            summary = "".join(traceback.format_exception_only(_leaf(exc))).strip().splitlines()
            print(f"FAIL {scenario}\n     {summary[0][:300]}\n     replay: --only {seed}")
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
        runs += 1
        seed += 1
        if runs % 100 == 0:
            print(f"... {runs} scenarios, {failures} failed", flush=True)
    print(f"{runs} scenarios (seeds {args.start}..{seed - 1}), {failures} failed")
    return 1 if failures else 0


def _leaf(exc: BaseException) -> BaseException:
    """The first exception inside (nested) exception groups: the one that says what."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc


class ScenarioHung(Exception):
    """A scenario ran past ``--hang-after`` real seconds: virtual time stopped moving
    (something stays runnable for ever), or the scenario is far too slow."""


def _hung(signum: int, frame: object) -> None:
    raise ScenarioHung("still running after --hang-after real seconds")


if __name__ == "__main__":
    sys.exit(main())
