"""What evaluation costs a training run: ``scenarios.train``'s ``eval_every``/``eval_train``.

DANP (noisy baseline) on MNIST-1D, 40-256-256-256-10, batch 100, one BLAS thread, timed for
``--epochs`` epochs with every contender interleaved round by round:

* ``full``     — the whole training split measured every epoch (``eval_train=None``);
* ``default``  — at most 2000 training samples every epoch (the default);
* ``every 5``  — the default subset, every fifth epoch and the last (``eval_every=5``).

    python benchmarks/bench_evaluation.py [--rounds 2] [--epochs 5]

Prints seconds per run and each contender's time ÷ ``full``.
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

from threadpoolctl import threadpool_limits

import noisesim
import rules
import scenarios

CONTENDERS = {"full": {"eval_train": None}, "default": {}, "every 5": {"eval_every": 5}}


def run_once(data, epochs: int, options: dict) -> float:
    dev = noisesim.DeviceConfig.preset("ideal", node_noise=1e-3)
    net = noisesim.Network.mlp([40, 256, 256, 256, 10], device=dev, seed=0, backend="numpy")
    t0 = time.perf_counter()
    scenarios.train(net, rules.make("danp", baseline="noisy"), data, epochs=epochs, batch_size=100,
                    progress=False, **options)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=5)
    args = ap.parse_args()
    data = scenarios.load("mnist1d")
    print(f"MNIST-1D {len(data.x_train)} train / {len(data.x_test)} test; load {os.getloadavg()}")
    times = {name: [] for name in CONTENDERS}
    with threadpool_limits(1):
        run_once(data, 1, {})                                  # compile and cache before timing
        for _ in range(args.rounds):
            for name, options in CONTENDERS.items():
                times[name].append(run_once(data, args.epochs, options))
    full = times["full"]
    for name, ts in times.items():
        ratios = [t / f for t, f in zip(ts, full)]
        print(f"{name:<8} {statistics.median(ts):7.2f} s   ÷ full {statistics.median(ratios):.2f} "
              f"({min(ratios):.2f}–{max(ratios):.2f})")
    print(f"load after {os.getloadavg()}")


if __name__ == "__main__":
    main()
