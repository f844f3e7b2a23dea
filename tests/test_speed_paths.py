"""The fused CPU kernels and reused buffers of a training step against the plain NumPy
expressions they replace: the same bits, and no array a caller holds is ever overwritten."""
from __future__ import annotations

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
