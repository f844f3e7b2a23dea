"""Checkpoints of single runs: a run SIGKILLed mid-epoch and continued with ``noisesim run
--resume`` ends bit for bit where the run that was never interrupted ends — DANP and BP, on
the ``ideal`` device and on ``reram`` (pulsed updates, device-to-device and cycle-to-cycle
variation) — and a checkpoint killed mid-write leaves the previous one whole."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

import noisesim
import rules
import scenarios
from scenarios.checkpoint import Checkpoint, resume_argv, save_state

ROOT = Path(__file__).resolve().parents[1]
EVERY = 25
STEPS = 90                     # quickstart --quick: 2 epochs of 45 steps per rule
KILL_AT = STEPS + 61           # the second rule (BP), epoch 2, 11 steps after its checkpoint at 50

# Runs the command line in a fresh process that SIGKILLs itself at the KILL_AT-th rule step.
KILLER = """
import os, signal, sys
import rules.base
n = 0
step = rules.base.Rule.step
def counted(self, net, x, t):
    global n
    n += 1
    if n == int(os.environ["KILL_AT"]):
        os.kill(os.getpid(), signal.SIGKILL)
    return step(self, net, x, t)
rules.base.Rule.step = counted
from scenarios.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _cli(args, tmp_path, kill_at=None):
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"}
    code = KILLER if kill_at else "import sys; from scenarios.cli import main; sys.exit(main(sys.argv[1:]))"
    if kill_at:
        env["KILL_AT"] = str(kill_at)
    return subprocess.run([sys.executable, "-c", code, *args], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=300)


def _curves(path):
    with h5py.File(path) as f:
        return {k: f[f"arrays/{k}/values"][()] for k in f["arrays"]}


def _run_state(path):
    s = noisesim.state.load(path)
    hist = s["run"]["history"]
    for e in hist["epochs"]:
        e.pop("wall_s")
    hist.pop("wall_s")
    return s, hist


@pytest.mark.parametrize("device", ["ideal", "reram"])
def test_sigkill_mid_epoch_and_resume_is_bit_identical(tmp_path, device):
    args = ["run", "quickstart", "--quick", "--rule", "danp,bp", "--device", device, "--no-progress",
            "--checkpoint-every", str(EVERY)]
    whole = _cli([*args, "--out", "whole"], tmp_path)
    assert whole.returncode == 0, whole.stderr
    killed = _cli([*args, "--out", "killed"], tmp_path, kill_at=KILL_AT)
    assert killed.returncode == -signal.SIGKILL, (killed.returncode, killed.stderr)
    ck = tmp_path / "killed" / "checkpoint"
    # DANP had finished; BP stopped in epoch 2 with its last checkpoint at step 50
    assert noisesim.state.load(ck / "DANP-noisy-0.h5")["run"]["done"] is True
    mid = noisesim.state.load(ck / "BP-0.h5")["run"]
    assert (mid["done"], mid["epoch"], mid["step"], mid["history"]["steps"]) == (False, 2, 5, 50)
    assert resume_argv(tmp_path / "killed")[-2:] == ["--out", str((tmp_path / "killed").resolve())]

    resumed = _cli(["run", "--resume", "killed", "--no-progress"], tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    a, b = _curves(tmp_path / "whole" / "results.h5"), _curves(tmp_path / "killed" / "results.h5")
    assert a.keys() == b.keys() and "learning_curves_test_loss" in a
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)       # NaN where NaN, equal elsewhere
    for run in ("DANP-noisy-0.h5", "BP-0.h5"):                       # final network and rule states
        (sa, ha), (sb, hb) = _run_state(tmp_path / "whole" / "checkpoint" / run), \
            _run_state(tmp_path / "killed" / "checkpoint" / run)
        assert noisesim.state.differences(sa["network"], sb["network"]) == {}
        assert noisesim.state.differences(sa["rule"], sb["rule"]) == {}
        assert json.dumps(ha, sort_keys=True) == json.dumps(hb, sort_keys=True)
        assert ha["steps"] == STEPS
    sa, sb = (json.loads((tmp_path / d / "summary.json").read_text()) for d in ("whole", "killed"))
    strip = lambda rows: [{k: v for k, v in r.items() if k != "wall_s"} for r in rows]
    assert strip(sa["tables"]["final"]) == strip(sb["tables"]["final"])


def _digits_run(ck, on_step=None, epochs=2):
    net = noisesim.Network.mlp([64, 24, 10], device=noisesim.DeviceConfig.preset("ideal"), seed=5, backend="numpy")
    return net, scenarios.train(net, rules.make("danp", baseline="noisy", lr=2e-3), scenarios.load("digits"),
                                epochs=epochs, batch_size=100, progress=False, on_step=on_step, checkpoint=ck)


