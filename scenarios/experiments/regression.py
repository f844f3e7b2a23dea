"""``regression``: (D)NP, (D)ANP and (D)BP on a SARCOS-shaped regression task.

Reproduces Appendix J (Fig. 8) of the node-perturbation paper (seed 001): a fully connected
21→32→32→7 leaky-ReLU network trained with squared error on SARCOS inverse dynamics (21
joint positions, velocities and accelerations → 7 torques), every rule's learning rate found
by doubling until training turns unstable, 3 seeds. The paper's final test losses: NP 11.18,
DNP 10.51, ANP 15.86, DANP 9.79, BP 9.48, DBP 7.02 — "DNP and DANP perform almost as well as
BP; DBP performs best overall".

Measured: the final test loss of each rule, ``L = (1/7) Σ_k (y_k − t_k)²`` averaged over the
test set (noisy device inference, ``ideal`` preset: node noise σ = 1e-3), and its ratio to
BP's on the same seed (same initial weights). Our loss averages over the 7 outputs of
standardised targets while the paper's numbers are on its own scale, so only the ratios
``rule / BP`` are compared with the paper's (DNP 1.11, DANP 1.03, NP 1.18, ANP 1.67, DBP 0.74).

Settings and their source:

* network 21-32-32-7, leaky ReLU (slope 0.2), MSE, Adam, batch 1 000 — the paper's;
* NP, DNP, ANP, DANP with a clean baseline (the paper's standard setting; ``ideal`` grants
  ``clean``), σ = 1e-3; decorrelation α = 1e-4 for DNP and DANP, 1e-3 for DBP — the paper's;
* learning rates: ``lr=auto`` (:mod:`scenarios.lr_search`), doubling from
  ``lr_search.start`` until a trial of ``lr_search.epochs`` epochs is unstable, as the paper
  did from 1e-7. Offline the search starts at 1e-5 (every rule is stable there; the start
  only costs time), trials last 10 epochs (200 updates) and rates stop at ``max_lr = 1e-2``,
  so the grid's highest is 5.12e-3 — Table 2's highest rate is 5e-3. Without the cap, short
  trials accept Adam rates at which BP and DBP diverge later (measured with 25-epoch trials
  at batch 100: BP's "stable" 0.16 reached a test loss of 0.3–2.2 after 300 epochs and DBP's
  decorrelation diverged). The table ``learning_rates`` records each rate, ``lr_search``
  every trial. In the default run every rule reaches the cap (5.12e-3);
* offline data (``dataset=teacher``): a SARCOS-shaped teacher — ``load("teacher", n_in=21,
  n_out=7, hidden=[32])``, 20 000 training and 1 000 test samples (SARCOS: 44 484 / 4 449),
  inputs mixed to pairwise correlation 0.6 (SARCOS's positions, velocities and accelerations
  are strongly correlated, which is what decorrelation acts on; the raw teacher's inputs are
  independent) and measurement noise of std 0.1 on training *and* test targets (SARCOS's
  test targets are measurements too, so its test loss has a floor every rule shares);
* 150 epochs of 20 updates (3 000 updates; the paper: 500 epochs of 45, 22 000), 3 seeds.

Outputs: table ``final`` (per rule: learning rate, final test and train loss with the range
over seeds, ratio to BP per seed, the paper's loss and ratio, forward passes, seconds,
divergences), ``learning_rates``, ``lr_search``; arrays ``learning_curves_*`` (rule, seed,
epoch), ``final_test_loss`` (rule, seed) and ``ratio_to_bp_curve`` (rule, seed, epoch);
figures ``learning_curves`` (train dashed, test solid, range over seeds shaded) and
``ratio_to_bp`` (final ratios against the paper's, and the ratios during training).

Measured (3 seeds, η = 5.12e-3 for all): test-loss ratio to BP NP 1.43, DNP 1.28, ANP 1.43,
DANP 1.23, DBP 0.97 (paper 1.18, 1.11, 1.67, 1.03, 0.74): decorrelation helps and DBP is best,
as in the paper, but DNP and DANP stay further from BP. Why, measured on seed 0 with
``--rule bp,dnp,danp --set n_seeds=1``: DNP and DANP level off near a test loss of 0.033
while BP keeps improving — with ``--set epochs=600`` (12 000 updates) BP reaches 0.021 and
DNP/BP, DANP/BP grow to 1.58 and 1.58; with ``--set lr=0.001 --set epochs=300``, where BP
(0.030) has not yet gone below that level, they are 1.17 and 1.15, close to the paper's. The
gap on our task is a floor of the perturbation rules, not slower convergence; Appendix J does
not say how far its BP was from such a floor on SARCOS.

``--set scale=paper`` trains on SARCOS (``sarcos_inv.mat`` and ``sarcos_inv_test.mat`` under
``$NOISESIM_DATA``; a clear error names them when absent) for 500 epochs at batch 1 000 with
the search started at 1e-7 (still capped at 1e-2).

The default run takes about 4 min on 2 cores when they are free (247 s of CPU time, one BLAS
thread; measured 14 min of wall time under a load average of 6–8 from other jobs); ``--quick``
about 3 s. Where the time goes (profile of a DNP run): a 21-32-32-7 layer is too small for
its GEMM to matter — 36 % is drawing the node noise and quantising in the read kernel, 17 %
the leaky ReLU, 14 % drawing NP's injected perturbations, the rest Python per update; the
per-epoch evaluation on all 21 000 samples is a third of the noisy passes.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from .. import paper
from ..datasets import load
from ..experiment import (EVALUATION, common, label, make_rule, options, resolve_lrs, rule_names, seeds, train_runs,
                          training_trial, learning_curves)
from ..lr_search import SEARCH_DEFAULTS
from ..result import Result, fmt_spread, spread
from ..scenario import register
from ..experiment import quiet

RULES = ("np", "dnp", "anp", "danp", "bp", "dbp")
ARCHITECTURE = "SARCOS 21-32-32-7"

DEFAULTS = common(
    **EVALUATION,
    dataset="teacher",
    teacher={"hidden": [32], "noise": 0.1, "input_correlation": 0.6, "n_train": 20000, "n_test": 1000,
             "seed": 0},
    sizes=[21, 32, 32, 7],
    epochs=150,
    batch_size=1000,
    rules=list(RULES),
    rule_options={
        "np": {"baseline": "clean"}, "anp": {"baseline": "clean"},
        "dnp": {"baseline": "clean", "alpha": paper.SARCOS_ALPHA["dnp"]},
        "danp": {"baseline": "clean", "alpha": paper.SARCOS_ALPHA["danp"]},
        "dbp": {"alpha": paper.SARCOS_ALPHA["dbp"]},
    },
    lr="auto",
    lr_search={**SEARCH_DEFAULTS, "start": 1e-5, "epochs": 10, "max_lr": 1e-2},
    close_ratio=1.25,
    blas_threads=1,
)

QUICK = {"epochs": 2, "batch_size": 100, "teacher.n_train": 300, "teacher.n_test": 100, "lr_search.start": 1e-3,
         "lr_search.epochs": 1, "lr_search.max_trials": 2, "lr_search.cache": False}
PAPER = {"dataset": "sarcos", "epochs": 500, "batch_size": 1000, "lr_search.start": 1e-7}


def sarcos_like(n_train=20000, n_test=1000, hidden=(32,), noise=0.1, input_correlation=0.6, seed=0):
    """The offline stand-in for SARCOS: a 21→7 tanh teacher on correlated inputs, noisy targets.

    ``load("teacher")`` draws independent inputs ``z`` and targets ``f(z)`` (+ noise on the
    training split); here the inputs are mixed, ``x = z C^{1/2}`` with ``C = (1−ρ)I + ρ11ᵀ``
    (pairwise correlation ρ; the targets stay a function of ``x`` since the map is
    invertible), and the test targets get the same measurement noise as the training ones.
    """
    rho = float(input_correlation)
    if not 0 <= rho < 1:
        raise ValueError(f"teacher.input_correlation={rho!r} is out of range; allowed range: [0, 1)")
    d = load("teacher", n_in=21, n_out=7, hidden=tuple(hidden), n_train=n_train, n_test=n_test,
             noise=noise, seed=seed)
    C = (1 - rho) * np.eye(21) + rho * np.ones((21, 21))
    vals, vecs = np.linalg.eigh(C)
    root = (vecs * np.sqrt(vals)) @ vecs.T
    test_noise = np.random.default_rng([int(seed), 7, 21]).standard_normal(d.y_test.shape)
    return dataclasses.replace(
        d, name="sarcos-like", x_train=(d.x_train @ root).astype(np.float32),
        x_test=(d.x_test @ root).astype(np.float32),
        y_test=(d.y_test + noise * test_noise).astype(np.float32),
        meta={**d.meta, "input_correlation": rho, "test_noise": noise})


def dataset(cfg):
    if cfg["dataset"] == "teacher":
        return sarcos_like(**cfg["teacher"])
    return load(cfg["dataset"])


@register("regression", "(D)NP, (D)ANP, (D)BP on a SARCOS-shaped 21-32-32-7 regression (Appendix J)",
          DEFAULTS, quick=QUICK, paper=PAPER)
def run(cfg: dict, ctx) -> Result:
    names = rule_names(cfg, allowed=RULES)
    if cfg["lr"] == "paper":
        raise ValueError("lr='paper': Table 2 gives no SARCOS rates (Appendix J searched them by doubling); "
                         "use lr=auto (the default) or a number")
    return _run(cfg, ctx, names)


def _run(cfg, ctx, names) -> Result:
    data = dataset(cfg)                      # first: a missing SARCOS file fails before any work
    sizes = [data.n_features, *cfg["sizes"][1:-1], data.n_outputs]
    res = Result(main="final")
    mse = {n: {"loss": "mse"} for n in names}
    trial = training_trial(cfg, data, sizes, batch_size=cfg["batch_size"], rule_kw=mse)
    lrs = resolve_lrs(cfg, names, architecture=ARCHITECTURE, result=res, trial=trial)
    specs = []
    for n in names:
        lab = label(make_rule(n, lrs[n], **options(cfg, n), loss="mse"))
        specs.append((lab, lambda n=n: make_rule(n, lrs[n], **options(cfg, n), loss="mse")))
    runs = train_runs(cfg, specs, data, sizes=sizes, epochs=cfg["epochs"], batch_size=cfg["batch_size"],
                      progress=ctx.progress, ctx=ctx)
    labels = dict(zip(names, (lab for lab, _ in specs)))
    final = {n: [float(h.last("test_loss")) for h in runs[labels[n]]] for n in names}
    bp = final.get("bp")
    ratio = {n: [a / b for a, b in zip(final[n], bp)] for n in names} if bp else {}
    sources = {r["rule"]: r["source"] for r in res.tables["learning_rates"].rows}

    t = res.table("final", ["rule", "seeds", "lr", "test_loss", "test_loss_min", "test_loss_max", "train_loss",
                            "ratio_to_bp", "ratio_min", "ratio_max", "paper_test_loss", "paper_ratio_to_bp",
                            "forward_passes", "wall_s", "diverged"])
    for n in names:
        hs = runs[labels[n]]
        s, r = spread(final[n]), spread(ratio.get(n, []))
        t.add(rule=labels[n], seeds=len(hs), lr=lrs[n], test_loss=s["mean"], test_loss_min=s["min"],
              test_loss_max=s["max"], train_loss=spread(h.last("train_loss") for h in hs)["mean"],
              ratio_to_bp=r["mean"] if r["n"] else None, ratio_min=r["min"] if r["n"] else None,
              ratio_max=r["max"] if r["n"] else None, paper_test_loss=paper.SARCOS_TEST_LOSS[n],
              paper_ratio_to_bp=paper.SARCOS_TEST_LOSS[n] / paper.SARCOS_TEST_LOSS["bp"],
              forward_passes=int(np.mean([h.forward_passes for h in hs])),
              wall_s=float(np.mean([h.wall_s for h in hs])), diverged=sum(bool(h.diverged) for h in hs))
        for h in hs:
            if h.diverged:
                res.notes.append(f"{h.rule} stopped early: {h.diverged}")
    res.notes.append("learning rates: " + "; ".join(f"{n} {lrs[n]:.3g} ({sources.get(n, '')})" for n in names))
    if cfg["dataset"] == "teacher":
        res.notes.append("offline SARCOS stand-in: compare the ratios to BP with the paper's, not the raw losses")

    res.array("final_test_loss", np.array([final[n] for n in names]), ("rule", "seed"),
              {"rule": [labels[n] for n in names], "seed": seeds(cfg)})
    learning_curves(res, runs, regression=True,
                    title=f"{ARCHITECTURE} regression on {data.name}: train (dashed) and test (solid) MSE")
    curve = _ratio_curves(res, names, labels)
    _ratio_figure(res, names, labels, ratio, curve)
    _claims(res, cfg, names, final, ratio, max(h.steps for hs in runs.values() for h in hs))
    return res


def _ratio_curves(res, names, labels) -> dict:
    """Per rule, the test-loss ratio to BP on the same seed at every epoch: ``(seed, epoch)``."""
    if "bp" not in names:
        return {}
    v = res.arrays["learning_curves_test_loss"].values                     # (run, seed, epoch)
    bp = v[names.index("bp")]
    with quiet():
        r = v / bp[None]
    res.array("ratio_to_bp_curve", r, ("rule", "seed", "epoch"),
              {"rule": [labels[n] for n in names], "epoch": list(range(v.shape[2]))}, what="test loss ÷ BP's")
    return {n: r[i] for i, n in enumerate(names)}


def _ratio_figure(res, names, labels, ratio, curve):
    fig = res.figure("ratio_to_bp", "test loss ÷ BP's on the same seed: ours (mean, range over seeds) and the paper's",
                     columns=2)
    p = fig.panel("final test loss ÷ BP", "rule: " + ", ".join(f"{i} {n.upper()}" for i, n in enumerate(names)),
                  "ratio to BP")
    for i, n in enumerate(names):
        s = spread(ratio.get(n, []))
        if s["n"]:
            p.add(labels[n], [i], [s["mean"]], [s["min"]], [s["max"]], group=labels[n], marker="o")
    p.add("paper (Appendix J)", list(range(len(names))),
          [paper.SARCOS_TEST_LOSS[n] / paper.SARCOS_TEST_LOSS["bp"] for n in names],
          group="paper", role="other", marker="x")
    p.hlines.append((1.0, "BP"))
    if curve:
        q = fig.panel("ratio to BP during training", "epoch", "test loss ÷ BP's (mean, range)")
        with quiet():
            for n in names:
                if n != "bp":
                    c = curve[n][:, 1:]
                    e = list(range(1, c.shape[1] + 1))
                    q.add(labels[n], e, np.nanmean(c, 0), np.nanmin(c, 0), np.nanmax(c, 0), group=labels[n])
        q.hlines.append((1.0, "BP"))


def _claims(res, cfg, names, final, ratio, updates):
    P = paper.SARCOS_TEST_LOSS
    pr = {n: P[n] / P["bp"] for n in P}
    close = float(cfg["close_ratio"])
    have = set(names)
    if {"dnp", "danp", "bp"} <= have:
        m = {n: spread(ratio[n])["mean"] for n in ("dnp", "danp")}
        holds = bool(max(m.values()) <= close)
        note = ""
        if not holds:
            v = res.arrays["learning_curves_test_loss"].values                 # (rule, seed, epoch)
            E = v.shape[2] - 1
            fall = {n: 1 - float(np.nanmean(v[names.index(n), :, E]) / np.nanmean(v[names.index(n), :, E // 2]))
                    for n in ("bp", "dnp", "danp")}
            note = (f"over the second half of training ({updates:,} updates in all) BP's test loss fell "
                    f"{fall['bp']:.0%}, DNP's {fall['dnp']:.0%}, DANP's {fall['danp']:.0%}")
            if cfg["dataset"] == "teacher":
                note += (". Measured separately on the offline task (module docstring): DNP and DANP level off near "
                         "0.033 while BP keeps improving — 600 epochs widen the gap to 1.58 — and at η = 1e-3 for 300 "
                         "epochs, before BP gets below that level, the ratios are 1.17 and 1.15: the gap is a floor of "
                         "the perturbation rules on this task, not slower convergence")
        res.claim("regression_dnp_danp_close_to_bp",
                  f"DNP and DANP come close to BP on the regression task (mean test-loss ratio to BP ≤ {close:g})",
                  holds, f"DNP/BP {fmt_spread(ratio['dnp'], 2)}; DANP/BP {fmt_spread(ratio['danp'], 2)}",
                  paper=f"DNP/BP {pr['dnp']:.2f}, DANP/BP {pr['danp']:.2f} (test loss {P['dnp']}, {P['danp']} vs {P['bp']})",
                  note=note, values={"dnp_ratio": ratio["dnp"], "danp_ratio": ratio["danp"], "margin": close})
    else:
        res.claim("regression_dnp_danp_close_to_bp", "DNP and DANP come close to BP on the regression task",
                  None, "not evaluated: needs dnp, danp and bp", paper=f"DNP/BP {pr['dnp']:.2f}, DANP/BP {pr['danp']:.2f}")
    pairs = [(a, b) for a, b in (("np", "dnp"), ("anp", "danp")) if {a, b} <= have]
    if pairs:
        # decorrelation helps when the decorrelated rule's mean test loss is lower
        ok = all(np.mean(final[b]) < np.mean(final[a]) for a, b in pairs)
        res.claim("regression_decorrelation_helps_np",
                  "decorrelation lowers the test loss of NP and ANP (DNP < NP, DANP < ANP)", bool(ok),
                  "; ".join(f"{b.upper()} {fmt_spread(final[b], 4)} vs {a.upper()} {fmt_spread(final[a], 4)}"
                            for a, b in pairs),
                  paper="; ".join(f"{b.upper()} {P[b]} vs {a.upper()} {P[a]}" for a, b in pairs),
                  values={n: final[n] for p in pairs for n in p})
    else:
        res.claim("regression_decorrelation_helps_np", "decorrelation lowers the test loss of NP and ANP", None,
                  "not evaluated: needs np and dnp or anp and danp")
    if "dbp" in have and len(have) > 1:
        means = {n: float(np.mean(final[n])) for n in names}
        best = min(means, key=means.get)
        res.claim("regression_dbp_lowest_loss", "DBP reaches the lowest test loss of all rules", best == "dbp",
                  f"DBP {fmt_spread(final['dbp'], 4)}; lowest: {best.upper()} {means[best]:.4f}",
                  paper=f"DBP {P['dbp']} (lowest; BP {P['bp']})", values=means)
    else:
        res.claim("regression_dbp_lowest_loss", "DBP reaches the lowest test loss of all rules", None,
                  "not evaluated: needs dbp and another rule")

