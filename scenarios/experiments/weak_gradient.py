"""``weak-gradient``: the regression ("weak gradient") estimator with S copies against ANP at
the same number of forward passes (seed 003; ANP from seed 001).

Seed 003 makes S copies of a layer's activity in one enlarged batch, perturbs all but the
first, and regresses the copies' losses on their perturbations to get the gradient that is
fed back in place of backprop's. The ``regression`` rule does this for every layer at once,
from what a device lets it observe: S noisy passes and one clean reference, and per sample
and layer the ridge least squares ``g_l = argmin ‖δL − A g‖² + λ‖g‖²`` over the S rows
``δa_{l,s}`` of ``A`` (λ chosen per sample by generalised cross-validation, ``ridge="gcv"``),
``ΔW_l = ⟨g_l x*ᵀ⟩``. ANP with K
samples uses the same S+1 = K+1 passes (clean baseline): ``⟨N δL δa_l/‖δa‖²⟩``. Both rules see
exactly the same passes here: one clean pass and ``S_max`` noisy copies are run once, and
the estimate at S uses the first S copies (``updates_from_record`` of each rule on the
prefix of the record); so every comparison at equal passes is paired.

Expectation. For ``S ≥ N_l`` the regression is a consistent estimate of ``∂L/∂a_l`` (the
noise of other layers is independent of ``δa_l`` or reaches the loss through it); for
``S < N_l`` it is the minimum-norm solution, the projection of ``g_l`` on the S observed
directions. Near ``S ≈ N_l`` the least-squares problem is square and badly conditioned —
ordinary least squares has its variance peak there (the "double descent" of interpolating
regression), which a fixed small ridge only partly tames; the GCV-tuned ridge removes it.
The same copies are also regressed with the fixed ridge ``fixed_ridge`` (1e-3; ``null`` to
skip) at S = N/2, N and 3N of the first hidden layer, to show the peak GCV removes. ANP's
error falls like 1/√K down to its bias (noise propagated from lower layers).

Settings: 40-256-256-256-10 leaky-ReLU network at He initialisation, one batch of 1000
MNIST-1D training samples drawn by the seed, ``ideal`` device (intrinsic node noise σ = 1e-3
is the perturbation of both rules; nothing is injected), cross-entropy summed over classes,
S = 1 … 1024 (4 × the hidden width, dense around it), 3 seeds. The batch is processed in
blocks of ``block`` = 48 samples so that S_max + 1 stacked passes fit in memory (about 1 GB);
ANP and a fixed ridge are per-sample, so blocks change nothing for them but which random
numbers each sample gets; the GCV ridge is chosen per block (one ρ for its 48 samples).

Outputs: table ``angles`` (main: per S, forward passes and the per-layer angles of REG and
ANP, means over seeds), ``peak`` (per seed, the first hidden layer around S = N_l); arrays
``angle_vs_copies`` (seed, rule, layer, copies); figure ``weak_gradient`` (angle to BP against
forward passes per hidden layer, the layer width marked). ``scale=paper``: CIFAR-10
(``$NOISESIM_DATA``), 3072-1024-1024-1024-10, batch 1000, S up to 2048. ``lr``/``lr_search``
are unused: nothing trains.

Speed: the per-sample ridge solves are small batched GEMMs and LU solves, which a second BLAS
thread made 10–17× slower on this shared 2-core machine (measured), so BLAS runs on one thread
(``blas_threads``; ``null`` leaves it alone). Profiled (one seed, 79 s under the profiler):
the rule's ridge solves and Gram matrices take half the time (mostly S ≥ 256, the n × n
form), the 1025 stacked passes a third (noisesim's leaky ReLU alone 18 %), forming δa 9 %.
With the fixed ridge the default run took about 3.5 min on 2 cores (204 s, load average ≈ 3
from other jobs). The GCV ridge replaces each LU solve by an eigen-decomposition (2–4× the
cost): the default run now takes about 8 min of CPU (481 s measured — 384 s user, 97 s
system — under a load average of 8–12 from other jobs, which stretched it to 37 min of wall
time); ``--quick`` about 1 s.
"""
from __future__ import annotations

