"""A 16-point sweep on Dask with 1 and 2 workers, against the same points one after another
in one process — and what oversubscribed BLAS threads cost.

The sweep: ``quickstart`` with BP on a 64-512-512-10 network (batch 64, one epoch of
scikit-learn's digits, 23 steps plus the evaluations), 4 learning rates × 4 seeds; the
scenario's own BLAS limit is lifted (``blas_threads = null``) so that the worker's limit is
the one that acts. Contenders, each timed from start to aggregate (cluster start included),
interleaved round by round so that a busy machine slows them alike:

* ``sequential``     — every point by :func:`scenarios.sweep.run_point` in this process, BLAS
                       and Numba free to use every core (what a plain loop does);
* ``sequential, 1 thread`` — the same with BLAS and Numba on one thread (for context: on a
                       machine busy with other work a second BLAS thread mostly contends);
* ``dask 1 worker``  — ``noisesim sweep --workers 1``: one worker with all cores' threads;
* ``dask 2 workers`` — ``--workers 2`` (on 2 cores: one BLAS/Numba thread each);
* ``dask 2 workers, unlimited`` — 2 workers each allowed every core's threads
  (workers × threads > cores: the oversubscription the thread limit avoids).

    python benchmarks/bench_sweep.py [--rounds 2] [--points 16] [--epochs 1]

Prints seconds per round and the ratio of each contender's time to ``sequential``.
"""
from __future__ import annotations

import argparse
import io
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from scenarios import sweep as sw
from scenarios.scenario import get

LRS = [1e-3, 3e-3, 1e-2, 3e-2]


def make_sweep(n_points: int, epochs: int = 1) -> sw.Sweep:
    n_seeds = max(1, n_points // len(LRS))
    return sw.Sweep.from_dict({
        "scenario": "quickstart", "seeds": n_seeds, "checkpoint_every": 0,
        "settings": {"rules": ["bp"], "epochs": epochs, "sizes": [64, 512, 512, 10], "batch_size": 64,
                     "blas_threads": None, "backend": "numpy"},
        "grid": {"rule_options.bp.lr": LRS[:max(1, min(len(LRS), n_points))]}})


def sequential(sweep: sw.Sweep, out: Path, threads: int | None = None) -> None:
    defaults = get(sweep.scenario).defaults
    for p in sweep.expand():
        st = sw.run_point(sweep.scenario, sweep.quick, sweep.pairs(p, defaults), str(out / "points" / p.name),
                          sweep.checkpoint_every, threads=threads or sw.cores())
        assert st["status"] == "done", st
    sw.aggregate(sweep, out, sweep.expand())


def on_dask(workers: int, threads: int | None = None):
    def go(sweep: sw.Sweep, out: Path) -> None:
        res = sw.run(sweep, out, workers=workers, progress=False, stream=io.StringIO(), threads=threads)
        bad = [st for _, st in res["points"] if st["status"] != "done"]
        assert not bad, bad
    return go


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--points", type=int, default=16)
    ap.add_argument("--epochs", type=int, default=1, help="epochs of digits per point (the size of a point)")
    args = ap.parse_args(argv)
    sweep = make_sweep(args.points, args.epochs)
    n = len(sweep.expand())
    cores = sw.cores()
    contenders = {"sequential": sequential, "sequential, 1 thread": lambda s, o: sequential(s, o, 1),
                  "dask 1 worker": on_dask(1), "dask 2 workers": on_dask(2),
                  "dask 2 workers, unlimited": on_dask(2, threads=cores)}
    times = {k: [] for k in contenders}
    root = Path(tempfile.mkdtemp(prefix="bench-sweep-"))
    try:
        sequential(make_sweep(len(LRS)), root / "warm-up")      # Numba compilation, data cache
        for r in range(args.rounds):
            names = list(contenders)
            names = names[r % len(names):] + names[:r % len(names)]    # rotate the order each round
            for name in names:
                out = root / f"{r}-{name.replace(' ', '_').replace(',', '')}"
                t0 = time.perf_counter()
                contenders[name](sweep, out)
                times[name].append(time.perf_counter() - t0)
                shutil.rmtree(out, ignore_errors=True)
                print(f"round {r + 1}: {name:<26} {times[name][-1]:6.1f} s", flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    base = statistics.median(times["sequential"])
    print(f"\n{n} points, {cores} cores, {args.rounds} rounds (median s; time ÷ sequential, and its range over rounds)")
    for name, ts in times.items():
        ratios = [t / s for t, s in zip(ts, times["sequential"])]
        print(f"{name:<26} {statistics.median(ts):6.1f} s   {statistics.median(ts) / base:5.2f}×   "
              f"({min(ratios):.2f}–{max(ratios):.2f}×)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
