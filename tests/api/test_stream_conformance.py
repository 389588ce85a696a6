"""trio's generic stream contract (``check_half_closeable_stream``) holds for stcp streams.

Each run uses a fresh simulated network on trio's ``MockClock(autojump_threshold=0)``.
"""

from __future__ import annotations

import pytest
import trio
import trio.testing

from stcp_framework.testing import check_stcp_stream


async def test_half_closeable_stream_ipv4(autojump_clock: trio.testing.MockClock) -> None:
    await check_stcp_stream(seed=1)


async def test_half_closeable_stream_ipv6(autojump_clock: trio.testing.MockClock) -> None:
    await check_stcp_stream(seed=2, ipv6=True)


@pytest.mark.parametrize("seed", [3, 4])
async def test_half_closeable_stream_lossy(
    autojump_clock: trio.testing.MockClock, seed: int
) -> None:
    """The same contract when 2 % of packets are lost, 1 % duplicated and 1 % reordered."""
    await check_stcp_stream(seed=seed, loss=0.02, duplicate=0.01, reorder=0.01)
