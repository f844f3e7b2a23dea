"""The Numba col2im kernel behind ``Layer.fold`` against the array code kept for CuPy
(``Layer.fold_plain``): the same arrays, bit for bit, for 1-D and 2-D layers with strides,
padding and channel counts, in float32 and float64; and still the adjoint of ``Layer.unfold``."""
import numpy as np
import pytest

from noisesim import _kernels
from noisesim.layers import build

GEOMETRIES = [
    ((12, 2), "c3x4"), ((13, 3), "c5x2s2p1"), ((11, 1), "c4x3s3p2"), ((7, 5), "c7x3"), ((6, 2), "c3x2p3"),
    ((8, 8, 1), "c3x3x5"), ((9, 7, 2), "c3x3x4s2p1"), ((10, 10, 3), "c5x3x2s2x1"), ((32, 32, 3), "c3x3x16s2"),
    ((15, 15, 16), "c3x3x32s2"), ((7, 7, 32), "c3x3x64"), ((64, 64, 3), "c5x5x32s2"), ((5, 6, 3), "c5x6x2"),
    ((6, 6, 1), "c2x3x1s1x2"), ((4, 5, 2), "c3x3x2s3p2"), ((9, 9, 4), "c1x1x3"), ((5, 5, 2), "c3x3x2s1x2p2x0"),
]


@pytest.mark.parametrize("shape,spec", GEOMETRIES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_fast_fold_equals_the_array_code(shape, spec, dtype):
    lay = build(shape, spec)[0]
    rng = np.random.default_rng(len(spec))
    N = 3
    d = rng.standard_normal((N, *lay.positions, lay.width)).astype(dtype)
    fast, plain = lay.fold(d), lay.fold_plain(d)
    assert fast.shape == plain.shape == (N, *shape) and fast.dtype == plain.dtype == dtype
    np.testing.assert_array_equal(fast, plain)          # the same sums in the same order
    h = rng.standard_normal((N, *shape)).astype(np.float64)
    u = lay.unfold(h)
    assert u.shape == (N, *lay.positions, lay.width)
    assert np.isclose(np.sum(u * d), np.sum(h * fast))   # the adjoint of unfold


def test_gradients_that_are_not_contiguous_or_flat():
    lay = build((9, 7, 2), "c3x3x4s2p1")[0]
    rng = np.random.default_rng(0)
    d = rng.standard_normal((4, *lay.positions, 2 * lay.width))[..., ::2].astype(np.float32)   # strided
    np.testing.assert_array_equal(lay.fold(d), lay.fold_plain(d))
    d = rng.standard_normal((4, int(np.prod(lay.positions)) * lay.width))                       # flat per sample
    np.testing.assert_array_equal(lay.fold(d), lay.fold_plain(d))


def test_arrays_of_the_cupy_path_take_the_array_code(monkeypatch):
    lay = build((8, 8, 2), "c3x3x4s2p1")[0]
    d = np.random.default_rng(2).standard_normal((2, 4, 4, 18)).astype(np.float32)
    calls = []
    monkeypatch.setattr(_kernels, "col2im", lambda *a: calls.append("col2im"))
    monkeypatch.setattr(_kernels, "_CUPY_PATH_ON_NUMPY", True)
    g = lay.fold(d)
    assert calls == [] and g.shape == (2, 8, 8, 2)


@pytest.mark.parametrize("n", [1, 7, 16, 33, 64, 127, 128, 300])
@pytest.mark.parametrize("parallel", [False, True])
def test_the_keyed_epilogue_draws_each_rows_normals_whatever_the_row_width(n, parallel):
    """Short rows (a convolution's reads) draw their normals a block of rows at a time: the
    numbers are still row ``row0 + i``'s of the key, as the row-by-row generator draws them."""
    from noisesim import _kernels, _rng_numba
    rows, row0 = 301, 17
    rng = np.random.default_rng(n)
    a = rng.standard_normal((rows, n)).astype(np.float32)
    rs = rng.uniform(0.1, 1, rows).astype(np.float32)
    ns = rng.uniform(0.1, 1, rows).astype(np.float32)
    zr = np.empty((row0 + rows, n), np.float32)
    zn = np.empty((row0 + rows, n), np.float32)
    _rng_numba._fill_normal(zr, np.uint64(11))
    _rng_numba._fill_normal(zn, np.uint64(23))
    want = a + rs[:, None] * zr[row0:] + ns[:, None] * zn[row0:]
    got = a.copy()
    kernel = _kernels._keyed_par if parallel else _kernels._keyed_ser
    mode, half, step, bound = _kernels.converter_params(None, None)
    kernel(got, got, np.uint64(11), rs, np.uint64(23), ns, a[:0, :0], a[0, :0], 1.0, True, True, False, False,
           False, mode, half, step, bound, row0)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
