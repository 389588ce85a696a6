"""The runtime's one timer task: each flow's ``on_timer`` runs once its machine's next
deadline has passed, never before, whichever way the deadline moved meanwhile (the heap
keeps one live entry per flow and re-arms a deadline that moved later)."""

from __future__ import annotations

import trio
import trio.testing

from stcp_framework import MemoryStore
from stcp_framework.link.sim import SimNetwork
from stcp_framework.stack.flows import Flow
from stcp_framework.stack.runtime import Runtime
from stcp_framework.tcp.machine import Connection


class TimerProbe:
    """Stands in for a ``Connection``: records when ``on_timer`` ran."""

    def __init__(self) -> None:
        self.fired: list[float] = []

    def on_timer(self, now: float) -> None:
        self.fired.append(now)


def _flow(probe: TimerProbe, n: int) -> Flow:
    conn: Connection = probe  # type: ignore[assignment]
    return Flow(key=(b"\x01\x02\x03\x04", n, b"\x05\x06\x07\x08", 80), flow_id=f"f{n}", conn=conn)


async def _run_timers(
    schedule: list[tuple[float, int, float | None]], flows: int
) -> list[TimerProbe]:
    """Apply ``(at time, flow, new deadline)`` reschedules; return what fired when."""
    runtime = Runtime(SimNetwork(1).attach("198.18.0.2"), MemoryStore(), ["198.18.0.2"])
    probes = [TimerProbe() for _ in range(flows)]
    flow_objs = [_flow(p, i) for i, p in enumerate(probes)]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(runtime._timer_loop)
        for at, index, deadline in schedule:
            await trio.sleep_until(at)
            runtime._schedule(flow_objs[index], deadline)
        await trio.sleep(100)
        assert not runtime._timer_heap  # nothing left to wake the task for
        nursery.cancel_scope.cancel()
    return probes


async def test_deadline_moved_later_fires_at_the_later_time(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # The retransmission timer restarted by ACKs, then a delayed ACK after it.
    probes = await _run_timers([(0, 0, 5.0), (1, 0, 8.0), (2, 0, 9.5)], flows=1)
    assert probes[0].fired == [9.5]


async def test_deadline_moved_earlier_fires_at_the_earlier_time(
    autojump_clock: trio.testing.MockClock,
) -> None:
    probes = await _run_timers([(0, 0, 5.0), (1, 0, 2.0)], flows=1)
    assert probes[0].fired == [2.0]


async def test_cleared_deadline_never_fires(autojump_clock: trio.testing.MockClock) -> None:
    probes = await _run_timers([(0, 0, 5.0), (1, 0, None), (2, 1, 3.0)], flows=2)
    assert probes[0].fired == []
    assert probes[1].fired == [3.0]


async def test_rearmed_after_firing(autojump_clock: trio.testing.MockClock) -> None:
    # A deadline set again after the first one fired (a new retransmission) fires too.
    probes = await _run_timers([(0, 0, 1.0), (2, 0, 4.0), (3, 0, 6.0)], flows=1)
    assert probes[0].fired == [1.0, 6.0]
