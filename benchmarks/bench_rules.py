"""Time of one training step of each rule, as a ratio to one BP step on the same network.

Network 3072 → 1024 → 1024 → 1024 → 10 (leaky ReLU), batch 1000, float32, ``ideal`` device
(intrinsic node noise on; every access granted). Each rule trains its own copy of the same
initial network; a step is ``rule.step`` (estimate → decorrelation → optimizer → apply).
All timings come from one run, so the ratios are comparable even on a busy machine; the
absolute times are printed for context only.

    python benchmarks/bench_rules.py [--repeats 5] [--backend numpy] [--rules bp,anp,...]

Goal (issue 4): DANP without decorrelation (``anp`` with a noisy baseline) ≤ 1.5× BP.
The decorrelated variants are reported separately: their extra cost is the ``R x`` product
per layer and the ``R`` update (one n×n GEMM per layer, 3072² for the input layer).

Measured on the 2-core CPU box (numpy, median of 5, one run): FA 0.95, DFA 0.88, WP 1.52,
NP 1.21, INP (5 passes) 2.05, ANP noisy 1.19 (goal met), ANP clean 1.14, REG S=10 5.07;
DBP 2.95, DNP 3.74, DANP 3.56 — decorrelation costs DANP/ANP = 3.0×, DBP/BP = 2.95×.
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

import noisesim
import rules

SIZES = [3072, 1024, 1024, 1024, 10]
BATCH = 1000

# (label, registry name, options)
PLAIN = [
    ("BP", "bp", {}),
    ("FA", "fa", {}),
    ("DFA (direct)", "dfa", {}),
    ("WP (noisy)", "wp", {"baseline": "noisy"}),
    ("NP (noisy)", "np", {"baseline": "noisy"}),
    ("INP (clean)", "inp", {"baseline": "clean"}),
    ("ANP (noisy)", "anp", {"baseline": "noisy"}),
    ("ANP (clean)", "anp", {"baseline": "clean"}),
    ("REG (S=10)", "regression", {"samples": 10}),
]
DECORRELATED = [
    ("DBP", "dbp", {}),
    ("DNP (noisy)", "dnp", {"baseline": "noisy"}),
    ("DANP (noisy)", "danp", {"baseline": "noisy"}),
]


def time_rule(name, options, x, t, backend, repeats):
    dev = noisesim.DeviceConfig.preset("ideal")
    net = noisesim.Network.mlp(SIZES, device=dev, seed=0, backend=backend)
    rule = rules.make(name, lr=1e-4, **options)
    rule.init(net)
    rule.step(net, x, t)                          # warm-up: JIT, allocations, optimizer state
    sync = getattr(getattr(net.xp, "cuda", None), "Device", None)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        rule.step(net, x, t)
        if sync is not None:
            net.xp.cuda.Device().synchronize()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--backend", default="numpy")
    ap.add_argument("--rules", default=None, help="comma-separated registry names (default: all rows)")
    args = ap.parse_args(argv)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((BATCH, SIZES[0])).astype(np.float32)
    t = np.eye(SIZES[-1], dtype=np.float32)[rng.integers(0, SIZES[-1], BATCH)]
    rows = PLAIN + DECORRELATED
    if args.rules:
        keep = set(args.rules.split(","))
        rows = [r for r in rows if r[1] in keep or r[1] == "bp"]
    print(f"network {SIZES}, batch {BATCH}, float32, backend {args.backend}, median of {args.repeats}")
    bp = time_rule("bp", {}, x, t, args.backend, args.repeats)
    print(f"{'rule':<16}{'passes':>7}{'step [s]':>11}{'÷ BP':>8}")
    results = {}
    for label, name, opts in rows:
        s = bp if name == "bp" else time_rule(name, opts, x, t, args.backend, args.repeats)
        results[label] = s / bp
        passes = rules.make(name, **opts).forward_passes(len(SIZES) - 1)
        if label == "DBP":
            print("-- decorrelated variants (cost of decorrelation reported separately) --")
        print(f"{label:<16}{passes:>7}{s:>11.3f}{s / bp:>8.2f}")
    if "ANP (noisy)" in results and "DANP (noisy)" in results:
        print(f"decorrelation cost: DANP/ANP = {results['DANP (noisy)'] / results['ANP (noisy)']:.2f}, "
              f"DBP/BP = {results.get('DBP', float('nan')):.2f}")
        print(f"goal DANP (no decorrelation) ≤ 1.5× BP: {results['ANP (noisy)']:.2f} "
              f"{'met' if results['ANP (noisy)'] <= 1.5 else 'NOT met'}")


if __name__ == "__main__":
    main()
