"""The ``noisy-baseline`` scenario: quick-size outputs, its measures, its paper setting, and
(slow) the claims about DANP and DNP with two noisy passes."""
from __future__ import annotations

import math

import numpy as np
import pytest

import scenarios
from scenarios.experiments import noisy_baseline as nb
from scenarios.scenario import configure, get
from scenarios.train import History

CLAIMS = {"danp-noisy-as-clean", "dnp-noisy-lower", "dnp-noisy-slower", "dnp-noisy-unstable-late"}


@pytest.fixture(scope="module")
def quick():
    return scenarios.run("noisy-baseline", "n_seeds=1", quick=True)


def test_quick_run_has_each_rule_with_both_baselines(quick):
    rows = quick.tables["final"].rows
    assert [(r["rule"], r["baseline"]) for r in rows] == [
        ("DANP(clean)", "clean"), ("DANP(noisy)", "noisy"), ("DNP(clean)", "clean"), ("DNP(noisy)", "noisy")]
    for r in rows:
        assert math.isfinite(r["peak_test_acc"]) and r["lr"] == pytest.approx(1e-3)   # Table 2, 3 hidden
    # both baselines cost two passes a step (clean + noisy, or two noisy): 3 steps × 2 epochs
    assert all(r["forward_passes"] == 2 * 6 for r in rows)
    eff = quick.tables["baseline_effect"].rows
    assert [r["rule"] for r in eff] == ["DANP", "DNP"]
    for r in eff:
        assert r["drop"] == pytest.approx(r["peak_test_clean"] - r["peak_test_noisy"])
    assert {c.key for c in quick.claims} == CLAIMS
    assert set(quick.figures) == {"noisy_baseline"}
    assert quick.arrays["noisy_baseline_train_acc"].values.shape == (4, 1, 3)


def _hist(losses, accs):
    h = History(rule="x")
    h.epochs = [{"epoch": e, "train_loss": l, "train_acc": a} for e, (l, a) in enumerate(zip(losses, accs))]
    return h


def test_late_rise_and_early_accuracy_by_hand():
    h = _hist([3.0, 2.0, 1.0, 1.5], [0.1, 0.2, 0.4, 0.3])
    assert nb._late_rise(h) == pytest.approx(0.5)                 # 1.5 / 1.0 − 1
    assert nb._late_rise(_hist([3.0, 2.0, 1.0], [0, 0, 0])) == 0.0
    assert nb._at(h, "train_acc", 2) == 0.4 and nb._at(h, "train_acc", 9) == 0.3
    h.epochs = h.epochs[::2]                       # measured every second epoch: the last ≤ 3
    assert nb._at(h, "train_acc", 3) == 0.4 and nb._at(h, "train_acc", 1) == 0.1
    assert nb._early({"early_epoch": None, "epochs": 40}) == 10


def test_a_single_baseline_leaves_the_comparisons_not_evaluated():
    r = scenarios.run("noisy-baseline", "n_seeds=1", "baselines=[\"noisy\"]", quick=True)
    assert all(c.holds is None for c in r.claims)
    with pytest.raises(ValueError, match="baselines"):
        scenarios.run("noisy-baseline", "n_seeds=1", "baselines=[\"dirty\"]", quick=True)


def test_paper_scale_configures_cifar10_and_fails_clearly_without_the_files(tmp_path, monkeypatch):
    cfg = configure(get("noisy-baseline"), ["scale=paper"])
    assert (cfg["dataset"], cfg["hidden"], cfg["batch_size"]) == ("cifar10", [1024] * 3, 1000)
    monkeypatch.setenv("NOISESIM_DATA", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="NOISESIM_DATA"):
        get("noisy-baseline").run(cfg, scenarios.Context(progress=False))


@pytest.mark.slow
def test_danp_learns_as_well_from_two_noisy_passes_while_dnp_loses_accuracy_and_speed():
    """MNIST-1D, 40-128-128-128-10, Table 2's rate (1e-3 for both), batch 100, 20 epochs, seeds 0–2.

    Measured (mean over seeds, range): DANP peak test accuracy clean 0.337, noisy 0.327, drop 0.011
    (0.002–0.021); DNP clean 0.293, noisy 0.234, drop 0.059 (0.048–0.068); DNP's train accuracy at
    epoch 5 lower by 0.054 (0.050–0.059) with the noisy baseline; no run's final training loss above
    its minimum (late rise 0.000).
    Asserted: DANP's drop ≤ 0.03 (the scenario's tolerance); DNP's drop ≥ 0.03 and larger than
    DANP's; DNP's early gap ≥ 0.03; and — where ours differ from the paper — DNP with a noisy
    baseline does not turn unstable at this rate (late rise < 0.05 in every seed), which is why the
    late-instability claim does not hold here (see the claim's note).
    """
    r = scenarios.run("noisy-baseline", "n_seeds=3", "seed=0", "hidden=[128,128,128]", "epochs=20")
    c = {c.key: c for c in r.claims}
    print({k: (v.holds, v.ours) for k, v in c.items()})
    danp, dnp = c["danp-noisy-as-clean"].values, c["dnp-noisy-lower"].values
    assert np.mean(danp["drop"]) <= 0.03, danp                                 # tolerance 0.03
    assert np.mean(dnp["drop"]) >= 0.03 and np.mean(dnp["drop"]) > np.mean(danp["drop"]), dnp   # margin 0.03
    assert np.mean(c["dnp-noisy-slower"].values["gap"]) >= 0.03                  # margin 0.03
    assert max(c["dnp-noisy-unstable-late"].values["rise"]["noisy"]) < 0.05     # late_rise 5 %
    assert c["danp-noisy-as-clean"].holds and c["dnp-noisy-lower"].holds and c["dnp-noisy-slower"].holds
