"""The ``resampling`` scenario: quick-size outputs, K samples estimated within a memory budget
(parts and slices), its paper setting, and (slow) the claims about more samples per update."""
from __future__ import annotations

import math

import numpy as np
import pytest

import noisesim
import rules
import scenarios
from scenarios.experiments import resampling as rs
from scenarios.scenario import configure, get

CLAIMS = {"danp-alignment-improves-with-samples", "danp-accuracy-improves-with-samples",
          "dinp-alignment-improves-with-samples", "dinp-accuracy-improves-with-samples", "danp-dinp-beat-dnp"}


@pytest.fixture(scope="module")
def quick():
    return scenarios.run("resampling", "n_seeds=1", quick=True)


def test_quick_run_has_every_rule_and_sample_count(quick):
    rows = quick.tables["final"].rows
    assert [(r["rule"], r["samples"]) for r in rows] == [
        ("DANP(clean)", 1), ("DANP(clean, K=3)", 3), ("DINP(clean)", 1), ("DINP(clean, K=3)", 3),
        ("DNP(clean, K=3)", 3), ("BP", 1)]
    # passes per update: DANP K+1 (one clean reference for the K samples, however many parts the
    # budget makes), DINP K·L+1 with L = 3 layers, DNP like DANP, BP 1
    assert [r["passes_per_update"] for r in rows] == [2, 4, 4, 10, 4, 1]
    for r in rows:
        assert 0 <= r["hidden_angle_deg"] <= 180 and math.isfinite(r["all_angle_deg"])
    bp = quick.tables["final"].where(rule="BP")[0]
    assert bp["hidden_angle_deg"] < 5          # BP through the crossbar ≈ exact BP (node noise only)
    assert {c.key for c in quick.claims} == CLAIMS


def test_alignment_is_measured_per_layer_at_the_chosen_steps(quick):
    a = quick.arrays["alignment"]
    assert a.dims == ("run", "seed", "step", "layer")
    assert a.values.shape == (6, 1, 2, 4) and a.coords["step"] == [0, 2]
    assert a.coords["layer"] == ["1", "2", "3", "all"]
    assert np.isfinite(a.values).all()
    assert len(quick.tables["alignment"].rows) == 6 * 2
    assert set(quick.figures) == {"resampling", "alignment"}


def _net(seed=0, sizes=(12, 8, 8, 3)):
    return noisesim.Network.mlp(list(sizes), device=noisesim.DeviceConfig.preset("ideal"), seed=seed,
                                backend="numpy", dtype="float64")


def test_the_memory_budget_reaches_every_perturbation_rule_and_parts_keep_the_estimate():
    """``memory_budget`` is handed to the perturbation rules (BP takes none); a K = 7 DINP run in
    parts of one sample gives the estimate of one stacked call, bit for bit."""
    cfg = configure(get("resampling"), ["memory_budget=5000"])
    assert cfg["memory_budget"] == 5000
    rng = np.random.default_rng(0)
    x, t = rng.standard_normal((5, 12)), np.eye(3)[rng.integers(0, 3, 5)]
    whole = rules.make("dinp", baseline="clean", samples=7).estimate(_net(), x, t)
    one = rules.make("dinp", baseline="clean", samples=7).sample_bytes(_net(), len(x))   # one sample a part
    parts = rules.make("dinp", baseline="clean", samples=7, memory_budget=one).estimate(_net(), x, t)
    for u, v in zip(whole.updates, parts.updates):
        np.testing.assert_array_equal(u, v)
    assert list(parts.record) == ["updates"] and whole.forward_passes == parts.forward_passes == 7 * 3 + 1
    r = scenarios.run("resampling", "n_seeds=1", "rules=[\"danp\", \"bp\"]", "samples=[3]", "memory_budget=2000", quick=True)
    assert [row["rule"] for row in r.tables["final"].rows] == ["DANP(clean, K=3)", "BP"]