import numpy as np

import rules as rules_pkg
from noisesim.backend import to_numpy

from ..datasets import load
from ..experiment import common, device, network, options, rule_names, seeds
from ..result import Result, fmt_spread
from ..scenario import register
from .alignment import batch, layer_names

RULES = ("regression", "anp")

DEFAULTS = common(
    rules=list(RULES),
    dataset="mnist1d",
    sizes=[40, 256, 256, 256, 10],
    batch_size=1000,
    copies=[1, 2, 4, 8, 16, 32, 64, 128, 192, 256, 320, 384, 512, 1024],
    ridge="gcv",
    fixed_ridge=1e-3,
    block=48,
    loss="cce",
    activation="leaky_relu",
    slope=0.2,
    blas_threads=1,
)
QUICK = {"sizes": [40, 16, 16, 10], "batch_size": 60, "copies": [1, 4, 8, 16, 24, 48], "block": 30}
PAPER = {"dataset": "cifar10", "sizes": [3072, 1024, 1024, 1024, 10], "batch_size": 1000,
         "copies": [1, 4, 16, 64, 256, 512, 768, 1024, 1280, 1536, 2048], "block": 16}


FIXED = "regression (fixed ridge)"     # the fixed-ridge comparison, at three values of S
ROWS = RULES + (FIXED,)                 # the rule axis of the angle array


def _estimators(cfg, names):
    out = {}
    for name in names:
        opts = {**options(cfg, name), "baseline": "clean", "loss": cfg["loss"]}
        if name == "regression":
            opts["ridge"] = cfg["ridge"]
        out[name] = rules_pkg.make(name, **opts)
    if "regression" in names and cfg.get("fixed_ridge") is not None:
        out[FIXED] = rules_pkg.make("regression", **{**opts_regression(cfg), "ridge": cfg["fixed_ridge"]})
    return out


def opts_regression(cfg):
    return {**options(cfg, "regression"), "baseline": "clean", "loss": cfg["loss"]}


def peak_points(copies, width) -> list[int]:
    """Indices of the S nearest N/2, N and 3N: where the fixed ridge's peak shows."""
    return [_near(copies, width / 2), _near(copies, width), _near(copies, 3 * width)]


def prefix(record: dict, S: int) -> dict:
    """The record of the first ``S`` copies (the shared clean reference's inputs kept)."""
    return {"dL": record["dL"][:S], "da": [d[:S] for d in record["da"]], "inputs": record["inputs"]}


def observe(net, x, t, S: int, loss) -> dict:
    """One clean reference pass and ``S`` noisy copies, recorded exactly as the ``regression`` and
    ``anp`` rules record them with ``baseline="clean"`` (``dL (S, B)``, ``da[l] (S, B, n_l)``,
    ``inputs[l] (1, B, n)``)."""
    p = net.forward_stacked(x, S + 1, clean=[True] + [False] * S)
    L = loss.per_sample(p.out, net.backend.asarray(t))
    return {"dL": L[1:] - L[0], "da": [a[1:] - a[0] for a in p.pre], "inputs": [xi[:1] for xi in p.inputs]}


def paired_updates(cfg, names, net, x, t):
    """Per rule and S, the full-batch updates from one clean pass and S_max copies (blocks of
    the batch, each block's update weighted by its size). Returns ``{rule: [per-S updates]}``."""
    copies = sorted(int(s) for s in cfg["copies"])
    S_max, B = copies[-1], len(x)
    ests = _estimators(cfg, names)
    at = {n: range(len(copies)) for n in ests}
    if FIXED in ests:
        at[FIXED] = sorted(set(peak_points(copies, max(net.sizes[1:-1]))))
    loss = rules_pkg.Loss(cfg["loss"])
    total = {n: [None] * len(copies) for n in ests}
    step = max(1, int(cfg["block"]))
    for b0 in range(0, B, step):
        xb, tb = x[b0:b0 + step], t[b0:b0 + step]
        rec = observe(net, xb, tb, S_max, loss)              # one clean pass + S_max copies, as both rules run them
        w = len(xb) / B
        for n, rule in ests.items():
            for i in at[n]:
                S = copies[i]
                ups = [to_numpy(u).astype(np.float64) * w for u in rule.updates_from_record(prefix(rec, S))]
                total[n][i] = ups if total[n][i] is None else [a + u for a, u in zip(total[n][i], ups)]
    return copies, total


