"""Runs never discard finished work, divergence is caught for every rule and reported
truthfully, and bad input gets a clear error before any training.

Each reproduction of the hardening report is here, with families generated around it:
every rule at absurd learning rates, every bad count, label, dtype and shape.
"""
from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import textwrap

import h5py
import numpy as np
import pytest

import noisesim
import rules
import scenarios
from noisesim.errors import DivergenceError
from noisesim.protocol import Estimate
from rules.base import DivergenceGuard
from scenarios import output
from scenarios.cli import main
from scenarios.datasets import Dataset

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUICK = ["run", "quickstart", "--quick", "--no-progress"]


@pytest.fixture(scope="module")
def small():
    return scenarios.load("digits", n_train=128, n_test=64)


def _net(sizes=(64, 16, 10), seed=0):
    return noisesim.Network.mlp(list(sizes), device=noisesim.DeviceConfig.preset("ideal"), seed=seed, backend="numpy")


def _summary(out):
    return json.loads((out / "summary.json").read_text())


# -- item 6: divergence ----------------------------------------------------------------------------
@pytest.mark.parametrize("lr", [1e2, 1e3, 1e6])
@pytest.mark.parametrize("name", sorted(rules.RULES))
def test_every_rule_is_stopped_when_its_loss_blows_up(name, lr, small):
    h = scenarios.train(_net(), rules.make(name, lr=lr), small, epochs=2, batch_size=32, progress=False)
    assert h.diverged, f"{name} at lr={lr:g} was not stopped (final loss {h.last('train_loss'):.3g})"
    assert " diverged at step " in h.diverged and "layer" in h.diverged and "most likely" in h.diverged
    assert "lr=" in h.diverged or "alpha=" in h.diverged
    # the numbers reported are of a good state: finite and within the limit
    start = h.epochs[0]["train_loss"]
    assert all(math.isfinite(h.last(k)) for k in ("train_loss", "test_loss", "train_acc", "test_acc"))
    assert h.last("train_loss") <= 1e3 * start
    assert h.steps < 8


@pytest.mark.parametrize("name", ["bp", "danp", "np", "fa"])
def test_a_non_finite_update_names_its_step_layer_and_the_setting(name, small, monkeypatch):
    rule = rules.make(name, lr=1e-3)
    calls = {"n": 0}
    estimate = rule.estimate

    def poisoned(net, x, t):
        est = estimate(net, x, t)
        calls["n"] += 1
        if calls["n"] == 3:
            est.updates[1] = est.updates[1] * np.float32("nan")
        return est
    monkeypatch.setattr(rule, "estimate", poisoned)
    net = _net()
    h = scenarios.train(net, rule, small, epochs=1, batch_size=32, progress=False)
    assert h.steps == 2 and "at step 3" in h.diverged and "update of layer 1" in h.diverged
    assert "lr=0.001" in h.diverged and "after step 2" in h.diverged
    assert all(bool(np.isfinite(w).all()) for w in net.get_state().values())
    # the kept state was good: its numbers are the last row, evaluated after step 2
    assert h.last("epoch") == pytest.approx(2 / 4) and math.isfinite(h.last("train_loss"))


def test_danp_at_a_huge_rate_blames_the_rate_not_alpha_and_reports_the_last_good_state(tmp_path, capsys):
    out = tmp_path / "o"
    code = main([*QUICK, "--out", str(out), "--rule", "danp", "--set", "rule_options.danp.lr=1e3"])
    assert code == 1                                             # a diverged run does not exit 0
    s = _summary(out)
    row = s["tables"]["final"][0]
    assert "diverged at step 2" in row["diverged"] and "most likely lr=1000" in row["diverged"]
    assert "alpha" not in row["diverged"].split("most likely")[1]
    assert "numbers reported are of epoch 0" in row["diverged"]  # the only good state was the untrained one
    assert s["diverged"] is True
    with h5py.File(out / "results.h5") as f:
        assert bool(f.attrs["diverged"])


def test_bp_at_a_huge_rate_is_stopped(tmp_path):
    out = tmp_path / "o"
    assert main([*QUICK, "--out", str(out), "--rule", "bp", "--set", "rule_options.bp.lr=1e3"]) == 1
    row = _summary(out)["tables"]["final"][0]
    assert "BP diverged at step" in row["diverged"] and row["final_loss"] < 10


