"""The ``stcp`` process's heap: keep freed memory instead of giving it back at once, and
let the cyclic garbage collector run less often.

A server moves bulk data as ``bytes`` objects of 64 KB to 1 MiB (one per TUN read, one
per joined ``receive_some``), allocated and freed at every read. With glibc's defaults
blocks that large come from ``mmap`` (or sit at the top of the heap, which ``free``
trims), so the next one page-faults in afresh: 60-160 minor faults per MB on an
upload or echo, ~10 % of the server's CPU. ``keep_freed_memory`` raises glibc's mmap
and trim thresholds (``mallopt``, as ``MALLOC_MMAP_THRESHOLD_`` /
``MALLOC_TRIM_THRESHOLD_`` in the environment would), so freed blocks are reused: the
process keeps up to 256 MB it no longer uses instead of returning it at once.

``collect_garbage_less_often`` raises the collector's first threshold from CPython's 700
to 50,000 container objects and freezes what exists at start-up (modules, classes). A
round on 1,000 connections keeps a few objects per connection alive for its length
(segments, deltas, woken tasks): at 700, 31 echo rounds there started 740 gen-0, 67
gen-1 and 6 full collections, each rescanning the survivors -- 0.36 s, ~14 % of the
server's CPU, growing faster than the connections; at 50,000, one gen-0 collection
(6-10 ms). Garbage that only the collector frees (cycles) waits for up to 50,000
allocations: a few MB at most.

``stcp run`` calls both for its own process; a program that embeds stcp with
``open_stack`` decides for itself (it owns its heap). ``bench/server.py`` calls them for
every row, kernel and stcp alike.
"""

from __future__ import annotations

import ctypes
import gc

# glibc mallopt() parameters (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 << 20  # glibc's largest (DEFAULT_MMAP_THRESHOLD_MAX on 64-bit)
TRIM_THRESHOLD = 256 << 20
GC_THRESHOLDS = (50_000, 10, 10)  # CPython's defaults: (700, 10, 10)


def keep_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds for this process (see the module
    docstring). Returns False where ``mallopt`` is missing (not glibc): nothing changes."""
    try:
        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    return bool(
        mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) and mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    )


def collect_garbage_less_often() -> None:
    """Freeze the objects that exist now and raise the collector's gen-0 threshold to
    ``GC_THRESHOLDS`` (see the module docstring). Process-wide; call it once at start-up."""
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
