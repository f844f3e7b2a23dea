"""BLAS threads chosen by the size of the work, so small products do not pay for threads
that cannot help.

NumPy's BLAS (OpenBLAS) splits every GEMM above a tiny size over all its threads, and its
idle threads spin waiting for work. Where the cores are busy with other processes a split
product waits for its slowest thread, which the scheduler may have put aside for a whole
time slice: on a 2-core machine under load a 10×1000×1024 product took 19–38 ms with two
threads and 0.67 ms with one, and the quickstart 195 s against 23.5 s. Here a product of
fewer than :data:`SMALL_FLOPS` runs on one thread; a larger one on as many threads as there
are cores not running other processes' work (Linux: ``/proc/loadavg``'s runnable count less
this process's own running threads, sampled at most every :data:`REFRESH_S`), never more
than BLAS had when the block started — an explicit limit (``threadpoolctl``, the scenarios'
``blas_threads``, ``OPENBLAS_NUM_THREADS``) always wins.

>>> from noisesim import threads
>>> with threads.for_flops(2 * 32 * 256 * 256):     # a quickstart-sized product: one thread
...     pass

:func:`for_layers` is the same for the largest product of one pass of a network; the
network's forward pass and ``scenarios.train``'s steps use it. ``NOISESIM_BLAS_AUTO=0``
switches the choice off (BLAS keeps its own thread count). Thread counts are
process-wide: the choice assumes one thread of Python drives BLAS at a time.
"""
from __future__ import annotations

import contextlib
import functools
import os
import time

SMALL_FLOPS = 1e8     # below this a product runs on one thread (a split costs more than it saves)
REFRESH_S = 0.25      # how often the count of busy cores is sampled
AUTO = os.environ.get("NOISESIM_BLAS_AUTO", "1").strip().lower() not in ("0", "false", "no", "off")


class _Blas:
    """The BLAS libraries loaded in this process (through ``threadpoolctl``, found once)."""

    def __init__(self):
        try:
            from threadpoolctl import ThreadpoolController
            self.libs = [lib for lib in ThreadpoolController().lib_controllers if lib.user_api == "blas"]
        except Exception:    # noqa: BLE001 - no threadpoolctl, or a BLAS it cannot drive: leave BLAS alone
            self.libs = []

    def get(self) -> int:
        return min(lib.get_num_threads() or 1 for lib in self.libs)

    def set(self, n: int) -> None:
        for lib in self.libs:
            lib.set_num_threads(n)


@functools.lru_cache(maxsize=1)
def _blas() -> _Blas:
    return _Blas()


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


_sample = {"t": -1.0, "free": None}


def free_cores() -> int:
    """Cores not running other processes' work right now (at least 1; all of them where
    this cannot be read). Sampled at most every :data:`REFRESH_S` seconds."""
    now = time.monotonic()
    if now - _sample["t"] < REFRESH_S and _sample["free"] is not None:
        return _sample["free"]
    cores = _cores()
    try:
        with open("/proc/loadavg") as f:
            running = int(f.read().split()[3].split("/")[0])
        own = 0
        for tid in os.listdir("/proc/self/task"):
            try:
                with open(f"/proc/self/task/{tid}/stat") as f:
                    own += f.read().rsplit(")", 1)[1].split()[0] == "R"
            except OSError:
                continue
        free = max(1, min(cores, cores - (running - max(own, 1))))
    except (OSError, ValueError, IndexError):
        free = cores
    _sample.update(t=now, free=free)
    return free


def threads_for(flops: float, available: int) -> int:
    """Threads for a product of ``flops`` when BLAS may use up to ``available``."""
    if available <= 1 or flops < SMALL_FLOPS:
        return 1
    return max(1, min(available, free_cores()))


@contextlib.contextmanager
def for_flops(flops: float):
    """While the block runs, BLAS uses the threads :func:`threads_for` chooses for a product
    of ``flops`` floating-point operations (never more than it had)."""
    blas = _blas()
    if not AUTO or not blas.libs:
        yield
        return
    before = blas.get()
    n = threads_for(flops, before)
    if n >= before:
        yield
        return
    blas.set(n)
    try:
        yield
    finally:
        blas.set(before)


def layer_flops(sizes, rows: int) -> float:
    """Floating-point operations of the largest product of one pass of ``rows`` samples
    through layers of widths ``sizes`` (a weight product, or a decorrelation product of a
    layer input with itself)."""
    widths = [int(s) for s in sizes]
    largest = max([a * b for a, b in zip(widths, widths[1:])] + [a * a for a in widths[:-1]] + [0])
    return 2.0 * rows * largest


def for_layers(sizes, rows: int):
    """:func:`for_flops` for one pass of ``rows`` samples through widths ``sizes``."""
    return for_flops(layer_flops(sizes, rows))


def sized(method):
    """Decorator for a network method ``method(self, x, …)``: BLAS threads chosen for
    ``len(x)`` samples through ``self.sizes`` while it runs."""
    @functools.wraps(method)
    def run(self, x, *args, **kwargs):
        with for_layers(self.sizes, len(x)):
            return method(self, x, *args, **kwargs)
    return run
