"""CUDA kernels of the CuPy backend: the fused read epilogue and the pulsed update.

``SOURCE`` is the CUDA C++ of one :class:`cupy.RawModule`:

* the in-kernel Gaussian generator of :mod:`noisesim._rng_numba`, line for line —
  SplitMix64 counters per row keyed by :meth:`noisesim.backend.Generator.key`, the same
  element ↔ hash mapping (hash ``m`` of a row drives element ``m`` with its low 32 bits and
  element ``m + ⌈n/2⌉`` with its high 32 bits), the same inversion polynomials (their float32
  coefficients written as bit patterns, taken from that module). Every floating-point
  operation is an explicit intrinsic (``__fadd_rn``, ``__fmul_rn``, ``fmaf``,
  ``__fsqrt_rn`` …) and the module is compiled with ``--fmad=false``, so the compiler can
  neither contract nor reorder: a key gives the same normals, bit for bit, on the GPU and
  on the CPU;
* ``noisesim_keyed_f32`` / ``_f64``: one tile read's analog tail in one pass,
  ``out (+)= ADC(g·(a + σ_r z_r + σ_n z_n + inj))·post`` with ``z_r``, ``z_n`` drawn inside
  the kernel (one thread per hash: two elements of a row), the same arithmetic in the same
  order as the Numba kernel :func:`noisesim._kernels._keyed_ser`. With the same keys the
  CuPy and NumPy backends therefore draw the same read, node and transposed-read noise; the
  results differ only where the GEMMs round differently;
* ``noisesim_fill_normal`` and ``noisesim_normals_of_bits``: the generator alone, as
  :func:`noisesim._rng_numba.fill_normal` and :func:`~noisesim._rng_numba.normals_of_bits`.

The source uses nothing but CUDA intrinsics and plain C++, so the test suite also compiles
it for the host with a C++ compiler (the intrinsics mapped to correctly rounded C
arithmetic, ``-ffp-contract=off``) and checks it against the Numba kernels bit for bit, and
compiles it with ``nvcc -ptx`` where nvcc is installed.

``PULSED_BODY`` is the per-device body of the pulsed update, a :class:`cupy.ElementwiseKernel`.
"""
from __future__ import annotations

import numpy as np

from . import _rng_numba as _R

# flags of the keyed epilogue kernel
HAS_R, HAS_N, HAS_INJ, HAS_POST, ACC = 1, 2, 4, 8, 16
BLOCK = 128                 # threads per block, one hash (two elements) each
MAX_GRID_Y = 65535          # rows beyond this are looped over inside the kernel


def _f32(c) -> str:
    """A float32 constant as its exact bit pattern (no decimal rounding in any compiler)."""
    bits = int(np.asarray(c, np.float32).view(np.uint32))
    return f"__int_as_float((int)0x{bits:08x}u) /* {float(np.float32(c))!r} */"


def _horner(name: str, coefs, var: str) -> str:
    lines = [f"    float {name} = {_f32(coefs[0])};"]
    lines += [f"    {name} = fmaf({name}, {var}, {_f32(c)});" for c in coefs[1:]]
    return "\n".join(lines)


def _u64(c) -> str:
    return f"0x{int(c):016x}ULL"


