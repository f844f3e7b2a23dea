"""Gaussian noise generated inside Numba kernels (CPU only).

A read's noise is drawn where it is used, in the fused epilogue, instead of being written
to a buffer by NumPy and read back: several times cheaper per number and free of memory
traffic. Each call takes one 64-bit *key* from a named stream
(:meth:`noisesim.backend.Generator.key`), so streams stay independent and reproducible.

Generator: SplitMix64 (Steele, Lea & Flood 2014) as a counter-based sequence per row,
``s_i = mix(key ⊕ mix(i·c₁ + γ))``. Hash ``m`` of row ``i`` is ``mix(s_i + (m+1)·γ)``; its
low 32 bits drive element ``m`` and its high 32 bits element ``m + ⌈n/2⌉`` of the row —
rows and elements are independent of the order they run in, so the parallel and serial
drivers give identical numbers.

Normals: the ziggurat of Marsaglia & Tsang (2000) with 1024 layers (``R = 4.038849846109504``,
``V = 1.2263246463530893e-3``, solved here as they solve the 256-layer constants; the
256-layer solve reproduces their ``R = 3.6541528853610088``). Of an element's 32 bits, the
low 10 pick the layer and the high 22 (signed) the abscissa ``x = u·x_k``, ``u ∈ [-1, 1)``
on a grid of 2⁻²¹: ample for noise and exact in distribution up to that grid. The table is rounded to float32
once and every test (fast, wedge, tail) uses the rounded values, so the layers stay a
consistent partition (their areas differ from equal by ~1e-7). A row is drawn in passes:
all hashes at once and all fast tests at once (loops the compiler vectorises); the ~0.4 %
of draws that fail the fast test continue the same algorithm — the wedge test, Marsaglia's
(1964) exact tail beyond ``R``, or after a wedge rejection a fresh draw — with extra
uniforms from a sub-sequence seeded per element by ``mix((s_i ⊕ c₂) + (j+1)·γ)``. About
1 ns a number. Checked against the normal CDF and its moments in ``tests/test_kernels.py``.
"""
from __future__ import annotations

import math

import numba
import numpy as np

_LAYERS = 1024
_R = 4.038849846109504
_V = 1.2263246463530893e-3


def _tables():
    f = lambda x: math.exp(-0.5 * x * x)
    xs = np.zeros(_LAYERS + 1)
    xs[0], xs[1] = _V / f(_R), _R
    for i in range(1, _LAYERS - 1):
        xs[i + 1] = math.sqrt(-2.0 * math.log(f(xs[i]) + _V / xs[i]))
    xs[_LAYERS] = 0.0
    fx = np.exp(-0.5 * xs * xs)
    return xs, fx


_XS_EXACT, _ = _tables()
# The float32 table every test uses, its float64 copy (the slow path) and f at its points.
XS32 = _XS_EXACT.astype(np.float32)
XS = XS32.astype(np.float64)
FX = np.exp(-0.5 * XS * XS)

_GAMMA = np.uint64(0x9E3779B97F4A7C15)
_C1 = np.uint64(0xBF58476D1CE4E5B9)
_C2 = np.uint64(0x94D049BB133111EB)
_ROW = np.uint64(0xD1B54A32D192ED03)
_S30, _S27, _S31, _S11 = np.uint64(30), np.uint64(27), np.uint64(31), np.uint64(11)
_MK = np.uint64(_LAYERS - 1)
_M32 = np.uint64(0xFFFFFFFF)
_S32 = np.uint64(32)
_SUB = np.uint64(0x632BE59BD9B4E019)
_U53 = 2.0 ** -53


@numba.njit(cache=True, inline="always")
def _mix(z):
    z = (z ^ (z >> _S30)) * _C1
    z = (z ^ (z >> _S27)) * _C2
    return z ^ (z >> _S31)


@numba.njit(cache=True, inline="always")
def row_state(key, i):
    """The starting counter of row ``i`` for a call keyed ``key``."""
    return _mix(key ^ _mix(np.uint64(i) * _ROW + _GAMMA))


@numba.njit(cache=True, inline="always")
def uniform(s):
    """``(s', u)``: one uniform on (0, 1) from counter ``s``."""
    s += _GAMMA
    return s, (np.float64(_mix(s) >> _S11) + 0.5) * _U53


