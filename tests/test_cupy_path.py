"""The CuPy backend's code, checked on a machine without a GPU.

* The CUDA sources of :mod:`noisesim._kernels_cuda`, compiled for the CPU with a C++
  compiler (``tests/cuda_host.py``) and launched through the module's own Python launchers:
  the in-kernel normals and the fused read epilogue are bit-identical to the Numba kernels;
  the pulsed update's element-wise body agrees with Numba's to float rounding.
* The same source compiles with ``nvcc -ptx`` for sm_90 (the H200), with NVRTC's options.
* The CuPy path's array logic (everything in :mod:`noisesim._kernels` written with ``xp``)
  runs on NumPy arrays and equals the Numba kernels on the same inputs and noise arrays, for
  float32 and float64 and every converter mode; whole ``Network.forward`` calls routed
  through the CuPy path (fused and unfused) equal the NumPy backend's.
* Keys and permutations are the same numbers on every backend.

What only a GPU can show — CuPy's own kernels, NVRTC, the speed — is in the ``cupy`` cases
of the ``backend_name`` fixture and in ``benchmarks/gpu_check.sh``.
"""
from __future__ import annotations

import itertools
import json
import os
import shutil
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest

import cuda_host
import noisesim
from noisesim import _kernels, _kernels_cuda, _rng_numba
from noisesim.backend import Backend, Generator, Streams, get_backend

ROOT = Path(__file__).resolve().parents[1]
MODES = [(None, None), (None, 1.5), (1, 2.0), (6, 1.0)]       # none, clip, sign, quantiser
MODE_IDS = ["none", "clip", "sign", "quant"]


@pytest.fixture(scope="session")
def host_cupy(tmp_path_factory):
    if cuda_host.compiler() is None:
        pytest.skip("no C++ compiler (g++, c++ or clang++) on the PATH to build the CUDA sources for the CPU")
    return cuda_host.fake_cupy(tmp_path_factory.mktemp("cuda_host"))


@pytest.fixture
def cuda_on_host(host_cupy, monkeypatch):
    """noisesim._kernels_cuda with its kernels compiled for the CPU, on NumPy arrays."""
    monkeypatch.setattr(_kernels_cuda, "_cupy", lambda: host_cupy)
    _kernels_cuda.reset()
    yield host_cupy
    _kernels_cuda.reset()


@pytest.fixture(params=["fused", "unfused"])
def cupy_path(request, cuda_on_host, monkeypatch):
    """The CuPy code path of noisesim._kernels on NumPy arrays (its CUDA kernels on the CPU)."""
    monkeypatch.setattr(_kernels, "_CUPY_PATH_ON_NUMPY", True)
    monkeypatch.setattr(_kernels, "CUPY_EPILOGUE", request.param)
    return request.param


# --- the CUDA generator, on the CPU -------------------------------------------------------------
def test_cuda_normals_are_bit_identical_to_numba(cuda_on_host):
    rng = np.random.default_rng(11)
    m = np.concatenate([rng.integers(0, 2 ** 31, 10 ** 6),
                        np.arange(0, 400_000),                    # every tail pattern (w ≥ 8)
                        np.arange(2 ** 31 - 1000, 2 ** 31)])       # z ≈ 0
    for sign in (0, -2 ** 31):
        b = (m + sign).astype(np.int32)
        got = _kernels_cuda.normals_of_bits(b)
        np.testing.assert_array_equal(got.view(np.int32), _rng_numba.normals_of_bits(b).view(np.int32))


@pytest.mark.parametrize("shape", [(1, 1), (3, 2), (5, 7), (9, 33), (70, 257), (40, 1000)])
def test_cuda_fill_normal_is_bit_identical_to_numba(cuda_on_host, monkeypatch, shape):
    monkeypatch.setattr(_kernels_cuda, "MAX_GRID_Y", 4)          # rows beyond the grid: the loop
    for key in (0, 1, 2024, 2 ** 64 - 1):
        got = np.empty(shape, np.float32)
        _kernels_cuda.fill_normal(got, key)
        ref = np.empty(shape, np.float32)
        _rng_numba.fill_normal(ref, key)
        np.testing.assert_array_equal(got.view(np.int32), ref.view(np.int32))


def _operands(dtype, M=9, N=13, seed=0):
    r = np.random.default_rng(seed)
    a, inj, base = (r.standard_normal((M, N)).astype(dtype) for _ in range(3))
    rs, ns, post = (r.uniform(0.1, 2, M).astype(dtype) for _ in range(3))
    return a, inj, base, rs, ns, post


