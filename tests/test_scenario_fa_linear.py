"""``fa-linear``: outputs at the quick size, the angle and the shallow floor against closed forms,
the shallow learner's update, and the seed-002 claims at a reduced size (slow)."""
from __future__ import annotations

import math

import numpy as np
import pytest

import noisesim
import rules
import scenarios
from scenarios.experiments.fa_linear import Shallow, hidden_update_angles, initial_weights, linear_task, shallow_floor

CLAIMS = {"fa_angle_falls_below_90", "fa_solves_linear_task"}


@pytest.fixture(scope="module")
def quick():
    return scenarios.run("fa-linear", "n_seeds=1", quick=True)


def test_quick_run_has_every_learner_array_and_claim(quick):
    t = quick.tables["final"]
    assert t.column("learner") == ["BP", "FA", "shallow", "FA (He init)"]
    steps = list(range(0, 301, 50))
    for name in ("nse", "angle_hidden", "angle_weights"):
        a = quick.arrays[name]
        assert a.dims == ("learner", "seed", "update") and a.values.shape == (4, 1, len(steps))
        assert list(a.coords["update"]) == steps
    nse = quick.arrays["nse"].values
    assert np.isfinite(nse).all()
    assert nse[:3, 0, 0] == pytest.approx(1.0, abs=0.01)      # from ±0.01 weights the output is ≈ 0: NSE ≈ 1
    ang = quick.arrays["angle_hidden"].values
    assert np.isnan(ang[[0, 2]]).all() and np.isfinite(ang[[1, 3]]).all()    # angles only for the FA runs
    assert (0 <= ang[[1, 3]]).all() and (ang[[1, 3]] <= 180).all()
    for row in t.rows:
        assert math.isfinite(row["nse"]) and row["updates"] == 300
    assert t.rows[2]["shallow_floor"] is not None and 0 < t.rows[2]["shallow_floor"] < 1
    assert {c.key for c in quick.claims} == CLAIMS
    assert all(c.holds in (True, False) for c in quick.claims)
    assert set(quick.figures) == {"fa_linear"} and len(quick.figures["fa_linear"].panels) == 2


def test_rule_restriction_leaves_the_fa_claims_not_evaluated():
    r = scenarios.run("fa-linear", "n_seeds=1", "rules=[\"bp\"]", quick=True)
    assert r.tables["final"].column("learner") == ["BP", "shallow"]
    assert {c.key: c.holds for c in r.claims} == {k: None for k in CLAIMS}
    with pytest.raises(ValueError, match="runs the rules"):
        scenarios.run("fa-linear", "n_seeds=1", "rules=[\"danp\"]", quick=True)
    with pytest.raises(ValueError, match="no rate for this task"):
        scenarios.run("fa-linear", "n_seeds=1", "lr=paper", quick=True)


def test_hidden_update_angle_by_hand():
    W = np.array([[1.0, 0.0], [0.0, 1.0]])
    e = np.array([[1.0, 0.0], [1.0, 1.0]])
    assert hidden_update_angles(e, W, W) == pytest.approx([0, 0], abs=1e-5)           # B = W: aligned
    assert hidden_update_angles(e, -W, W) == pytest.approx([180, 180], abs=1e-5)      # B = −W: opposed
    B = np.array([[0.0, 1.0], [-1.0, 0.0]])                                           # a quarter turn
    assert hidden_update_angles(e, B, W) == pytest.approx([90, 90], abs=1e-6)
    B2 = np.array([[1.0, 1.0], [0.0, 0.0]])                                           # e=(1,0): B e=(1,1)
    assert hidden_update_angles(e[:1], B2, W)[0] == pytest.approx(45.0)


def test_shallow_floor_matches_its_closed_form():
    """Projection residual ‖T(I−P)‖²/‖T‖²: by hand for an axis-aligned W₀, and ≈ 1 − h/n on
    average over random T (h = 20 hidden units, n = 30 inputs: 1/3; measured mean of 200 draws
    0.333, asserted within 0.02)."""
    W0 = np.array([[2.0, 0.0, 0.0], [1.0, 3.0, 0.0]])          # row space = the first two axes
    assert shallow_floor(np.array([[1.0, 2.0, 3.0]]), W0) == pytest.approx(9 / 14)
    assert shallow_floor(np.eye(3), W0) == pytest.approx(1 / 3)
    rng = np.random.default_rng(0)
    floors = [shallow_floor(rng.uniform(-1, 1, (10, 30)), rng.standard_normal((20, 30))) for _ in range(200)]
    assert np.mean(floors) == pytest.approx(1 / 3, abs=0.02)


