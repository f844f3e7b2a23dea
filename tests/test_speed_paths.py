"""The fused CPU kernels and reused buffers of a training step against the plain NumPy
expressions they replace: the same bits, and no array a caller holds is ever overwritten."""
from __future__ import annotations

import numba
import numpy as np
import pytest

import noisesim
from noisesim import _kernels, _rng_numba
from noisesim.activation import Activation
from noisesim.backend import sole_owner

DTYPES = [np.float32, np.float64]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 5), (37, 301), (1000, 64), (3, 1)])
def test_column_sumsq_gives_numpy_s_bits(dtype, shape):
    """``d_j = Σ_i x_ij²``: the bits of ``(x * x).sum(axis=0)``, also for a strided input."""
    x = np.random.default_rng(0).standard_normal(shape).astype(dtype)
    np.testing.assert_array_equal(_kernels.column_sumsq(x), (x * x).sum(axis=0))
    xt = np.asfortranarray(x)
    np.testing.assert_array_equal(_kernels.column_sumsq(xt), (xt * xt).sum(axis=0))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("has_d, add", [(True, True), (True, False), (False, True), (False, False)])
def test_decorrelation_tail_gives_numpy_s_bits_and_max(dtype, has_d, add):
    """``M ← (M − diag(d) R)·c (+ R)`` in one pass: the bits of the NumPy expressions, and
    the returned ``max |M|`` is that of the result (``inf`` with a NaN in it)."""
    r = np.random.default_rng(1)
    M, R = (r.standard_normal((70, 70)).astype(dtype) for _ in range(2))
    d = r.uniform(0, 3, 70).astype(dtype) if has_d else None
    ref = M.copy()
    if has_d:
        ref -= d[:, None] * R
    ref *= dtype(-1e-3 / 7)
    if add:
        ref += R
    got = M.copy()
    big = _kernels.decorrelation_tail(got, R, d, -1e-3 / 7, add)
    np.testing.assert_array_equal(got, ref)
    assert big == np.abs(ref).max()
    M[3, 4] = np.nan
    assert _kernels.decorrelation_tail(M, R, d, 0.5, add) == np.inf


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("slope", [0.2, 0.01, 0.0])
def test_leaky_relu_gives_numpy_s_bits(dtype, slope):
    """``max(a, s·a)`` in one pass: the bits of ``maximum(a, a * s)``, NaN, ±Inf, ±0 and
    subnormals included, small and large arrays alike."""
    r = np.random.default_rng(2)
    for shape in ((3, 7), (300, 77)):
        a = r.standard_normal(shape).astype(dtype)
        a.flat[:7] = [np.nan, np.inf, -np.inf, 0.0, -0.0, np.finfo(dtype).smallest_subnormal, -1e-40]
        with np.errstate(invalid="ignore"):
            ref = np.maximum(a, a * dtype(slope))
            got = Activation("leaky_relu", slope)(a)
        np.testing.assert_array_equal(got.view(np.uint8), ref.view(np.uint8))


def test_keyed_epilogue_draws_the_generator_s_normals():
    """The epilogue's in-kernel normals are :func:`noisesim._rng_numba.fill_normal`'s, bit for
    bit, over enough rows to hold draws from both sides of the tail split."""
    class Key:
        def key(self):
            return np.uint64(2024)

    a = np.zeros((400, 1024), np.float32)
    got = _kernels.read_epilogue(a, node_std=np.ones(400, np.float32), node_rng=Key())
    ref = np.empty_like(got)
    _rng_numba.fill_normal(ref, 2024)
    assert (np.abs(ref) > 3.8).sum() > 20                 # tail draws present
    np.testing.assert_array_equal(got.view(np.int32), ref.view(np.int32))


def test_sole_owner_sees_every_other_holder():
    a = np.ones(4)
    assert sole_owner(a, 1)
    b = a
    assert not sole_owner(a, 1) and sole_owner(a, 2)
    del b
    v = a[1:]
    assert not sole_owner(a, 1) and not sole_owner(v, 1)    # a view: never
    del v
    a.flags.writeable = False
    assert not sole_owner(a, 1)


def _danp_net(seed=0):
    net = noisesim.Network.mlp([30, 20, 20, 5], seed=seed, backend="numpy", decorrelate=True)
    xs = [np.random.default_rng(3).standard_normal((8, n)).astype(np.float32) for n in net.sizes[:-1]]
    return net, xs


