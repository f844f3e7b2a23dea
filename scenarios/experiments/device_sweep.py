"""``device-sweep``: test accuracy as each non-ideality of the crossbar grows from off to strong.

The device table of the spec (§1) as an experiment: starting from a base device (``ideal``:
exact weights, node noise σ = 1e-3), one non-ideality at a time is switched on at increasing
strength and BP, DANP and DNP (both with a *noisy* baseline: two noisy passes, nothing gated,
nothing read) train a fresh 64-64-10 leaky-ReLU network on scikit-learn's digits. No seed
states this experiment; it answers "which non-ideality hurts which rule, and from when".

Knobs (``knobs``; the first level of each is "off") and the settings held fixed for them
(``fixed``): read noise (std ``read_noise · ‖x‖₂``), node noise, ADC bits (bound 12),
ADC bound (8 bits), DAC bits (per-row ``abs_max`` scaling, bound 1), programming noise and
conductance levels (with program-and-verify updates, so both act on every write, not only on
the first), drift time (ν ~ N(0.1, 0.045²), the upper clamp of aihwkit's PCM model, t₀ = 20 s;
trained at t = 0, tested at t), stuck-at fraction (half stuck off, half on), device-to-device
variation, pulsed step size ``dw_min`` (off: exact updates) and up/down asymmetry (pulsed,
``dw_min`` 0.002). Every knob that needs a conductance mapping uses ``w_max = 1.5 · max|W₀|``
per layer (``w_max_mode="init"``, the presets' headroom).

The ADC sits after the node noise (spec §1): when its step ``Δ = bound / (2^(bits−1) − 1)``
exceeds σ, two noisy passes often read the same code and the perturbation vanishes. Measured
directly from what each rule consumed: the fraction of samples whose observed activity
difference vanished in every unit (``‖δa‖ = 0`` in DANP's record; such a sample contributes
nothing), the fraction of single units with ``δa = 0``, and the fraction of samples with
``δL = 0`` (DNP's record). The ``adc_vanishing`` figure plots them against ``Δ/σ`` with
the line ``Δ = σ`` drawn.

Settings: batch 32, 10 epochs (450 updates), Adam; learning rates BP 3e-3, DANP and DNP 1e-2
— the best test accuracy after 10 epochs on the base device among {1e-3, 3e-3, 1e-2} (seed 0;
``lr=auto`` searches instead); loss softmax cross-entropy summed over classes; 3 seeds.
``--set only='["out_bits"]'`` runs chosen knobs; ``--set knobs.read_noise='[0, 0.2]'``
changes levels. ``scale=paper`` keeps these settings (the paper has no device sweep).

Outputs: table ``sweep`` (knob, level, rule: test accuracy with the range over seeds, its drop
from the knob's off level, the ADC step, the vanished fractions, rules not run and why);
arrays ``acc_<knob>`` (rule, level, seed) and ``vanished`` (rule, ADC setting, measure);
figures ``device_sweep`` (one panel per knob, the first level ADC step > σ marked) and
``adc_vanishing`` (vanished fractions and accuracy against Δ/σ).

Measured (3 seeds): DNP with a noisy baseline collapses as soon as unread noise outgrows its
injected σ (read noise 0.01: 0.25; node noise 0.01: 0.32) while DANP, which measures δa, stays
≥ 0.936; without node noise DANP has nothing to learn from (0.12). ADC: no DANP sample's δa
vanishes up to Δ = 5.9σ, then 0.03 at 23σ, 0.41 at 94σ (8 bits), 0.81 at 387σ, 0.97 at 1 714σ
(4 bits); DANP's accuracy goes 0.957 → 0.926 (8 bits) → 0.286 (4 bits), DNP's falls already
at 10 bits (0.62), BP's only at 4 bits (0.71). DAC bits hurt the perturbation rules far
earlier than BP (8 bits: DANP 0.937, DNP 0.833, BP 0.971) — likely because the next layer's
DAC rounds an activity difference smaller than its step to zero or to a whole step (not
measured directly). Drift (one year):
BP 0.72, DANP 0.84, DNP 0.78. Programming noise, levels, stuck devices up to 5 %, d2d, pulse
size and asymmetry change accuracy by ≤ 0.04 at these levels.

The default run takes about 1.5 min on 2 cores when they are free (87 s of CPU time, one BLAS
thread; measured 204 s of wall time under a load average of 6 from other jobs); ``--quick``
about 5 s.
"""
from __future__ import annotations