SOURCE = r"""
// noisesim: in-kernel Gaussian noise (a port of noisesim/_rng_numba.py) and the fused read
// epilogue (noisesim/_kernels.py). Generated from noisesim/_kernels_cuda.py.
typedef unsigned long long ns_u64;

__device__ __forceinline__ ns_u64 ns_mix(ns_u64 z)
{
    z = (z ^ (z >> 30)) * @C1@;
    z = (z ^ (z >> 27)) * @C2@;
    return z ^ (z >> 31);
}

// the starting counter of row i for a call keyed `key`
__device__ __forceinline__ ns_u64 ns_row_state(ns_u64 key, ns_u64 i)
{
    return ns_mix(key ^ ns_mix(i * @ROW@ + @GAMMA@));
}

// hash m of a row: its low 32 bits drive element m, its high 32 bits element m + ceil(n/2)
__device__ __forceinline__ ns_u64 ns_hash(ns_u64 s, ns_u64 m)
{
    return ns_mix(s + (m + 1ULL) * @GAMMA@);
}

// log(y) for a positive normal float y: exponent by a bit cast, mantissa m in [1/sqrt2, sqrt2)
// by log(1 + f) = f L(f)
__device__ __forceinline__ float ns_log32(float y)
{
    int i = __float_as_int(y);
    int frac = i & 0x7FFFFF;
    bool up = frac > @SQRT_HALF_BITS@;
    float m = __int_as_float(frac | (up ? 0x3F000000 : 0x3F800000));
    int e = (i >> 23) - (up ? 126 : 127);
    float f = __fsub_rn(m, 1.0f);
@LOG_POLY@
    return fmaf(__int2float_rn(e), @LN2@, __fmul_rn(p, f));
}

// the standard normal of 32 bits b: sign from the top bit, |z| = (1 - q) P(w),
// q = (m + 1/2) 2^-31, w = -log(q (2 - q)); central polynomial for w < 8, tail beyond
__device__ __forceinline__ float ns_normal(int b)
{
    int m = b & 0x7FFFFFFF;
    float q = __fmul_rn(__fadd_rn(__int2float_rn(m), 0.5f), @TWO_M31@);
    float p1 = __fmul_rn(__fadd_rn(__int2float_rn(0x7FFFFFFF - m), 0.5f), @TWO_M31@);
    float w = -ns_log32(__fmul_rn(q, __fadd_rn(1.0f, p1)));
    float r;
    if (w < @W_SPLIT@) {
        float u = __fsub_rn(w, 4.0f);
@CENTRAL_POLY@
        r = __fmul_rn(p, p1);
    } else {
        float u = __fsub_rn(__fsqrt_rn(w), 3.5f);
@TAIL_POLY@
        r = __fmul_rn(p, p1);
    }
    return b < 0 ? -r : r;
}

__device__ __forceinline__ int ns_lo(ns_u64 x) { return (int)(unsigned int)(x & 0xFFFFFFFFULL); }
__device__ __forceinline__ int ns_hi(ns_u64 x) { return (int)(unsigned int)(x >> 32); }

// correctly rounded, never contracted arithmetic of either precision
__device__ __forceinline__ float ns_add(float a, float b) { return __fadd_rn(a, b); }
__device__ __forceinline__ double ns_add(double a, double b) { return __dadd_rn(a, b); }
__device__ __forceinline__ float ns_mul(float a, float b) { return __fmul_rn(a, b); }
__device__ __forceinline__ double ns_mul(double a, double b) { return __dmul_rn(a, b); }
__device__ __forceinline__ float ns_div(float a, float b) { return __fdiv_rn(a, b); }
__device__ __forceinline__ double ns_div(double a, double b) { return __ddiv_rn(a, b); }
__device__ __forceinline__ float ns_rint(float a) { return rintf(a); }
__device__ __forceinline__ double ns_rint(double a) { return rint(a); }

// the converter of noisesim/_kernels.py: w <- q(g w) p
template <typename T>
__device__ __forceinline__ T ns_convert(T w, T g, T p, int mode, T half, T s, T b)
{
    T v = ns_mul(w, g);
    if (mode == @MODE_QUANT@) {
        T k = ns_rint(ns_div(v, s));
        k = k > half ? half : k;
        k = k < -half ? -half : k;
        return ns_mul(ns_mul(k, s), p);
    }
    if (mode == @MODE_CLIP@) {
        v = v > b ? b : v;
        v = v < -b ? -b : v;
    } else if (mode == @MODE_SIGN@) {
        v = v >= (T)0 ? b : -b;
    }
    return ns_mul(v, p);
}

template <typename T>
__device__ __forceinline__ void ns_epilogue_at(const T* a, T* out, ns_u64 k, float zr, T r, float zn, T q,
                                               const T* inj, T g, T p, int flags, int mode, T half, T s, T b)
{
    T v = a[k];
    if (flags & @HAS_R@) v = ns_add(v, ns_mul(r, (T)zr));
    if (flags & @HAS_N@) v = ns_add(v, ns_mul(q, (T)zn));
    if (flags & @HAS_INJ@) v = ns_add(v, inj[k]);
    T y = ns_convert(v, g, p, mode, half, s, b);
    out[k] = (flags & @ACC@) ? ns_add(out[k], y) : y;
}

// out (+)= ADC(g (a + rs z_r + ns z_n + inj)) post, row-major (M, N); out may be a (in place).
// grid: x over the ceil(N/2) hashes of a row, y over rows (looped beyond gridDim.y)
template <typename T>
__device__ __forceinline__ void ns_keyed(const T* a, T* out, long long M, long long N,
                                         ns_u64 rkey, const T* rs, ns_u64 nkey, const T* ns,
                                         const T* inj, const T* post, T g, int flags, int mode,
                                         T half, T s, T b, long long row0)
{
    long long h = (N + 1) / 2;
    long long m = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (m >= h) return;
    bool second = m + h < N;
    for (long long i = blockIdx.y; i < M; i += gridDim.y) {
        float zr0 = 0.0f, zr1 = 0.0f, zn0 = 0.0f, zn1 = 0.0f;
        T r = (T)0, q = (T)0, p = (T)1;
        if (flags & @HAS_R@) {
            ns_u64 x = ns_hash(ns_row_state(rkey, (ns_u64)(row0 + i)), (ns_u64)m);
            zr0 = ns_normal(ns_lo(x));
            if (second) zr1 = ns_normal(ns_hi(x));
            r = rs[i];
        }
        if (flags & @HAS_N@) {
            ns_u64 x = ns_hash(ns_row_state(nkey, (ns_u64)(row0 + i)), (ns_u64)m);
            zn0 = ns_normal(ns_lo(x));
            if (second) zn1 = ns_normal(ns_hi(x));
            q = ns[i];
        }
        if (flags & @HAS_POST@) p = post[i];
        ns_u64 k = (ns_u64)(i * N + m);
        ns_epilogue_at(a, out, k, zr0, r, zn0, q, inj, g, p, flags, mode, half, s, b);
        if (second) ns_epilogue_at(a, out, k + (ns_u64)h, zr1, r, zn1, q, inj, g, p, flags, mode, half, s, b);
    }
}

extern "C" __global__ void noisesim_keyed_f32(const float* a, float* out, long long M, long long N,
                                              ns_u64 rkey, const float* rs, ns_u64 nkey, const float* ns,
                                              const float* inj, const float* post, float g, int flags,
                                              int mode, float half, float s, float b, long long row0)
{
    ns_keyed<float>(a, out, M, N, rkey, rs, nkey, ns, inj, post, g, flags, mode, half, s, b, row0);
}

extern "C" __global__ void noisesim_keyed_f64(const double* a, double* out, long long M, long long N,
                                              ns_u64 rkey, const double* rs, ns_u64 nkey, const double* ns,
                                              const double* inj, const double* post, double g, int flags,
                                              int mode, double half, double s, double b, long long row0)
{
    ns_keyed<double>(a, out, M, N, rkey, rs, nkey, ns, inj, post, g, flags, mode, half, s, b, row0);
}

// out (M, N) float32 <- the normals of row i for `key` (noisesim._rng_numba.fill_normal)
extern "C" __global__ void noisesim_fill_normal(float* out, long long M, long long N, ns_u64 key)
{
    long long h = (N + 1) / 2;
    long long m = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (m >= h) return;
    for (long long i = blockIdx.y; i < M; i += gridDim.y) {
        ns_u64 x = ns_hash(ns_row_state(key, (ns_u64)i), (ns_u64)m);
        out[i * N + m] = ns_normal(ns_lo(x));
        if (m + h < N) out[i * N + m + h] = ns_normal(ns_hi(x));
    }
}

// out[k] <- the normal of the 32-bit pattern b[k] (noisesim._rng_numba.normals_of_bits)
extern "C" __global__ void noisesim_normals_of_bits(const int* b, float* out, long long n)
{
    long long k = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    for (; k < n; k += (long long)blockDim.x * gridDim.x) out[k] = ns_normal(b[k]);
}
"""