def test_a_decorrelation_rate_beyond_its_bound_is_named(small):
    h = scenarios.train(_net(), rules.make("danp", alpha=1.0), small, epochs=1, batch_size=32, progress=False)
    assert h.diverged and "most likely alpha=1" in h.diverged


def test_the_loss_limit_is_configurable_and_can_be_switched_off(small):
    loose = scenarios.train(_net(), rules.make("bp", lr=3.0), small, epochs=1, batch_size=32, progress=False,
                            max_loss_ratio=None)
    tight = scenarios.train(_net(), rules.make("bp", lr=3.0), small, epochs=1, batch_size=32, progress=False,
                            max_loss_ratio=1.5)
    assert tight.diverged and "1.5×" in tight.diverged
    assert loose.steps > tight.steps
    with pytest.raises(ValueError, match="max_loss_ratio"):
        scenarios.train(_net(), rules.make("bp"), small, epochs=1, max_loss_ratio=0.5, progress=False)


def test_guard_unit_checks_nan_loss_and_names_the_first_layer_that_blew_up():
    rule = rules.make("bp")
    x0, x1 = np.ones((4, 3), np.float32), np.ones((4, 5), np.float32)
    ok = Estimate([np.zeros((5, 3), np.float32), np.zeros((2, 5), np.float32)], 1.0, 1, [x0, x1])
    g = DivergenceGuard(max_loss_ratio=10)
    g.check(rule, ok)
    bad = Estimate(ok.updates, float("nan"), 1, [x0, x1 * np.float32("inf")])
    with pytest.raises(DivergenceError) as e:
        g.check(rule, bad)
    assert e.value.step == 2 and e.value.layer == 0 and e.value.setting == "lr"
    assert "the output of layer 0 (not finite)" in str(e.value)
    big = Estimate(ok.updates, 11.0, 1, [x0, x1])
    with pytest.raises(DivergenceError, match="exceeded 10× its starting value 1"):
        g.check(rule, big)


# -- item 5: nothing lost --------------------------------------------------------------------------
def _interrupt_second_rule(monkeypatch, exc, after=4, seen=None):
    estimate = rules.bp.Backprop.estimate
    calls = {"n": 0}

    def est(self, net, x, t):
        calls["n"] += 1
        if seen is not None and calls["n"] == 1:
            seen.append(_summary(seen.pop()))
        if calls["n"] > after:
            raise exc
        return estimate(self, net, x, t)
    monkeypatch.setattr(rules.bp.Backprop, "estimate", est)


def test_each_rule_is_written_as_soon_as_it_finishes(tmp_path, monkeypatch):
    out = tmp_path / "o"
    seen = [out]
    _interrupt_second_rule(monkeypatch, RuntimeError("never"), after=10 ** 6, seen=seen)
    assert main([*QUICK, "--out", str(out)]) == 0
    partial = seen[0]                      # summary.json as it was when BP started
    assert [r["rule"] for r in partial["tables"]["final"]] == ["DANP(noisy)"] and partial["complete"] is False
    assert _summary(out)["complete"] is True


@pytest.mark.parametrize("exc, code, why", [
    (KeyboardInterrupt(), 130, "interrupted by the user (Ctrl-C)"),
    (noisesim.trace.TraceError("/disk/t.h5: No space left on device"), 2, "the trace could not be written: "
                                                                         "/disk/t.h5: No space left on device"),
    (MemoryError("out of memory"), 2, "MemoryError: out of memory"),
])
def test_an_interrupted_second_rule_keeps_the_first_rule_s_results(exc, code, why, tmp_path, monkeypatch, capsys):
    out = tmp_path / "o"
    _interrupt_second_rule(monkeypatch, exc)
    assert main([*QUICK, "--out", str(out)]) == code
    err = capsys.readouterr().err
    assert f"run stopped: {why}" in err and "Traceback" not in err and str(out) in err
    s = _summary(out)
    assert s["complete"] is False and s["interrupted"] == why
    rows = {r["rule"]: r for r in s["tables"]["final"]}
    assert rows["DANP(noisy)"]["interrupted"] is False and rows["DANP(noisy)"]["test_acc"] > 0.2
    assert rows["BP"]["interrupted"] is True
    assert any("BP was interrupted after 4 steps" in n for n in s["notes"])
    with h5py.File(out / "results.h5") as f:
        assert f.attrs["interrupted"] == why and not f.attrs["complete"]
    assert (out / "learning_curves.png").exists()