@register("weak-gradient", "regression (weak gradient) over S copies vs ANP at equal forward passes (seed 003)",
          DEFAULTS, quick=QUICK, paper=PAPER)
def run(cfg: dict, ctx) -> Result:
    from tqdm.auto import tqdm

    names = rule_names(cfg, allowed=RULES)
    copies = sorted(int(s) for s in cfg["copies"])
    if not copies or copies[0] < 1:
        raise ValueError(f"copies={cfg['copies']!r} must list positive numbers of copies")
    data = load(cfg["dataset"])
    sizes = cfg["sizes"]
    L = len(sizes) - 1
    dev = device(cfg)
    probe = network(cfg, sizes, dev, cfg["seed"])
    probe.require("the exact-BP reference", ["oracle"])
    for n, rule in _estimators(cfg, names).items():
        probe.require(f"rule {n!r}", rule.required_access())
    run_seeds = seeds(cfg)
    angles = np.full((len(run_seeds), len(ROWS), L + 1, len(copies)), np.nan)
    with tqdm(total=len(run_seeds), desc="weak gradient", disable=not ctx.progress, leave=False) as bar:
        for si, seed in enumerate(run_seeds):
            x, t = batch(cfg, data, seed)
            net = network(cfg, sizes, dev, seed)
            G = rules_pkg.exact_gradients(net, x, t, cfg["loss"])
            _, total = paired_updates(cfg, names, net, x, t)
            for n, per_s in total.items():
                for i, ups in enumerate(per_s):
                    if ups is not None:
                        a = rules_pkg.angles(ups, G)
                        angles[si, ROWS.index(n), :, i] = [a[l] for l in range(L)] + [a["all"]]
            bar.update(1)
    res = Result(main="angles")
    _report(res, cfg, names, angles, copies, run_seeds)
    return res


def _mean(a, axis=0):
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(a, axis=axis)


def _report(res, cfg, names, angles, copies, run_seeds):
    sizes = cfg["sizes"]
    L = len(sizes) - 1
    lnames = layer_names(L)
    hidden = list(range(L - 1))
    mean = _mean(angles)                                              # (rule, layer, S)
    t = res.table("angles", ["copies", "passes", *[f"{r}_{ln.replace(' ', '_')}" for r in ("reg", "anp")
                                                   for ln in lnames[:L - 1]], "reg_all", "anp_all"])
    for i, S in enumerate(copies):
        row = {"copies": S, "passes": S + 1}
        for ri, r in enumerate(RULES):
            tag = "reg" if r == "regression" else "anp"
            for l in hidden:
                row[f"{tag}_{lnames[l].replace(' ', '_')}"] = None if r not in names else float(mean[ri, l, i])
            row[f"{tag}_all"] = None if r not in names else float(mean[ri, L, i])
        t.add(**row)
    res.array("angle_vs_copies", angles, ("seed", "rule", "layer", "copies"),
              {"seed": run_seeds, "rule": list(ROWS), "layer": lnames, "copies": copies}, units="degrees")
    f = res.figure("weak_gradient", "Angle to BP against forward passes: regression over S copies vs ANP "
                   "(clean baseline, the same passes)", caption="dotted line: the layer's width N_l")
    passes = [S + 1 for S in copies]
    for l in hidden + [L]:
        p = f.panel(lnames[l] if l < L else "whole network", "forward passes (S + 1)", "angle to BP (degrees)",
                    xscale="log", vlines=[(sizes[l + 1] + 1, f"S = N_l = {sizes[l + 1]}")] if l < L else [])
        for ri, r in enumerate(RULES):
            if r in names:
                v = angles[:, ri, l]
                p.add("REG" if r == "regression" else "ANP", passes, mean[ri, l], np.min(v, 0), np.max(v, 0),
                      group="REG" if r == "regression" else "ANP", marker="o")
    _claims(res, cfg, names, angles, copies, lnames)


