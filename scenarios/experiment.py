"""Building blocks the scenarios share: common settings, seeds, devices, networks, rules
with their learning rates, several rules trained over seeds, and the standard learning-curve
table, arrays and figure.

Learning-rate policy (``lr``): ``"paper"`` — the paper's Table 2 rate for the architecture
(:mod:`scenarios.paper`; a rule it gives none for keeps its own default); ``"auto"`` — the
highest stable rate found by doubling (:mod:`scenarios.lr_search`, on the first seed, cached);
a number — that rate for every rule. ``rule_options.<rule>.lr`` overrides it per rule. The
table ``learning_rates`` of every result says which rate each rule used and where it came from.
"""
from __future__ import annotations

import copy
import warnings
from typing import Callable

import numpy as np

import noisesim
import rules as rules_pkg

from . import lr_search, paper
from .datasets import cache_dir
from .result import Result, fmt_spread, spread
from .train import History, train


def common(**settings) -> dict:
    """Defaults with every common setting (see :data:`scenarios.scenario.COMMON`) filled in.

    ``blas_threads`` (1; ``null`` leaves BLAS alone, as the paper-scale settings do) limits BLAS
    while the scenario runs, see :func:`scenarios.scenario.execute`; ``max_loss_ratio``: the
    divergence guard stops a run whose loss exceeds this multiple of its starting value
    (:func:`scenarios.train.train`).
    """
    base = {
        "seed": 0, "n_seeds": 3, "device": "ideal", "device_overrides": {}, "backend": "numpy",
        "dtype": "float32", "rules": [], "rule_options": {}, "scale": "offline",
        "lr": "paper", "lr_search": dict(lr_search.SEARCH_DEFAULTS), "blas_threads": 1, "max_loss_ratio": 1e3,
    }
    base.update(settings)
    return base


# how often, and on how many training samples, a training scenario measures its curves
# (scenarios.train's eval_every / eval_train); training scenarios add these to their defaults
EVALUATION = {"eval_every": 1, "eval_train": 2000}


def eval_options(cfg) -> dict:
    """``eval_every``/``eval_train`` of a training scenario's config, for :func:`scenarios.train`."""
    return {k: cfg.get(k, v) for k, v in EVALUATION.items()}


def seeds(cfg) -> list[int]:
    """``seed, seed+1, …`` — ``n_seeds`` of them (claims report mean and spread over these)."""
    n = cfg.get("n_seeds", 1)
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n_seeds={n!r} is out of range; allowed: an integer ≥ 1")
    s = cfg["seed"]
    if isinstance(s, bool) or not isinstance(s, int) or s < 0:
        raise ValueError(f"seed={s!r} is out of range; allowed: an integer ≥ 0")
    return [s + i for i in range(n)]


def device(cfg, **overrides) -> noisesim.DeviceConfig:
    return noisesim.DeviceConfig.preset(cfg["device"], **{**cfg.get("device_overrides", {}), **overrides})


def network(cfg, sizes, dev, seed: int, *, layers=None, input_shape=None, **kw) -> noisesim.Network:
    """The fully connected network ``sizes`` or, with ``layers`` (a layer string or list, see
    :mod:`noisesim.layers`) and ``input_shape`` (one sample, channels last), a network of
    convolutional and dense layers (:meth:`noisesim.Network.build`; ``sizes`` is then unused)."""
    opts = dict(activation=cfg.get("activation", "leaky_relu"), slope=cfg.get("slope", 0.2))
    opts.update(kw)
    if layers is not None:
        if input_shape is None:
            raise ValueError("a network of layers needs the input_shape of one sample")
        return noisesim.Network.build(tuple(input_shape), layers, dev, seed=seed, backend=cfg["backend"],
                                      dtype=cfg["dtype"], **opts)
    return noisesim.Network.mlp(sizes, device=dev, seed=seed, backend=cfg["backend"], dtype=cfg["dtype"], **opts)


