"""The ``stcp`` process's heap: keep freed memory instead of giving it back at once.

A server moves bulk data as ``bytes`` objects of 64 KB to 1 MiB (one per TUN read, one
per joined ``receive_some``), allocated and freed at every read. With glibc's defaults
blocks that large come from ``mmap`` (or sit at the top of the heap, which ``free``
trims), so the next one page-faults in afresh: 60-160 minor faults per MB on an
upload or echo, ~10 % of the server's CPU. ``keep_freed_memory`` raises glibc's mmap
and trim thresholds (``mallopt``, as ``MALLOC_MMAP_THRESHOLD_`` /
``MALLOC_TRIM_THRESHOLD_`` in the environment would), so freed blocks are reused: the
process keeps up to 256 MB it no longer uses instead of returning it at once.

``stcp run`` calls it for its own process; a program that embeds stcp with
``open_stack`` decides for itself (it owns its heap). ``bench/server.py`` calls it for
every row, kernel and stcp alike.
"""

from __future__ import annotations

import ctypes

# glibc mallopt() parameters (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 << 20  # glibc's largest (DEFAULT_MMAP_THRESHOLD_MAX on 64-bit)
TRIM_THRESHOLD = 256 << 20


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
