"""The fused kernels: each against a plain-NumPy reference, and CuPy against NumPy.

Backends are compared with noise off or injected (the same arrays fed to both), to the
dtype-keyed tolerances of ``conftest.TOLERANCES``.
"""
from __future__ import annotations

import numpy as np
import pytest

from noisesim import _kernels
from noisesim.backend import get_backend, to_numpy

from conftest import require_cupy, tolerance


def _ref_convert(x, bits, bound):
    if bound is None:
        return x
    if bits is None:
        return np.clip(x, -bound, bound)
    half = 2 ** (bits - 1) - 1
    if half == 0:
        return np.where(x >= 0, bound, -bound)
    step = bound / half
    return np.clip(np.rint(x / step), -half, half) * step


@pytest.mark.parametrize("bits,bound", [(None, None), (None, 1.5), (1, 2.0), (4, 1.0), (8, 3.0)])
def test_convert_matches_reference(backend_name, dtype_name, bits, bound):
    be = get_backend(backend_name, dtype_name)
    x = np.random.default_rng(0).uniform(-4, 4, (33, 17)).astype(dtype_name)
    gain = np.random.default_rng(1).uniform(0.2, 2, 33).astype(dtype_name)
    got = to_numpy(_kernels.convert(be.asarray(x), bits, bound))
    np.testing.assert_allclose(got, _ref_convert(x, bits, bound), **tolerance(dtype_name))
    got = to_numpy(_kernels.convert(be.asarray(x), bits, bound, gain=be.asarray(gain)))
    np.testing.assert_allclose(got, _ref_convert(x * gain[:, None], bits, bound), **tolerance(dtype_name))


def test_adc_code_count():
    x = np.linspace(-5, 5, 100001)[None, :]
    for bits in range(1, 9):
        codes = np.unique(_kernels.convert(x, bits, 2.0))
        assert len(codes) == (2 if bits == 1 else 2 ** bits - 1)
        assert codes.min() == -2.0 and codes.max() == 2.0


@pytest.mark.parametrize("acc", [False, True])
def test_epilogue_matches_reference(backend_name, dtype_name, acc):
    be = get_backend(backend_name, dtype_name)
    r = np.random.default_rng(2)
    M, N = 40, 23
    a, zr, zn, inj = (r.standard_normal((M, N)).astype(dtype_name) for _ in range(4))
    rs, ns, post = (r.uniform(0.1, 2, M).astype(dtype_name) for _ in range(3))
    base = r.standard_normal((M, N)).astype(dtype_name)
    gain = 0.5
    ref = _ref_convert((a + rs[:, None] * zr + ns[:, None] * zn + inj) * gain, 6, 1.0) * post[:, None]
    if acc:
        ref = base + ref
    A = be.asarray(a)
    out = be.asarray(base) if acc else None
    got = _kernels.read_epilogue(A, read_z=be.asarray(zr), read_std=be.asarray(rs), node_z=be.asarray(zn),
                                 node_std=be.asarray(ns), inject=be.asarray(inj), bits=6, bound=1.0,
                                 gain=gain, post=be.asarray(post), out=out)
    # quantiser: an element within rounding of a code boundary may land one code apart
    diff = np.abs(to_numpy(got) - ref)
    step = post[:, None] * (1.0 / 31)
    assert np.mean(diff > 1e-4) < 0.01 and np.all(diff <= step + 1e-4)


def _ref_pulsed(gp, gm, d, r, z, dws, bp, bm, dw_min, asym, c2c):
    u = gp - gm
    x = d / dw_min
    n = np.floor(np.abs(x)) + (r < np.abs(x) - np.floor(np.abs(x)))
    s = dw_min * dws
    up = x > 0
    st = np.where(up, s * (1 + asym), s * (1 - asym))
    v_up = bp - (bp - u) * np.maximum(1 - st / bp, 0) ** n
    v_dn = -bm + (u + bm) * np.maximum(1 - st / bm, 0) ** n
    v = np.where(up, v_up, v_dn) + c2c * st * np.sqrt(n) * z
    v = np.clip(v, -bm, bp)
    v = np.where(n > 0, v, u)
    return np.maximum(v, 0), np.maximum(-v, 0), n > 0