@pytest.mark.parametrize("bits, bound", MODES, ids=MODE_IDS)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_fused_epilogue_kernel_equals_numba(cuda_on_host, monkeypatch, dtype, bits, bound):
    """The CUDA keyed epilogue against the Numba one, every combination of read noise, node
    noise, injection, post-scale and accumulation, in place and not: bit for bit."""
    monkeypatch.setattr(_kernels_cuda, "MAX_GRID_Y", 4)
    mode, half, step, b = _kernels.converter_params(bits, bound)
    a, inj, base, rs, ns, post = _operands(dtype)
    for has_r, has_n, has_inj, has_post, acc in itertools.product([False, True], repeat=5):
        args = lambda: (np.uint64(2 ** 63 + 5), rs, np.uint64(77), ns, inj, post, 0.75,
                        has_r, has_n, has_inj, has_post, acc, mode, half, step, b)
        outs = []
        for fn in (_kernels_cuda.keyed_epilogue, _kernels._keyed_ser):
            x = a.copy()
            out = base.copy() if acc else x
            fn(x, out, *args())
            outs.append(out)
        np.testing.assert_array_equal(outs[0], outs[1], err_msg=f"r={has_r} n={has_n} inj={has_inj} "
                                                                f"post={has_post} acc={acc}")


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_fused_epilogue_row_offset_reads_a_stack_in_parts(cuda_on_host, monkeypatch, dtype):
    """``row0``: rows 7… of a call keyed k, run as their own call with ``row0=7``, get the noise
    of the whole call — on the CUDA kernel and the Numba one alike, bit for bit."""
    monkeypatch.setattr(_kernels_cuda, "MAX_GRID_Y", 4)
    a, inj, base, rs, ns, post = _operands(dtype)
    args = lambda rows: (np.uint64(2 ** 63 + 5), rs[rows], np.uint64(77), ns[rows], inj[rows], post[rows], 0.75,
                         True, True, True, True, False, *_kernels.converter_params(8, 4.0))
    whole = a.copy()
    _kernels._keyed_ser(whole, whole, *args(slice(None)))
    for fn in (_kernels_cuda.keyed_epilogue, _kernels._keyed_ser):
        part = a[7:].copy()
        fn(part, part, *args(slice(7, None)), 7)
        np.testing.assert_array_equal(part, whole[7:])


def test_fused_epilogue_launcher_checks_its_arguments(cuda_on_host):
    a = np.ones((4, 6), np.float32)
    with pytest.raises(ValueError, match="C-contiguous"):
        _kernels_cuda.keyed_epilogue(a[:, ::2], a[:, ::2], 1, None, 0, None, None, None, 1.0,
                                     False, False, False, False, False, 0, 0, 0.0, 0.0)
    with pytest.raises(TypeError, match="float32 or float64"):
        _kernels_cuda.keyed_epilogue(a.astype(np.float16), a.astype(np.float16), 1, None, 0, None, None, None,
                                     1.0, False, False, False, False, False, 0, 0, 0.0, 0.0)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_pulsed_elementwise_body_agrees_with_numba(cuda_on_host, dtype):
    r = np.random.default_rng(3)
    shape = (30, 40)
    u0 = r.uniform(-0.9, 0.9, shape)
    gp0, gm0 = np.maximum(u0, 0).astype(dtype), np.maximum(-u0, 0).astype(dtype)
    d = (r.standard_normal(shape) * 0.01).astype(dtype)
    rr, dws = r.uniform(0, 1, shape).astype(dtype), r.uniform(0.7, 1.3, shape).astype(dtype)
    z = r.standard_normal(shape).astype(dtype)
    bp, bm = (r.uniform(0.9, 1.2, shape).astype(dtype) for _ in range(2))
    t = np.dtype(dtype).type
    res = []
    for fn in (_kernels_cuda.pulsed, _kernels._pulsed_ser):
        gp, gm = gp0.copy(), gm0.copy()
        tp, w = np.zeros(shape, dtype), np.zeros(shape, dtype)
        fn(gp, gm, d, rr, z, dws, bp, bm, tp, w, t(2.0), t(7.0), t(0.002), t(0.1), t(0.3))
        res.append((gp, gm, tp, w))
    tol = dict(rtol=2e-4, atol=1e-6) if dtype == "float32" else dict(rtol=1e-9, atol=1e-12)
    for got, ref in zip(*res):
        np.testing.assert_allclose(got, ref, **tol)
    np.testing.assert_array_equal(res[0][2], res[1][2])           # the same devices moved