import json

import numpy as np

import noisesim
from noisesim.backend import to_numpy

from ..datasets import load
from ..experiment import (EVALUATION, common, eval_options, device, label, make_rule, network, options, resolve_lrs, rule_names, seeds,
                          training_trial)
from ..result import Result, spread
from ..scenario import register
from ..experiment import quiet, trained
from ..train import evaluate

KNOBS = {
    "read_noise": [0, 0.01, 0.03, 0.1],
    "node_noise": [0, 0.001, 0.01, 0.1],
    "out_bits": [None, 16, 14, 12, 10, 8, 6, 4],
    "out_bound": [None, 64, 16, 4, 1],
    "in_bits": [None, 8, 6, 4, 2],
    "prog_noise": [0, 0.01, 0.03, 0.1],
    "n_levels": [None, 256, 64, 16],
    "drift_time": [0, 3600, 86400, 2592000, 31536000],
    "stuck": [0, 0.01, 0.05, 0.2],
    "d2d": [0, 0.1, 0.3, 0.6],
    "dw_min": [None, 0.0005, 0.002, 0.01, 0.05],
    "asymmetry": [0, 0.1, 0.3, 0.6],
}
TITLES = {
    "read_noise": "read noise (std · ‖x‖₂)", "node_noise": "node noise σ", "out_bits": "ADC bits (bound 12)",
    "out_bound": "ADC bound (8 bits)", "in_bits": "DAC bits (abs-max scaling)",
    "prog_noise": "programming noise (of g_max)", "n_levels": "conductance levels",
    "drift_time": "drift: time after training", "stuck": "stuck-at fraction", "d2d": "device-to-device variation",
    "dw_min": "pulsed step dw_min (of w_max)", "asymmetry": "pulse up/down asymmetry",
}
FIXED = {"out_bound": 12.0, "out_bits": 8, "in_bound": 1.0, "w_max": 1.5, "dw_min": 0.002,
         "drift_nu": 0.1, "drift_nu_std": 0.045, "t0": 20.0}

DEFAULTS = common(
    **EVALUATION,
    dataset="digits",
    sizes=[64, 64, 10],
    epochs=10,
    batch_size=32,
    rules=["bp", "danp", "dnp"],
    rule_options={"bp": {"lr": 3e-3}, "danp": {"baseline": "noisy", "lr": 1e-2},
                  "dnp": {"baseline": "noisy", "lr": 1e-2}},
    lr="paper",
    knobs=KNOBS,
    only=None,
    fixed=FIXED,
    vanish_margin=0.5,
    n_train=None,
    n_test=None,
    blas_threads=1,
)
QUICK = {"epochs": 1, "n_train": 200, "n_test": 100,
         "knobs": {k: [v[0], v[-1]] for k, v in KNOBS.items()}}


