"""Freed array memory kept for the next step instead of returned to the system (glibc only).

A training step allocates and frees the same large arrays every time: GEMM outputs, noise
epilogues, update contractions, each a few MB. glibc's ``malloc`` returns the free top of its
heap to the system once it exceeds a threshold that it adapts on its own (twice the largest
freed block that was mapped on its own, at most 64 MiB). Whether a step's frees cross it
depends on the order of its allocations, and when they do, the next step touches that memory
afresh: every 4 KiB page is a fault the kernel zeroes. On a DANP step of
3072-1024-1024-1024-10 at batch 1000 a change of allocation order alone went from 0.5 MB to 32
MB of faulted pages a step (about 4 % of its time).

:func:`keep_freed_memory` fixes the two thresholds instead (``mallopt``): blocks of up to
:data:`MMAP_THRESHOLD` come from the heap, as glibc's adaptation ends up doing anyway, and the
heap keeps up to :data:`TRIM_THRESHOLD` of free memory at its top. The process then holds on to
memory it has freed (never more than its own peak) rather than faulting it in again. Importing
:mod:`noisesim` calls it once, unless ``NOISESIM_HEAP_TUNING=0`` or one of glibc's own
``MALLOC_*`` tunables (``MALLOC_TRIM_THRESHOLD_``, ``MALLOC_MMAP_THRESHOLD_``,
``MALLOC_TOP_PAD_``, ``GLIBC_TUNABLES``) is set: the user's choice wins. Nothing is done
elsewhere (macOS, Windows, musl).
"""
from __future__ import annotations

import ctypes
import os

MMAP_THRESHOLD = 32 << 20       # glibc's largest adaptive value (64-bit)
TRIM_THRESHOLD = 1 << 30
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3      # malloc.h
_USER_TUNABLES = ("MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TOP_PAD_", "GLIBC_TUNABLES")


def wanted(environ=os.environ) -> bool:
    """Whether :func:`keep_freed_memory` should act: not switched off, no glibc tunable set."""
    if environ.get("NOISESIM_HEAP_TUNING", "1").strip().lower() in ("0", "false", "no", "off"):
        return False
    return not any(name in environ for name in _USER_TUNABLES)


def _glibc() -> bool:
    try:
        return os.confstr("CS_GNU_LIBC_VERSION").startswith("glibc")
    except (AttributeError, ValueError, OSError):
        return False


def keep_freed_memory() -> bool:
    """Fix glibc's trim and mmap thresholds (see the module docstring). Returns whether both
    were set (``False`` off glibc or when ``mallopt`` refuses)."""
    if not _glibc():
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
