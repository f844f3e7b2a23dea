"""Array backends and named random streams.

A backend is chosen once, when a network is built; numerical code afterwards asks
its arrays for their module (:func:`get_array_module`), never a global.

* ``numpy`` — CPU, with Numba-compiled kernels for the fused element-wise work.
* ``cupy`` — CUDA GPU, with CuPy element-wise kernels of the same semantics.
* ``auto`` — CuPy when a GPU is really usable (a tiny kernel runs), else NumPy.

Randomness: every stochastic component draws from its own named stream derived from
one seed (:class:`Streams`), so turning one non-ideality on never shifts the numbers
another draws.
"""
from __future__ import annotations

import logging
import sys
import zlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np

log = logging.getLogger("noisesim")

BACKENDS = ("auto", "numpy", "cupy")
DTYPES = {"float32": np.float32, "float64": np.float64}

_cupy_probe: tuple[Any, BaseException | None] | None = None


def _probe_cupy():
    """Import CuPy and run a tiny kernel; return (module or None, error or None)."""
    global _cupy_probe
    if _cupy_probe is None:
        try:
            import cupy

            a = cupy.arange(4, dtype=cupy.float32)
            float((a * a).sum())  # forces a real kernel launch and a device sync
            _cupy_probe = (cupy, None)
        except Exception as exc:  # ImportError, CUDA driver/runtime errors, no device
            _cupy_probe = (None, exc)
    return _cupy_probe


def cupy_available() -> bool:
    """True when CuPy imports and a kernel runs on a GPU."""
    return _probe_cupy()[0] is not None


def get_array_module(*arrays):
    """The array module (numpy or cupy) of the given arrays."""
    for a in arrays:
        t = type(a)
        if t is np.ndarray or t is float or t is int or a is None:      # the common cases, no lookup
            continue
        if t.__module__.split(".")[0] == "cupy":
            import cupy

            return cupy
    return np


def to_numpy(a):
    """A NumPy copy/view of a NumPy or CuPy array (scalars pass through)."""
    if type(a).__module__.split(".")[0] == "cupy":
        return a.get()
    return np.asarray(a)


def sole_owner(a, holders: int = 1) -> bool:
    """Whether NumPy array ``a`` owns its memory and nothing holds it but the caller's own
    ``holders`` references (CPython's reference count, less this call's parameter and
    ``sys.getrefcount``'s argument): then the caller may overwrite it in place and no one
    sees the change. ``False`` for every other array (views, CuPy arrays, read-only ones)."""
    return (type(a) is np.ndarray and a.base is None and a.flags.c_contiguous and a.flags.writeable
            and sys.getrefcount(a) <= holders + 2)


@dataclass(frozen=True)
class Backend:
    """An array module plus the floating dtype every device array uses."""

    name: str
    xp: Any = field(repr=False, compare=False)
    dtype: Any = np.float32

    def asarray(self, a):
        """``a`` as an array of this backend and dtype (copies only when needed)."""
        return self.xp.asarray(a, dtype=self.dtype)


def get_backend(name: str = "auto", dtype: str | Any = "float32") -> Backend:
    """Resolve a backend by name.

    ``auto`` logs one line saying what it chose and how to pin it. An explicit
    ``cupy`` without a usable GPU raises ``RuntimeError`` carrying the original error.
    """
    if isinstance(dtype, str):
        if dtype not in DTYPES:
            raise ValueError(f"dtype={dtype!r} is not supported; allowed: {sorted(DTYPES)}")
        dtype = DTYPES[dtype]
    else:
        dtype = np.dtype(dtype).type
        if dtype not in DTYPES.values():
            raise ValueError(f"dtype={np.dtype(dtype).name!r} is not supported; allowed: {sorted(DTYPES)}")
    if name not in BACKENDS:
        raise ValueError(f"backend={name!r} is not known; allowed: {list(BACKENDS)}")
    if name == "numpy":
        return Backend("numpy", np, dtype)
    cupy, err = _probe_cupy()
    if name == "cupy":
        if cupy is None:
            raise RuntimeError(
                "backend='cupy' was requested but no usable GPU was found "
                f"({type(err).__name__}: {err}); install the 'gpu' extra (CUDA 12) or 'gpu-cuda13' "
                "(CUDA 13) on a CUDA machine, or use backend='numpy'"
            ) from err
        return Backend("cupy", cupy, dtype)
    if cupy is not None:
        log.info("noisesim: backend 'auto' chose cupy (GPU found); pass backend='numpy' to pin the CPU")
        return Backend("cupy", cupy, dtype)
    log.info("noisesim: backend 'auto' chose numpy (no usable GPU); pass backend='cupy' to require one")
    return Backend("numpy", np, dtype)


