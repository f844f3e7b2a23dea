"""Tables, arrays, figures and claims of the ``alignment`` scenario (see its module docstring).

Every verdict is computed here from the run's own angles, with the margin stated in the claim.
"""
from __future__ import annotations

import warnings

import numpy as np

import rules as rules_pkg

from ..result import fmt_spread
from .alignment import RULES, device_passes, layer_names

MARGIN = 2.0          # degrees: "better" means better by more than this (means over seeds)


def _mean(a, axis=0):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(a, axis=axis)


def _deg(values) -> str:
    return fmt_spread(values, 1, "°")


def _layers(vals) -> str:
    return "/".join(f"{v:.1f}" for v in vals) + "°"


def report(res, cfg, names, pts, curves, same, cvs, sweep, run_seeds):
    """Fill ``res``: ``curves`` (seed, baseline, rule, layer, point), ``same`` (seed, 3, point),
    ``sweep`` (seed, precision, rule, layer, σ²)."""
    K, L = int(cfg["samples"]), len(cfg["sizes"]) - 1
    bases, lnames = list(cfg["baselines"]), layer_names(L)
    ix = {k: i for i, k in enumerate(pts)}
    passes = np.array([[[device_passes(r, b, k, L) for k in pts] for r in RULES] for b in bases])
    run_passes = np.array([[[rules_pkg.make(r, baseline=b, samples=k).forward_passes(L) for k in pts]
                            for r in RULES] for b in bases])
    mean = _mean(curves)                                                   # (baseline, rule, layer, point)
    shown = [k for k in (1, 10, 30, 100, K) if k in ix]
    shown = sorted(set(shown))
    t = res.table("angles", ["baseline", "rule", "layer", *[f"K{k}" for k in shown], f"K{K}_min", f"K{K}_max",
                             f"passes_K{K}", f"passes_run_K{K}"])
    for bi, b in enumerate(bases):
        for name in names:
            ri = RULES.index(name)
            for l, ln in enumerate(lnames):
                v = curves[:, bi, ri, l, ix[K]]
                t.add(baseline=b, rule=name.upper(), layer=ln, **{f"K{k}": mean[bi, ri, l, ix[k]] for k in shown},
                      **{f"K{K}_min": float(np.min(v)), f"K{K}_max": float(np.max(v)),
                         f"passes_K{K}": int(passes[bi, ri, ix[K]]), f"passes_run_K{K}": int(run_passes[bi, ri, ix[K]])})
    coords = {"seed": run_seeds, "baseline": bases, "rule": list(RULES), "layer": lnames, "samples": list(pts)}
    res.array("angle_vs_samples", curves, ("seed", "baseline", "rule", "layer", "samples"), coords, units="degrees")
    sub = {k: coords[k] for k in ("baseline", "rule", "samples")}
    res.array("forward_passes", passes, ("baseline", "rule", "samples"), sub,
              meaning="passes a device needs (one clean reference serves all samples)")
    res.array("forward_passes_run", run_passes, ("baseline", "rule", "samples"), sub,
              meaning="passes the rule runs and counts")
    equal = _equal_passes(res, names, bases, mean, passes, lnames, pts)
    _curve_figures(res, names, bases, curves, passes, lnames, pts)
    _layer1(res, names, bases, curves, same, cvs, run_seeds, pts)
    sig = _sigma2(res, cfg, names, sweep, run_seeds, lnames)
    _claims(res, cfg, names, bases, curves, same, cvs, equal, lnames, ix)
    _sigma2_claims(res, cfg, names, sig)