_SUBST = {
    "C1": _u64(_R._C1), "C2": _u64(_R._C2), "ROW": _u64(_R._ROW), "GAMMA": _u64(_R._GAMMA),
    "SQRT_HALF_BITS": f"0x{int(_R._SQRT_HALF_BITS):X}",
    "LN2": _f32(_R._LN2), "W_SPLIT": _f32(_R.W_SPLIT),
    "LOG_POLY": _horner("p", _R._LOG1P, "f"),
    "CENTRAL_POLY": "    " + _horner("p", _R._PC, "u").replace("\n", "\n    "),
    "TAIL_POLY": "    " + _horner("p", _R._PT, "u").replace("\n", "\n    "),
    "TWO_M31": _f32(2.0 ** -31), "MODE_QUANT": "2", "MODE_CLIP": "1", "MODE_SIGN": "3",
    "HAS_R": str(HAS_R), "HAS_N": str(HAS_N), "HAS_INJ": str(HAS_INJ), "HAS_POST": str(HAS_POST), "ACC": str(ACC),
}
for _k, _v in _SUBST.items():
    SOURCE = SOURCE.replace(f"@{_k}@", _v)
assert "@" not in SOURCE, "unsubstituted placeholder in the CUDA source"

# NVRTC options: no fused multiply-adds but the explicit ones (fmaf), IEEE division and sqrt
OPTIONS = ("--fmad=false", "--prec-div=true", "--prec-sqrt=true")

