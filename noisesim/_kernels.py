"""Fused element-wise kernels behind one dispatch table.

Each operation exists as a Numba kernel (NumPy arrays, CPU, ``cache=True``) and a CuPy
version (GPU) side by side; the public wrappers validate once and dispatch on the array
module of their inputs. Nothing outside this module and its CUDA sources
(:mod:`noisesim._kernels_cuda`) is backend-specific.

Converter semantics (DAC and ADC alike), with ``b`` bits and bound ``B``:

* ``b is None`` — clip to ``[-B, B]`` only (an ideal converter with a range);
* ``b == 1`` — sign converter, codes ``{-B, +B}``;
* ``b >= 2`` — symmetric mid-tread quantiser with ``2^(b-1) - 1`` positive levels, step
  ``Δ = B / (2^(b-1) - 1)``: ``q(x) = Δ · clip(round(x / Δ), -(2^(b-1)-1), 2^(b-1)-1)``.
  That is ``2^b - 1`` distinct codes (zero included), saturating exactly at ``±B``.

Operations
----------
``convert``     DAC/ADC of a 2-D array, optionally after a per-row gain (input scaling).
``dac_absmax``  per-row ``max|x|`` scaling, DAC and ``Σ x̂²`` (per row or per tile) in one pass.
``epilogue``    one tile read's analog tail: ``ADC(g·(a + σ_r z_r + σ_n z_n + inj)) · post``,
                optionally accumulated into a digital partial sum. The Gaussians are drawn
                inside the kernel from one key per named stream (:mod:`noisesim._rng_numba`,
                ported to CUDA in :mod:`noisesim._kernels_cuda`): both backends draw the same
                numbers for the same keys. With ``NOISESIM_CUPY_EPILOGUE=unfused`` the CuPy
                backend draws arrays with ``cupy.random`` instead and applies them with CuPy
                element-wise operations (see ``CUPY_EPILOGUE``).
``pulsed``      the pulsed update of every device (stochastic pulse counts, soft bounds,
                asymmetry, cycle-to-cycle noise), see :mod:`noisesim.update`.
"""
from __future__ import annotations

import math
import os

import numba
import numpy as np

from . import _rng_numba
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
# Each kernel works row by row: a row body plus a parallel and a serial driver. Inside a row
# every loop is straight-line code the compiler vectorises (the converter's mode is chosen
# once per row, not per element). The work is memory-bound or close to it, and on a 2-core
# machine numba's threads measured slower than the serial loop (they fight the BLAS
# threads that just ran the GEMM), so only very large arrays go parallel.
_PARALLEL_MIN = 1 << 23
_MAX_PULSES = 65535.0      # pulses per device per update (a real pulse train is far shorter)


@numba.njit(cache=True, inline="always", error_model="numpy")
def _quantise(v, h, s):
    """The mid-tread quantiser of the module docstring: ``s · clip(round(v / s), −h, h)``."""
    k = np.rint(v / s)
    k = h if k > h else k
    k = -h if k < -h else k
    return k * s


@numba.njit(cache=True, inline="always", error_model="numpy")
def _convert_inplace(w, g, p, mode, half, s, b):
    """``w ← q(g·w)·p`` for a 1-D row ``w`` (``q`` the converter of the module docstring)."""
    n = w.shape[0]
    if mode == _MODE_QUANT:
        h = w.dtype.type(half)
        for j in range(n):
            w[j] = _quantise(w[j] * g, h, s) * p
    elif mode == _MODE_CLIP:
        for j in range(n):
            v = w[j] * g
            v = b if v > b else v
            v = -b if v < -b else v
            w[j] = v * p
    elif mode == _MODE_SIGN:
        for j in range(n):
            w[j] = (b if w[j] * g >= 0 else -b) * p
    elif g != 1 or p != 1:
        for j in range(n):
            w[j] = w[j] * g * p


@numba.njit(cache=True, inline="always", error_model="numpy")
def _convert_row(x, out, i, gain, has_gain, mode, half, s, b):
    g = gain[i] if has_gain else x.dtype.type(1.0)
    row = out[i]
    for j in range(x.shape[1]):
        row[j] = x[i, j]
    _convert_inplace(row, g, x.dtype.type(1.0), mode, half, s, b)


@numba.njit(cache=True, parallel=True, error_model="numpy")
def _convert_par(x, out, gain, has_gain, mode, half, step, bound):
    s, b = x.dtype.type(step), x.dtype.type(bound)
    for i in numba.prange(x.shape[0]):
        _convert_row(x, out, i, gain, has_gain, mode, half, s, b)


@numba.njit(cache=True, error_model="numpy")
def _convert_ser(x, out, gain, has_gain, mode, half, step, bound):
    s, b = x.dtype.type(step), x.dtype.type(bound)
    for i in range(x.shape[0]):
        _convert_row(x, out, i, gain, has_gain, mode, half, s, b)


@numba.njit(cache=True, error_model="numpy", fastmath={"reassoc", "nsz", "arcp", "contract"})
def _dac_absmax_numba(x, bits, mask, out, scale, scale_bits, sumsq, chunk, mode, half, step, bound):
    # Per row: s = max|x| (1 for an all-zero row), x̂ = q(x/s), Σ x̂² per chunk of columns.
    # ``bits`` is x viewed as integers of its width: |x| orders as the integer bits & mask,
    # and an integer max vectorises where a float max (NaN rules) does not. NaN and ±Inf
    # bits sort above every finite value, so a row holding one gets a non-finite s: this
    # pass is the finiteness check of the input (see Tile.read's check_finite).
    one = x.dtype.type(1.0)
    s_, b, h = x.dtype.type(step), x.dtype.type(bound), x.dtype.type(half)
    for i in range(x.shape[0]):
        m = bits[i, 0] & mask
        for j in range(1, x.shape[1]):
            v = bits[i, j] & mask
            m = v if v > m else m
        scale_bits[i] = m
        if scale[i] == 0:
            scale[i] = one
        g = one / scale[i]
        row = out[i]
        if mode == _MODE_QUANT:                   # the common case: straight from x, no copy
            for j in range(x.shape[1]):
                row[j] = _quantise(x[i, j] * g, h, s_) * one
        else:
            for j in range(x.shape[1]):
                row[j] = x[i, j]
            _convert_inplace(row, g, one, mode, half, s_, b)
        for c in range(sumsq.shape[1]):          # one sum per chunk of columns (per tile)
            part = row[c * chunk:c * chunk + chunk]
            acc = 0.0
            for j in range(part.shape[0]):
                acc += part[j] * part[j]
            sumsq[i, c] = acc


