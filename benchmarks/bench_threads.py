"""BLAS threads on a busy machine: noisesim's per-size choice against BLAS's default and one thread.

Two workloads — the quickstart (DANP and BP on digits, 64-256-256-256-10, batch 32) and one
DANP step on 3072-1024-1024-1024-10 at batch 1000 — each timed with

* ``auto``: noisesim chooses the threads per product size (:mod:`noisesim.threads`, the default);
* ``blas``: BLAS's own default (all cores for every product; ``NOISESIM_BLAS_AUTO=0``);
* ``one``: one BLAS thread for everything (``OPENBLAS_NUM_THREADS=1``);

on the machine as it is and again with ``--competitors`` CPU-bound processes running beside
it. The contenders alternate within each repeat, so they share the machine's conditions;
the load average is printed with every block. Ratios are to ``one``.

    python benchmarks/bench_threads.py --repeats 3 --epochs 1 --competitors 2
"""
from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
import time

import numpy as np
from threadpoolctl import threadpool_limits

import noisesim
import noisesim.threads
import rules
import scenarios

MODES = ("auto", "blas", "one")


@contextlib.contextmanager
def mode(name):
    old = noisesim.threads.AUTO
    noisesim.threads.AUTO = name == "auto"
    try:
        if name == "one":
            with threadpool_limits(limits=1, user_api="blas"):
                yield
        else:
            yield
    finally:
        noisesim.threads.AUTO = old


def quickstart(epochs: int) -> float:
    data = scenarios.load("digits")
    dev = noisesim.DeviceConfig.preset("ideal")
    t0 = time.perf_counter()
    for name, opts in (("danp", {"baseline": "noisy"}), ("bp", {})):
        net = noisesim.Network.mlp([64, 256, 256, 256, 10], device=dev, seed=0, backend="numpy")
        scenarios.train(net, rules.make(name, lr=1e-3, **opts), data, epochs=epochs, batch_size=32, progress=False)
    return time.perf_counter() - t0


class BigStep:
    """One DANP step on 3072-1024-1024-1024-10, batch 1000 (random data)."""

    def __init__(self):
        rng = np.random.default_rng(0)
        self.x = rng.random((1000, 3072), dtype=np.float32)
        self.t = np.eye(10, dtype=np.float32)[rng.integers(0, 10, 1000)]
        self.net = noisesim.Network.mlp([3072, 1024, 1024, 1024, 10], device=noisesim.DeviceConfig.preset("ideal"),
                                        seed=0, backend="numpy")
        self.rule = rules.make("danp", baseline="noisy", lr=1e-4)
        self.rule.init(self.net)

    def __call__(self, steps: int) -> float:
        t0 = time.perf_counter()
        for _ in range(steps):
            with noisesim.threads.for_layers(self.net.sizes, len(self.x)):
                self.rule.step(self.net, self.x, self.t)
        return (time.perf_counter() - t0) / steps


def block(title, repeats, epochs, big, steps):
    times = {(w, m): [] for w in ("quickstart", "danp-3072") for m in MODES}
    load0 = os.getloadavg()
    for _ in range(repeats):
        for m in MODES:
            with mode(m):
                times["quickstart", m].append(quickstart(epochs))
                times["danp-3072", m].append(big(steps))
    load1 = os.getloadavg()
    print(f"\n{title}  (load average {load0[0]:.1f} → {load1[0]:.1f}, {os.cpu_count()} cores)")
    print(f"{'workload':<12} {'mode':<5} {'median s':>9} {'range s':>17} {'÷ one':>12}")
    for w in ("quickstart", "danp-3072"):
        one = np.median(times[w, "one"])
        for m in MODES:
            v = np.array(times[w, m])
            print(f"{w:<12} {m:<5} {np.median(v):9.3f} {v.min():8.3f}–{v.max():<8.3f} {np.median(v) / one:6.2f} "
                  f"({v.min() / one:.2f}–{v.max() / one:.2f})")
    return times


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=1, help="quickstart epochs per timing (the full run has 15)")
    ap.add_argument("--steps", type=int, default=3, help="3072-wide DANP steps per timing")
    ap.add_argument("--competitors", type=int, default=2, help="CPU-bound processes for the loaded block")
    ap.add_argument("--skip-quiet", action="store_true")
    a = ap.parse_args(argv)
    print(f"noisesim {noisesim.__version__}; SMALL_FLOPS={noisesim.threads.SMALL_FLOPS:g}; "
          f"BLAS threads {noisesim.threads._blas().get()}")
    big = BigStep()
    big(1)
    if not a.skip_quiet:
        block("as the machine is", a.repeats, a.epochs, big, a.steps)
    procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(a.competitors)]
    try:
        time.sleep(1.0)
        block(f"with {a.competitors} competing CPU-bound processes", a.repeats, a.epochs, big, a.steps)
    finally:
        for p in procs:
            p.kill()
            p.wait()


if __name__ == "__main__":
    main()
