"""glibc malloc settings for long multi-threaded runs: flat memory, few page faults.

``atom3d predict`` allocates and frees the same large arrays for every batch: the
network's activations (a batch of four 512² frames churns through ~5 GB of tensors),
the logits, the maps and the column tables. How glibc's malloc serves them decides both
the memory profile over a long series and much of the speed.

- **Arenas.** glibc gives every thread that allocates its own arena (up to 8 per core);
  large arrays freed by one thread and reallocated by another fragment them, and the
  resident memory of a 1000-frame run crept up by ~0.4 MB per frame (session 4: 665 MB
  of heap after 100 frames, 1004 MB after 400). Two arenas (``M_ARENA_MAX``, what
  ``MALLOC_ARENA_MAX=2`` does at start-up) removed the creep.
- **Frame-sized arrays are mapped.** glibc's dynamic mmap threshold rises to 32 MB after
  the first large free, and from then on frame-sized arrays come from the heap and
  fragment it (session 5: ``rss_mb_100`` 1079, ``rss_mb_1000`` 1858). A fixed threshold
  of 1 MB (``M_MMAP_THRESHOLD``) returns every large array to the system when freed:
  768 / 783 MB (+1.9 %). (glibc maps a large request only when no free chunk of the
  heap can serve it: while the heap keeps the network's working set, see below,
  frame-sized arrays reuse that memory too.)
- **Heaps keep 16 MB at their top** (``M_TOP_PAD``; glibc's default is 128 kB, with
  which every free at a heap's top hands pages back and the next allocation faults them
  in again). A minor page fault costs ~2 µs of kernel time on the shared VMs we run on:
  session 14 measured the post-processing of 200 frames at 9.4 s with the default pad
  and 4.7 s with this one.
- **The network allocates from the heap** (:func:`network_allocations`, around every
  forward pass): mapping and unmapping its activations for every batch spent as much
  kernel time (zeroing fresh pages, unmapping them in a multi-threaded process) as the
  arithmetic itself (session 14: 12.7 M page faults and 22 s of system time against 26 s
  of user time for 40 frames of 512²), and more inside a run, where other threads come
  and go. Within the window mmap is off (``M_MMAP_MAX`` 0), and the freed activations
  stay in the heap (``M_TRIM_THRESHOLD`` :data:`TRIM_THRESHOLD_BYTES`, the largest
  mallopt takes) to be reused by the next batch. Session 15, 40 frames of 512² with the
  shipped model, time in the network: 38–44 s with every activation mapped, 29 s from
  the heap but trimmed to the top pad after every batch (session 14 asked for a 4 GiB
  threshold, which the C int of mallopt wrapped to 0), 18 s kept. The resident memory
  then holds the network's peak working set during the frame loop (peak 1977 MB against
  1660 MB mapped, for batches of four 512² frames), a constant; when the network is done,
  :func:`release_free_memory` hands it back before post-processing, which would
  otherwise add its own working set on top (session 15, tiny network: peak of a
  1000-frame run 1418 MB against 1267 MB for its frame loop; with the release, the
  frame loop's peak is the run's).
- **The kept heap drifts.** With the shipped network (base width 24, batches of four
  512² frames) the heap's layout was not constant after all: session 23 measured a peak
  of 2056 MB for 100 frames and 2578 MB for 1000 (+25 %), in steps of 60–120 MB
  hundreds of frames apart (the tiny network of the memory benchmark's ``--rss-model
  tiny``, used until then, hid it: +3.7 %). Two fixes in the frame loop of
  :func:`atom3d.inference.series.predict_series`. A batch's logits (190 MB for four
  512² frames and 2 × 23 classes) were still referenced while the next batch's network
  ran, pinning a block inside its working set; they are now freed first (alone: 2065 /
  1998 MB, but still stepping up late in the run). And the free memory of the heaps is
  handed back every ``TRIM_EVERY_FRAMES`` (64) frames, so the next batch faults its
  working set in afresh instead of keeping pages the layout no longer uses. Both:
  2144 / 2192 MB (+2.2 %), 1000 frames in 522 s against 528 s before (trimming every
  16 frames alone: 2229 / 2230 MB, 530 s). Session 24 moved the hand-back to after the
  batch is written and its logits freed (before, it ran with them still live): five
  100-frame runs 1855–1971 MB (mean 1934), two 1000-frame runs 1959 / 2035 MB (worst
  pair +9.7 %, means +3.3 %; session 23, at the old place: 1934–2229 for 100 frames).
  Handing back after every batch costs what keeping the working set saves (100 frames:
  66 s in the network against 40–54 s); every 16 frames gave 2148 MB for 100 frames;
  finishing each batch in a worker thread, so that its allocations come from another
  arena, 2022 / 2103 MB. None of these was kept. The peak of the same code scatters
  between runs (100 frames: 1768–2247 MB over nine runs), and the scatter is not from
  address-space randomisation (``setarch -R``: 1768 / 1860 / 2085 MB), the finishing
  threads (finished in a persistent pool: 1875 / 1995; serially: 1927 / 2076 / 1980),
  the network's threads (one thread, 40 frames: 2233 / 2513 / 1996) or str hashing
  (``PYTHONHASHSEED=0``, 40 frames: 1947 / 1890 / 2002). A probe of the heap after
  every layer (mallinfo2) found the memory in use the same in every run (at most
  970–981 MB at layer ends) and the heap around it 1576, 1712 and 1754 MB after six
  batches: the scatter is fragmentation, the free space the activations leave between
  each other, and it grows with the size of the working set.
- **On a CPU the network takes one image at a time** (``CPU_NETWORK_IMAGES`` in
  :mod:`atom3d.inference.predictor`; a batch of ``--batch-size`` frames is still read,
  finished and written together). The network is no faster on four 512² frames at once
  than on one, and its logits are bit for bit the same, while the working set the heap
  keeps, and the fragmentation around it, is a quarter. Session 24, 100 frames: peak
  969 / 996 / 973 MB (against 1768–2247), 42–44 s in the network (40–54 s before).

Elsewhere than Linux/glibc all of this is a no-op.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import sys
import threading
from collections.abc import Iterator

__all__ = ["limit_malloc_arenas", "network_allocations", "release_free_memory"]

# glibc's mallopt parameter numbers
_M_TRIM_THRESHOLD = -1
_M_TOP_PAD = -2
_M_MMAP_THRESHOLD = -3
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8
#: Allocations at least this large [bytes] are mmapped (and unmapped when freed) when no
#: free chunk of the heap fits them, and never inside :func:`network_allocations`.
MMAP_THRESHOLD_BYTES = 1 << 20
#: Free memory [bytes] each heap keeps at its top instead of giving it back at once.
TOP_PAD_BYTES = 16 << 20
#: Free memory at the top of a heap [bytes] above which glibc gives it back: above the
#: network's working set, which then stays in the heap from one batch to the next.
TRIM_THRESHOLD_BYTES = (1 << 31) - 1  # the largest a C int holds
_MMAP_MAX_DEFAULT = 65536  # glibc's DEFAULT_MMAP_MAX
_libc: ctypes.CDLL | None = None
_done = False
_window = threading.Lock()
_inside = 0


def _mallopt(key: int, value: int) -> bool:
    # mallopt takes a C int: ctypes would silently wrap a larger value (4 GiB becomes 0)
    if not -(1 << 31) <= value < (1 << 31):
        raise ValueError(f"mallopt value {value} does not fit in a C int")
    return _libc is not None and bool(_libc.mallopt(ctypes.c_int(key), ctypes.c_int(value)))


def limit_malloc_arenas(n: int = 2) -> bool:
    """Cap glibc's malloc arenas at ``n`` (for arenas created from now on), fix the mmap
    threshold at :data:`MMAP_THRESHOLD_BYTES`, the top pad at :data:`TOP_PAD_BYTES` and
    the trim threshold at :data:`TRIM_THRESHOLD_BYTES` (see the module docstring).

    Returns True if the settings were made (Linux with glibc), False otherwise.
    Idempotent.
    """
    global _done, _libc
    if _done:
        return True
    if not sys.platform.startswith("linux"):
        return False
    try:
        _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        settings = ((_M_ARENA_MAX, int(n)), (_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES),
                    (_M_TOP_PAD, TOP_PAD_BYTES), (_M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES))
        _done = all([_mallopt(key, value) for key, value in settings])
    except (OSError, AttributeError):
        _libc = None
        return False
    return _done


@contextlib.contextmanager
def network_allocations() -> Iterator[None]:
    """Serve every allocation from the heaps while the block runs (mmap off), for the
    network's activations (see the module docstring). Re-entrant and thread-safe: mmap
    comes back when the last block open in any thread closes. A no-op unless
    :func:`limit_malloc_arenas` took effect.
    """
    global _inside
    if not _done:
        yield
        return
    with _window:
        _inside += 1
        if _inside == 1:
            _mallopt(_M_MMAP_MAX, 0)
    try:
        yield
    finally:
        with _window:
            _inside -= 1
            if _inside == 0:
                _mallopt(_M_MMAP_MAX, _MMAP_MAX_DEFAULT)


def release_free_memory() -> bool:
    """Give the free memory of every heap back to the system (glibc ``malloc_trim(0)``:
    the free top of each heap and the free pages inside them), e.g. the network's
    working set kept by :func:`network_allocations` once no more batches follow.
    Returns True if memory was released; a no-op unless :func:`limit_malloc_arenas`
    took effect.
    """
    if not _done:
        return False
    return bool(_libc.malloc_trim(0))  # _libc is set when _done