def overrides(knob: str, level, fixed: dict) -> dict:
    """DeviceConfig overrides (on top of the base device) for one knob at one level."""
    mapped = {"w_max": fixed["w_max"], "w_max_mode": "init"}
    if knob == "read_noise":
        return {"read_noise": level}
    if knob == "node_noise":
        return {"node_noise": level}
    if knob == "out_bits":
        return {"out_bound": fixed["out_bound"], "out_bits": level}
    if knob == "out_bound":
        return {} if level is None else {"out_bits": fixed["out_bits"], "out_bound": level}
    if knob == "in_bits":
        return {"io_scaling": "abs_max", "in_bound": fixed["in_bound"], "in_bits": level}
    if knob in ("prog_noise", "n_levels"):
        return {**mapped, "update": "write_verify", knob: level}
    if knob == "drift_time":
        return {**mapped, "drift_nu": fixed["drift_nu"], "drift_nu_std": fixed["drift_nu_std"], "t0": fixed["t0"]}
    if knob == "stuck":
        return {**mapped, "stuck_off": level / 2, "stuck_on": level / 2}
    if knob == "d2d":
        return {**mapped, "d2d": level}
    if knob == "dw_min":
        return mapped if level is None else {**mapped, "update": "pulsed", "dw_min": level}
    if knob == "asymmetry":
        return {**mapped, "update": "pulsed", "dw_min": fixed["dw_min"], "asymmetry": level}
    raise ValueError(f"unknown knob {knob!r}; valid knobs: {sorted(KNOBS)}")


def adc_step(dev: noisesim.DeviceConfig) -> float | None:
    """The output ADC's step ``bound / (2^(bits−1) − 1)`` in pre-activation units (``None``: no
    quantiser). Under ``io_scaling="abs_max"`` the step is relative and this returns ``None``."""
    if dev.out_bound is None or dev.out_bits is None or dev.io_scaling != "none":
        return None
    half = 2 ** (int(dev.out_bits) - 1) - 1
    return float(dev.out_bound) / half if half else float(dev.out_bound)


def level_label(knob: str, level) -> str:
    if knob == "drift_time":
        for unit, sec in (("y", 31536000), ("d", 86400), ("h", 3600), ("s", 1)):
            if level >= sec:
                return f"{level / sec:g} {unit}"
        return "0 s"
    if level is None or level == 0:
        return "off"
    return f"{level:g}"


class Vanishing:
    """``on_step`` counter of what vanished in a rule's record: samples with ``‖δa‖ = 0``
    (over all layers), single units with ``δa = 0``, samples with ``δL = 0``."""

    def __init__(self):
        self.n = {"da_samples": 0, "da_zero": 0, "units": 0, "units_zero": 0, "dL": 0, "dL_zero": 0}

    def __call__(self, step, idx, est):
        rec = est.record
        if "da" in rec:
            da = [to_numpy(d) for d in rec["da"]]
            norm2 = sum((d.astype(np.float64) ** 2).sum(-1) for d in da)
            self.n["da_samples"] += norm2.size
            self.n["da_zero"] += int((norm2 == 0).sum())
            self.n["units"] += sum(d.size for d in da)
            self.n["units_zero"] += sum(int((d == 0).sum()) for d in da)
        if "dL" in rec:
            dL = to_numpy(rec["dL"])
            self.n["dL"] += dL.size
            self.n["dL_zero"] += int((dL == 0).sum())

    def fractions(self) -> dict:
        f = lambda a, b: self.n[a] / self.n[b] if self.n[b] else None
        return {"vanished": f("da_zero", "da_samples"), "units_zero": f("units_zero", "units"),
                "zero_dL": f("dL_zero", "dL")}


@register("device-sweep", "test accuracy of BP, DANP, DNP (noisy baselines) as each device non-ideality grows",
          DEFAULTS, quick=QUICK, paper={})
def run(cfg: dict, ctx) -> Result:

    names = rule_names(cfg)
    return _run(cfg, ctx, names)


