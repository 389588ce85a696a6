"""``stcp run`` keeps freed memory in its heap (cli/heap.py): glibc takes the settings."""

from __future__ import annotations

import subprocess
import sys


def test_glibc_takes_the_heap_settings() -> None:
    # in a child: the settings are process-wide and must not change the test runner's
    code = (
        "from stcp_framework.cli.heap import keep_freed_memory; "
        "import sys; sys.exit(0 if keep_freed_memory() else 1)"
    )
    assert subprocess.run([sys.executable, "-c", code], timeout=60).returncode == 0