@numba.njit(cache=True, inline="always", error_model="numpy")
def normal(s, xs, fx):
    """``(s', z)``: one standard normal from counter ``s`` (ziggurat, exact tail)."""
    while True:
        s += _GAMMA
        r = _mix(s)
        i = np.int64(r & _MK)
        u = np.float64(r >> _S11) * (2.0 * _U53) - 1.0             # in [-1, 1)
        x = u * xs[i]
        if abs(x) < xs[i + 1]:
            return s, x
        if i == 0:                                                 # the tail |x| > R
            while True:
                s, u1 = uniform(s)
                s, u2 = uniform(s)
                a = -math.log(u1) / _R
                if -2.0 * math.log(u2) > a * a:
                    return s, (_R + a) if u > 0 else -(_R + a)
        s, u3 = uniform(s)
        if fx[i] + u3 * (fx[i + 1] - fx[i]) < math.exp(-0.5 * x * x):
            return s, x


@numba.njit(cache=True, error_model="numpy")
def _finish(k, x, s, xs, fx):
    """The rest of the ziggurat for a draw of layer ``k`` and abscissa ``x`` that failed the
    fast test: the tail (layer 0), else the wedge test, else a fresh draw; extra uniforms come
    from the sub-sequence ``s``."""
    if k == 0:
        while True:
            s, u1 = uniform(s)
            s, u2 = uniform(s)
            a = -math.log(u1) / _R
            if -2.0 * math.log(u2) > a * a:
                return (_R + a) if x > 0 else -(_R + a)
    s, u3 = uniform(s)
    if fx[k] + u3 * (fx[k + 1] - fx[k]) < math.exp(-0.5 * x * x):
        return x
    s, z = normal(s, xs, fx)
    return z


@numba.njit(cache=True, inline="always", error_model="numpy")
def fill_row(z, bits, flags, key, i, xs32, xs, fx):
    """``z`` (1-D) ← the standard normals of row ``i`` for a call keyed ``key``.

    Scratch: ``bits`` uint32 of ``2⌈n/2⌉`` elements, ``flags`` uint64 of ``⌈n/8⌉`` (zeroed
    once, see :func:`scratch`); ``xs32``, ``xs``, ``fx`` are :data:`XS32`, :data:`XS`, :data:`FX`.
    """
    s = row_state(key, i)
    n = z.shape[0]
    h = (n + 1) // 2
    for m in range(h):                                   # vectorised: the hashes
        r = _mix(s + np.uint64(m + 1) * _GAMMA)
        bits[m] = np.uint32(r & _M32)
        bits[m + h] = np.uint32(r >> _S32)
    rejected = flags.view(np.uint8)
    for j in range(n):                                   # vectorised: the fast test
        r = bits[j]
        k = r & np.uint32(_LAYERS - 1)
        x = np.float32(np.int32(r) >> np.int32(10)) * np.float32(2.0 ** -21) * xs32[k]
        z[j] = x
        rejected[j] = abs(x) >= xs32[k + np.uint32(1)]
    t = s ^ _SUB
    for w in range(flags.shape[0]):                      # the few that failed, 8 at a time
        if flags[w]:
            for j in range(8 * w, min(8 * w + 8, n)):
                if rejected[j]:
                    k = np.int64(bits[j] & np.uint32(_LAYERS - 1))
                    sub = _mix(t + np.uint64(j + 1) * _GAMMA)
                    z[j] = _finish(k, np.float64(np.float32(z[j])), sub, xs, fx)


@numba.njit(cache=True, inline="always")
def scratch(n):
    """Row scratch for :func:`fill_row`: ``(bits, flags)`` for rows of ``n`` elements."""
    return np.empty(2 * ((n + 1) // 2), np.uint32), np.zeros((n + 7) // 8, np.uint64)


@numba.njit(cache=True, error_model="numpy")
def _fill_normal(out, key, xs32, xs, fx):
    z = np.empty(out.shape[1], out.dtype)
    bits, flags = scratch(out.shape[1])
    for i in range(out.shape[0]):
        fill_row(z, bits, flags, key, i, xs32, xs, fx)
        for j in range(out.shape[1]):
            out[i, j] = z[j]


def fill_normal(out, key) -> None:
    """``out`` (2-D, float32 or float64) filled with standard normals, row ``i`` as
    :func:`fill_row` draws it for ``key``."""
    _fill_normal(out, np.uint64(key), XS32, XS, FX)
