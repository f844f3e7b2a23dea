"""Traces on bad days: a run killed with SIGKILL, damaged files, and a fuzz test.

Every damaged file must raise :class:`noisesim.trace.TraceError` naming the problem (never a
bare h5py OSError/KeyError), or — when the damage missed everything that matters — read back
fully verified."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import h5py
import numpy as np
import pytest

import noisesim
import rules
import scenarios
from noisesim.trace import TraceError, TraceWriter, open_trace, replay

SIZES = [64, 8, 10]


def make_trace(path, *, compression=None, batch=400):
    data = scenarios.load("digits")
    net = noisesim.Network.mlp(SIZES, seed=0, backend="numpy")
    rule = rules.make("danp", lr=1e-2)
    with TraceWriter(path, net, rule, compression=compression) as tw:
        scenarios.train(net, rule, data, epochs=1, batch_size=batch, progress=False, on_step=tw.on_step)
    return path


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return make_trace(tmp_path_factory.mktemp("trace") / "base.h5")


@pytest.fixture
def copy(base, tmp_path):
    p = tmp_path / "t.h5"
    shutil.copy(base, p)
    return p


def read_all(path):
    """Open, verify every step and both states; ``None`` when a TraceError was raised."""
    try:
        with open_trace(path) as r:
            n = r.verify()
            return n
    except TraceError as exc:
        assert str(path) in str(exc)  # the message names the file
        return None


# -- each problem, one clear error -------------------------------------------------------------
def test_valid_file_reads(base):
    assert read_all(base) == 4


def test_truncated_file(copy):
    size = os.path.getsize(copy)
    with open(copy, "r+b") as fh:
        fh.truncate(size // 2)
    with pytest.raises(TraceError, match="not a readable HDF5 file"):
        open_trace(copy)


def test_flipped_bytes_fail_the_step_checksum(copy):
    with h5py.File(copy, "r") as f:
        info = f["steps/da/0"].id.get_chunk_info_by_coord((2, 0, 0, 0))
    with open(copy, "r+b") as fh:
        fh.seek(info.byte_offset + 100)
        b = fh.read(1)
        fh.seek(info.byte_offset + 100)
        fh.write(bytes([b[0] ^ 0x10]))
    with open_trace(copy) as r:  # structure intact: opens; steps 0, 1 still good
        r.step(1)
        with pytest.raises(TraceError, match="checksum mismatch at step row 2"):
            r.step(2)


def test_flipped_bytes_in_initial_state(copy):
    with h5py.File(copy, "r") as f:
        off = f["initial_state/network/tiles/0/w"].id.get_offset()
    with open(copy, "r+b") as fh:
        fh.seek(off + 7)
        fh.write(b"\xff")
    with open_trace(copy) as r, pytest.raises(TraceError,
                                              match="checksum mismatch in '/initial_state/network/tiles/0/w'"):
        r.initial_state()


@pytest.mark.parametrize("name", ["steps/shapes", "steps/da/1", "steps/dL", "steps/indices", "steps/loss", "steps/checksum",
                                  "initial_state/network/tiles/1/w"])
def test_missing_dataset(copy, name):
    with h5py.File(copy, "r+") as f:
        del f[name]
    with pytest.raises(TraceError, match=f"missing dataset '{name}'"):
        open_trace(copy)


def test_wrong_shape(copy):
    with h5py.File(copy, "r+") as f:
        f["steps/da/0"].resize(7, axis=3)
    with pytest.raises(TraceError, match="dataset 'steps/da/0' has shape"):
        open_trace(copy)
    with h5py.File(copy, "r+") as f:
        del f["initial_state/network/tiles/0/w"]
        f["initial_state/network/tiles/0/w"] = np.zeros((8, 63), np.float32)
    with pytest.raises(TraceError, match="initial_state/network/tiles/0/w' has shape"):
        open_trace(copy)


def test_more_complete_steps_than_rows(copy):
    with h5py.File(copy, "r+") as f:
        f.attrs["complete_steps"] = 10**12
    with pytest.raises(TraceError, match="has shape"):
        open_trace(copy)


def test_unknown_format_version(copy):
    with h5py.File(copy, "r+") as f:
        f.attrs["format_version"] = 99
    with pytest.raises(TraceError, match="unknown trace format version 99"):
        open_trace(copy)


def test_edited_config_fails_its_checksum(copy):
    with h5py.File(copy, "r+") as f:
        f.attrs["config"] = f.attrs["config"].replace('"lr": 0.01', '"lr": 0.02')
    with pytest.raises(TraceError, match="'config' does not match its checksum"):
        open_trace(copy)


def test_non_trace_hdf5_and_non_hdf5(tmp_path):
    p = tmp_path / "other.h5"
    with h5py.File(p, "w") as f:
        f["x"] = np.arange(3)
    with pytest.raises(TraceError, match="not a noisesim trace"):
        open_trace(p)
    with h5py.File(p, "w") as f:
        f.attrs["format"] = "noisesim-results"
    with pytest.raises(TraceError, match="format attribute is 'noisesim-results'"):
        open_trace(p)
    q = tmp_path / "text.h5"
    q.write_text("hello")
    with pytest.raises(TraceError, match="not a readable HDF5 file"):
        open_trace(q)
    with pytest.raises(TraceError, match="no such file"):
        open_trace(tmp_path / "missing.h5")
    assert issubclass(TraceError, ValueError)


# -- crash safety ----------------------------------------------------------------------------------
KILL_SCRIPT = textwrap.dedent("""
    import sys, time
    import noisesim, rules, scenarios
    from noisesim.trace import TraceWriter
    data = scenarios.load("digits")
    net = noisesim.Network.mlp([64, 32, 10], seed=0, backend="numpy")
    rule = rules.make("danp", lr=1e-2)
    tw = TraceWriter(sys.argv[1], net, rule, compression=sys.argv[2] if sys.argv[2] != "none" else None,
                     background=sys.argv[3] == "process")
    print(tw._proc.pid if tw._proc is not None else 0, flush=True)
    def on_step(step, idx, est):
        tw.on_step(step, idx, est)
        print(step, flush=True)
        time.sleep(0.01)
    scenarios.train(net, rule, data, epochs=1000, batch_size=16, progress=False, on_step=on_step)
