"""``decorrelation``: every node-perturbation rule with and without decorrelated layer inputs.

Reproduces Fig. 3 and the CIFAR-10 columns "1 layer" and "3 hidden layers" of Table 3 of the
node-perturbation paper (Dalm, van Gerven & Ahmad, seed 001): a single-layer network trained
with NP, DNP, BP and DBP (in one layer NP, ANP and INP are the same rule), and a network of
three hidden layers trained with NP/DNP, ANP/DANP, INP/DINP and BP/DBP. The ``D`` variants
decorrelate every layer input, the network input included,

    x*_l = R_l x_l,    R_l ← R_l − α (⟨x*_l x*_lᵀ⟩ − diag⟨x*_l²⟩) R_l,    α = 1e-3,

and use x* in their weight update (SPEC §2). Measured: the peak train and test accuracy of
each run over its epochs (the paper's Table 3 measure) and, per seed, the gain in peak test
accuracy that decorrelation brings to each rule (same seed, same initial weights).

Settings and where they come from. Paper (Appendix F): leaky ReLU (slope 0.2), softmax
cross-entropy, Adam (β 0.9/0.999, ε 1e-7), σ² = 1e-6, α = 1e-3, the clean baseline, three
seeds, each rule at its highest stable learning rate. Offline substitutes: MNIST-1D (4 000
train / 1 000 test, 40 features, generated locally) instead of CIFAR-10, widths 256 instead
of 1 024, 20 epochs, batch 100 instead of 1 000 (4 000 samples make 4 steps an epoch at
1 000; 40 at 100). Learning rates: ``lr=auto`` (default), the paper's procedure — for each
rule and architecture, doubling from 1e-4 (Table 2's lowest rate) with 10-epoch trials on
the first seed until the training loss rises between two epochs, ends above where it
started or ends higher than at half the rate, keeping the last stable rate (short trials
alone picked rates 2–4× too high, at which DINP and DBP turned unstable within 20 epochs);
the ``lr_search`` table lists every trial and ``learning_rates`` the rate each rule used.
``lr=paper`` uses Table 2 (set at batch 1 000 on CIFAR-10).

Outputs: table ``final`` (one row per rule and architecture: final and peak accuracies, the
rate and its source, the paper's peak accuracies), ``gains`` (decorrelated − plain peak test
accuracy per rule, mean and range over seeds, and the paper's), ``learning_rates`` and (with
``lr=auto``) ``lr_search``; figures and arrays ``single_layer`` and ``three_hidden``
(learning curves: train dashed, test solid, range over seeds shaded). Claims: decorrelation
improves each NP variant and BP in each architecture (mean per-seed gain ≥ ``margin`` = 0.02
and positive in every seed), and DINP is the best decorrelated NP variant.

The known case — on digits at lr 1e-3 decorrelation did not help NP (the rules tests,
64-128-128-10, batch 32, 8 epochs: NP 0.886, DNP 0.875) — comes from comparing at one rate.
Decorrelation's advantage is a higher stable rate: on MNIST-1D the searched rates are 4–8×
higher for the decorrelated rules (NP and ANP 4e-4, INP 8e-4, each D variant 3.2e-3; Table 2:
10×), and at each rule's own rate DNP beats NP on MNIST-1D by 0.089 (0.078–0.104, 3 seeds) and
on digits by 0.046 (0.044–0.050; NP 0.912, DNP 0.958; ``--set dataset=digits``). At one equal
rate the result depends on where it sits against NP's stable limit: on MNIST-1D (seed 0, 20
epochs) DNP trails at 2.5e-4 (0.191 vs 0.261), ties at 5e-4 (0.288 vs 0.291) and wins at 1e-3
(0.367 vs 0.289), where NP turns unstable; on digits at 1e-3 with this scenario's 3 × 256 and
batch 100 DNP wins too (0.935 vs 0.899, 3 seeds; ``--set dataset=digits --set lr=0.001``) — the
rules test's smaller network at batch 32 is still within NP's stable range at 1e-3.

``--set scale=paper``: CIFAR-10 (``data_batch_1..5``, ``test_batch`` under
``$NOISESIM_DATA``), 3 × 1 024 hidden, batch 1 000, 100 epochs (the seed does not state its
epochs), Table 2's rates, all BLAS threads. Offline, BLAS runs on one thread
(``blas_threads``: the layers are small and a second thread only contends on a shared 2-core
machine). Default run: 3.8 min on 2 cores (load about 1; 3.6 min of CPU time), about 40 % of
it the twelve rate searches, which are cached: a second run took 3.6 min under a load of 3–4
(1.8 min of CPU time); the first took 6.5 min under a load of 4–5.
"""
from __future__ import annotations

