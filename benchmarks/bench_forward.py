"""Noisy forward pass vs a bare GEMM of the same shape and dtype, measured in one run.

    python benchmarks/bench_forward.py [--repeats 9] [--dtype float32] [--backend numpy]

For each shape (batch 1000; 784→256, 3072→1024, 1024→1024) and device (``ideal``, ``pcm``
as preset with 512-row tiles, ``pcm`` untiled) it times ``Network.forward`` of a one-layer
network and ``x @ W.T``, interleaved, and prints the median of the per-repeat ratios
(robust on a shared machine). Where IBM's aihwkit imports (the ``compare`` extra) it also
times ``AnalogLinear`` forwards with a matching inference configuration — its default
(C++) inference tile and its pure-PyTorch tile — and the default tile exactly as shipped
(``InferenceRPUConfig()``: 512×512 tiles, iterative bound management), against the same
bare GEMM.
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

import noisesim

SHAPES = [(784, 256), (3072, 1024), (1024, 1024)]
BATCH = 1000


def _time(f, sync=lambda: None):
    t = time.perf_counter()
    f()
    sync()
    return time.perf_counter() - t


def paired_ratio(f, ref, repeats, sync=lambda: None):
    """Median over repeats of time(f)/time(ref), the two timed back to back."""
    f(), ref(), sync()                      # warm-up (JIT, caches, buffers)
    ratios, tf, tr = [], [], []
    for _ in range(repeats):
        a = _time(ref, sync)
        b = _time(f, sync)
        tf.append(b), tr.append(a), ratios.append(b / a)
    return statistics.median(ratios), statistics.median(tf), statistics.median(tr)


def alone(f, repeats, sync=lambda: None):
    """Median time of ``f`` run back to back with itself (no other work in between)."""
    f(), sync()
    return statistics.median(_time(f, sync) for _ in range(repeats))


def devices():
    return {
        "ideal": noisesim.DeviceConfig.preset("ideal"),
        "pcm (512-row tiles)": noisesim.DeviceConfig.preset("pcm"),
        "pcm untiled": noisesim.DeviceConfig.preset("pcm", tile_rows=None, tile_cols=None),
    }


def aihwkit_layers(n_in, n_out, w):
    """(name, layer, torch) for aihwkit's inference tiles configured like ``pcm`` untiled."""
    try:
        import torch
        from aihwkit.nn import AnalogLinear
        from aihwkit.simulator.configs import InferenceRPUConfig, TorchInferenceRPUConfig
        from _aihwkit import pcm_like
    except Exception as exc:  # ImportError or a broken build
        return None, f"{type(exc).__name__}: {exc}"
    out = []
    for name, cls in (("aihwkit InferenceRPUConfig (default C++ tile)", InferenceRPUConfig),
                      ("aihwkit TorchInferenceRPUConfig (PyTorch tile)*", TorchInferenceRPUConfig)):
        # the PyTorch tile has no per-read weight noise
        rpu = pcm_like(cls(), weight_noise=cls is InferenceRPUConfig)
        rpu.mapping.max_input_size = 0          # untiled, like "pcm untiled"
        rpu.mapping.max_output_size = 0
        layer = AnalogLinear(n_in, n_out, bias=False, rpu_config=rpu)
        layer.set_weights(torch.from_numpy(w.astype(np.float32)))
        layer.eval()
        layer.program_analog_weights()
        layer.drift_analog_weights(3600.0)
        out.append((name, layer))
    # and the default inference tile exactly as shipped: InferenceRPUConfig() with its own
    # defaults (512×512 tiles, iterative bound management, its PCM noise model)
    layer = AnalogLinear(n_in, n_out, bias=False, rpu_config=InferenceRPUConfig())
    layer.set_weights(torch.from_numpy(w.astype(np.float32)))
    layer.eval()
    layer.program_analog_weights()
    layer.drift_analog_weights(3600.0)
    out.append(("aihwkit InferenceRPUConfig() as shipped", layer))
    return out, None


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    ap.add_argument("--backend", default="numpy", choices=["numpy", "cupy"])
    ap.add_argument("--no-aihwkit", action="store_true")
    args = ap.parse_args(argv)
    be = noisesim.get_backend(args.backend, args.dtype)
    xp = be.xp
    sync = (lambda: xp.cuda.Device().synchronize()) if be.name == "cupy" else (lambda: None)
    rng = np.random.default_rng(0)
    print(f"backend={be.name} dtype={args.dtype} batch={BATCH} repeats={args.repeats}; "
          "ratio = median over repeats of t(forward)/t(bare x @ W.T), measured back to back")
    rows = []
    data = {}
    solo = {}      # (shape, name) -> time of the forward alone, for ours-vs-aihwkit
    for n_in, n_out in SHAPES:
        x_host = rng.uniform(0, 1, (BATCH, n_in)).astype(args.dtype)
        w_host = (rng.standard_normal((n_out, n_in)) * np.sqrt(2 / n_in)).astype(args.dtype)
        data[n_in, n_out] = x_host, w_host

    def report(shape, name, r, tf, tg):
        rows.append((f"{shape[0]}→{shape[1]}", name, r, tf, tg))
        print(f"  {shape[0]:>4}→{shape[1]:<5} {name:<48} {r:6.2f}×   ({tf*1e3:7.1f} ms vs GEMM {tg*1e3:6.1f} ms)", flush=True)

    # noisesim first: importing torch starts thread pools that slow every later GEMM
    for shape, (x_host, w_host) in data.items():
        x, W = be.asarray(x_host), be.asarray(w_host)
        for name, dev in devices().items():
            net = noisesim.Network.mlp(list(shape), dev, seed=0, backend=be)
            report(shape, name, *paired_ratio(lambda: net.forward(x), lambda: x @ W.T, args.repeats, sync))
            solo[shape, name] = alone(lambda: net.forward(x), args.repeats, sync)
    if not args.no_aihwkit:
        for shape, (x_host, w_host) in data.items():
            layers, err = aihwkit_layers(*shape, w_host)
            if layers is None:
                print(f"  aihwkit comparison skipped: aihwkit is not importable ({err}); "
                      "install the 'compare' extra to include it")
                break
            import torch

            xt = torch.from_numpy(x_host.astype(np.float32))
            W = w_host if be.name == "numpy" else be.asarray(w_host)
            xg = x_host if be.name == "numpy" else be.asarray(x_host)
            for name, layer in layers:
                def fwd(layer=layer):
                    with torch.no_grad():
                        layer(xt)
                report(shape, name, *paired_ratio(fwd, lambda: xg @ W.T, args.repeats, sync))
                solo[shape, name] = alone(fwd, args.repeats)
    if any(r[1].endswith("*") for r in rows):
        print("  * aihwkit's PyTorch tile supports no per-read weight noise: it runs without read noise")
    speedups = []
    pairs = [("aihwkit InferenceRPUConfig (default C++ tile)", "pcm untiled"),
             ("aihwkit TorchInferenceRPUConfig (PyTorch tile)*", "pcm untiled"),
             ("aihwkit InferenceRPUConfig() as shipped", "pcm (512-row tiles)")]
    if any(k[1].startswith("aihwkit") for k in solo):
        print("noisesim vs aihwkit, each forward timed alone (median of back-to-back runs):")
        for shape in data:
            for theirs, ours in pairs:
                if (shape, theirs) in solo:
                    x = solo[shape, theirs] / solo[shape, ours]
                    speedups.append((f"{shape[0]}→{shape[1]}", theirs, ours, x))
                    print(f"  {shape[0]:>4}→{shape[1]:<5} {theirs:<48} {solo[shape, theirs]*1e3:7.1f} ms"
                          f"  / noisesim {ours:<20} {solo[shape, ours]*1e3:6.1f} ms = {x:5.1f}× faster", flush=True)
    return rows, speedups


if __name__ == "__main__":
    main()
