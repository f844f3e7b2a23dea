"""``alignment``: how well NP, ANP and INP updates align with backprop, layer by layer
(the node-perturbation paper, seed 001: Fig. 2, Fig. 6 / Appendix G, Fig. 7 / Appendix H).

The measurement. A randomly initialised (He) 3-hidden-layer leaky-ReLU network and one
batch; nothing is trained. For each rule the K-sample update ``ΔW_l(K)`` is compared with
exact BP's ``G_l = ∂⟨L⟩/∂W_l`` on the same batch (``rules.exact_gradients``, software, ``oracle``
access), per layer: ``angle_l(K) = arccos(⟨ΔW_l(K), G_l⟩ / ‖ΔW_l(K)‖ ‖G_l‖)``, and for the
whole network (in the arrays; it mixes the layers' scales, so the claims are per layer). A
rule's K-sample estimate is the mean of K independent one-sample estimates (``contract``
averages over the K·B rows; ``updates_from_record`` of the record of samples k…k' is the mean
of their estimates — checked against each rule's own ``samples=K`` estimate in the tests), so
one run of 100 samples gives every K = 1…100 as running means, read at every K up to 10 and
then at every 5th: exact, and as cheap as the single K = 100 estimate.

Forward passes per estimate (Fig. 2 right, Fig. 6) are what a device needs: with the clean
baseline NP K+1, ANP K+1, INP L·K+1 (L = 4 perturbed layers, output included) — the clean
reference is noise-free, so one clean pass serves every perturbed pass (the ``inp`` rule
runs it once and counts L·K+1 too, reported as ``passes_run``). With the noisy baseline NP and
ANP need 2K, INP K(L+1). Fig. 6
is the K curves against these counts; table ``equal_passes`` compares the rules at the
largest budget every rule reaches (clean: 101 passes = NP/ANP K=100, INP K=25).

Settings and their source. Paper: 3072-1024-1024-1024-10 on a CIFAR-10 batch of 1000, σ² =
1e-6, clean baselines, float32. Ours by default: 40-256-256-256-10 on a batch of 1000 MNIST-1D
training samples (offline; 40 features, a harder task than digits; the batch is drawn by the
seed), σ = 1e-3 (σ² = 1e-6): NP and INP inject it (``sigma``), ANP's perturbation is the
device's intrinsic ``node_noise`` (the ``ideal`` preset's σ = 1e-3), cross-entropy summed
over classes, leaky-ReLU slope 0.2, 3 seeds (weights, batch and noise). The same rules are
then run with ``baseline="noisy"`` (two noisy passes, no noise gating), which the paper does
not show. The σ² sweep (Fig. 7: the second hidden layer) runs NP, ANP and INP with the clean
baseline at ``sigma2_samples`` = 4 samples for σ² = 1e-16 … 1 in float32 and float64; at every
σ² the network is rebuilt from the same seed, so every point sees the same standard normals
scaled by σ (a paired comparison). The paper reports precision errors below σ² ≈ 1e-7; our
float32 stays aligned far below that. Its GPU (RTX 3090, Ampere) multiplies float32 matrices
in TF32 by default in TensorFlow (10-bit mantissa, unit roundoff 2⁻¹¹ ≈ 5e-4, ≈ σ at σ² ≈
2e-7): ``tf32=true`` reruns NP in software (exact weights, float32) with and without every
GEMM operand rounded to TF32, to test that explanation (claims ``float32_…``, ``tf32_…``).

Layer 1: the paper says NP's and ANP's first-layer updates are identical. With a clean
baseline δa_1 = ε_1 exactly, so NP's estimate ``δL ε_1/σ²`` can be computed on ANP's own noise
(``np_same_noise``); the two differ only by ANP's per-sample weight ``Nσ²/‖δa‖²`` (constant
only if every sample's ‖δa‖² were the same). Table ``layer1`` gives both angles, the angle
between the two updates, an independently drawn NP, and the spread (CV) of that weight.

Outputs: table ``angles`` (main; per baseline, rule and layer: angle at K = 1, 10, 30, 100,
the K=100 range over seeds, passes), ``equal_passes``, ``sigma2`` (second hidden layer),
``layer1``; arrays ``angle_vs_samples`` (seed, baseline, rule, layer, samples),
``forward_passes`` and ``forward_passes_run`` (baseline, rule, samples), ``angle_vs_sigma2``
(seed, precision, rule, layer, sigma2), ``layer1_same_noise`` (seed, estimator, samples);
figures ``alignment_vs_samples`` (Fig. 2), ``alignment_vs_passes`` (Fig. 6),
``alignment_noisy_baseline``, ``alignment_vs_sigma2`` (Fig. 7), ``layer1_np_vs_anp``.

``scale=paper``: CIFAR-10 (``$NOISESIM_DATA``), 3072-1024-1024-1024-10, batch 1000.
``lr``/``lr_search`` are unused: nothing trains.

Speed. Each chunk of samples is one stacked forward (about ``chunk_passes`` = 25 passes of
the batch, one GEMM per layer) and each run of samples one contraction per layer. BLAS runs
on one thread (``blas_threads``; ``null`` leaves it alone): on a shared 2-core machine a second
thread made these GEMMs up to 7× slower and the whole run take 3× the CPU time. Profiled (one
seed, 63 s under the profiler): the forward passes take about 80 % — a third of the total is
the leaky ReLU (noisesim's ``np.where`` with its temporaries; ``np.maximum(a, slope·a)`` is
3.7× faster on its own), a fifth the GEMMs, a quarter the node-noise kernel and the normals —
and the contractions 6 %. The default run takes about 2.5 min on 2 cores (156 s, 123 s of
CPU, measured with load average ≈ 4 from other jobs); ``--quick`` about 1 s.
"""
from __future__ import annotations

