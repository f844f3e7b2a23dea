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

Normals by inversion. Of an element's 32 bits the top one is the sign and the low 31 give
``q = (m + ½)·2⁻³¹ ∈ (0, 1)``; then ``|z| = Φ⁻¹(1 − q/2) = √2·erfinv(1 − q)``. In Giles's
(2010) variable ``w = −log(q(2 − q))`` this is ``|z| = (1 − q)·P(w)`` with ``P`` smooth:
``P_c(w − 4)`` (degree 10) for ``w < 8`` — 99.98 % of draws — and ``P_t(√w − 3.5)``
(degree 8) beyond. Both polynomials are our least-squares fits, in relative error, to
``√2·erfinv(x)/x`` on 400 001 points (max relative error 2.4e-7 and 3.4e-8 with the
float32 coefficients below); the logarithm is the exponent (a bit cast) plus a fitted
polynomial of the mantissa on ``[1/√2, √2)``; ``1 − q`` comes from the integers (no
cancellation near ``q = 1``).
Everything is float32, fused multiply-adds and selects, so the loop over a row vectorises
(the table lookups of a ziggurat did not: no gathers on this CPU family). The few tail
draws are finished in a second, scalar pass. The largest ``|z|`` is ``Φ⁻¹(1 − 2⁻³³) ≈ 6.34``
(the normal mass beyond it is 2e-10). About 1 ns a
number; checked against ``scipy.special.ndtri`` (the transform, ≤ 1e-6 relative) and the
normal distribution (moments, CDF, tails) in ``tests/test_kernels.py``.

