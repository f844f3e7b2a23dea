"""``compare``: the rules × presets table at the quick size, rules a preset cannot run, access
extended by an override, preset selection, the paper setting, and the DANP claim (slow)."""
from __future__ import annotations

import math

import numpy as np
import pytest

import scenarios
from scenarios.scenario import configure, get

RULES = ["BP", "FA", "DFA", "DANP(noisy)", "DNP(noisy)", "DINP(noisy)", "REG(noisy, K=10)"]
PRESETS = ["ideal", "pcm", "reram", "ecram"]


@pytest.fixture(scope="module")
def quick():
    return scenarios.run("compare", "n_seeds=1", quick=True)


def test_quick_run_fills_the_rules_by_presets_table(quick):
    t = quick.tables["compare"]
    assert [(r["preset"], r["rule"]) for r in t.rows] == [(p, r) for p in PRESETS for r in RULES]
    for row in t.rows:
        injects = row["rule"].startswith(("DNP", "DINP"))
        if injects and row["preset"] != "ideal":
            assert row["not_run"].startswith("needs inject") and row["seeds"] == 0 and row["test_acc"] is None
        else:
            assert row["not_run"] == "" and row["seeds"] == 1, row
            assert 0 <= row["test_acc"] <= 1 and math.isfinite(row["final_loss"]) and row["forward_passes"] > 0
    a = quick.arrays["test_acc"]
    assert a.dims == ("preset", "rule", "seed") and a.values.shape == (4, 7, 1)
    assert np.isnan(a.values[1:, 4:6]).all() and np.isfinite(a.values[0]).all()
    assert set(quick.figures) == {"compare", "learning_curves"}
    assert [c.key for c in quick.claims] == ["danp_learns_on_every_preset"]
    passes = {r["rule"]: r["forward_passes"] for r in t.where(preset="ideal")}
    assert passes["DANP(noisy)"] == 2 * passes["BP"] and passes["REG(noisy, K=10)"] == 11 * passes["BP"]


def test_access_extended_by_an_override_lets_an_injecting_rule_run_on_a_realistic_preset():
    r = scenarios.run("compare", "n_seeds=1", "presets=[\"pcm\"]", "rules=[\"dnp\"]",
                      "device_overrides.access=[\"observe\", \"backward\", \"inject\"]", quick=True)
    (row,) = r.tables["compare"].rows
    assert row["preset"] == "pcm" and row["not_run"] == "" and row["seeds"] == 1
    assert r.claims[0].holds is None                                  # needs danp and bp


def test_device_option_selects_one_preset_and_unknown_presets_are_refused():
    r = scenarios.run("compare", "n_seeds=1", "device=reram", "rules=[\"bp\"]", quick=True)
    assert r.tables["compare"].column("preset") == ["reram"]
    with pytest.raises(ValueError, match="valid presets"):
        scenarios.run("compare", "n_seeds=1", "presets=[\"flash\"]", quick=True)


def test_paper_scale_configures_cifar_with_table_2_rates(monkeypatch):
    cfg = configure(get("compare"), ["scale=paper"])
    assert cfg["dataset"] == "cifar10" and cfg["sizes"] == [3072, 1024, 1024, 1024, 10]
    assert cfg["batch_size"] == 1000 and cfg["epochs"] == 100 and cfg["lr"] == "paper"
    assert all("lr" not in o for o in cfg["rule_options"].values())    # Table 2's "3 hidden" rates apply
    monkeypatch.delenv("NOISESIM_DATA", raising=False)
    with pytest.raises(FileNotFoundError, match="NOISESIM_DATA"):
        scenarios.run("compare", "scale=paper")


@pytest.mark.slow
def test_danp_learns_from_two_noisy_passes_on_every_preset():
    """The compare claim at a reduced size: BP and DANP only, 2 seeds, 5 epochs (the default: 3
    seeds, 10 epochs, seven rules).

    Measured (seeds 0, 1): BP − DANP = +0.022 (pcm) to +0.047 (ideal) in mean test accuracy,
    DANP 0.897–0.933 per seed. Asserted: the gap ≤ 0.15 on every preset (the claim's margin
    loosened for half the training; the default's is 0.10, measured +0.012 to +0.047) and DANP
    ≥ 0.6 on every preset and seed (chance is 0.1).
    """
    r = scenarios.run("compare", "n_seeds=2", "epochs=5", "rules=[\"bp\", \"danp\"]", "learns_margin=0.15")
    c = r.claims[0]
    print(c.ours)
    assert c.holds is True, c.ours
    for p, accs in c.values["danp"].items():
        assert min(accs) >= 0.6, (p, accs)
