"""Device configs and presets: validation errors name the field, presets carry sources."""
from __future__ import annotations

import numpy as np
import pytest

import noisesim
from noisesim import DeviceConfig
from noisesim.presets import PRESETS


@pytest.mark.parametrize("field,value,allowed", [
    ("n_levels", 1, r"an integer in \[2, "),
    ("in_bits", 0, r"an integer in \[1, 24\]"),
    ("out_bits", 0, r"an integer in \[1, 24\]"),
    ("in_bound", 0.0, r"\(0, ∞\)"),
    ("out_bound", -1.0, r"\(0, ∞\)"),
    ("w_max", 0.0, r"\(0, ∞\)"),
    ("read_noise", -0.1, r"\[0, 10\]"),
    ("prog_noise", float("nan"), r"\[0, 1\]"),
    ("t0", 0.0, r"\(0, ∞\)"),
    ("dw_min", 0.0, r"\(0, 1\]"),
    ("asymmetry", 1.0, r"\(-1, 1\)"),
    ("out_noise", -1.0, r"\[0, 10\]"),
])
def test_out_of_range_names_field_value_and_range(field, value, allowed):
    with pytest.raises(ValueError, match=rf"DeviceConfig\.{field}={value!r}.*{allowed}"):
        DeviceConfig(**{"w_max": 1.0, field: value} if field != "w_max" else {field: value})


@pytest.mark.parametrize("field,value", [("update", "sgd"), ("w_max_mode", "max"), ("io_scaling", "rms")])
def test_unknown_choice_lists_allowed(field, value):
    with pytest.raises(ValueError, match=rf"DeviceConfig\.{field}='{value}' is not known; allowed"):
        DeviceConfig(w_max=1.0, **{field: value})


def test_bad_polynomial_and_dependent_fields():
    with pytest.raises(ValueError, match="prog_noise_poly"):
        DeviceConfig(w_max=1.0, prog_noise_poly=(0.1, 2.0))
    with pytest.raises(ValueError, match="prog_noise_poly"):
        DeviceConfig(w_max=1.0, prog_noise_poly="abc")
    with pytest.raises(ValueError, match="n_levels=4 needs a conductance mapping"):
        DeviceConfig(n_levels=4)
    with pytest.raises(ValueError, match="update='pulsed' needs a weight range"):
        DeviceConfig(update="pulsed")
    with pytest.raises(ValueError, match="out_bound=None is not allowed when out_bits is set"):
        DeviceConfig(out_bits=8)


def test_presets_build_validate_and_roundtrip():
    assert {"ideal", "pcm", "reram", "ecram"} <= set(PRESETS)
    for name, p in PRESETS.items():
        cfg = DeviceConfig.preset(name)
        assert DeviceConfig.from_dict(cfg.to_dict()) == cfg
        assert p.description and p.sources
        # every number a preset sets (except bookkeeping fields) names its source
        for field, value in p.values.items():
            if field in ("access", "w_max_mode", "asymmetry") or value in (None, 0, 0.0):
                continue
            assert field in p.sources or field in ("in_bound", "tile_cols", "update", "io_scaling"), (name, field)
    for name in ("pcm", "reram", "ecram"):
        assert DeviceConfig.preset(name).access == ("observe", "backward")
    assert DeviceConfig.preset("ideal") == DeviceConfig(node_noise=1e-3, access=noisesim.ACCESS_LEVELS)


def test_preset_overrides_and_errors():
    cfg = DeviceConfig.preset("pcm", read_noise=0.02, access=("observe", "inject", "backward"))
    assert cfg.read_noise == 0.02 and cfg.grants("inject")
    with pytest.raises(ValueError, match="unknown device preset 'flash'; valid presets: .*'pcm'"):
        DeviceConfig.preset("flash")
    with pytest.raises(ValueError, match="unknown DeviceConfig field"):
        DeviceConfig.preset("pcm", read_nois=0.1)
    with pytest.raises(ValueError, match=r"DeviceConfig\.out_bits=0"):
        DeviceConfig.preset("pcm", out_bits=0)


def test_cli_lists_presets(capsys):
    from scenarios.cli import main

    main(["list"])
    out = capsys.readouterr().out
    for name in ("ideal", "pcm", "reram", "ecram"):
        assert f"  {name} " in out


@pytest.mark.parametrize("preset", ["pcm", "reram", "ecram"])
def test_realistic_presets_run_forward_backward_update(backend_name, preset):
    net = noisesim.Network.mlp([64, 48, 10], DeviceConfig.preset(preset), seed=0, backend=backend_name)
    x = np.random.default_rng(0).uniform(0, 1, (32, 64)).astype(np.float32)
    p = net.forward(x)
    assert np.all(np.isfinite(noisesim.to_numpy(p.out)))
    d = net.backward_read(1, net.xp.ones((32, 10), dtype=net.dtype))
    assert d.shape == (32, 48)
    before = noisesim.to_numpy(net.tiles[0].weights()).copy()
    net.apply_update(0, net.xp.full((48, 64), 0.01, dtype=net.dtype))
    assert np.mean(noisesim.to_numpy(net.tiles[0].weights()) > before) > 0.5
    net.advance_time(3600.0)
    with pytest.raises(noisesim.AccessError):
        net.weights(0)


def test_bad_inputs_are_rejected(backend_name):
    net = noisesim.Network.mlp([4, 3], DeviceConfig.preset("pcm"), backend=backend_name)
    with pytest.raises(ValueError, match=r"expected \(batch, 4\)"):
        net.forward(np.zeros((2, 5), np.float32))
    with pytest.raises(ValueError, match="NaN or Inf"):
        net.forward(np.array([[0, np.nan, 0, 0]], np.float32))
    with pytest.raises(ValueError, match="NaN or Inf"):
        net.forward(np.array([[0, np.inf, 0, 0]], np.float32))
    # pcm's abs_max DAC finds them in its max|x| pass, before any noise is drawn: a rejected
    # batch leaves every stream where it was
    x = np.random.default_rng(0).uniform(-1, 1, (6, 4)).astype(np.float32)
    ref = noisesim.to_numpy(noisesim.Network.mlp([4, 3], DeviceConfig.preset("pcm"), backend=backend_name).forward(x).out)
    for bad in (np.nan, np.inf, -np.inf):
        y = x.copy()
        y[5, 3] = bad
        with pytest.raises(ValueError, match="NaN or Inf"):
            net.forward(y)
        with pytest.raises(ValueError, match="NaN or Inf"):
            net.forward_stacked(y, 3)
    np.testing.assert_array_equal(noisesim.to_numpy(net.forward(x).out), ref)
    with pytest.raises(ValueError, match=r"shape \(3, 3\), expected \(3, 4\)"):
        net.apply_update(0, np.zeros((3, 3), np.float32))
    with pytest.raises(noisesim.DivergenceError):
        net.apply_update(0, np.full((3, 4), np.nan, np.float32))
    with pytest.raises(ValueError, match="dtype='float16' is not supported"):
        noisesim.Network.mlp([4, 3], DeviceConfig.preset("pcm"), backend=backend_name, dtype="float16")
    with pytest.raises(ValueError, match=r"must be 2-D"):
        noisesim.Tile(np.zeros(3), DeviceConfig(), noisesim.get_backend(backend_name))
