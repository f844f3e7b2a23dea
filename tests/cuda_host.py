"""The CUDA sources of :mod:`noisesim._kernels_cuda`, compiled for the CPU and run there.

A C++ compiler builds the kernels' exact source with a prelude that maps the CUDA
intrinsics onto correctly rounded C arithmetic (``-ffp-contract=off``: no contraction, as
``--fmad=false`` on the GPU) and ``blockIdx``/``threadIdx`` onto variables; each kernel gets
a host launcher that runs its grid block by block and thread by thread. :func:`fake_cupy`
returns a stand-in for the part of the ``cupy`` module that :mod:`noisesim._kernels_cuda`
uses (``RawModule``, ``ElementwiseKernel`` and a few array functions, on NumPy arrays), so the
real launch code — grids, flags, argument types — runs too. Kernels without shared memory or
synchronisation only: threads run one after another.
"""
from __future__ import annotations

import ctypes
import hashlib
import re
import shutil
import subprocess
import types
from pathlib import Path

import numpy as np

PRELUDE = r"""
#include <math.h>
#include <string.h>
struct ns_dim3 { unsigned int x, y, z; };
static ns_dim3 blockIdx, threadIdx, blockDim, gridDim;
#define __device__
#define __global__
#define __forceinline__ inline
static inline int __float_as_int(float f) { int i; memcpy(&i, &f, 4); return i; }
static inline float __int_as_float(int i) { float f; memcpy(&f, &i, 4); return f; }
static inline float __int2float_rn(int i) { return (float)i; }
static inline float __fadd_rn(float a, float b) { return a + b; }
static inline float __fsub_rn(float a, float b) { return a - b; }
static inline float __fmul_rn(float a, float b) { return a * b; }
static inline float __fdiv_rn(float a, float b) { return a / b; }
static inline float __fsqrt_rn(float a) { return sqrtf(a); }
static inline double __dadd_rn(double a, double b) { return a + b; }
static inline double __dsub_rn(double a, double b) { return a - b; }
static inline double __dmul_rn(double a, double b) { return a * b; }
static inline double __ddiv_rn(double a, double b) { return a / b; }
"""

FLAGS = ["-O2", "-std=c++17", "-ffp-contract=off", "-fno-fast-math", "-fPIC", "-shared"]

_CTYPES = {"float": ctypes.c_float, "double": ctypes.c_double, "int": ctypes.c_int,
           "long long": ctypes.c_longlong, "ns_u64": ctypes.c_ulonglong,
           "unsigned long long": ctypes.c_ulonglong}


def compiler() -> str | None:
    """A C++ compiler on the PATH, or None."""
    for name in ("g++", "c++", "clang++"):
        path = shutil.which(name)
        if path:
            return path
    return None


def _build(code: str, workdir: Path) -> ctypes.CDLL:
    tag = hashlib.sha1(code.encode()).hexdigest()[:16]
    src, lib = workdir / f"k{tag}.cpp", workdir / f"k{tag}.so"
    if not lib.exists():
        src.write_text(code)
        subprocess.run([compiler(), *FLAGS, "-o", str(lib), str(src)], check=True, capture_output=True, text=True)
    return ctypes.CDLL(str(lib))


def _params(plist: str):
    """[(C type, name)] of a C parameter list."""
    out = []
    for p in plist.split(","):
        p = " ".join(p.split())
        m = re.fullmatch(r"(.*?)\s*(\*?)\s*(\w+)", p)
        ctype, star, name = m.group(1), m.group(2), m.group(3)
        out.append((ctype + (" *" if star else ""), name))
    return out


def kernels_of(source: str) -> dict:
    """``{name: [(C type, name)]}`` of every ``extern "C" __global__`` kernel in ``source``."""
    found = re.findall(r'extern "C" __global__ void (\w+)\(([^)]*)\)', source)
    return {name: _params(plist) for name, plist in found}


def _launcher(name: str, params) -> str:
    decl = ", ".join(f"{t} {n}" for t, n in params)
    call = ", ".join(n for _, n in params)
    return f"""
extern "C" void host_{name}(unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by, unsigned bz, {decl})
{{
    gridDim.x = gx; gridDim.y = gy; gridDim.z = gz; blockDim.x = bx; blockDim.y = by; blockDim.z = bz;
    for (unsigned z = 0; z < gz; ++z) for (unsigned y = 0; y < gy; ++y) for (unsigned x = 0; x < gx; ++x)
    for (unsigned tz = 0; tz < bz; ++tz) for (unsigned ty = 0; ty < by; ++ty) for (unsigned tx = 0; tx < bx; ++tx) {{
        blockIdx.x = x; blockIdx.y = y; blockIdx.z = z; threadIdx.x = tx; threadIdx.y = ty; threadIdx.z = tz;
        {name}({call});
    }}
}}
"""


def _ctype(t: str):
    if t.endswith("*"):
        return ctypes.c_void_p
    return _CTYPES[t]