def _near(copies, target):
    return int(np.argmin([abs(np.log(S / target)) for S in copies]))


def _claims(res, cfg, names, angles, copies, lnames):
    sizes = cfg["sizes"]
    L = len(sizes) - 1
    hidden = list(range(L - 1))
    mean = _mean(angles)
    hl = "/".join(lnames[l].split()[-1] for l in hidden)
    fmt = lambda v: "/".join(f"{x:.1f}" for x in v) + "°"
    reg, anp = RULES.index("regression"), RULES.index("anp")
    width = max(sizes[1:L])
    S_max = copies[-1]
    if "regression" in names and len(copies) > 1:
        fall = mean[reg, :L - 1, 0] - mean[reg, :L - 1, -1]
        per_seed = np.min(angles[:, reg, :L - 1, 0] - angles[:, reg, :L - 1, -1], axis=1)
        res.claim("regression_improves_with_copies",
                  f"The weak gradient aligns better with BP as copies grow (S=1 → {S_max}: more than 10° in every "
                  "hidden layer)", bool(np.all(fall > 10.0)),
                  f"fall hidden {hl}: {fmt(fall)} (to {fmt(mean[reg, :L - 1, -1])}); smallest per seed "
                  f"{fmt_spread(per_seed, 1, '°')}",
                  paper="a linear regression of the copies' losses on their noise gives the gradient (seed 003; no numbers)",
                  values={"fall_deg": fall.tolist(), "margin_deg": 10.0})
    else:
        res.claim("regression_improves_with_copies", "The weak gradient aligns better with BP as copies grow", None,
                  "needs the regression rule and two values of S")
    if "regression" in names and "anp" in names:
        for key, i, what in (("regression_beats_anp_beyond_width", len(copies) - 1,
                              f"with S = {S_max} copies ({S_max / width:.0f}× the width)"),
                             ("regression_beats_anp_below_width", _near(copies, width / 8),
                              f"with S = {copies[_near(copies, width / 8)]} copies (below the width {width})")):
            gap = mean[anp, :L - 1, i] - mean[reg, :L - 1, i]
            per_seed = np.min(angles[:, anp, :L - 1, i] - angles[:, reg, :L - 1, i], axis=1)
            ok = bool(np.all(gap > 2.0))
            note = ""
            if not ok and "beyond" in key and len(hidden) > 1 and np.all(gap[1:] > 2.0):
                note = (f"Past the first hidden layer the regression wins by {fmt(gap[1:])}: ANP is biased by the noise "
                        "propagated from the layers below and levels off (hidden "
                        f"{'/'.join(lnames[l].split()[-1] for l in hidden[1:])}: {fmt(mean[anp, 1:L - 1, i])} at S={S_max}) "
                        "while the regression keeps improving. In the first hidden layer ANP's update is NP's "
                        "(δa_1 = ε_1 with a clean baseline), unbiased, and its error falls like the regression's: they "
                        f"tie ({mean[anp, 0, i]:.1f}° vs {mean[reg, 0, i]:.1f}°).")
            if not ok and "below" in key:
                note = ("Below the width the regression returns the minimum-norm solution — the gradient projected on "
                        f"the S observed directions of a {width}-dimensional layer — and its direction is about as good "
                        f"as ANP's from the same passes (ANP − REG {fmt(gap)}).")
            res.claim(key, f"At equal forward passes the weak gradient aligns better than ANP in every hidden layer "
                      f"{what}; by more than 2°", ok,
                      f"ANP − REG, hidden {hl}: {fmt(gap)}; smallest per seed {fmt_spread(per_seed, 1, '°')}",
                      paper="seed 003 compares with backprop only", note=note,
                      values={"anp_minus_reg_deg": gap.tolist(), "copies": copies[i], "margin_deg": 2.0})
    else:
        for key in ("regression_beats_anp_beyond_width", "regression_beats_anp_below_width"):
            res.claim(key, "At equal forward passes the weak gradient aligns better than ANP", None,
                      "needs the regression and anp rules")
    fixed = ROWS.index(FIXED)
    if "regression" in names and len(copies) >= 3 and np.isfinite(angles[:, fixed, 0]).any():
        i_low, i_peak, i_high = peak_points(copies, width)
        l = 0
        v = mean[fixed, l]
        up = float(v[i_peak] - v[i_low])
        ok = up > 1.0 and v[i_high] < v[i_peak]
        per_seed = angles[:, fixed, l, i_peak] - angles[:, fixed, l, i_low]
        t = res.table("peak", ["seed", "layer", "ridge", f"S{copies[i_low]}", f"S{copies[i_peak]}", f"S{copies[i_high]}"])
        for row, ridge in ((fixed, cfg["fixed_ridge"]), (reg, cfg["ridge"])):
            for si, a in enumerate(angles[:, row, l]):
                t.add(seed=cfg["seed"] + si, layer=lnames[l], ridge=str(ridge),
                      **{f"S{copies[j]}": float(a[j]) for j in (i_low, i_peak, i_high)})
        res.claim("regression_peak_near_width",
                  f"With a fixed ridge ({cfg['fixed_ridge']:g}) the weak gradient of the first hidden layer gets worse "
                  f"as S approaches the layer width and better again beyond it (S={copies[i_low]} → {copies[i_peak]}: "
                  f"up by more than 1°; S={copies[i_high]}: below the peak)", bool(ok),
                  f"{v[i_low]:.1f}° → {v[i_peak]:.1f}° → {v[i_high]:.1f}° (rise per seed {fmt_spread(per_seed, 1, '°')}); "
                  f"with the GCV ridge {mean[reg, l, i_low]:.1f}° → {mean[reg, l, i_peak]:.1f}° → {mean[reg, l, i_high]:.1f}°",
                  paper="not in seed 003; a user measured 50.8° → 53.2° from S=100 to S=300 on a 256-wide layer",
                  note="Least squares with as many unknowns as equations: the variance of the solution peaks at S ≈ N_l "
                       "(interpolation threshold); a fixed ridge of 1e-3 of the mean ‖δa_l‖² is too small to remove it. "
                       "The regression rule therefore chooses its ridge by generalised cross-validation by default.",
                  values={"angles_deg": [float(v[i_low]), float(v[i_peak]), float(v[i_high])],
                          "copies": [copies[i_low], copies[i_peak], copies[i_high]], "margin_deg": 1.0})
    else:
        res.claim("regression_peak_near_width", "With a fixed ridge the weak gradient peaks near S ≈ N_l", None,
                  "needs the regression rule, fixed_ridge and three values of S")
    if "regression" in names and len(copies) >= 2 and cfg["ridge"] == "gcv":
        rise = np.diff(mean[reg, :L - 1], axis=1)                      # (hidden layer, S step)
        worst = float(np.max(rise))
        l_w, i_w = np.unravel_index(int(np.argmax(rise)), rise.shape)
        res.claim("gcv_never_worse_with_copies",
                  "With the GCV ridge more copies never make the weak gradient worse: in every hidden layer the "
                  "angle to BP (mean over seeds) rises by less than 0.5° from one S to the next", bool(worst < 0.5),
                  f"largest rise {worst:+.2f}° ({lnames[l_w]}, S={copies[i_w]} → {copies[i_w + 1]})",
                  paper="not in seed 003; with ridge 1e-3 a user measured 50.8° → 53.2° from S=100 to S=300",
                  values={"largest_rise_deg": worst, "margin_deg": 0.5})
    else:
        res.claim("gcv_never_worse_with_copies", "With the GCV ridge more copies never make the weak gradient worse",
                  None, "needs the regression rule with ridge=\"gcv\" and two values of S")
