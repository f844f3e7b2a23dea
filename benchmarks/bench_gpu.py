"""GPU figures of the CuPy backend, measured in one run, written as JSON.

    python benchmarks/bench_gpu.py [--backend cupy] [--repeats 7] [--json FILE] [--quick]

* ``forward``: ``Network.forward`` of one layer (``ideal``; ``pcm`` untiled; ``pcm`` with its
  512-row tiles) ÷ a bare GEMM ``x @ W.T`` of the same shape and dtype (cuBLAS on the GPU),
  batch 1000 for 784→256, 3072→1024, 1024→1024 and batch 8192 for 4096→4096 — on CuPy once
  with each epilogue (``fused``: one CUDA kernel draws the noise and applies it and the ADC;
  ``unfused``: cupy.random arrays and CuPy element-wise operations). Goal: ≤ 1.2× on the
  larger shapes.
* ``rules``: one DANP step (decorrelated, two noisy passes) and one BP step on
  3072-1024-1024-1024-10, batch 1000, ``ideal`` device, batch already on the device; and
  ``danp_epoch_50_steps_s``, 50 DANP steps back to back — one CIFAR-10-sized epoch. Goal ≤ 1 s.
* ``update``: one on-device training step with the ``pulsed`` update model (``reram``,
  ``ecram``; 3072→1024, batch 1000) ÷ a plain SGD step (``y = x Wᵀ``, ``ΔW = (y − t)ᵀx/B``,
  ``W ← W − ηΔW``).
* on CuPy, ``agreement``: the same network on both backends with the fused epilogue (the same
  keys, so the same read and node noise) — the largest difference of the outputs; and
  ``determinism``: two networks of one seed give bit-identical passes.

Every figure: median, min and max over ``--repeats`` repeats; a repeat times ``inner``
back-to-back calls (calibrated to about 50 ms) between device synchronisations, after a
warm-up call; ratios pair each repeat with its reference timed just before. ``--quick``
shrinks the shapes and repeats so the script and its JSON can be checked on a CPU in seconds.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time

import numpy as np

import noisesim
import rules
from noisesim import _kernels

FULL_SHAPES = [(784, 256, 1000), (3072, 1024, 1000), (1024, 1024, 1000), (4096, 4096, 8192)]
QUICK_SHAPES = [(98, 32, 50), (384, 128, 50), (128, 128, 50), (256, 256, 200)]
FULL_NET, QUICK_NET = [3072, 1024, 1024, 1024, 10], [96, 32, 32, 32, 10]
FULL_UPDATE, QUICK_UPDATE = (3072, 1024, 1000), (96, 32, 50)
EPOCH_STEPS = 50
LR = 0.01


def stats(values) -> dict:
    v = [float(x) for x in values]
    return {"median": statistics.median(v), "min": min(v), "max": max(v), "n": len(v)}


class Clock:
    """Wall time of calls between device synchronisations."""

    def __init__(self, backend, target: float):
        if backend.name == "cupy":
            stream = backend.xp.cuda.get_current_stream()
            self.sync = stream.synchronize
        else:
            self.sync = lambda: None
        self.target = target

    def time(self, f, inner: int = 1) -> float:
        self.sync()
        t0 = time.perf_counter()
        for _ in range(inner):
            f()
        self.sync()
        return (time.perf_counter() - t0) / inner

    def inner(self, f) -> int:
        """Warm up ``f`` and choose how many calls make one timing of about ``target``."""
        f()
        t = self.time(f)
        return max(1, min(1000, math.ceil(self.target / max(t, 1e-7))))

    def paired(self, f, ref, repeats: int) -> dict:
        nf, nr = self.inner(f), self.inner(ref)
        tf, tr = [], []
        for _ in range(repeats):
            tr.append(self.time(ref, nr))
            tf.append(self.time(f, nf))
        return {"ratio": stats([a / b for a, b in zip(tf, tr)]), "t_s": stats(tf), "ref_s": stats(tr),
                "inner": nf, "ref_inner": nr}


def devices():
    return {
        "ideal": noisesim.DeviceConfig.preset("ideal"),
        "pcm untiled": noisesim.DeviceConfig.preset("pcm", tile_rows=None, tile_cols=None),
        "pcm (512-row tiles)": noisesim.DeviceConfig.preset("pcm"),
    }


def machine(be) -> dict:
    info = {"python": platform.python_version(), "numpy": np.__version__, "noisesim": noisesim.__version__,
            "cpu_count": os.cpu_count(), "CUPY_TF32": os.environ.get("CUPY_TF32", "unset")}
    try:
        import numba

        info["numba"] = numba.__version__
    except ImportError:
        pass
    if be.name == "cupy":
        cp = be.xp
        rt = cp.cuda.runtime
        props = rt.getDeviceProperties(cp.cuda.Device().id)
        name = props["name"]
        info.update(cupy=cp.__version__, gpu=name.decode() if isinstance(name, bytes) else name,
                    cuda_runtime=rt.runtimeGetVersion(), cuda_driver=rt.driverGetVersion(),
                    gpu_memory_gib=round(props["totalGlobalMem"] / 2 ** 30, 1),
                    compute_capability=f"{props['major']}.{props['minor']}")
    return info


def bench_forward(be, clock, shapes, epilogues, repeats, log):
    rng = np.random.default_rng(0)
    rows = []
    for n_in, n_out, batch in shapes:
        x = be.asarray(rng.uniform(0, 1, (batch, n_in)))
        W = be.asarray(rng.standard_normal((n_out, n_in)) * np.sqrt(2 / n_in))
        for name, dev in devices().items():
            net = noisesim.Network.mlp([n_in, n_out], dev, seed=0, backend=be)
            for epi in epilogues:
                if be.name == "cupy":
                    _kernels.CUPY_EPILOGUE = epi
                r = clock.paired(lambda: net.forward(x), lambda: x @ W.T, repeats)
                row = {"shape": f"{n_in}→{n_out}", "n_in": n_in, "n_out": n_out, "batch": batch,
                       "device": name, "epilogue": epi, **r}
                rows.append(row)
                log(f"  forward {row['shape']:<11} b={batch:<5} {name:<20} {epi:<8} "
                    f"{r['ratio']['median']:6.2f}× [{r['ratio']['min']:.2f}–{r['ratio']['max']:.2f}]  "
                    f"({r['t_s']['median'] * 1e3:8.3f} ms vs GEMM {r['ref_s']['median'] * 1e3:8.3f} ms)")
            del net
    return rows


def bench_rules(be, clock, sizes, batch, repeats, epoch_steps, epoch_repeats, log):
    rng = np.random.default_rng(1)
    x = be.asarray(rng.standard_normal((batch, sizes[0])))
    t = be.asarray(np.eye(sizes[-1])[rng.integers(0, sizes[-1], batch)])
    rows, times, epoch = [], {}, None
    for label, name, opts in (("BP", "bp", {}), ("DANP", "danp", {"baseline": "noisy"})):
        net = noisesim.Network.mlp(sizes, noisesim.DeviceConfig.preset("ideal"), seed=0, backend=be)
        rule = rules.make(name, lr=1e-4, **opts)
        rule.init(net)
        step = lambda: rule.step(net, x, t)
        inner = clock.inner(step)
        times[label] = [clock.time(step, inner) for _ in range(repeats)]
        if label == "DANP":
            run = lambda: [rule.step(net, x, t) for _ in range(epoch_steps)]
            epoch = stats(clock.time(run) for _ in range(epoch_repeats))
            epoch.update(steps=epoch_steps, goal_s=1.0, met=epoch["median"] <= 1.0)
    for label in ("DANP", "BP"):
        rows.append({"rule": label, "sizes": sizes, "batch": batch, "step_s": stats(times[label]),
                     "ratio": stats(a / b for a, b in zip(times[label], times["BP"]))})
        log(f"  rule {label:<5} step {statistics.median(times[label]) * 1e3:8.2f} ms  "
            f"(÷ BP {rows[-1]['ratio']['median']:.2f})")
    log(f"  DANP, {epoch_steps} steps back to back: {epoch['median']:.3f} s [{epoch['min']:.3f}–{epoch['max']:.3f}]"
        f" (goal ≤ 1 s for 50 steps)")
    return rows, epoch


def bench_update(be, clock, shape, repeats, log):
    n_in, n_out, batch = shape
    rng = np.random.default_rng(2)
    x, t = be.asarray(rng.uniform(0, 1, (batch, n_in))), be.asarray(rng.standard_normal((batch, n_out)))
    W = be.asarray(rng.standard_normal((n_out, n_in)) * np.sqrt(2 / n_in))

    def plain():
        y = x @ W.T
        dW = (y - t).T @ x
        dW *= 1.0 / batch
        W[...] -= LR * dW

    rows = []
    for name in ("reram", "ecram"):
        net = noisesim.Network.mlp([n_in, n_out], noisesim.DeviceConfig.preset(name), seed=0, backend=be)

        def device_step(net=net):
            p = net.forward(x)
            dW = (p.out - t).T @ p.inputs[0]
            dW *= -LR / batch
            net.apply_update(0, dW)

        r = clock.paired(device_step, plain, repeats)
        rows.append({"device": name, "shape": f"{n_in}→{n_out}", "batch": batch, **r})
        log(f"  pulsed step {name:<6} {r['ratio']['median']:6.2f}× [{r['ratio']['min']:.2f}–{r['ratio']['max']:.2f}]"
            f"  ({r['t_s']['median'] * 1e3:8.3f} ms vs plain SGD {r['ref_s']['median'] * 1e3:8.3f} ms)")
    return rows


def check_agreement(be, log) -> dict:
    """The same networks on NumPy and on CuPy (fused epilogue): the same keys draw the same
    noise, so the passes differ only by the GEMMs' rounding (and ADC codes it flips)."""
    numpy_be = noisesim.get_backend("numpy")
    rng = np.random.default_rng(3)
    x = rng.uniform(0, 1, (1000, 784)).astype(np.float32)
    _kernels.CUPY_EPILOGUE = "fused"
    out = {}
    cfgs = {"ideal": noisesim.DeviceConfig.preset("ideal"),
            "pcm untiled, no programming noise or drift": noisesim.DeviceConfig.preset(
                "pcm", tile_rows=None, tile_cols=None, prog_noise_poly=(), drift_nu=0.0, drift_nu_std=0.0)}
    for name, dev in cfgs.items():
        a = noisesim.Network.mlp([784, 256, 10], dev, seed=4, backend=numpy_be).forward(x)
        b = noisesim.Network.mlp([784, 256, 10], dev, seed=4, backend=be).forward(be.asarray(x))
        d = np.abs(noisesim.to_numpy(b.pre[0]) - a.pre[0])
        scale = np.abs(a.pre[0]).max()
        out[name] = {"max_abs_diff": float(d.max()), "max_abs_value": float(scale),
                     "fraction_differing_by_more_than_1e-5_relative": float(np.mean(d > 1e-5 * (1 + np.abs(a.pre[0]))))}
        log(f"  agreement {name}: max |cupy − numpy| = {d.max():.3g} (largest |a| {scale:.3g})")
    return out