def test_ctrl_c_before_any_run_finished_still_leaves_a_summary_saying_so(tmp_path, monkeypatch, capsys):
    import scenarios.runner

    def interrupted(*a, **k):
        raise KeyboardInterrupt
    monkeypatch.setattr(scenarios.runner, "load", interrupted)
    out = tmp_path / "o"
    assert main([*QUICK, "--out", str(out)]) == 130
    s = _summary(out)
    assert s["complete"] is False and s["interrupted"] == "interrupted by the user (Ctrl-C)"
    assert s["tables"]["final"] == []
    assert "run stopped: interrupted by the user" in capsys.readouterr().err


def _ctrl_c_at(rule, call: int, monkeypatch):
    """``rule`` whose ``call``-th estimate is interrupted as by Ctrl-C."""
    calls = {"n": 0}
    estimate = rule.estimate

    def est(net, x, t):
        calls["n"] += 1
        if calls["n"] == call:
            raise KeyboardInterrupt
        return estimate(net, x, t)
    monkeypatch.setattr(rule, "estimate", est)
    return rule


def test_an_interrupted_trace_is_closed_as_interrupted(tmp_path, small, monkeypatch):
    closed = []

    def close(self, network=None, *, status="complete"):
        closed.append(status)
        real_close(self)
    real_close = noisesim.trace.TraceWriter.close
    monkeypatch.setattr(noisesim.trace.TraceWriter, "close", close)
    rule = _ctrl_c_at(rules.make("bp"), 3, monkeypatch)
    with pytest.raises(KeyboardInterrupt) as e:
        scenarios.train(_net(), rule, small, epochs=1, batch_size=32, progress=False, trace=tmp_path / "t.h5")
    assert closed == ["interrupted"]
    h = e.value.history
    assert h.interrupted == "interrupted by the user (Ctrl-C)" and h.steps == 2
    scenarios.train(_net(), rules.make("bp"), small, epochs=1, batch_size=32, progress=False, trace=tmp_path / "u.h5")
    assert closed == ["interrupted", "complete"]


