"""The Numba im2col/col2im kernels behind ``Layer.unfold``/``Layer.fold`` against the plain
array code kept for CuPy: the same arrays, bit for bit, for 1-D and 2-D layers with strides,
padding and channel counts, in float32 and float64, through the serial and parallel drivers."""
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
def test_fast_unfold_and_fold_equal_the_plain_path(shape, spec, dtype):
    lay = build(shape, spec)[0]
    rng = np.random.default_rng(len(spec))
    N = 3
    h = rng.standard_normal((N, int(np.prod(shape)))).astype(dtype)
    fast, plain = lay.unfold(h), lay.unfold_plain(h)
    assert fast.shape == plain.shape == (N, *lay.positions, lay.width) and fast.dtype == plain.dtype == dtype
    np.testing.assert_array_equal(fast, plain)
    d = rng.standard_normal((N, *lay.positions, lay.width)).astype(dtype)
    fast, plain = lay.fold(d), lay.fold_plain(d)
    assert fast.shape == plain.shape == (N, *shape) and fast.dtype == dtype
    np.testing.assert_array_equal(fast, plain)          # the same sums in the same order


def test_inputs_that_are_not_contiguous_and_flat_gradients():
    lay = build((9, 7, 2), "c3x3x4s2p1")[0]
    rng = np.random.default_rng(0)
    h = rng.standard_normal((4, 9, 7, 4))[..., ::2].astype(np.float32)       # a strided view
    np.testing.assert_array_equal(lay.unfold(h), lay.unfold_plain(h))
    d = rng.standard_normal((4, int(np.prod(lay.positions)) * lay.width))    # flat per sample
    np.testing.assert_array_equal(lay.fold(d), lay.fold_plain(d))


def test_parallel_and_serial_drivers_agree():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((5, 9, 7 * 2)).astype(np.float32)
    geo = (2, 3, 3, 3, 2, 1, 1)          # C, kh, kw, sh, sw, ph, pw
    Ho, Wo = (9 + 2 - 3) // 2 + 1, (7 + 2 - 3) // 1 + 1
    a, b = (np.full((5, Ho, Wo, 18), np.nan, np.float32) for _ in range(2))
    _kernels._im2col_ser(x, a, *geo)
    _kernels._im2col_par(x, b, *geo)
    np.testing.assert_array_equal(a, b)
    d = rng.standard_normal((5, Ho, Wo, 18)).astype(np.float32)
    a, b = (np.full((5, 9, 14), np.nan, np.float32) for _ in range(2))
    _kernels._col2im_ser(d, a, *geo)
    _kernels._col2im_par(d, b, *geo)
    np.testing.assert_array_equal(a, b)


def test_arrays_of_the_cupy_path_take_the_plain_code(monkeypatch):
    lay = build((8, 8, 2), "c3x3x4s2p1")[0]
    h = np.random.default_rng(2).standard_normal((2, 128)).astype(np.float32)
    calls = []
    monkeypatch.setattr(_kernels, "im2col", lambda *a: calls.append("im2col"))
    monkeypatch.setattr(_kernels, "col2im", lambda *a: calls.append("col2im"))
    monkeypatch.setattr(_kernels, "_CUPY_PATH_ON_NUMPY", True)
    u = lay.unfold(h)
    g = lay.fold(u)
    assert calls == [] and u.shape == (2, 4, 4, 18) and g.shape == (2, 8, 8, 2)
