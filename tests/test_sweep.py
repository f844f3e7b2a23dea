"""Sweeps on Dask (loopback only): a 2×2-point × 2-seed grid on a local cluster of two
workers with its aggregate; a rerun after one point's results were deleted runs that point
alone and gets the same numbers; a diverging point is ``diverged`` (step, quantity) and a
broken one ``failed`` with its error while the sweep carries on; a worker SIGKILLed mid-point
is replaced and the point continues from its checkpoint to the numbers of an uninterrupted
run; results appear atomically; workers are pinned to GPUs and limit their threads."""
from __future__ import annotations

import io
import json
import os
import shutil
import signal
import threading
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

pytest.importorskip("distributed")

from scenarios import sweep as sw  # noqa: E402

pytestmark = pytest.mark.timeout(300)

GRID = """
scenario = "quickstart"
quick = true
seeds = [0, 1]
checkpoint_every = 20
x = "rule_options.bp.lr"
[settings]
rules = ["bp"]
[grid]
"rule_options.bp.lr" = [1e-3, 1e-2]
device = ["ideal", "reram"]
"""


def _curves(point_dir):
    with h5py.File(Path(point_dir) / "result" / "results.h5") as f:
        return {k: f[f"arrays/{k}/values"][()] for k in f["arrays"]}