# Stream names are fixed so that one seed gives the same numbers release after release.
STREAM_NAMES = ("init", "programming", "read", "node", "inject", "update", "faults", "drift", "d2d", "data", "rule")


class Streams:
    """Independent named random streams derived from one seed.

    ``Streams(seed, backend).get("read")`` always returns the same generator object for
    one ``Streams`` instance; two instances with the same seed produce identical draws.
    Each name gets its own ``SeedSequence`` child keyed by a CRC32 of the name, so a new
    stream never shifts an existing one.
    """

    def __init__(self, seed: int, backend: Backend):
        if not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ValueError(f"seed={seed!r} must be a non-negative integer")
        self.seed = int(seed)
        self.backend = backend
        self._gens: dict[str, Generator] = {}

    def get(self, name: str) -> "Generator":
        if name not in self._gens:
            key = zlib.crc32(name.encode())
            ss = np.random.SeedSequence(self.seed, spawn_key=(key,))
            self._gens[name] = Generator(ss, self.backend)
        return self._gens[name]

    def names(self) -> list[str]:
        """The streams made so far (a stream not yet made is at its start)."""
        return list(self._gens)

    def state(self) -> dict:
        """Where every stream stands: the seed and, per stream made so far, its generators'
        states (JSON, plus the GPU generator's state bytes on CuPy). See :meth:`Generator.state`."""
        names = self.names()
        return {"seed": self.seed, "backend": self.backend.name, "names": names,
                "generators": {str(i): self._gens[n].state() for i, n in enumerate(names)}}

    def load_state(self, state: dict) -> None:
        """Put every stream where ``state`` says; streams it does not list restart from the seed.

        A state recorded on another backend restores the host generators (keys, permutations
        and, on NumPy, every draw) and leaves the GPU generators at their start."""
        try:
            seed, names, gens = int(state["seed"]), list(state["names"]), state["generators"]
            if seed < 0 or len(names) != len(gens) or not all(isinstance(n, str) for n in names):
                raise ValueError("names and generators do not match")
            same_backend = state.get("backend", self.backend.name) == self.backend.name
            fresh = Streams(seed, self.backend)
            for i, n in enumerate(names):
                fresh.get(n).load_state(gens[str(i)], device=same_backend)
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"invalid random-stream state: {exc}") from None
        self.seed, self._gens = fresh.seed, fresh._gens


# NumPy draws of at least this many numbers are split in two halves filled concurrently by
# two PCG64 streams (NumPy releases the GIL while filling): the noise of a 1000×1024 read
# costs half the wall time. The split depends only on the size, so numbers stay reproducible.
_SPLIT_MIN = 1 << 18
_pool = None


def _second_thread():
    global _pool
    if _pool is None:
        from concurrent.futures import ThreadPoolExecutor

        _pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="noisesim-rng")
    return _pool


