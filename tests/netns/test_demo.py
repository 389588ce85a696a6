"""The README's main command: `stcp demo` survives its kill -9s and cleans up."""

from __future__ import annotations

import subprocess
import sys

import pytest

pytestmark = [pytest.mark.netns, pytest.mark.slow]


@pytest.mark.timeout(300)
def test_demo_survives_kills_byte_exact_and_cleans_up(netns_ready: None) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "stcp_framework.cli.main", "demo", "--size", "24", "--kills",
         "3", "--seed", "7"],
        capture_output=True, text=True, timeout=280,
    )  # fmt: skip
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    assert out.count("kill -9 server") == 3
    assert out.count("client resumed") == 3
    assert "OK: 24 MB echoed byte-exact through 3 kill -9s" in out
    assert "cleaned up" in out
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    assert "stcpdemo0" not in links
