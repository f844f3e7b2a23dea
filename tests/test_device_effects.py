"""Every non-ideality of SPEC §1 against its closed form, on every backend.

Statistical checks use fixed seeds; each states its tolerance next to the assertion.
"""
from __future__ import annotations

import math

import numpy as np
import pytest

import noisesim
from noisesim import DeviceConfig, Tile
from noisesim.backend import Streams, get_backend, to_numpy
from noisesim import _kernels


def make_tile(w, backend_name, dtype="float32", seed=0, **cfg):
    be = get_backend(backend_name, dtype)
    return Tile(np.asarray(w), DeviceConfig(**cfg), be, streams=Streams(seed, be))


def read(tile, x, seed=1, inject=None, gate=None):
    """One read of ``x``, its noise drawn from the named streams of ``seed`` (the tile sets
    up its own noise from its config: ``node_noise``, ``read_noise`` …)."""
    be = tile.backend
    tile.streams = Streams(seed, be)
    inj = be.asarray(inject) if inject is not None else None
    return to_numpy(tile.read(be.asarray(x), inject=inj, gate=gate))


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


# 1 — weight ↔ conductance mapping ------------------------------------------------------------
def test_mapping_differential_pair(backend_name, rng):
    w = rng.uniform(-2, 2, (20, 30))
    t = make_tile(w, backend_name, "float64", w_max=1.5, g_max=25.0)
    gp, gm = (to_numpy(g) for g in t.conductances())
    # one device of each pair at zero, both within [0, g_max], w = w_max (G⁺ − G⁻)/g_max
    assert np.all(np.minimum(gp, gm) == 0)
    assert gp.max() <= 25.0 and gm.max() <= 25.0
    np.testing.assert_allclose(1.5 * (gp - gm) / 25.0, np.clip(w, -1.5, 1.5), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(to_numpy(t.weights()), np.clip(w, -1.5, 1.5), rtol=1e-12, atol=1e-12)


def test_w_max_init_mode_scales_per_layer(backend_name, rng):
    w = rng.standard_normal((16, 8)) * 0.1
    t = make_tile(w, backend_name, "float64", w_max=1.25, w_max_mode="init")
    assert t.w_max == pytest.approx(1.25 * np.abs(w).max(), rel=1e-6)
    np.testing.assert_allclose(to_numpy(t.weights()), w, rtol=1e-9, atol=1e-12)   # nothing clipped


# 2 — finite levels ---------------------------------------------------------------------------
def test_levels_take_exactly_n_values(backend_name, rng):
    w = rng.uniform(-1, 1, (64, 64))
    t = make_tile(w, backend_name, "float64", w_max=1.0, n_levels=5, g_max=20.0)
    gp, gm = (to_numpy(g) for g in t.conductances())
    values = np.unique(np.concatenate([gp.ravel(), gm.ravel()]))
    assert len(values) == 5                                   # exactly n_levels values
    np.testing.assert_allclose(values, np.linspace(0, 20.0, 5), atol=1e-12)
    # each weight is its target rounded to the nearest level (step w_max/(L−1))
    np.testing.assert_allclose(to_numpy(t.weights()), np.rint(w * 4) / 4, atol=1e-12)


# 3 — programming noise -----------------------------------------------------------------------
def test_programming_noise_std(backend_name):
    w = np.full((200, 200), 0.5)                              # G⁺ = 0.5 g_max, G⁻ = 0
    t = make_tile(w, backend_name, "float64", w_max=1.0, prog_noise=0.02, g_max=25.0)
    gp, gm = (to_numpy(g) / 25.0 for g in t.conductances(programmed=True))
    # G⁺: Gaussian around 0.5 with std 0.02 (40 000 devices: std known to ±0.7 %); tol 3 %
    assert np.std(gp) == pytest.approx(0.02, rel=0.03)
    assert np.mean(gp) == pytest.approx(0.5, abs=4 * 0.02 / 200)
    # G⁻ targets 0: noise clipped at 0 → half the devices at 0 (tol ±1.5 %)
    assert np.mean(gm == 0) == pytest.approx(0.5, abs=0.015)


def test_programming_noise_polynomial(backend_name):
    c = (0.26348 / 25, 1.965 / 25, -1.1731 / 25)              # aihwkit PCM polynomial / g_max
    for g in (0.3, 0.8):
        t = make_tile(np.full((150, 150), g), backend_name, "float64", w_max=1.0, prog_noise_poly=c)
        gp = to_numpy(t.conductances(programmed=True)[0]) / 25.0
        expected = c[0] + c[1] * g + c[2] * g * g
        assert np.std(gp) == pytest.approx(expected, rel=0.03)   # 22 500 devices; tol 3 %


# 4 — read noise ------------------------------------------------------------------------------
@pytest.mark.parametrize("w_max", [None, 0.8])
def test_read_noise_std_is_read_noise_w_max_norm_x(backend_name, rng, w_max):
    n_in, n_out, M = 40, 50, 4000
    w = rng.uniform(-0.5, 0.5, (n_out, n_in))
    x1 = rng.standard_normal(n_in)
    x = np.tile(x1, (M, 1))
    t = make_tile(w, backend_name, "float64", w_max=w_max, read_noise=0.03)
    a = read(t, x)
    clean = x1 @ to_numpy(t.weights()).T
    expected = 0.03 * (w_max or 1.0) * np.linalg.norm(x1)
    # 200 000 samples: the sample std is known to ±0.2 %; tolerance 2 %
    assert np.std(a - clean) == pytest.approx(expected, rel=0.02)
    assert abs(np.mean(a - clean)) < 5 * expected / math.sqrt(a.size)
    # fresh per read: two reads differ
    assert not np.allclose(read(t, x[:5], seed=1), read(t, x[:5], seed=2))


# 5 — intrinsic node noise and 6 — converters ---------------------------------------------------
def test_node_noise_std_and_clean_gate(backend_name, rng):
    w = rng.uniform(-1, 1, (30, 20))
    x = rng.standard_normal((3000, 20))
    t = make_tile(w, backend_name, "float64", node_noise=0.01)
    a = read(t, x)
    clean = x @ w.T
    assert np.std(a - clean) == pytest.approx(0.01, rel=0.02)     # 90 000 samples; tol 2 %
    gate = t.backend.xp.zeros(3000, dtype=t.dtype)
    np.testing.assert_array_equal(read(t, x, gate=gate), clean)          # a clean pass: no node noise


def test_out_noise_relative_to_full_scale(backend_name, rng):
    w = rng.uniform(-1, 1, (30, 20))
    x = rng.uniform(-3, 3, (3000, 20))
    t = make_tile(w, backend_name, "float64", w_max=2.0, out_noise=0.05, io_scaling="abs_max")
    a = read(t, x)
    s = np.abs(x).max(axis=1)
    z = (a - x @ to_numpy(t.weights()).T) / (0.05 * 2.0 * s)[:, None]
    assert np.std(z) == pytest.approx(1.0, rel=0.02)              # std = out_noise·w_max·max|x|


def test_adc_codes_and_saturation(backend_name, rng):
    w = rng.uniform(-1, 1, (50, 40))
    x = rng.standard_normal((500, 40)) * 3
    for bits in (1, 3, 6):
        t = make_tile(w, backend_name, "float64", out_bits=bits, out_bound=4.0)
        a = read(t, x)
        assert len(np.unique(a)) <= 2 ** bits                     # at most 2^b codes
        assert np.abs(a).max() == pytest.approx(4.0)              # saturates at its bound
        raw = x @ w.T
        assert np.all(a[raw > 4.0] == 4.0) and np.all(a[raw < -4.0] == -4.0)
        if bits > 1:
            step = 4.0 / (2 ** (bits - 1) - 1)
            inside = np.abs(raw) < 4.0
            assert np.all(np.abs(a - raw)[inside] <= step / 2 + 1e-12)


def test_dac_clips_and_quantises(backend_name, rng):
    x = rng.uniform(-3, 3, (200, 10))
    t = make_tile(np.eye(10), backend_name, "float64", in_bits=4, in_bound=2.0)
    a = read(t, x)
    step = 2.0 / 7
    np.testing.assert_allclose(a, np.clip(np.rint(x / step), -7, 7) * step, atol=1e-12)


def test_perturbation_below_half_an_adc_step_vanishes(backend_name, rng):
    # node noise and injection sit before the ADC: a perturbation < Δ/2 on a value that sits
    # on an ADC code is erased — physics the simulator shows, not hides.
    w = np.eye(8)
    step = 1.0 / 127
    x = np.rint(rng.uniform(-0.9, 0.9, (100, 8)) / step) * step   # exactly on codes
    t = make_tile(w, backend_name, "float64", out_bits=8, out_bound=1.0)
    a0 = read(t, x)
    small = read(t, x, inject=np.full((100, 8), 0.4 * step))
    np.testing.assert_array_equal(small, a0)
    big = read(t, x, inject=np.full((100, 8), 0.6 * step))
    assert np.all(big > a0)


# 7 — tiling ----------------------------------------------------------------------------------
def test_tiling_without_noise_is_exact(backend_name, rng):
    # small integers: every partial sum is exact in float32, so "exactly" means bit for bit
    w = rng.integers(-4, 5, (37, 70)).astype(float)
    x = rng.integers(-3, 4, (25, 70)).astype(float)
    plain = make_tile(w, backend_name)
    tiled = make_tile(w, backend_name, tile_rows=16, tile_cols=8)
    np.testing.assert_array_equal(read(tiled, x), read(plain, x))
    np.testing.assert_array_equal(read(tiled, x), x @ w.T)
    d = rng.integers(-3, 4, (25, 37)).astype(float)
    np.testing.assert_array_equal(to_numpy(tiled.read_transposed(plain.backend.asarray(d))), d @ w)


def test_tiling_adc_per_tile_and_read_noise_variance(backend_name, rng):
    w = rng.uniform(-1, 1, (20, 64))
    x = rng.uniform(-1, 1, (50, 64))
    t = make_tile(w, backend_name, "float64", tile_rows=16, out_bits=5, out_bound=3.0)
    q = lambda v: np.clip(np.rint(v / (3.0 / 15)), -15, 15) * (3.0 / 15)
    expected = sum(q(x[:, k:k + 16] @ w[:, k:k + 16].T) for k in range(0, 64, 16))
    np.testing.assert_allclose(read(t, x), expected, atol=1e-12)
    # read noise per tile from its own chunk of x: total variance read²·w_max²·‖x‖² unchanged
    xs = np.tile(x[0], (4000, 1))
    tn = make_tile(w, backend_name, "float64", tile_rows=16, read_noise=0.05)
    assert np.std(read(tn, xs) - xs @ w.T) == pytest.approx(0.05 * np.linalg.norm(x[0]), rel=0.02)


def test_tiling_node_noise_per_tile(backend_name, rng):
    # k = 4 row tiles, each with its own node noise before its ADC: observed std 2·node_noise
    w = rng.uniform(-1, 1, (25, 64))
    x = rng.uniform(-1, 1, (4000, 64))
    t = make_tile(w, backend_name, "float64", tile_rows=16, node_noise=0.01)
    assert np.std(read(t, x) - x @ w.T) == pytest.approx(0.02, rel=0.02)


# 8 — drift -----------------------------------------------------------------------------------
def test_drift_power_law_and_exponent_statistics(backend_name):
    w = np.full((200, 100), 0.6)
    t = make_tile(w, backend_name, "float64", w_max=1.0, drift_nu=0.06, drift_nu_std=0.02, t0=20.0)
    g0 = to_numpy(t.conductances()[0])
    t.set_time(10.0)                                          # before t0: no drift
    np.testing.assert_array_equal(to_numpy(t.conductances()[0]), g0)
    t.set_time(20.0 * 1e4)
    g = to_numpy(t.conductances()[0])
    nu = -np.log(g / g0) / np.log(1e4)                        # per-device exponent from (t/t0)^-ν
    np.testing.assert_allclose(nu, to_numpy(t._nu_p), rtol=1e-9)
    # 20 000 draws: mean known to ±0.00014, std to ±0.5 %; tolerances 0.001 and 3 %
    assert np.mean(nu) == pytest.approx(0.06, abs=1e-3)
    assert np.std(nu) == pytest.approx(0.02, rel=0.03)
    np.testing.assert_allclose(to_numpy(t.weights()), g / 25.0, rtol=1e-9)   # weights follow


def test_drift_clock_restarts_on_programming(backend_name):
    t = make_tile(np.full((4, 4), 0.5), backend_name, "float64", w_max=1.0, drift_nu=0.1, t0=1.0)
    t.set_time(100.0)
    assert to_numpy(t.weights())[0, 0] == pytest.approx(0.5 * 100.0 ** -0.1)
    t.program(np.full((4, 4), 0.5))
    assert to_numpy(t.weights())[0, 0] == pytest.approx(0.5)
    t.set_time(1000.0)
    assert to_numpy(t.weights())[0, 0] == pytest.approx(0.5 * 900.0 ** -0.1)


def test_network_time_rejects_negative(backend_name):
    net = noisesim.Network.mlp([4, 3], DeviceConfig(w_max=1.0, drift_nu=0.05), backend=backend_name)
    net.advance_time(5.0)
    net.advance_time(5.0)
    assert net.time == 10.0
    with pytest.raises(ValueError, match="dt=-1"):
        net.advance_time(-1)
    with pytest.raises(ValueError, match=r"t=-2.*\[0, ∞\)"):
        net.set_time(-2.0)
    with pytest.raises(ValueError, match="t=nan"):
        net.set_time(float("nan"))
    assert net.time == 10.0


# 9 — stuck-at faults -------------------------------------------------------------------------
def test_stuck_fraction_in_binomial_interval(backend_name, rng):
    w = rng.uniform(-1, 1, (100, 100))
    t = make_tile(w, backend_name, "float64", w_max=1.0, stuck_off=0.05, stuck_on=0.02)
    n = 2 * w.size
    for frac, val in ((0.05, 0.0), (0.02, 25.0)):
        mask = np.concatenate([to_numpy(t.fab.stuck_p & (t.fab.stuck_val_p == val / 25.0)).ravel(),
                               to_numpy(t.fab.stuck_m & (t.fab.stuck_val_m == val / 25.0)).ravel()])
        # 4.4-sigma binomial interval (two-sided p ≈ 1e-5)
        assert abs(mask.mean() - frac) <= 4.4 * math.sqrt(frac * (1 - frac) / n)
    gp, gm = (to_numpy(g) for g in t.conductances())
    np.testing.assert_array_equal(gp[to_numpy(t.fab.stuck_p)], 25.0 * to_numpy(t.fab.stuck_val_p)[to_numpy(t.fab.stuck_p)])
    # faults survive an update
    t.apply(t.backend.asarray(np.full(w.shape, 0.3)))
    gp2 = to_numpy(t.conductances()[0])
    np.testing.assert_array_equal(gp2[to_numpy(t.fab.stuck_p)], gp[to_numpy(t.fab.stuck_p)])


# 10 — device-to-device variation ----------------------------------------------------------------
def test_d2d_of_g_max_and_step(backend_name):
    t = make_tile(np.full((150, 150), 5.0), backend_name, "float64", w_max=1.0, d2d=0.1, update="pulsed")
    gmax = to_numpy(t.fab.gmax_p)
    assert np.std(gmax) == pytest.approx(0.1, rel=0.03) and np.mean(gmax) == pytest.approx(1.0, abs=0.002)
    # a target beyond the range is clipped to the nominal g_max; weaker devices saturate lower
    np.testing.assert_allclose(to_numpy(t.conductances()[0]) / 25.0, np.minimum(gmax, 1.0), rtol=1e-12)
    assert np.std(to_numpy(t.fab.dw_scale)) == pytest.approx(0.1, rel=0.03)


# 11 — update models ----------------------------------------------------------------------------
def test_pulsed_single_pulse_step_asymmetry_and_soft_bounds(backend_name):
    dw, a = 0.01, 0.2
    u0 = np.linspace(-0.9, 0.9, 19)
    w = np.tile(u0, (10, 1))
    t = make_tile(w, backend_name, "float64", w_max=1.0, update="pulsed", dw_min=dw, asymmetry=a)
    t.apply(t.backend.asarray(np.full(w.shape, dw)))          # exactly one pulse up
    up = to_numpy(t.weights()) - w
    np.testing.assert_allclose(up, np.tile(dw * (1 + a) * (1 - u0), (10, 1)), rtol=1e-9)
    t2 = make_tile(w, backend_name, "float64", w_max=1.0, update="pulsed", dw_min=dw, asymmetry=a)
    t2.apply(t2.backend.asarray(np.full(w.shape, -dw)))       # one pulse down
    down = w - to_numpy(t2.weights())
    np.testing.assert_allclose(down, np.tile(dw * (1 - a) * (1 + u0), (10, 1)), rtol=1e-9)


def test_pulsed_saturates_at_bound(backend_name):
    t = make_tile(np.zeros((10, 10)), backend_name, "float64", w_max=2.0, update="pulsed", dw_min=0.05)
    for _ in range(20):
        t.apply(t.backend.asarray(np.full((10, 10), 10 * 0.05 * 2.0)))   # 10 pulses each
    # 200 pulses of 0.05 with soft bounds: u = 1 − 0.95^200 (closed form), never above 1
    np.testing.assert_allclose(to_numpy(t.weights()) / 2.0, 1 - 0.95 ** 200, rtol=1e-9)


def test_pulsed_stochastic_counts_are_unbiased(backend_name):
    # d = 0.3 dw_min: one pulse with probability 0.3 (mid-range, so soft bounds barely matter)
    dw = 0.001
    t = make_tile(np.zeros((200, 200)), backend_name, "float64", w_max=1.0, update="pulsed", dw_min=dw)
    t.apply(t.backend.asarray(np.full((200, 200), 0.3 * dw)))
    moved = to_numpy(t.weights()) != 0
    # 40 000 Bernoulli(0.3) trials: 4.4σ interval
    assert abs(moved.mean() - 0.3) <= 4.4 * math.sqrt(0.3 * 0.7 / moved.size)
    np.testing.assert_allclose(to_numpy(t.weights())[moved], dw)


def test_pulsed_cycle_to_cycle_noise(backend_name):
    dw = 0.001
    t = make_tile(np.zeros((200, 200)), backend_name, "float64", w_max=1.0, update="pulsed", dw_min=dw, c2c=0.5)
    t.apply(t.backend.asarray(np.full((200, 200), 4 * dw)))   # 4 pulses each
    mean_step = 1 - (1 - dw) ** 4
    u = to_numpy(t.weights())
    assert np.mean(u) == pytest.approx(mean_step, rel=0.01)
    assert np.std(u) == pytest.approx(0.5 * dw * 2, rel=0.03)  # c2c·s·√n


def test_write_verify_accumulates_below_one_level(backend_name):
    t = make_tile(np.zeros((10, 10)), backend_name, "float64", w_max=1.0, n_levels=11, update="write_verify")
    for k in range(4):                                        # 4 × 0.03 = 0.12 > one level (0.1)
        t.apply(t.backend.asarray(np.full((10, 10), 0.03)))
        expected = 0.0 if k < 1 else np.rint(0.03 * (k + 1) * 10) / 10
        np.testing.assert_allclose(to_numpy(t.weights()), expected, atol=1e-12)


def test_write_verify_programming_noise_does_not_accumulate(backend_name):
    t = make_tile(np.full((100, 100), 0.5), backend_name, "float64", w_max=1.0, prog_noise=0.01, update="write_verify")
    for _ in range(5):
        t.apply(t.backend.asarray(np.full((100, 100), 0.01)))
    err = to_numpy(t.weights()) - 0.55
    # each reprogram draws fresh noise around the digital target: std 0.01 (G⁺), G⁻ clipped at 0
    assert abs(err.mean()) < 0.01 and np.std(err) < 0.012


def test_ideal_update_is_exact(backend_name, rng):
    w = rng.uniform(-0.5, 0.5, (8, 8))
    d = rng.uniform(-0.1, 0.1, (8, 8))
    t = make_tile(w, backend_name, "float64", w_max=1.0)
    t.apply(t.backend.asarray(d))
    np.testing.assert_allclose(to_numpy(t.weights()), w + d, atol=1e-12)


# determinism and stream independence -------------------------------------------------------------
def _net(backend_name, seed=0, **cfg):
    return noisesim.Network.mlp([20, 30, 5], DeviceConfig(**cfg), seed=seed, backend=backend_name)


def test_same_seed_same_numbers_different_seed_different(backend_name, rng):
    x = rng.standard_normal((16, 20)).astype(np.float32)
    cfg = dict(w_max=1.0, prog_noise=0.02, read_noise=0.02, node_noise=0.01, stuck_off=0.05, d2d=0.1,
               drift_nu=0.05, drift_nu_std=0.01, out_bits=8, out_bound=10.0, access=("observe", "oracle"))
    a = to_numpy(_net(backend_name, 3, **cfg).forward(x).out)
    b = to_numpy(_net(backend_name, 3, **cfg).forward(x).out)
    c = to_numpy(_net(backend_name, 4, **cfg).forward(x).out)
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)