def _arg(a, t: str):
    if a is None:
        # CuPy 13 passes None as a null pointer to the parameter's value (undefined behaviour)
        raise TypeError(f"None passed for the {t} parameter; pass an array (it need not be read)")
    if isinstance(a, np.ndarray):
        if not t.endswith("*"):
            raise TypeError(f"an array passed for a {t} parameter")
        if not a.flags.c_contiguous:
            raise ValueError("arrays passed to a kernel must be C-contiguous")
        return a.ctypes.data
    if t.endswith("*"):
        raise TypeError(f"{type(a).__name__} passed for the pointer parameter {t}")
    want = {"float": np.float32, "double": np.float64, "int": np.int32, "long long": np.int64,
            "ns_u64": np.uint64, "unsigned long long": np.uint64}[t]
    if not isinstance(a, np.generic) or a.dtype != np.dtype(want):
        # a CUDA launch passes a NumPy scalar's bytes as they are: the type must match exactly
        raise TypeError(f"kernel parameter {t} got {type(a).__name__}; pass numpy.{np.dtype(want).name}")
    return a.item()


def _dims(d):
    d = tuple(int(v) for v in (d if isinstance(d, tuple) else (d,)))
    return d + (1,) * (3 - len(d))


class HostKernel:
    def __init__(self, fn, params):
        self.fn, self.params = fn, params
        fn.restype = None
        fn.argtypes = [ctypes.c_uint] * 6 + [_ctype(t) for t, _ in params]

    def __call__(self, grid, block, args, **kwargs):
        if len(args) != len(self.params):
            raise TypeError(f"{len(args)} arguments for {len(self.params)} parameters")
        self.fn(*_dims(grid), *_dims(block), *(_arg(a, t) for a, (t, _) in zip(args, self.params)))


class HostRawModule:
    """``cupy.RawModule(code=…, options=…)`` built for the CPU."""

    def __init__(self, code: str, options=(), *, workdir: Path):
        self.options = tuple(options)
        self.kernels = kernels_of(code)
        launchers = "".join(_launcher(n, p) for n, p in self.kernels.items())
        self.lib = _build(PRELUDE + code + launchers, workdir)

    def get_function(self, name: str) -> HostKernel:
        return HostKernel(getattr(self.lib, f"host_{name}"), self.kernels[name])


class HostElementwiseKernel:
    """``cupy.ElementwiseKernel`` for arrays of one shape (and scalars), built for the CPU.

    As CuPy generates it: the type placeholder ``T`` is a typedef of the arrays' dtype, input
    parameters are values, output parameters references to the array elements.
    """

    def __init__(self, in_params: str, out_params: str, operation: str, name: str, *, workdir: Path):
        self.ins = [p.split() for p in in_params.split(",")]
        self.outs = [p.split() for p in out_params.split(",")]
        self.operation, self.name, self.workdir = operation, name, workdir
        self._built = {}

    def __call__(self, *args):
        params = self.ins + self.outs
        if len(args) != len(params):
            raise TypeError(f"{self.name}: {len(args)} arguments for {len(params)} parameters")
        arrays = [a for a in args if isinstance(a, np.ndarray) and a.ndim > 0]
        shape, dtype = arrays[0].shape, arrays[0].dtype
        ctype = {np.dtype(np.float32): "float", np.dtype(np.float64): "double"}[dtype]
        is_arr = tuple(isinstance(a, np.ndarray) and a.ndim > 0 for a in args)
        for a, arr in zip(args, is_arr):
            if arr and (a.shape != shape or a.dtype != dtype or not a.flags.c_contiguous):
                raise ValueError(f"{self.name}: arrays must share shape, dtype and C order")
            if not arr and np.asarray(a).dtype != dtype:
                raise TypeError(f"{self.name}: scalar of dtype {np.asarray(a).dtype} for T = {dtype}")
        key = (ctype, is_arr)
        if key not in self._built:
            sig, bind = [], []
            for (t, n), arr, k in zip(params, is_arr, range(len(params))):
                is_out = k >= len(self.ins)
                if arr:
                    sig.append(f"{'' if is_out else 'const '}T* _raw_{n}")
                    bind.append(f"{t}{' &' if is_out else ' const'} {n} = _raw_{n}[_i];")
                else:
                    sig.append(f"T {n}")
            code = (f"#include <math.h>\ntypedef {ctype} T;\n"
                    f"extern \"C\" void {self.name}(long long _n, {', '.join(sig)})\n{{\n"
                    f"for (long long _i = 0; _i < _n; ++_i) {{\n{' '.join(bind)}\n{self.operation}\n}}\n}}\n")
            lib = _build(code, self.workdir)
            fn = getattr(lib, self.name)
            fn.restype = None
            fn.argtypes = [ctypes.c_longlong] + [ctypes.c_void_p if arr else _CTYPES[ctype] for arr in is_arr]
            self._built[key] = fn
        n = int(np.prod(shape))
        self._built[key](n, *(a.ctypes.data if arr else float(a) for a, arr in zip(args, is_arr)))


def fake_cupy(workdir: Path):
    """A stand-in for the ``cupy`` module as :mod:`noisesim._kernels_cuda` uses it, on NumPy."""
    workdir.mkdir(parents=True, exist_ok=True)
    ns = types.SimpleNamespace()
    for name in ("ascontiguousarray", "empty", "int32", "float32", "float64", "asarray", "zeros"):
        setattr(ns, name, getattr(np, name))
    ns.RawModule = lambda code, options=(): HostRawModule(code, options, workdir=workdir)
    ns.ElementwiseKernel = lambda i, o, op, name: HostElementwiseKernel(i, o, op, name, workdir=workdir)
    return ns