def rule_names(cfg, allowed=None) -> list[str]:
    """The rules a run trains (``cfg["rules"]``, set by ``--rule``), checked against the registry
    and, when given, against the ones this scenario knows how to run."""
    names = cfg["rules"]
    if isinstance(names, str):
        names = [names]
    if not isinstance(names, list) or not names or not all(isinstance(n, str) and n for n in names):
        raise ValueError(f"rules={cfg['rules']!r} must be a non-empty list of rule names")
    out = []
    for n in names:
        key = n.strip().lower()
        if key not in rules_pkg.RULES:
            raise ValueError(f"unknown rule {n!r}; valid rules: {sorted(rules_pkg.RULES)}")
        if allowed is not None and key not in allowed:
            raise ValueError(f"this scenario runs the rules {list(allowed)}; {n!r} is not one of them")
        out.append(key)
    return out


def options(cfg, name: str) -> dict:
    """``rule_options[name]`` without the learning rate (resolved separately)."""
    opts = copy.deepcopy(cfg.get("rule_options", {}).get(name, {}))
    if not isinstance(opts, dict):
        raise ValueError(f"rule_options.{name} must be a group of settings, got {opts!r}")
    opts.pop("lr", None)
    return opts


def make_rule(name: str, lr: float | None = None, **opts):
    return rules_pkg.make(name, **opts, **({} if lr is None else {"lr": lr}))


def label(rule) -> str:
    base = getattr(rule, "baseline", None)
    samples = getattr(rule, "samples", 1)
    tag = ", ".join(t for t in (base, f"K={samples}" if samples > 1 else "") if t)
    return f"{rule.label}({tag})" if tag else rule.label


# --------------------------------------------------------------------------- learning rates
def resolve_lrs(cfg, names, *, architecture: str, result: Result, trial: Callable | None = None,
                suffix: str = "") -> dict[str, float]:
    """The learning rate of each rule in ``names`` under the run's policy (module docstring).

    ``trial(name, lr) -> (losses, diverged)`` trains briefly (needed for ``lr=auto``). Adds
    the rows to the tables ``learning_rates`` and, after a search, ``lr_search``;
    ``suffix`` tells apart several architectures of one run (e.g. ``" (1 layer)"``).
    """
    policy = cfg.get("lr", "paper")
    if not (policy in ("paper", "auto") or (isinstance(policy, (int, float)) and not isinstance(policy, bool)
                                            and policy > 0)):
        raise ValueError(f"lr={policy!r} is not known; allowed: 'paper', 'auto' or a positive number")
    lrs_t = result.tables.get("learning_rates") or result.table("learning_rates", ["rule", "lr", "source"])
    out = {}
    for name in names:
        given = cfg.get("rule_options", {}).get(name, {}).get("lr")
        if given is not None and given != "auto":
            lr, source = float(given), "set (rule_options)"
        elif isinstance(policy, (int, float)) and given is None:
            lr, source = float(policy), "set (lr)"
        elif policy == "paper" and given is None:
            lr = paper.learning_rate(architecture, name)
            source = f"paper Table 2 ({architecture})"
            if lr is None:
                lr = make_rule(name).lr
                source = f"rule default (Table 2 has no {name} rate for {architecture})"
        else:
            if trial is None:
                raise ValueError("lr=auto is not available in this scenario")
            search = {**lr_search.SEARCH_DEFAULTS, **cfg.get("lr_search", {})}
            use_cache = search.pop("cache", True)
            key = {"name": name, "architecture": architecture, "search": search,
                   "cfg": {k: v for k, v in cfg.items() if k not in ("rules", "n_seeds", "lr", "seed")},
                   "seed": cfg["seed"]}
            lr, trials = lr_search.cached(
                key, lambda: lr_search.highest_stable_lr(lambda r: trial(name, r), **search),
                cache_dir() / "lr-search" if use_cache else None)
            source = f"highest stable rate (doubling from {search['start']:g})"
            t = result.tables.get("lr_search") or result.table("lr_search", ["rule", "lr", "final_loss", "stable", "why"])
            for row in trials:
                t.add(rule=name + suffix, **row)
        lrs_t.add(rule=name + suffix, lr=lr, source=source)
        out[name] = lr
    return out


