"""Convolutional layers: speed and memory, each figure a ratio measured in one run.

    python benchmarks/bench_conv.py [--figures forward,fold,aihwkit,steps,memory] [--repeats 7]
                                    [--batch 1000] [--step-batch 1000] [--array-col2im]

``forward``  a noisy forward of the paper's three conv layers ``c3x3x16s2 c3x3x32s2 c3x3x64``
             on 32×32×3 inputs (``DeviceConfig.preset("pcm")``, batch ``--batch``, float32) ÷ the
             bare GEMMs of the same unfolded shapes (``u @ W.T`` with ``u`` the patch rows,
             ``(B·positions, k·C_in)``, unfolded beforehand): per layer (the layer's im2col,
             tile read and activation ÷ its GEMM) and for the whole forward (``net.forward``
             ÷ the three GEMMs back to back). The im2col is inside the noisy side only. Both
             sides run under the BLAS threads noisesim chooses for the network
             (:func:`noisesim.threads.for_layers`). Also printed: each layer's im2col
             (``Layer.unfold``) alone, and the *floor* of the goal: the same GEMMs plus one
             standard normal added to each output (the read noise every position's read must
             draw: the keyed epilogue's generator, ``noisesim._rng_numba``, with no ADC, as
             many numbers in rows of 1024, its fastest shape, on one thread and on all, the
             faster per round) and plus the im2col copies — what any implementation that draws
             independent noise per output and materialises the DAC'd patch rows (the ``abs_max``
             DAC scales each patch by its own ``max|x|``, so a pixel's code depends on the patch)
             pays at least. NumPy's ``standard_normal`` (float32, one thread) is timed beside it.
``fold``     the col2im of every conv layer of both ConvNets (batch ``--batch``): the Numba
             kernel (``Layer.fold``) ÷ the array code kept for CuPy (``Layer.fold_plain``).
``aihwkit``  the same three layers as aihwkit ``AnalogConv2d`` with an inference configuration
             like ``pcm``'s (read noise 0.0175, output noise 0.04, 8-bit DAC/ADC), each forward
             timed alone against noisesim's. Skipped, saying why, where aihwkit does not import
             (the ``compare`` extra: ``pip install aihwkit``).
``steps``    one training step on the paper's ConvNet ``c3x3x16s2 c3x3x32s2 c3x3x64 f1024 f10``
             (``ideal`` device: intrinsic node noise σ = 1e-3, every access granted), batch
             ``--step-batch``: ANP with a noisy baseline (DANP without decorrelation), DANP,
             DBP and BP, each on its own copy of the network, interleaved; each step runs
             under :func:`noisesim.threads.for_layers` as ``scenarios.train`` runs it.
             ``--array-col2im`` adds BP and DBP steps that run the array col2im
             (``Layer.fold_plain``, the code kept for CuPy) instead of the Numba kernel
             (``Layer.fold``): the kernel's gain, in the same run.
``memory``   peak resident memory (``VmHWM``, falling back to ``ru_maxrss``) of a fresh process that builds the network
             and takes one DANP step (noisy baseline, ``ideal``), on the paper's ConvNet and on
             the Tiny ImageNet ConvNet ``c5x5x32s2 c3x3x64s2 c5x5x128 f512 f512 f200``
             (64×64×3, 200 classes), batch ``--step-batch``.

Every ratio is the median over repeats of the ratio of times measured back to back in the
same repeat, with the range (min–max) over repeats; the load average is printed before and
after. Timings swing on a shared machine: compare the ratios of one run.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import numba
import numpy as np

from _memory import peak_rss_kb     # benchmarks/_memory.py, next to this script

import noisesim
import rules
from noisesim import _kernels, threads

CONV3 = "c3x3x16s2 c3x3x32s2 c3x3x64"
CONVNET = CONV3 + " f1024 f10"
TINY = "c5x5x32s2 c3x3x64s2 c5x5x128 f512 f512 f200"
NETS = {"convnet": ((32, 32, 3), CONVNET, 10), "tiny": ((64, 64, 3), TINY, 200)}
GOAL = 1.5


def timed(fn):
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def interleave(contenders: dict, repeats: int) -> dict:
    """Seconds per call of each contender, called in turn ``repeats`` times after one warm-up
    call each: ``{name: [t_1, …, t_repeats]}``."""
    for fn in contenders.values():
        fn()
    times = {k: [] for k in contenders}
    for _ in range(repeats):
        for k, fn in contenders.items():
            times[k].append(timed(fn))
    return times


def ratio(times: dict, num: str, den: str):
    """Median and range of the per-repeat ratios ``num / den``."""
    r = [a / b for a, b in zip(times[num], times[den])]
    return statistics.median(r), min(r), max(r)


def fmt(r) -> str:
    return f"{r[0]:.2f}× ({r[1]:.2f}–{r[2]:.2f})"


def ms(v) -> str:
    return f"{statistics.median(v) * 1e3:.1f} ms"


def load() -> str:
    return "load average " + " ".join(f"{v:.1f}" for v in os.getloadavg())


# --------------------------------------------------------------------------- forward
def conv_forward_net(batch: int):
    net = noisesim.Network.build((32, 32, 3), CONV3, noisesim.DeviceConfig.preset("pcm"), seed=0, backend="numpy")
    x = np.random.default_rng(0).uniform(0, 1, (batch, 32 * 32 * 3)).astype(np.float32)
    return net, x


def fig_forward(args) -> dict:
    print(f"\n[forward] noisy conv forward ({CONV3} on 32×32×3, pcm, batch {args.batch}, float32) "
          "÷ the bare GEMMs of the same unfolded shapes (im2col on the noisy side only)")
    net, x = conv_forward_net(args.batch)
    B = x.shape[0]
    p = net.forward(x)
    ins = [x.reshape(B, *net.layers[0].in_shape)] + [p.post[l] for l in range(net.n_layers - 1)]
    gemm_ops = []
    for l, lay in enumerate(net.layers):
        u = np.ascontiguousarray(lay.unfold(ins[l]).reshape(-1, lay.width))
        W = np.ascontiguousarray(net.tiles[l].weights())       # programmed weights, (n_out, k·C_in)
        gemm_ops.append((u, W))

    def layer(l):
        lay, tile, h = net.layers[l], net.tiles[l], ins[l]

        def run():
            u = net.layer_input(l, h)
            net.act(l, tile.read(u.reshape(-1, lay.n_in)))
        return run

    def gemm(l):
        u, W = gemm_ops[l]
        return lambda: u @ W.T

    def all_gemms():
        for u, W in gemm_ops:
            u @ W.T

    def sized(fn):
        def run():
            with threads.for_layers(net.sizes, B):
                fn()
        return run

    n_out = sum(u.shape[0] * W.shape[0] for u, W in gemm_ops)
    flat = np.empty((-(-n_out // 1024), 1024), np.float32)     # as many normals, in rows of 1024
    numpy_rng = np.random.default_rng(0)

    std, e1, e2 = np.ones(flat.shape[0], np.float32), flat[0, :0], flat[:0]

    def noise(driver):       # flat += 1·z in place: the keyed epilogue with node noise only, no ADC
        return lambda: driver(flat, flat, np.uint64(0), e1, np.uint64(12345), std, e2, e1, 1.0,
                              False, True, False, False, False, 0, 0, 0.0, 0.0, 0)

    normals, normals_serial = noise(_kernels._keyed_par), noise(_kernels._keyed_ser)

    def numpy_normals():
        numpy_rng.standard_normal(flat.shape, dtype=np.float32, out=flat)

    def unfolds():
        for l, lay in enumerate(net.layers):
            lay.unfold(ins[l])

    contenders = {"forward": lambda: net.forward(x), "gemms": sized(all_gemms),
                  "normals": normals, "normals serial": normals_serial, "numpy normals": numpy_normals, "unfolds": unfolds}
    for l, lay in enumerate(net.layers):
        contenders[f"layer{l}"] = sized(layer(l))
        contenders[f"gemm{l}"] = sized(gemm(l))
        contenders[f"unfold{l}"] = (lambda lay=lay, h=ins[l]: lay.unfold(h))
    with threads.for_layers(net.sizes, B):
        from threadpoolctl import threadpool_info
        nthreads = min((i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"), default="?")
    print(f"BLAS threads chosen for this network now: {nthreads}; {load()}")
    times = interleave(contenders, args.repeats)
    out = {}
    print(f"{'layer':<12} {'patch rows':>18} {'noisy':>10} {'GEMM':>10} {'ratio (range)':>22} "
          f"{'its im2col':>11}")
    for l, lay in enumerate(net.layers):
        u, W = gemm_ops[l]
        r = ratio(times, f"layer{l}", f"gemm{l}")
        out[lay.spec()] = r
        print(f"{lay.spec():<12} {str(u.shape):>18} {ms(times[f'layer{l}']):>10} {ms(times[f'gemm{l}']):>10} "
              f"{fmt(r):>22} {ms(times[f'unfold{l}']):>11}")
    r = ratio(times, "forward", "gemms")
    out["all"] = r
    print(f"{'all':<12} {'':>18} {ms(times['forward']):>10} {ms(times['gemms']):>10} {fmt(r):>22}   "
          f"goal ≤ {GOAL}×: {'met' if r[0] <= GOAL else 'NOT met'}")
    # the generator's faster driver in each round: right after BLAS's two threads ran, its
    # idle threads still spin and the parallel one may lose to them
    z = [min(a, b) for a, b in zip(times["normals"], times["normals serial"])]
    floor = [(g + zi) / g for g, zi in zip(times["gemms"], z)]
    floor_u = [(g + zi + u) / g for g, zi, u in zip(times["gemms"], z, times["unfolds"])]
    out["floor_normals"] = (statistics.median(floor), min(floor), max(floor))
    out["floor_normals_im2col"] = (statistics.median(floor_u), min(floor_u), max(floor_u))
    print(f"floor: {n_out / 1e6:.2f} M outputs, one normal each: {ms(times['normals'])} on {numba.get_num_threads()} "
          f"threads, {ms(times['normals serial'])} on one, the faster of each round {ms(z)} "
          f"({statistics.median(z) / n_out * 1e9:.2f} ns a number; NumPy's standard_normal "
          f"{ms(times['numpy normals'])} on one); im2col copies {ms(times['unfolds'])}")
    print(f"       (GEMMs + normals) ÷ GEMMs {fmt(out['floor_normals'])}; (GEMMs + normals + im2col) ÷ GEMMs "
          f"{fmt(out['floor_normals_im2col'])}: the goal of {GOAL}× is "
          f"{'out of reach' if out['floor_normals'][0] > GOAL else 'within reach'} for a forward that draws "
          "independent noise per output")
    return {"forward": out, "times_ms": {k: statistics.median(v) * 1e3 for k, v in times.items()}}


# --------------------------------------------------------------------------- col2im
def fig_fold(args) -> dict:
    print(f"\n[fold] col2im of each conv layer, batch {args.batch}: Layer.fold (Numba) ÷ Layer.fold_plain (array code)")
    rng = np.random.default_rng(0)
    out = {}
    for which in ("convnet", "tiny"):
        shape, spec, _ = NETS[which]
        for lay in noisesim.layers.build(shape, spec):
            if lay.kind != "conv":
                continue
            d = rng.standard_normal((args.batch, *lay.positions, lay.width)).astype(np.float32)
            times = interleave({"numba": lambda: lay.fold(d), "array": lambda: lay.fold_plain(d)}, args.repeats)
            r = ratio(times, "numba", "array")
            out[f"{lay.spec()} on {lay.in_shape}"] = r
            print(f"  {lay.spec():<10} on {str(lay.in_shape):<13} {ms(times['numba']):>10} ÷ {ms(times['array']):>10}: {fmt(r)}")
    return out


# --------------------------------------------------------------------------- aihwkit
def aihwkit_convs(net):
    """aihwkit's AnalogConv2d layers holding ``net``'s kernels, configured like ``pcm``."""
    import torch
    from aihwkit.nn import AnalogConv2d
    from aihwkit.simulator.configs import InferenceRPUConfig
    from _aihwkit import pcm_like

    mods = []
    for l, lay in enumerate(net.layers):
        rpu = pcm_like(InferenceRPUConfig())
        C_in, kh, kw = lay.in_shape[-1], *lay.kernel
        m = AnalogConv2d(C_in, lay.n_out, lay.kernel, stride=lay.stride, padding=lay.padding, bias=False,
                         rpu_config=rpu)
        W = net.tiles[l].weights().reshape(lay.n_out, kh, kw, C_in).transpose(0, 3, 1, 2)   # (out, in, kh, kw)
        m.set_weights(torch.from_numpy(np.ascontiguousarray(W, dtype=np.float32)))
        m.eval()
        m.program_analog_weights()
        m.drift_analog_weights(3600.0)
        mods += [m, torch.nn.LeakyReLU(0.2)]
    return torch.nn.Sequential(*mods[:-1])


def fig_aihwkit(args):
    print("\n[aihwkit] the same conv forward in aihwkit's AnalogConv2d, each forward timed alone")
    try:
        import torch
        import aihwkit  # noqa: F401
        from aihwkit.nn import AnalogConv2d  # noqa: F401
    except Exception as exc:  # ImportError, or a build that does not load
        print(f"skipped: aihwkit does not import here ({type(exc).__name__}: {exc}); install the 'compare' "
              "extra (pip install aihwkit) to include this figure")
        return None
    net, x = conv_forward_net(args.batch)
    model = aihwkit_convs(net)
    xt = torch.from_numpy(np.ascontiguousarray(x.reshape(-1, 32, 32, 3).transpose(0, 3, 1, 2)))

    def theirs():
        with torch.no_grad():
            model(xt)
    ours = {"noisesim": lambda: net.forward(x)}
    t_ours = interleave(ours, args.repeats)["noisesim"]
    t_theirs = interleave({"aihwkit": theirs}, args.repeats)["aihwkit"]
    r = statistics.median(t_theirs) / statistics.median(t_ours)
    print(f"aihwkit {aihwkit.__version__} AnalogConv2d: {ms(t_theirs)}, noisesim: {ms(t_ours)}: "
          f"noisesim {r:.1f}× faster  [torch {torch.__version__}]")
    return r


# --------------------------------------------------------------------------- steps
def problem(input_shape, classes, batch, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.uniform(0, 1, (batch, int(np.prod(input_shape)))).astype(np.float32)
    t = np.eye(classes, dtype=np.float32)[rng.integers(0, classes, batch)]
    return x, t


def trainer(name, options, input_shape, spec, seed=0):
    net = noisesim.Network.build(input_shape, spec, noisesim.DeviceConfig.preset("ideal"), seed=seed,
                                 backend="numpy")
    rule = rules.make(name, lr=1e-4, **options)
    rule.init(net)
    return net, rule


STEP_RULES = [("BP", "bp", {}), ("ANP", "anp", {"baseline": "noisy"}),
              ("DANP", "danp", {"baseline": "noisy"}), ("DBP", "dbp", {})]


def with_array_col2im(fn):
    """``fn`` run with ``Layer.fold`` replaced by the array code kept for CuPy (what every
    NumPy step ran before the Numba kernel)."""
    from noisesim.layers import Layer

    def run():
        fast = Layer.fold
        Layer.fold = Layer.fold_plain
        try:
            fn()
        finally:
            Layer.fold = fast
    return run


def fig_steps(args) -> dict:
    shape, spec, classes = NETS["convnet"]
    B = args.step_batch
    print(f"\n[steps] one training step on the paper's ConvNet ({spec}, 32×32×3, ideal, batch {B}), "
          "rules interleaved, each step under noisesim's BLAS thread choice")
    x, t = problem(shape, classes, B)
    contenders = {}
    for label, name, opts in STEP_RULES:
        net, rule = trainer(name, opts, shape, spec)

        def step(net=net, rule=rule):
            with threads.for_layers(net.sizes, B):
                rule.step(net, x, t)
        contenders[label] = step
        if args.array_col2im and label in ("BP", "DBP"):
            net2, rule2 = trainer(name, opts, shape, spec)

            def step2(net=net2, rule=rule2):
                with threads.for_layers(net.sizes, B):
                    rule.step(net, x, t)
            contenders[label + " (array col2im)"] = with_array_col2im(step2)
    print(load())
    times = interleave(contenders, args.repeats)
    print("  " + ", ".join(f"{k} {ms(v)}" for k, v in times.items()))
    out = {}
    for num, den, goal in (("ANP", "BP", GOAL), ("DANP", "BP", None), ("DBP", "BP", None), ("DANP", "ANP", None),
                           ("DANP", "DBP", None)):
        r = ratio(times, num, den)
        out[f"{num}/{den}"] = r
        tail = f"   goal ≤ {goal}×: {'met' if r[0] <= goal else 'NOT met'}" if goal else ""
        label = f"{num} ÷ {den}" + (" (DANP without decorrelation ÷ BP)" if num == "ANP" else "")
        print(f"  {label:<42} {fmt(r)}{tail}")
    for label in ("BP", "DBP"):
        if label + " (array col2im)" in times:
            r = ratio(times, label, label + " (array col2im)")
            out[f"{label}/{label} (array col2im)"] = r
            print(f"  {label + ' ÷ the same with the array col2im':<42} {fmt(r)}")
    return out


# --------------------------------------------------------------------------- memory
def run_child(which: str, batch: int) -> None:
    shape, spec, classes = NETS[which]
    x, t = problem(shape, classes, batch)
    net, rule = trainer("danp", {"baseline": "noisy"}, shape, spec)
    base = peak_rss_kb()
    with threads.for_layers(net.sizes, batch):
        s = timed(lambda: rule.step(net, x, t))
    peak = peak_rss_kb()
    print(json.dumps({"net": which, "batch": batch, "peak_gb": peak / 2 ** 20, "before_gb": base / 2 ** 20,
                      "step_s": s}))


def fig_memory(args) -> list:
    B = args.step_batch
    print(f"\n[memory] peak RSS of a fresh process: build + one DANP step (noisy baseline, ideal), batch {B}")
    print(f"{'network':<52} {'peak GB':>8} {'after build':>12} {'step s':>7}")
    out = []
    for which in ("convnet", "tiny"):
        shape, spec, _ = NETS[which]
        cmd = [sys.executable, __file__, "--child", which, "--step-batch", str(B)]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            print(f"{spec} on {shape}: the child failed (exit {done.returncode}; out of memory?): "
                  f"{done.stderr.strip()[-300:]}")
            continue
        r = json.loads(done.stdout.strip().splitlines()[-1])
        out.append(r)
        name = f"{spec} ({'×'.join(map(str, shape))})"
        print(f"{name:<52} {r['peak_gb']:>8.2f} {r['before_gb']:>12.2f} {r['step_s']:>7.1f}")
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--figures", default="forward,fold,aihwkit,steps,memory")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--batch", type=int, default=1000, help="batch of the forward figures")
    ap.add_argument("--step-batch", type=int, default=1000, help="batch of the step and memory figures")
    ap.add_argument("--array-col2im", action="store_true",
                    help="steps: also time BP and DBP with the array col2im (Layer.fold_plain)")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child is not None:
        run_child(args.child, args.step_batch)
        return None
    figs = args.figures.split(",")
    print(f"noisesim {noisesim.__version__}, numpy {np.__version__}, float32, {os.cpu_count()} cores; "
          f"repeats {args.repeats}; {load()}")
    res = {}
    if "forward" in figs:
        res["forward"] = fig_forward(args)
    if "fold" in figs:
        res["fold"] = fig_fold(args)
    if "steps" in figs:
        res["steps"] = fig_steps(args)
    if "memory" in figs:
        res["memory"] = fig_memory(args)
    if "aihwkit" in figs:        # last: importing torch starts thread pools that slow later GEMMs
        res["aihwkit"] = fig_aihwkit(args)
    print(f"\n{load()} (after)")
    return res


if __name__ == "__main__":
    main()
