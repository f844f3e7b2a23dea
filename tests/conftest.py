"""Shared fixtures: one suite for every backend, tolerances keyed by dtype."""
from __future__ import annotations

import numpy as np
import pytest

import noisesim

# Comparison tolerances between backends / against closed forms with noise off, by dtype.
TOLERANCES = {
    np.float32: dict(rtol=2e-5, atol=2e-6),
    np.float64: dict(rtol=1e-11, atol=1e-12),
}


def _backend_param(name):
    marks = [pytest.mark.gpu] if name == "cupy" else []
    return pytest.param(name, marks=marks, id=name)


@pytest.fixture(params=[_backend_param("numpy"), _backend_param("cupy")])
def backend_name(request):
    """Every backend; CuPy is skipped with a reason when no GPU is usable."""
    if request.param == "cupy" and not noisesim.cupy_available():
        pytest.skip("CuPy backend needs a usable CUDA GPU and the 'gpu' extra; none found")
    return request.param


@pytest.fixture(params=["float32", "float64"])
def dtype_name(request):
    return request.param


def tolerance(dtype) -> dict:
    return TOLERANCES[np.dtype(dtype).type]