PULSED_PARAMS = ("T d, T r, T z, T dws, T bp, T bm, T w_scale, T dw_min, T asym, T c2c, T now",
                 "T gp, T gm, T tprog, T w")
# the pulsed update of one device pair (see noisesim._kernels.pulsed_update)
PULSED_BODY = r"""
T x = d / dw_min;
T ax = fabs(x);
T n = floor(ax);
if (r < ax - n) n += 1;
if (n > (T)65535) n = (T)65535;
if (n > 0) {
    T s = dw_min * dws;
    T u = gp - gm;
    T v, st, base;
    if (x > 0) {
        st = s * (1 + asym);
        base = bp > 0 ? 1 - st / bp : 0;
        if (base < 0) base = 0;
        v = bp - (bp - u) * pow(base, n);
    } else {
        st = s * (1 - asym);
        base = bm > 0 ? 1 - st / bm : 0;
        if (base < 0) base = 0;
        v = -bm + (u + bm) * pow(base, n);
    }
    v += c2c * st * sqrt(n) * z;
    if (v > bp) v = bp;
    if (v < -bm) v = -bm;
    gp = v >= 0 ? v : (T)0;
    gm = v >= 0 ? (T)0 : -v;
    tprog = now;
    w = w_scale * v;
}
"""

_module = None
_functions: dict = {}
_pulsed = None


def _cupy():
    import cupy

    return cupy


def function(name: str):
    """Kernel ``name`` of ``SOURCE`` as a :class:`cupy.RawKernel` (compiled on first use and
    cached by CuPy, on disk too)."""
    global _module
    fn = _functions.get(name)
    if fn is None:
        if _module is None:
            _module = _cupy().RawModule(code=SOURCE, options=OPTIONS)
        fn = _functions[name] = _module.get_function(name)
    return fn