import numpy as np

import rules as rules_pkg
from noisesim.backend import to_numpy
from rules.node import node_updates

from ..datasets import load
from ..experiment import common, device, network, options, rule_names, seeds
from ..result import Result
from ..scenario import register

RULES = ("np", "anp", "inp")

DEFAULTS = common(
    rules=list(RULES),
    dataset="mnist1d",
    sizes=[40, 256, 256, 256, 10],
    batch_size=1000,
    samples=100,
    sigma=1e-3,
    baselines=["clean", "noisy"],
    sigma2=[1e-16, 1e-14, 1e-12, 1e-10, 1e-8, 1e-7, 1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0],
    sigma2_samples=4,
    sigma2_dtypes=["float32", "float64"],
    tf32=True,
    chunk_passes=25,
    loss="cce",
    activation="leaky_relu",
    slope=0.2,
    blas_threads=1,
)
QUICK = {"sizes": [40, 32, 32, 32, 10], "batch_size": 100, "samples": 6,
         "sigma2": [1e-14, 1e-9, 1e-6, 1e-4, 1e-2], "sigma2_samples": 2}
PAPER = {"dataset": "cifar10", "sizes": [3072, 1024, 1024, 1024, 10], "batch_size": 1000}


# --------------------------------------------------------------------------- shared machinery
def slice_record(record: dict, start: int, stop: int, K: int) -> dict:
    """The record of perturbations ``start … stop−1`` out of a record of ``K`` (first axis
    ``K``; arrays with a first axis of 1 — a shared reference — are kept whole)."""
    def part(a):
        return a[start:stop] if a.shape[0] == K else a
    return {key: [part(a) for a in v] if isinstance(v, list) else part(v) for key, v in record.items()}


