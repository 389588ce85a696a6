"""The clock a stack must run under so restored connections keep their timestamps (G3).

The machine derives every TSval from ``now``: ``tsval = int(now * 1000) + tsval_offset``
(``tcp/machine.py``), and ``tsval_offset`` is persisted with the TCB. ``now`` is
``trio.current_time()``, and trio's default clock adds a *random* offset of 10,000 to
200,000 s per ``trio.run`` (on purpose, so that nobody compares clocks across runs). A
connection restored by a new process would then send TSvals that jump by up to days --
backwards half of the time -- and the peer's PAWS test (RFC 7323 §5.3) silently drops
every segment of the restored connection: the transfer stalls for good.

So the runtime never hands trio's time to a machine. It measures, once at start, how far
the running trio clock is from ``CLOCK_MONOTONIC`` (``time.monotonic()``, the same clock
in every process since boot) and gives the machines ``trio.current_time() - skew``: a
process that restores a flow on the same host continues its TSvals where the old process
left them, whatever trio clock either runs under. Under ``trio.testing.MockClock`` the
skew is 0, so simulations stay deterministic (and within one ``trio.run`` they need
nothing more). ``MonotonicClock`` (trio's clock with no offset, skew 0) is what
``stcp run`` uses. Moving a flow to another host needs a TS clock shared between hosts;
not done yet.
"""

from __future__ import annotations

import sys
import time

import trio

__all__ = ["MonotonicClock", "clock_is_process_independent", "machine_clock_skew"]

_TOLERANCE = 1.0  # seconds between trio.current_time() and time.monotonic()


class MonotonicClock(trio.abc.Clock):
    """trio's clock as ``time.monotonic()``: comparable across processes on one host."""

    def start_clock(self) -> None:
        pass

    def current_time(self) -> float:
        return time.monotonic()

    def deadline_to_sleep_time(self, deadline: float) -> float:
        return deadline - time.monotonic()


def clock_is_process_independent() -> bool:
    """Whether the running trio clock reads like ``time.monotonic()`` (inside ``trio.run``)."""
    return abs(trio.current_time() - time.monotonic()) < _TOLERANCE


def machine_clock_skew() -> float:
    """``trio.current_time() - time.monotonic()`` now, or 0 under a ``MockClock`` (and
    when the two already agree): subtract it from trio's time to get machine time."""
    # No MockClock can exist unless trio.testing was imported (which pulls in pytest:
    # ~0.2 s of every server start, i.e. of every restart stall, so never import it).
    testing = sys.modules.get("trio.testing")
    if testing is not None and isinstance(trio.lowlevel.current_clock(), testing.MockClock):
        return 0.0
    if clock_is_process_independent():
        return 0.0
    return trio.current_time() - time.monotonic()