def test_grid_on_two_workers_aggregate_and_resume(tmp_path):
    spec = tmp_path / "grid.toml"
    spec.write_text(GRID)
    sweep = sw.load(spec)
    points = sweep.expand()
    assert len(points) == 8 and len({p.name for p in points}) == 8
    out, log = tmp_path / "out", io.StringIO()
    res = sw.run(sweep, out, workers=2, stream=log)
    assert [st["status"] for _, st in res["points"]] == ["done"] * 8, log.getvalue()
    assert {st["pid"] for _, st in res["points"]} and len({st["pid"] for _, st in res["points"]}) == 2
    assert all(st["threads"] == max(1, sw.cores() // 2) for _, st in res["points"])
    assert "8/8 complete" in log.getvalue() and "ETA" in log.getvalue()
    # the aggregate: one row per point, one per setting over seeds, HDF5 and the figure
    rows = (out / "points.csv").read_text().splitlines()
    assert len(rows) == 9 and rows[0].startswith("rule_options.bp.lr,device,seed,status")
    summary = res["tables"]["summary"]
    assert len(summary.rows) == 4 and all(r["seeds"] == 2 and r["done"] == 2 for r in summary.rows)
    with h5py.File(out / "sweep.h5") as f:
        acc = f["tables/points/test_acc"][()]
        mean = f["tables/summary/test_acc_mean"][()]
    assert acc.shape == (8,) and np.all((acc > 0.5) & (acc <= 1))
    for r, m in zip(summary.rows, mean):
        seeds = [p["test_acc"] for p in res["tables"]["points"].rows
                 if p["device"] == r["device"] and p["rule_options.bp.lr"] == r["rule_options.bp.lr"]]
        assert m == pytest.approx(np.mean(seeds)) and r["test_acc_min"] == min(seeds)
    assert (out / "sweep.png").stat().st_size > 10_000

    # delete one point's results: the rerun runs that point alone, to the same numbers
    victim = points[5].name
    before = _curves(out / "points" / victim)
    shutil.rmtree(out / "points" / victim / "result")
    shutil.rmtree(out / "points" / victim / "checkpoint")
    log = io.StringIO()
    res2 = sw.run(sweep, out, workers=2, stream=log)
    assert "7 already" in log.getvalue()
    pids = {p.name: st["pid"] for p, st in res2["points"]}
    assert [n for n in pids if pids[n] != dict((p.name, st["pid"]) for p, st in res["points"])[n]] == [victim]
    after = _curves(out / "points" / victim)
    for k in before:
        np.testing.assert_array_equal(before[k], after[k], err_msg=k)


def test_diverged_and_failed_points_and_the_sweep_carries_on(tmp_path):
    sweep = sw.Sweep.from_dict({
        "scenario": "quickstart", "quick": True, "seeds": [0], "checkpoint_every": 0,
        "settings": {"rules": ["bp"], "rule_options.bp.optimizer": "sgd"},
        "points": [{"rule_options.bp.lr": 1e-2}, {"rule_options.bp.lr": 1e6},
                   {"rule_options.bp.lr": 1e-2, "device_overrides.node_noise": -1.0}]})
    out = tmp_path / "out"
    res = sw.run(sweep, out, workers=2, progress=False)
    (ok, s_ok), (div, s_div), (bad, s_bad) = res["points"]
    assert s_ok["status"] == "done"
    assert s_div["status"] == "diverged" and s_div["diverged"][0]["run"] == "BP"
    assert 1 <= s_div["diverged"][0]["step"] < 90 and "loss" in s_div["diverged"][0]["what"]
    assert s_bad["status"] == "failed" and "node_noise" in s_bad["error"]
    assert (out / "points" / bad.name / "failed.json").exists()
    rows = {r["point"]: r for r in res["tables"]["points"].rows}
    assert rows[div.name]["status"] == "diverged" and rows[div.name]["diverged_step"] == str(s_div["diverged"][0]["step"])
    assert rows[div.name]["diverged"].startswith("BP: ") and "loss" in rows[div.name]["diverged"]
    assert rows[bad.name]["status"] == "failed" and "node_noise" in rows[bad.name]["error"]
    # the rerun skips the done and the diverged point and tries the failed one again
    log = io.StringIO()
    res2 = sw.run(sweep, out, workers=1, stream=log)
    assert "2 already" in log.getvalue() and res2["points"][2][1]["status"] == "failed"


def test_a_killed_worker_point_continues_from_its_checkpoint(tmp_path):
    from distributed import Client, LocalCluster

    sweep = sw.Sweep.from_dict({
        "scenario": "quickstart", "quick": True, "seeds": [0], "checkpoint_every": 10,
        "settings": {"rules": ["bp"], "epochs": 12}, "points": [{"device": "reram"}]})
    (point,) = sweep.expand()
    reference = tmp_path / "reference"
    from scenarios.scenario import get
    st = sw.run_point(sweep.scenario, True, sweep.pairs(point, get("quickstart").defaults), str(reference / "p"), 0)
    assert st["status"] == "done"

    out = tmp_path / "out"
    with LocalCluster(n_workers=1, threads_per_worker=1, host="127.0.0.1", dashboard_address="127.0.0.1:0",
                      silence_logs=50) as cluster, Client(cluster) as client:
        pid = next(iter(client.run(os.getpid).values()))
        result = {}
        t = threading.Thread(target=lambda: result.update(sw.run(sweep, out, scheduler=cluster.scheduler_address,
                                                                 progress=False)))
        t.start()
        ck = out / "points" / point.name / "checkpoint" / "BP-0.h5"
        deadline = time.monotonic() + 120
        while not ck.exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert ck.exists()
        os.kill(pid, signal.SIGKILL)                 # the worker dies mid-point
        t.join(240)
        assert not t.is_alive()
        assert next(iter(client.run(os.getpid).values())) != pid     # a new worker took over
    (_, status), = result["points"]
    assert status["status"] == "done" and status["pid"] != pid
    (resumed,) = status["resumed"]
    assert 10 <= resumed["step"] < 12 * 45
    a, b = _curves(reference / "p"), _curves(out / "points" / point.name)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_results_appear_whole_or_not_at_all(tmp_path):
    point = tmp_path / "p"
    point.mkdir()
    half = point / ".result-x"          # a writer killed while writing: not complete
    half.mkdir()
    (half / "results.h5").write_bytes(b"\x89HDF")
    assert sw.read_point(point)["status"] == "missing"
    # two writers finish the same point: the first rename wins, the second is dropped whole
    for name, tag in (("a", 1), ("b", 2)):
        d = point / f".result-{name}"
        d.mkdir()
        (d / "point.json").write_text(json.dumps({"status": "done", "tag": tag}))
    assert sw.publish(point / ".result-a", point / "result") is True
    assert sw.publish(point / ".result-b", point / "result") is False
    assert sw.read_point(point) == {"status": "done", "tag": 1}
    assert not (point / ".result-b").exists()


def test_worker_plan_pins_gpus_and_keeps_threads_within_the_cores():
    plan = sw.worker_plan(None, 16, [0, 1, 2, 3])
    assert [e["CUDA_VISIBLE_DEVICES"] for e in plan] == ["0", "1", "2", "3"]
    assert all(e["OPENBLAS_NUM_THREADS"] == e["NUMBA_NUM_THREADS"] == "4" for e in plan)
    assert [e["CUDA_VISIBLE_DEVICES"] for e in sw.worker_plan(2, 16, [0, 1, 2, 3])] == ["0", "1"]
    for workers, cores in ((1, 2), (2, 2), (3, 2), (4, 16), (None, 8)):
        plan = sw.worker_plan(workers, cores, [])
        assert "CUDA_VISIBLE_DEVICES" not in plan[0]
        assert len(plan) == (workers or cores)
        threads = int(plan[0]["OMP_NUM_THREADS"])
        assert threads == 1 or len(plan) * threads <= cores
    with pytest.raises(ValueError, match="workers"):
        sw.worker_plan(0, 2, [])


def test_gpu_workers_each_see_their_own_device(tmp_path):
    from distributed import Client

    plan = sw.worker_plan(None, 2, [0, 1])          # two (pretend) GPUs on this CPU machine
    with sw.local_cluster(plan) as cluster, Client(cluster) as client:
        seen = client.run(lambda: (os.environ.get("CUDA_VISIBLE_DEVICES"), os.environ.get("OMP_NUM_THREADS")))
    assert sorted(seen.values()) == [("0", "1"), ("1", "1")]


def test_sweep_file_errors_name_the_problem(tmp_path):
    with pytest.raises(ValueError, match="no points"):
        sw.Sweep.from_dict({"scenario": "quickstart"})
    with pytest.raises(ValueError, match="unknown entries"):
        sw.Sweep.from_dict({"scenario": "quickstart", "grid": {"seed": [1]}, "gird": 1})
    with pytest.raises(ValueError, match="seeds"):
        sw.Sweep.from_dict({"scenario": "quickstart", "grid": {"epochs": [1]}, "seeds": 0})
    with pytest.raises(ValueError, match="unknown setting"):
        sw.check(sw.Sweep.from_dict({"scenario": "quickstart", "grid": {"epoch": [1, 2]}}))
    bad = tmp_path / "bad.toml"
    bad.write_text("scenario = \n")
    with pytest.raises(ValueError, match="TOML"):
        sw.load(bad)
    s = sw.Sweep.from_dict({"scenario": "quickstart", "seeds": 3, "grid": {"epochs": [1, 2]},
                            "points": [{"epochs": 2}, {"batch_size": 16}]})
    names = [p.name for p in s.expand()]
    assert len(names) == 9 and names[0] == "epochs=1__seed=0" and "batch_size=16__seed=2" in names


def test_the_sweep_command(tmp_path, capsys):
    from scenarios.cli import main

    spec = tmp_path / "one.toml"
    spec.write_text('scenario = "quickstart"\nquick = true\nmetric = "final_loss"\n[settings]\nrules = ["bp"]\n'
                    '[[points]]\nepochs = 1\n[[points]]\nepochs = 1\n"device_overrides.read_noise" = -1\n')
    out = tmp_path / "out"
    assert main(["sweep", str(spec), "--workers", "1", "--out", str(out), "--no-progress"]) == 1   # one failed
    text = capsys.readouterr().out
    assert "final loss mean" in text and "failed: epochs=1__device_overrides.read_noise=-1__seed=0" in text
    assert "read_noise" in text
    assert (out / "sweep.toml").read_text() == spec.read_text()
    assert sorted(p.name for p in out.iterdir()) == ["points", "points.csv", "points.json", "summary.csv",
                                                     "sweep.h5", "sweep.png", "sweep.toml"]


TWICE = """
import json, sys
from scenarios import sweep as sw
print(json.dumps(sw.run_point("quickstart", True, [["rules", ["bp"]], ["seed", 0]], sys.argv[1], 5)))
"""


def test_two_writers_of_one_point_leave_one_whole_result(tmp_path):
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root), "OPENBLAS_NUM_THREADS": "1", "MPLBACKEND": "Agg"}
    point = tmp_path / "p"
    procs = [subprocess.Popen([sys.executable, "-c", TWICE, str(point)], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=240) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    statuses = [json.loads(o.strip().splitlines()[-1]) for o, _ in outs]
    assert [s["status"] for s in statuses] == ["done", "done"]
    assert statuses[0]["pid"] == statuses[1]["pid"]          # both report the one result that counts
    assert sorted(p.name for p in point.iterdir()) == ["checkpoint", "result"]
    assert sw.read_point(point) == statuses[0]
    with h5py.File(point / "result" / "results.h5") as f:
        assert f["tables/final/test_acc"][()].shape == (1,)