def _knobs(cfg) -> dict:
    knobs = cfg["knobs"]
    only = cfg.get("only")
    if only is not None:
        only = [only] if isinstance(only, str) else only
        if not isinstance(only, list) or not all(isinstance(k, str) for k in only):
            raise ValueError(f"only={cfg['only']!r} must be a knob name or a list of them; valid knobs: {sorted(knobs)}")
        bad = [k for k in only if k not in knobs]
        if bad:
            raise ValueError(f"only={only!r}: unknown knobs {bad}; valid knobs: {sorted(knobs)}")
        knobs = {k: knobs[k] for k in only}
    for k, levels in knobs.items():
        if k not in KNOBS:
            raise ValueError(f"unknown knob {k!r}; valid knobs: {sorted(KNOBS)}")
        if not isinstance(levels, list) or not levels:
            raise ValueError(f"knobs.{k}={levels!r} must be a non-empty list of levels (the first is 'off')")
    return knobs


def _run(cfg, ctx, names) -> Result:
    data = load(cfg["dataset"], **{k: cfg[k] for k in ("n_train", "n_test") if cfg.get(k) is not None})
    sizes = [data.n_features, *cfg["sizes"][1:-1], data.n_outputs]
    knobs = _knobs(cfg)
    fixed = {**FIXED, **(cfg.get("fixed") or {})}
    base = device(cfg)
    res = Result(main="sweep")
    trial = training_trial(cfg, data, sizes, batch_size=cfg["batch_size"])
    if cfg["lr"] == "paper":
        lrs = _set_rates(cfg, names, res)
    else:
        lrs = resolve_lrs(cfg, names, architecture=f"{data.name} {sizes}", result=res, trial=trial)
    labels = {n: label(make_rule(n, lrs[n], **options(cfg, n))) for n in names}
    S = seeds(cfg)
    cache: dict = {}

    def outcome(ov: dict, name: str, times=None):
        """Per seed: test accuracy (or one per time in ``times``), vanished fractions, divergence."""
        key = json.dumps([ov, name], sort_keys=True)
        if key in cache:
            return cache[key]
        try:
            dev = base.replace(**ov)
        except ValueError as exc:
            cache[key] = {"not_run": f"invalid device: {exc}"}
            return cache[key]
        rule = make_rule(name, lrs[name], **options(cfg, name))
        missing = [a for a in rule.required_access() if not dev.grants(a)]
        if missing:
            cache[key] = {"not_run": f"device grants no {', '.join(missing)}"}
            return cache[key]
        out = {"acc": [], "times": [], "vanish": [], "diverged": []}
        for s in S:
            net = network(cfg, sizes, dev, s)
            counter = Vanishing()
            h = trained(ctx, f"{labels[name]} s{s}", net, make_rule(name, lrs[name], **options(cfg, name)), data,
                        group=f"{labels[name]} {json.dumps(ov, sort_keys=True)}", epochs=cfg["epochs"], batch_size=cfg["batch_size"],
                        progress=ctx.progress, on_step=counter, max_loss_ratio=cfg.get("max_loss_ratio", 1e3), **eval_options(cfg))
            out["acc"].append(float(h.last("test_acc")))
            out["vanish"].append(counter.fractions())
            out["diverged"].append(h.diverged)
            if h.diverged:
                res.notes.append(f"{labels[name]} on {ov} (seed {s}) stopped early: {h.diverged}")
            if times:
                accs = []
                for t in times:
                    net.set_time(float(t))
                    accs.append(evaluate(net, data.x_test, data.y_test, make_rule(name).loss)[1])
                out["times"].append(accs)
        cache[key] = out
        return out

    t = res.table("sweep", ["knob", "level", "rule", "seeds", "test_acc", "test_acc_min", "test_acc_max", "drop",
                            "adc_step", "vanished", "units_zero", "zero_dL", "diverged", "not_run"])
    acc_arrays, vanish_rows = {}, []
    for knob, levels in knobs.items():
        acc = np.full((len(names), len(levels), len(S)), np.nan)
        for i, n in enumerate(names):
            off = None
            for j, lev in enumerate(levels):
                if knob == "drift_time":
                    o = outcome(overrides(knob, lev, fixed), n, times=tuple(levels))
                    per_seed = [ts[j] for ts in o.get("times", [])]
                else:
                    o = outcome(overrides(knob, lev, fixed), n)
                    per_seed = o.get("acc", [])
                step = _step(base, overrides(knob, lev, fixed))
                if "not_run" in o:
                    t.add(knob=knob, level=level_label(knob, lev), rule=labels[n], seeds=0, adc_step=step,
                          diverged=0, not_run=o["not_run"])
                    continue
                acc[i, j] = per_seed
                s = spread(per_seed)
                off = s["mean"] if j == 0 else off
                v = {k: (float(np.mean([f[k] for f in o["vanish"]])) if o["vanish"][0][k] is not None else None)
                     for k in ("vanished", "units_zero", "zero_dL")}
                t.add(knob=knob, level=level_label(knob, lev), rule=labels[n], seeds=len(per_seed),
                      test_acc=s["mean"], test_acc_min=s["min"], test_acc_max=s["max"],
                      drop=(off - s["mean"]) if off is not None else None, adc_step=step,
                      diverged=sum(bool(d) for d in o["diverged"]), not_run="", **v)
                if knob in ("out_bits", "out_bound"):
                    vanish_rows.append((knob, lev, n, step, v, s["mean"]))
        acc_arrays[knob] = acc
        res.array(f"acc_{knob}", acc, ("rule", "level", "seed"),
                  {"rule": [labels[n] for n in names], "level": [level_label(knob, v) for v in levels], "seed": S},
                  units="test accuracy", knob=knob, levels=json.dumps(levels), title=TITLES[knob])
    sigma = base.node_noise
    _vanish_array(res, vanish_rows, names, labels)
    _figures(res, knobs, acc_arrays, names, labels, fixed, sigma, vanish_rows)
    _claims(res, cfg, vanish_rows, names, sigma)
    return res