def test_pulsed_kernel_matches_reference(backend_name, dtype_name):
    be = get_backend(backend_name, dtype_name)
    r = np.random.default_rng(3)
    shape = (30, 40)
    u0 = r.uniform(-0.9, 0.9, shape)
    gp, gm = np.maximum(u0, 0).astype(dtype_name), np.maximum(-u0, 0).astype(dtype_name)
    d = (r.standard_normal(shape) * 0.01).astype(dtype_name)
    rr = r.uniform(0, 1, shape).astype(dtype_name)
    z = r.standard_normal(shape).astype(dtype_name)
    dws = r.uniform(0.7, 1.3, shape).astype(dtype_name)
    bp, bm = (r.uniform(0.9, 1.2, shape).astype(dtype_name) for _ in range(2))
    ep, em, moved = _ref_pulsed(gp.astype(float), gm.astype(float), d, rr, z, dws, bp, bm, 0.002, 0.1, 0.3)
    GP, GM = be.asarray(gp), be.asarray(gm)
    T = be.xp.zeros(shape, be.dtype)
    W = be.xp.zeros(shape, be.dtype)
    _kernels.pulsed_update(GP, GM, be.asarray(d), be.asarray(rr), dw_min=0.002, asymmetry=0.1, c2c=0.3,
                           z=be.asarray(z), dw_scale=be.asarray(dws), bound_up=be.asarray(bp),
                           bound_down=be.asarray(bm), tprog=T, now=7.0, w=W, w_scale=2.0)
    tol = dict(rtol=1e-4, atol=1e-6) if dtype_name == "float32" else tolerance(dtype_name)
    np.testing.assert_allclose(to_numpy(GP), ep, **tol)
    np.testing.assert_allclose(to_numpy(GM), em, **tol)
    np.testing.assert_array_equal(to_numpy(T) == 7.0, moved)
    np.testing.assert_allclose(to_numpy(W)[moved], 2.0 * (ep - em)[moved], **tol)


def test_gpu_full_read_agrees_with_numpy(dtype_name):
    """Both backends, noise injected as the same arrays: one tile read agrees to tolerance."""
    import noisesim

    require_cupy()
    r = np.random.default_rng(4)
    w = r.uniform(-1, 1, (64, 96))
    x = r.standard_normal((50, 96))
    inj = r.standard_normal((50, 64)) * 0.01
    cfg = noisesim.DeviceConfig(w_max=1.0, in_bits=None, in_bound=4.0, tile_rows=32,
                                io_scaling="abs_max", out_bound=50.0, n_levels=257)
    outs = []
    for name in ("numpy", "cupy"):
        be = get_backend(name, dtype_name)
        t = noisesim.Tile(w, cfg, be, streams=noisesim.Streams(0, be))
        outs.append(to_numpy(t.read(be.asarray(x), inject=be.asarray(inj))))
    np.testing.assert_allclose(outs[1], outs[0], **{k: 10 * v for k, v in tolerance(dtype_name).items()})


# --- the CUDA kernels of the CuPy backend, on the GPU (the same checks run on the CPU, with the
# CUDA source compiled for the host, in test_cupy_path.py) ------------------------------------
def test_gpu_normals_are_bit_identical_to_numba():
    """The in-kernel generator on the GPU draws exactly the NumPy backend's normals."""
    from noisesim import _kernels_cuda, _rng_numba

    require_cupy()
    import cupy

    rng = np.random.default_rng(11)
    m = np.concatenate([rng.integers(0, 2 ** 31, 10 ** 6), np.arange(0, 400_000), np.arange(2 ** 31 - 1000, 2 ** 31)])
    for sign in (0, -2 ** 31):
        b = (m + sign).astype(np.int32)
        got = _kernels_cuda.normals_of_bits(cupy.asarray(b)).get()
        np.testing.assert_array_equal(got.view(np.int32), _rng_numba.normals_of_bits(b).view(np.int32))
    for shape, key in (((1, 1), 0), ((7, 33), 1), ((1000, 1024), 2024), ((70000, 3), 2 ** 64 - 1)):
        got = cupy.empty(shape, cupy.float32)
        _kernels_cuda.fill_normal(got, key)
        ref = np.empty(shape, np.float32)
        _rng_numba.fill_normal(ref, key)
        np.testing.assert_array_equal(got.get().view(np.int32), ref.view(np.int32))


