"""Keep the resident memory of long multi-threaded runs flat.

``atom3d predict`` finishes frames in a pool of threads (NumPy and zlib release the GIL).
glibc's malloc gives every thread that allocates its own *arena* (up to 8 per core), and
large arrays freed by one thread and reallocated by another fragment them: the resident
memory of a 1000-frame run then creeps up by ~0.4 MB per frame although nothing is kept
(measured: 665 MB of heap after 100 frames, 1004 MB after 400). Capping the number of
arenas at two (``mallopt(M_ARENA_MAX, 2)``, what ``MALLOC_ARENA_MAX=2`` does at start-up)
removes the creep (603 MB after 400 frames) at no measurable cost in speed. In session 5
the creep came back on the same benchmark (``rss_mb_100`` 1079, ``rss_mb_1000`` 1858;
session 4's code gave 986 / 1320 that day): glibc's *dynamic* mmap threshold rises to
32 MB after the first large free, and from then on frame-sized arrays come from the heap
and fragment it. A fixed threshold of 1 MB (``mallopt(M_MMAP_THRESHOLD, 1 MiB)``, which
also turns the dynamic one off) returns every large array to the system when freed:
768 / 783 MB (+1.9 %), end-to-end overhead unchanged (0.137). Elsewhere than
Linux/glibc this is a no-op.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

__all__ = ["limit_malloc_arenas"]

_M_ARENA_MAX = -8  # glibc's mallopt parameter numbers
_M_MMAP_THRESHOLD = -3
#: Allocations at least this large [bytes] are always mmapped (and unmapped when freed).
MMAP_THRESHOLD_BYTES = 1 << 20
_done = False


def limit_malloc_arenas(n: int = 2) -> bool:
    """Cap glibc's malloc arenas at ``n`` (for arenas created from now on) and fix the
    mmap threshold at :data:`MMAP_THRESHOLD_BYTES`.

    Returns True if the cap was set (Linux with glibc), False otherwise. Idempotent.
    """
    global _done
    if _done:
        return True
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        _done = bool(libc.mallopt(_M_ARENA_MAX, int(n)))
        # a fixed threshold also turns off glibc's dynamic one, which rises to 32 MB
        # after large frees and then serves frame-sized arrays from the fragmenting heap
        _done = bool(libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)) and _done
    except (OSError, AttributeError):
        return False
    return _done