def test_shallow_learner_updates_only_the_output_layer_like_bp():
    sizes = [30, 20, 10]
    data = linear_task(0, 30, 10, 50, 10)
    dev = noisesim.DeviceConfig.preset("ideal", node_noise=0.0)
    net = noisesim.Network(initial_weights(sizes, 0, "he"), dev, seed=0, backend="numpy", dtype="float64",
                           activation="linear")
    sh = Shallow(loss="mse", optimizer="sgd", lr=0.1).estimate(net, data.x_train, data.y_train)
    bp = rules.make("bp", loss="mse").estimate(net, data.x_train, data.y_train)
    assert not np.asarray(sh.updates[0]).any() and sh.updates[0].shape == (20, 30)
    np.testing.assert_allclose(sh.updates[1], bp.updates[1], rtol=1e-12)


def test_linear_task_and_initial_weights_follow_lillicrap():
    d = linear_task(3, 30, 10, 2000, 100)
    T = d.meta["T"]
    assert T.shape == (10, 30) and T.min() >= -1 and T.max() <= 1
    np.testing.assert_allclose(d.y_train, d.x_train @ T.T, rtol=1e-5, atol=1e-5)
    assert abs(d.x_train.std() - 1) < 0.02
    small = initial_weights([30, 20, 10], 0, 0.01)
    assert all(np.abs(w).max() <= 0.01 for w in small)
    mixed = initial_weights([30, 20, 10], 0, 0.01, he_hidden=True)
    assert np.abs(mixed[0]).max() > 0.1 and np.abs(mixed[1]).max() <= 0.01


@pytest.mark.slow
def test_fa_angle_falls_well_below_90_degrees_and_stays_high_from_he_init():
    """Seed 002's angle claim, 2 seeds, 2 000 updates (the default: 3 seeds, 4 000).

    Measured (seeds 0, 1): the hidden-unit angle starts at 88–91° and averages 26–28° over the
    last quarter; from He initialisation it ends at 51–54°. Asserted: start ≥ 80° (the claim's
    own test), end ≤ 45° (the claim's threshold is 60°; 17° of margin above the measured 28°),
    and the He-init run ends ≥ 15° higher (the diagnosis of the rules test's 74°).
    """
    r = scenarios.run("fa-linear", "n_seeds=2", "n_train=2000", "shallow=false")
    c = next(c for c in r.claims if c.key == "fa_angle_falls_below_90")
    assert c.holds is True, c.ours
    start, end, he = c.values["start"], c.values["end"], c.values["he_init_end"]
    print("FA angle", np.round(start, 1), "->", np.round(end, 1), "; He init", np.round(he, 1))
    assert min(start) >= 80
    assert max(end) <= 45
    assert min(he) >= max(end) + 15


@pytest.mark.slow
def test_fa_solves_the_linear_task_and_the_shallow_learner_stops_at_its_floor():
    """Seed 002's error claim, 2 seeds, 2 000 updates.

    Measured: FA's NSE 9e-6–1.4e-5 (BP's 2e-5–1.2e-4), the shallow learner's 0.32–0.36 against
    its closed-form floor 0.28–0.31. Asserted: FA ≤ 1e-3 (claim threshold 1e-2), shallow ≥ 0.1, and
    the shallow learner within 0.1 of its floor and not below it by more than 0.02 (noise).
    """
    r = scenarios.run("fa-linear", "n_seeds=2", "n_train=2000", "he_init_run=false")
    c = next(c for c in r.claims if c.key == "fa_solves_linear_task")
    assert c.holds is True, c.ours
    v = c.values
    print("NSE FA", v["fa"], "BP", v["bp"], "shallow", v["shallow"], "floor", v["shallow_floor"])
    assert max(v["fa"]) <= 1e-3
    assert min(v["shallow"]) >= 0.1
    for got, floor in zip(v["shallow"], v["shallow_floor"]):
        assert floor - 0.02 <= got <= floor + 0.1