@pytest.mark.parametrize("bits, bound", [(None, None), (None, 1.5), (1, 2.0), (6, 1.0)],
                         ids=["none", "clip", "sign", "quant"])
def test_gpu_fused_epilogue_equals_numba(dtype_name, bits, bound):
    """The fused CUDA epilogue against the Numba one on the same inputs and keys: every
    combination of noise, injection, post-scale and accumulation, bit for bit."""
    import itertools

    from noisesim import _kernels_cuda

    require_cupy()
    import cupy

    mode, half, step, b = _kernels.converter_params(bits, bound)
    r = np.random.default_rng(0)
    M, N = 300, 257
    a, inj, base = (r.standard_normal((M, N)).astype(dtype_name) for _ in range(3))
    rs, ns, post = (r.uniform(0.1, 2, M).astype(dtype_name) for _ in range(3))
    for has_r, has_n, has_inj, has_post, acc in itertools.product([False, True], repeat=5):
        flags = (has_r, has_n, has_inj, has_post, acc, mode, half, step, b)
        x, ref = a.copy(), base.copy()
        _kernels._keyed_ser(x, ref if acc else x, np.uint64(2 ** 63 + 5), rs, np.uint64(77), ns, inj, post,
                            0.75, *flags)
        X, OUT = cupy.asarray(a), cupy.asarray(base)
        _kernels_cuda.keyed_epilogue(X, OUT if acc else X, np.uint64(2 ** 63 + 5), cupy.asarray(rs), np.uint64(77),
                                     cupy.asarray(ns), cupy.asarray(inj), cupy.asarray(post), 0.75, *flags)
        np.testing.assert_array_equal((OUT if acc else X).get(), ref if acc else x,
                                      err_msg=f"r={has_r} n={has_n} inj={has_inj} post={has_post} acc={acc}")


@pytest.mark.parametrize("epilogue", ["fused", "unfused"])
def test_gpu_epilogues_noise_statistics_and_determinism(epilogue, monkeypatch):
    """Read and node noise of one tile read on CuPy, with either epilogue: their closed-form
    std (20 000 outputs each: 3 % tolerance), zero mean, and the same numbers for one seed."""
    import noisesim
    from noisesim.backend import Streams

    require_cupy()
    monkeypatch.setattr(_kernels, "CUPY_EPILOGUE", epilogue)
    be = get_backend("cupy", "float64")
    r = np.random.default_rng(5)
    w, x = r.uniform(-1, 1, (100, 40)), r.uniform(-1, 1, (200, 40))
    t = noisesim.Tile(w, noisesim.DeviceConfig(w_max=1.0, read_noise=0.05, node_noise=0.02), be)
    exact = x @ w.T

    def read(seed):
        t.streams = Streams(seed, be)
        return to_numpy(t.read(be.asarray(x)))

    e = read(1) - exact
    sd = np.sqrt((0.05 * np.linalg.norm(x, axis=1)) ** 2 + 0.02 ** 2)[:, None]
    assert np.std(e / sd) == pytest.approx(1.0, rel=0.03)
    assert abs(np.mean(e / sd)) < 0.03
    np.testing.assert_array_equal(read(1), read(1))
    assert not np.allclose(read(1), read(2))


def test_gpu_backends_draw_the_same_read_and_node_noise(dtype_name):
    """With the fused epilogue both backends draw the same noise from the same keys: whole
    networks agree with read, output and node noise on (no ADC: a tolerance of the GEMM's
    rounding), and with an ADC but for a few outputs one code apart."""
    import noisesim

    require_cupy()
    x = np.random.default_rng(6).uniform(-1, 1, (256, 300)).astype(dtype_name)
    tol = dict(rtol=1e-4, atol=1e-5) if dtype_name == "float32" else dict(rtol=1e-10, atol=1e-11)
    for dev, exact in ((noisesim.DeviceConfig(w_max=1.0, read_noise=0.03, out_noise=0.02, node_noise=0.01), True),
                       (noisesim.DeviceConfig.preset("pcm", prog_noise_poly=(), drift_nu=0.0, drift_nu_std=0.0), False)):
        outs = [to_numpy(noisesim.Network.mlp([300, 200, 10], dev, seed=8, backend=name, dtype=dtype_name)
                         .forward_stacked(x, 2).pre[0]) for name in ("numpy", "cupy")]
        if exact:
            np.testing.assert_allclose(outs[1], outs[0], **tol)
        else:
            off = ~np.isclose(outs[1], outs[0], **tol)
            assert off.mean() < 0.002