import numpy as np

from .. import paper
from ..experiment import (EVALUATION, common, learning_curves, learning_table, resolve_lrs, rule_names,
                          train_runs)
from ..result import Result, fmt_spread, spread
from ..scenario import register
from ._comparison import (QUICK_SEARCH, SEARCH, differences, gain_verdict, load_data, mean, per_seed, rule_kw,
                          rule_label, search_trial, sizes, spec)

RULES = ("np", "dnp", "anp", "danp", "inp", "dinp", "bp", "dbp")
SINGLE = ("np", "dnp", "bp", "dbp")          # in one layer ANP and INP are NP
PAIRS = (("np", "dnp"), ("anp", "danp"), ("inp", "dinp"), ("bp", "dbp"))

DEFAULTS = common(
    **EVALUATION,
    blas_threads=1, dataset="mnist1d", n_train=None, n_test=None, standardize=False,
    hidden=[256, 256, 256], single_layer=True, epochs=20, batch_size=100, baseline="clean",
    rules=list(RULES), lr="auto", margin=0.02,
    lr_search=dict(SEARCH),
)
QUICK = {"hidden": [32, 32, 32], "epochs": 2, "n_train": 300, "n_test": 200,
         "lr_search": dict(QUICK_SEARCH)}
PAPER = {"blas_threads": None, "dataset": "cifar10",
         "hidden": [1024, 1024, 1024], "batch_size": 1000, "epochs": 100, "lr": "paper"}


@register("decorrelation", "NP, ANP, INP and BP with and without decorrelation, 1 and 3 hidden layers "
          "(Fig. 3, Table 3)", DEFAULTS, quick=QUICK, paper=PAPER)
def run(cfg: dict, ctx) -> Result:
    names = rule_names(cfg, allowed=RULES)
    data = load_data(cfg)
    hidden = list(cfg["hidden"])
    arch3 = paper.depth_architecture(len(hidden))
    archs = []
    if cfg["single_layer"] and any(n in SINGLE for n in names):
        archs.append(("1 layer", [], [n for n in names if n in SINGLE]))
    archs.append((arch3, hidden, names))

    res = Result(main="final")
    runs_by_arch, lrs_by_arch, combined, extra = {}, {}, {}, {}
    for arch, hid, arch_names in archs:
        sz = sizes(data, hid)
        kw = {n: rule_kw(n, baseline=cfg["baseline"]) for n in arch_names}
        trial = search_trial(cfg, data, sz, cfg["batch_size"], kw)
        lrs = resolve_lrs(cfg, arch_names, architecture=arch, result=res, trial=trial, suffix=f" ({arch})")
        specs = [spec(cfg, rule_label(n), n, lrs[n], baseline=cfg["baseline"]) for n in arch_names]
        runs = train_runs(cfg, specs, data, sizes=sz, epochs=cfg["epochs"], batch_size=cfg["batch_size"],
                          progress=ctx.progress, ctx=ctx, group_suffix=f" ({arch})")
        runs_by_arch[arch], lrs_by_arch[arch] = runs, lrs
        table_paper = paper.PEAK_ACCURACY.get(arch, {})
        for n in arch_names:
            lab = rule_label(n)
            combined[f"{lab} ({arch})"] = runs[lab]
            ours_train = spread(per_seed(runs, lab, "train_acc"))["mean"]
            p = table_paper.get(n)
            extra[f"{lab} ({arch})"] = {
                "architecture": arch, "lr": lrs[n], "peak_train_acc": ours_train,
                "paper_peak_test_acc": None if p is None else p[1] / 100,
                "paper_peak_train_acc": None if p is None else p[0] / 100}
    learning_table(res, combined, "final", extra)

    gains_t = res.table("gains", ["architecture", "rule", "plain_peak_test_acc", "decorrelated_peak_test_acc",
                                  "gain", "gain_min", "gain_max", "paper_gain", "lr_plain", "lr_decorrelated"])
    gains = {}
    for arch, _, arch_names in archs:
        runs = runs_by_arch[arch]
        for plain, dec in PAIRS:
            if plain not in arch_names or dec not in arch_names:
                continue
            a, b = per_seed(runs, rule_label(dec)), per_seed(runs, rule_label(plain))
            g = differences(a, b)
            gains[arch, plain] = (g, a, b)
            s = spread(g)
            pp = paper.PEAK_ACCURACY.get(arch, {})
            pg = (pp[dec][1] - pp[plain][1]) / 100 if plain in pp and dec in pp else None
            gains_t.add(architecture=arch, rule=rule_label(plain), plain_peak_test_acc=mean(b),
                        decorrelated_peak_test_acc=mean(a), gain=s["mean"], gain_min=s["min"], gain_max=s["max"],
                        paper_gain=pg, lr_plain=lrs_by_arch[arch][plain], lr_decorrelated=lrs_by_arch[arch][dec])

    titles = {"1 layer": ("single_layer", "single layer: (D)NP and (D)BP"),
              arch3: ("three_hidden", f"{arch3} layers: (D)NP, (D)ANP, (D)INP, (D)BP")}
    for arch, _, _ in archs:
        name, title = titles[arch]
        learning_curves(res, runs_by_arch[arch], name=name, title=f"decorrelation — {title} ({data.name})")

    _claims(res, cfg, gains, runs_by_arch.get(arch3, {}), names, arch3, lrs_by_arch)
    res.notes.append(KNOWN_CASE)
    return res


