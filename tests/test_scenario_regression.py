"""``regression``: outputs at the quick size, the SARCOS stand-in against its construction, the
paper setting's configuration and missing-data error, and the Appendix J claims (slow)."""
from __future__ import annotations

import math

import numpy as np
import pytest

import scenarios
from scenarios import paper
from scenarios.experiments.regression import sarcos_like
from scenarios.scenario import configure, get

CLAIMS = {"regression_dnp_danp_close_to_bp", "regression_decorrelation_helps_np", "regression_dbp_lowest_loss"}
LABELS = ["NP(clean)", "DNP(clean)", "ANP(clean)", "DANP(clean)", "BP", "DBP"]


@pytest.fixture(scope="module")
def quick():
    return scenarios.run("regression", "n_seeds=1", quick=True)


def test_quick_run_has_every_rule_table_array_and_claim(quick):
    t = quick.tables["final"]
    assert t.column("rule") == LABELS
    for row in t.rows:
        for k in ("lr", "test_loss", "train_loss", "ratio_to_bp", "paper_ratio_to_bp"):
            assert math.isfinite(row[k]) and row[k] > 0, (k, row)
    assert t.rows[4]["ratio_to_bp"] == 1.0                              # BP against itself
    assert t.column("paper_test_loss") == [paper.SARCOS_TEST_LOSS[n] for n in ("np", "dnp", "anp", "danp", "bp", "dbp")]
    assert [r["rule"] for r in quick.tables["learning_rates"].rows] == ["np", "dnp", "anp", "danp", "bp", "dbp"]
    assert all(r["source"].startswith("highest stable rate") for r in quick.tables["learning_rates"].rows)
    assert len(quick.tables["lr_search"].rows) >= 6
    curve = quick.arrays["ratio_to_bp_curve"]
    assert curve.dims == ("rule", "seed", "epoch") and np.allclose(curve.values[4], 1.0)   # BP ÷ BP
    a = quick.arrays["final_test_loss"]
    assert a.dims == ("rule", "seed") and a.values.shape == (6, 1) and np.isfinite(a.values).all()
    assert quick.arrays["learning_curves_test_loss"].values.shape == (6, 1, 3)     # epochs 0, 1, 2
    assert set(quick.figures) == {"learning_curves", "ratio_to_bp"}
    assert {c.key for c in quick.claims} == CLAIMS and all(c.holds in (True, False) for c in quick.claims)


def test_rule_restriction_reports_claims_it_cannot_check_as_not_evaluated():
    r = scenarios.run("regression", "n_seeds=1", "rules=[\"bp\", \"dnp\"]", quick=True)
    assert r.tables["final"].column("rule") == ["BP", "DNP(clean)"]          # in the order asked
    verdicts = {c.key: c.holds for c in r.claims}
    assert verdicts == {k: None for k in CLAIMS}
    with pytest.raises(ValueError, match="runs the rules"):
        scenarios.run("regression", "n_seeds=1", "rules=[\"fa\"]", quick=True)


def test_sarcos_stand_in_has_the_stated_correlation_and_noisy_test_targets():
    """Pairwise input correlation ρ = 0.6 by construction (measured 0.60 ± 0.01 over 20 000
    samples), unit input variance, and test targets carrying noise of std 0.1 around the
    teacher (the residual to the clean teacher measured 0.100)."""
    d = sarcos_like(n_train=20000, n_test=4000, noise=0.1, input_correlation=0.6)
    assert d.x_train.shape == (20000, 21) and d.y_train.shape == (20000, 7)
    C = np.corrcoef(d.x_train.T)
    off = C[np.triu_indices(21, 1)]
    assert abs(off.mean() - 0.6) < 0.02 and off.std() < 0.03
    assert np.allclose(d.x_train.var(0), 1.0, atol=0.05)
    clean = sarcos_like(n_train=10, n_test=4000, noise=0.0, input_correlation=0.6)
    np.testing.assert_allclose(clean.x_test, d.x_test)                 # the same inputs, teacher and split
    assert abs(float(np.std(d.y_test - clean.y_test)) - 0.1) < 0.005
    with pytest.raises(ValueError, match="input_correlation"):
        sarcos_like(input_correlation=1.0)


def test_paper_scale_configures_sarcos_and_says_which_files_are_missing(monkeypatch, tmp_path):
    cfg = configure(get("regression"), ["scale=paper"])
    assert cfg["dataset"] == "sarcos" and cfg["epochs"] == 500 and cfg["batch_size"] == 1000
    assert cfg["lr"] == "auto" and cfg["lr_search"]["start"] == 1e-7 and cfg["sizes"] == [21, 32, 32, 7]
    monkeypatch.delenv("NOISESIM_DATA", raising=False)
    with pytest.raises(FileNotFoundError, match="NOISESIM_DATA"):
        scenarios.run("regression", "scale=paper")
    monkeypatch.setenv("NOISESIM_DATA", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="sarcos_inv.mat"):
        scenarios.run("regression", "scale=paper")


def test_lr_paper_is_refused_with_the_reason():
    with pytest.raises(ValueError, match="no SARCOS rates"):
        scenarios.run("regression", "n_seeds=1", "lr=paper", quick=True)


@pytest.mark.slow
def test_appendix_j_claims_at_a_reduced_size():
    """Appendix J's claims: 2 seeds, 5 000 training samples, batch 250, 60 epochs (1 200
    updates; the default: 3 seeds, 20 000 samples, batch 1 000, 3 000 updates), every rule at
    η = 5e-3 (the default's searched rate for every rule) without the search.

    Measured (seeds 0, 1): test-loss ratio to BP — NP 1.60–1.65, DNP 1.46–1.53, ANP 1.56–1.61,
    DANP 1.42–1.47, DBP 0.97–1.00; DNP 8 % below NP, DANP 9 % below ANP.
    Asserted, margins beside each: DNP/BP and DANP/BP ≤ 1.7 (0.17 above the measured; the claim's
    1.25 needs the default's longer run, see the module docstring); decorrelation lowers the
    loss by ≥ 3 % (NP→DNP, ANP→DANP; measured 8–9 %); DBP within 2 % of BP or better (measured
    0–3 % better).
    """
    r = scenarios.run("regression", "n_seeds=2", "teacher.n_train=5000", "batch_size=250", "epochs=60", "lr=0.005")
    t = {row["rule"]: row for row in r.tables["final"].rows}
    c = {c.key: c for c in r.claims}
    v = c["regression_dnp_danp_close_to_bp"].values
    print("ratios", {k: round(row["ratio_to_bp"], 3) for k, row in t.items()})
    assert max(v["dnp_ratio"]) <= 1.7 and max(v["danp_ratio"]) <= 1.7
    assert t["DNP(clean)"]["test_loss"] <= 0.97 * t["NP(clean)"]["test_loss"]
    assert t["DANP(clean)"]["test_loss"] <= 0.97 * t["ANP(clean)"]["test_loss"]
    assert c["regression_decorrelation_helps_np"].holds is True
    assert t["DBP"]["ratio_to_bp"] <= 1.02