def _equal_passes(res, names, bases, mean, passes, lnames, pts):
    """Angles at the largest pass budget every rule reaches (Fig. 6 read at one x)."""
    t = res.table("equal_passes", ["baseline", "layer", "passes", "np_K", "np", "anp_K", "anp", "inp_K", "inp"])
    out = {}
    for bi, b in enumerate(bases):
        budget = min(int(passes[bi, RULES.index(n), -1]) for n in names)
        at = {n: int(np.max(np.nonzero(passes[bi, RULES.index(n)] <= budget)[0])) for n in names}
        for l, ln in enumerate(lnames):
            row = {"baseline": b, "layer": ln, "passes": budget}
            for n, i in at.items():
                row[f"{n}_K"], row[n] = pts[i], mean[bi, RULES.index(n), l, i]
            t.add(**row)
        out[b] = (budget, {n: pts[i] for n, i in at.items()})
    return out


def _curve_figures(res, names, bases, curves, passes, lnames, pts):
    layers = range(len(lnames) - 1)            # every layer; the whole-network angle is in the arrays

    def band(bi, ri, l):
        v = curves[:, bi, ri, l]
        return _mean(v), np.min(v, 0), np.max(v, 0)
    if "clean" in bases:
        bi = bases.index("clean")
        f = res.figure("alignment_vs_samples", "Angle to BP vs noise samples, clean baseline (paper Fig. 2)",
                       caption="mean over seeds, range shaded; the network is not updated across samples")
        for l in layers:
            p = f.panel(lnames[l], "noise samples K", "angle to BP (degrees)", xscale="log")
            for n in names:
                p.add(n.upper(), pts, *band(bi, RULES.index(n), l), group=n.upper())
        p = f.panel("forward passes per estimate", "noise samples K", "forward passes", xscale="log", yscale="log")
        for n in names:
            p.add(n.upper(), pts, passes[bi, RULES.index(n)], group=n.upper())
        f = res.figure("alignment_vs_passes", "Angle to BP vs forward passes, clean baseline (paper Fig. 6)",
                       caption="the data of alignment_vs_samples against the passes a device needs")
        for l in layers:
            p = f.panel(lnames[l], "forward passes", "angle to BP (degrees)", xscale="log")
            for n in names:
                p.add(n.upper(), passes[bi, RULES.index(n)], *band(bi, RULES.index(n), l), group=n.upper())
    if "noisy" in bases:
        bi = bases.index("noisy")
        f = res.figure("alignment_noisy_baseline", "Angle to BP vs noise samples, noisy baseline (solid) and "
                       "clean (dotted)", caption="noisy baseline: two noisy passes, nothing gated")
        for l in layers:
            p = f.panel(lnames[l], "noise samples K", "angle to BP (degrees)", xscale="log")
            for n in names:
                p.add(f"{n.upper()} noisy", pts, *band(bi, RULES.index(n), l), group=n.upper())
                if "clean" in bases:
                    p.add(f"{n.upper()} clean", pts, band(bases.index("clean"), RULES.index(n), l)[0],
                          group=n.upper(), role="other")


def _layer1(res, names, bases, curves, same, cvs, run_seeds, pts):
    t = res.table("layer1", ["seed", "samples", "anp", "np_same_noise", "between", "np_independent", "anp_weight_cv"])
    if "anp" not in names or "clean" not in bases:
        return
    ind = curves[:, bases.index("clean"), RULES.index("np"), 0, -1]
    for i, s in enumerate(run_seeds):
        t.add(seed=s, samples=pts[-1], anp=same[i, 0, -1], np_same_noise=same[i, 1, -1], between=same[i, 2, -1],
              np_independent=float(ind[i]) if "np" in names else None, anp_weight_cv=cvs[i])
    res.array("layer1_same_noise", same, ("seed", "estimator", "samples"),
              {"seed": run_seeds, "estimator": ["anp", "np_same_noise", "between"], "samples": list(pts)},
              units="degrees")
    f = res.figure("layer1_np_vs_anp", "First hidden layer: NP and ANP on the same noise", columns=2,
                   caption="NP's δL ε₁/σ² computed on ANP's own perturbation (δa₁ = ε₁ with a clean baseline)")
    p = f.panel("hidden 1: angle to BP", "noise samples K", "angle to BP (degrees)", xscale="log")
    p.add("ANP", pts, _mean(same[:, 0]), group="ANP")
    p.add("NP on ANP's noise", pts, _mean(same[:, 1]), group="NP", role="other")
    if "np" in names:
        p.add("NP, own noise", pts, _mean(curves[:, bases.index("clean"), RULES.index("np"), 0]), group="NP")
    p = f.panel("angle between ANP's and NP's update", "noise samples K", "degrees", xscale="log")
    p.add("ANP vs NP, same noise", pts, _mean(same[:, 2]), np.min(same[:, 2], 0), np.max(same[:, 2], 0), group="ANP")