# the known case of the rules tests, measured once and kept with the scenario that explains it
KNOWN_CASE = ("On digits at one learning rate (1e-3, 64-128-128-10, batch 32) decorrelation did not help NP "
              "(NP 0.886, DNP 0.875): decorrelation's advantage is a 4–8× higher stable rate. At each rule's own "
              "highest stable rate DNP beats NP on digits by 0.046 (NP 0.912, DNP 0.958; --set dataset=digits) as "
              "on MNIST-1D; at one equal rate the outcome depends on where that rate sits against NP's stable "
              "limit (MNIST-1D, seed 0: DNP trails at 2.5e-4, ties at 5e-4, wins at 1e-3 where NP turns unstable).")


def _claims(res, cfg, gains, runs3, names, arch3, lrs_by_arch):
    margin = float(cfg["margin"])
    sources = {r["source"].split(" (")[0] for r in res.tables["learning_rates"].rows}
    policy = {"highest stable rate": "auto", "paper Table 2": "paper", "set": "set"}.get(
        next(iter(sources)), "mixed") if len(sources) == 1 else "mixed"
    rate_note = {"auto": "each rule at its own highest stable rate (lr=auto)", "paper": "Table 2's rates (lr=paper)",
                 "set": "rates set by hand"}.get(policy, "rates as listed in learning_rates")
    verdicts, failing = [], []
    for arch, plain, dec in [("1 layer", "np", "dnp"), (arch3, "np", "dnp"), (arch3, "anp", "danp"),
                             (arch3, "inp", "dinp"), ("1 layer", "bp", "dbp"), (arch3, "bp", "dbp")]:
        key = f"{dec}-over-{plain}-{arch.replace(' ', '-')}"
        statement = (f"decorrelation improves {plain.upper()} ({arch}): {dec.upper()}'s peak test accuracy "
                     f"exceeds {plain.upper()}'s by ≥ {margin:g} on average and in every seed")
        pp = paper.PEAK_ACCURACY.get(arch, {})
        ptext = (f"{dec.upper()} {pp[dec][1]:.1f} % vs {plain.upper()} {pp[plain][1]:.1f} % "
                 f"(gain {pp[dec][1] - pp[plain][1]:+.1f} points)") if dec in pp and plain in pp else ""
        if (arch, plain) not in gains:
            res.claim(key, statement, None, "not evaluated (a rule of the pair did not run)", paper=ptext)
            if plain != "bp":
                verdicts.append(None)
            continue
        g, a, b = gains[arch, plain]
        holds = gain_verdict(g, margin)
        if plain != "bp":
            verdicts.append(holds)
            if not holds:
                failing.append(f"{plain.upper()} ({arch})")
        ours = (f"gain {fmt_spread(g)}; {dec.upper()} {mean(a):.3f} vs {plain.upper()} {mean(b):.3f} "
                f"({rate_note})")
        res.claim(key, statement, holds, ours, paper=ptext, note=_note(arch, plain, holds, policy),
                  values={"gain": g, "decorrelated": a, "plain": b,
                          "lr": {plain: lrs_by_arch[arch][plain], dec: lrs_by_arch[arch][dec]}})
    every = None if (not verdicts or any(v is None for v in verdicts)) else all(verdicts)
    res.claim("decorrelation-improves-every-np-variant",
              "decorrelation improves every NP variant (NP in one layer; NP, ANP and INP with three hidden layers)",
              every, f"{sum(bool(v) for v in verdicts)} of {sum(v is not None for v in verdicts)} evaluated pairs "
                     f"hold ({rate_note})",
              paper="every decorrelated variant above its plain one (Table 3)",
              note=f"Not for {', '.join(failing)}: see that claim's note." if failing else "")

    need = ("dnp", "danp", "dinp")
    st = (f"DINP reaches the highest peak test accuracy of DNP, DANP and DINP ({arch3}): its lead over the "
          "better of the two, averaged over seeds, is positive")
    if all(n in names for n in need):
        peaks = {n: per_seed(runs3, rule_label(n)) for n in need}
        lead = [min(peaks["dinp"][i] - peaks["danp"][i], peaks["dinp"][i] - peaks["dnp"][i])
                for i in range(len(peaks["dinp"]))]
        holds = bool(np.mean(lead) > 0)
        res.claim("dinp-best-decorrelated-np", st, holds,
                  ", ".join(f"{n.upper()} {fmt_spread(peaks[n])}" for n in need),
                  paper="DINP 46.3 %, DANP 44.4 %, DNP 42.1 % (Table 3)",
                  values={n: peaks[n] for n in need} | {"lead": lead})
    else:
        res.claim("dinp-best-decorrelated-np", st, None,
                  "not evaluated (DNP, DANP and DINP must all run)",
                  paper="DINP 46.3 %, DANP 44.4 %, DNP 42.1 % (Table 3)")


