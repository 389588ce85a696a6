"""A fixed set of randomized crash scenarios (``crash_fuzz.py``): each seed draws the
mode, commit level, buffers, faults and crash points, and must end byte-exact with no
oracle violation. Longer searches: ``python tests/sim/crash_fuzz.py --minutes 10``."""

from __future__ import annotations

import pytest
from crash_fuzz import draw, run

SEEDS = [*range(60), 156879, 530030, 1185928, 1186023]
"""60 seeds, and those that found a bug: 156879 (a duplicate ACK during a store outage
advertised a window from a commit not yet durable; a crash then shrank it); 530030 (a
relay's transaction waited for a delta version that never came: its upstream was
queued again, by a segment with nothing to store, before the wait took its target --
``Runtime.durable_target``); 1185928 and 1186023 (a restored flow started its window
from a stored ``rcv_wnd`` older than the last window sent, and rounded the free space
down to the scale unit: 88 bytes left of the edge the peer had seen --
``tcp/machine.py`` ``_restore_window_edge``)."""


@pytest.mark.parametrize("seed", SEEDS)
def test_random_crash_scenario(seed: int) -> None:
    scenario = draw(seed)
    run(scenario)  # raises with the scenario's failure