class Generator:
    """A random generator producing arrays of one backend in its dtype.

    Every stream has a host PCG64 generator seeded from its ``SeedSequence``; on the NumPy
    backend it draws everything (large array draws: two PCG64 streams, one per half, filled
    concurrently). On CuPy, arrays come from XORWOW (``cupy.random.Generator``) seeded from
    the same sequence, while keys (:meth:`key`) and permutations (:meth:`permutation`) come
    from the host PCG64 stream exactly as on NumPy. So noise drawn inside kernels from keys
    (read, node and transposed-read noise) and the data order are the same numbers on both
    backends; array draws (programming, update, injected perturbations…) differ between
    backends but are reproducible within one.
    """

    def __init__(self, seed_seq: np.random.SeedSequence, backend: Backend):
        self.backend = backend
        self._seed_seq = seed_seq
        self._g2 = None
        self._host = np.random.Generator(np.random.PCG64(seed_seq))
        # CuPy's generator is made on the first array draw: a stream that only gives keys or
        # permutations never allocates (and initialises) cuRAND states on the GPU
        self._g = self._host if backend.name != "cupy" else None

    def _device(self):
        """The ``cupy.random.Generator`` of this stream (CuPy backend)."""
        if self._g is None:
            import cupy

            s = int(self._seed_seq.generate_state(1, np.uint64)[0])
            self._g = cupy.random.Generator(cupy.random.XORWOW(s))
        return self._g

    def _split(self):
        """The second PCG64 stream that fills the upper half of large NumPy draws."""
        if self._g2 is None:
            child = np.random.SeedSequence(self._seed_seq.entropy, spawn_key=self._seed_seq.spawn_key + (0x5EC0,))
            self._g2 = np.random.Generator(np.random.PCG64(child))
        return self._g2

    # -- state ----------------------------------------------------------------------------
    def state(self) -> dict:
        """Where this stream stands, as plain data.

        ``host``: the PCG64 state (JSON) of the host generator — every draw on NumPy, keys and
        permutations on CuPy; ``split``: the PCG64 state of the second generator of large NumPy
        draws (``None`` until the first such draw); ``device``: on CuPy, the bytes of the cuRAND
        XORWOW states (a ``uint8`` array; ``None`` until the first array draw).
        """
        device = None
        if self.backend.name == "cupy" and self._g is not None:
            device = _cupy_state_bytes(self._g)
        return {"host": _pcg_state(self._host), "split": None if self._g2 is None else _pcg_state(self._g2),
                "device": device}

    def load_state(self, state: dict, *, device: bool = True) -> None:
        """Set this stream to ``state`` (from :meth:`state`); ``device=False`` skips the GPU part."""
        _set_pcg_state(self._host, state["host"])
        self._g2 = None
        if state.get("split") is not None:
            _set_pcg_state(self._split(), state["split"])
        if self.backend.name == "cupy":
            self._g = None
            if device and state.get("device") is not None:
                _set_cupy_state_bytes(self._device(), state["device"])
        elif state.get("device") is not None and device:
            raise ValueError("a CuPy generator state cannot be loaded into a NumPy stream")

    def _fill(self, method: str, out):
        """Fill a C-contiguous NumPy ``out`` with ``method`` draws (split when large)."""
        flat = out.reshape(-1)
        n = flat.size
        if n < _SPLIT_MIN:
            getattr(self._g, method)(dtype=out.dtype, out=flat)
            return out
        h = n // 2
        fut = _second_thread().submit(getattr(self._split(), method), dtype=out.dtype, out=flat[h:])
        getattr(self._g, method)(dtype=out.dtype, out=flat[:h])
        fut.result()
        return out

    def normal(self, shape, scale=1.0, dtype=None, out=None):
        """Gaussian N(0, scale²) of the backend dtype (written into ``out`` when given).

        With ``out`` the same numbers are drawn as without it; it only saves the allocation.
        """
        shape = tuple(shape) if not isinstance(shape, (int, np.integer)) else (int(shape),)
        if out is not None:
            if tuple(out.shape) != shape:
                raise ValueError(f"normal: out has shape {out.shape}, expected {shape}")
            if self.backend.name == "cupy":
                if out.flags.c_contiguous:
                    self._device().standard_normal(size=shape, dtype=out.dtype, out=out)
                else:
                    out[...] = self._device().standard_normal(size=shape, dtype=out.dtype)
            else:
                self._fill("standard_normal", out)
            z = out
        elif self.backend.name == "cupy":
            z = self._device().standard_normal(size=shape, dtype=dtype or self.backend.dtype)
        else:
            z = self._fill("standard_normal", np.empty(shape, dtype=dtype or self.backend.dtype))
        if np.isscalar(scale) and scale == 1.0:
            return z
        z *= scale
        return z

    def key(self) -> np.uint64:
        """One 64-bit key from this stream's host PCG64 generator, for noise generated inside
        a kernel; the same keys on every backend."""
        return np.uint64(self._host.bit_generator.random_raw())

    def uniform(self, shape, dtype=None):
        """Uniform on [0, 1)."""
        if self.backend.name == "cupy":
            return self._device().random(size=shape, dtype=dtype or self.backend.dtype)
        return self._fill("random", np.empty(shape, dtype=dtype or self.backend.dtype))

    def permutation(self, n: int) -> np.ndarray:
        """A host (NumPy) permutation of range(n) — used for data order; the same on every
        backend (``cupy.random.Generator`` has no permutation)."""
        return self._host.permutation(n)

    def integers(self, low, high, shape):
        """Integers in ``[low, high)``: an array of the backend."""
        if self.backend.name == "cupy":
            return self._device().integers(low, high, size=shape)
        return self._g.integers(low, high, size=shape)