def _sigma2(res, cfg, names, sweep, run_seeds, lnames):
    grid = [float(v) for v in cfg["sigma2"]]
    dts = list(cfg["sigma2_dtypes"])
    precisions = dts + ["float32 software", "tf32 software"]
    res.array("angle_vs_sigma2", sweep, ("seed", "precision", "rule", "layer", "sigma2"),
              {"seed": run_seeds, "precision": precisions, "rule": list(RULES), "layer": lnames, "sigma2": grid},
              units="degrees", samples=int(cfg["sigma2_samples"]))
    l2 = 1 if len(lnames) > 3 else 0                                      # the paper's second hidden layer
    mean = _mean(sweep)                                                    # (precision, rule, layer, σ²)
    t = res.table("sigma2", ["precision", "sigma2", "layer", "np", "anp", "inp"])
    for pi, prec in enumerate(precisions):
        if np.all(np.isnan(mean[pi])):
            continue
        for si, s2 in enumerate(grid):
            v = mean[pi, :, l2, si]
            t.add(precision=prec, sigma2=s2, layer=lnames[l2],
                  **{n: None if np.isnan(v[RULES.index(n)]) else float(v[RULES.index(n)]) for n in RULES})
    f = res.figure("alignment_vs_sigma2", f"Angle to BP vs perturbation variance σ², {lnames[l2]} (paper Fig. 7), "
                   f"K = {cfg['sigma2_samples']}", caption="the same standard normals at every σ²")
    marks = [(1e-7, "paper: precision limit"), (1e-6, "paper's σ²")]
    for pi, prec in enumerate(dts):
        p = f.panel(prec, "σ²", "angle to BP (degrees)", xscale="log", vlines=marks)
        for n in names:
            p.add(n.upper(), grid, mean[pi, RULES.index(n), l2], group=n.upper(), marker="o")
    if cfg["tf32"] and "np" in names:
        p = f.panel("NP in software: float32 vs TF32 GEMMs", "σ²", "angle to BP (degrees)", xscale="log",
                    vlines=marks[:1])
        p.add("NP float32", grid, mean[len(dts), 0, l2], group="NP", marker="o")
        p.add("NP TF32", grid, mean[len(dts) + 1, 0, l2], group="NP", role="other", marker="s")
    return {"grid": np.array(grid), "mean": mean, "layer": l2, "dts": dts}