def training_trial(cfg, data, sizes, *, batch_size: int, net_kw=None, rule_kw=None):
    """``trial(name, lr)`` for :func:`resolve_lrs`: a short run on the first seed."""
    search = {**lr_search.SEARCH_DEFAULTS, **cfg.get("lr_search", {})}
    dev = device(cfg)

    def trial(name, lr):
        net = network(cfg, sizes, dev, seeds(cfg)[0], **(net_kw or {}))
        rule = make_rule(name, lr, **{**options(cfg, name), **(rule_kw or {}).get(name, {})})
        h = train(net, rule, data, epochs=int(search["epochs"]), batch_size=batch_size, progress=False,
                  eval_train=eval_options(cfg)["eval_train"])       # every epoch: the search reads each
        return h.column("train_loss"), h.diverged
    return trial


# --------------------------------------------------------------------------- training
def trained(ctx, label: str, net, rule, data, *, group: str | None = None, **kw) -> History:
    """:func:`scenarios.train.train` reported to ``ctx`` (:meth:`Context.finished`, under
    ``group``, default ``label``) as soon as it finishes or is interrupted (then the
    interrupted run's partial history, and the error is raised again)."""
    try:
        h = train(net, rule, data, label=label, **kw)
    except BaseException as exc:
        if ctx is not None and getattr(exc, "history", None) is not None:
            _report(ctx, group or label, exc.history)
        raise
    if ctx is not None:
        _report(ctx, group or label, h)
    return h


def _report(ctx, label, h):
    try:
        ctx.finished(label, h)
    except KeyboardInterrupt:
        raise
    except Exception as exc:    # writing a partial result must not end the run
        warnings.warn(f"could not record the partial result after {label}: {exc}")


def train_runs(cfg, specs, data, *, sizes, epochs: int, batch_size: int, progress: bool = True,
               net_kw=None, ctx=None, group_suffix: str = "") -> dict[str, list[History]]:
    """Train every ``(label, make_rule)`` in ``specs`` on every seed, each on a fresh network
    (same seed, same initial weights across rules). Access is checked before anything trains.
    Each run is reported to ``ctx`` as soon as it finishes (:func:`trained`), under its label
    and ``group_suffix`` (which tells apart the same labels of several calls)."""
    dev = device(cfg)
    planned = []
    for lab, factory in specs:
        probe = factory()
        network(cfg, sizes, dev, seeds(cfg)[0], **(net_kw or {})).require(f"rule {lab!r}", probe.required_access())
        planned.append((lab, factory))
    runs: dict[str, list[History]] = {}
    for lab, factory in planned:
        for s in seeds(cfg):
            net = network(cfg, sizes, dev, s, **(net_kw or {}))
            runs.setdefault(lab, []).append(
                trained(ctx, f"{lab} s{s}", net, factory(), data, group=lab + group_suffix, epochs=epochs,
                        batch_size=batch_size, progress=progress, max_loss_ratio=cfg.get("max_loss_ratio", 1e3),
                        **eval_options(cfg)))
    return runs


def partial_result(runs: dict, scenario: str = "") -> Result:
    """The runs finished so far (``{label: [History]}``) as a :class:`Result`: the learning
    table ``final``, the learning curves and a note per stopped or interrupted run."""
    res = Result(main="final")
    if not runs:
        res.table("final", ["rule"])
        return res
    stopped = {lab: {"interrupted": any(h.interrupted for h in hs)} for lab, hs in runs.items()}
    with quiet():
        learning_table(res, runs, extra=stopped)
        learning_curves(res, runs, title=f"{scenario}: runs finished so far" if scenario else "runs finished so far")
    for lab, hs in runs.items():
        for h in hs:
            if h.interrupted:
                res.notes.append(f"{lab} was interrupted after {h.steps} steps: {h.interrupted}")
    return res


def _padded(runs, key):
    """``(runs, seeds, epochs)`` array of one metric, NaN after a run stopped early."""
    n_ep = max(len(h.epochs) for hs in runs.values() for h in hs)
    n_seed = max(len(hs) for hs in runs.values())
    out = np.full((len(runs), n_seed, n_ep), np.nan)
    for i, hs in enumerate(runs.values()):
        for j, h in enumerate(hs):
            c = h.column(key)
            out[i, j, :len(c)] = c
    return out