def test_enabling_one_effect_leaves_other_streams_unchanged(backend_name, rng):
    base = dict(w_max=1.0, d2d=0.1, drift_nu=0.05, drift_nu_std=0.01, access=("observe", "oracle"))
    n0 = _net(backend_name, **base)
    n1 = _net(backend_name, **base, stuck_off=0.1, stuck_on=0.05, prog_noise=0.02)
    for t0, t1 in zip(n0.tiles, n1.tiles):                    # fabrication draws identical
        np.testing.assert_array_equal(to_numpy(t0.fab.gmax_p), to_numpy(t1.fab.gmax_p))
        np.testing.assert_array_equal(to_numpy(t0._nu_m), to_numpy(t1._nu_m))
    # read noise numbers do not depend on whether node noise is on
    x = rng.standard_normal((8, 20)).astype(np.float32)
    w = rng.uniform(-1, 1, (6, 20))
    r = read(make_tile(w, backend_name, "float64", read_noise=0.1), x) - x @ w.T
    rn = read(make_tile(w, backend_name, "float64", read_noise=0.1, node_noise=0.05), x) - x @ w.T
    nn = read(make_tile(w, backend_name, "float64", node_noise=0.05), x) - x @ w.T
    np.testing.assert_allclose(rn, r + nn, atol=1e-12)
    # output noise joins the read noise as one Gaussian of variance r² + o² per output: the
    # same normals, rescaled (the stream is not shifted), and the node noise is untouched
    sig_r = 0.1 * np.linalg.norm(x, axis=1)[:, None]
    sig = np.sqrt(sig_r ** 2 + 0.3 ** 2)
    ro = read(make_tile(w, backend_name, "float64", read_noise=0.1, out_noise=0.3), x) - x @ w.T
    np.testing.assert_allclose(ro / sig, r / sig_r, atol=1e-9)
    ron = read(make_tile(w, backend_name, "float64", read_noise=0.1, out_noise=0.3, node_noise=0.05), x) - x @ w.T
    np.testing.assert_allclose(ron, ro + nn, atol=1e-12)
    # programming noise does not shift the read noise
    t_a = make_tile(w, backend_name, "float64", w_max=1.0, read_noise=0.1)
    t_b = make_tile(w, backend_name, "float64", w_max=1.0, read_noise=0.1, prog_noise=0.05)
    ea = read(t_a, x) - x @ to_numpy(t_a.weights()).T
    eb = read(t_b, x) - x @ to_numpy(t_b.weights()).T
    np.testing.assert_allclose(ea, eb, atol=1e-10)


