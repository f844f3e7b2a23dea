"""Losses against finite differences; optimizers against their closed-form first steps."""
from __future__ import annotations

import numpy as np
import pytest

from rules.losses import Loss
from rules.optim import SGD, Adam, make_optimizer


@pytest.mark.parametrize("name", ["cce", "mse"])
def test_loss_gradient_matches_central_differences(name):
    rng = np.random.default_rng(0)
    y = rng.standard_normal((3, 5))
    t = np.eye(5)[[0, 3, 4]]
    loss = Loss(name)
    g = loss.grad(y, t)
    h = 1e-6
    num = np.zeros_like(y)
    for i in range(3):
        for k in range(5):
            e = np.zeros_like(y)
            e[i, k] = h
            num[i, k] = (loss.per_sample(y + e, t)[i] - loss.per_sample(y - e, t)[i]) / (2 * h)
    np.testing.assert_allclose(g, num, rtol=1e-6, atol=1e-8)


def test_cce_is_summed_over_classes_and_stable_for_large_logits():
    y = np.array([[1000.0, 0.0, 0.0]])
    t = np.array([[0.0, 1.0, 0.0]])
    assert np.isclose(Loss("cce").per_sample(y, t)[0], 1000.0)
    assert np.isclose(Loss("cce").per_sample(np.zeros((1, 4)), np.eye(4)[:1])[0], np.log(4))
    assert np.isclose(Loss("mse").per_sample(np.ones((1, 4)), np.zeros((1, 4)))[0], 1.0)   # mean over outputs


def test_adam_first_step_is_lr_times_sign_and_uses_paper_constants():
    opt = Adam(lr=0.01)
    st = opt.init(1)
    g = np.array([[2.0, -0.5, 0.0]])
    (d,) = opt.update([g], st)
    # Keras form: lr_t·m/(√v + ε) with m = (1−β₁)g, √v = √(1−β₂)|g| → −lr·g/(|g| + ε/√(1−β₂))
    np.testing.assert_allclose(d, -0.01 * g / (np.abs(g) + 1e-7 / np.sqrt(1 - 0.999)), rtol=1e-9)
    assert (opt.beta1, opt.beta2, opt.eps) == (0.9, 0.999, 1e-7)
    (d2,) = opt.update([g], st)
    np.testing.assert_allclose(d2, d, rtol=1e-5)   # constant gradient → constant step (up to ε)


def test_sgd_with_momentum_accumulates():
    opt = SGD(lr=0.1, momentum=0.5)
    st = opt.init(1)
    g = np.array([1.0])
    assert np.allclose(opt.update([g], st)[0], -0.1)
    assert np.allclose(opt.update([g], st)[0], -0.1 * 1.5)
    with pytest.raises(ValueError, match="optimizer='rmsprop'"):
        make_optimizer("rmsprop", 0.1)
