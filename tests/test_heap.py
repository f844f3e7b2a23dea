"""Freed array memory kept in the heap (noisesim.heap): no page faults from step to step."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from noisesim import heap

PATTERN = """
import json, resource, sys
import noisesim, numpy as np
faults = []
for _ in range(5):
    f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    a = [np.ones(3_000_000, np.float32) for _ in range(4)]      # a step's arrays: 4 × 12 MB
    b = np.ones(1000, np.float32)                              # something small stays above them
    del a
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
print(json.dumps(faults))
"""


def _faults(**env) -> list:
    run = subprocess.run([sys.executable, "-c", PATTERN], capture_output=True, text=True, timeout=120,
                         env={**{k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}, **env})
    assert run.returncode == 0, run.stderr
    return json.loads(run.stdout)


@pytest.mark.skipif(not heap._glibc(), reason="the thresholds are glibc's")
def test_importing_noisesim_keeps_freed_arrays_for_the_next_step():
    """With noisesim imported, arrays allocated again after being freed fault no new pages
    (4 × 12 MB is ~11 700 pages); switched off, glibc returns the memory and every round
    faults it in again."""
    tuned = _faults()
    assert max(tuned[1:]) < 100, tuned
    off = _faults(NOISESIM_HEAP_TUNING="0")
    assert min(off[1:]) > 1000, off


def test_the_user_s_own_malloc_settings_win():
    assert heap.wanted({})
    assert not heap.wanted({"NOISESIM_HEAP_TUNING": "0"})
    assert not heap.wanted({"NOISESIM_HEAP_TUNING": "off"})
    for name in ("MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TOP_PAD_", "GLIBC_TUNABLES"):
        assert not heap.wanted({name: "1"})