def _claims(res, cfg, names, bases, curves, same, cvs, equal, lnames, ix):
    K, L = int(cfg["samples"]), len(lnames) - 1
    hidden = list(range(L - 1))
    have = lambda *rs: all(r in names for r in rs)
    ci = bases.index("clean") if "clean" in bases else None
    m = _mean(curves)
    hl = "/".join(lnames[l].split()[-1] for l in hidden)

    def at(b, r, k):                        # mean angle per hidden layer at k samples
        return m[b, RULES.index(r), :L - 1, ix[k]]

    def per_seed(b, r, k):                  # (seed, hidden layer)
        return curves[:, b, RULES.index(r), :L - 1, ix[k]]
    # INP best in every hidden layer
    st = f"Per hidden layer INP aligns best with BP, ahead of ANP and NP (clean baseline, K={K}, by more than {MARGIN:g}°)"
    if ci is not None and have("np", "anp", "inp"):
        lead = np.minimum(at(ci, "np", K), at(ci, "anp", K)) - at(ci, "inp", K)
        low = np.min(np.minimum(per_seed(ci, "np", K), per_seed(ci, "anp", K)) - per_seed(ci, "inp", K), axis=1)
        res.claim("inp_best_per_hidden_layer", st, bool(np.all(lead > MARGIN)),
                  f"INP's smallest lead {_deg(low)}; hidden {hl}: INP {_layers(at(ci, 'inp', K))}, "
                  f"ANP {_layers(at(ci, 'anp', K))}, NP {_layers(at(ci, 'np', K))}",
                  paper="INP by far the best aligned, then ANP, closely followed by NP (Fig. 2)",
                  values={"lead_per_layer": lead.tolist(), "margin_deg": MARGIN, "samples": K})
    else:
        res.claim("inp_best_per_hidden_layer", st, None, "needs np, anp, inp and the clean baseline")
    # ANP ahead of NP past the first hidden layer, at few and at many samples
    few_ok = None
    for key, k in (("anp_beats_np_few_samples", min(10, K)), ("anp_beats_np_many_samples", K)):
        st = f"Past the first hidden layer ANP aligns better than NP (clean baseline, K={k}, by more than {MARGIN:g}°)"
        if ci is None or not have("np", "anp") or len(hidden) < 2:
            res.claim(key, st, None, "needs np, anp, the clean baseline and two hidden layers")
            continue
        gap = (at(ci, "np", k) - at(ci, "anp", k))[1:]
        low = np.min((per_seed(ci, "np", k) - per_seed(ci, "anp", k))[:, 1:], axis=1)
        ok = bool(np.all(gap > MARGIN))
        note = "" if ok else (
            f"ANP is biased: δa_l carries the noise propagated from the layers below, so ⟨δL δa_l⟩ mixes their gradients "
            f"in, and more samples do not remove it. In the last hidden layer ANP goes from {at(ci, 'anp', 1)[-1]:.1f}° "
            f"(K=1) to {at(ci, 'anp', K)[-1]:.1f}° (K={K}) while NP, unbiased, goes from {at(ci, 'np', 1)[-1]:.1f}° to "
            f"{at(ci, 'np', K)[-1]:.1f}°." + (f" The paper's ranking holds at few samples (K={min(10, K)})." if few_ok else ""))
        res.claim(key, st, ok, f"NP − ANP, hidden {'/'.join(lnames[l].split()[-1] for l in hidden[1:])}: "
                  f"{_layers(gap)}; smallest per seed {_deg(low)}", paper="ANP better aligned than NP (Fig. 2)",
                  note=note, values={"np_minus_anp": gap.tolist(), "margin_deg": MARGIN, "samples": k})
        few_ok = ok if few_ok is None else few_ok
    # layer 1 identical for NP and ANP
    st = "In the first hidden layer NP's and ANP's updates are identical (angles to BP within 1°)"
    if ci is not None and "anp" in names:
        worst = float(np.max(_mean(np.abs(same[:, 0] - same[:, 1]))))
        ind = (f"; NP with its own noise differs from ANP by {_deg(np.abs(curves[:, ci, 0, 0, -1] - same[:, 0, -1]))}"
               f" at K={K}") if "np" in names else ""
        res.claim("layer1_np_equals_anp", st, worst <= 1.0,
                  f"on the same noise the angles differ by at most {worst:.2f}° over K=1…{K} (mean of seeds); the "
                  f"updates are {_deg(same[:, 2, -1])} apart at K={K}{ind}", paper="identical (Fig. 2)",
                  note=("Nearly, not exactly: with a clean baseline δa_1 = ε_1, but ANP weights each sample by N/‖δa‖² "
                        "where NP uses 1/σ², and ‖δa‖² — which includes the noise propagated to deeper layers — varies "
                        f"from sample to sample (CV {np.nanmean(cvs):.2f} here). On the 64-wide digits network of "
                        "tests/test_rules_science.py the CV is 0.20 and the weighting costs ANP 1.4° in layer 1; "
                        "independent noise draws make up the rest of the gap measured there (ANP 55.6° vs NP 53.0°, "
                        "K=30; NP on ANP's noise 54.2°)."),
                  values={"max_abs_diff_deg": worst, "weight_cv": [float(c) for c in cvs]})
    else:
        res.claim("layer1_np_equals_anp", st, None, "needs anp and the clean baseline")
    # everything improves with samples
    st = f"Every rule's alignment improves with samples in every hidden layer (K=1 → {K}, both baselines, by more than 10°)"
    if K > 1:
        falls = {(b, r): at(bi, r, 1) - at(bi, r, K) for bi, b in enumerate(bases) for r in names}
        worst = min(falls, key=lambda k: falls[k].min())
        low = np.min([np.min(per_seed(bi, r, 1) - per_seed(bi, r, K), axis=1)
                      for bi in range(len(bases)) for r in names], axis=0)
        res.claim("all_improve_with_samples", st, bool(falls[worst].min() > 10.0),
                  f"smallest fall {falls[worst].min():.1f}° ({worst[1].upper()}, {worst[0]} baseline); per seed {_deg(low)}",
                  paper="alignment improves with more noise samples for all algorithms (§3.1)",
                  values={"margin_deg": 10.0, "falls": {f"{b}/{r}": v.tolist() for (b, r), v in falls.items()}})
    else:
        res.claim("all_improve_with_samples", st, None, "needs samples > 1")
    # INP's lead at equal forward passes (Fig. 6)
    st = f"At equal forward passes INP still aligns better than NP and ANP in every hidden layer (by more than {MARGIN:g}°)"
    if ci is not None and have("np", "anp", "inp"):
        budget, ks = equal["clean"]
        lead = {r: at(ci, r, ks[r]) - at(ci, "inp", ks["inp"]) for r in ("np", "anp")}
        ok = bool(all(np.all(v > MARGIN) for v in lead.values()))
        same_curve = bool(np.all(np.abs(lead["np"]) <= MARGIN))
        note = "" if ok else (
            f"Each INP sample costs {L} perturbed passes (one per layer). At {budget} passes INP (K={ks['inp']}) leads "
            f"NP (K={ks['np']}) by {_layers(lead['np'])}" + (" — on Fig. 6's axes their curves lie on top of each other, "
                                                            "so its per-sample lead is what its extra passes buy"
                                                            if same_curve else "")
            + f". Per sample (K={K}) INP leads NP by {_layers(at(ci, 'np', K) - at(ci, 'inp', K))}.")
        res.claim("inp_lead_at_equal_passes", st, ok,
                  f"at {budget} passes (INP K={ks['inp']}, NP/ANP K={ks['np']}), lead over NP {_layers(lead['np'])}, over "
                  f"ANP {_layers(lead['anp'])} (hidden {hl})",
                  paper="Fig. 6 (App. G) plots Fig. 2 against passes; no numbers given", note=note,
                  values={"budget": budget, "samples": ks, "lead_np": lead["np"].tolist(), "lead_anp": lead["anp"].tolist()})
    else:
        res.claim("inp_lead_at_equal_passes", st, None, "needs np, anp, inp and the clean baseline")
    # the noisy baseline (not in the paper)
    if ci is not None and "noisy" in bases:
        ni = bases.index("noisy")
        st = f"With a noisy baseline ANP aligns as well as with a clean one (every hidden layer within 3°, K={K})"
        if "anp" in names:
            d = at(ni, "anp", K) - at(ci, "anp", K)
            res.claim("noisy_baseline_anp_unchanged", st, bool(np.all(np.abs(d) <= 3.0)),
                      f"noisy − clean, hidden {hl}: {_layers(d)}", paper="not shown (§3.4 trains DANP with it)",
                      values={"noisy_minus_clean": d.tolist(), "margin_deg": 3.0})
        else:
            res.claim("noisy_baseline_anp_unchanged", st, None, "needs anp")
        lost = [r for r in ("np", "inp") if r in names]
        st = f"With a noisy baseline NP and INP lose alignment (every hidden layer worse by more than 5°, K={K})"
        if lost:
            d = {r: at(ni, r, K) - at(ci, r, K) for r in lost}
            res.claim("noisy_baseline_np_inp_degrade", st, bool(all(np.all(v > 5.0) for v in d.values())),
                      "; ".join(f"{r.upper()} noisy − clean {_layers(v)}" for r, v in d.items()),
                      paper="not shown (§3.4: DNP degrades in training)",
                      note="NP and INP know only the perturbation they injected; the unread intrinsic noise of both "
                           "passes enters δL as extra variance. ANP measures δa and so accounts for all of it.",
                      values={r: v.tolist() for r, v in d.items()})
        else:
            res.claim("noisy_baseline_np_inp_degrade", st, None, "needs np or inp")