def sample_records(make, net, x, t, samples: int, points=None, chunk_passes: int = 25,
                   share_reference: bool = False):
    """Draw ``samples`` one-sample estimates in stacked chunks and yield them in runs.

    ``make(c)`` returns the rule with ``samples=c``; each chunk is one call of its ``estimate``
    (about ``chunk_passes`` passes in one stacked forward). Yields ``(rule, record, n, K)``:
    the record of the n samples drawn since the last yield, up to sample K, with a yield at
    every K in ``points`` (default: every K) and at the end of each chunk. ``rule.
    updates_from_record(record)`` is the mean of those n one-sample estimates, so running sums
    give the rule's K-sample estimate for every K in ``points``. ``share_reference`` keeps one
    copy of the reference inputs (for INP with a clean baseline, whose per-sample reference
    passes are identical) so each run costs one GEMM per layer.
    """
    pts = set(range(1, samples + 1) if points is None else points)
    p1, p2 = (make(c).forward_passes(net.n_layers) for c in (1, 2))     # passes are affine in c
    step = max(1, p2 - p1)
    chunk = max(1, min(samples, (chunk_passes - (p1 - step)) // step))
    done = 0
    while done < samples:
        c = min(chunk, samples - done)
        rule = make(c)
        rec = rule.estimate(net, x, t).record
        if share_reference and "inputs" in rec:
            rec["inputs"] = [xi[:1] for xi in rec["inputs"]]
        start = 0
        for k in range(1, c + 1):
            if done + k in pts or k == c:
                yield rule, slice_record(rec, start, k, c), k - start, done + k
                start = k
        done += c


def evaluation_points(K: int) -> list[int]:
    """Where the curves are read: every K up to 10, then every ``K/20`` (every 5th of 100)."""
    step = max(1, round(K / 20))
    return sorted({k for k in range(1, min(K, 10) + 1)} | set(range(step, K + 1, step)) | {K})


class RunningAngles:
    """Angles to a reference of the running mean of per-layer estimates.

    ``add(updates, n)`` adds the mean ``updates`` of ``n`` more samples; with ``keep`` it appends
    a row: per layer the angle (degrees) of the mean so far to ``reference[l]`` and, last, the
    whole-network angle. ``None`` in ``updates`` skips a layer (its angle is NaN).
    """

    def __init__(self, reference):
        self.g = [to_numpy(r).astype(np.float64) for r in reference]
        self.gg = np.array([float((g * g).sum()) for g in self.g])
        self.s = [np.zeros_like(g) for g in self.g]
        self.rows: list = []

    def add(self, updates, n: int = 1, keep: bool = True):
        for l, u in enumerate(updates):
            if u is not None:
                self.s[l] += n * to_numpy(u).astype(np.float64)
        if not keep:
            return None
        done = [u is not None for u in updates] + [False] * (len(self.g) - len(updates))
        dots = np.array([float((s * g).sum()) if d else np.nan for s, g, d in zip(self.s, self.g, done)])
        ss = np.array([float((s * s).sum()) if d else np.nan for s, d in zip(self.s, done)])
        with np.errstate(invalid="ignore", divide="ignore"):
            per = np.degrees(np.arccos(np.clip(dots / np.sqrt(ss * self.gg), -1, 1)))
            every = np.degrees(np.arccos(np.clip(dots.sum() / np.sqrt(ss.sum() * self.gg.sum()), -1, 1)))
        row = np.append(per, every)
        self.rows.append(row)
        return row

    def array(self) -> np.ndarray:
        return np.array(self.rows)


def layer_names(n_layers: int) -> list[str]:
    return [f"hidden {l + 1}" for l in range(n_layers - 1)] + ["output", "all"]


def batch(cfg, data, seed: int):
    """A batch of ``batch_size`` training samples drawn by ``seed``, with one-hot targets."""
    B = int(cfg["batch_size"])
    if not 1 <= B <= len(data.x_train):
        raise ValueError(f"batch_size={B} is out of range; allowed: 1..{len(data.x_train)}")
    idx = np.sort(np.random.default_rng(seed).choice(len(data.x_train), B, replace=False))
    return data.x_train[idx], data.targets(data.y_train[idx])


def device_passes(name: str, baseline: str, K: int, n_layers: int) -> int:
    """Forward passes a device needs for a K-sample estimate (module docstring)."""
    if baseline == "clean":
        return n_layers * K + 1 if name == "inp" else K + 1
    return K * (n_layers + 1) if name == "inp" else 2 * K


# --------------------------------------------------------------------------- the experiment
def _maker(cfg, name, baseline, sigma):
    opts = {**options(cfg, name), "baseline": baseline, "loss": cfg["loss"]}
    if name != "anp":
        opts["sigma"] = sigma
    return lambda c: rules_pkg.make(name, **{**opts, "samples": c})


def _curves(cfg, names, net, x, t, G, pts, bar):
    """Angle vs K (at ``pts``) for every baseline and rule; for ANP with the clean baseline also
    layer 1's NP-on-ANP's-noise estimate, the angle between the two and the spread of ANP's
    per-sample weight ``Nσ²/‖δa‖²``."""
    L, K, keep = net.n_layers, int(cfg["samples"]), set(pts)
    sigma, node = float(cfg["sigma"]), net.device.node_noise
    out = np.full((len(cfg["baselines"]), len(RULES), L + 1, len(pts)), np.nan)
    same = np.full((3, len(pts)), np.nan)       # layer 1: ANP, NP on ANP's noise, angle between the two
    cv = np.nan
    for bi, base in enumerate(cfg["baselines"]):
        for name in names:
            track = RunningAngles(G)
            diag = name == "anp" and base == "clean"
            np_track, between, weights = RunningAngles(G[:1]), [], []
            for rule, rec, n, k in sample_records(_maker(cfg, name, base, sigma), net, x, t, K, pts,
                                                  cfg["chunk_passes"], share_reference=(name, base) == ("inp", "clean")):
                track.add(rule.updates_from_record(rec), n, k in keep)
                if diag:                # with a clean baseline δa_1 is exactly the noise of layer 1
                    np_track.add([node_updates(rec["dL"], [rec["da"][0]], [rec["inputs"][0]], node)[0]], n, k in keep)
                    if k in keep:
                        between.append(rules_pkg.angle(track.s[0], np_track.s[0]))
                    n2 = sum((to_numpy(d).astype(np.float64) ** 2).sum(axis=-1) for d in rec["da"])
                    weights.append(sum(d.shape[-1] for d in rec["da"]) * node ** 2 / n2.ravel())
            out[bi, RULES.index(name)] = track.array().T
            if diag:
                same[:] = track.array()[:, 0], np_track.array()[:, 0], between
                w = np.concatenate(weights)
                cv = float(w.std() / w.mean())
            bar.update(1)
    return out, same, cv


def _sigma2_sweep(cfg, names, seed, x, t, bar):
    """Angles per layer at ``sigma2_samples`` samples, per precision, rule and σ²; the last two
    precisions are NP in software, float32 and TF32."""
    grid, dts = [float(v) for v in cfg["sigma2"]], list(cfg["sigma2_dtypes"])
    K, L = int(cfg["sigma2_samples"]), len(cfg["sizes"]) - 1
    out = np.full((len(dts) + 2, len(RULES), L + 1, len(grid)), np.nan)

    def put(p, r, si, updates, G):
        a = rules_pkg.angles(updates, G)
        out[p, RULES.index(r), :, si] = [a[l] for l in range(L)] + [a["all"]]
    for di, dt in enumerate(dts):
        G = None                                   # the weights do not depend on σ: one reference
        for si, s2 in enumerate(grid):
            sigma = float(np.sqrt(s2))
            for name in names:                     # rebuilt per point: the same normals at every σ
                net = network({**cfg, "dtype": dt}, cfg["sizes"], device(cfg, node_noise=sigma), seed)
                G = rules_pkg.exact_gradients(net, x, t, cfg["loss"]) if G is None else G
                put(di, name, si, _maker(cfg, name, "clean", sigma)(K).estimate(net, x, t).updates, G)
            bar.update(1)
    if cfg["tf32"] and "np" in names:
        net = network({**cfg, "dtype": "float32"}, cfg["sizes"], device(cfg), seed)
        G = rules_pkg.exact_gradients(net, x, t, cfg["loss"])
        z = [np.random.default_rng([seed, 7, l]).standard_normal((K, len(x), n)).astype(np.float32)
             for l, n in enumerate(cfg["sizes"][1:])]
        for pi, rounded in enumerate((False, True)):
            for si, s2 in enumerate(grid):
                put(len(dts) + pi, "np", si, software_np(net, x, t, z, float(np.sqrt(s2)), rounded, cfg["loss"]), G)
        bar.update(1)
    return out


def tf32(a) -> np.ndarray:
    """Round float32 values to TF32 (10 explicit mantissa bits, to nearest): what TensorFlow
    multiplies float32 matrices with by default on Ampere GPUs such as the paper's RTX 3090."""
    u = np.ascontiguousarray(a, dtype=np.float32).view(np.uint32)
    return ((u + np.uint32(0x1000)) & np.uint32(0xFFFFE000)).view(np.float32)


def software_np(net, x, t, z, sigma: float, rounded: bool, loss: str = "cce") -> list:
    """NP with a clean baseline computed in software (float32, exact weights; needs ``oracle``),
    optionally with every GEMM operand rounded to TF32. ``z[l]`` are the standard normals
    ``(K, B, n_l)`` of the perturbation ``ε_l = σ z_l``. Returns NP's per-layer updates."""
    W = [to_numpy(net.weights(l)).astype(np.float32) for l in range(net.n_layers)]
    mm = (lambda h, w: tf32(h) @ tf32(w).T) if rounded else (lambda h, w: h @ w.T)
    lf = rules_pkg.Loss(loss)
    x = np.asarray(x, np.float32)
    h, inputs = x, []
    for l, w in enumerate(W):
        inputs.append(h[None])
        h = net.act(l, mm(h, w))
    L0 = lf.per_sample(h, t)
    eps = [(np.float32(sigma) * zl).astype(np.float32) for zl in z]
    h = np.broadcast_to(x, (z[0].shape[0],) + x.shape)
    for l, w in enumerate(W):
        h = net.act(l, mm(h, w) + eps[l])
    dL = lf.per_sample(h, t) - L0
    return node_updates(dL, eps, inputs, sigma)


@register("alignment", "angle to BP of NP, ANP and INP per layer vs samples, passes and σ² (Figs. 2, 6, 7)",
          DEFAULTS, quick=QUICK, paper=PAPER)
def run(cfg: dict, ctx) -> Result:
    from tqdm.auto import tqdm

    from ._alignment_report import report

    names = rule_names(cfg, allowed=RULES)
    for b in cfg["baselines"]:
        if b not in ("clean", "noisy"):
            raise ValueError(f"baselines contains {b!r}; allowed: ['clean', 'noisy']")
    K = int(cfg["samples"])
    if K < 1 or int(cfg["sigma2_samples"]) < 1:
        raise ValueError("samples and sigma2_samples must be at least 1")
    data = load(cfg["dataset"])
    sizes = cfg["sizes"]
    dev = device(cfg, node_noise=float(cfg["sigma"]))
    probe = network(cfg, sizes, dev, cfg["seed"])
    probe.require("the exact-BP reference", ["oracle"])
    for name in names:
        for b in cfg["baselines"]:
            probe.require(f"rule {name!r} ({b} baseline)", _maker(cfg, name, b, cfg["sigma"])(1).required_access())
    run_seeds, pts = seeds(cfg), evaluation_points(K)
    units = len(cfg["baselines"]) * len(names) + len(cfg["sigma2"]) * len(cfg["sigma2_dtypes"]) + bool(cfg["tf32"])
    curves, same, cvs, sweep = [], [], [], []
    with tqdm(total=units * len(run_seeds), desc="alignment", disable=not ctx.progress, leave=False) as bar:
        for seed in run_seeds:
            x, t = batch(cfg, data, seed)
            net = network(cfg, sizes, dev, seed)
            G = rules_pkg.exact_gradients(net, x, t, cfg["loss"])
            c, s, cv = _curves(cfg, names, net, x, t, G, pts, bar)
            curves.append(c), same.append(s), cvs.append(cv)
            sweep.append(_sigma2_sweep(cfg, names, seed, x, t, bar))
    res = Result(main="angles")
    report(res, cfg, names, pts, np.array(curves), np.array(same), cvs, np.array(sweep), run_seeds)
    return res