def _step(base, ov):
    try:
        return adc_step(base.replace(**ov))
    except ValueError:
        return None


def _set_rates(cfg, names, res):
    """``lr=paper``: the paper has no rate for this network; each rule's rate from
    ``rule_options`` (the defaults' hand-picked rates) or the rule's own default."""
    t = res.table("learning_rates", ["rule", "lr", "source"])
    out = {}
    for n in names:
        given = cfg.get("rule_options", {}).get(n, {}).get("lr")
        out[n] = float(given) if given is not None else make_rule(n).lr
        t.add(rule=n, lr=out[n], source="set (rule_options; best of 1e-3, 3e-3, 1e-2 on the base device)"
              if given is not None else "rule default (Table 2 has no rate for this network)")
    return out


def _vanish_array(res, rows, names, labels):
    if not rows:
        return
    settings = sorted({(k, level_label(k, lev)) for k, lev, *_ in rows}, key=lambda kv: (kv[0], kv[1]))
    keys = [f"{k}={lab}" for k, lab in settings]
    vals = np.full((len(names), len(keys), 3), np.nan)
    for k, lev, n, step, v, _acc in rows:
        j = keys.index(f"{k}={level_label(k, lev)}")
        vals[names.index(n), j] = [np.nan if v[q] is None else v[q] for q in ("vanished", "units_zero", "zero_dL")]
    res.array("vanished", vals, ("rule", "adc", "measure"),
              {"rule": [labels[n] for n in names], "adc": keys, "measure": ["vanished", "units_zero", "zero_dL"]},
              what="fraction of samples with ‖δa‖ = 0, of units with δa = 0, of samples with δL = 0")


