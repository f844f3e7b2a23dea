"""Cost of tracing: training-step time with a trace written, divided by the time without.

Two configurations by default, in one run: the quickstart network (64 → 256 → 256 → 256 → 10,
batch 32) and a realistic one (64 → 1024 → 1024 → 1024 → 10, batch 256) — float32, ``ideal``
device, digits, for DANP (noisy baseline) and BP. At larger widths the compute of a step grows
faster (∝ batch·width²) than the bytes it records (∝ batch·width), so the ratio shrinks. A
step is ``rule.step`` (estimate → decorrelation → optimizer → apply) plus, when tracing,
``TraceWriter.write``: pack the step into one buffer and write it into the pipe of the writer
process, which checksums, compresses and writes it (its CPU time counts wherever it hurts the
training process, which shares the machine with it). The timed steps end with a ``flush``
(every step in the file). The writer process starts once per trace; that start is reported
apart (seconds), not in the per-step time. The variants — off, uncompressed, gzip, lzf,
float16 — run in interleaved blocks on the same batches, and each ratio is the median block
time over the median "off" block time, all from one run, so they are comparable on a busy
machine.

    python benchmarks/bench_trace.py [--steps 100] [--blocks 5] [--configs quickstart,large]
    python benchmarks/bench_trace.py --sizes 64,512,512,10 --batch 64      # one custom configuration
    python benchmarks/bench_trace.py --in-process        # HDF5 work inside the training process

Goal (issue 5): ≤ 1.2× with compression. Prints bytes per step (on disk) for each variant.
While a traced block runs, BLAS uses one thread fewer than there are cores
(:func:`noisesim.trace.leave_a_core`, as ``scenarios.train`` does when tracing), so the writer
process has a core; ``--all-cores`` keeps BLAS on every core to show what that avoids.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import tempfile
import time

import numpy as np

import noisesim
import rules
import scenarios
from noisesim.trace import TraceWriter, leave_a_core

VARIANTS = [
    ("off", None),
    ("none", {}),
    ("gzip", {"compression": "gzip", "compression_opts": 1}),
    ("lzf", {"compression": "lzf"}),
    ("float16", {"float16": True}),
    ("float16+lzf", {"float16": True, "compression": "lzf"}),
]


CONFIGS = {"quickstart": ("64,256,256,256,10", 32), "large": ("64,1024,1024,1024,10", 256)}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=100, help="steps per block")
    ap.add_argument("--blocks", type=int, default=5, help="interleaved blocks per variant")
    ap.add_argument("--configs", default="quickstart,large",
                    help=f"named configurations, in order ({', '.join(CONFIGS)})")
    ap.add_argument("--batch", type=int, default=None, help="with --sizes: one custom configuration")
    ap.add_argument("--sizes", default=None, help="comma-separated layer widths (first: 64)")
    ap.add_argument("--large-steps", type=int, default=None,
                    help="steps per block for the large configuration (default: --steps / 4, at least 10)")
    ap.add_argument("--rules", default="danp,bp")
    ap.add_argument("--in-process", action="store_true", help="TraceWriter(background=False)")
    ap.add_argument("--all-cores", action="store_true",
                    help="keep BLAS on every core while tracing (scenarios.train leaves one to the writer)")
    args = ap.parse_args(argv)
    data = scenarios.load("digits")
    if args.sizes is not None or args.batch is not None:
        sizes = args.sizes or CONFIGS["quickstart"][0]
        configs = [([int(s) for s in sizes.split(",")], args.batch or 32, args.steps)]
    else:
        configs = []
        for c in args.configs.split(","):
            if c not in CONFIGS:
                raise SystemExit(f"unknown configuration {c!r}; known: {list(CONFIGS)}")
            sizes, batch = CONFIGS[c]
            steps = args.steps if c == "quickstart" else (args.large_steps or max(10, args.steps // 4))
            configs.append(([int(s) for s in sizes.split(",")], batch, steps))
    for sizes, batch, steps in configs:
        run(data, sizes, batch, steps, args.blocks, args.rules.split(","), background=not args.in_process,
            all_cores=args.all_cores)


def run(data, sizes, batch, steps, blocks, rule_names, background=True, all_cores=False) -> None:
    if sizes[0] != data.n_features:
        raise SystemExit(f"the first size must be {data.n_features} (digits)")
    rng = np.random.default_rng(0)
    batches = []
    for _ in range(steps):
        idx = rng.choice(len(data.x_train), batch, replace=False)
        batches.append((idx, data.x_train[idx], np.eye(sizes[-1], dtype=np.float32)[data.y_train[idx]]))
    tmp = tempfile.mkdtemp(prefix="bench_trace_")
    print(f"\nnetwork {sizes}, batch {batch}, {steps} steps x {blocks} blocks per variant, "
          f"backend numpy, float32, OPENBLAS_NUM_THREADS={os.environ.get('OPENBLAS_NUM_THREADS', 'unset')}, "
          f"writer {'process' if background else 'in-process'}"
          f"{', BLAS leaves it a core' if background and not all_cores else ''}")
    for name in rule_names:
        times = {v: [] for v, _ in VARIANTS}
        starts = {v: [] for v, _ in VARIANTS}
        nbytes = {}
        for block in range(blocks):
            for label, opts in VARIANTS:
                net = noisesim.Network.mlp(sizes, device=noisesim.DeviceConfig.preset("ideal"), seed=0, backend="numpy")
                rule = rules.make(name, lr=1e-3)
                rule.init(net)
                rule.step(net, batches[0][1], batches[0][2])  # warm-up (kernels, caches)
                path = os.path.join(tmp, f"{name}-{label}.h5")
                ts = time.perf_counter()
                tw = TraceWriter(path, net, rule, background=background, **opts) if opts is not None else None
                if tw is not None:
                    tw.flush()  # the writer process is up (a one-time start, reported apart)
                    starts[label].append(time.perf_counter() - ts)
                cores = leave_a_core() if tw is not None and background and not all_cores else contextlib.nullcontext()
                with cores:  # as scenarios.train does while a writer process runs
                    t0 = time.perf_counter()
                    for s, (idx, x, t) in enumerate(batches):
                        est = rule.step(net, x, t)
                        if tw is not None:
                            tw.write(s + 1, idx, est)
                    if tw is not None:
                        tw.flush()  # every step handed over is in the file
                    times[label].append((time.perf_counter() - t0) / steps)
                if tw is not None:
                    tw.close(net)
                    with noisesim.trace.open_trace(path) as r:
                        nbytes[label] = sum(r.storage_bytes().values()) / r.complete_steps
                    os.remove(path)
        off = statistics.median(times["off"])
        print(f"\n{rules.make(name).label}: step without tracing {off * 1e3:.2f} ms (median block)")
        print(f"  {'variant':<13} {'ms/step':>8} {'ratio':>6} {'bytes/step':>11} {'start (s)':>10}")
        for label, _ in VARIANTS:
            m = statistics.median(times[label])
            b = f"{nbytes[label]:>11,.0f}" if label in nbytes else f"{'-':>11}"
            st = f"{statistics.median(starts[label]):>10.2f}" if starts[label] else f"{'-':>10}"
            print(f"  {label:<13} {m * 1e3:>8.2f} {m / off:>6.2f} {b} {st}")


if __name__ == "__main__":
    main()