def check_determinism(be) -> dict:
    res = {}
    for epi in ("fused", "unfused"):
        _kernels.CUPY_EPILOGUE = epi
        x = be.asarray(np.random.default_rng(5).uniform(0, 1, (256, 784)))
        outs = [noisesim.to_numpy(noisesim.Network.mlp([784, 256, 10], noisesim.DeviceConfig.preset("pcm"), seed=6,
                                                        backend=be).forward_stacked(x, 2).out) for _ in range(2)]
        res[epi] = bool(np.array_equal(outs[0], outs[1]))
    _kernels.CUPY_EPILOGUE = "fused"
    return res


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backend", default="cupy", choices=["cupy", "numpy"])
    ap.add_argument("--repeats", type=int, default=None, help="default 7 (quick: 3)")
    ap.add_argument("--json", default=None, help="write the figures to this file")
    ap.add_argument("--quick", action="store_true", help="small shapes and few repeats (checks the script)")
    ap.add_argument("--only", default="forward,rules,update,checks",
                    help="comma-separated parts to run (default: all)")
    args = ap.parse_args(argv)
    parts = set(args.only.split(","))
    t_start = time.perf_counter()
    be = noisesim.get_backend(args.backend, "float32")
    repeats = args.repeats or (3 if args.quick else 7)
    clock = Clock(be, 0.005 if args.quick else 0.05)
    epilogues = list(_kernels.CUPY_EPILOGUES) if be.name == "cupy" else ["numba"]

    def log(msg):
        print(msg, flush=True)

    fig = {"backend": be.name, "quick": args.quick, "dtype": "float32", "repeats": repeats,
           "machine": machine(be), "epilogues": epilogues,
           "shapes": [list(s) for s in (QUICK_SHAPES if args.quick else FULL_SHAPES)],
           "forward": [], "rules": [], "update": [], "danp_epoch_50_steps_s": None}
    log(f"bench_gpu: backend={be.name} quick={args.quick} repeats={repeats} "
        f"{fig['machine'].get('gpu', platform.processor() or 'CPU')}")

    def save():
        fig["wall_s"] = time.perf_counter() - t_start
        if args.json:
            with open(args.json, "w") as f:
                json.dump(fig, f, indent=1, ensure_ascii=False)

    fig["errors"] = {}

    def part(name, fn):
        """Run one part; a failure is recorded (and the exit status set) but the others still run."""
        if name not in parts:
            return
        try:
            fn()
        except Exception as exc:       # one failing part must not cost the other figures
            import traceback

            traceback.print_exc()
            fig["errors"][name] = f"{type(exc).__name__}: {exc}"
        finally:
            if be.name == "cupy":
                _kernels.CUPY_EPILOGUE = "fused"
            save()

    def forward():
        fig["forward"] = bench_forward(be, clock, QUICK_SHAPES if args.quick else FULL_SHAPES, epilogues, repeats, log)

    def rules_():
        fig["rules"], fig["danp_epoch_50_steps_s"] = bench_rules(
            be, clock, QUICK_NET if args.quick else FULL_NET, 50 if args.quick else 1000, repeats,
            5 if args.quick else EPOCH_STEPS, 2 if args.quick else 3, log)

    def update():
        fig["update"] = bench_update(be, clock, QUICK_UPDATE if args.quick else FULL_UPDATE, repeats, log)

    def checks():
        if be.name == "cupy":
            fig["agreement"] = check_agreement(be, log)
            fig["determinism"] = check_determinism(be)
            log(f"  determinism (same seed ⇒ bit-identical passes): {fig['determinism']}")

    part("forward", forward)
    part("rules", rules_)
    part("update", update)
    part("checks", checks)
    log(f"bench_gpu: done in {fig['wall_s']:.1f} s" + (f"; failed parts: {fig['errors']}" if fig["errors"] else ""))
    return fig


if __name__ == "__main__":
    sys.exit(1 if main()["errors"] else 0)
