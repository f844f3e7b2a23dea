"""DANP and BP, first cut: hand-derived updates and the direction of averaged estimates."""
from __future__ import annotations

import numpy as np
import pytest

import rules
from noisesim import DeviceConfig, Network
from rules.activity import activity_updates


def test_anp_update_matches_hand_derivation():
    # one sample, two layers of widths 2 and 1 (N = 3), K = 1
    dL = np.array([[0.5]])
    da = [np.array([[[1.0, 2.0]]]), np.array([[[2.0]]])]         # ‖δa‖² = 1 + 4 + 4 = 9
    xs = [np.array([[[1.0, -1.0, 0.5]]]), np.array([[[3.0, 1.0]]])]
    u = activity_updates(dL, da, xs, n_units=3)
    c = 3 * 0.5 / 9                                              # N δL / ‖δa‖²
    np.testing.assert_allclose(u[0], c * np.outer([1.0, 2.0], [1.0, -1.0, 0.5]), rtol=1e-12)
    np.testing.assert_allclose(u[1], c * np.outer([2.0], [3.0, 1.0]), rtol=1e-12)


def test_anp_ignores_samples_whose_perturbation_vanished():
    dL = np.array([[0.5, 0.3]])
    da = [np.array([[[1.0], [0.0]]])]
    xs = [np.array([[[1.0], [1.0]]])]
    u = activity_updates(dL, da, xs, n_units=1)
    np.testing.assert_allclose(u[0], [[0.5 / 2]])                # the zero-δa sample adds nothing


def test_bp_update_matches_hand_derivation_on_a_linear_layer():
    dev = DeviceConfig(access=("observe", "backward", "oracle"))
    w = np.array([[1.0, -2.0], [0.5, 0.0], [0.0, 1.0]])
    net = Network([w], dev, seed=0, backend="numpy", dtype="float64")
    x = np.array([[1.0, 2.0]])
    t = np.array([[0.0, 1.0, 0.0]])
    est = rules.make("bp", loss="mse").estimate(net, x, t)
    y = w @ x[0]
    g = 2 * (y - t[0]) / 3                                       # ∂/∂y of mean squared error
    np.testing.assert_allclose(est.updates[0], np.outer(g, x[0]), rtol=1e-12)


@pytest.mark.parametrize("baseline", ["clean", "noisy"])
def test_averaged_danp_points_along_bp_on_a_single_linear_layer(baseline):
    """cos(ANP, BP) → 1 as samples grow; ≥ 0.98 at K = 4000 (float64), ≤ 0.9 at K = 1."""
    dev = DeviceConfig.preset("ideal")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((8, 12))
    t = np.eye(5)[rng.integers(0, 5, 8)]

    def cosine(K):
        net = Network.mlp([12, 5], device=dev, seed=1, backend="numpy", dtype="float64")
        rule = rules.make("anp", baseline=baseline, samples=K)
        u = rule.estimate(net, x, t).updates[0].ravel()
        g = rules.exact_gradients(net, x, t)[0].ravel()
        return u @ g / np.linalg.norm(u) / np.linalg.norm(g)

    many, one = cosine(4000), cosine(1)
    assert many > 0.98, many
    assert one < many and one < 0.9, one


def test_danp_decorrelates_its_inputs_while_learning():
    from scenarios.datasets import load
    from scenarios.train import train

    data = load("digits")
    net = Network.mlp([64, 64, 10], seed=0, backend="numpy")
    x = data.x_train[:500]

    def offdiag_energy():
        xs = x @ net.decorrelation(0).T
        C = xs.T @ xs / len(xs)
        return float((C - np.diag(np.diag(C))) .__pow__(2).sum())

    rule = rules.make("danp", baseline="noisy", lr=1e-3)
    rule.init(net)
    before = offdiag_energy()
    hist = train(net, rule, data, epochs=5, batch_size=32, progress=False)
    assert offdiag_energy() < 0.5 * before
    assert hist.last("train_loss") < 0.7 * hist.epochs[0]["train_loss"]