def _sigma2_claims(res, cfg, names, sig):
    grid, mean, l2, dts = sig["grid"], sig["mean"], sig["layer"], sig["dts"]
    if not names or not len(grid):
        return
    ref = int(np.argmin(np.abs(np.log10(grid) + 6)))                       # σ² = 1e-6, the paper's value

    def rise(pi, r, mask):                 # angle above the σ² = 1e-6 angle, at the grid points in mask
        v = mean[pi, RULES.index(r), l2]
        return v[mask] - v[ref]
    mid = (grid >= 1e-6 * 0.99) & (grid <= 1e-4 * 1.01)
    st = "The angles are stable for σ² from 1e-6 to 1e-4 (within 2°)"
    if mid.sum() >= 2:
        spans = {f"{dt}/{r}": float(np.ptp(mean[pi, RULES.index(r), l2][mid])) for pi, dt in enumerate(dts) for r in names}
        worst = max(spans.values())
        res.claim("sigma2_stable_1e-6_to_1e-4", st, worst <= 2.0,
                  f"largest change over 1e-6…1e-4: {worst:.2f}° ({max(spans, key=spans.get)})",
                  paper="completely stable from 1e-6 to 1e-4 (App. H, Fig. 7)", values={"span_deg": spans})
    else:
        res.claim("sigma2_stable_1e-6_to_1e-4", st, None, "needs two σ² values in 1e-6…1e-4")
    low = (grid < 1e-7 * 0.99) & (grid >= 1e-9 * 0.99)
    checked = "/".join(f"{g:.0e}" for g in grid[low]) or "1e-9…1e-8"
    st = f"In float32, σ² below ~1e-7 raises the angle (precision errors; by more than 3° at σ² = {checked})"
    if "float32" in dts and low.any():
        pi = dts.index("float32")
        r32 = {r: float(np.max(rise(pi, r, low))) for r in names}
        ok = max(r32.values()) > 3.0
        worse = [float(g) for i, g in enumerate(grid) if g < grid[ref] and
                 max(float(mean[pi, RULES.index(r), l2, i] - mean[pi, RULES.index(r), l2, ref]) for r in names) > 3.0]
        fine = min((g for g in grid if g < grid[ref] and g > max(worse, default=0)), default=grid[ref])
        tf = ""
        if cfg["tf32"] and "np" in names:
            tf = (f" NP in software rises {float(np.max(rise(len(dts) + 1, 'np', low))):.1f}° there with TF32 GEMM operands "
                  f"and {float(np.max(rise(len(dts), 'np', low))):.1f}° without.")
        res.claim("float32_precision_errors_below_1e-7", st, ok,
                  "rise above the σ²=1e-6 angle: " + ", ".join(f"{r.upper()} {v:+.1f}°" for r, v in r32.items()),
                  paper="precision errors for σ² < 1e-7 (App. H)",
                  note="" if ok else (
                      f"Our float32 keeps its alignment down to σ² = {fine:.0e}"
                      + (f" and departs by more than 3° at {max(worse):.0e}" if worse else "")
                      + ", where σ nears float32's rounding of the O(1) pre-activations (~6e-8). The paper's limit "
                      "matches TF32, TensorFlow's default for float32 matmuls on its Ampere GPU (RTX 3090): a 10-bit "
                      f"mantissa rounds at ≈ 5e-4 ≈ σ at σ² ≈ 2e-7.{tf}"),
                  values={"rise_deg": r32, "departs_at": worse})
    else:
        res.claim("float32_precision_errors_below_1e-7", st, None, "needs float32 and σ² in 1e-9…1e-8")
    st = ("With TF32 GEMM operands (the paper's GPU default) NP loses alignment below σ² ≈ 1e-7 "
          f"(more than 3° at σ² = {checked}, within 3° of float32 at 1e-6)")
    if cfg["tf32"] and "np" in names and low.any():
        n0 = len(dts)
        up, at_ref = float(np.max(rise(n0 + 1, "np", low))), float(mean[n0 + 1, 0, l2, ref] - mean[n0, 0, l2, ref])
        res.claim("tf32_reproduces_precision_limit", st, bool(up > 3.0 and abs(at_ref) <= 3.0),
                  f"TF32 NP at σ² = {checked}: {up:+.1f}° over its 1e-6 angle; at 1e-6 {at_ref:+.1f}° from float32",
                  paper="precision errors for σ² < 1e-7 (App. H)", values={"rise_deg": up, "at_1e-6_deg": at_ref})
    else:
        res.claim("tf32_reproduces_precision_limit", st, None, "needs tf32=true, np and σ² in 1e-9…1e-8")
    if "float64" in dts:
        below = grid <= grid[ref]
        r64 = {r: float(np.max(np.abs(rise(dts.index("float64"), r, below)))) for r in names}
        res.claim("float64_no_precision_loss",
                  f"In float64 the angles stay within 3° of their σ²=1e-6 value down to σ²={grid.min():.0e}",
                  max(r64.values()) <= 3.0, ", ".join(f"{r.upper()} ±{v:.1f}°" for r, v in r64.items()),
                  paper="(float64 not used in the paper)", values={"max_abs_change_deg": r64})
    else:
        res.claim("float64_no_precision_loss", "In float64 the angles show no precision loss", None, "needs float64")
    high = grid > 1e-3 * 1.01
    st = "σ² above 1e-3 starts to change the angle (by more than 3° at σ² ≤ 1e-2)"
    if "float32" in dts and high.any():
        pi = dts.index("float32")
        rh = {r: [float(v) for v in rise(pi, r, high)] for r in names}
        first = [float(g) for i, g in enumerate(grid[high]) if max(rh[r][i] for r in names) > 3.0]
        ok = bool(first) and first[0] <= 1e-2 * 1.01
        res.claim("large_sigma2_affects_alignment", st, ok,
                  "rise above the σ²=1e-6 angle at σ² = " + "/".join(f"{g:.0e}" for g in grid[high]) + ": "
                  + "; ".join(f"{r.upper()} " + "/".join(f"{v:+.1f}" for v in vals) + "°" for r, vals in rh.items()),
                  paper="for σ² > 1e-3 the perturbation begins to affect network dynamics (App. H)",
                  note="" if ok else (
                      "Leaky ReLU is piecewise linear: a perturbation biases the first-order estimate only where it "
                      "crosses a kink, or through the softmax's curvature; on this network that shows from σ² = "
                      + (f"{first[0]:.0e}" if first else f"beyond {grid.max():.0e}") + "."),
                  values={"rise_deg": rh})
    else:
        res.claim("large_sigma2_affects_alignment", st, None, "needs float32 and σ² above 1e-3")