# 5 — batched passes ------------------------------------------------------------------------------
def test_stacked_passes_have_independent_noise(backend_name, rng):
    net = noisesim.Network.mlp([10, 40], DeviceConfig(node_noise=0.1, read_noise=0.05,
                               access=("observe", "clean", "oracle")), backend=backend_name, dtype="float64")
    x = rng.standard_normal((500, 10))
    p = net.forward_stacked(x, 3, clean=[True, False, False])
    clean_pre = x @ to_numpy(net.weights(0)).T
    e = [to_numpy(p.pre[0][k]) - clean_pre for k in range(3)]
    # the clean pass keeps read noise only; noisy passes add node noise, independently per pass
    sig_r = 0.05 * np.linalg.norm(x, axis=1)[:, None]
    assert np.std(e[0] / sig_r) == pytest.approx(1.0, rel=0.03)
    tot = np.sqrt(sig_r ** 2 + 0.1 ** 2)
    assert np.std(e[1] / tot) == pytest.approx(1.0, rel=0.03)
    assert abs(np.corrcoef(e[1].ravel(), e[2].ravel())[0, 1]) < 0.02    # 20 000 pairs: |ρ| < 3σ


def test_global_drift_compensation(backend_name, rng):
    w = rng.uniform(-1, 1, (30, 40))
    x = rng.uniform(-1, 1, (20, 40))
    # one exponent for every device: the digital gain undoes drift exactly
    t = make_tile(w, backend_name, "float64", w_max=1.0, drift_nu=0.08, drift_compensation=True, t0=1.0)
    t.set_time(1e5)
    np.testing.assert_allclose(read(t, x), x @ w.T, rtol=1e-9, atol=1e-12)
    assert t._alpha == pytest.approx(1e5 ** 0.08)
    # spread exponents: compensation restores the overall scale only
    t2 = make_tile(w, backend_name, "float64", w_max=1.0, drift_nu=0.08, drift_nu_std=0.01,
                   drift_compensation=True, t0=1.0)
    t2.set_time(1e5)
    a = read(t2, x)
    ratio = np.abs(a).sum() / np.abs(x @ w.T).sum()
    assert 0.95 < ratio < 1.05 and not np.allclose(a, x @ w.T, rtol=1e-3)   # uncompensated: 0.40


def test_a_read_sets_up_its_own_noise_from_its_config_and_gate(backend_name, rng):
    """The tile draws read and node noise from its own streams; the caller only gates rows."""
    w = rng.uniform(-1, 1, (12, 30))
    x = rng.standard_normal((400, 30))
    t = make_tile(w, backend_name, "float64", node_noise=0.05)
    gate = t.backend.xp.asarray(np.repeat([1.0, 0.0], 200))
    a = read(t, x, gate=gate)
    np.testing.assert_array_equal(a[200:], x[200:] @ w.T)              # gated rows: clean
    assert np.std(a[:200] - x[:200] @ w.T) == pytest.approx(0.05, rel=0.1)
    # evaluation draws from its own streams, so it never shifts the training noise
    t.streams = Streams(1, t.backend)
    t.read(t.backend.asarray(x), purpose="eval")
    np.testing.assert_array_equal(to_numpy(t.read(t.backend.asarray(x))), read(t, x, seed=1))
