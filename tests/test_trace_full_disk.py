"""Running out of room, or any write error, loses no trace: the file keeps every step written
before it — readable and replayable — and the run gets one ``TraceWriteError`` naming the file
and the cause, and can still write its results. Tested without root: a file size limit
(``RLIMIT_FSIZE``) in a subprocess, at several sizes, with the writer process and in-process.
Also: how a run that stops early is recorded (``status``)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

import noisesim
import rules
import scenarios
from noisesim.trace import TraceWriteError, TraceWriter, format_info, info, open_trace, replay

SIZES = [64, 16, 10]
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# A training run under a file size limit: the trace stops, the run catches the error and still
# writes its results (a small JSON file, below the limit), as ``noisesim run`` does.
SCRIPT = textwrap.dedent("""
    import json, resource, sys
    import noisesim, rules, scenarios
    from noisesim.trace import TraceError, TraceWriter
    limit, path, background, reserve, out = int(sys.argv[1]), sys.argv[2], sys.argv[3] == "1", sys.argv[4] == "1", sys.argv[5]
    digits = scenarios.load("digits")
    net = noisesim.Network.mlp({sizes}, device=noisesim.DeviceConfig.preset("ideal"), seed=3, backend="numpy")
    rule = rules.make("danp", lr=1e-2)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    res = {{}}
    try:
        tw = TraceWriter(path, net, rule, background=background)
        tw.RESERVE_SPACE = reserve
        try:
            scenarios.train(net, rule, digits, epochs=3, batch_size=32, progress=False, on_step=tw.on_step)
            tw.close()
        except TraceError as exc:
            res = {{"error": str(exc), "type": type(exc).__name__, "steps": exc.steps, "cause": exc.cause}}
            tw.close()
    except TraceError as exc:
        res = {{"error": str(exc), "type": type(exc).__name__, "steps": exc.steps}}
    with open(out, "w") as fh:
        json.dump(res, fh)
""").format(sizes=SIZES)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The same run without a limit: its steps are what a cut trace must hold."""
    path = tmp_path_factory.mktemp("full") / "ref.h5"
    digits = scenarios.load("digits")
    net = noisesim.Network.mlp(SIZES, device=noisesim.DeviceConfig.preset("ideal"), seed=3, backend="numpy")
    rule = rules.make("danp", lr=1e-2)
    with TraceWriter(path, net, rule) as tw:
        scenarios.train(net, rule, digits, epochs=3, batch_size=32, progress=False, on_step=tw.on_step)
    return path


def _limited(tmp_path, limit, background, reserve=True):
    path, out = tmp_path / "t.h5", tmp_path / "results.json"
    script = tmp_path / "run.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run([sys.executable, str(script), str(limit), str(path), str(int(background)), str(int(reserve)),
                           str(out)], capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return path, json.loads(out.read_text())


def _same_as_reference(path, reference, n):
    with open_trace(path) as r, open_trace(reference) as ref:
        assert r.complete_steps == n and r.verify() == n
        for k in range(n):
            a, b = r.step(k), ref.step(k)
            assert a.step == b.step and np.array_equal(a.indices, b.indices)
            for key, v in a.record.items():
                for x, y in zip(v if isinstance(v, list) else [v], b.record[key] if isinstance(v, list) else [b.record[key]]):
                    assert np.array_equal(x, y), (k, key)


@pytest.mark.parametrize("background", [True, False], ids=["writer-process", "in-process"])
@pytest.mark.parametrize("limit", [150_000, 400_000, 1_000_000])
def test_a_file_size_limit_keeps_every_written_step(tmp_path, reference, limit, background):
    path, res = _limited(tmp_path, limit, background)
    assert res["type"] == "TraceWriteError", res
    assert res["error"].startswith(f"{path}: recording stopped: ") and "File too large (EFBIG)" in res["error"]
    n = res["steps"]
    assert n > 0 and f"keeps its first {n} steps" in res["error"]
    assert os.path.getsize(path) <= limit
    d = info(path)
    assert d["status"] == "failed" and "EFBIG" in d["error"] and not d["complete"]
    assert d["complete_steps"] == d["verified_steps"] == n
    assert "FAILED (recording stopped by a write error: File too large (EFBIG)" in format_info(d)
    _same_as_reference(path, reference, n)
    r = replay(path)
    assert r.steps == n and r.matches is None


@pytest.mark.parametrize("background", [True, False], ids=["writer-process", "in-process"])
def test_a_write_error_inside_a_step_keeps_the_steps_before_it(tmp_path, reference, background):
    """Without the space reservation HDF5 itself meets the limit, part-way through a step: the
    file is left as its last flush wrote it, readable as it stands."""
    path, res = _limited(tmp_path, 300_000, background, reserve=False)
    assert res["type"] == "TraceWriteError" and "File too large (EFBIG)" in res["error"], res
    n = res["steps"]
    assert n > 0 and str(path) in res["error"]
    d = info(path)
    assert d["complete_steps"] == d["verified_steps"] == n and d["status"] == "recording" and not d["complete"]
    _same_as_reference(path, reference, n)
    assert replay(path).steps == n


def test_a_limit_below_the_header_writes_no_trace_and_says_so(tmp_path):
    path, res = _limited(tmp_path, 20_000, True)
    assert res["type"] == "TraceWriteError" and res["steps"] is None, res
    assert "cannot write the trace's header and initial state: File too large (EFBIG); no trace was written" \
        in res["error"]
    assert not path.exists()