def test_paper_scale_configures_tiny_imagenet_and_fails_clearly_without_the_files(tmp_path, monkeypatch):
    cfg = configure(get("resampling"), ["scale=paper"])
    assert (cfg["dataset"], cfg["standardize"], cfg["hidden"], cfg["batch_size"]) == \
        ("tiny-imagenet", True, [512, 512], 1000)
    assert cfg["architecture"] == "convnet"                           # the paper's Tiny ImageNet ConvNet
    assert cfg["conv_layers"]["tiny-imagenet"] == "c5x5x32s2 c3x3x64s2 c5x5x128 f512 f512 f200"
    assert configure(get("resampling"), ["scale=paper", "architecture=mlp"])["architecture"] == "mlp"
    monkeypatch.setenv("NOISESIM_DATA", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="NOISESIM_DATA"):
        get("resampling").run(cfg, scenarios.Context(progress=False))


def test_quick_conv_setting_trains_and_measures_angles_on_a_conv_net():
    """``architecture=convnet`` offline: MNIST-1D as (40, 1) through two 1-D conv layers and two
    dense ones (the quick size's c5x4s2 c3x8s2 f16 f10); angles per layer, passes of a 4-layer net."""
    r = scenarios.run("resampling", "n_seeds=1", "architecture=convnet", quick=True)
    rows = r.tables["final"].rows
    # DANP K + 1, DINP K·L + 1 with L = 4, DNP K + 1, BP 1 (the quick budget runs them in parts)
    assert [r_["passes_per_update"] for r_ in rows] == [2, 4, 5, 13, 4, 1]
    a = r.arrays["alignment"]
    assert a.values.shape == (6, 1, 2, 5) and a.coords["layer"] == ["1", "2", "3", "4", "all"]
    assert np.isfinite(a.values).all()
    assert r.tables["final"].where(rule="BP")[0]["hidden_angle_deg"] < 5
    assert "c5x4s2 c3x8s2 f16 f10" in r.figures["resampling"].title
    assert {c.key for c in r.claims} == CLAIMS
    with pytest.raises(ValueError, match="architecture='cnn' is not known"):
        scenarios.run("resampling", "n_seeds=1", "architecture=cnn", quick=True)


@pytest.mark.slow
def test_more_samples_per_update_improve_alignment_and_accuracy():
    """MNIST-1D, 40-64-64-64-10, clean baseline, Table 2's Tiny-ImageNet rates (DANP, DINP 1e-3; DNP
    its default 1e-3), batch 100, 2 epochs (80 updates), K = 1 and 10 (DNP 10), seeds 0–2; angles
    on 100 training samples at 3 points of training.

    Measured (mean over seeds, range): hidden-layer angle to BP DANP 82.3° → 70.6°, DINP 79.3° →
    61.7°; peak test accuracy DANP 0.154 → 0.202 (gain 0.048, 0.044–0.054), DINP 0.167 → 0.223
    (gain 0.055, 0.047–0.064); at K = 10 DNP 0.190 (angle 74.3°), so DINP leads it by 0.032
    (0.022–0.038) and DANP by 0.012 (0.010–0.013).
    Asserted: for DANP and DINP the angle falls by ≥ 5° from K = 1 to 10 (the scenario's angle
    margin) and peak test accuracy rises by ≥ 0.02 (its margin); DINP leads DNP at K = 10 by
    ≥ 0.02, while DANP does not lead it by 0.02 in this shallow network (the disagreement with
    Table 4 that the claim's note explains).
    """
    r = scenarios.run("resampling", "n_seeds=3", "seed=0", "hidden=[64,64,64]", "epochs=2", "samples=[1,10]",
                      "dnp_samples=[10]", "align_points=3", "rules=[\"danp\",\"dinp\",\"dnp\"]")
    c = {c.key: c for c in r.claims}
    print({k: (v.holds, v.ours) for k, v in c.items()})
    for n in ("danp", "dinp"):
        ang = [np.mean(c[f"{n}-alignment-improves-with-samples"].values[k]) for k in ("1", "10")]
        assert ang[0] - ang[1] >= 5, (n, ang)                                            # margin 5°
        assert np.mean(c[f"{n}-accuracy-improves-with-samples"].values["gain"]) >= 0.02   # margin 0.02
    g = c["danp-dinp-beat-dnp"].values
    assert np.mean(g["dinp"]) >= 0.02, g                                                 # margin 0.02
    assert np.mean(g["danp"]) < 0.02, g
