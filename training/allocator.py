"""glibc's allocator told to keep the pages a training step frees, for the next step to reuse.

Every step frees its activations and gradients and allocates the same sizes again. By default
glibc hands blocks above its mmap threshold straight back to the kernel, and trims the top of its
heap once more than its trim threshold is free there; the next step then writes to fresh pages,
one page fault per 4 KiB. The lecture recipe's bf16 step took about 1,900 faults a step here, and
ran at half its rate on a busy machine (docs/benchmarks.md, issue 28). Raising both thresholds
keeps those pages in the process: a training process holds on to at most ``TRIM_THRESHOLD`` of
freed memory it would otherwise have given back.
"""

from __future__ import annotations

import ctypes
import logging

log = logging.getLogger(__name__)

# mallopt's parameter numbers (glibc's malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3

MMAP_THRESHOLD = 32 * 1024 * 1024  # glibc's ceiling for it on 64-bit (HEAP_MAX_SIZE / 2)
TRIM_THRESHOLD = 256 * 1024 * 1024


def keep_freed_pages() -> bool:
    """Raise glibc's mmap and trim thresholds for this process; False where the C library is
    not glibc (musl, macOS) or refuses, and the process keeps its allocator's defaults.

    The process' own symbols (``CDLL(None)``) hold the C library's: no search for its file."""
    mallopt = getattr(ctypes.CDLL(None), "mallopt", None)
    if mallopt is None:
        log.info("no glibc mallopt here: the allocator keeps its defaults")
        return False
    applied = mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1 and (
        mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
    )
    if not applied:
        log.info("mallopt refused the thresholds: the allocator keeps its defaults")
    return applied
