"""The paper's way to a fair learning rate: start low, double until training turns unstable,
keep the highest stable rate (its Appendix J; Table 2's "highest stable learning rate").

A trial is a short training run at one rate. It is **unstable** when it diverges (a
non-finite loss or update, or the divergence guard), when its final training loss is more
than ``rise`` (relative) above the loss it started from, or when the loss rises by more than
``rise`` between two consecutive evaluations. (A plateau — a rate too low to move the loss,
evaluated with device noise — is not instability: doubling goes on.) Doubling stops at the first unstable rate; the rate before it is
the answer. When even the starting rate is unstable the search halves instead until a rate
is stable. With ``min_gain`` set, a doubled rate whose trial does not end with a training loss
at least ``min_gain`` (relative; 0: any amount) below the previous rate's also ends the search:
a short trial cannot see an instability that sets in later, and a rate past the best one can
keep the loss falling for a while (measured on MNIST-1D, 3 × 256, batch 100: 4-epoch trials
judged by the loss alone found 2–4× the best rates of 20-epoch runs). Scenarios use the search
through ``lr=auto`` and record every trial.
"""
from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Callable

import noisesim

CRITERION = 3          # bumped whenever :func:`unstable` changes, so cached searches are redone
SEARCH_DEFAULTS = {"start": 1e-5, "factor": 2.0, "max_lr": 1.0, "epochs": 2, "rise": 0.1, "max_trials": 30,
                   "min_gain": None}


def unstable(losses, diverged=None, rise: float = 0.1) -> str | None:
    """Why a trial with per-evaluation training ``losses`` (first = before training) is
    unstable, or ``None`` when it is stable."""
    if diverged:
        return f"diverged: {diverged}"
    ls = [float(v) for v in losses]
    if any(not math.isfinite(v) for v in ls):
        return "non-finite loss"
    if len(ls) >= 2 and ls[-1] > ls[0] * (1 + rise):
        return f"final loss {ls[-1]:.4g} above the initial {ls[0]:.4g}"
    for a, b in zip(ls[1:-1], ls[2:]):
        if b > a * (1 + rise):
            return f"loss rose {b / a - 1:.0%} between evaluations"
    return None


def highest_stable_lr(trial: Callable[[float], tuple], *, start: float = 1e-5, factor: float = 2.0,
                      max_lr: float = 1.0, rise: float = 0.1, max_trials: int = 30,
                      min_gain: float | None = None, **_) -> tuple[float, list]:
    """Search by doubling. ``trial(lr)`` trains briefly and returns ``(losses, diverged)``.

    Returns ``(lr, trials)`` with one dict per trial: ``lr``, ``final_loss``, ``stable``, ``why``.
    """
    if not (start > 0 and factor > 1 and max_lr >= start):
        raise ValueError(f"lr search needs start > 0 ({start!r}), factor > 1 ({factor!r}), "
                         f"max_lr ≥ start ({max_lr!r})")
    trials: list = []

    def run(lr):
        losses, diverged = trial(lr)
        why = unstable(losses, diverged, rise)
        final = float(losses[-1]) if len(losses) else float("nan")
        prev = next((t for t in reversed(trials) if t["stable"] and t["lr"] < lr), None)
        if why is None and min_gain is not None and prev is not None \
                and not final <= (1 - min_gain) * prev["final_loss"]:
            why = f"no gain from doubling: final loss {final:.4g}, {prev['final_loss']:.4g} at {prev['lr']:.3g}"
        trials.append({"lr": lr, "final_loss": final, "stable": why is None, "why": why or ""})
        return why is None

    lr, best = start, None
    if run(lr):
        best = lr
        while len(trials) < max_trials and lr * factor <= max_lr * (1 + 1e-9):
            lr *= factor
            if not run(lr):
                break
            best = lr
    else:
        while len(trials) < max_trials:
            lr /= factor
            if run(lr):
                best = lr
                break
    if best is None:
        raise ValueError(f"lr search: no stable learning rate found from {start:g} down to {lr:g}")
    return best, trials


def cached(key: dict, compute: Callable[[], tuple], cache_dir: Path | None) -> tuple:
    """``compute()`` once per ``key`` (and noisesim version), kept as JSON in ``cache_dir``."""
    if cache_dir is None:
        return compute()
    blob = json.dumps({"noisesim": noisesim.__version__, "criterion": CRITERION, **key}, sort_keys=True, default=str)
    path = Path(cache_dir) / f"lr-{hashlib.sha256(blob.encode()).hexdigest()[:20]}.json"
    try:
        data = json.loads(path.read_text())
        if data.get("key") == blob:
            return data["lr"], data["trials"]
    except (OSError, ValueError, KeyError):
        pass
    lr, trials = compute()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"key": blob, "lr": lr, "trials": trials}))
        tmp.replace(path)
    except OSError:
        pass
    return lr, trials