def test_large_draws_split_over_two_streams_are_reproducible_and_standard():
    """Draws ≥ 2^18 numbers fill two halves concurrently from two streams (NumPy backend)."""
    from noisesim.backend import _SPLIT_MIN, Streams

    be = get_backend("numpy", "float32")
    shape = (700, 1000)
    assert shape[0] * shape[1] >= _SPLIT_MIN
    a = Streams(5, be).get("read").normal(shape)
    buf = np.empty(shape, np.float32)
    b = Streams(5, be).get("read").normal(shape, out=buf)
    np.testing.assert_array_equal(a, b)                      # out= draws the same numbers
    assert not np.array_equal(a, Streams(6, be).get("read").normal(shape))
    h = a.size // 2
    lo, hi = a.ravel()[:h], a.ravel()[h:2 * h]
    # 350 000 per half: mean within 5σ = 0.0085, std within 1 %, halves uncorrelated (|ρ| < 5σ)
    for part in (lo, hi):
        assert abs(part.mean()) < 5 / np.sqrt(h) and abs(part.std() - 1) < 0.01
    assert abs(np.corrcoef(lo, hi)[0, 1]) < 5 / np.sqrt(h)
    u = Streams(5, be).get("update").uniform(shape)
    assert 0 <= u.min() and u.max() < 1 and abs(u.mean() - 0.5) < 0.002


def test_dac_absmax_matches_reference(backend_name, dtype_name):
    be = get_backend(backend_name, dtype_name)
    x = np.random.default_rng(7).uniform(-3, 3, (20, 50)).astype(dtype_name)
    x[3] = 0
    out, s, sq = (to_numpy(a) for a in _kernels.dac_absmax(be.asarray(x), 6, 1.0))
    ref_s = np.abs(x).max(axis=1)
    ref_s[3] = 1
    ref = _ref_convert(x / ref_s[:, None], 6, 1.0)
    np.testing.assert_allclose(s, ref_s, **tolerance(dtype_name))
    assert np.mean(np.abs(out - ref) > 1e-6) < 0.01            # rounding ties may differ
    np.testing.assert_allclose(sq, (out * out).sum(axis=1), rtol=1e-5)
    # per-tile sums: chunks of 16 columns, the last one short (50 = 3·16 + 2)
    _, _, sq_t = (to_numpy(a) for a in _kernels.dac_absmax(be.asarray(x), 6, 1.0, chunk=16))
    ref_t = np.stack([(out[:, c:c + 16] ** 2).sum(axis=1) for c in range(0, 50, 16)], axis=1)
    assert sq_t.shape == (20, 4)
    np.testing.assert_allclose(sq_t, ref_t, rtol=1e-5)


def test_in_kernel_normals_match_the_normal_distribution():
    """The generator of noisesim._rng_numba against N(0, 1): moments, CDF, tails, rows."""
    from scipy import stats

    from noisesim import _rng_numba as R

    z = np.empty((2000, 1000))
    R.fill_normal(z, 2024)
    n = z.size                                                   # 2e6 draws
    assert abs(z.mean()) < 5 / np.sqrt(n)                        # 5σ
    assert abs(z.var() - 1) < 5 * np.sqrt(2 / n)
    assert abs(stats.kurtosis(z.ravel())) < 5 * np.sqrt(24 / n)
    assert stats.kstest(z.ravel(), "norm").pvalue > 1e-4
    for c in (1.0, 2.5, 3.76, 4.0, 4.5):                         # both sides of the tail split
        p = 2 * stats.norm.sf(c)
        assert abs(np.mean(np.abs(z) > c) - p) < 5 * np.sqrt(p * (1 - p) / n)
    # rows and neighbours uncorrelated; the same key gives the same numbers
    assert abs(np.corrcoef(z[:, :-1].ravel(), z[:, 1:].ravel())[0, 1]) < 5 / np.sqrt(n)
    assert abs(np.corrcoef(z[:-1].ravel(), z[1:].ravel())[0, 1]) < 5 / np.sqrt(n)
    z2 = np.empty_like(z)
    R.fill_normal(z2, 2024)
    np.testing.assert_array_equal(z, z2)