# --- the same source through nvcc ---------------------------------------------------------------
_PULSED_WRAPPER = """
typedef {T} T;
extern "C" __global__ void pulsed_{T}(const T* _d, const T* _r, const T* _z, const T* _dws, const T* _bp,
                                     const T* _bm, T w_scale, T dw_min, T asym, T c2c, T now,
                                     T* _gp, T* _gm, T* _tprog, T* _w, long long _n)
{{
    long long _i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (_i >= _n) return;
    const T d = _d[_i], r = _r[_i], z = _z[_i], dws = _dws[_i], bp = _bp[_i], bm = _bm[_i];
    T &gp = _gp[_i], &gm = _gm[_i], &tprog = _tprog[_i], &w = _w[_i];
    {body}
}}
"""


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc (the CUDA compiler) is not installed")
def test_cuda_sources_compile_for_sm90_with_nvcc(tmp_path):
    """The module as CuPy compiles it (NVRTC options) and the pulsed body in an element-wise
    wrapper like CuPy's, for the H200 (sm_90). NVRTC includes no headers: neither does the
    source."""
    assert "#include" not in _kernels_cuda.SOURCE
    src = tmp_path / "noisesim.cu"
    src.write_text(_kernels_cuda.SOURCE)
    ptx = tmp_path / "noisesim.ptx"
    subprocess.run(["nvcc", "-ptx", "-arch=sm_90", *_kernels_cuda.OPTIONS, "-o", str(ptx), str(src)],
                   check=True, capture_output=True, text=True)
    text = ptx.read_text()
    for name in ("noisesim_keyed_f32", "noisesim_keyed_f64", "noisesim_fill_normal", "noisesim_normals_of_bits"):
        assert f".entry {name}(" in text
    for t in ("float", "double"):
        body = tmp_path / f"pulsed_{t}.cu"
        body.write_text(_PULSED_WRAPPER.format(T=t, body=_kernels_cuda.PULSED_BODY))
        subprocess.run(["nvcc", "-ptx", "-arch=sm_90", "-o", str(tmp_path / f"pulsed_{t}.ptx"), str(body)],
                       check=True, capture_output=True, text=True)


# --- the CuPy path's array logic on NumPy arrays -----------------------------------------------
def _both_paths(monkeypatch, fn):
    """``fn()`` on the Numba path and on the CuPy path (NumPy arrays): (numba, cupy-path)."""
    ref = fn()
    monkeypatch.setattr(_kernels, "_CUPY_PATH_ON_NUMPY", True)
    try:
        got = fn()
    finally:
        monkeypatch.setattr(_kernels, "_CUPY_PATH_ON_NUMPY", False)
    return ref, got


@pytest.mark.parametrize("bits, bound", MODES, ids=MODE_IDS)
def test_cupy_converter_logic_equals_numba(monkeypatch, dtype_name, bits, bound):
    r = np.random.default_rng(0)
    x = r.uniform(-4, 4, (33, 17)).astype(dtype_name)
    x[0, :4] = [0.0, -0.0, 1e-30, -1e-30]
    gain = r.uniform(0.2, 2, 33).astype(dtype_name)
    for g in (None, gain):
        ref, got = _both_paths(monkeypatch, lambda: _kernels.convert(x, bits, bound, gain=g))
        np.testing.assert_array_equal(got, ref)


@pytest.mark.parametrize("bits, bound", MODES, ids=MODE_IDS)
def test_cupy_dac_logic_equals_numba(monkeypatch, dtype_name, bits, bound):
    r = np.random.default_rng(7)
    x = r.uniform(-3, 3, (20, 50)).astype(dtype_name)
    x[3] = 0
    for chunk in (None, 16, 50, 64):
        ref, got = _both_paths(monkeypatch, lambda: _kernels.dac_absmax(x, bits, bound, chunk=chunk))
        np.testing.assert_array_equal(got[0], ref[0])             # x̂ and the scale: exact
        np.testing.assert_array_equal(got[1], ref[1])
        assert got[2].shape == ref[2].shape
        np.testing.assert_allclose(got[2], ref[2], rtol=1e-5 if dtype_name == "float32" else 1e-12)
    bad = x.copy()
    bad[5, 7] = np.nan
    bad[9, 1] = -np.inf
    with np.errstate(invalid="ignore"):          # NumPy warns where CuPy's kernels do not
        ref, got = _both_paths(monkeypatch, lambda: _kernels.dac_absmax(bad, bits, bound)[1])
    assert not np.isfinite(got[[5, 9]]).any() and not np.isfinite(ref[[5, 9]]).any()
    ref, got = _both_paths(monkeypatch, lambda: (_kernels.all_finite(bad), _kernels.all_finite(x)))
    assert ref == got == (False, True)


