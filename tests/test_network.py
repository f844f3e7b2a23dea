"""The first-cut device: config validation, access levels, determinism, read-noise statistics."""
from __future__ import annotations

import numpy as np
import pytest

import noisesim
import rules
from noisesim import AccessError, DeviceConfig, DivergenceError, Network


def _x(n=32, d=16, seed=0):
    return np.random.default_rng(seed).random((n, d)).astype(np.float32)


@pytest.mark.parametrize("field, value, allowed", [
    ("read_noise", -0.1, "[0, 10]"),
    ("node_noise", float("nan"), "[0, 10]"),
    ("out_bits", 0, "an integer in [1, 24]"),
    ("in_bits", 2.5, "an integer in [1, 24]"),
    ("w_max", 0.0, "(0, ∞)"),
    ("n_levels", 1, "an integer in [2"),
])
def test_bad_config_value_names_field_value_and_range(field, value, allowed):
    with pytest.raises(ValueError) as err:
        DeviceConfig(**{field: value, "w_max": 1.0} if field != "w_max" else {field: value})
    msg = str(err.value)
    assert f"DeviceConfig.{field}=" in msg and repr(value) in msg and allowed in msg


def test_bad_preset_and_unknown_field_list_the_valid_ones():
    with pytest.raises(ValueError, match="valid presets: .*ideal"):
        DeviceConfig.preset("nonexistent")
    with pytest.raises(ValueError, match="unknown DeviceConfig field.*read_nois"):
        DeviceConfig.preset("ideal", read_nois=0.1)
    with pytest.raises(ValueError, match="access contains 'telepathy'"):
        DeviceConfig(access=("observe", "telepathy"))


def test_config_is_frozen_and_round_trips_through_json():
    dev = DeviceConfig.preset("ideal", read_noise=0.02)
    with pytest.raises(Exception):
        dev.read_noise = 0.5
    assert DeviceConfig.from_dict(__import__("json").loads(dev.to_json())) == dev


def test_rule_needing_more_access_than_granted_fails_before_training():
    dev = DeviceConfig(node_noise=1e-3, access=("observe",))
    net = Network.mlp([16, 8, 4], device=dev, seed=0, backend="numpy")
    w_before = net.get_state()["W0"].copy()
    with pytest.raises(AccessError) as err:
        rules.make("bp").init(net)
    msg = str(err.value)
    assert "'BP'" in msg and "backward" in msg and "grants only ['observe']" in msg
    with pytest.raises(AccessError, match="clean"):
        rules.make("danp", baseline="clean").init(net)
    np.testing.assert_array_equal(net.get_state()["W0"], w_before)
    rules.make("danp", baseline="noisy").init(net)  # two noisy passes need only observe


def test_device_refuses_ungranted_operations_directly():
    net = Network.mlp([16, 8, 4], device=DeviceConfig(access=("observe",)), seed=0, backend="numpy")
    x = _x()
    with pytest.raises(AccessError):
        net.forward_stacked(x, 2, clean=[True, False])
    with pytest.raises(AccessError):
        net.backward_read(1, np.zeros((32, 4), np.float32))
    with pytest.raises(AccessError):
        net.weights(0)


def test_same_seed_same_numbers_different_seed_different(backend_name):
    dev = DeviceConfig.preset("ideal", read_noise=0.01, w_max=1.0)
    run = lambda seed: noisesim.to_numpy(
        Network.mlp([16, 32, 4], device=dev, seed=seed, backend=backend_name).forward_stacked(_x(), 3).out)
    np.testing.assert_array_equal(run(3), run(3))
    assert not np.allclose(run(3), run(4))


def test_training_is_deterministic_under_a_seed(backend_name):
    from scenarios.datasets import load
    from scenarios.train import train

    data = load("digits", n_train=200, n_test=50)

    def final_weights():
        net = Network.mlp([64, 32, 10], seed=7, backend=backend_name)
        train(net, rules.make("danp", baseline="noisy"), data, epochs=1, batch_size=50, progress=False)
        return net.get_state()

    a, b = final_weights(), final_weights()
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])