""")


def _wait_gone(pid, timeout=30.0):
    """Wait until process ``pid`` (not our child) has exited."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            with open(f"/proc/{pid}/stat") as fh:
                if fh.read().rsplit(") ", 1)[-1].startswith("Z"):  # exited, not yet reaped
                    return
        except FileNotFoundError:
            return
        time.sleep(0.02)
    raise AssertionError(f"the writer process {pid} did not end")


@pytest.mark.parametrize("compression,writer", [("none", "process"), ("gzip", "process"), ("none", "in-process")])
def test_sigkill_mid_run_leaves_a_readable_file(tmp_path, compression, writer):
    path = tmp_path / "killed.h5"
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-c", KILL_SCRIPT, str(path), compression, writer],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        sink_pid = int(proc.stdout.readline())
        seen = 0
        for line in proc.stdout:
            seen = int(line)
            if seen >= 12:
                break
        assert seen >= 12, proc.stderr.read()
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    if sink_pid:
        # The writer process outlives the training process: it writes every step it received
        # (each step printed was in the pipe before the print), then closes the file.
        _wait_gone(sink_pid)
    with open_trace(path) as r:
        assert not r.closed and r.final_state() is None
        assert r.complete_steps >= 12
        assert r.verify() == r.complete_steps
    d = noisesim.trace.info(path)
    assert d["complete"] is False and d["verified_steps"] == d["complete_steps"]
    res = replay(path)
    assert res.steps == d["complete_steps"] and res.matches is None


# -- fuzz ------------------------------------------------------------------------------------------
def _objects(f):
    out = []
    f.visit(out.append)
    return out


def _corrupt(path, rng, kind):
    size = os.path.getsize(path)
    if kind == "flip":
        with open(path, "r+b") as fh:
            for _ in range(int(rng.integers(1, 9))):
                off = int(rng.integers(0, size))
                fh.seek(off)
                b = fh.read(1)
                fh.seek(off)
                fh.write(bytes([b[0] ^ int(rng.integers(1, 256))]))
    elif kind == "truncate":
        with open(path, "r+b") as fh:
            fh.truncate(int(rng.integers(0, size)))
    else:
        with h5py.File(path, "r+") as f:
            names = _objects(f)
            if kind == "delete":
                del f[names[int(rng.integers(len(names)))]]
            elif kind == "resize":
                ds = [f[n] for n in names if isinstance(f[n], h5py.Dataset) and f[n].chunks]
                d = ds[int(rng.integers(len(ds)))]
                axis = int(rng.integers(d.ndim))
                hi = 2 * d.shape[axis] + 2 if d.maxshape[axis] is None else d.maxshape[axis]
                d.resize(int(rng.integers(0, hi + 1)), axis=axis)
            elif kind == "replace":
                n = names[int(rng.integers(len(names)))]
                del f[n]
                shape = tuple(int(s) for s in rng.integers(0, 6, size=int(rng.integers(0, 3))))
                f[n] = rng.standard_normal(shape).astype(rng.choice(["f2", "f4", "f8", "i8", "u1"]))
            elif kind == "attr":
                keys = list(f.attrs)
                k = keys[int(rng.integers(len(keys)))]
                choice = int(rng.integers(6))
                if choice == 0:
                    del f.attrs[k]
                elif choice == 1:
                    f.attrs[k] = int(rng.integers(-5, 10**6))
                elif choice == 2:
                    f.attrs[k] = "{" + "x" * int(rng.integers(0, 5))
                elif choice == 3:
                    f.attrs[k] = rng.standard_normal(3)
                elif choice == 4:
                    f.attrs[k] = float(rng.standard_normal())
                else:
                    f.attrs[k] = '{"entries": [], "values_width": -1}'


@pytest.mark.parametrize("compression", [None, "gzip"])
def test_fuzz_reader_only_raises_trace_error(tmp_path, compression):
    base = make_trace(tmp_path / "base.h5", compression=compression)
    rng = np.random.default_rng(20261122)
    kinds = ["flip", "flip", "truncate", "delete", "resize", "replace", "attr"]
    outcomes = {k: [0, 0] for k in set(kinds)}
    p = tmp_path / "fuzz.h5"
    for i in range(160):
        kind = kinds[i % len(kinds)]
        shutil.copy(base, p)
        _corrupt(p, rng, kind)
        n = read_all(p)  # any exception other than TraceError fails the test here
        outcomes[kind][n is None] += 1
    print(compression, outcomes)
    # Each kind of damage was met with a TraceError at least once (the fuzzer bit).
    assert all(bad > 0 for ok, bad in outcomes.values()), outcomes
    assert outcomes["truncate"][0] == 0  # a truncated file never reads as valid
