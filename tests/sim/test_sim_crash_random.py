"""A fixed set of randomized crash scenarios (``crash_fuzz.py``): each seed draws the
mode, commit level, buffers, faults and crash points, and must end byte-exact with no
oracle violation. Longer searches: ``python tests/sim/crash_fuzz.py --minutes 10``."""

from __future__ import annotations

import pytest
from crash_fuzz import draw, run

SEEDS = [*range(60), 156879, 530030, 1185928, 1186023, 1501240, 1521855, 3603348]
"""60 seeds, and those that found a bug: 156879 (a duplicate ACK during a store outage
advertised a window from a commit not yet durable; a crash then shrank it); 530030 (a
relay's transaction waited for a delta version that never came: its upstream was
queued again, by a segment with nothing to store, before the wait took its target --
``Runtime.durable_target``); 1185928 and 1186023 (a restored flow started its window
from a stored ``rcv_wnd`` older than the last window sent, and rounded the free space
down to the scale unit: 88 bytes left of the edge the peer had seen --
``tcp/machine.py`` ``_restore_window_edge``); 1501240 (a relay restored in FIN-WAIT-1
whose FIN had left but whose SND.NXT past it had not reached the store dropped every
segment of the peer as an ACK of unsent data, until the peer's LAST-ACK timed out --
``fin_maybe_sent``); 1521855 (a RST for a flow closed during a store outage, its record
kept until its last delta lands: the oracle takes a close both sides acknowledged as
the end, not only the record's removal); 3603348 (a strict relay's upstream reset as
if the crash had lost acknowledged bytes: the backend's echoes died with the crash, and
its tail loss probe resent its last segment, above the restored RCV.NXT, which the
proof took for a resend from its SND.UNA -- ``_arrive.acked_bytes_lost`` now wants two
resends)."""


@pytest.mark.parametrize("seed", SEEDS)
def test_random_crash_scenario(seed: int) -> None:
    scenario = draw(seed)
    run(scenario)  # raises with the scenario's failure
