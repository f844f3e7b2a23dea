"""The ``decorrelation`` scenario: its quick-size outputs, its gain arithmetic, its paper
setting, and (slow) the claim that decorrelation improves every NP variant."""
from __future__ import annotations

import math

import numpy as np
import pytest

import scenarios
from scenarios.scenario import configure, get

CLAIMS = {"dnp-over-np-1-layer", "dnp-over-np-3-hidden", "danp-over-anp-3-hidden", "dinp-over-inp-3-hidden",
          "dbp-over-bp-1-layer", "dbp-over-bp-3-hidden", "decorrelation-improves-every-np-variant",
          "dinp-best-decorrelated-np"}


@pytest.fixture(scope="module")
def quick():
    return scenarios.run("decorrelation", "n_seeds=1", quick=True)


def test_quick_run_has_every_rule_in_both_architectures(quick):
    rows = quick.tables["final"].rows
    assert [r["rule"] for r in rows] == [
        "NP (1 layer)", "DNP (1 layer)", "BP (1 layer)", "DBP (1 layer)",
        "NP (3 hidden)", "DNP (3 hidden)", "ANP (3 hidden)", "DANP (3 hidden)", "INP (3 hidden)",
        "DINP (3 hidden)", "BP (3 hidden)", "DBP (3 hidden)"]
    for r in rows:
        assert math.isfinite(r["peak_test_acc"]) and 0 <= r["peak_test_acc"] <= 1
        assert r["lr"] > 0 and r["diverged"] == 0
    # paper columns are Table 3's, as fractions
    np3 = quick.tables["final"].where(rule="NP (3 hidden)")[0]
    assert np3["paper_peak_test_acc"] == pytest.approx(0.281)
    # one lr-search row set per rule and architecture (lr=auto is the default)
    assert len(quick.tables["learning_rates"].rows) == 12
    assert all(r["source"].startswith("highest stable rate") for r in quick.tables["learning_rates"].rows)
    assert quick.tables["lr_search"].rows


def test_quick_run_forward_passes_match_each_rule_s_cost(quick):
    """Clean baseline: NP/ANP 2 passes a step, INP L+1, BP 1 — times 3 steps (300 samples, batch 100)
    times 2 epochs."""
    t = quick.tables["final"]
    steps = 2 * 3
    assert t.where(rule="NP (1 layer)")[0]["forward_passes"] == 2 * steps
    assert t.where(rule="DANP (3 hidden)")[0]["forward_passes"] == 2 * steps
    assert t.where(rule="INP (3 hidden)")[0]["forward_passes"] == 5 * steps
    assert t.where(rule="BP (3 hidden)")[0]["forward_passes"] == 1 * steps


def test_gains_are_per_seed_differences_of_peak_test_accuracy(quick):
    final, gains = quick.tables["final"], quick.tables["gains"]
    assert [(r["architecture"], r["rule"]) for r in gains.rows] == [
        ("1 layer", "NP"), ("1 layer", "BP"), ("3 hidden", "NP"), ("3 hidden", "ANP"), ("3 hidden", "INP"),
        ("3 hidden", "BP")]
    for r in gains.rows:
        plain = final.where(rule=f"{r['rule']} ({r['architecture']})")[0]["peak_test_acc"]
        dec = final.where(rule=f"D{r['rule']} ({r['architecture']})")[0]["peak_test_acc"]
        assert r["gain"] == pytest.approx(dec - plain)
    assert {c.key for c in quick.claims} == CLAIMS
    for c in quick.claims:
        assert c.holds in (True, False, None) and c.ours


def test_quick_run_draws_both_figures_with_one_colour_per_rule(quick):
    assert set(quick.figures) == {"single_layer", "three_hidden"}
    for fig in quick.figures.values():
        acc = fig.panels[0]
        groups = {s.group for s in acc.series}
        assert {s.role for s in acc.series} == {"train", "test"}
        assert len(acc.series) == 2 * len(groups)
    a = quick.arrays["three_hidden_test_acc"]
    assert a.dims == ("run", "seed", "epoch") and a.values.shape == (8, 1, 3)


