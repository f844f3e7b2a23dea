"""The scenario contract: registration, configuration, the writer, and every scenario's
``--quick`` run with its outputs checked (files, tables, finite values, plain-h5py reads)."""
from __future__ import annotations

import importlib
import json
import math

import h5py
import numpy as np
import pytest

import scenarios
from scenarios import experiments, output
from scenarios.cli import main
from scenarios.result import Result, Table, fmt_spread
from scenarios.scenario import SCENARIOS, configure, get, register

PNG = b"\x89PNG\r\n\x1a\n"


# -- registration ----------------------------------------------------------------------------------
def test_every_scenario_module_registers_a_scenario_and_every_scenario_comes_from_one():
    """A module in scenarios/experiments that forgets @register fails here, not silently."""
    registered = {sc.module for sc in SCENARIOS.values()}
    for mod in experiments.MODULES:
        assert f"scenarios.experiments.{mod}" in registered, f"scenarios/experiments/{mod}.py registers no scenario"
    for sc in SCENARIOS.values():
        assert sc.module.startswith("scenarios.experiments."), sc


def test_the_issue_s_scenarios_are_all_registered():
    expected = {"quickstart", "alignment", "decorrelation", "noisy-baseline", "resampling", "depth",
                "regression", "fa-linear", "weight-perturbation", "weak-gradient", "device-sweep", "compare", "convnet"}
    missing = expected - set(SCENARIOS)
    assert not missing, f"scenarios not registered yet: {sorted(missing)}"


def test_register_refuses_defaults_without_the_common_settings():
    with pytest.raises(ValueError, match=r"lack the common settings \['device'"):
        register("broken", "no device", {"seed": 0})
    assert "broken" not in SCENARIOS


def test_configure_applies_paper_then_quick_then_user_settings():
    sc = get("quickstart")
    cfg = configure(sc, ["scale=paper", "epochs=7"], quick=True)
    assert cfg["dataset"] == "cifar10" and cfg["batch_size"] == 1000     # paper
    assert cfg["sizes"] == [64, 64, 10]                                   # quick after paper
    assert cfg["epochs"] == 7                                             # the user last
    with pytest.raises(ValueError, match="scale='big' is not known"):
        configure(sc, ["scale=big"])
    with pytest.raises(ValueError, match="unknown setting 'epoch'"):
        configure(sc, ["epoch=3"])


# -- the contract and the writer -------------------------------------------------------------------
def test_table_rejects_unknown_columns_and_formats_numbers():
    t = Table(["rule", "acc", "n", "ok"])
    with pytest.raises(ValueError, match="columns \\['bad'\\]"):
        t.add(rule="x", bad=1)
    t.add(rule="BP", acc=np.float32(0.5), n=1200, ok=True)
    t.add(rule="NP", acc=None, n=3, ok=False)
    text = t.format()
    assert "0.500" in text and "1,200" in text and "yes" in text and "-" in text
    assert isinstance(t.rows[0]["acc"], float)


def test_writer_round_trips_tables_arrays_claims_and_figures_through_plain_h5py(tmp_path):
    r = Result(main="t")
    t = r.table("t", ["rule", "acc", "steps", "diverged"])
    t.add(rule="BP", acc=0.9, steps=10, diverged=False)
    t.add(rule="DANP", acc=None, steps=12, diverged=True)
    r.array("angles", np.arange(6.0).reshape(2, 3), ("rule", "K"), {"rule": ["NP", "INP"], "K": [1, 10, 100]},
            units="degrees")
    fig = r.figure("fig", "a figure")
    p = fig.panel("angle", "K", "degrees", xscale="log")
    p.add("NP", [1, 10, 100], [80, 60, 40], group="NP")
    p.add("NP train", [1, 10, 100], [81, 61, 41], group="NP", role="train")
    r.claim("c1", "NP aligns", True, "40°", paper="30°")
    summary = output.write_result(tmp_path, "demo", {"seed": 0}, r, wall_s=1.0)
    assert (tmp_path / "fig.png").read_bytes()[:8] == PNG
    with h5py.File(tmp_path / "results.h5", "r") as f:
        assert f.attrs["format"] == "noisesim-results" and f.attrs["main"] == "t"
        assert json.loads(f["tables/t"].attrs["columns"]) == ["rule", "acc", "steps", "diverged"]
        assert [s.decode() for s in f["tables/t/rule"][()]] == ["BP", "DANP"]
        acc = f["tables/t/acc"][()]
        assert acc[0] == 0.9 and math.isnan(acc[1])
        assert f["tables/t/steps"].dtype == np.int64 and list(f["tables/t/diverged"][()]) == [False, True]
        v = f["arrays/angles/values"]
        assert v.shape == (2, 3) and list(f["arrays/angles/K"][()]) == [1, 10, 100]
        assert json.loads(f["arrays/angles"].attrs["dims"]) == ["rule", "K"]
        assert f["arrays/angles"].attrs["units"] == "degrees"
        assert v.dims[1][0].name.endswith("/K")
        assert [s.decode() for s in f["claims/verdict"][()]] == ["holds"]
    s = json.loads((tmp_path / "summary.json").read_text())
    assert s == json.loads(json.dumps(summary)) and s["figures"] == ["fig.png"]
    assert s["claims"][0]["holds"] is True and s["tables"]["t"][1]["acc"] is None


