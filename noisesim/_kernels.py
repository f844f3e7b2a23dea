"""Fused element-wise kernels behind one dispatch table.

Each operation exists as a Numba kernel (NumPy arrays, CPU) and a CuPy version (GPU);
the public wrappers validate once and dispatch on the array module of their inputs.

Converter semantics (DAC and ADC alike), with ``b`` bits and bound ``B``:

* ``b is None`` — clip to ``[-B, B]`` only (an ideal converter with a range);
* ``b == 1`` — sign converter, codes ``{-B, +B}``;
* ``b >= 2`` — symmetric mid-tread quantiser with ``2^(b-1) - 1`` positive levels, step
  ``Δ = B / (2^(b-1) - 1)``: ``q(x) = Δ · clip(round(x / Δ), -(2^(b-1)-1), 2^(b-1)-1)``.
  That is ``2^b - 1`` distinct codes (zero included), saturating exactly at ``±B``.
"""
from __future__ import annotations

import numba
import numpy as np

from .backend import get_array_module

_MODE_NONE, _MODE_CLIP, _MODE_QUANT, _MODE_SIGN = 0, 1, 2, 3


def converter_params(bits, bound):
    """(mode, half, step, bound) for a converter of ``bits`` bits and bound ``bound``."""
    if bound is None:
        return _MODE_NONE, 0, 0.0, 0.0
    if bits is None:
        return _MODE_CLIP, 0, 0.0, float(bound)
    half = 2 ** (int(bits) - 1) - 1
    if half == 0:
        return _MODE_SIGN, 0, 0.0, float(bound)
    return _MODE_QUANT, half, float(bound) / half, float(bound)


# --------------------------------------------------------------------------- numba (CPU)
@numba.njit(cache=True, inline="always")
def _convert_scalar(v, mode, half, step, bound):
    if mode == _MODE_CLIP:
        if v > bound:
            return bound
        if v < -bound:
            return -bound
        return v
    if mode == _MODE_QUANT:
        k = np.rint(v / step)
        if k > half:
            k = half
        elif k < -half:
            k = -half
        return k * step
    if mode == _MODE_SIGN:
        return bound if v >= 0 else -bound
    return v


def _convert_body(x, out, mode, half, step, bound):
    n, m = x.shape
    s = x.dtype.type(step)
    b = x.dtype.type(bound)
    for i in numba.prange(n):
        for j in range(m):
            out[i, j] = _convert_scalar(x[i, j], mode, half, s, b)


def _epilogue_body(a, zr, rs, zn, ns, inj, has_r, has_n, has_inj, mode, half, step, bound):
    n, m = a.shape
    s = a.dtype.type(step)
    b = a.dtype.type(bound)
    for i in numba.prange(n):
        r = rs[i] if has_r else 0.0
        q = ns[i] if has_n else 0.0
        for j in range(m):
            v = a[i, j]
            if has_r:
                v += r * zr[i, j]
            if has_n:
                v += q * zn[i, j]
            if has_inj:
                v += inj[i, j]
            a[i, j] = _convert_scalar(v, mode, half, s, b)


# Threads pay off only on large arrays: below this many elements the serial kernel wins,
# and by a wide margin when other processes compete for the cores.
_PARALLEL_MIN_SIZE = 1 << 16
_convert_serial = numba.njit(cache=True)(_convert_body)
_convert_parallel = numba.njit(cache=True, parallel=True)(_convert_body)
_epilogue_serial = numba.njit(cache=True)(_epilogue_body)
_epilogue_parallel = numba.njit(cache=True, parallel=True)(_epilogue_body)


def _convert_numba(x, out, *args):
    (_convert_parallel if x.size >= _PARALLEL_MIN_SIZE else _convert_serial)(x, out, *args)


def _epilogue_numba(a, *args):
    (_epilogue_parallel if a.size >= _PARALLEL_MIN_SIZE else _epilogue_serial)(a, *args)


# --------------------------------------------------------------------------- cupy (GPU)
def _convert_cupy(x, out, mode, half, step, bound):
    xp = get_array_module(x)
    if mode == _MODE_CLIP:
        xp.clip(x, -bound, bound, out=out)
    elif mode == _MODE_QUANT:
        xp.multiply(xp.clip(xp.rint(x / step), -half, half), step, out=out)
    elif mode == _MODE_SIGN:
        out[...] = xp.where(x >= 0, bound, -bound)
    else:
        out[...] = x


def _epilogue_cupy(a, zr, rs, zn, ns, inj, has_r, has_n, has_inj, mode, half, step, bound):
    if has_r:
        a += rs[:, None] * zr
    if has_n:
        a += ns[:, None] * zn
    if has_inj:
        a += inj
    _convert_cupy(a, a, mode, half, step, bound)


_DISPATCH = {
    "convert": {"numpy": _convert_numba, "cupy": _convert_cupy},
    "epilogue": {"numpy": _epilogue_numba, "cupy": _epilogue_cupy},
}


def _impl(op, arr):
    return _DISPATCH[op]["cupy" if get_array_module(arr) is not np else "numpy"]


def _empty2(a):
    return a[:0, :0]


def convert(x, bits, bound, out=None):
    """DAC/ADC conversion of a 2-D array (see module docstring); returns ``out``."""
    mode, half, step, b = converter_params(bits, bound)
    if out is None:
        out = x.copy() if mode == _MODE_NONE else get_array_module(x).empty_like(x)
    if mode == _MODE_NONE:
        if out is not x:
            out[...] = x
        return out
    _impl("convert", x)(x, out, mode, half, step, b)
    return out


def read_epilogue(a, *, read_z=None, read_std=None, node_z=None, node_std=None, inject=None, bits=None, bound=None):
    """In place: ``a ← ADC(a + read_std·read_z + node_std·node_z + inject)``.

    ``read_std`` and ``node_std`` are per-row (per-sample) stds of shape ``(M,)``;
    ``read_z``, ``node_z`` and ``inject`` have the shape of ``a``.
    """
    if a.ndim != 2:
        raise ValueError(f"read_epilogue expects a 2-D array, got shape {a.shape}")
    mode, half, step, b = converter_params(bits, bound)
    has_r, has_n, has_inj = read_z is not None, node_z is not None, inject is not None
    if not (has_r or has_n or has_inj) and mode == _MODE_NONE:
        return a
    e2 = _empty2(a)
    e1 = a[0, :0]
    _impl("epilogue", a)(
        a,
        read_z if has_r else e2,
        read_std if has_r else e1,
        node_z if has_n else e2,
        node_std if has_n else e1,
        inject if has_inj else e2,
        has_r, has_n, has_inj, mode, half, step, b,
    )
    return a