def test_in_kernel_normals_invert_the_normal_cdf():
    """Each 32-bit pattern maps to ±Φ⁻¹(1 − q/2), q = (m + ½)·2⁻³¹: within 1e-6 relative
    (float32 and the fitted polynomials: 4e-7 measured), both sides of the tail split and
    the extreme patterns included."""
    from scipy.special import ndtri

    from noisesim import _rng_numba as R

    rng = np.random.default_rng(7)
    m = np.concatenate([rng.integers(0, 2 ** 31, 10 ** 6),
                        np.arange(0, 2 ** 31, 2 ** 31 // 4096),   # a grid over every q
                        [0, 1, 2, 3, 2 ** 31 - 2, 2 ** 31 - 1]])  # the largest |z| and z ≈ 0
    for sign in (0, -2 ** 31):
        b = (m + sign).astype(np.int32)
        z = R.normals_of_bits(b).astype(np.float64)
        exact = ndtri(((m + 0.5) * 2.0 ** -31) / 2) * (1 if sign else -1)
        np.testing.assert_allclose(z, exact, rtol=1e-6, atol=1e-7)
    assert R.normals_of_bits(np.array([0]))[0] == pytest.approx(-ndtri(2.0 ** -33), rel=1e-6)  # ≈ 6.34


def test_log32_matches_the_logarithm():
    import numba

    from noisesim import _rng_numba as R

    @numba.njit
    def logs(y, out):
        for j in range(y.size):
            out[j] = R.log32(y[j])

    y = np.concatenate([np.geomspace(np.finfo(np.float32).tiny, 1.0, 100_000),
                        np.nextafter(np.float32(np.sqrt(2)), [0, 2]), [1.0, 2.0, 0.5]]).astype(np.float32)
    out = np.empty_like(y)
    logs(y, out)
    np.testing.assert_allclose(out, np.log(y.astype(np.float64)), rtol=3e-7, atol=3e-7)


def test_keyed_epilogue_parallel_equals_serial():
    a = np.random.default_rng(1).standard_normal((600, 500))
    rs = np.full(600, 0.3)
    outs = []
    for fn in (_kernels._keyed_par, _kernels._keyed_ser):
        b = a.copy()
        fn(b, b, np.uint64(9), rs, np.uint64(10), rs, b[:0, :0], rs[:0], 1.0,
           True, True, False, False, False, 0, 0, 0.0, 0.0)
        outs.append(b)
    np.testing.assert_array_equal(outs[0], outs[1])
    assert np.std(outs[0] - a) == pytest.approx(0.3 * np.sqrt(2), rel=0.01)
    # the epilogue's noise is exactly fill_normal's for the same keys (this also fails when
    # numba serves an epilogue cached before noisesim/_rng_numba.py last changed)
    from noisesim import _rng_numba as R

    zr, zn = np.empty_like(a), np.empty_like(a)
    R.fill_normal(zr, 9)
    R.fill_normal(zn, 10)
    np.testing.assert_allclose(outs[0], a + 0.3 * zr + 0.3 * zn, rtol=1e-12, atol=1e-14)



@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_all_finite_finds_every_non_finite_value(dtype):
    x = np.random.default_rng(3).uniform(-1, 1, (64, 33)).astype(dtype)
    x[0, 0], x[1, 1] = np.finfo(dtype).max, -np.finfo(dtype).max    # the largest finite values
    x[2, 2] = np.finfo(dtype).smallest_subnormal
    assert _kernels.all_finite(x) and _kernels.all_finite(x[:, ::3]) and _kernels.all_finite(x[:0])
    for bad in (np.nan, -np.nan, np.inf, -np.inf):
        y = x.copy()
        y[41, 17] = bad
        assert not _kernels.all_finite(y), bad
        assert not _kernels.all_finite(y[:, 1::2]), bad                    # strided: column 17 kept
    assert not _kernels.all_finite(np.array([[np.uint32(0xFFC00000)]], np.uint32).view(np.float32))
