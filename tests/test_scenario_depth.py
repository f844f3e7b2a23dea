"""The ``depth`` scenario: quick-size outputs, its drop arithmetic, its paper setting, and
(slow) the claim that depth hurts DNP more than DANP and DINP."""
from __future__ import annotations

import math

import numpy as np
import pytest

import scenarios
from scenarios.scenario import configure, get


@pytest.fixture(scope="module")
def quick():
    return scenarios.run("depth", "n_seeds=1", quick=True)


def test_quick_run_has_every_rule_at_every_depth(quick):
    rows = quick.tables["final"].rows
    assert [r["rule"] for r in rows] == ["DNP (1 hidden)", "DANP (1 hidden)", "DINP (1 hidden)",
                                        "DNP (3 hidden)", "DANP (3 hidden)", "DINP (3 hidden)"]
    # passes a step: DNP/DANP 2 (clean baseline), DINP L+1; 3 steps × 2 epochs
    assert [r["forward_passes"] for r in rows] == [12, 12, 18, 12, 12, 30]
    for r in rows:
        assert math.isfinite(r["peak_test_acc"]) and r["lr"] > 0


def test_drop_is_the_per_seed_difference_between_the_shallowest_and_deepest(quick):
    final = quick.tables["final"]
    for r in quick.tables["depth_drop"].rows:
        lo = final.where(rule=f"{r['rule']} (1 hidden)")[0]["peak_test_acc"]
        hi = final.where(rule=f"{r['rule']} (3 hidden)")[0]["peak_test_acc"]
        assert r["peak_test_1_hidden"] == pytest.approx(lo) and r["drop"] == pytest.approx(lo - hi)
    a = quick.arrays["depth_peak"]
    assert a.dims == ("rule", "depth", "seed") and a.values.shape == (3, 2, 1) and a.coords["depth"] == [1, 3]
    assert [c.key for c in quick.claims] == ["depth-hurts-dnp-most"]
    assert set(quick.figures) == {"depth", "depth_curves"}


def test_paper_rates_exist_only_for_the_paper_s_depths():
    with pytest.raises(ValueError, match="Table 2 has no rates for 1 hidden"):
        scenarios.run("depth", "n_seeds=1", "lr=paper", quick=True)
    r = scenarios.run("depth", "n_seeds=1", "lr=paper", "depths=[3]", "rules=[\"dnp\"]", quick=True)
    assert r.tables["learning_rates"].rows[0]["lr"] == pytest.approx(1e-3)
    assert r.claims[0].holds is None                                    # one depth: nothing to compare


def test_paper_scale_configures_cifar10_and_fails_clearly_without_the_files(tmp_path, monkeypatch):
    cfg = configure(get("depth"), ["scale=paper"])
    assert (cfg["dataset"], cfg["width"], cfg["depths"], cfg["batch_size"], cfg["lr"]) == \
        ("cifar10", 1024, [3, 6, 9], 1000, "paper")
    monkeypatch.setenv("NOISESIM_DATA", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="NOISESIM_DATA"):
        get("depth").run(cfg, scenarios.Context(progress=False))


@pytest.mark.slow
def test_depth_hurts_dnp_more_than_danp_and_dinp():
    """The default run at 3 and 9 hidden layers only: MNIST-1D, width 128, clean baseline, Table 2's
    rates (1e-3 and 5e-3), batch 100, 10 epochs, seeds 0–2. (At width 64 and 8 epochs the shallow
    network at 1e-3 had not caught up with the deep one at 5e-3: every drop was negative.)

    Measured (peak test accuracy, mean over seeds; drop and its range): DNP 0.238 → 0.189 (0.049,
    0.037–0.056), DANP 0.269 → 0.258 (0.010, 0.001–0.021), DINP 0.289 → 0.295 (−0.006,
    −0.025–0.016).
    Asserted: DNP's mean per-seed drop in peak test accuracy from 3 to 9 hidden layers exceeds
    DANP's and DINP's by ≥ 0.01 each (the scenario's margin), i.e. the claim holds.
    """
    r = scenarios.run("depth", "n_seeds=3", "seed=0", "depths=[3,9]")
    c = r.claims[0]
    print(c.ours)
    d = {n: np.mean(c.values[n]["drop"]) for n in ("dnp", "danp", "dinp")}
    assert d["dnp"] >= d["danp"] + 0.01, d                                   # margin 0.01
    assert d["dnp"] >= d["dinp"] + 0.01, d                                   # margin 0.01
    assert c.holds is True
