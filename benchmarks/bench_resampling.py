"""K noise samples per update at the paper's scale: memory, time per sample, overhead, PyTorch.

DANP with a noisy baseline (2K noisy passes per update) on 3072 → 1024 → 1024 → 1024 → 10,
batch 1000, float32, ``ideal`` device (node noise σ = 1e-3). Four figures, each a ratio
measured in one run (contenders interleaved):

``memory``  peak resident memory of a fresh process that builds the network and takes one
            DANP step, at K = 1, 10, 30, 100 (default budget) and at K = 100 under other
            budgets (``memory_budget=``, bytes: the trade of memory for speed), with each
            step's time. The peak resident memory (``VmHWM``) of the child process.
``k``       a K = 100 step ÷ a K = 1 step (interleaved).
``gemm``    a DANP (K = 1) step ÷ the bare time of the GEMMs that step runs (the same shapes
            and layouts, listed in :func:`danp_gemms`).
``torch``   a noisesim DANP step ÷ a plain PyTorch DANP step written as a researcher would
            (:class:`TorchDANP`: both passes stacked with ``torch.cat``, node noise from
            ``torch.randn_like``, the decorrelation update factored as noisesim's), on the
            network above and on 784 → 256 → 256 → 256 → 10 at batch 100. Skipped when torch is
            not installed (``pip install torch``). Both use as many threads as NumPy's BLAS;
            ``OPENBLAS_NUM_THREADS=1`` compares them on one core each, free of two thread
            pools spinning against each other.

    python benchmarks/bench_resampling.py [--figures memory,k,gemm,torch] [--repeats 5]

Timings swing on a shared machine: each round measures the contenders back to back, and
every figure is printed as ``median [min–max]`` over the rounds — times, and ratios formed
round by round. Compare the ratios of one run, and note the load printed with them.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import numpy as np

from _memory import peak_rss_kb     # benchmarks/_memory.py, next to this script

import noisesim
import rules

SIZES = [3072, 1024, 1024, 1024, 10]
BATCH = 1000
SMALL, SMALL_BATCH = [784, 256, 256, 256, 10], 100


def problem(sizes, batch, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, sizes[0])).astype(np.float32)
    t = np.eye(sizes[-1], dtype=np.float32)[rng.integers(0, sizes[-1], batch)]
    return x, t


def danp(sizes, samples=1, budget=None, seed=0):
    net = noisesim.Network.mlp(sizes, device=noisesim.DeviceConfig.preset("ideal"), seed=seed, backend="numpy")
    rule = rules.make("danp", baseline="noisy", samples=samples, lr=1e-4, alpha=1e-6, memory_budget=budget)
    rule.init(net)
    return net, rule


def timed(fn):
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def interleave(contenders: dict, repeats: int, block: int = 1, skip: int = 0) -> dict:
    """Seconds per call of each contender, called in turn ``block`` times each per round for
    ``repeats`` rounds; the first ``skip`` calls of each block are not counted (another thread
    pool may still be spinning). Returns per contender the median of each round's calls (a
    list, one per round): ratios of contenders are formed round by round (:func:`spread`)."""
    rounds = {k: [] for k in contenders}
    for fn in contenders.values():
        fn()                                           # warm-up
    for _ in range(repeats):
        for k, fn in contenders.items():
            times = []
            for i in range(block):
                s = timed(fn)
                if i >= skip:
                    times.append(s)
            rounds[k].append(statistics.median(times))
    return rounds


def spread(values, scale=1.0, fmt="{:.1f}") -> str:
    """``median [min–max]`` of ``values`` (times ``scale``)."""
    v = [x * scale for x in values]
    return f"{fmt.format(statistics.median(v))} [{fmt.format(min(v))}–{fmt.format(max(v))}]"


def ratios(rounds: dict, a: str, b: str) -> list:
    """``a ÷ b`` of each round (the two measured back to back)."""
    return [x / y for x, y in zip(rounds[a], rounds[b])]


# --------------------------------------------------------------------------- the GEMMs of a step
def danp_gemms(sizes, B, passes=2):
    """``(m, k, n, a_transposed, b_transposed)`` of every GEMM a decorrelated ANP step with
    ``passes`` stacked passes runs (noisy baseline, one sample): the forward (layer 0's input
    decorrelated and multiplied once), the update contractions (layer 0 against its shared
    input once) and the decorrelation update of every layer (``x*ᵀ(x* R)`` when B < n)."""
    L = len(sizes) - 1
    g = [(B, sizes[0], sizes[0], False, True), (B, sizes[0], sizes[1], False, True)]
    for l in range(1, L):
        g += [(passes * B, sizes[l], sizes[l], False, True), (passes * B, sizes[l], sizes[l + 1], False, True)]
    for l in range(L):
        g.append((sizes[l + 1], B, sizes[l], True, False))
    for l in range(L):
        n = sizes[l]
        if B < n:
            g += [(B, n, n, False, False), (n, B, n, True, False)]
        else:
            g += [(n, B, n, True, False), (n, n, n, False, False)]
    return g


def bare_gemms(shapes):
    rng = np.random.default_rng(1)
    ops = []
    for m, k, n, ta, tb in shapes:
        a = rng.standard_normal((k, m) if ta else (m, k)).astype(np.float32)
        b = rng.standard_normal((n, k) if tb else (k, n)).astype(np.float32)
        ops.append((a.T if ta else a, b.T if tb else b))

    def run():
        for a, b in ops:
            a @ b
    return run


# --------------------------------------------------------------------------- PyTorch reference
def torch_danp(sizes, batch, seed=0):
    """A plain PyTorch DANP step (noisy baseline, one sample) as a researcher would write it."""
    import torch

    class TorchDANP:
        def __init__(self):
            g = torch.Generator().manual_seed(seed)
            self.W = [torch.randn(o, i, generator=g) * (2.0 / i) ** 0.5 for i, o in zip(sizes[:-1], sizes[1:])]
            self.R = [torch.eye(n) for n in sizes[:-1]]
            for w in self.W:
                w.requires_grad_(False)
            self.opt = torch.optim.Adam([torch.nn.Parameter(w) for w in self.W], lr=1e-4, eps=1e-7)
            self.params = self.opt.param_groups[0]["params"]
            self.sigma, self.alpha, self.n_units = 1e-3, 1e-6, sum(sizes[1:])

        @torch.no_grad()
        def step(self, x, t):
            B = x.shape[0]
            h = torch.cat([x, x])                               # two noisy passes at once
            xs, da = [], []
            for l, W in enumerate(self.params):
                xl = h @ self.R[l].T
                a = xl @ W.T
                a = a + self.sigma * torch.randn_like(a)
                xs.append(xl[B:])                               # the baseline pass's inputs
                da.append(a[:B] - a[B:])
                h = torch.nn.functional.leaky_relu(a, 0.2) if l < len(self.params) - 1 else a
            loss = -(t.repeat(2, 1) * torch.log_softmax(h, dim=1)).sum(dim=1)
            dL = loss[:B] - loss[B:]
            norm2 = sum((d * d).sum(dim=1) for d in da)
            c = self.n_units * dL / norm2
            for l, W in enumerate(self.params):
                W.grad = (c[:, None] * da[l]).T @ xs[l] / B
                x_ = xs[l]                                      # decorrelation, factored
                M = x_.T @ (x_ @ self.R[l]) - (x_ * x_).sum(dim=0)[:, None] * self.R[l]
                self.R[l] -= self.alpha / B * M
            self.opt.step()

    return TorchDANP()


# --------------------------------------------------------------------------- figures
def child(K: int, budget) -> dict:
    """Run in a fresh process: build, one step (timed), peak RSS."""
    cmd = [sys.executable, __file__, "--child", str(K), "--budget", str(budget or 0)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def run_child(K: int, budget: float) -> None:
    x, t = problem(SIZES, BATCH)
    net, rule = danp(SIZES, K, budget or None)
    base = peak_rss_kb()
    s = timed(lambda: rule.step(net, x, t))
    peak = peak_rss_kb()
    print(json.dumps({"K": K, "budget": budget, "peak_gb": peak / 2 ** 20, "before_gb": base / 2 ** 20, "step_s": s}))


def fig_memory():
    print("\n[memory] peak RSS of a fresh process: build + one DANP step (noisy baseline)")
    print(f"{'K':>4} {'memory_budget':>14} {'peak GB':>8} {'after build':>12} {'step s':>7}")
    rows = [(K, None) for K in (1, 10, 30, 100)] + [(100, b) for b in (2 ** 28, 2 ** 32)]
    out = []
    for K, b in rows:
        r = child(K, b)
        out.append(r)
        label = "default (1 GiB)" if b is None else f"{b / 2 ** 30:g} GiB"
        print(f"{K:>4} {label:>14} {r['peak_gb']:>8.2f} {r['before_gb']:>12.2f} {r['step_s']:>7.1f}")
    return out


def fig_k(repeats):
    print("\n[k] a K = 100 DANP step ÷ a K = 1 step (interleaved)")
    x, t = problem(SIZES, BATCH)
    (n1, r1), (n100, r100) = danp(SIZES, 1), danp(SIZES, 100)
    rounds = interleave({"K=1": lambda: r1.step(n1, x, t), "K=100": lambda: r100.step(n100, x, t)}, repeats)
    r = ratios(rounds, "K=100", "K=1")
    print(f"K=1 {spread(rounds['K=1'], fmt='{:.2f}')} s, K=100 {spread(rounds['K=100'])} s: "
          f"ratio {spread(r)}× (goal ≤ 30×)")
    return {k: statistics.median(v) for k, v in rounds.items()}


def fig_gemm(repeats):
    print("\n[gemm] a DANP step ÷ the bare time of its GEMMs (interleaved)")
    res = {}
    for sizes, B in ((SIZES, BATCH), (SMALL, SMALL_BATCH)):
        x, t = problem(sizes, B)
        net, rule = danp(sizes)
        bare = bare_gemms(danp_gemms(sizes, B))
        rounds = interleave({"step": lambda: rule.step(net, x, t), "gemms": bare}, repeats, block=3)
        r = ratios(rounds, "step", "gemms")
        res[str(sizes)] = statistics.median(r)
        print(f"{sizes} batch {B}: step {spread(rounds['step'], 1e3)} ms, GEMMs {spread(rounds['gemms'], 1e3)} ms: "
              f"{spread(r, fmt='{:.2f}')}× (goal ≤ 1.15× on the large network)")
    return res


def fig_torch(repeats):
    print("\n[torch] noisesim DANP step ÷ plain PyTorch DANP step (interleaved)")
    try:
        import torch
    except ImportError:
        print("torch is not installed: skipped (pip install torch)")
        return None
    # as many threads as NumPy's BLAS (OPENBLAS_NUM_THREADS=1 runs both on one core: no two
    # thread pools competing, the cleanest comparison on a busy machine)
    threads = int(os.environ.get("OPENBLAS_NUM_THREADS", os.cpu_count() or 1))
    torch.set_num_threads(threads)
    print(f"threads: {threads} (torch and NumPy's BLAS); blocks of 4 calls, the first of each not counted")
    res = {}
    for sizes, B in ((SIZES, BATCH), (SMALL, SMALL_BATCH)):
        x, t = problem(sizes, B)
        net, rule = danp(sizes)
        ref = torch_danp(sizes, B)
        xt, tt = torch.from_numpy(x), torch.from_numpy(t)
        rounds = interleave({"noisesim": lambda: rule.step(net, x, t), "torch": lambda: ref.step(xt, tt)},
                            repeats, block=4, skip=1)
        r = ratios(rounds, "noisesim", "torch")
        res[str(sizes)] = statistics.median(r)
        print(f"{sizes} batch {B}: noisesim {spread(rounds['noisesim'], 1e3)} ms, torch "
              f"{spread(rounds['torch'], 1e3)} ms: {spread(r, fmt='{:.2f}')}× (below 1: noisesim faster)  "
              f"[torch {torch.__version__}]")
    return res


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--figures", default="memory,k,gemm,torch")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--budget", type=float, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child is not None:
        run_child(args.child, args.budget)
        return
    print(f"DANP, noisy baseline, float32, numpy; load: {os.getloadavg()}")
    figs = args.figures.split(",")
    if "memory" in figs:
        fig_memory()
    if "gemm" in figs:
        fig_gemm(args.repeats)
    if "torch" in figs:
        fig_torch(args.repeats)
    if "k" in figs:
        fig_k(max(2, args.repeats // 2))
    print(f"load after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