class KeyTape:
    """The keys one stream gives a read, drawn on the first call and replayed on later ones.

    A stack of passes read in several calls (to bound memory) draws each read's noise from
    keys: the first call takes them from the stream (:meth:`Generator.key`) and records them,
    later calls — after :meth:`rewind` — get the same keys back, and with the rows' offset in
    the stack (``row0`` of the keyed epilogue) every row gets the noise one call would have
    drawn. Array draws (``normal``, the unfused CuPy epilogue) go to the stream itself and are
    not replayed.
    """

    __slots__ = ("gen", "keys", "pos")

    def __init__(self, gen: "Generator"):
        self.gen, self.keys, self.pos = gen, [], 0

    def rewind(self) -> None:
        self.pos = 0

    def key(self) -> np.uint64:
        if self.pos == len(self.keys):
            self.keys.append(self.gen.key())
        k = self.keys[self.pos]
        self.pos += 1
        return k

    def normal(self, *args, **kw):
        return self.gen.normal(*args, **kw)


def _pcg_state(gen) -> dict:
    st = gen.bit_generator.state
    return {"bit_generator": st["bit_generator"], "state": int(st["state"]["state"]), "inc": int(st["state"]["inc"]),
            "has_uint32": int(st["has_uint32"]), "uinteger": int(st["uinteger"])}


def _set_pcg_state(gen, st: dict) -> None:
    if not isinstance(st, dict) or st.get("bit_generator") != "PCG64":
        raise ValueError(f"not a PCG64 state: {st!r:.80}")
    vals = [st.get(k) for k in ("state", "inc", "has_uint32", "uinteger")]
    if not all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 1 << 128 for v in vals):
        raise ValueError("a PCG64 state needs non-negative integers below 2**128")
    gen.bit_generator.state = {"bit_generator": "PCG64", "state": {"state": vals[0], "inc": vals[1]},
                               "has_uint32": vals[2], "uinteger": vals[3]}


def _cupy_state_bytes(gen) -> np.ndarray:
    """The cuRAND states of a ``cupy.random.Generator`` as host bytes (its XORWOW states array)."""
    raw = getattr(getattr(gen, "bit_generator", None), "_state", None)
    if raw is None:
        raise RuntimeError("this CuPy version keeps its generator state where noisesim cannot read it; "
                           "the state of a CuPy stream cannot be saved")
    return raw.view("uint8").get()


def _set_cupy_state_bytes(gen, data) -> None:
    import cupy

    raw = getattr(getattr(gen, "bit_generator", None), "_state", None)
    data = np.asarray(data)
    if raw is None or data.dtype != np.uint8 or data.ndim != 1 or data.size != raw.nbytes:
        raise ValueError(f"a CuPy generator state of {data.size} bytes does not fit this GPU's generator "
                         f"({None if raw is None else raw.nbytes} bytes: states are per GPU model)")
    raw.view("uint8")[...] = cupy.asarray(data)