@pytest.mark.parametrize("bits, bound", MODES, ids=MODE_IDS)
def test_cupy_epilogue_logic_equals_numba(monkeypatch, dtype_name, bits, bound):
    """The unfused CuPy epilogue (noise as arrays) against the Numba array epilogue."""
    a, inj, base, rs, ns, post = _operands(dtype_name, M=40, N=23)
    r = np.random.default_rng(2)
    zr, zn = (r.standard_normal(a.shape).astype(dtype_name) for _ in range(2))
    for has_r, has_n, has_inj, has_post, acc in itertools.product([False, True], repeat=5):
        def run():
            x = a.copy()
            out = base.copy() if acc else None
            return _kernels.read_epilogue(
                x, read_z=zr if has_r else None, read_std=rs if has_r else None,
                node_z=zn if has_n else None, node_std=ns if has_n else None, inject=inj if has_inj else None,
                bits=bits, bound=bound, gain=0.5, post=post if has_post else None, out=out)
        ref, got = _both_paths(monkeypatch, run)
        np.testing.assert_array_equal(got, ref, err_msg=f"r={has_r} n={has_n} inj={has_inj} post={has_post} acc={acc}")


# --- whole reads and passes through the CuPy path ------------------------------------------------
def _keyed_normals(self, shape, scale=1.0, dtype=None, out=None):
    """Generator.normal replaced by what the fused kernel draws from the stream's next key."""
    z = np.empty(shape, np.float32)
    _rng_numba.fill_normal(z, self.key())
    return z


def _forward(net, x, *, stacked=False):
    if stacked:
        p = net.forward_stacked(x, 3, clean=[False, True, False],
                                inject=[np.full((3, len(x), n), 0.01, net.dtype) for n in net.sizes[1:]])
    else:
        p = net.forward(x)
    return [np.array(a) for a in p.pre]


def _agree(got, ref, rel):
    """Equal but for a few elements off by one ADC code (read-noise std from Σx̂² summed in
    another order): at most 0.3 % of the elements beyond ``rel`` relative difference."""
    for g, r in zip(got, ref):
        d = np.abs(g - r)
        off = d > rel * (1 + np.abs(r))
        assert off.mean() <= 0.003, f"{off.mean():.2%} of the elements differ"


DEVICES = {
    "ideal": (dict(), True),
    "ideal-read-noise": (dict(read_noise=0.02, w_max=1.0, out_noise=0.01), True),
    "pcm": (dict(preset="pcm"), False),
    "pcm-untiled": (dict(preset="pcm", tile_rows=None, tile_cols=None), False),
    "reram": (dict(preset="reram"), False),
}


def _device(spec):
    spec = dict(spec)
    name = spec.pop("preset", "ideal")
    access = ("observe", "clean", "inject", "backward", "oracle")
    return noisesim.DeviceConfig.preset(name, access=access, **spec)


@pytest.mark.parametrize("device", list(DEVICES))
def test_network_passes_through_the_cupy_path_equal_numpy(cupy_path, monkeypatch, dtype_name, device):
    """Forward (single and stacked with clean and injected passes) and transposed reads of
    the same network, once on the Numba path and once on the CuPy path: the same numbers.
    Without ``abs_max`` scaling bit for bit; with it up to the order of one sum."""
    spec, exact = DEVICES[device]
    dev = _device(spec)
    sizes = [70, 40, 10] if exact else [600, 50]
    x = np.random.default_rng(1).uniform(-1, 1, (24, sizes[0])).astype(dtype_name)
    d = np.random.default_rng(2).standard_normal((24, sizes[-1])).astype(dtype_name)

    def run():
        net = noisesim.Network.mlp(sizes, dev, seed=3, backend="numpy", dtype=dtype_name)
        with monkeypatch.context() as m:
            if cupy_path == "unfused" and _kernels._CUPY_PATH_ON_NUMPY:
                # the unfused path draws its noise as arrays from the streams: give it the
                # numbers the fused kernel draws from the same keys
                m.setattr(Generator, "normal", _keyed_normals)
            outs = _forward(net, x) + _forward(net, x, stacked=True)
            outs.append(np.array(net.backward_read(net.n_layers - 1, d)))
        return outs

    ref = run()
    calls = {"keyed": 0, "epilogue": 0}
    for op in calls:
        def counted(*args, _op=op, _fn=_kernels._DISPATCH[op]["cupy"]):
            calls[_op] += 1
            return _fn(*args)
        monkeypatch.setitem(_kernels._DISPATCH[op], "cupy", counted)
    monkeypatch.setattr(_kernels, "_CUPY_PATH_ON_NUMPY", True)
    got = run()
    # every read went through the CuPy path's epilogue of the kind under test
    assert calls["keyed" if cupy_path == "fused" else "epilogue"] > 0
    assert calls["epilogue" if cupy_path == "fused" else "keyed"] == 0
    if exact:
        for g, r in zip(got, ref):
            np.testing.assert_array_equal(g, r)
    else:
        _agree(got, ref, 1e-5 if dtype_name == "float32" else 1e-10)