# -- how a run that stops early is recorded ---------------------------------------------------------
@pytest.fixture(scope="module")
def digits():
    return scenarios.load("digits")


def _net_rule():
    net = noisesim.Network.mlp(SIZES, device=noisesim.DeviceConfig.preset("ideal"), seed=3, backend="numpy")
    return net, rules.make("danp", lr=1e-2)


@pytest.mark.parametrize("background", [True, False], ids=["writer-process", "in-process"])
def test_an_interrupted_run_is_recorded_as_interrupted(tmp_path, digits, background):
    net, rule = _net_rule()
    tw = TraceWriter(tmp_path / "i.h5", net, rule, background=background)

    def on_step(step, idx, est):
        tw.on_step(step, idx, est)
        if step == 4:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        scenarios.train(net, rule, digits, epochs=1, batch_size=100, progress=False, on_step=on_step)
    tw.close(status="interrupted")
    d = info(tmp_path / "i.h5")
    assert d["status"] == "interrupted" and not d["complete"] and not d["has_final_state"]
    assert d["complete_steps"] == d["verified_steps"] == 4
    text = format_info(d)
    assert "INTERRUPTED" in text and "closed cleanly" not in text
    assert replay(tmp_path / "i.h5").steps == 4


def test_ctrl_c_inside_the_with_block_marks_the_trace_interrupted(tmp_path, digits):
    net, rule = _net_rule()
    with pytest.raises(KeyboardInterrupt):
        with TraceWriter(tmp_path / "c.h5", net, rule) as tw:
            scenarios.train(net, rule, digits, epochs=1, batch_size=100, progress=False,
                            on_step=lambda s, i, e: (tw.on_step(s, i, e), s == 3 and (_ for _ in ()).throw(KeyboardInterrupt)))
    d = info(tmp_path / "c.h5")
    assert d["status"] == "interrupted" and d["complete_steps"] == 3 and not d["complete"]


def test_a_clean_close_is_complete(tmp_path, digits):
    net, rule = _net_rule()
    with TraceWriter(tmp_path / "k.h5", net, rule) as tw:
        scenarios.train(net, rule, digits, epochs=1, batch_size=300, progress=False, on_step=tw.on_step)
    d = info(tmp_path / "k.h5")
    assert d["status"] == "complete" and d["complete"] and "complete (closed cleanly" in format_info(d)
    with pytest.raises(ValueError, match="status='done'"):
        TraceWriter(tmp_path / "k2.h5", net, rule).close(status="done")


def test_a_training_process_that_dies_leaves_an_interrupted_trace(tmp_path):
    """The writer process outlives a killed training process and records how the run ended."""
    path = tmp_path / "d.h5"
    code = textwrap.dedent(f"""
        import sys, noisesim, rules, scenarios
        from noisesim.trace import TraceWriter
        net = noisesim.Network.mlp({SIZES}, device=noisesim.DeviceConfig.preset("ideal"), seed=3, backend="numpy")
        rule = rules.make("danp", lr=1e-2)
        tw = TraceWriter({str(path)!r}, net, rule)
        def on_step(s, i, e):
            tw.on_step(s, i, e)
            if s == 5:
                tw.flush()
                print(tw._proc.pid, flush=True)
                sys.stdin.readline()
        scenarios.train(net, rule, scenarios.load("digits"), epochs=1, batch_size=100, progress=False, on_step=on_step)
    """)
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                            env=env)
    try:
        sink = int(proc.stdout.readline())
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                os.kill(sink, 0)
            except ProcessLookupError:
                break
            time.sleep(0.05)
    finally:
        proc.kill()
        proc.wait()
    d = info(path)
    assert d["status"] == "interrupted" and "ended without closing" in d["error"]
    assert d["complete_steps"] == d["verified_steps"] == 5


def test_write_error_is_a_trace_error_naming_file_and_cause():
    exc = TraceWriteError("/x/t.h5", "No space left on device (ENOSPC)", 7)
    assert isinstance(exc, noisesim.trace.TraceError) and isinstance(exc, ValueError)
    assert str(exc) == "/x/t.h5: recording stopped: No space left on device (ENOSPC); the trace keeps its first 7 steps"
    assert (exc.path, exc.cause, exc.steps) == ("/x/t.h5", "No space left on device (ENOSPC)", 7)


@pytest.mark.parametrize("background", [True, False], ids=["writer-process", "in-process"])
def test_no_room_for_the_final_state_keeps_every_step(tmp_path, digits, monkeypatch, background):
    """The disk fills between the last step and the final state: every step stays, the trace
    says why it has no final state, and close raises the one error."""
    import errno

    def reserve_in(f, nbytes):
        if nbytes > 1 << 16:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    net, rule = _net_rule()
    tw = TraceWriter(tmp_path / "f.h5", net, rule, background=background)
    scenarios.train(net, rule, digits, epochs=1, batch_size=300, progress=False, on_step=tw.on_step)
    monkeypatch.setattr(TraceWriter, "_reserve_in", staticmethod(reserve_in))
    with pytest.raises(TraceWriteError, match=r"f.h5: recording stopped: no room for the final state: No space left on "
                                              r"device \(ENOSPC\); the trace keeps its first 5 steps"):
        tw.close()
    d = info(tmp_path / "f.h5")
    assert d["status"] == "failed" and d["complete_steps"] == d["verified_steps"] == 5 and not d["has_final_state"]
    assert replay(tmp_path / "f.h5").steps == 5