Numba caches the keyed epilogue of :mod:`noisesim._kernels`, which inlines :func:`fill_row`,
by ``_kernels.py``'s own time stamp: after editing this file, touch ``_kernels.py`` too (a
test compares the epilogue's noise with :func:`fill_normal` and fails on a stale cache).
"""
from __future__ import annotations

import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.extending import intrinsic

_GAMMA = np.uint64(0x9E3779B97F4A7C15)
_C1 = np.uint64(0xBF58476D1CE4E5B9)
_C2 = np.uint64(0x94D049BB133111EB)
_ROW = np.uint64(0xD1B54A32D192ED03)
_S30, _S27, _S31 = np.uint64(30), np.uint64(27), np.uint64(31)
_M32 = np.uint64(0xFFFFFFFF)
_S32 = np.uint64(32)

_F = np.float32
_LN2 = _F(0.6931471805599453)
_SQRT_HALF_BITS = np.int32(0x3504F3)       # mantissa bits of √2: above them m ∈ [√2, 2)
# |z| = (1 − q)·P(w): central P_c(w − 4) for w < 8, tail P_t(√w − 3.5), highest power first
_PC = tuple(_F(c) for c in (
    5.680901860039e-10, -5.951669712622731e-10, -4.9936847545950513e-08, 2.9352472097343707e-07,
    7.160080031098914e-07, -2.2203574189916253e-05, 0.000167977181263268, -0.00028779765125364065,
    -0.010211859829723835, 0.3229418098926544, 2.6287105083465576))
_PT = tuple(_F(c) for c in (
    6.4810250478331e-05, -0.0002980709832627326, 0.0006367823807522655, -0.0009780359687283635,
    0.0015400868142023683, -0.0029140934348106384, 0.004634731914848089, 1.4246344566345215,
    4.7170891761779785))
W_SPLIT = _F(8.0)
# log(1 + f) = f·L(f) on f ∈ [1/√2 − 1, √2 − 1): our least-squares fit, |error| ≤ 1.6e-7
_LOG1P = tuple(_F(c) for c in (
    -0.10006895661354065, 0.16033567488193512, -0.1720845252275467, 0.1992073357105255,
    -0.24974703788757324, 0.3333449065685272, -0.5000027418136597, 0.9999999403953552))


@intrinsic
def _f32_bits(typingctx, x):
    """The IEEE bits of a float32 as an int32 (a bit cast, no conversion)."""
    def codegen(context, builder, sig, args):
        return builder.bitcast(args[0], ir.IntType(32))
    return types.int32(types.float32), codegen


@intrinsic
def magnitude_bits(typingctx, x):
    """The IEEE bits of a float32 or float64 with the sign bit cleared, as an int32 or int64 (a
    bit cast and a mask, no conversion): these integers order finite magnitudes as the floats
    do, with +Inf above them and NaN above +Inf (see :func:`noisesim._kernels.max_abs`)."""
    if not isinstance(x, types.Float):
        return None
    width = x.bitwidth

    def codegen(context, builder, sig, args):
        ity = ir.IntType(width)
        return builder.and_(builder.bitcast(args[0], ity), ir.Constant(ity, (1 << (width - 1)) - 1))
    return (types.int32 if width == 32 else types.int64)(x), codegen


@intrinsic
def _bits_f32(typingctx, i):
    """The float32 whose IEEE bits are the int32 ``i``."""
    def codegen(context, builder, sig, args):
        return builder.bitcast(args[0], ir.FloatType())
    return types.float32(types.int32), codegen


@intrinsic
def _fma(typingctx, a, b, c):
    """``a·b + c`` rounded once (``llvm.fma``): the same bits on every CPU, with or without
    hardware FMA, and half the work of a multiply and an add where it has one."""
    def codegen(context, builder, sig, args):
        flt = ir.FloatType()
        f = builder.module.declare_intrinsic("llvm.fma", [flt], ir.FunctionType(flt, [flt, flt, flt]))
        return builder.call(f, args)
    return types.float32(types.float32, types.float32, types.float32), codegen


@numba.njit(cache=True, inline="always")
def _mix(z):
    z = (z ^ (z >> _S30)) * _C1
    z = (z ^ (z >> _S27)) * _C2
    return z ^ (z >> _S31)


@numba.njit(cache=True, inline="always")
def row_state(key, i):
    """The starting counter of row ``i`` for a call keyed ``key``."""
    return _mix(key ^ _mix(np.uint64(i) * _ROW + _GAMMA))


@numba.njit(cache=True, inline="always", error_model="numpy")
def log32(y):
    """``log(y)`` for a positive, normal float32 ``y`` (error ≲ 2e-7 absolute plus float32
    rounding).

    ``y = 2^e · m`` with ``m ∈ [1/√2, √2)`` (a bit cast, no conversion); ``log m = f·L(f)``,
    ``f = m − 1``, with the degree-7 polynomial ``L`` (no division, so it vectorises cheaply).
    """
    i = _f32_bits(y)                                 # (numba widens int32 arithmetic to
    frac = np.int32(i & np.int32(0x7FFFFF))          # int64: the casts keep it 32-bit)
    up = frac > _SQRT_HALF_BITS                      # m ≥ √2: halve it, count one more 2
    m = _bits_f32(np.int32(frac | (np.int32(0x3F000000) if up else np.int32(0x3F800000))))
    e = np.int32(np.int32(i >> np.int32(23)) - (np.int32(126) if up else np.int32(127)))
    f = m - _F(1.0)
    p = _LOG1P[0]
    for c in _LOG1P[1:]:
        p = _fma(p, f, c)
    return _fma(_F(e), _LN2, p * f)


@numba.njit(cache=True, inline="always")
def _q_w(b):
    """``(q, 1 − q, w)`` of an element's 32 bits ``b`` (int32; the sign bit is not used here);
    ``1 − q`` from the integers, exact where ``q`` itself rounds near 1."""
    m = np.int32(b & np.int32(0x7FFFFFFF))
    q = (_F(m) + _F(0.5)) * _F(2.0 ** -31)
    p = (_F(np.int32(np.int32(0x7FFFFFFF) - m)) + _F(0.5)) * _F(2.0 ** -31)     # 1 − q
    return q, p, -log32(q * (_F(1.0) + p))


@numba.njit(cache=True, inline="always", error_model="numpy")
def _central(b):
    """``(z, tail)``: the normal of bits ``b`` by the central polynomial, and whether ``w``
    lies beyond it (then :func:`_tail` gives the number)."""
    q, p1, w = _q_w(b)
    u = w - _F(4.0)
    p = _PC[0]
    for c in _PC[1:]:
        p = _fma(p, u, c)
    r = p * p1
    return (-r if b < np.int32(0) else r), w >= W_SPLIT


@numba.njit(cache=True, error_model="numpy")
def _tail(b):
    """The normal of bits ``b`` whose ``w ≥ 8`` (``|z| ≳ 3.76``), by the tail polynomial."""
    q, p1, w = _q_w(b)
    u = np.sqrt(w) - _F(3.5)
    p = _PT[0]
    for c in _PT[1:]:
        p = _fma(p, u, c)
    r = p * p1
    return -r if b < np.int32(0) else r


@numba.njit(cache=True, inline="always", error_model="numpy")
def fill_row(z, bits, tail, key, i):
    """``z`` (1-D) ← the standard normals of row ``i`` for a call keyed ``key``.

    Scratch (see :func:`scratch`): ``bits`` uint32 of ``2⌈n/2⌉`` elements, ``tail`` uint8 of
    ``n``.
    """
    s = row_state(key, i)
    n = z.shape[0]
    h = (n + 1) // 2
    for m in range(h):                                   # vectorised: the hashes
        r = _mix(s + np.uint64(m + 1) * _GAMMA)
        bits[m] = np.uint32(r & _M32)
        bits[m + h] = np.uint32(r >> _S32)
    beyond = 0
    for j in range(n):                                   # vectorised: the central inversion
        v, t = _central(np.int32(bits[j]))
        z[j] = v
        tail[j] = t
        beyond += t
    if beyond:                                           # ~0.02 % of draws: the tail
        for j in range(n):
            if tail[j]:
                z[j] = _tail(np.int32(bits[j]))


@numba.njit(cache=True, inline="always")
def scratch(n):
    """Row scratch for :func:`fill_row`: ``(bits, tail)`` for rows of ``n`` elements."""
    return np.empty(2 * ((n + 1) // 2), np.uint32), np.empty(n, np.uint8)


@numba.njit(cache=True, error_model="numpy")
def _fill_normal(out, key):
    z = np.empty(out.shape[1], np.float32)
    bits, tail = scratch(out.shape[1])
    for i in range(out.shape[0]):
        fill_row(z, bits, tail, key, i)
        for j in range(out.shape[1]):
            out[i, j] = z[j]


def fill_normal(out, key) -> None:
    """``out`` (2-D, float32 or float64) filled with standard normals, row ``i`` as
    :func:`fill_row` draws it for ``key``."""
    _fill_normal(out, np.uint64(key))


@numba.njit(cache=True, error_model="numpy")
def _normals_of_bits(b, out):
    for j in range(b.shape[0]):
        v, beyond = _central(b[j])
        out[j] = _tail(b[j]) if beyond else v


def normals_of_bits(b):
    """The normals the generator makes of 32-bit patterns ``b`` (int32 array): for tests."""
    b = np.ascontiguousarray(b, dtype=np.int32)
    out = np.empty(b.shape, np.float32)
    _normals_of_bits(b.reshape(-1), out.reshape(-1))
    return out
