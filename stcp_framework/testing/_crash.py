"""A simulated server that a test can crash after any packet and restart from its store.

Theory of operation:
    ``RestartableServer`` runs *incarnations* of one server stack on one address of a
    ``SimNetwork``. Each incarnation is ``open_stack(link, [address], store=...,
    instance=...)`` plus the test's app (e.g. ``stack.serve(handler, port)``), all inside
    one cancel scope. ``crash()`` is synchronous, so a network tap can call it in the
    middle of a batch: it marks the incarnation dead and cancels its scope, which throws
    away the runtime, its flow table, timers and every task and handler. Only the store
    survives. ``run()`` then closes the dead link, waits ``downtime`` virtual seconds and
    starts the next incarnation on a new link for the same address with the same store:
    ``Runtime.run`` restores every stored flow before the device is read, sends the
    "kick" and offers restored streams to ``serve`` with ``recovered=True``
    (DESIGN.md "Recovery").

    A cancelled trio task still runs until its next checkpoint, and a task already
    scheduled runs its whole step, so a dead incarnation could write to the store or
    send a packet *after* the crash instant. Two gates make the crash instantaneous, as
    a ``kill -9`` is: the incarnation sees the store through a proxy that never lets a
    dead incarnation reach it (durable state stops at the crash), and the tap made by
    ``crash_after_each_packet`` drops every packet a dead incarnation still sends (the
    rest of the batch that held packet *k* included). App code that has side effects
    of its own (a sink appending to a test-owned buffer) checks ``alive(incarnation)``
    first.

    Packets in flight to the address while it is down are queued by the network and
    delivered to the next incarnation, or dropped if they were due while nobody held
    the address (a persistent TUN device nobody holds).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Awaitable, Callable, Container, Sequence
from dataclasses import dataclass

import trio

from ..api import Stack, open_stack
from ..link.sim import SimNetwork, Tap, TapEvent, TapVerdict
from ..stack.sources import Source
from ..store.base import FlowDelta, FlowRecord, Store
from ..store.memory import MemoryStore
from ..tcp.config import TcpConfig
from ..tcp.tcb import Tcb
from ._sim_pair import stack_iss_secret, stack_rng

App = Callable[[Stack], Awaitable[object]]


@dataclass(frozen=True, slots=True)
class Restart:
    """One crash and the restart that followed it.

    Attributes:
        incarnation: The incarnation that started (2 for the first restart).
        after_packet: The network send number that triggered the crash, if a tap did.
        crashed_at: Virtual time of the crash.
        restarted_at: Virtual time the new incarnation's stack was running (flows
            restored, the kick queued).
        restored: Copies of the restored flows' TCBs, as loaded from the store.
    """

    incarnation: int
    after_packet: int | None
    crashed_at: float
    restarted_at: float
    restored: tuple[Tcb, ...]


class _GatedStore:
    """The shared store as one incarnation sees it: unreachable once it is dead."""

    def __init__(self, inner: Store, server: RestartableServer, incarnation: int) -> None:
        self._inner = inner
        self._server = server
        self._incarnation = incarnation

    async def _gate(self) -> None:
        if not self._server.alive(self._incarnation):
            await trio.sleep_forever()  # the scope is cancelled: raises Cancelled now

    async def next_epoch(self) -> int:
        await self._gate()
        return await self._inner.next_epoch()

    async def stack_secret(self) -> bytes:
        await self._gate()
        return await self._inner.stack_secret()

    async def claim(self, flow_id: str, epoch: int) -> None:
        await self._gate()
        await self._inner.claim(flow_id, epoch)

    async def claim_many(self, flow_ids: Sequence[str], epoch: int) -> list[str]:
        await self._gate()
        return await self._inner.claim_many(flow_ids, epoch)

    async def commit(self, batch: Sequence[FlowDelta]) -> None:
        await self._gate()
        await self._inner.commit(batch)

    async def load(self, flow_id: str) -> FlowRecord | None:
        await self._gate()
        return await self._inner.load(flow_id)

    async def load_many(self, flow_ids: Sequence[str]) -> dict[str, FlowRecord | None]:
        await self._gate()
        return await self._inner.load_many(flow_ids)

    async def forget(self, flow_id: str, epoch: int) -> None:
        await self._gate()
        await self._inner.forget(flow_id, epoch)

    async def forget_many(self, items: Sequence[tuple[str, int]]) -> list[str]:
        await self._gate()
        return await self._inner.forget_many(items)

    async def list_flows(self) -> list[str]:
        await self._gate()
        return await self._inner.list_flows()

    async def aclose(self) -> None:
        await trio.lowlevel.checkpoint()  # the shared store outlives incarnations


class RestartableServer:
    """A server stack on ``address`` of ``network`` that survives ``crash()`` via its store.

    Args:
        network: The simulated network; the address must not be attached yet.
        address: The server's IP address (text).
        app: Run on each incarnation's stack, e.g. ``lambda s: s.serve(handler, 80)``.
            It should start listening before its first checkpoint.
        store: The store shared by all incarnations (a new ``MemoryStore`` by default).
        instance: The instance name (fencing epochs, G5).
        config: TCP settings of every incarnation.
        seed: Seeds each incarnation's RNG and ISS secret.
        downtime: Virtual seconds between a crash and the restart.
        durability: ``"strict"`` (default) or ``"async"``, as ``open_stack`` takes it.

    Attributes:
        incarnation: 1 for the first stack, +1 per restart.
        restarts: One ``Restart`` per crash, in order.
    """

    def __init__(
        self,
        network: SimNetwork,
        address: str,
        app: App,
        *,
        store: Store | None = None,
        instance: str = "srv",
        config: TcpConfig | None = None,
        seed: int = 0,
        downtime: float = 0.0,
        durability: str = "strict",
        sources: Sequence[Source] = (),
    ) -> None:
        if downtime < 0:
            raise ValueError("downtime must be >= 0")
        self.network = network
        self.address = str(ipaddress.ip_address(address))  # as TapEvent.src spells it
        self.store: Store = store if store is not None else MemoryStore()
        self.instance = instance
        self.config = config
        self.seed = seed
        self.downtime = downtime
        self.durability = durability
        self.sources = tuple(sources)
        self.incarnation = 0
        self.restarts: list[Restart] = []
        self._app = app
        self._scope: trio.CancelScope | None = None
        self._stack: Stack | None = None
        self._down = True
        self._crash: tuple[float, int | None] | None = None

    @property
    def down(self) -> bool:
        """True from ``crash()`` until the next incarnation's link is attached."""
        return self._down

    @property
    def stack(self) -> Stack:
        """The running incarnation's stack.

        Raises:
            RuntimeError: The server is down.
        """
        if self._stack is None or self._down:
            raise RuntimeError("the server is down")
        return self._stack

    def alive(self, incarnation: int) -> bool:
        """Is ``incarnation`` the one running now (not crashed, not superseded)?"""
        return not self._down and incarnation == self.incarnation

    def crash(self, *, after_packet: int | None = None) -> None:
        """Kill the running incarnation now (synchronous: a tap may call it).

        Nothing it does from now on reaches the store; packets it still sends are
        dropped by ``crash_after_each_packet``'s tap. A crash while down is ignored.
        """
        if self._down:
            return
        self._down = True
        if self._crash is None:  # else the last start never finished: keep its crash
            self._crash = (trio.current_time(), after_packet)
        if self._scope is not None:
            self._scope.cancel()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run incarnations until cancelled: start, run the app, restart after each crash.

        ``task_status.started()`` fires once the first incarnation is running.
        """
        first = True
        while True:
            link = self.network.attach(self.address)
            self.incarnation += 1
            incarnation = self.incarnation
            self._down = False
            try:
                with trio.CancelScope() as scope:
                    self._scope = scope
                    store = _GatedStore(self.store, self, incarnation)
                    async with (
                        open_stack(
                            link,
                            [self.address],
                            store=store,
                            config=self.config,
                            instance=self.instance,
                            durability=self.durability,
                            sources=self.sources,
                            rng=stack_rng(self.seed, f"server-{incarnation}"),
                            iss_secret=stack_iss_secret(self.seed, "server"),
                        ) as stack,
                        trio.open_nursery() as nursery,
                    ):
                        self._stack = stack
                        self._record_restart(stack, incarnation)
                        nursery.start_soon(self._app, stack)
                        if first:
                            first = False
                            task_status.started()
                        await trio.sleep_forever()
            finally:
                self._scope = None
                self._stack = None
                with trio.CancelScope(shield=True):
                    await link.aclose()
            # Only a crash gets here: cancelling our own scope is absorbed by it.
            if self.downtime:
                await trio.sleep(self.downtime)

    def _record_restart(self, stack: Stack, incarnation: int) -> None:
        crash, self._crash = self._crash, None
        if crash is None:
            return
        crashed_at, after_packet = crash
        restored = tuple(
            Tcb.from_record(flow.conn.tcb.to_record())
            for flow in stack.runtime.flows.values()
            if flow.recovered
        )
        self.restarts.append(
            Restart(incarnation, after_packet, crashed_at, trio.current_time(), restored)
        )


def crash_after_each_packet(
    server: RestartableServer,
    packets: Container[int] | Callable[[TapEvent], bool],
    tap: Tap | None = None,
) -> Tap:
    """A ``SimNetwork`` tap that crashes ``server`` right after each chosen packet.

    Packets are numbered by ``TapEvent.number`` of the ``"send"`` phase: every packet
    any link sends, from 1, retransmissions included. The crash happens after packet
    *k* left (or was dropped by ``tap``); everything the dead incarnation sends after
    it (the rest of its batch included) is dropped, so the crash is exact.

    Args:
        server: The server to crash.
        packets: Send numbers to crash after, or a predicate on the send event.
        tap: An inner tap (an oracle) that sees every event except the packets a dead
            incarnation sends; its verdict on a ``"send"`` event is kept.

    Returns:
        The tap, to assign to ``network.tap`` (once).
    """
    choose: Callable[[TapEvent], bool] = (
        packets if callable(packets) else (lambda event: event.number in packets)
    )

    def crash_tap(event: TapEvent) -> TapVerdict | None:
        if event.phase == "send" and event.src == server.address and server.down:
            return TapVerdict.DROP  # sent by an incarnation that is already dead
        verdict = tap(event) if tap is not None else None
        if event.phase == "send" and choose(event):
            server.crash(after_packet=event.number)
        return verdict

    return crash_tap