def test_pulsed_update_through_the_cupy_path_agrees(cuda_on_host, monkeypatch):
    x = np.random.default_rng(4).uniform(0, 1, (32, 60)).astype(np.float32)

    def run():
        net = noisesim.Network.mlp([60, 20], noisesim.DeviceConfig.preset("reram"), seed=5, backend="numpy")
        for _ in range(3):
            p = net.forward(x)
            net.apply_update(0, -0.05 * (p.out.T @ x) / len(x))
        return [np.array(g) for g in net.tiles[0].conductances()]

    ref = run()
    monkeypatch.setattr(_kernels, "_CUPY_PATH_ON_NUMPY", True)
    monkeypatch.setattr(_kernels, "CUPY_EPILOGUE", "fused")
    got = run()
    for g, r in zip(got, ref):
        np.testing.assert_allclose(g, r, rtol=2e-3, atol=1e-4)


# --- streams ------------------------------------------------------------------------------------
def test_keys_and_permutations_are_the_same_on_every_backend(monkeypatch):
    """The CuPy backend's keys (the in-kernel noise) and permutations (the data order) come
    from the same host PCG64 stream as the NumPy backend's; its arrays come from cupy.random."""
    made = []
    fake = types.ModuleType("cupy")
    fake.random = types.SimpleNamespace(
        XORWOW=lambda seed: ("xorwow", seed),
        Generator=lambda bg: made.append(bg) or types.SimpleNamespace(random=lambda size, dtype: ("uniform", bg)))
    monkeypatch.setitem(sys.modules, "cupy", fake)
    np_streams = Streams(9, get_backend("numpy"))
    cp_streams = Streams(9, Backend("cupy", fake, np.float32))
    for name in ("read", "node", "backward", "eval/read"):
        assert [cp_streams.get(name).key() for _ in range(5)] == [np_streams.get(name).key() for _ in range(5)]
    np.testing.assert_array_equal(cp_streams.get("data").permutation(1000), np_streams.get("data").permutation(1000))
    assert made == []                        # keys and permutations allocate no GPU generator
    for name in ("update", "faults"):
        assert cp_streams.get(name).uniform((3, 4))[0] == "uniform"
        cp_streams.get(name).uniform((3, 4))
    assert len(made) == 2 and all(bg[0] == "xorwow" for bg in made)   # one per stream, made once
    assert made[0][1] != made[1][1]                                   # seeded per stream


def test_an_unknown_cupy_epilogue_is_refused():
    env = dict(os.environ, NOISESIM_CUPY_EPILOGUE="fastest")
    r = subprocess.run([sys.executable, "-c", "import noisesim._kernels"], env=env, capture_output=True, text=True)
    assert r.returncode != 0 and "NOISESIM_CUPY_EPILOGUE='fastest' is not known" in r.stderr


# --- the GPU check's benchmark, in its quick CPU mode ---------------------------------------------
def test_bench_gpu_quick_mode_writes_every_figure(tmp_path):
    out = tmp_path / "figures.json"
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_gpu.py"), "--backend", "numpy", "--quick",
                        "--json", str(out)], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    fig = json.loads(out.read_text())
    assert fig["backend"] == "numpy" and fig["quick"] is True and fig["errors"] == {}
    assert {row["device"] for row in fig["forward"]} == {"ideal", "pcm untiled", "pcm (512-row tiles)"}
    assert len(fig["forward"]) == 3 * len(fig["shapes"]) * len(fig["epilogues"])
    for row in fig["forward"] + fig["rules"] + fig["update"]:
        assert row["ratio"]["median"] > 0 and row["ratio"]["min"] <= row["ratio"]["median"] <= row["ratio"]["max"]
    assert {row["rule"] for row in fig["rules"]} == {"DANP", "BP"}
    assert fig["danp_epoch_50_steps_s"]["median"] > 0
    assert {row["device"] for row in fig["update"]} == {"reram", "ecram"}
