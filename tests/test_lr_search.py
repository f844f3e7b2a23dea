"""The paper's learning-rate search: start low, double until unstable, keep the last stable."""
from __future__ import annotations

import math

import pytest

from scenarios import lr_search
from scenarios.experiment import resolve_lrs, training_trial
from scenarios.datasets import load
from scenarios.result import Result


def test_unstable_names_the_reason():
    assert lr_search.unstable([2.0, 1.5, 1.0]) is None
    assert "diverged" in lr_search.unstable([2.0, 1.0], diverged="loss became nan")
    assert lr_search.unstable([2.0, float("nan")]) == "non-finite loss"
    assert "above the initial" in lr_search.unstable([2.0, 1.0, 2.5])
    assert lr_search.unstable([2.0, 2.0, 2.05], rise=0.1) is None          # a plateau is not unstable
    assert "rose 50%" in lr_search.unstable([2.0, 1.0, 1.5, 1.2], rise=0.1)
    assert lr_search.unstable([2.0, 1.0, 1.05, 0.9], rise=0.1) is None


def _threshold_trial(limit, calls):
    """A fake trial: stable (loss falls) below ``limit``, diverging from it on."""
    def trial(lr):
        calls.append(lr)
        return ([2.0, 1.0], None) if lr < limit else ([2.0, math.inf], "loss became inf")
    return trial


def test_doubling_keeps_the_highest_stable_rate_and_stops_at_the_first_unstable():
    calls = []
    lr, trials = lr_search.highest_stable_lr(_threshold_trial(3e-3, calls), start=1e-4, factor=2)
    # 1e-4 · 2^4 = 1.6e-3 is stable, 3.2e-3 is not
    assert lr == pytest.approx(1.6e-3)
    assert calls == pytest.approx([1e-4 * 2 ** k for k in range(6)])
    assert [t["stable"] for t in trials] == [True] * 5 + [False]
    assert "diverged" in trials[-1]["why"]


def test_an_unstable_start_is_halved_until_stable_and_max_lr_caps_the_search():
    lr, trials = lr_search.highest_stable_lr(_threshold_trial(3e-3, []), start=1e-2, factor=2)
    assert lr == pytest.approx(1e-2 / 4) and len(trials) == 3
    lr, _ = lr_search.highest_stable_lr(_threshold_trial(1.0, []), start=1e-3, factor=2, max_lr=5e-3)
    assert lr == pytest.approx(4e-3)
    with pytest.raises(ValueError, match="start > 0"):
        lr_search.highest_stable_lr(_threshold_trial(1, []), start=0)


def test_search_results_are_cached_by_key(tmp_path):
    calls = []
    compute = lambda: lr_search.highest_stable_lr(_threshold_trial(3e-3, calls), start=1e-4)
    a = lr_search.cached({"k": 1}, compute, tmp_path)
    n = len(calls)
    b = lr_search.cached({"k": 1}, compute, tmp_path)
    assert a == b and len(calls) == n                    # second time from the cache
    lr_search.cached({"k": 2}, compute, tmp_path)
    assert len(calls) == 2 * n                           # another key computes again


def test_lr_auto_finds_a_real_rate_and_records_every_trial():
    """BP on a 64-32-10 network on digits, 1 epoch a trial, doubling from 1e-3: a stable rate
    is found and both tables say where it came from."""
    data = load("digits", n_train=400, n_test=100)
    cfg = {"seed": 0, "device": "ideal", "device_overrides": {}, "backend": "numpy", "dtype": "float32",
           "rules": ["bp"], "rule_options": {}, "lr": "auto",
           "lr_search": {"start": 1e-3, "epochs": 1, "cache": False, "max_lr": 0.5}}
    res = Result(main="learning_rates")
    trial = training_trial(cfg, data, [64, 32, 10], batch_size=32)
    lrs = resolve_lrs(cfg, ["bp"], architecture="3 hidden", result=res, trial=trial)
    rows = res.tables["lr_search"].rows
    assert rows[0]["lr"] == 1e-3 and rows[0]["stable"]
    assert lrs["bp"] == max(r["lr"] for r in rows if r["stable"])
    assert res.tables["learning_rates"].rows[0]["source"].startswith("highest stable rate")


def test_lr_paper_uses_table_2_and_says_so():
    cfg = {"seed": 0, "rule_options": {"dnp": {"lr": 7e-4}}, "lr": "paper"}
    res = Result(main="learning_rates")
    lrs = resolve_lrs(cfg, ["np", "dnp", "fa"], architecture="3 hidden", result=res)
    assert lrs == {"np": 1e-4, "dnp": 7e-4, "fa": 1e-3}
    src = {r["rule"]: r["source"] for r in res.tables["learning_rates"].rows}
    assert src["np"] == "paper Table 2 (3 hidden)" and src["dnp"] == "set (rule_options)"
    assert "Table 2 has no fa rate" in src["fa"]


def test_min_gain_ends_the_search_when_doubling_stops_lowering_the_loss():
    """Losses fall with the rate up to 4e-4, then rise without diverging: with ``min_gain=0``
    the search keeps 4e-4; without it, doubling runs on to the cap."""
    final = {1e-4: 1.0, 2e-4: 0.8, 4e-4: 0.7, 8e-4: 0.75, 1.6e-3: 0.9}
    trial = lambda lr: ([2.0, final[min(final, key=lambda k: abs(k - lr))]], None)
    lr, trials = lr_search.highest_stable_lr(trial, start=1e-4, max_lr=1.6e-3, min_gain=0.0)
    assert lr == pytest.approx(4e-4) and "no gain from doubling" in trials[-1]["why"]
    lr, _ = lr_search.highest_stable_lr(trial, start=1e-4, max_lr=1.6e-3)
    assert lr == pytest.approx(1.6e-3)