def test_result_check_refuses_a_missing_main_table_and_repeated_claims():
    r = Result(main="missing")
    with pytest.raises(ValueError, match="main table 'missing'"):
        r.check()
    r = Result(main="t")
    r.table("t", ["a"])
    r.claim("k", "x", True, "1")
    r.claim("k", "y", True, "1")
    with pytest.raises(ValueError, match="claim keys repeat"):
        r.check()


def test_fmt_spread_reports_mean_and_range_over_seeds():
    assert fmt_spread([0.9, 0.8, 1.0]) == "0.900 (0.800–1.000, 3 seeds)"
    assert fmt_spread([float("nan")]) == "n/a"


def test_out_that_is_a_file_is_refused_before_anything_runs(tmp_path, capsys):
    f = tmp_path / "file"
    f.write_text("x")
    assert main(["run", "quickstart", "--quick", "--no-progress", "--out", str(f)]) == 2
    assert "exists and is not a directory" in capsys.readouterr().err


# -- every scenario at its quick size --------------------------------------------------------------
def _finite_numbers(rows):
    for r in rows:
        for k, v in r.items():
            if isinstance(v, float):
                assert math.isfinite(v) or k.endswith(("_min", "_max")) or "loss" in k or "acc" in k, (k, v, r)


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_scenario_quick_run_writes_its_outputs(name, tmp_path, capsys):
    out = tmp_path / name
    code = main(["run", name, "--quick", "--no-progress", "--out", str(out), "--set", "n_seeds=1"]
                if "n_seeds" in SCENARIOS[name].defaults else
                ["run", name, "--quick", "--no-progress", "--out", str(out)])
    assert code in (0, 1), capsys.readouterr().err
    s = json.loads((out / "summary.json").read_text())
    assert s["scenario"] == name and s["quick"] is True
    main_rows = s["tables"][s["main"]]
    assert main_rows, "the main table is empty"
    _finite_numbers(main_rows)
    for fig in s["figures"]:
        assert (out / fig).read_bytes()[:8] == PNG
    assert s["figures"], "every scenario draws at least one figure"
    with h5py.File(out / "results.h5", "r") as f:
        cols = json.loads(f[f"tables/{s['main']}"].attrs["columns"])
        assert all(len(f[f"tables/{s['main']}/{c}"]) == len(main_rows) for c in cols)
        for name_ in f.get("arrays", {}):
            assert f[f"arrays/{name_}/values"].size > 0
    printed = capsys.readouterr().out
    assert "results written to" in printed
    for c in s["claims"]:
        assert c["verdict"] in ("holds", "does not hold", "not evaluated") and c["ours"]


def test_scenarios_run_from_python_returns_a_result():
    r = scenarios.run("quickstart", "epochs=1", quick=True)
    assert isinstance(r, Result) and r.tables["final"].rows


def test_scenario_docstrings_state_their_measured_time():
    for sc in SCENARIOS.values():
        doc = importlib.import_module(sc.module).__doc__ or ""
        assert " s on 2 cores" in doc or " min on 2 cores" in doc, f"{sc.module}: state the measured time"


# -- the results page ------------------------------------------------------------------------------
def test_report_writes_claims_tables_and_figures_from_run_folders(tmp_path):
    r = Result(main="t")
    r.table("t", ["rule", "acc"]).add(rule="BP", acc=0.5)
    r.figure("fig", "f").panel("p", "x", "y").add("BP", [0, 1], [0, 1])
    r.claim("c", "BP learns", True, "0.500 (3 seeds)", paper="0.6", note="smaller network")
    output.write_result(tmp_path / "run", "demo", {"dataset": "digits", "epochs": 2}, r, wall_s=3.0)
    page = tmp_path / "docs" / "results.md"
    assert main(["report", str(tmp_path / "run"), "-o", str(page)]) == 0
    text = page.read_text()
    assert "| demo | BP learns | 0.500 (3 seeds) | 0.6 | holds |" in text
    assert "| BP | 0.500 |" in text and "smaller network" in text and '`dataset="digits"`' in text
    stored = tmp_path / "docs" / "results" / "demo" / "fig.png"
    assert stored.read_bytes()[:8] == PNG
    from PIL import Image
    with Image.open(stored) as im, Image.open(tmp_path / "run" / "fig.png") as orig:
        assert im.mode == "P" and im.size == orig.size             # palette PNG, same picture size
    assert stored.stat().st_size < (tmp_path / "run" / "fig.png").stat().st_size
    assert "](results/demo/fig.png)" in text


def test_report_refuses_a_folder_without_a_summary(tmp_path, capsys):
    assert main(["report", str(tmp_path), "-o", str(tmp_path / "r.md")]) == 2
    assert "no summary.json" in capsys.readouterr().err


def test_default_run_folders_are_never_shared(tmp_path):
    a = output.default_out_dir("demo", root=tmp_path)
    b = output.default_out_dir("demo", root=tmp_path)
    assert a != b and a.is_dir() and b.is_dir()


def test_list_names_prints_one_scenario_a_line(capsys):
    assert main(["list", "--names"]) == 0
    assert capsys.readouterr().out.split() == list(SCENARIOS)