def test_stacked_passes_have_independent_noise_and_clean_pass_is_exact(backend_name):
    net = Network.mlp([16, 8, 4], seed=0, backend=backend_name, dtype="float64")
    x = _x().astype(np.float64)
    pre = noisesim.to_numpy(net.forward_stacked(x, 3, clean=[True, False, False]).pre[0])
    exact = x @ noisesim.to_numpy(net.weights(0)).T
    np.testing.assert_allclose(pre[0], exact, rtol=1e-12, atol=1e-12)
    e1, e2 = pre[1] - exact, pre[2] - exact
    # each noisy pass carries N(0, 1e-3²) node noise, independent of the other
    assert abs(e1.std() / 1e-3 - 1) < 0.25
    assert abs(np.corrcoef(e1.ravel(), e2.ravel())[0, 1]) < 0.3


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_read_noise_std_matches_closed_form(backend_name, dtype):
    """Output noise std = read_noise · w_max · ‖x‖₂ per sample; tolerance 3 % (20 000 draws)."""
    rn, w_max = 0.05, 0.5
    dev = DeviceConfig(read_noise=rn, w_max=w_max)
    rng = np.random.default_rng(1)
    w = rng.uniform(-0.4, 0.4, (50, 20))
    net = Network([w], dev, seed=0, backend=backend_name, dtype=dtype)
    x = np.tile(rng.random((4, 20)), (1, 1)).astype(dtype)
    draws = noisesim.to_numpy(net.forward_stacked(x, 400).pre[0])      # (400, 4, 50)
    noise = draws - (x @ noisesim.to_numpy(net.tiles[0].weights()).T)[None]
    measured = noise.std(axis=(0, 2))
    expected = rn * w_max * np.linalg.norm(x, axis=1)
    np.testing.assert_allclose(measured, expected, rtol=0.03)
    assert abs(noise.mean()) < 0.03 * expected.mean()


def test_bad_inputs_get_clear_errors(backend_name):
    net = Network.mlp([16, 8, 4], seed=0, backend=backend_name)
    with pytest.raises(ValueError, match=r"expected \(batch, 16\)"):
        net.forward(np.zeros((3, 15), np.float32))
    bad = _x()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN or Inf"):
        net.forward(bad)
    with pytest.raises(ValueError, match="backend='tpu'"):
        Network.mlp([4, 2], backend="tpu")
    with pytest.raises(ValueError, match="dtype='float16'"):
        Network.mlp([4, 2], backend="numpy", dtype="float16")


def test_non_finite_update_is_refused_and_state_kept():
    net = Network.mlp([16, 8, 4], seed=0, backend="numpy")
    before = net.get_state()
    delta = np.zeros((8, 16), np.float32)
    delta[0, 0] = np.inf
    with pytest.raises(DivergenceError, match="last good state"):
        net.apply_update(0, delta)
    np.testing.assert_array_equal(net.get_state()["W0"], before["W0"])


def test_cupy_request_without_gpu_raises_clearly():
    if noisesim.cupy_available():
        pytest.skip("a GPU is usable here; the error path cannot be exercised")
    with pytest.raises(RuntimeError, match="backend='cupy' was requested but no usable GPU"):
        noisesim.get_backend("cupy")
    assert noisesim.get_backend("auto").name == "numpy"


def test_same_network_on_every_backend_agrees_with_noise_off(backend_name, dtype_name):
    from conftest import tolerance

    dev = DeviceConfig(access=("observe", "oracle"))
    ref = Network.mlp([16, 8, 4], device=dev, seed=2, backend="numpy", dtype=dtype_name)
    net = Network.mlp([16, 8, 4], device=dev, seed=2, backend=backend_name, dtype=dtype_name)
    x = _x().astype(dtype_name)
    got = noisesim.to_numpy(net.forward(x).out)
    np.testing.assert_allclose(got, ref.forward(x).out, **tolerance(dtype_name))


def test_apply_update_checks_unless_the_caller_vouches_the_update_is_finite():
    net = Network.mlp([4, 3], seed=0, backend="numpy")
    bad = np.full((3, 4), np.nan, dtype=np.float32)
    with pytest.raises(DivergenceError, match="NaN or Inf"):
        net.apply_update(0, bad)
    with pytest.raises(ValueError, match="expected \\(3, 4\\)"):
        net.apply_update(0, np.zeros((4, 3), np.float32), finite=True)
    w = net.get_state()["W0"]
    net.apply_update(0, np.ones((3, 4), np.float32), finite=True)
    np.testing.assert_allclose(net.get_state()["W0"], w + 1)
