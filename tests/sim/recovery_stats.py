"""Loss recovery over many seeds: mean virtual time, retransmissions and timeouts.

``test_sim_transfer.py`` checks one seed per fault case against a snapshot, which is
exact but says little about a change to loss recovery: one seed's drops can favour
either version. This runs the same transfer (``transfer_both_ways``: data both ways at
once, byte-exact) over ``--seeds`` seeds per case and prints the means, so that two
versions can be compared fairly::

    .venv/bin/python tests/sim/recovery_stats.py [--seeds 60] [--start 100] [--mb 2]
        [--no-timestamps]

``--no-timestamps`` runs both stacks without RFC 7323 timestamps (as Windows clients
run by default): no Eifel detection, so needless fast retransmits are found by D-SACK
alone.

Everything is on a virtual clock: the figures are exactly reproducible, whatever the
machine (about a minute per case for 60 seeds of 2 MB).
"""

from __future__ import annotations

import argparse
import statistics
from dataclasses import replace
from typing import Any

import trio
import trio.testing
from sim_helpers import expected, seed_trio_scheduler, summary, transfer_both_ways

from stcp_framework.tcp.config import TcpConfig
from stcp_framework.testing import open_sim_pair

CASES: dict[str, tuple[float, float, float]] = {  # loss, reorder, duplicate
    "loss-1pct": (0.01, 0.0, 0.0),
    "loss-5pct": (0.05, 0.0, 0.0),
    "reorder-5pct": (0.0, 0.05, 0.0),
    "duplicate-5pct": (0.0, 0.0, 0.05),
    "combined-2pct": (0.02, 0.02, 0.02),
}


def run_one(
    seed: int, size: int, faults: tuple[float, float, float], config: TcpConfig | None = None
) -> dict[str, Any]:
    loss, reorder, duplicate = faults

    async def main() -> dict[str, Any]:
        seed_trio_scheduler(seed)
        async with open_sim_pair(
            seed, loss=loss, reorder=reorder, duplicate=duplicate, config=config
        ) as pair:
            result = await transfer_both_ways(pair, size, seed=seed)
            if (result.upload, result.download) != expected(seed, size):
                raise AssertionError(f"seed {seed}: not byte-exact")
            return summary(pair, result)

    return trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=60)
    parser.add_argument("--start", type=int, default=100, help="first seed")
    parser.add_argument("--mb", type=float, default=2.0, help="MB each way (10^6 bytes)")
    parser.add_argument("--cases", default=",".join(CASES), help="comma-separated")
    parser.add_argument("--no-timestamps", action="store_true", help="RFC 7323 off on both")
    args = parser.parse_args()
    size = int(args.mb * 1_000_000)
    config = replace(TcpConfig(), timestamps=False) if args.no_timestamps else None
    without = ", no timestamps" if args.no_timestamps else ""
    print(f"{args.seeds} seeds from {args.start}, {args.mb:g} MB each way{without}; means per run")
    print(f"| {'case':15} | virtual s | median s | retransmits | timeouts |")
    print(f"|{'-' * 17}|-----------|----------|-------------|----------|")
    for case in args.cases.split(","):
        secs: list[float] = []
        resent: list[int] = []
        timeouts: list[int] = []
        for seed in range(args.start, args.start + args.seeds):
            stats = run_one(seed, size, CASES[case], config)
            ends = (stats["client"], stats["server"])
            secs.append(stats["virtual_seconds"])
            resent.append(sum(end["retransmit"] for end in ends))
            timeouts.append(sum(end["rto"] for end in ends))
        print(
            f"| {case:15} | {statistics.mean(secs):9.2f} | {statistics.median(secs):8.2f} "
            f"| {statistics.mean(resent):11.1f} | {statistics.mean(timeouts):8.1f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