def reset() -> None:
    """Forget the compiled module and kernels (they are built again on next use)."""
    global _module, _pulsed
    _module, _pulsed = None, None
    _functions.clear()


def _grid(M: int, N: int):
    h = (N + 1) // 2
    return (max(1, -(-h // BLOCK)), max(1, min(M, MAX_GRID_Y))), (BLOCK,)


def keyed_epilogue(a, out, rkey, rs, nkey, ns, inj, post, gain, has_r, has_n, has_inj, has_post, acc,
                   mode, half, step, bound, row0=0):
    """The keyed read epilogue on CuPy arrays, the arguments of the Numba ``_keyed_ser``.

    ``a`` and ``out`` are C-contiguous ``(M, N)`` arrays (``out is a`` in place); the per-row
    arrays are ``(M,)`` of the same dtype; absent ones (``None``) are never read.
    """
    cp = _cupy()
    M, N = a.shape
    if M == 0 or N == 0:
        return
    t = a.dtype.type
    if a.dtype == np.float32:
        fn = function("noisesim_keyed_f32")
    elif a.dtype == np.float64:
        fn = function("noisesim_keyed_f64")
    else:
        raise TypeError(f"keyed epilogue: dtype {a.dtype} is not float32 or float64")
    if not (a.flags.c_contiguous and out.flags.c_contiguous):
        raise ValueError("keyed epilogue: a and out must be C-contiguous")

    def arg(v, on):
        # an absent array is passed as `a`, never read: CuPy 13 turns None into a null pointer
        # *to* the parameter (undefined behaviour), not into a null parameter
        return cp.ascontiguousarray(v, dtype=a.dtype) if on else a

    flags = (HAS_R * bool(has_r) | HAS_N * bool(has_n) | HAS_INJ * bool(has_inj)
             | HAS_POST * bool(has_post) | ACC * bool(acc))
    grid, block = _grid(M, N)
    fn(grid, block, (a, out, np.int64(M), np.int64(N), np.uint64(rkey), arg(rs, has_r), np.uint64(nkey),
                     arg(ns, has_n), arg(inj, has_inj), arg(post, has_post), t(gain), np.int32(flags),
                     np.int32(mode), t(half), t(step), t(bound), np.int64(row0)))


def fill_normal(out, key) -> None:
    """``out`` (2-D CuPy float32, C-contiguous) filled as :func:`noisesim._rng_numba.fill_normal`."""
    M, N = out.shape
    if out.dtype != np.float32 or not out.flags.c_contiguous:
        raise ValueError("fill_normal: out must be a C-contiguous float32 array")
    if M and N:
        grid, block = _grid(M, N)
        function("noisesim_fill_normal")(grid, block, (out, np.int64(M), np.int64(N), np.uint64(key)))


def normals_of_bits(b):
    """The normals of 32-bit patterns ``b`` (a CuPy int32 array), on the GPU."""
    cp = _cupy()
    b = cp.ascontiguousarray(b, dtype=cp.int32)
    out = cp.empty(b.shape, cp.float32)
    n = b.size
    if n:
        function("noisesim_normals_of_bits")(
            (min(-(-n // 256), 4096),), (256,), (b, out, np.int64(n)))
    return out


def pulsed(gp, gm, d, r, z, dws, bp, bm, tprog, w, w_scale, now, dw_min, asym, c2c):
    """The pulsed update (arguments of the Numba ``_pulsed_ser``) as a CuPy element-wise kernel."""
    global _pulsed
    if _pulsed is None:
        _pulsed = _cupy().ElementwiseKernel(*PULSED_PARAMS, PULSED_BODY, "noisesim_pulsed")
    _pulsed(d, r, z, dws, bp, bm, w_scale, dw_min, asym, c2c, now, gp, gm, tprog, w)