def test_a_missing_rule_leaves_its_claims_not_evaluated():
    r = scenarios.run("decorrelation", "n_seeds=1", "rules=[\"np\", \"dnp\"]", "single_layer=false", quick=True)
    c = {c.key: c for c in r.claims}
    assert c["dnp-over-np-3-hidden"].holds is not None
    assert c["danp-over-anp-3-hidden"].holds is None and c["dinp-best-decorrelated-np"].holds is None
    assert c["decorrelation-improves-every-np-variant"].holds is None
    assert [row["rule"] for row in r.tables["final"].rows] == ["NP (3 hidden)", "DNP (3 hidden)"]


def test_paper_scale_configures_cifar10_and_fails_clearly_without_the_files(tmp_path, monkeypatch):
    cfg = configure(get("decorrelation"), ["scale=paper"])
    assert (cfg["dataset"], cfg["hidden"], cfg["batch_size"], cfg["lr"]) == ("cifar10", [1024] * 3, 1000, "paper")
    monkeypatch.setenv("NOISESIM_DATA", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="NOISESIM_DATA"):
        get("decorrelation").run(cfg, scenarios.Context(progress=False))


# the rates the default run's search picked (3 × 256, lr=auto), fixed here so the test does not search
RATES = {"np": 4e-4, "dnp": 3.2e-3, "anp": 4e-4, "danp": 3.2e-3, "inp": 8e-4, "dinp": 3.2e-3}


@pytest.mark.slow
def test_decorrelation_improves_every_np_variant_with_three_hidden_layers_but_not_a_saturated_single_layer():
    """MNIST-1D, 40-128-128-128-10 and 40-10, clean baseline, batch 100, 10 epochs, seeds 0–2,
    each rule at the rate the default run's search picked for it (RATES; single layer NP 3.2e-3,
    DNP 6.4e-3).

    Measured (mean per-seed gain in peak test accuracy, range): DNP over NP 0.108 (0.101–0.116;
    0.317 vs 0.209), DANP over ANP 0.117 (0.089–0.136; 0.346 vs 0.229), DINP over INP 0.112
    (0.100–0.133; 0.397 vs 0.285); single layer (40-10) DNP over NP 0.002 (−0.002–0.006).
    Asserted: every three-hidden-layer pair's claim holds — mean per-seed gain ≥ 0.02 (the
    scenario's margin) and positive in every seed; in the single layer, where a linear classifier of
    MNIST-1D saturates near 0.25 for every rule, the gain stays within ±0.02.
    """
    opts = [f"rule_options.{n}.lr={lr}" for n, lr in RATES.items()]
    r = scenarios.run("decorrelation", "n_seeds=3", "seed=0", "hidden=[128,128,128]", "epochs=10",
                      "single_layer=false", "rules=[\"np\",\"dnp\",\"anp\",\"danp\",\"inp\",\"dinp\"]", *opts)
    c = {c.key: c for c in r.claims}
    print({k: (v.holds, v.ours) for k, v in c.items()})
    for key in ("dnp-over-np-3-hidden", "danp-over-anp-3-hidden", "dinp-over-inp-3-hidden"):
        assert c[key].holds is True, (key, c[key].values)
        assert min(c[key].values["gain"]) > 0 and np.mean(c[key].values["gain"]) >= 0.02      # margin 0.02
    one = scenarios.run("decorrelation", "n_seeds=3", "seed=0", "hidden=[16,16,16]", "epochs=10",
                        "rules=[\"np\",\"dnp\"]", "rule_options.np.lr=3.2e-3", "rule_options.dnp.lr=6.4e-3")
    single = {c.key: c for c in one.claims}["dnp-over-np-1-layer"].values["gain"]
    print("single layer gains", single)
    assert abs(np.mean(single)) < 0.02, single                                                # ±0.02