def test_the_decorrelation_update_writes_into_the_matrix_it_replaced_only_when_unheld():
    """A matrix R that nothing else holds is the buffer of the step after next (two buffers
    take turns); one a caller holds keeps its values and is never written. Every step the
    new R has the bits of ``R + ΔR``."""
    from rules.decorrelation import decorrelation_delta, update_decorrelation

    net, xs = _danp_net()
    ref, _ = _danp_net()
    addr = lambda l: net.decorrelation(l).__array_interface__["data"][0]
    seen, held, kept = [], None, None
    for step in range(7):
        if step == 4:
            held = net.decorrelation(0)
            kept = held.copy()
        update_decorrelation(net, xs, 1e-2)
        for l in range(ref.n_layers):
            R = ref.decorrelation(l)
            ref.set_decorrelation(l, R + decorrelation_delta(xs[l], R, 1e-2))
            np.testing.assert_array_equal(net.decorrelation(l), ref.decorrelation(l))
        seen.append([addr(l) for l in range(net.n_layers)])
    assert seen[3] == seen[1] and seen[2] == seen[0]             # reused while unheld
    np.testing.assert_array_equal(held, kept)
    held_addr = held.__array_interface__["data"][0]
    assert all(s[0] != held_addr for s in seen[4:])              # never written while held
    assert seen[6][1:] == seen[4][1:]                            # the other layers still reuse


def test_an_unheld_weight_matrix_is_updated_in_place_with_the_same_bits():
    net = noisesim.Network.mlp([6, 4], seed=0, backend="numpy")
    tile = net.tiles[0]
    d = np.random.default_rng(5).standard_normal((4, 6)).astype(np.float32)
    held = tile.weights()
    kept = held.copy()
    tile.apply(d)
    np.testing.assert_array_equal(held, kept)                 # a caller's W is never changed
    np.testing.assert_array_equal(tile.weights(), kept + d)
    del held
    addr = tile.weights().__array_interface__["data"][0]
    expect = tile.weights() + d
    tile.apply(d)
    assert tile.weights().__array_interface__["data"][0] == addr
    np.testing.assert_array_equal(tile.weights(), expect)


# The DAC kernel as it was before its quantising mode converted straight from the input (a
# copy of the row, then the converter in place): kept here, with the module's flags, as the
# reference the kernel must match bit for bit.
@numba.njit(cache=False, error_model="numpy", fastmath={"reassoc", "nsz", "arcp", "contract"})
def _dac_absmax_reference(x, bits, mask, out, scale, scale_bits, sumsq, chunk, mode, half, step, bound):
    one = x.dtype.type(1.0)
    s_, b = x.dtype.type(step), x.dtype.type(bound)
    for i in range(x.shape[0]):
        m = bits[i, 0] & mask
        for j in range(1, x.shape[1]):
            v = bits[i, j] & mask
            m = v if v > m else m
        scale_bits[i] = m
        if scale[i] == 0:
            scale[i] = one
        row = out[i]
        for j in range(x.shape[1]):
            row[j] = x[i, j]
        _kernels._convert_inplace(row, one / scale[i], one, mode, half, s_, b)
        for c in range(sumsq.shape[1]):
            part = row[c * chunk:c * chunk + chunk]
            acc = 0.0
            for j in range(part.shape[0]):
                acc += part[j] * part[j]
            sumsq[i, c] = acc


