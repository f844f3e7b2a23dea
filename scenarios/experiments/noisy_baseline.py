"""``noisy-baseline``: DANP and DNP with a clean reference pass vs a second noisy pass.

Reproduces Fig. 4 of the node-perturbation paper (Dalm, van Gerven & Ahmad, seed 001, §3.4):
on hardware whose intrinsic noise can be neither switched off nor read, no clean pass exists;
the rules compare two noisy passes instead,

    δa_l = ã⁽¹⁾_l − ã⁽²⁾_l,   δL = L⁽¹⁾ − L⁽²⁾ (per sample)

DANP measures δa, so it needs nothing more (``baseline="noisy"``: two passes, ``observe``
access only). DNP knows only the ε⁽¹⁾ it injected: its estimate stays δL ε⁽¹⁾/σ², and the
unread noise of both passes adds to δL — three times the variance of the clean-baseline
estimate (SPEC §2). Each rule runs with both baselines at the same learning rate, from the
same initial weights per seed.

Measured per run: peak train and test accuracy, train accuracy at an early epoch
(``early_epoch``, default a quarter of the run: learning speed), and how far the final
training loss sits above the run's lowest (``late_rise``: late instability).

Settings: the paper's three-hidden-layer network and rates (Table 2: DANP and DNP 1e-3,
``lr=paper``; the rates of its clean-baseline runs, which Fig. 4 reuses), σ² = 1e-6,
α = 1e-3, Adam, softmax cross-entropy, leaky ReLU, 3 seeds. Offline substitutes: MNIST-1D
(4 000/1 000, 40 features) for CIFAR-10, widths 256 for 1 024, batch 100 for 1 000 (4 000
samples give 4 steps an epoch at 1 000), 40 epochs (1 600 updates). ``lr=auto`` searches
each rule's rate with the clean baseline and uses it for both baselines.

Outputs: table ``final`` (one row per rule and baseline), ``baseline_effect`` (per rule:
peak test accuracy clean and noisy, the drop, the early-epoch train-accuracy gap, the late
loss rise), ``learning_rates``; figure and arrays ``noisy_baseline`` (learning curves, train
dashed, test solid, range over seeds shaded). Claims: DANP's noisy baseline costs it at most
``tolerance`` (0.03) of peak test accuracy; DNP's costs it at least ``margin`` (0.03) and
more than DANP's; DNP with a noisy baseline learns slower (early train accuracy lower by
``margin``); DNP with a noisy baseline becomes unstable late (final training loss ≥
``late_rise`` = 5 % above its minimum).

What we find against the paper: DANP's noisy baseline costs it nothing measurable and DNP's
costs it accuracy and speed, as in Fig. 4; DNP's late instability does not appear at Table 2's
rate here, which on MNIST-1D at batch 100 is about half of DNP's highest stable rate — it
appears near that edge (``--set lr=0.002 --set epochs=60``; the claim's note gives numbers).

Speed: BLAS runs on one thread (``blas_threads``; ``null`` leaves it alone): the layers are
small, and a second thread only contends on a shared 2-core machine.

``--set scale=paper``: CIFAR-10 (``data_batch_1..5``, ``test_batch`` under
``$NOISESIM_DATA``), 3 × 1 024, batch 1 000, 100 epochs (the seed does not state its
epochs), all BLAS threads. Default run: 2.2 min on 2 cores shared with other jobs (load 2–3;
1.8 min of CPU time; 10.6 min when the load was about 9).
"""
from __future__ import annotations

import numpy as np

from .. import paper
from ..experiment import (EVALUATION, common, label, learning_curves, learning_table, make_rule, resolve_lrs, rule_names,
                          train_runs)
from ..result import Result, fmt_spread, spread
from ..scenario import register
from ._comparison import SEARCH, differences, load_data, mean, per_seed, rule_kw, search_trial, sizes, spec

RULES = ("danp", "dnp", "anp", "np", "dinp", "inp")
BASELINES = ("clean", "noisy")

