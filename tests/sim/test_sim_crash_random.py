"""A fixed set of randomized crash scenarios (``crash_fuzz.py``): each seed draws the
mode, commit level, buffers, faults and crash points, and must end byte-exact with no
oracle violation. Longer searches: ``python tests/sim/crash_fuzz.py --minutes 10``."""

from __future__ import annotations

import pytest
from crash_fuzz import draw, run

SEEDS = [*range(60), 156879, 530030]
"""60 seeds, and those that found a bug: 156879 (a duplicate ACK during a store outage
advertised a window from a commit not yet durable; a crash then shrank it); 530030 (a
relay's transaction waited for a delta version that never came: its upstream was
queued again, by a segment with nothing to store, before the wait took its target --
``Runtime.durable_target``)."""


@pytest.mark.parametrize("seed", SEEDS)
def test_random_crash_scenario(seed: int) -> None:
    scenario = draw(seed)
    run(scenario)  # raises with the scenario's failure