def _note(arch, plain, holds, policy) -> str:
    """Why ours differ from the paper where they do (from the diagnosis runs in the docstring)."""
    if holds:
        return ""
    if arch == "1 layer":
        return ("A single linear layer on MNIST-1D saturates: every rule's peak test accuracy ends at "
                "0.25–0.26 (measured 0.250–0.258 over NP, DNP, BP, DBP), so there is no room for a gain. "
                "On CIFAR-10 a linear layer keeps improving for many epochs, where decorrelation speeds it up.")
    if plain == "bp":
        return ("At its highest stable rate BP fits MNIST-1D's training set (train accuracy 0.97) and DBP "
                "over-fits sooner; over a grid of equal rates (20 epochs, seed 0) the best were BP 0.662 "
                "and DBP 0.626, both at 2e-3. In the paper BP ran at Table 2's 1e-4 and stayed at 59.6 % "
                "train accuracy, where DBP's faster fitting (99.6 %) helped.")
    if policy == "paper":
        return ("Table 2's rates were the highest stable ones at batch 1 000 on CIFAR-10; at batch 100 on "
                "this data they can sit below or above each rule's own limit, so the comparison measures "
                "the rates as much as decorrelation; see lr=auto.")
    if policy in ("set", "mixed"):
        return ("At one equal rate the outcome depends on where it sits against the plain rule's stable "
                "limit: below it decorrelation is neutral or behind (MNIST-1D, seed 0: NP 0.261 vs DNP 0.191 "
                "at 2.5e-4, 0.291 vs 0.288 at 5e-4), above it the plain rule turns unstable and "
                "decorrelation wins (0.289 vs 0.367 at 1e-3); see lr=auto.")
    return ""
