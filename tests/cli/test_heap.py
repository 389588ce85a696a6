"""``stcp run`` keeps freed memory in its heap and collects garbage less often
(cli/heap.py): glibc and the collector take the settings."""

from __future__ import annotations

import subprocess
import sys


def _in_child(code: str) -> int:
    # in a child: the settings are process-wide and must not change the test runner's
    return subprocess.run([sys.executable, "-c", code], timeout=60).returncode


def test_glibc_takes_the_heap_settings() -> None:
    code = (
        "from stcp_framework.cli.heap import keep_freed_memory; "
        "import sys; sys.exit(0 if keep_freed_memory() else 1)"
    )
    assert _in_child(code) == 0


def test_collector_runs_less_often_and_skips_start_up_objects() -> None:
    code = (
        "import gc, sys\n"
        "from stcp_framework.cli.heap import GC_THRESHOLDS, collect_garbage_less_often\n"
        "assert gc.get_freeze_count() == 0\n"
        "collect_garbage_less_often()\n"
        "assert gc.get_threshold() == GC_THRESHOLDS, gc.get_threshold()\n"
        "assert GC_THRESHOLDS[0] >= 10_000\n"
        "assert gc.get_freeze_count() > 1000, gc.get_freeze_count()\n"
        "assert gc.isenabled()\n"
        "class Cycle: pass\n"
        "c = Cycle(); c.me = c; del c\n"
        "assert gc.collect() >= 1  # cycles are still collected\n"
    )
    assert _in_child(code) == 0