def test_ctrl_c_leaves_a_trace_that_says_interrupted_and_keeps_its_steps(tmp_path, small, monkeypatch):
    rule = _ctrl_c_at(rules.make("danp", baseline="noisy"), 4, monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        scenarios.train(_net(), rule, small, epochs=1, batch_size=32, progress=False, trace=tmp_path / "t.h5")
    with noisesim.trace.open_trace(tmp_path / "t.h5") as tr:
        assert tr.status == "interrupted" and len(tr) == 3
    info = noisesim.trace.info(tmp_path / "t.h5")
    assert info["status"] == "interrupted" and not info["complete"]


def test_a_trace_write_error_stops_the_run_with_one_message_and_the_results_are_written(tmp_path, monkeypatch,
                                                                                         capsys):
    out = tmp_path / "o"
    on_step = noisesim.trace.TraceWriter.on_step

    def failing(self, step, idx, est):
        if step == 3 and "bp" in self.path:
            raise noisesim.trace.TraceError(f"{self.path}: No space left on device; the trace ends at step 2")
        on_step(self, step, idx, est)
    monkeypatch.setattr(noisesim.trace.TraceWriter, "on_step", failing)
    assert main([*QUICK, "--out", str(out), "--trace", str(tmp_path / "t.h5")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(tmp_path / "t-bp.h5") in err[0] and "No space left on device" in err[0]
    s = _summary(out)
    assert [r["rule"] for r in s["tables"]["final"]] == ["DANP(noisy)", "BP"]
    assert "No space left on device" in s["interrupted"]


def test_killing_the_trace_writer_process_stops_the_run_and_keeps_the_first_rule(tmp_path, monkeypatch, capsys):
    on_step = noisesim.trace.TraceWriter.on_step

    def killing(self, step, idx, est):
        if step == 3 and "bp" in self.path:
            assert self._proc is not None, "the default trace writer records in a process of its own"
            os.kill(self._proc.pid, signal.SIGKILL)
        on_step(self, step, idx, est)
    monkeypatch.setattr(noisesim.trace.TraceWriter, "on_step", killing)
    out = tmp_path / "o"
    assert main([*QUICK, "--out", str(out), "--trace", str(tmp_path / "t.h5")]) == 2
    err = capsys.readouterr().err
    assert "run stopped: the trace could not be written" in err and str(tmp_path / "t-bp.h5") in err
    rows = {r["rule"]: r for r in _summary(out)["tables"]["final"]}
    assert rows["DANP(noisy)"]["interrupted"] is False and rows["BP"]["interrupted"] is True


_KILL = textwrap.dedent("""
    import os, signal, sys
    import rules.bp
    from scenarios.cli import main
    estimate, calls = rules.bp.Backprop.estimate, []

    def est(self, net, x, t):
        calls.append(1)
        if len(calls) == 3:
            os.kill(os.getpid(), signal.{sig})
        return estimate(self, net, x, t)
    rules.bp.Backprop.estimate = est
    sys.exit(main({argv!r}))
""")


@pytest.mark.parametrize("sig, code", [("SIGTERM", 143), ("SIGKILL", -9)])
def test_a_killed_run_keeps_the_rules_it_finished(sig, code, tmp_path):
    out = tmp_path / "o"
    p = subprocess.run([sys.executable, "-c", _KILL.format(sig=sig, argv=[*QUICK, "--out", str(out)])],
                       capture_output=True, text=True, timeout=300, cwd=REPO, env={**os.environ, "PYTHONPATH": REPO})
    assert p.returncode == code, p.stderr[-2000:]
    s = _summary(out)
    assert s["complete"] is False and s["tables"]["final"][0]["rule"] == "DANP(noisy)"
    if sig == "SIGTERM":
        assert s["interrupted"] == "terminated (SIGTERM)" and "run stopped: terminated (SIGTERM)" in p.stderr
        assert [r["rule"] for r in s["tables"]["final"]] == ["DANP(noisy)", "BP"]


_FSIZE = textwrap.dedent("""
    import resource, signal, sys
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)     # a write past the limit fails instead of killing
    resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit}))
    from scenarios.cli import main
    sys.exit(main({argv!r}))
""")


@pytest.mark.parametrize("limit", [150_000, 700_000])
def test_a_full_disk_stops_the_run_with_a_clear_message_and_keeps_the_results(limit, tmp_path):
    """The file-size limit stands in for a full disk, without root: the trace grows past it,
    the small results files do not."""
    out = tmp_path / "o"
    argv = [*QUICK, "--out", str(out), "--trace", str(tmp_path / "t.h5"), "--set", "epochs=3"]
    p = subprocess.run([sys.executable, "-c", _FSIZE.format(limit=limit, argv=argv)], capture_output=True,
                       text=True, timeout=300, cwd=REPO, env={**os.environ, "PYTHONPATH": REPO})
    assert p.returncode == 2, p.stderr[-2000:]
    assert "Traceback" not in p.stderr and str(tmp_path / "t-danp-noisy.h5") in p.stderr
    assert "run stopped: the trace could not be written" in p.stderr
    s = _summary(out)
    assert s["complete"] is False and "the trace could not be written" in s["interrupted"]
    assert s["tables"]["final"][0]["rule"] == "DANP(noisy)"


@pytest.mark.parametrize("trace_name", ["results.h5", "summary.json", "learning_curves.png"])
def test_a_trace_that_would_be_overwritten_by_the_results_is_refused_before_training(trace_name, tmp_path, capsys):
    out = tmp_path / "o"
    assert main([*QUICK, "--out", str(out), "--trace", str(out / trace_name)]) == 2
    assert "would be overwritten by the run's own" in capsys.readouterr().err
    assert list(out.iterdir()) == []


@pytest.mark.parametrize("bad", ["dir", "/proc/nope/t.h5", "file/t.h5"])
def test_an_unusable_trace_path_is_refused_before_training(bad, tmp_path, capsys):
    (tmp_path / "dir").mkdir()
    (tmp_path / "file").write_text("x")
    path = bad if bad.startswith("/") else str(tmp_path / bad)
    assert main([*QUICK, "--out", str(tmp_path / "o"), "--trace", path]) == 2
    assert "--trace" in capsys.readouterr().err
    assert not (tmp_path / "o" / "summary.json").exists()


@pytest.mark.parametrize("bad", ["/proc/nope", "/proc/version", "/proc/self", "file"])
def test_an_unusable_out_is_refused_before_training(bad, tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    path = bad if bad.startswith("/") else str(tmp_path / bad)
    assert main([*QUICK, "--out", path]) == 2
    assert "--out" in capsys.readouterr().err


def test_runs_started_together_get_their_own_folders(tmp_path):
    made = [output.default_out_dir("quickstart", root=tmp_path) for _ in range(5)]
    assert len(set(made)) == 5 and all(p.is_dir() for p in made)


# -- item 9: what made it --------------------------------------------------------------------------
def test_summary_and_results_record_version_backend_dtype_and_command(tmp_path):
    out = tmp_path / "o"
    argv = [*QUICK, "--out", str(out), "--rule", "bp", "--set", "dtype=\"float64\""]
    assert main(argv) == 0
    s = _summary(out)
    assert s["noisesim_version"] == noisesim.__version__ and s["command"] == ["noisesim", *argv]
    assert s["backend"] == "numpy" and s["dtype"] == "float64" and s["complete"] is True
    with h5py.File(out / "results.h5") as f:
        assert f.attrs["backend"] == "numpy" and f.attrs["dtype"] == "float64"
        assert json.loads(f.attrs["command"]) == ["noisesim", *argv] and f.attrs["noisesim_version"] == noisesim.__version__


# -- item 7: bad input -----------------------------------------------------------------------------
@pytest.mark.parametrize("key, value", [
    ("epochs", "1.5"), ("epochs", "1e12"), ("epochs", "abc"), ("epochs", "-1"), ("epochs", "true"),
    ("epochs", "10000000"), ("batch_size", "0"), ("batch_size", "1.5"), ("batch_size", "1e12"),
    ("batch_size", "abc"), ("batch_size", "null"), ("sizes", "[64, 16777216, 10]"), ("sizes", "\"64\""),
    ("sizes", "[64, 0, 10]"), ("sizes", "{\"a\": 1}"), ("max_loss_ratio", "0.5"), ("rules", "\"\""),
    ("rules", "[]"), ("rules", "[1]"), ("rules", "{\"a\": 1}"), ("seed", "-1"), ("dtype", "\"float16\""),
    ("dtype", "null"), ("device", "[1]"), ("device_overrides", "[1]"), ("rule_options", "3"),
    ("rule_options.danp", "[1]"), ("rule_options.danp.lr", "\"abc\""), ("device_overrides.read_noise", "\"x\""),
])
def test_bad_settings_are_refused_before_training_naming_the_field(key, value, tmp_path, capsys):
    out = tmp_path / "o"
    assert main([*QUICK, "--out", str(out), "--set", f"{key}={value}"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("noisesim: error: ") and "Traceback" not in err and len(err.splitlines()) == 1
    assert key.split(".")[0].rstrip("s") in err or f"{key.split('.')[-1]}=" in err
    assert not (out / "summary.json").exists()


def test_a_network_too_large_for_memory_is_refused_before_anything_is_allocated(tmp_path, capsys):
    assert main([*QUICK, "--out", str(tmp_path / "o"), "--set", "sizes=[64, 1000000, 1000000, 10]"]) == 2
    err = capsys.readouterr().err
    assert "sizes=[64, 1000000, 1000000, 10] has 1,000,074,000,000 weights" in err and "GiB available" in err


def test_rules_set_as_a_plain_string_and_rule_errors_name_the_rule_asked_for(tmp_path, capsys):
    assert main([*QUICK, "--out", str(tmp_path / "a"), "--set", "rules=bp"]) == 0
    assert [r["rule"] for r in _summary(tmp_path / "a")["tables"]["final"]] == ["BP"]
    assert main([*QUICK, "--out", str(tmp_path / "b"), "--rule", ""]) == 2
    assert "names no rule" in capsys.readouterr().err
    assert main([*QUICK, "--out", str(tmp_path / "c"), "--set", "rule_options.danp.samples=0"]) == 2
    assert capsys.readouterr().err.startswith("noisesim: error: danp: samples=0")
    for name, opts, message in [("danp", {"samples": 0}, "danp: samples=0"), ("dnp", {"baseline": "x"}, "dnp: baseline"),
                                ("dinp", {"lr": -1}, "dinp: lr=-1"), ("d-fa", {"alpha": -1}, "d-fa: alpha=-1"),
                                ("DANP", {"samples": 1.5}, "danp: samples=1.5")]:
        with pytest.raises(ValueError, match=f"^{message}"):
            rules.make(name, **opts)
    with pytest.raises(ValueError, match="unknown rule"):
        rules.make(["bp"])


def _data(**over):
    d = scenarios.load("digits", n_train=64, n_test=32)
    fields = dict(name="mine", x_train=d.x_train, y_train=d.y_train, x_test=d.x_test, y_test=d.y_test,
                  task="classification", n_classes=10)
    fields.update(over)
    return fields


@pytest.mark.parametrize("change, message", [
    (lambda f: f["y_train"].__setitem__(0, -1), "train label -1 is outside \\[0, 10\\)"),
    (lambda f: f["y_train"].__setitem__(0, 12), "train label 12 is outside \\[0, 10\\)"),
    (lambda f: f.update(y_test=f["y_test"].astype(float)), "test labels must be integers"),
    (lambda f: f.update(x_train=f["x_train"].astype(complex)), "train inputs must be real numbers"),
    (lambda f: f.update(y_train=np.eye(10)[f["y_train"]]), "train labels must be one class index per sample"),
    (lambda f: f.update(x_train=f["x_train"][:0], y_train=f["y_train"][:0]), "the train split is empty"),
    (lambda f: f.update(x_train=f["x_train"].astype(object)), "train inputs must be real numbers"),
])
def test_datasets_refuse_bad_labels_inputs_and_shapes(change, message):
    f = _data()
    f["y_train"] = f["y_train"].copy()
    change(f)
    with pytest.raises(ValueError, match=message):
        Dataset(**f)


class _Raw:
    """A user's own data object (duck-typed, no validation of its own)."""

    def __init__(self, **f):
        self.__dict__.update(f)
        self.n_outputs = 10


@pytest.mark.parametrize("change, message", [
    (lambda f: f["y_train"].__setitem__(0, -1), "label -1 is outside"),
    (lambda f: f["y_train"].__setitem__(0, 12), "label 12 is outside"),
    (lambda f: f.update(y_train=f["y_train"].astype(np.float32)), "labels must be integers"),
    (lambda f: f.update(x_train=f["x_train"] + 1j), "inputs must be real numbers"),
    (lambda f: f.update(x_train=f["x_train"][:0], y_train=f["y_train"][:0]), "the train split is empty"),
    (lambda f: f.update(x_train=f["x_train"][:, :10]), "is 10→10 but the network is 64→10"),
])
def test_train_refuses_bad_data_before_the_first_step(change, message):
    f = _data()
    f["y_train"] = f["y_train"].copy()
    change(f)
    net = _net()
    before = net.get_state()
    with pytest.raises(ValueError, match=message):
        scenarios.train(net, rules.make("bp"), _Raw(**f), epochs=1, progress=False)
    assert all(np.array_equal(before[k], v) for k, v in net.get_state().items())


@pytest.mark.parametrize("epochs, batch_size", [(1.5, 8), (1e12, 8), ("abc", 8), (-1, 8), (True, 8), (1, 0),
                                                (1, 2.0), (1, None), (1, "8")])
def test_train_refuses_non_integer_or_absurd_counts(epochs, batch_size, small):
    with pytest.raises(ValueError, match="epochs|batch_size"):
        scenarios.train(_net(), rules.make("bp"), small, epochs=epochs, batch_size=batch_size, progress=False)


@pytest.mark.parametrize("x, t, message", [
    (np.zeros((0, 64), np.float32), np.zeros((0, 10), np.float32), "the batch is empty"),
    (np.zeros((4, 64), np.complex64), np.zeros((4, 10), np.float32), "inputs must be real numbers"),
    (np.zeros((4, 63), np.float32), np.zeros((4, 10), np.float32), "inputs of shape \\(4, 63\\)"),
    (np.zeros((4, 64), np.float32), np.zeros((4, 9), np.float32), "targets of shape \\(4, 9\\)"),
    (np.zeros((4, 64), np.float32), np.zeros((3, 10), np.float32), "4 inputs but 3 targets"),
    (np.zeros((4, 64), np.float32), np.zeros(4, np.float32), "targets of shape \\(4,\\)"),
])
@pytest.mark.parametrize("name", ["bp", "danp"])
def test_a_rule_step_refuses_bad_batches_naming_the_rule(name, x, t, message):
    rule = rules.make(name)
    with pytest.raises(ValueError, match=f"^{rule.label}: .*{message}"):
        rule.step(_net(), x, t)


def test_regression_data_with_one_dimensional_targets_trains():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 5)).astype(np.float32)
    y = x.sum(axis=1).astype(np.float32)
    d = Dataset("line", x, y, x[:16], y[:16], "regression", None)
    net = noisesim.Network.mlp([5, 8, 1], device=noisesim.DeviceConfig.preset("ideal"), seed=0, backend="numpy",
                               activation="linear")
    h = scenarios.train(net, rules.make("bp", loss="mse", lr=1e-2), d, epochs=3, batch_size=16, progress=False)
    assert h.diverged is None and h.last("train_loss") < h.epochs[0]["train_loss"]


@pytest.mark.parametrize("scenario", ["noisy-baseline", "fa-linear", "compare"])
def test_a_scenario_interrupted_after_two_runs_writes_those_runs(scenario, tmp_path, monkeypatch, capsys):
    import scenarios.experiment as experiment

    real, calls = experiment.train, []

    def train(*args, **kw):
        if "label" in kw:            # the runs a scenario reports (not its learning-rate trials)
            calls.append(kw["label"])
            if len(calls) == 3:      # Ctrl-C at the third run's second step
                def on_step(step, idx, est, before=kw.get("on_step")):
                    if before is not None:
                        before(step, idx, est)
                    if step == 2:
                        raise KeyboardInterrupt
                kw["on_step"] = on_step
        return real(*args, **kw)
    monkeypatch.setattr(experiment, "train", train)
    out = tmp_path / "o"
    argv = ["run", scenario, "--quick", "--no-progress", "--out", str(out)]
    assert main(argv + (["--set", "n_seeds=1"] if "n_seeds" in scenarios.SCENARIOS[scenario].defaults else [])) == 130
    s = _summary(out)
    assert s["complete"] is False and s["interrupted"] == "interrupted by the user (Ctrl-C)"
    rows = s["tables"]["final"]
    assert sum(r["seeds"] for r in rows) == 3 and sum(r["interrupted"] for r in rows) == 1
    assert (out / "learning_curves.png").exists()


class _Built(BaseException):
    """Raised where a network would be built: the settings passed every check before training."""


JUNK = ["1.5", "-1", "\"abc\"", "[]", "{}", "null", "true", "1e12", "[1, \"a\"]", "\"\""]


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(scenarios.SCENARIOS))
def test_junk_in_any_setting_of_any_scenario_is_a_clear_error_or_accepted_never_a_traceback(name, tmp_path,
                                                                                            monkeypatch, capsys):
    """Every setting of every scenario set to every kind of junk value: either one line
    ``noisesim: error: …`` (exit 2) or accepted as far as building a network (stopped there,
    so nothing trains)."""
    def built(*args, **kwargs):
        raise _Built()
    monkeypatch.setattr(noisesim.network.Network, "__init__", built)
    sc = scenarios.SCENARIOS[name]
    refused = accepted = 0
    for key in sorted(sc.defaults):
        for value in JUNK:
            try:
                code = main(["run", name, "--quick", "--no-progress", "--out", str(tmp_path / "o"),
                             "--set", f"{key}={value}"])
            except _Built:
                accepted += 1
                continue
            err = capsys.readouterr().err.strip().splitlines()
            if code in (0, 1) and not err:      # accepted, and nothing to build (e.g. no knob to sweep)
                accepted += 1
                continue
            assert code == 2 and len(err) == 1 and err[0].startswith("noisesim: error: "), (key, value, code, err)
            refused += 1
    assert refused > accepted