@numba.njit(cache=True, error_model="numpy")
def _max_magnitude_bits(bits, mask):
    # the largest |x| of a float array, as its integer bits (see _dac_absmax_numba)
    m = bits[0] & mask
    for j in range(1, bits.shape[0]):
        v = bits[j] & mask
        m = v if v > m else m
    return m


def _dac_absmax_cupy(x, out, scale, sumsq, chunk, mode, half, step, bound):
    xp = get_array_module(x)
    m = xp.abs(x).max(axis=1)                    # NaN or Inf in a row: a non-finite scale
    m = xp.where(m == 0, m.dtype.type(1), m)     # (a select: a masked assignment may sync)
    scale[...] = m
    _convert_cupy(x, out, 1 / m, True, mode, half, step, bound)
    sq = out * out
    for c in range(sumsq.shape[1]):
        sumsq[:, c] = sq[:, c * chunk:(c + 1) * chunk].sum(axis=1)


@numba.njit(cache=True, inline="always", error_model="numpy")
def _tail_row(a, out, i, w, zr, r, zn, q, inj, has_inj, g, p, acc, mode, half, s, b):
    """One row of the epilogue: ``q(g·(a_i + r·zr + q·zn (+ inj_i)))·p``, stored or added."""
    n = a.shape[1]
    if has_inj:
        for j in range(n):
            w[j] = a[i, j] + r * zr[j] + q * zn[j] + inj[i, j]
    else:
        for j in range(n):
            w[j] = a[i, j] + r * zr[j] + q * zn[j]
    if mode == _MODE_QUANT:                       # the common case in one pass
        h = w.dtype.type(half)
        if acc:
            for j in range(n):
                out[i, j] += _quantise(w[j] * g, h, s) * p
        else:
            for j in range(n):
                out[i, j] = _quantise(w[j] * g, h, s) * p
        return
    _convert_inplace(w, g, p, mode, half, s, b)
    if acc:
        for j in range(n):
            out[i, j] += w[j]
    else:
        for j in range(n):
            out[i, j] = w[j]


@numba.njit(cache=True, inline="always", error_model="numpy")
def _epilogue_row(a, out, i, zr, rs, zn, ns, inj, post, g, has_r, has_n, has_inj, has_post, acc,
                  mode, half, s, b, w, zero):
    # the Gaussians come as arrays; ``zero`` stands in for an absent one
    one, zero_ = a.dtype.type(1.0), a.dtype.type(0.0)
    _tail_row(a, out, i, w, zr[i] if has_r else zero, rs[i] if has_r else zero_, zn[i] if has_n else zero,
              ns[i] if has_n else zero_, inj, has_inj, g, post[i] if has_post else one, acc, mode, half, s, b)


@numba.njit(cache=True, parallel=True, error_model="numpy")
def _epilogue_par(a, out, zr, rs, zn, ns, inj, post, gain, has_r, has_n, has_inj, has_post, acc,
                  mode, half, step, bound):
    s, b, g = a.dtype.type(step), a.dtype.type(bound), a.dtype.type(gain)
    zero = np.zeros(a.shape[1], a.dtype)
    for i in numba.prange(a.shape[0]):
        w = np.empty(a.shape[1], a.dtype)
        _epilogue_row(a, out, i, zr, rs, zn, ns, inj, post, g, has_r, has_n, has_inj, has_post, acc,
                      mode, half, s, b, w, zero)


@numba.njit(cache=True, error_model="numpy")
def _epilogue_ser(a, out, zr, rs, zn, ns, inj, post, gain, has_r, has_n, has_inj, has_post, acc,
                  mode, half, step, bound):
    s, b, g = a.dtype.type(step), a.dtype.type(bound), a.dtype.type(gain)
    zero = np.zeros(a.shape[1], a.dtype)
    w = np.empty(a.shape[1], a.dtype)
    for i in range(a.shape[0]):
        _epilogue_row(a, out, i, zr, rs, zn, ns, inj, post, g, has_r, has_n, has_inj, has_post, acc,
                      mode, half, s, b, w, zero)


@numba.njit(cache=True, inline="always", error_model="numpy")
def _fill_row(z, bits, tail, key, i):
    # noisesim._rng_numba.fill_row, the same numbers by the same steps (its hashes, its
    # central inversion, its tail for the draws beyond W_SPLIT), with one change that is not
    # in the numbers: whether a row has a tail draw is a uint8 maximum of the flags, which
    # vectorises with the inversion; fill_row's integer count of them did not (its loop
    # measured 1.5× this one's time per number)
    s = _rng_numba.row_state(key, i)
    n = z.shape[0]
    h = (n + 1) // 2
    for m in range(h):
        r = _rng_numba._mix(s + np.uint64(m + 1) * _rng_numba._GAMMA)
        bits[m] = np.uint32(r & _rng_numba._M32)
        bits[m + h] = np.uint32(r >> _rng_numba._S32)
    beyond = np.uint8(0)
    for j in range(n):
        v, t = _rng_numba._central(np.int32(bits[j]))
        z[j] = v
        tail[j] = t
        beyond = max(beyond, np.uint8(t))
    if beyond:
        for j in range(n):
            if tail[j]:
                z[j] = _rng_numba._tail(np.int32(bits[j]))


@numba.njit(cache=True, inline="always", error_model="numpy")
def _keyed_row(a, out, i, rkey, rs, nkey, ns, inj, post, g, has_r, has_n, has_inj, has_post, acc,
               mode, half, s, b, w, zr, zn, bits, tail, row0):
    # the epilogue with its Gaussian noise drawn in place (see noisesim._rng_numba); w, zr,
    # zn and bits are row scratch (zr, zn stay zero when their noise is off). Row i draws the
    # normals of row ``row0 + i`` of its key: a stack of passes read in several calls with
    # the same keys gets the noise one call would have drawn
    if has_r:
        _fill_row(zr, bits, tail, rkey, row0 + i)
    if has_n:
        _fill_row(zn, bits, tail, nkey, row0 + i)
    one, zero_ = a.dtype.type(1.0), a.dtype.type(0.0)
    _tail_row(a, out, i, w, zr, rs[i] if has_r else zero_, zn, ns[i] if has_n else zero_, inj, has_inj, g,
              post[i] if has_post else one, acc, mode, half, s, b)


@numba.njit(cache=True, inline="always")
def _keyed_scratch(n, dtype):
    bits, tail = _rng_numba.scratch(n)
    return np.empty(n, dtype), np.zeros(n, np.float32), np.zeros(n, np.float32), bits, tail


