"""Shared fixtures: one suite for every backend, tolerances keyed by dtype.

The ``backend_name`` fixture runs a test on every backend. Which ones, and what happens when
CuPy cannot run, is set by the environment variable ``NOISESIM_TEST_BACKEND``:

* unset or ``all`` — NumPy, and CuPy where a GPU is usable (skipped with a reason elsewhere);
* ``cupy`` — NumPy and CuPy, and a CuPy that cannot run is an error, never a skip: the
  test run stops before the first test (``benchmarks/gpu_check.sh`` runs the suite this way);
* ``numpy`` — NumPy only.

``NOISESIM_TEST_LOG=FILE`` appends each test's outcome to ``FILE`` as the suite runs.

Tests whose expected numbers come from NumPy's random streams pin ``backend="numpy"``; tests
of the device model take ``backend_name``. ``backend="auto"`` picks CuPy on a GPU machine.
"""
from __future__ import annotations

import os

import numpy as np
import pytest

import noisesim

# Comparison tolerances between backends / against closed forms with noise off, by dtype.
TOLERANCES = {
    np.float32: dict(rtol=2e-5, atol=2e-6),
    np.float64: dict(rtol=1e-11, atol=1e-12),
}

TEST_BACKENDS = ("all", "cupy", "numpy")
TEST_BACKEND = os.environ.get("NOISESIM_TEST_BACKEND", "all") or "all"


def pytest_configure(config):
    if TEST_BACKEND not in TEST_BACKENDS:
        raise pytest.UsageError(f"NOISESIM_TEST_BACKEND={TEST_BACKEND!r} is not known; allowed: {list(TEST_BACKENDS)}")


def _cupy_error() -> str:
    from noisesim.backend import _probe_cupy

    err = _probe_cupy()[1]
    return f"{type(err).__name__}: {err}"


def pytest_sessionstart(session):
    if TEST_BACKEND == "cupy" and not noisesim.cupy_available():
        pytest.exit(f"NOISESIM_TEST_BACKEND=cupy but CuPy cannot run a kernel here ({_cupy_error()})", returncode=3)


def pytest_report_header(config):
    if TEST_BACKEND == "numpy":
        return "noisesim backends under test: numpy (NOISESIM_TEST_BACKEND=numpy)"
    if noisesim.cupy_available():
        import cupy

        dev = cupy.cuda.Device()
        name = cupy.cuda.runtime.getDeviceProperties(dev.id)["name"]
        name = name.decode() if isinstance(name, bytes) else name
        return f"noisesim backends under test: numpy, cupy (CuPy {cupy.__version__}, {name})"
    return f"noisesim backends under test: numpy; cupy skipped ({_cupy_error()})"


def pytest_runtest_logreport(report):
    """With ``NOISESIM_TEST_LOG=FILE``, one line per test outcome, written as the suite runs
    (a run cut off by a timeout still leaves what finished)."""
    path = os.environ.get("NOISESIM_TEST_LOG")
    if path and (report.when == "call" or report.outcome != "passed"):
        with open(path, "a") as f:
            f.write(f"{report.nodeid}\t{report.when}\t{report.outcome}\t{report.duration:.3f}\n")


def require_cupy():
    """Skip (or, under ``NOISESIM_TEST_BACKEND=cupy``, fail) unless CuPy can run here."""
    if TEST_BACKEND == "numpy":
        pytest.skip("NOISESIM_TEST_BACKEND=numpy: the CuPy backend is not under test")
    if not noisesim.cupy_available():
        if TEST_BACKEND == "cupy":
            pytest.fail(f"NOISESIM_TEST_BACKEND=cupy but CuPy cannot run a kernel here ({_cupy_error()})")
        pytest.skip("CuPy backend needs a usable CUDA GPU and CuPy (the 'gpu' or 'gpu-cuda13' extra); none found")


def _backend_param(name):
    marks = [pytest.mark.gpu] if name == "cupy" else []
    return pytest.param(name, marks=marks, id=name)


@pytest.fixture(params=[_backend_param("numpy"), _backend_param("cupy")])
def backend_name(request):
    """Every backend; CuPy is skipped with a reason when no GPU is usable (see the module)."""
    if request.param == "cupy":
        require_cupy()
    return request.param


@pytest.fixture(params=["float32", "float64"])
def dtype_name(request):
    return request.param


def tolerance(dtype) -> dict:
    return TOLERANCES[np.dtype(dtype).type]