def test_train_continues_from_its_checkpoint_and_returns_a_finished_one(tmp_path):
    net_a, whole = _digits_run(Checkpoint(tmp_path / "a.h5", every=4))

    class Stop(Exception):
        pass

    def stop(step, idx, est):
        if step == 19:           # epoch 2 (15 steps an epoch), 3 steps after the checkpoint at 16
            raise Stop
    with pytest.raises(Stop):
        _digits_run(Checkpoint(tmp_path / "b.h5", every=4), on_step=stop)
    ck = Checkpoint(tmp_path / "b.h5", every=4)
    net_b, resumed = _digits_run(ck)
    assert ck.resumed_at == 16
    assert noisesim.state.differences(net_a.state(), net_b.state()) == {}
    np.testing.assert_array_equal(whole.column("test_loss"), resumed.column("test_loss"))
    np.testing.assert_array_equal(whole.column("step_loss"), resumed.column("step_loss"))
    # a finished run is not trained again: its final state and history come back as saved
    done = Checkpoint(tmp_path / "b.h5")
    net_c, again = _digits_run(done)
    assert done.resumed_at == 30 and again.steps == 30
    assert noisesim.state.differences(net_a.state(), net_c.state()) == {}
    # a checkpoint of another run is refused before anything changes
    with pytest.raises(ValueError, match="checkpoint of run"):
        scenarios.train(net_c, rules.make("danp", baseline="noisy", lr=2e-3), scenarios.load("digits"), epochs=2,
                        batch_size=100, progress=False, label="other", checkpoint=Checkpoint(tmp_path / "b.h5"))


def test_a_write_killed_midway_leaves_the_previous_checkpoint_whole(tmp_path, monkeypatch):
    path = tmp_path / "ck.h5"
    save_state(path, {"a": np.arange(5.0)})

    def dies(group, state, **kw):
        group.create_dataset("half", data=np.zeros(3))
        raise KeyboardInterrupt       # the process stopping mid-write
    monkeypatch.setattr(noisesim.state, "write", dies)
    with pytest.raises(KeyboardInterrupt):
        save_state(path, {"a": np.arange(6.0)})
    monkeypatch.undo()
    np.testing.assert_array_equal(noisesim.state.load(path)["a"], np.arange(5.0))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck.h5"]


def test_resume_needs_a_checkpointed_run(tmp_path):
    from scenarios.cli import main

    assert main(["run", "--resume", str(tmp_path)]) == 2
    assert main(["run", "quickstart", "--quick", "--checkpoint-every", "0", "--out", str(tmp_path / "x")]) == 2


def _trace_arrays(path):
    out = {}
    with h5py.File(path) as f:
        f["steps"].visititems(lambda name, ds: out.__setitem__(name, ds[()]) if isinstance(ds, h5py.Dataset) else None)
        attrs = {k: int(f.attrs[k]) for k in ("complete_steps", "closed")}
        final = noisesim.state.read(f["final_state"])
    return out, attrs, final


def _opened(path, wait=60.0):
    """``path`` opened for reading once the killed run's writer process has let go of it."""
    import time

    deadline = time.monotonic() + wait
    while True:
        try:
            return h5py.File(path, "r")
        except OSError:      # locked, or still marked open for writing by the writer process
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def test_a_trace_being_written_continues_in_the_same_file(tmp_path):
    args = ["run", "quickstart", "--quick", "--rule", "danp", "--no-progress", "--checkpoint-every", str(EVERY)]
    whole = _cli([*args, "--out", "whole", "--trace", "whole.h5"], tmp_path)
    assert whole.returncode == 0, whole.stderr
    killed = _cli([*args, "--out", "killed", "--trace", "killed.h5"], tmp_path, kill_at=61)   # 11 steps past 50
    assert killed.returncode == -signal.SIGKILL
    with _opened(tmp_path / "killed.h5") as f:   # past its last checkpoint, not closed
        assert int(f.attrs["complete_steps"]) >= 50 and int(f.attrs["closed"]) == 0
    resumed = _cli(["run", "--resume", "killed", "--no-progress"], tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    a, attrs_a, final_a = _trace_arrays(tmp_path / "whole.h5")
    b, attrs_b, final_b = _trace_arrays(tmp_path / "killed.h5")
    assert attrs_a == attrs_b == {"complete_steps": STEPS, "closed": 1}
    np.testing.assert_array_equal(b["step"], np.arange(1, STEPS + 1))          # no gap, no duplicate
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    assert noisesim.state.differences(final_a, final_b) == {}
    info = _cli(["trace", "info", "killed.h5"], tmp_path)      # every checksum verified
    assert info.returncode == 0, info.stdout + info.stderr