def _dac_reference(x, bits, bound, chunk=None):
    mode, half, step, b = _kernels.converter_params(bits, bound)
    n = x.shape[1]
    chunk = n if chunk is None or chunk >= n else chunk
    out = np.empty_like(x)
    scale = np.empty(x.shape[0], x.dtype)
    sumsq = np.empty((x.shape[0], -(-n // chunk)), x.dtype)
    ints = np.dtype(f"int{8 * x.itemsize}")
    _dac_absmax_reference(x, x.view(ints), ints.type(np.iinfo(ints).max), out, scale, scale.view(ints), sumsq,
                          max(chunk, 1), mode, half, step, b)
    return out, scale, sumsq


def _rows_with_specials(r, rows, n, dtype):
    """Random rows of widely varying magnitude, with all-zero rows, NaN and ±Inf rows (some
    with a NaN of another payload or sign) and rows whose maximum is subnormal or tiny."""
    x = (r.standard_normal((rows, n)) * np.exp(r.uniform(-8, 8, (rows, 1)))).astype(dtype)
    x[r.random((rows, n)) < 0.1] = 0
    x[1] = 0
    x[2, r.integers(n)] = np.nan
    x[3, r.integers(n)] = np.inf
    x[4, r.integers(n)] = -np.inf
    x[5, r.integers(n)] = -np.nan
    x[6] *= np.finfo(dtype).tiny                     # subnormal and tiny maxima: 1/s overflows
    x[7] = np.finfo(dtype).smallest_subnormal * r.integers(-3, 4, n)
    x[8, :] = -x[8, :]
    if n > 1:
        bad = np.array(np.nan, dtype).view(f"u{x.itemsize}") | 1           # a NaN with a payload
        x[9, r.integers(n)] = bad.view(dtype)
        x[9, r.integers(n)] = np.inf
    return x


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bits, bound", [(8, 1.0), (4, 2.5), (16, 1.0), (None, 1.0), (1, 1.0), (None, None)])
def test_dac_absmax_gives_the_previous_kernel_s_bits(dtype, bits, bound):
    """``(x̂, s, Σ x̂²)`` of :func:`noisesim._kernels.dac_absmax` against the kernel it replaced,
    bit for bit, for every converter mode, widths 1 … 300, per row and per chunk, with NaN,
    ±Inf, zero, subnormal and tiny rows."""
    r = np.random.default_rng(7)
    for n in range(1, 301):
        x = _rows_with_specials(r, 12, n, dtype)
        for chunk in (None, 16, 27, 512):
            with np.errstate(all="ignore"):
                got = _kernels.dac_absmax(x, bits, bound, chunk=chunk)
                ref = _dac_reference(x, bits, bound, chunk)
            sq = got[2] if chunk is not None else got[2][:, None]
            for g, e in zip((got[0], got[1], sq), ref):
                assert g.dtype == e.dtype and g.shape == e.shape
                np.testing.assert_array_equal(g.view(np.uint8), e.view(np.uint8), err_msg=f"n={n} chunk={chunk}")


@pytest.mark.parametrize("dtype", DTYPES)
def test_dac_absmax_quantiser_gives_the_numpy_expression_s_bits(dtype):
    """The 8-bit quantising DAC of finite rows against plain NumPy: ``s = max|x|`` (1 for a zero
    row), ``x̂ = Δ·clip(rint((x·(1/s))·(1/Δ)), −127, 127)`` (the kernel divides by Δ as a product
    with its reciprocal) and, for float32, ``Σ x̂²`` of float32 squares summed in float64."""
    r = np.random.default_rng(8)
    t = np.dtype(dtype).type
    mode, half, step, _ = _kernels.converter_params(8, 1.0)
    for n in (1, 2, 7, 16, 27, 33, 144, 288, 300):
        x = (r.standard_normal((500, n)) * np.exp(r.uniform(-5, 5, (500, 1)))).astype(dtype)
        x[::17] = 0
        out, s, sq = _kernels.dac_absmax(x, 8, 1.0)
        m = np.abs(x).max(axis=1)
        m[m == 0] = 1
        np.testing.assert_array_equal(s, m)
        k = np.clip(np.rint((x * (t(1) / m)[:, None]) * (t(1) / t(step))), -half, half)
        np.testing.assert_array_equal(out, k * t(step))
        if dtype == np.float32:                          # float32 squares: the float64 sum is exact
            np.testing.assert_array_equal(sq, (out * out).astype(np.float64).sum(axis=1).astype(np.float32))


# The keyed epilogue's short-row driver as it was before its quantising tail ran in one loop
# over the block's normals (each row through _tail_row, with row views of the block): the
# reference the kernels must match bit for bit.
@numba.njit(cache=False, error_model="numpy")
def _keyed_short_reference(a, out, rkey, rs, nkey, ns, inj, post, gain, has_r, has_n, has_inj, has_post, acc,
                           mode, half, step, bound, row0):
    s, b, g = a.dtype.type(step), a.dtype.type(bound), a.dtype.type(gain)
    n = a.shape[1]
    G = max(1, _kernels._BLOCK // max(n, 1))
    w, ZR, ZN, bits, tail = _kernels._block_scratch(G, n, a.dtype)
    one, zero_ = a.dtype.type(1.0), a.dtype.type(0.0)
    for i0 in range(0, a.shape[0], G):
        Gq = min(G, a.shape[0] - i0)
        if has_r:
            _kernels._fill_rows(ZR, bits, tail, rkey, row0 + i0, Gq)
        if has_n:
            _kernels._fill_rows(ZN, bits, tail, nkey, row0 + i0, Gq)
        for q in range(Gq):
            i = i0 + q
            _kernels._tail_row(a, out, i, w, ZR[q], rs[i] if has_r else zero_, ZN[q], ns[i] if has_n else zero_,
                               inj, has_inj, g, post[i] if has_post else one, acc, mode, half, s, b)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bits, bound", [(8, 10.0), (4, 1.0), (None, 3.0), (1, 1.0), (None, None)])
def test_keyed_short_rows_give_the_previous_kernel_s_bits(dtype, bits, bound):
    """The keyed epilogue on rows shorter than ``_SHORT_ROW`` (a convolution's reads), serial
    and parallel, against its previous short-row driver, bit for bit: every converter mode,
    read and node noise on and off, injection, accumulation, row offsets, widths 1 … 127, with
    NaN, ±Inf and zero in the analog outputs and in the per-row factors."""
    mode, half, step, b = _kernels.converter_params(bits, bound)
    r = np.random.default_rng(9)
    e1, e2 = np.zeros(0, dtype), np.zeros((0, 0), dtype)
    widths = list(range(1, 20)) + [27, 31, 32, 33, 63, 64, 100, 127]
    for n in widths:
        M = int(r.integers(1, 3 * _kernels._BLOCK // n + 3))
        A = (r.standard_normal((M, n)) * 4).astype(dtype)
        A.flat[r.integers(A.size, size=3)] = [np.nan, np.inf, -np.inf]
        A[r.integers(M)] = 0
        rs = r.uniform(0, 2, M).astype(dtype)
        ns = r.uniform(0, 1, M).astype(dtype)
        post = r.uniform(-3, 3, M).astype(dtype)
        post[r.integers(M)] = np.inf
        inj = r.standard_normal((M, n)).astype(dtype)
        base = r.standard_normal((M, n)).astype(dtype)
        for has_r, has_n, has_inj, has_post, acc in [(True, False, False, True, False), (True, True, True, True, True),
                                                     (False, True, False, False, True), (True, True, False, True, False),
                                                     (False, False, True, False, False)]:
            row0 = int(r.integers(0, 1000))
            args = (np.uint64(2 ** 63 + n), rs if has_r else e1, np.uint64(n * 7 + 1), ns if has_n else e1,
                    inj if has_inj else e2, post if has_post else e1, 0.73, has_r, has_n, has_inj, has_post, acc,
                    mode, half, step, b)
            with np.errstate(all="ignore"):
                ref_a, ref_o = A.copy(), base.copy()
                _keyed_short_reference(ref_a, ref_o if acc else ref_a, *args, row0)
                for fn in (_kernels._keyed_ser, _kernels._keyed_par):
                    got_a, got_o = A.copy(), base.copy()
                    fn(got_a, got_o if acc else got_a, *args, row0)
                    np.testing.assert_array_equal(got_a.view(np.uint8), ref_a.view(np.uint8), err_msg=f"n={n}")
                    np.testing.assert_array_equal(got_o.view(np.uint8), ref_o.view(np.uint8), err_msg=f"n={n}")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("count", [1, 3, 1000, 99_991, 2 ** 24 + 1, 10 ** 9 + 7])
def test_divide_all_finite_gives_numpy_s_bits(dtype, count):
    """``x /= count`` in the same pass that finds NaN/Inf: the bits of NumPy's in-place
    division for every magnitude, and ``False`` exactly when the result is not finite."""
    r = np.random.default_rng(count % 1000)
    for shape in [(1,), (4097,), (300, 70), (2, 3, 5)]:
        x = (r.standard_normal(shape) * 10.0 ** r.uniform(-30, 30, shape)).astype(dtype)
        ref = x.copy()
        ref /= count
        assert _kernels.divide_all_finite(x, count) is True
        np.testing.assert_array_equal(x.view(np.uint8), ref.view(np.uint8))
    for bad in (np.nan, np.inf, -np.inf):
        x = np.ones(10_000, dtype)
        x[r.integers(10_000)] = bad
        assert _kernels.divide_all_finite(x, count) is False
    x = np.full(9, np.finfo(dtype).max, dtype)
    assert _kernels.divide_all_finite(x, 0.5) is False          # finite in, overflowing out
    y = np.ones((4, 6), dtype)[:, ::2]                          # not contiguous: NumPy's path
    assert _kernels.divide_all_finite(y, 4) is True and (y == dtype(0.25)).all()


def test_a_perturbation_estimate_vouches_for_its_finite_updates_only():
    """ANP, NP and INP hand the guard the updates their division found finite (so the guard
    does not pass over them again); sums with a NaN are not vouched for; an update replaced
    after the estimate is checked again and stops the step."""
    import rules
    from rules.base import DivergenceGuard
    from rules.perturbation import Contraction
    from noisesim.errors import DivergenceError
    dev = noisesim.DeviceConfig.preset("ideal")
    r = np.random.default_rng(0)
    x = r.standard_normal((16, 6)).astype(np.float32)
    t = np.eye(3, dtype=np.float32)[r.integers(0, 3, 16)]
    for name in ("anp", "np", "inp"):
        net = noisesim.Network.mlp([6, 5, 3], device=dev, seed=0, backend="numpy")
        rule = rules.make(name, lr=1e-3)
        rule.init(net)
        est = rule.estimate(net, x, t)
        assert len(est.finite) == net.n_layers and all(f is u for f, u in zip(est.finite, est.updates))
        DivergenceGuard(max_loss_ratio=None, step=None, scales=False).check(rule, est)
        est.updates[1] = est.updates[1] * np.float32("nan")
        with pytest.raises(DivergenceError, match="update of layer 1"):
            DivergenceGuard(max_loss_ratio=None, step=None, scales=False).check(rule, est)
    acc = Contraction(2)
    acc.add(0, np.ones((1, 4, 3), np.float32), np.ones((1, 4, 2), np.float32))
    acc.add(1, np.full((1, 4, 3), np.nan, np.float32), np.ones((1, 4, 2), np.float32))
    acc.result(4)
    assert acc.finite is False


@pytest.mark.parametrize("dtype", DTYPES)
def test_difference_sumsq_gives_numpy_s_bits(dtype):
    """``out = f − s`` and each row's ``Σ out²`` in one pass: the bits of NumPy's subtraction
    and of its pairwise ``(out * out).sum(axis=1)``, for widths on both sides of every block
    boundary of its summation, in place and not; NaN and Inf rows as NumPy gives them."""
    r = np.random.default_rng(5)
    for n in [0, 1, 7, 8, 9, 127, 128, 129, 136, 255, 256, 257, 300, 1023, 1024, 1025, 3082, 70001]:
        f, s = (r.standard_normal((6, n)) * r.uniform(0.01, 100, (6, 1))).astype(dtype), r.standard_normal((6, n)).astype(dtype)
        if n:
            f[2, n // 2] = np.nan
            f[3, 0] = np.inf
        with np.errstate(invalid="ignore", over="ignore"):
            ref = f - s
            sums = (ref * ref).sum(axis=1)
            out, got = _kernels.difference_sumsq(f, s)
            np.testing.assert_array_equal(out.view(np.uint8), ref.view(np.uint8))
            np.testing.assert_array_equal(got.view(np.uint8), sums.view(np.uint8))
            g = f.copy()
            out, got = _kernels.difference_sumsq(g, s, out=g)
        assert out is g
        np.testing.assert_array_equal(g.view(np.uint8), ref.view(np.uint8))
        np.testing.assert_array_equal(got.view(np.uint8), sums.view(np.uint8))
    with pytest.raises(ValueError, match="shapes"):
        _kernels.difference_sumsq(np.zeros((2, 3), dtype), np.zeros((1, 3), dtype))


@pytest.mark.parametrize("shape", [(1000, 1024), (100, 10), (50, 6, 6, 4)])
@pytest.mark.parametrize("clean", [False, True])
def test_activity_differences_give_the_bits_of_the_numpy_expressions(shape, clean):
    """ANP's ``δa`` of a part's passes and ``‖δa‖²`` per sample over the layers, in place over
    the first pass of each pair: the bits of ``a[0::2] − a[1::2]`` (or ``a[s:] − a0``) and
    ``Σ_l sample_sum(δa_l²)``, dense and convolutional shapes alike."""
    from noisesim.layers import sample_sum
    from rules.activity import _pair_differences

    r = np.random.default_rng(6)
    pre = [r.standard_normal((5 if clean else 4, *shape)).astype(np.float32) for _ in range(2)]
    pre.append(r.standard_normal((5 if clean else 4, shape[0], 10)).astype(np.float32))
    if clean:
        ref = [a[0].copy() for a in pre]
        want = [a[1:] - r0 for a, r0 in zip(pre, ref)]
    else:
        ref = None
        want = [a[0::2] - a[1::2] for a in pre]
    norm2 = sum(sample_sum(d * d) for d in want)
    keep = [a.copy() for a in pre]
    da, got = _pair_differences(pre, 1 if clean else 0, ref, in_place=False)
    for a, b in zip(pre, keep):                     # not in place: the passes are untouched
        np.testing.assert_array_equal(a, b)
    da2, got2 = _pair_differences(pre, 1 if clean else 0, ref, in_place=True)
    for d, d2, w in zip(da, da2, want):
        np.testing.assert_array_equal(d.view(np.uint32), w.view(np.uint32))
        np.testing.assert_array_equal(d2.view(np.uint32), w.view(np.uint32))
    for a, d2 in zip(pre, da2):                     # in place: over the first pass of each pair
        assert np.shares_memory(a, d2)
    np.testing.assert_array_equal(got.view(np.uint32), norm2.view(np.uint32))
    np.testing.assert_array_equal(got2.view(np.uint32), norm2.view(np.uint32))


def test_adam_adds_its_step_to_weights_nobody_holds_with_the_bits_of_apply_update(monkeypatch):
    """A rule's Adam step goes straight into the weights of unmapped NumPy tiles (no array of
    deltas): the same bits as ``apply_update(l, delta)``, in the same array; weights someone
    holds are left as they were, and the update still lands."""
    import rules

    def trained(in_place: bool, hold: bool = False):
        net = noisesim.Network.mlp([12, 16, 3], device=noisesim.DeviceConfig.preset("ideal"), seed=4, backend="numpy")
        if not in_place:
            monkeypatch.setattr(net, "update_in_place", lambda l: None)
        rule = rules.make("danp", baseline="noisy", lr=1e-2, alpha=1e-3)
        rule.init(net)
        r = np.random.default_rng(3)
        w0 = [id(t._w) for t in net.tiles]                   # ids: a reference would hold W
        applied = []
        apply_update = net.apply_update
        monkeypatch.setattr(net, "apply_update", lambda l, d, **kw: (applied.append(l), apply_update(l, d, **kw)))
        held = net.tiles[0].weights().copy() if hold else None
        holder = net.tiles[0].weights() if hold else None
        for _ in range(3):
            rule.step(net, r.standard_normal((20, 12)).astype(np.float32), np.eye(3, dtype=np.float32)[r.integers(0, 3, 20)])
        if hold:
            np.testing.assert_array_equal(holder, held)          # the caller's array is untouched
        # the step went into the weights without apply_update, except where W was held
        assert set(applied) == (set(range(net.n_layers)) if not in_place else {0} if hold else set())
        return net, w0

    fused, w_fused = trained(True)
    plain, _ = trained(False)
    held, _ = trained(True, hold=True)
    for l in range(fused.n_layers):
        assert id(fused.tiles[l]._w) == w_fused[l]               # written in place
        np.testing.assert_array_equal(fused.tiles[l]._w.view(np.uint32), plain.tiles[l]._w.view(np.uint32))
        np.testing.assert_array_equal(held.tiles[l]._w.view(np.uint32), plain.tiles[l]._w.view(np.uint32))
    assert net_in_place_is_none_when_mapped()


def net_in_place_is_none_when_mapped() -> bool:
    net = noisesim.Network.mlp([4, 3], device=noisesim.DeviceConfig.preset("pcm"), seed=0, backend="numpy")
    return net.update_in_place(0) is None