@numba.njit(cache=True, parallel=True, error_model="numpy")
def _keyed_par(a, out, rkey, rs, nkey, ns, inj, post, gain, has_r, has_n, has_inj, has_post, acc,
               mode, half, step, bound, row0=0):
    s, b, g = a.dtype.type(step), a.dtype.type(bound), a.dtype.type(gain)
    n = a.shape[1]
    if n >= _SHORT_ROW:
        for i in numba.prange(a.shape[0]):
            w, zr, zn, bits, tail = _keyed_scratch(n, a.dtype)
            _keyed_row(a, out, i, rkey, rs, nkey, ns, inj, post, g, has_r, has_n, has_inj, has_post, acc,
                       mode, half, s, b, w, zr, zn, bits, tail, row0)
        return
    G = max(1, _BLOCK // max(n, 1))
    for k in numba.prange((a.shape[0] + G - 1) // G):
        i0 = k * G
        w, ZR, ZN, bits, tail = _block_scratch(G, n, a.dtype)
        _keyed_block(a, out, i0, min(G, a.shape[0] - i0), rkey, rs, nkey, ns, inj, post, g, has_r, has_n,
                     has_inj, has_post, acc, mode, half, s, b, w, ZR, ZN, bits, tail, row0, False)


@numba.njit(cache=True, error_model="numpy")
def _keyed_ser(a, out, rkey, rs, nkey, ns, inj, post, gain, has_r, has_n, has_inj, has_post, acc,
               mode, half, step, bound, row0=0):
    s, b, g = a.dtype.type(step), a.dtype.type(bound), a.dtype.type(gain)
    n = a.shape[1]
    if n >= _SHORT_ROW:
        w, zr, zn, bits, tail = _keyed_scratch(n, a.dtype)
        for i in range(a.shape[0]):
            _keyed_row(a, out, i, rkey, rs, nkey, ns, inj, post, g, has_r, has_n, has_inj, has_post, acc,
                       mode, half, s, b, w, zr, zn, bits, tail, row0)
        return
    G = max(1, _BLOCK // max(n, 1))
    w, ZR, ZN, bits, tail = _block_scratch(G, n, a.dtype)
    for i0 in range(0, a.shape[0], G):
        _keyed_block(a, out, i0, min(G, a.shape[0] - i0), rkey, rs, nkey, ns, inj, post, g, has_r, has_n,
                     has_inj, has_post, acc, mode, half, s, b, w, ZR, ZN, bits, tail, row0, True)


# Rows shorter than this (a convolution's reads: one per position, C_out outputs) draw their
# normals a block of about _BLOCK numbers at a time: per row the hashes and the central
# inversion are loops too short to vectorise and their set-up dominates (5.5 ns a normal at 16
# a row against 1.8 ns on long rows). The numbers are the same: each depends on the key, the
# row and the element only.
_SHORT_ROW = 128
_BLOCK = 1024


@numba.njit(cache=True, inline="always")
def _block_scratch(G, n, dtype):
    h2 = 2 * ((n + 1) // 2)
    return (np.empty(n, dtype), np.zeros((G, n), np.float32), np.zeros((G, n), np.float32),
            np.empty(G * h2, np.uint32), np.empty(G * h2, np.uint8))


@numba.njit(cache=True, inline="always", error_model="numpy")
def _fill_rows(Z, bits, tail, key, r0, G):
    # rows r0 … r0+G−1 of a call keyed ``key`` into Z[:G]: _fill_row's numbers, the hashes of
    # a row laid out as _fill_row lays them (h low words, then h high words, h = ⌈n/2⌉), the
    # inversion over the whole block; with n odd each row's last hash word is left unused
    n = Z.shape[1]
    h = (n + 1) // 2
    h2 = 2 * h
    for q in range(G):
        st = _rng_numba.row_state(key, r0 + q)
        base = q * h2
        for m in range(h):
            r = _rng_numba._mix(st + np.uint64(m + 1) * _rng_numba._GAMMA)
            bits[base + m] = np.uint32(r & _rng_numba._M32)
            bits[base + m + h] = np.uint32(r >> _rng_numba._S32)
    beyond = np.uint8(0)
    if h2 == n:                                 # even rows: the block is one flat run
        flat = Z.reshape(-1)
        for k in range(G * n):
            v, t = _rng_numba._central(np.int32(bits[k]))
            flat[k] = v
            tail[k] = t
            beyond = max(beyond, np.uint8(t))
    else:
        for q in range(G):
            for j in range(n):
                v, t = _rng_numba._central(np.int32(bits[q * h2 + j]))
                Z[q, j] = v
                tail[q * h2 + j] = t
                beyond = max(beyond, np.uint8(t))
    if beyond:
        for q in range(G):
            for j in range(n):
                if tail[q * h2 + j]:
                    Z[q, j] = _rng_numba._tail(np.int32(bits[q * h2 + j]))


@numba.njit(cache=True, inline="always", error_model="numpy")
def _keyed_block(a, out, i0, G, rkey, rs, nkey, ns, inj, post, g, has_r, has_n, has_inj, has_post, acc,
                 mode, half, s, b, w, ZR, ZN, bits, tail, row0, fused_quant):
    # rows i0 … i0+G−1 of the keyed epilogue, their normals drawn as one block
    if has_r:
        _fill_rows(ZR, bits, tail, rkey, row0 + i0, G)
    if has_n:
        _fill_rows(ZN, bits, tail, nkey, row0 + i0, G)
    one, zero_ = a.dtype.type(1.0), a.dtype.type(0.0)
    if fused_quant and mode == _MODE_QUANT:
        _tail_block_quant(a, out, i0, G, ZR, ZN, rs, ns, inj, post, g, has_r, has_n, has_inj, has_post, acc, half, s)
        return
    for q in range(G):
        i = i0 + q
        _tail_row(a, out, i, w, ZR[q], rs[i] if has_r else zero_, ZN[q], ns[i] if has_n else zero_, inj, has_inj,
                  g, post[i] if has_post else one, acc, mode, half, s, b)


@numba.njit(cache=True, error_model="numpy")
def _tail_block_quant(a, out, i0, G, ZR, ZN, rs, ns, inj, post, g, has_r, has_n, has_inj, has_post, acc, half, s):
    # _tail_row's quantising case for rows i0 … i0+G−1 (row q of the block's normals), by the
    # same operations in the same order (so the same bits), each row in one loop: no pass
    # through a row scratch, and the normals indexed in place rather than through row views.
    # A function of its own (not inlined into the drivers): inlined there, beside the other
    # modes' path, it measured slower than before (225 000 rows of 16: 21.3 ms against 19.4);
    # on its own, 15.0. The serial driver only (``fused_quant``): called from the parallel
    # one it measured slower there (8.8 ms against 7.4), which keeps _tail_row
    n = a.shape[1]
    t = a.dtype.type                   # _tail_row's scratch row is of a's dtype
    h, one, zero_ = t(half), t(1.0), t(0.0)
    for q in range(G):
        i = i0 + q
        r = rs[i] if has_r else zero_
        nq = ns[i] if has_n else zero_
        p = post[i] if has_post else one
        if has_inj:
            if acc:
                for j in range(n):
                    out[i, j] += _quantise(t(a[i, j] + r * ZR[q, j] + nq * ZN[q, j] + inj[i, j]) * g, h, s) * p
            else:
                for j in range(n):
                    out[i, j] = _quantise(t(a[i, j] + r * ZR[q, j] + nq * ZN[q, j] + inj[i, j]) * g, h, s) * p
        elif acc:
            for j in range(n):
                out[i, j] += _quantise(t(a[i, j] + r * ZR[q, j] + nq * ZN[q, j]) * g, h, s) * p
        else:
            for j in range(n):
                out[i, j] = _quantise(t(a[i, j] + r * ZR[q, j] + nq * ZN[q, j]) * g, h, s) * p


@numba.njit(cache=True, inline="always", error_model="numpy")
def _pulsed_row(gp, gm, i, d, r, z, dws, bp, bm, tprog, w, w_scale, now, dw_min, asym, c2c):
    # Branch-free on the data (selects, a fixed 16-step power by squaring) and with every
    # array present (the wrapper passes ones/scratch for absent ones): the pulse counts and
    # signs are random, and the branchy version mispredicted its way to 7× the time.
    one = gp.dtype.type(1.0)
    zero = gp.dtype.type(0.0)
    for j in range(gp.shape[1]):
        x = d[i, j] / dw_min
        ax = abs(x)
        fl = math.floor(ax)
        nf = min(fl + (one if r[i, j] < ax - fl else zero), _MAX_PULSES)
        ni = np.int32(nf)
        upf = one if x > 0 else zero
        hi = bp[i, j]
        lo = bm[i, j]
        b = lo + upf * (hi - lo)
        sg = upf + upf - one
        st = dw_min * dws[i, j] * (one + sg * asym)
        base = max(one - st / b, zero)
        p = 1.0                                # base^n by squaring, select-free arithmetic
        q = np.float64(base)
        for k in range(16):
            p *= 1.0 + np.float64((ni >> k) & 1) * (q - 1.0)
            q = q * q if q > 1e-150 else 0.0    # never into denormals (slow on x86)
        u = gp[i, j] - gm[i, j]
        # n soft-bounded pulses, up (sg = 1) or down (sg = -1), plus cycle-to-cycle noise
        v = sg * b - (sg * b - u) * p + c2c * st * math.sqrt(nf) * z[i, j]
        v = min(max(v, -lo), hi)
        moved = ni > 0
        # the pair is rewritten with one device at zero (the standard differential mapping)
        gp[i, j] = max(v, zero) if moved else gp[i, j]
        gm[i, j] = max(-v, zero) if moved else gm[i, j]
        tprog[i, j] = now if moved else tprog[i, j]
        w[i, j] = w_scale * v if moved else w[i, j]


@numba.njit(cache=True, parallel=True, error_model="numpy")
def _pulsed_par(gp, gm, d, r, z, dws, bp, bm, tprog, w, w_scale, now, dw_min, asym, c2c):
    for i in numba.prange(gp.shape[0]):
        _pulsed_row(gp, gm, i, d, r, z, dws, bp, bm, tprog, w, w_scale, now, dw_min, asym, c2c)


@numba.njit(cache=True, error_model="numpy")
def _pulsed_ser(gp, gm, d, r, z, dws, bp, bm, tprog, w, w_scale, now, dw_min, asym, c2c):
    for i in range(gp.shape[0]):
        _pulsed_row(gp, gm, i, d, r, z, dws, bp, bm, tprog, w, w_scale, now, dw_min, asym, c2c)


# col2im of a channels-last batch, 2-D (a 1-D layer is a 2-D one of height 1): the adjoint
# of a convolution's patch copy in one pass. The patch gradients are ``(N, H_out, W_out,
# kh·kw·C)`` (channels fastest, then kw, then kh), the result ``(N, H, W·C)``; padding is
# never materialised. The contributions to each input pixel are added in the order of the
# kernel offsets (kh, then kw), as the array code does, so both give the same numbers bit for
# bit. Serial: a pass over memory that two threads do not speed up on a busy 2-core machine,
# and numba's threads would compete with BLAS's (see _PARALLEL_MIN). The copy itself (im2col)
# stays array code: NumPy's strided copy measured as fast as a Numba loop or faster.
@numba.njit(cache=True, error_model="numpy")
def _col2im_numba(d, out, C, kh, kw, sh, sw, ph, pw):
    H, WC = out.shape[1], out.shape[2]
    W = WC // C
    Ho, Wo = d.shape[1], d.shape[2]
    for n in range(d.shape[0]):
        for y in range(H):
            for m in range(WC):
                out[n, y, m] = 0
        for a in range(kh):
            for b in range(kw):
                off = (a * kw + b) * C
                for i in range(Ho):
                    y = i * sh - ph + a
                    if y < 0 or y >= H:
                        continue
                    for j in range(Wo):
                        xx = j * sw - pw + b
                        if xx < 0 or xx >= W:
                            continue
                        t = xx * C
                        for c in range(C):
                            out[n, y, t + c] += d[n, i, j, off + c]


@numba.njit(cache=True, inline="always", error_model="numpy")
def _pairwise_block_sq(a, lo, n):
    # NumPy's pairwise sum of the squares a[lo:lo+n]² (each rounded), n ≤ 128: eight running
    # sums combined as a tree, then the remainder (numpy/_core/src/umath/loops_utils.h.src)
    if n < 8:
        res = a.dtype.type(0)
        for i in range(lo, lo + n):
            res += a[i] * a[i]
        return res
    r0, r1, r2, r3 = a[lo] * a[lo], a[lo + 1] * a[lo + 1], a[lo + 2] * a[lo + 2], a[lo + 3] * a[lo + 3]
    r4, r5, r6, r7 = a[lo + 4] * a[lo + 4], a[lo + 5] * a[lo + 5], a[lo + 6] * a[lo + 6], a[lo + 7] * a[lo + 7]
    m = n - n % 8
    for i in range(lo + 8, lo + m, 8):
        r0 += a[i] * a[i]
        r1 += a[i + 1] * a[i + 1]
        r2 += a[i + 2] * a[i + 2]
        r3 += a[i + 3] * a[i + 3]
        r4 += a[i + 4] * a[i + 4]
        r5 += a[i + 5] * a[i + 5]
        r6 += a[i + 6] * a[i + 6]
        r7 += a[i + 7] * a[i + 7]
    res = ((r0 + r1) + (r2 + r3)) + ((r4 + r5) + (r6 + r7))
    for i in range(lo + m, lo + n):
        res += a[i] * a[i]
    return res


@numba.njit(cache=True, error_model="numpy")
def _pairwise_plan(n):
    # NumPy's pairwise summation of n numbers as a postfix program: (start, length) of a
    # block to sum (length ≤ 128), or length −1 to add the two partial sums on top. It halves
    # at multiples of 8 and sums the left half first; run on an explicit stack, since Numba's
    # cache does not keep recursive functions
    prog = np.empty((max(1, 4 * (n // 64 + 1)), 2), np.int64)
    segs = np.empty((192, 3), np.int64)
    segs[0, 0], segs[0, 1], segs[0, 2] = 0, n, 0
    sp, k = 1, 0
    while sp > 0:
        sp -= 1
        lo, m, done = segs[sp, 0], segs[sp, 1], segs[sp, 2]
        if m <= 128:
            prog[k, 0], prog[k, 1] = lo, m
            k += 1
        elif done:
            prog[k, 0], prog[k, 1] = 0, -1
            k += 1
        else:
            m2 = m // 2
            m2 -= m2 % 8
            segs[sp, 2] = 1                                     # add once both halves are in
            segs[sp + 1, 0], segs[sp + 1, 1], segs[sp + 1, 2] = lo + m2, m - m2, 0
            segs[sp + 2, 0], segs[sp + 2, 1], segs[sp + 2, 2] = lo, m2, 0       # left first
            sp += 3
    return prog[:k]


@numba.njit(cache=True, inline="always", error_model="numpy")
def _pairwise_sumsq(a, prog, vals):
    # Σ a² of a 1-D contiguous row in NumPy's order, by the program of _pairwise_plan
    vp = 0
    for k in range(prog.shape[0]):
        if prog[k, 1] < 0:
            vals[vp - 2] = vals[vp - 2] + vals[vp - 1]
            vp -= 1
        else:
            vals[vp] = _pairwise_block_sq(a, prog[k, 0], prog[k, 1])
            vp += 1
    return vals[0]


@numba.njit(cache=True, error_model="numpy")
def _difference_sumsq_numba(first, second, out, sums, in_place):
    # out_i = first_i − second_i and sums_i = Σ_j out_ij²
    # in NumPy's pairwise order, the row read back while it is in cache. In place the loop
    # names one array only: the compiler's overlap check of first and out would otherwise
    # send it to its scalar version
    prog = _pairwise_plan(out.shape[1])
    vals = np.empty(prog.shape[0] + 1, out.dtype)
    for i in range(out.shape[0]):
        s, o = second[i], out[i]
        if in_place:
            for j in range(o.shape[0]):
                o[j] = o[j] - s[j]
        else:
            f = first[i]
            for j in range(o.shape[0]):
                o[j] = f[j] - s[j]
        sums[i] = _pairwise_sumsq(o, prog, vals)


@numba.njit(cache=True, error_model="numpy")
def _column_sumsq_numba(x, out):
    # out_j = Σ_i x_ij² row after row: NumPy's (x * x).sum(axis=0) in its order and precision
    out[:] = 0
    for i in range(x.shape[0]):
        for j in range(x.shape[1]):
            v = x[i, j]
            out[j] += v * v


@numba.njit(cache=True, inline="always", error_model="numpy")
def _tail_value(m, di, r, c, has_d, add_r):
    # (m − d_i r)·c (+ r), each operation rounded to the arrays' precision as NumPy's
    if has_d:
        m = m - di * r
    m = m * c
    return m + r if add_r else m


@numba.njit(cache=True, error_model="numpy")
def _decorrelation_tail_numba(M, R, d, c, has_d, add_r):
    # M_ij ← (M_ij − d_i R_ij)·c (+ R_ij) and, in the same loop, the largest |M_ij| as integer
    # bits (see _dac_absmax_numba): the new value's bits are read from the register it is in
    m = _rng_numba.magnitude_bits(M.dtype.type(0))
    zero = M.dtype.type(0)
    for i in range(M.shape[0]):
        row, Ri = M[i], R[i]
        di = d[i] if has_d else zero
        for j in range(row.shape[0]):
            v = _tail_value(row[j], di, Ri[j], c, has_d, add_r)
            row[j] = v
            b = _rng_numba.magnitude_bits(v)
            m = b if b > m else m
    return m


@numba.njit(cache=True, error_model="numpy")
def _leaky_relu_numba(a, out, s):
    # out = max(a, s·a): NumPy's maximum(a, a * s) in one pass (NaN propagates as there)
    for i in range(a.shape[0]):
        v = a[i]
        w = v * s
        out[i] = v if v >= w or v != v else w


def _numba(par, ser):
    def run(first, *args):
        (par if first.size >= _PARALLEL_MIN else ser)(first, *args)
    run.__name__ = par.__name__
    return run


_convert_numba = _numba(_convert_par, _convert_ser)
_epilogue_numba = _numba(_epilogue_par, _epilogue_ser)
_pulsed_numba = _numba(_pulsed_par, _pulsed_ser)
# The keyed epilogue (~1.8 ns an element, noise included) follows the same rule: its work is
# compute-bound, but it runs right after a GEMM whose BLAS threads keep spinning on the other
# core, and numba's threads lose to them (2000 × 1024 after a two-thread GEMM: 5.3–5.9 ms
# parallel against 3.6–3.8 ms serial; a DANP step on 3072-1024³-10 2 % and a noisy conv
# forward 7 % faster serial, both measured interleaved). Both drivers draw the same numbers.
_keyed_numba = _numba(_keyed_par, _keyed_ser)


# --------------------------------------------------------------------------- cupy (GPU)
def _convert_cupy(x, out, gain, has_gain, mode, half, step, bound):
    xp = get_array_module(x)
    if has_gain:
        x = x * gain[:, None]
    if mode == _MODE_CLIP:
        xp.clip(x, -bound, bound, out=out)
    elif mode == _MODE_QUANT:
        xp.multiply(xp.clip(xp.rint(x / step), -half, half), step, out=out)
    elif mode == _MODE_SIGN:
        out[...] = xp.where(x >= 0, bound, -bound)
    else:
        out[...] = x


def _epilogue_cupy(a, out, zr, rs, zn, ns, inj, post, gain, has_r, has_n, has_inj, has_post, acc,
                   mode, half, step, bound):
    v = a  # a fresh GEMM output (or the in-place target): safe to modify
    if has_r:
        v += rs[:, None] * zr
    if has_n:
        v += ns[:, None] * zn
    if has_inj:
        v += inj
    if gain != 1.0:
        v *= v.dtype.type(gain)
    _convert_cupy(v, v, None, False, mode, half, step, bound)
    if has_post:
        v *= post[:, None]
    if acc:
        out += v
    elif out is not v:
        out[...] = v


def _keyed_cupy(a, out, rkey, rs, nkey, ns, inj, post, gain, has_r, has_n, has_inj, has_post, acc,
                mode, half, step, bound, row0=0):
    from . import _kernels_cuda

    _kernels_cuda.keyed_epilogue(a, out, rkey, rs, nkey, ns, inj, post, gain, has_r, has_n, has_inj, has_post,
                                 acc, mode, half, step, bound, row0)


def _pulsed_cupy(gp, gm, d, r, z, dws, bp, bm, tprog, w, w_scale, now, dw_min, asym, c2c):
    from . import _kernels_cuda

    _kernels_cuda.pulsed(gp, gm, d, r, z, dws, bp, bm, tprog, w, w_scale, now, dw_min, asym, c2c)


_DISPATCH = {
    "convert": {"numpy": _convert_numba, "cupy": _convert_cupy},
    "epilogue": {"numpy": _epilogue_numba, "cupy": _epilogue_cupy},
    "keyed": {"numpy": _keyed_numba, "cupy": _keyed_cupy},
    "pulsed": {"numpy": _pulsed_numba, "cupy": _pulsed_cupy},
}

# How the CuPy backend runs a read's epilogue when the noise comes from named streams:
# "fused" — one CUDA kernel draws the Gaussians in place from the streams' keys (the same
# numbers as the NumPy backend) and applies noise, injection, gain, ADC and post-scale;
# "unfused" — the streams draw arrays (cupy.random) and CuPy element-wise operations apply
# them. Chosen by the environment variable NOISESIM_CUPY_EPILOGUE (default "fused").
CUPY_EPILOGUES = ("fused", "unfused")
CUPY_EPILOGUE = os.environ.get("NOISESIM_CUPY_EPILOGUE", "fused")
if CUPY_EPILOGUE not in CUPY_EPILOGUES:
    raise ValueError(f"NOISESIM_CUPY_EPILOGUE={CUPY_EPILOGUE!r} is not known; allowed: {list(CUPY_EPILOGUES)}")

# Test hook: run the CuPy code path (everything written with ``xp``, and the dispatch table's
# "cupy" entries) on NumPy arrays, so its array logic is checked against the Numba kernels
# on a machine without a GPU. Never set outside tests.
_CUPY_PATH_ON_NUMPY = False


def _path(arr) -> str:
    """Which dispatch-table column serves ``arr``: "numpy" (Numba) or "cupy"."""
    return "cupy" if _CUPY_PATH_ON_NUMPY or get_array_module(arr) is not np else "numpy"


def _impl(op, arr):
    return _DISPATCH[op][_path(arr)]


def _empty2(a):
    return a[:0, :0]


def convert(x, bits, bound, out=None, *, gain=None):
    """DAC/ADC conversion of a 2-D array: ``out = q(gain[:, None] · x)``; returns ``out``.

    ``gain`` (per row, optional) is the digital input scaling applied before the converter.
    """
    mode, half, step, b = converter_params(bits, bound)
    xp = get_array_module(x)
    if mode == _MODE_NONE and gain is None:
        if out is None:
            return x.copy()
        if out is not x:
            out[...] = x
        return out
    if out is None:
        out = xp.empty_like(x)
    has_gain = gain is not None
    _impl("convert", x)(x, out, gain if has_gain else x[0, :0], has_gain, mode, half, step, b)
    return out


# per float dtype: (integers of its width, the mask of every bit but the sign, +Inf's bits)
_BITS = {}
for _t in (np.float32, np.float64):
    _i = np.dtype(f"int{8 * np.dtype(_t).itemsize}")
    _BITS[np.dtype(_t)] = (_i, _i.type(np.iinfo(_i).max), np.array(np.inf, _t).view(_i)[()])
del _t, _i


def all_finite(x) -> bool:
    """Whether every element of ``x`` is finite (no NaN, no ±Inf).

    On the CPU one vectorised pass over the integer bits: a float is finite exactly when its
    magnitude bits are below those of +Inf.
    """
    if x.size == 0:
        return True
    bits = _BITS.get(x.dtype) if type(x) is np.ndarray and not _CUPY_PATH_ON_NUMPY else None
    if bits is None:
        return bool(get_array_module(x).isfinite(x).all())
    ints, mask, inf = bits
    x = (x if x.flags.c_contiguous else np.ascontiguousarray(x)).reshape(-1)
    return bool(_max_magnitude_bits(x.view(ints), mask) < inf)


@numba.njit(cache=True, error_model="numpy")
def _divide_finite(x, c):
    # x /= c in place and whether every quotient is finite: v − v is 0 exactly for a finite
    # v (NaN for ±Inf and NaN); an integer or-reduction of the test vectorises with the
    # division, where the bits' maximum read through a second view of x did not
    bad = 0
    for j in range(x.shape[0]):
        v = x[j] / c
        x[j] = v
        bad |= np.int32(not (v - v == 0))
    return bad == 0


def divide_all_finite(x, count) -> bool:
    """``x /= count`` in place, and whether every element of the result is finite.

    On the CPU one pass (the same bits as NumPy's in-place division); elsewhere the division
    and :func:`all_finite`.
    """
    if (type(x) is not np.ndarray or _CUPY_PATH_ON_NUMPY or x.dtype not in _BITS or x.size == 0
            or not x.flags.c_contiguous):
        x /= count
        return all_finite(x)
    return bool(_divide_finite(x.reshape(-1), x.dtype.type(count)))


def max_abs(x) -> float:
    """``max |x|`` over every element in one pass without a copy (NaN or Inf: ``inf``).

    On the CPU the integer-bits pass of :func:`all_finite` (NaN's bits order above Inf's).
    """
    if x.size == 0:
        return 0.0
    bits = _BITS.get(x.dtype) if type(x) is np.ndarray and not _CUPY_PATH_ON_NUMPY else None
    if bits is None:
        m = float(get_array_module(x).abs(x).max())
        return m if math.isfinite(m) else math.inf
    ints, mask, _ = bits
    x = (x if x.flags.c_contiguous else np.ascontiguousarray(x)).reshape(-1)
    v = float(np.array(_max_magnitude_bits(x.view(ints), mask), ints).view(x.dtype))
    return v if math.isfinite(v) else math.inf


def difference_sumsq(first, second, out=None):
    """``out = first − second`` and each row's ``Σ_j out_ij²``, for 2-D ``first`` and ``second``
    of one shape ``(rows, n)``.

    ``out`` may be ``first`` itself (in place); ``None``: a new array. On the CPU one pass with
    the bits of ``out = first − second`` and ``(out * out).sum(axis=1)``: NumPy's pairwise
    summation replayed (:func:`_pairwise_plan`), without a temporary of the squares. Returns
    ``(out, sums)``.
    """
    if first.shape != second.shape or first.ndim != 2:
        raise ValueError(f"difference_sumsq: shapes {first.shape} and {second.shape}; expected one 2-D shape")
    xp = get_array_module(first)
    numpy = (_path(first) == "numpy" and first.dtype.kind == "f" and first.dtype == second.dtype
             and all(a.flags.c_contiguous for a in (first, second) + (() if out is None else (out,)))
             and (out is None or out.dtype == first.dtype))
    if not numpy:
        out = xp.subtract(first, second, out=out)
        return out, (out * out).sum(axis=1)
    if out is None:
        out = np.empty_like(first)
    sums = np.empty(first.shape[0], first.dtype)
    in_place = out is first or (out.ctypes.data == first.ctypes.data and out.shape == first.shape)
    _difference_sumsq_numba(first, second, out, sums, in_place)
    return out, sums


def column_sumsq(x):
    """``d_j = Σ_i x_ij²`` of a 2-D array: the bits of ``(x * x).sum(axis=0)`` without its
    temporary (on the CPU one pass, summed row after row in ``x``'s precision, as NumPy's
    reduction over the leading axis does)."""
    if _path(x) == "cupy" or x.dtype.kind != "f" or not x.flags.c_contiguous or x.shape[0] == 0:
        return (x * x).sum(axis=0)
    out = np.empty(x.shape[1], x.dtype)
    _column_sumsq_numba(x, out)
    return out


def decorrelation_tail(M, R, d, scale: float, add: bool) -> float:
    """In place: ``M ← (M − diag(d) R) · scale (+ R)`` (``d=None``: ``M ← M · scale (+ R)``);
    returns ``max |M|`` of the result (``inf`` when it holds NaN or Inf).

    On the CPU one pass over ``M`` and ``R`` with every operation rounded to their precision
    in the order written (the bits of the NumPy expressions ``M -= d[:, None] * R``,
    ``M *= scale``, ``M += R`` and :func:`max_abs`); the divergence check of the
    decorrelation update reads the result while it is in cache.
    """
    c = M.dtype.type(scale)
    bits = _BITS.get(M.dtype) if type(M) is np.ndarray and not _CUPY_PATH_ON_NUMPY else None
    if (bits is None or M.size == 0 or not (M.flags.c_contiguous and R.flags.c_contiguous)
            or R.dtype != M.dtype):
        if d is not None:
            for i in range(0, M.shape[0], 256):          # a bounded temporary, never n×n
                M[i:i + 256] -= d[i:i + 256, None] * R[i:i + 256]
        M *= c
        if add:
            M += R
        return max_abs(M)
    has_d = d is not None
    m = _decorrelation_tail_numba(M, R, d if has_d else M[0, :0], c, has_d, bool(add))
    v = float(np.array(m, bits[0]).view(M.dtype))
    return v if math.isfinite(v) else math.inf


def leaky_relu(a, slope: float):
    """``max(a, slope·a)`` (leaky ReLU for ``0 ≤ slope < 1``) into a new array: on the CPU one
    pass with the bits of NumPy's ``maximum(a, a * slope)``."""
    s = a.dtype.type(slope)
    if _path(a) == "cupy" or a.dtype.kind != "f" or not a.flags.c_contiguous or a.size < 4096:
        xp = get_array_module(a)
        out = a * s
        return xp.maximum(a, out, out=out)
    out = np.empty_like(a)
    _leaky_relu_numba(a.reshape(-1), out.reshape(-1), s)
    return out


def dac_absmax(x, bits, bound, out=None, *, chunk=None):
    """Input scaling and DAC in one pass: ``(x̂, s, Σ_j x̂²)`` with ``s = max_j |x_ij|``.

    ``x̂ = q(x / s)`` (``s = 1`` for an all-zero row), written into ``out`` when given; the
    row sums of squares feed the read noise ``read_noise · w_max · ‖x̂‖₂`` without another
    pass over ``x̂``. With ``chunk``, the sums are per chunk of ``chunk`` columns (one per
    tile), shape ``(M, ⌈n/chunk⌉)``; without, one sum per row, shape ``(M,)``.
    """
    mode, half, step, b = converter_params(bits, bound)
    xp = get_array_module(x)
    if out is None:
        out = xp.empty_like(x)
    n, per_chunk = x.shape[1], chunk is not None
    chunk = n if chunk is None or chunk >= n else int(chunk)
    k = -(-n // chunk) if n else 1
    scale = xp.empty(x.shape[0], x.dtype)
    sumsq = xp.empty((x.shape[0], k), x.dtype)
    if _path(x) == "numpy":
        x = np.ascontiguousarray(x)
        ints = np.dtype(f"int{8 * x.itemsize}")
        mask = ints.type(np.iinfo(ints).max)              # every bit but the sign
        _dac_absmax_numba(x, x.view(ints), mask, out, scale, scale.view(ints), sumsq, max(chunk, 1),
                          mode, half, step, b)
    else:
        _dac_absmax_cupy(x, out, scale, sumsq, chunk, mode, half, step, b)
    return out, scale, (sumsq if per_chunk else sumsq[:, 0])


def read_epilogue(a, *, read_z=None, read_std=None, node_z=None, node_std=None, inject=None,
                  bits=None, bound=None, gain=1.0, post=None, out=None, read_rng=None, node_rng=None,
                  row0: int = 0):
    """``out (+)= ADC(gain · (a + read_std·z_r + node_std·z_n + inject)) · post``.

    ``read_std``, ``node_std`` and ``post`` are per-row arrays of shape ``(M,)``; ``inject``
    has the shape of ``a``. The Gaussians ``z_r``, ``z_n`` come either as arrays
    (``read_z``, ``node_z``) or from named streams (``read_rng``, ``node_rng``): the kernel
    then draws them in place from one key per stream and call (:mod:`noisesim._rng_numba`;
    on CuPy the same generator in CUDA, or arrays from the streams when ``CUPY_EPILOGUE`` is
    ``"unfused"``). ``gain`` (a scalar) maps
    the analog output onto the ADC's full scale and ``post`` maps the code back to
    pre-activation units. ``out=None`` works in place on ``a``; otherwise the result is
    *added* to ``out`` (the digital partial sum over tiles). ``row0``: with keyed noise, row
    ``i`` of ``a`` draws the normals of row ``row0 + i`` of the call's key, so the rows of one
    stack read in several calls with the same keys get the noise of a single call. Returns the
    result array.
    """
    if a.ndim != 2:
        raise ValueError(f"read_epilogue expects a 2-D array, got shape {a.shape}")
    mode, half, step, b = converter_params(bits, bound)
    path = _path(a)
    keyed = (read_rng is not None or node_rng is not None) and (path == "numpy" or CUPY_EPILOGUE == "fused")
    if not keyed:
        if read_rng is not None and read_std is not None:
            read_z = read_rng.normal(a.shape)
        if node_rng is not None and node_std is not None:
            node_z = node_rng.normal(a.shape)
    has_r = read_std is not None and (read_z is not None or (keyed and read_rng is not None))
    has_n = node_std is not None and (node_z is not None or (keyed and node_rng is not None))
    has_inj, has_post = inject is not None, post is not None
    acc = out is not None
    if not (has_r or has_n or has_inj or has_post or acc) and mode == _MODE_NONE and gain == 1.0:
        return a
    e2 = _empty2(a)
    e1 = a[0, :0]
    if keyed:
        _DISPATCH["keyed"][path](
            a, out if acc else a,
            read_rng.key() if has_r else np.uint64(0), read_std if has_r else e1,
            node_rng.key() if has_n else np.uint64(0), node_std if has_n else e1,
            inject if has_inj else e2, post if has_post else e1, float(gain),
            has_r, has_n, has_inj, has_post, acc, mode, half, step, b, int(row0),
        )
        return out if acc else a
    _DISPATCH["epilogue"][path](
        a, out if acc else a,
        read_z if has_r else e2, read_std if has_r else e1,
        node_z if has_n else e2, node_std if has_n else e1,
        inject if has_inj else e2, post if has_post else e1, float(gain),
        has_r, has_n, has_inj, has_post, acc, mode, half, step, b,
    )
    return out if acc else a


def _as2d(kernel, stride, padding):
    """A 1-D layer's geometry as a 2-D one of height 1: ``(kh, kw, sh, sw, ph, pw)``."""
    if len(kernel) == 1:
        return 1, int(kernel[0]), 1, int(stride[0]), 0, int(padding[0])
    return (int(kernel[0]), int(kernel[1]), int(stride[0]), int(stride[1]), int(padding[0]), int(padding[1]))


def col2im(d, spatial, kernel, stride, padding):
    """col2im: patch gradients ``d`` ``(N, *positions, k·C)`` (NumPy, 1 or 2 spatial axes,
    the layout of :meth:`noisesim.layers.Layer.unfold`) summed onto the input pixels,
    ``(N, *spatial, C)``, in one pass; the sums run in the order of the layer's array code
    (:meth:`~noisesim.layers.Layer.fold_plain`), so the result is the same bit for bit. CPU
    only (a Numba kernel)."""
    N = d.shape[0]
    kh, kw, sh, sw, ph, pw = _as2d(kernel, stride, padding)
    C = d.shape[-1] // (kh * kw)
    positions = d.shape[1:-1]
    Ho, Wo = (positions[0], positions[1]) if len(kernel) == 2 else (1, positions[0])
    H, W = (spatial[0], spatial[1]) if len(kernel) == 2 else (1, spatial[0])
    d = np.ascontiguousarray(d).reshape(N, Ho, Wo, kh * kw * C)
    out = np.empty((N, H, W * C), d.dtype)
    _col2im_numba(d, out, C, kh, kw, sh, sw, ph, pw)
    return out.reshape(N, *spatial, C)


def pulsed_update(gp, gm, d, r=None, *, dw_min, asymmetry=0.0, c2c=0.0, z=None, dw_scale=None,
                  bound_up=None, bound_down=None, tprog=None, now=0.0, w=None, w_scale=1.0,
                  rng=None, c2c_rng=None):
    """In place: the pulsed update of differential pairs ``(gp, gm)`` by desired steps ``d``.

    All quantities are normalised to the nominal ``g_max`` (the weight is ``u = gp − gm``).
    Per device, ``n = ⌊|d|/dw_min⌋ + Bernoulli(frac(|d|/dw_min))`` pulses (``r`` uniform on
    [0, 1); at most 65 535) of size ``s± = dw_min · dw_scale · (1 ± asymmetry)``; with soft bounds
    ``b⁺ = bound_up``, ``b⁻ = bound_down`` (1 when ``None``) the closed form of ``n`` pulses is

        u ← b⁺ − (b⁺ − u)(1 − s⁺/b⁺)ⁿ   (up),      u ← −b⁻ + (u + b⁻)(1 − s⁻/b⁻)ⁿ   (down),

    plus cycle-to-cycle noise ``c2c · s± · √n · z``, clipped to ``[−b⁻, b⁺]``; the pair is
    rewritten as ``(max(u, 0), max(−u, 0))``. Devices that received a pulse get
    ``tprog = now`` (their drift clock restarts) and, when ``w`` is given, ``w = w_scale · u``.

    The randomness comes either as arrays (``r`` uniform on [0, 1), ``z`` standard normal)
    or from the named streams ``rng`` (``update``) and ``c2c_rng`` (``c2c``), which then draw
    the arrays. (Drawing them inside the kernel, as the read epilogue does, measured slower
    here: 195 ms against 147 ms for a 3072×1024 training step.)
    """
    if r is None and rng is None:
        raise ValueError("pulsed_update: give the uniforms r or a stream rng")
    if (bound_up is None) != (bound_down is None):
        raise ValueError("pulsed_update: give both bound_up and bound_down, or neither")
    t = gp.dtype.type
    ones = _constant(gp, "ones")
    if r is None:
        r = rng.uniform(d.shape)
        if c2c > 0 and c2c_rng is not None:
            z = c2c_rng.normal(d.shape)
    if not (gp.shape == gm.shape == d.shape == r.shape):
        raise ValueError(f"pulsed_update: shapes {gp.shape}, {gm.shape}, {d.shape}, {r.shape} differ")
    if z is None or c2c <= 0:
        z, c2c = ones, 0.0
    _impl("pulsed", gp)(
        gp, gm, d, r, z, dw_scale if dw_scale is not None else ones,
        bound_up if bound_up is not None else ones, bound_down if bound_down is not None else ones,
        tprog if tprog is not None else _constant(gp, "scratch_t"),
        w if w is not None else _constant(gp, "scratch_w"),
        t(w_scale), t(now), t(dw_min), t(asymmetry), t(c2c),
    )
    return gp, gm


_CONSTANTS: dict = {}


def _constant(like, kind: str):
    """A cached array shaped like ``like``: ones (read only) or scratch space (written)."""
    xp = get_array_module(like)
    key = (kind, xp.__name__, like.shape, like.dtype.str)
    a = _CONSTANTS.get(key)
    if a is None:
        for k in [k for k in _CONSTANTS if k[0] == kind and k[1] == xp.__name__]:
            del _CONSTANTS[k]                  # keep one shape per kind: bounded memory
        a = _CONSTANTS[key] = xp.ones(like.shape, like.dtype)
    return a