def _figures(res, knobs, acc_arrays, names, labels, fixed, sigma, vanish_rows):
    fig = res.figure("device_sweep", "test accuracy as one non-ideality grows (mean, range over seeds)", columns=4)
    for knob, levels in knobs.items():
        labs = [level_label(knob, v) for v in levels]
        p = fig.panel(TITLES[knob], "level: " + ", ".join(labs), "test accuracy")
        x = list(range(len(levels)))
        with quiet():
            for i, n in enumerate(names):
                a = acc_arrays[knob][i]
                if np.isfinite(a).any():
                    p.add(labels[n], x, np.nanmean(a, 1), np.nanmin(a, 1), np.nanmax(a, 1), group=labels[n], marker="o")
        if knob in ("out_bits", "out_bound") and sigma > 0:
            steps = [adc_step(noisesim.DeviceConfig(**overrides(knob, v, fixed))) for v in levels]
            over = [j for j, s in enumerate(steps) if s is not None and s > sigma]
            if over and over[0] > 0:
                p.vlines.append((over[0] - 0.5, "ADC step > σ →"))
    fig2 = res.figure("adc_vanishing", "a perturbation smaller than one ADC step vanishes", columns=2)
    q = fig2.panel("what the perturbation rules observed (ADC bits and bound)", "ADC step Δ / node-noise σ",
                   "fraction vanished", xscale="log")
    r = fig2.panel("test accuracy against the ADC step (ADC bits, bound 12)", "ADC step Δ / node-noise σ",
                   "test accuracy", xscale="log")
    for n in names:
        rows = sorted([row for row in vanish_rows if row[2] == n and row[3] is not None], key=lambda row: row[3])
        if not rows or sigma <= 0:
            continue
        x = [row[3] / sigma for row in rows]
        observes = rows[0][4]["vanished"] is not None          # the rule consumed δa (ANP family)
        shown = (("vanished", "samples with ‖δa‖=0"), ("units_zero", "units with δa=0")) if observes else \
            (("zero_dL", "samples with δL=0"),)
        for key, what in shown:
            y = [row[4][key] for row in rows]
            if all(v is not None for v in y):
                q.add(f"{labels[n]}: {what}", x, y, group=labels[n], role="other" if key == "units_zero" else "test",
                      marker="o")
        bits = [row for row in rows if row[0] == "out_bits"]
        r.add(labels[n], [row[3] / sigma for row in bits], [row[5] for row in bits], group=labels[n], marker="o")
    for panel in (q, r):
        panel.vlines.append((1.0, "Δ = σ"))


def _claims(res, cfg, vanish_rows, names, sigma):
    margin = float(cfg["vanish_margin"])
    rows = [row for row in vanish_rows if row[2] == "danp" and row[3] is not None and row[4]["vanished"] is not None]
    if "danp" not in names or not rows or sigma <= 0:
        res.claim("adc_small_perturbations_vanish",
                  "a perturbation smaller than one ADC step vanishes (DANP's ‖δa‖ = 0)", None,
                  "not evaluated: needs danp, a node noise σ > 0 and ADC levels")
        return
    fine = [row[4]["vanished"] for row in rows if row[3] <= sigma]
    coarse = max(rows, key=lambda row: row[3])
    v = coarse[4]["vanished"]
    holds = bool(all(f == 0 for f in fine) and v >= margin) if fine else bool(v >= margin)
    res.claim("adc_small_perturbations_vanish",
              f"a perturbation smaller than one ADC step vanishes: with Δ ≤ σ no DANP sample's ‖δa‖ is 0; at the "
              f"coarsest ADC (Δ = {coarse[3] / sigma:.0f}σ) at least {margin:.0%} are",
              holds, (f"Δ ≤ σ ({len(fine)} ADC setting{'s' if len(fine) != 1 else ''}): at most {max(fine):.3f} vanished"
                      if fine else "no ADC setting with Δ ≤ σ") +
              f"; Δ = {coarse[3] / sigma:.0f}σ ({coarse[0]}={level_label(coarse[0], coarse[1])}): {v:.3f} vanished "
              f"(mean over {cfg['n_seeds']} seed{'s' if cfg['n_seeds'] != 1 else ''})",
              paper="spec §1 (physics the simulator must show; no paper number)",
              values={"fine": fine, "coarse": v, "coarse_step_over_sigma": coarse[3] / sigma, "margin": margin})