DEFAULTS = common(
    **EVALUATION,
    blas_threads=1, dataset="mnist1d", n_train=None, n_test=None, standardize=False,
    hidden=[256, 256, 256], epochs=40, batch_size=100, rules=["danp", "dnp"], baselines=list(BASELINES),
    lr="paper", lr_search=dict(SEARCH), tolerance=0.03, margin=0.03, early_epoch=None, late_rise=0.05,
)
QUICK = {"hidden": [32, 32, 32], "epochs": 2, "n_train": 300, "n_test": 200}
PAPER = {"blas_threads": None, "dataset": "cifar10",
         "hidden": [1024, 1024, 1024], "batch_size": 1000, "epochs": 100, "lr": "paper"}


def _early(cfg) -> int:
    e = cfg["early_epoch"]
    return max(1, cfg["epochs"] // 4) if e is None else int(e)


def _late_rise(h) -> float:
    """Final training loss over the run's lowest, minus one (0 when the loss ends at its minimum)."""
    loss = h.column("train_loss")
    loss = loss[np.isfinite(loss)]
    return float(loss[-1] / loss.min() - 1) if loss.size else float("nan")


def _at(h, key, epoch) -> float:
    """``key`` at the last measured epoch ≤ ``epoch`` (NaN when none was)."""
    at = [e[key] for e in h.epochs if e["epoch"] <= epoch]
    return float(at[-1]) if at else float("nan")


@register("noisy-baseline", "DANP and DNP with a clean vs a noisy baseline pass (Fig. 4)", DEFAULTS,
          quick=QUICK, paper=PAPER)
def run(cfg: dict, ctx) -> Result:
    names = rule_names(cfg, allowed=RULES)
    baselines = cfg["baselines"]
    if not baselines or any(b not in BASELINES for b in baselines):
        raise ValueError(f"baselines={baselines!r}; allowed: a non-empty list of {list(BASELINES)}")
    data = load_data(cfg)
    sz = sizes(data, cfg["hidden"])
    arch = paper.depth_architecture(len(cfg["hidden"]))
    res = Result(main="final")
    trial = search_trial(cfg, data, sz, cfg["batch_size"], {n: rule_kw(n, baseline="clean") for n in names})
    lrs = resolve_lrs(cfg, names, architecture=arch, result=res, trial=trial)
    specs, keys = [], {}
    for n in names:
        for b in baselines:
            lab = label(make_rule(n, baseline=b))
            keys[n, b] = lab
            specs.append(spec(cfg, lab, n, lrs[n], baseline=b))
    runs = train_runs(cfg, specs, data, sizes=sz, epochs=cfg["epochs"], batch_size=cfg["batch_size"],
                      progress=ctx.progress, ctx=ctx)
    early = _early(cfg)
    extra = {}
    for (n, b), lab in keys.items():
        hs = runs[lab]
        extra[lab] = {"baseline": b, "lr": lrs[n], "peak_train_acc": mean(per_seed(runs, lab, "train_acc")),
                      f"train_acc_epoch_{early}": mean([_at(h, "train_acc", early) for h in hs]),
                      "late_loss_rise": mean([_late_rise(h) for h in hs])}
    learning_table(res, runs, "final", extra)

    eff = res.table("baseline_effect", ["rule", "peak_test_clean", "peak_test_noisy", "drop", "drop_min", "drop_max",
                                        "early_train_gap", "late_rise_clean", "late_rise_noisy"])
    effects = {}
    for n in names:
        if (n, "clean") not in keys or (n, "noisy") not in keys:
            continue
        c, z = keys[n, "clean"], keys[n, "noisy"]
        drop = differences(per_seed(runs, c), per_seed(runs, z))
        gap = differences([_at(h, "train_acc", early) for h in runs[c]],
                          [_at(h, "train_acc", early) for h in runs[z]])
        rise = {b: [_late_rise(h) for h in runs[keys[n, b]]] for b in BASELINES}
        effects[n] = {"drop": drop, "gap": gap, "rise": rise, "clean": per_seed(runs, c), "noisy": per_seed(runs, z)}
        s = spread(drop)
        eff.add(rule=make_rule(n).label, peak_test_clean=mean(per_seed(runs, c)),
                peak_test_noisy=mean(per_seed(runs, z)),
                drop=s["mean"], drop_min=s["min"], drop_max=s["max"], early_train_gap=mean(gap),
                late_rise_clean=mean(rise["clean"]), late_rise_noisy=mean(rise["noisy"]))

    learning_curves(res, runs, name="noisy_baseline",
                    title=f"noisy baseline — clean vs two noisy passes, {arch} layers ({data.name})")
    _claims(res, cfg, effects, early)
    return res


def _claims(res, cfg, eff, early):
    tol, margin, late = float(cfg["tolerance"]), float(cfg["margin"]), float(cfg["late_rise"])
    fig4 = "Fig. 4 (no numbers; DANP clean 44.4 %, DNP clean 42.1 % peak test, Table 3)"
    d = eff.get("danp")
    st = (f"DANP with two noisy passes learns almost as well as with a clean pass: its peak test accuracy "
          f"drops by at most {tol:g}")
    if d is None:
        res.claim("danp-noisy-as-clean", st, None, "not evaluated (DANP with both baselines must run)", paper=fig4)
    else:
        res.claim("danp-noisy-as-clean", st, bool(mean(d["drop"]) <= tol),
                  f"drop {fmt_spread(d['drop'])}; clean {mean(d['clean']):.3f}, noisy {mean(d['noisy']):.3f}",
                  paper="extremely similar learning dynamics, minimal loss in performance — " + fig4,
                  values=d)
    p = eff.get("dnp")
    st = (f"DNP with a noisy baseline reaches a lower peak test accuracy (drop ≥ {margin:g}), and loses more "
          "than DANP")
    if p is None or d is None:
        res.claim("dnp-noisy-lower", st, None, "not evaluated (DNP and DANP with both baselines must run)",
                  paper=fig4)
    else:
        holds = bool(mean(p["drop"]) >= margin and mean(p["drop"]) > mean(d["drop"]))
        res.claim("dnp-noisy-lower", st, holds,
                  f"DNP drop {fmt_spread(p['drop'])} (clean {mean(p['clean']):.3f}, noisy {mean(p['noisy']):.3f}); "
                  f"DANP drop {mean(d['drop']):.3f}",
                  paper="DNP does not reach the same level of test performance — " + fig4, values=p)
    st = f"DNP with a noisy baseline learns slower: its train accuracy at epoch {early} is lower by ≥ {margin:g}"
    if p is None:
        res.claim("dnp-noisy-slower", st, None, "not evaluated (DNP with both baselines must run)", paper=fig4)
    else:
        res.claim("dnp-noisy-slower", st, bool(mean(p["gap"]) >= margin),
                  f"gap {fmt_spread(p['gap'])}", paper="DNP learns more slowly during early training — " + fig4,
                  values={"gap": p["gap"]})
    st = (f"DNP with a noisy baseline becomes unstable late: its final training loss ends ≥ {late:.0%} above "
          "its lowest, more than with a clean baseline")
    if p is None:
        res.claim("dnp-noisy-unstable-late", st, None, "not evaluated (DNP with both baselines must run)", paper=fig4)
    else:
        rn, rc = mean(p["rise"]["noisy"]), mean(p["rise"]["clean"])
        holds = bool(rn >= late and rn > rc)
        res.claim("dnp-noisy-unstable-late", st, holds,
                  f"final loss above its minimum by {fmt_spread(p['rise']['noisy'])} (noisy) vs {rc:.3f} (clean)",
                  paper="DNP becomes unstable late in training, decreasing in train accuracy — " + fig4,
                  note="" if holds else _LATE_NOTE, values={"rise": p["rise"]})


_LATE_NOTE = (
    "Not at Table 2's rate here: 1e-3 is about half of DNP's highest stable rate on MNIST-1D at "
    "batch 100, and there the noisy baseline slows DNP without destabilising it (seed 0, 100 epochs: "
    "training loss falls monotonically 3.00 → 1.47, train accuracy rises to 0.545). The paper's rate "
    "was its highest stable one for the clean baseline; the threefold variance of the noisy-baseline "
    "estimate tips DNP over there. Near DNP's edge we see it: at 2e-3 over 60 epochs the noisy run's "
    "training loss rose 3.7 % above its minimum after epoch 48 in seed 0 (clean: 0.5 %), not in "
    "seed 1 (0.5 %, clean 0 %); at 3e-3 both baselines turn unstable after about 20 epochs, the noisy "
    "one sooner and steeper, while DANP with a noisy baseline keeps learning at 3e-3 "
    "(--set lr=0.002 --set epochs=60 to see it).")
