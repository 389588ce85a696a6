"""10 MB each way between two stacks over the simulated network, byte-exact.

The client uploads 10 MB to a hashing sink while the server sends 10 MB back, over a
clean network, 1 % and 5 % loss, reordering, duplication and all three at once. Each
run's summary (virtual time, packets, retransmissions) is compared with
``snapshots/transfer.json``: for a fixed seed it is exactly reproducible. Regenerate
after an intended change with ``STCP_UPDATE_SNAPSHOTS=1 pytest tests/sim``.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import pytest
import trio
import trio.testing
from sim_helpers import (
    check_conservation,
    check_snapshot,
    expected,
    seed_trio_scheduler,
    summary,
    transfer_both_ways,
)

from stcp_framework.testing import open_sim_pair

MB = 1_000_000
SIZE = 10 * MB
BUDGET = 3600.0  # virtual seconds


class Faults(NamedTuple):
    loss: float = 0.0
    reorder: float = 0.0
    duplicate: float = 0.0


CASES: dict[str, Faults] = {
    "clean": Faults(),
    "loss-1pct": Faults(loss=0.01),
    "loss-5pct": Faults(loss=0.05),
    "reorder-5pct": Faults(reorder=0.05),
    "duplicate-5pct": Faults(duplicate=0.05),
    "combined-2pct": Faults(loss=0.02, reorder=0.02, duplicate=0.02),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", list(CASES))
async def test_ten_megabytes_each_way(autojump_clock: trio.testing.MockClock, case: str) -> None:
    faults = CASES[case]
    seed = 1000 + list(CASES).index(case)
    seed_trio_scheduler(seed)
    with trio.fail_after(BUDGET):
        async with open_sim_pair(
            seed, loss=faults.loss, reorder=faults.reorder, duplicate=faults.duplicate
        ) as pair:
            result = await transfer_both_ways(pair, SIZE, seed=seed)
            assert (result.upload, result.download) == expected(seed, SIZE)
            check_conservation(pair)
            stats: dict[str, Any] = summary(pair, result)
    network = stats["network"]
    retransmitted = stats["client"]["retransmit"] + stats["server"]["retransmit"]
    if faults.loss:
        assert network["dropped"] > 0
        assert retransmitted >= network["dropped"] // 2  # most losses are data segments
    else:
        assert network["dropped"] == 0
    if faults == Faults():
        assert retransmitted == 0
        assert network["delivered"] == network["sent"]
    if faults.duplicate:
        assert network["duplicated"] > 0
    if faults.reorder:
        assert network["reordered"] > 0
    check_snapshot("transfer", case, stats)


@pytest.mark.slow
async def test_two_megabytes_each_way_ipv6_with_every_fault(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The same over IPv6 (MSS = MTU - 60) with loss, reordering, duplication and jitter."""
    seed = 1100
    seed_trio_scheduler(seed)
    size = 2 * MB
    with trio.fail_after(BUDGET):
        async with open_sim_pair(
            seed, loss=0.02, reorder=0.02, duplicate=0.02, jitter=0.0005, ipv6=True
        ) as pair:
            result = await transfer_both_ways(pair, size, seed=seed)
            assert (result.upload, result.download) == expected(seed, size)
            check_snapshot("transfer", "ipv6-combined-2MB", summary(pair, result))


def test_summary_is_a_function_of_the_seed() -> None:
    """Same seed, same summary, to the packet and the microsecond; another seed differs.

    Each run is a fresh ``trio.run`` on a fresh ``MockClock``, as each test is.
    """

    async def transfer(seed: int) -> dict[str, Any]:
        seed_trio_scheduler(seed)
        with trio.fail_after(BUDGET):
            async with open_sim_pair(seed, loss=0.05, reorder=0.02) as pair:
                result = await transfer_both_ways(pair, 500_000, seed=seed)
                assert (result.upload, result.download) == expected(seed, 500_000)
                return summary(pair, result)

    def run(seed: int) -> dict[str, Any]:
        return trio.run(transfer, seed, clock=trio.testing.MockClock(autojump_threshold=0))

    first = run(5)
    assert first["client"]["retransmit"] > 0
    assert run(5) == first
    assert run(6) != first