def learning_table(result: Result, runs: dict, name: str = "final", extra: dict | None = None):
    """One row per run label: final and peak metrics, mean and range over seeds."""
    cols = ["rule", "seeds", "test_acc", "test_acc_min", "test_acc_max", "peak_test_acc", "train_acc",
            "test_loss", "train_loss", "forward_passes", "wall_s", "diverged"]
    extra = extra or {}
    extra_cols = sorted({k for v in extra.values() for k in v})
    t = result.table(name, cols + extra_cols)
    for lab, hs in runs.items():
        ta = spread(h.last("test_acc") for h in hs)
        peak = spread(np.nanmax(h.column("test_acc")) if h.epochs else np.nan for h in hs)
        t.add(rule=lab, seeds=len(hs), test_acc=ta["mean"], test_acc_min=ta["min"], test_acc_max=ta["max"],
              peak_test_acc=peak["mean"], train_acc=spread(h.last("train_acc") for h in hs)["mean"],
              test_loss=spread(h.last("test_loss") for h in hs)["mean"],
              train_loss=spread(h.last("train_loss") for h in hs)["mean"],
              forward_passes=int(np.mean([h.forward_passes for h in hs])),
              wall_s=float(np.mean([h.wall_s for h in hs])), diverged=sum(bool(h.diverged) for h in hs),
              **extra.get(lab, {}))
    for lab, hs in runs.items():
        for h in hs:
            if h.diverged:
                result.notes.append(f"{h.rule} stopped early: {h.diverged}")
    return t


def learning_curves(result: Result, runs: dict, *, name: str = "learning_curves", title: str = "",
                    regression: bool = False, groups: dict | None = None):
    """Arrays ``<name>_<metric>`` (run, seed, epoch) and a figure: accuracy (or loss for
    regression) with test solid and train dashed, mean over seeds with the range shaded."""
    labels = list(runs)
    metrics = ("train_loss", "test_loss", "train_acc", "test_acc", "step_loss")
    data = {m: _padded(runs, m) for m in metrics}
    # the epochs the runs measured (every ``eval_every``-th and the last; a run stopped early
    # measured a prefix of the longest one's)
    longest = max((h for hs in runs.values() for h in hs), key=lambda h: len(h.epochs))
    epochs = longest.column("epoch").astype(int)
    for m, v in data.items():
        result.array(f"{name}_{m}", v, ("run", "seed", "epoch"),
                     {"run": labels, "epoch": epochs.tolist()})
    fig = result.figure(name, title or name.replace("_", " "))
    kinds = [("loss", "train_loss", "test_loss", "log")] if regression else \
        [("accuracy", "train_acc", "test_acc", "linear"), ("loss", "train_loss", "test_loss", "log")]
    for what, tr, te, yscale in kinds:
        p = fig.panel(f"{what} (mean, range over seeds)", "epoch", what, yscale=yscale)
        for i, lab in enumerate(labels):
            g = (groups or {}).get(lab, lab)
            for key, role in ((te, "test"), (tr, "train")):
                v = data[key][i]
                with np.errstate(all="ignore"), warnings.catch_warnings():
                    warnings.simplefilter("ignore", RuntimeWarning)   # all-NaN epochs after a stop
                    p.add(f"{lab} {role}", epochs, np.nanmean(v, 0), np.nanmin(v, 0), np.nanmax(v, 0),
                          group=g, role=role)
    return fig


class quiet(warnings.catch_warnings):
    """Silence NumPy's warnings about all-NaN slices (rules not run, runs stopped early): the
    NaNs are intended and stay in the arrays."""

    def __enter__(self):
        out = super().__enter__()
        warnings.simplefilter("ignore", RuntimeWarning)
        return out


def final_metric(runs: dict, lab: str, key: str = "test_acc", peak: bool = False) -> list[float]:
    """Per-seed final (or peak) value of ``key`` for run ``lab``."""
    hs = runs.get(lab, [])
    if peak:
        return [float(np.nanmax(h.column(key))) for h in hs if h.epochs]
    return [float(h.last(key)) for h in hs if h.epochs]


__all__ = ["common", "seeds", "device", "network", "rule_names", "options", "make_rule", "label",
           "resolve_lrs", "training_trial", "trained", "train_runs", "partial_result", "learning_table", "learning_curves",
           "final_metric", "quiet", "fmt_spread", "spread"]
