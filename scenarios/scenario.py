"""Scenario registry and configuration.

A scenario is one module of :mod:`scenarios.experiments` holding a function
``run(cfg, ctx) -> Result`` registered with :func:`register`, its defaults, a ``quick``
smoke size and a ``paper`` setting. Every scenario's defaults carry the settings the
command line sets for all of them (:data:`COMMON`).

Configuration of one run, in order: the defaults; the ``paper`` overrides when
``scale=paper``; the ``quick`` overrides with ``--quick``; then the user's ``--set
key=value`` (dotted keys reach into nested dicts, ``rule_options.danp.lr=5e-4``). Values are
parsed as JSON (numbers, booleans, lists) and fall back to plain strings — never evaluated.
"""
from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from typing import Callable

SCENARIOS: dict[str, "Scenario"] = {}

# settings every scenario has, so --seed/--device/--rule/--backend/--set scale=… work everywhere
COMMON = ("seed", "device", "device_overrides", "backend", "dtype", "rules", "rule_options", "scale")
SCALES = ("offline", "paper")


@dataclass
class Context:
    """How a scenario runs (not what it computes): progress bars, traces, partial results.

    Scenarios report each training run as soon as it finishes — or is interrupted — with
    :meth:`finished` (``experiment.train_runs``, ``experiment.trained`` and
    ``runner.train_rules`` do it for them); ``on_partial(result)``, when set, then gets a
    :class:`~scenarios.result.Result` of every run finished so far (a learning table and
    curves), which the command line writes at once, so an interrupted run keeps its finished
    work.
    """

    progress: bool = True
    trace: str | None = None
    trace_options: dict = field(default_factory=dict)
    scenario: str = ""
    on_partial: Callable | None = None
    runs: dict = field(default_factory=dict)     # label -> [History] reported so far

    def finished(self, label: str, history) -> None:
        """Report one run (a :class:`~scenarios.train.History`, finished or interrupted)."""
        self.runs.setdefault(label, []).append(history)
        if self.on_partial is not None:
            from .experiment import partial_result

            self.on_partial(partial_result(self.runs, self.scenario))

    def used(self) -> dict:
        """The backends and dtypes the reported runs actually used (``{}`` before any)."""
        hs = [h for hs in self.runs.values() for h in hs]
        out = {}
        for key in ("backend", "dtype"):
            vals = sorted({getattr(h, key) for h in hs if getattr(h, key, None)})
            if vals:
                out[key] = ",".join(vals)
        return out


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    defaults: dict
    run: Callable
    module: str
    quick: dict = field(default_factory=dict)
    paper: dict = field(default_factory=dict)
    traces: bool = False


def register(name: str, description: str, defaults: dict, *, quick: dict | None = None,
             paper: dict | None = None, traces: bool = False):
    """Decorator adding ``run(cfg, ctx) -> Result`` to :data:`SCENARIOS` under ``name``.

    ``quick``: overrides for the ``--quick`` smoke size; ``paper``: overrides that
    ``scale=paper`` applies (the paper's data, network, rates and epochs); ``traces``: whether
    ``--trace`` is supported. Fails at import when a common setting is missing or an override
    names a setting the defaults do not have.
    """
    missing = [k for k in COMMON if k not in defaults]
    if missing:
        raise ValueError(f"scenario {name!r}: defaults lack the common settings {missing}")
    for what, over in (("quick", quick or {}), ("paper", paper or {})):
        unknown = [k.split(".")[0] for k in over if k.split(".")[0] not in defaults]
        if unknown:
            raise ValueError(f"scenario {name!r}: {what} overrides unknown settings {unknown}")

    def deco(fn):
        if name in SCENARIOS and SCENARIOS[name].module != fn.__module__:
            raise ValueError(f"scenario {name!r} registered twice ({SCENARIOS[name].module}, {fn.__module__})")
        SCENARIOS[name] = Scenario(name, description, defaults, fn, fn.__module__,
                                   dict(quick or {}), dict(paper or {}), traces)
        return fn
    return deco


def execute(sc: Scenario, cfg: dict, ctx: Context):
    """Run ``sc`` with ``cfg``: BLAS limited to ``cfg["blas_threads"]`` threads while it runs
    (``None`` or absent: left alone). The scenarios' layers are small: on a shared 2-core
    machine a second BLAS thread only contends (measured: 800 BP updates of a 64-64-10 network
    4.2 s with two threads, 0.9 s with one, under load)."""
    n = cfg.get("blas_threads")
    if n is None:
        return sc.run(cfg, ctx)
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"blas_threads={n!r} is out of range; allowed: an integer ≥ 1, or null")
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=n, user_api="blas"):
        return sc.run(cfg, ctx)


def get(name: str) -> Scenario:
    if name not in SCENARIOS:
        raise ValueError(f"unknown scenario {name!r}; valid scenarios: {sorted(SCENARIOS)}")
    return SCENARIOS[name]


def parse_value(text: str):
    """A ``--set`` value: JSON when it parses (``1e-3``, ``true``, ``[64, 10]``), else the string."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _pairs(items):
    for item in items:
        if isinstance(item, str):
            if "=" not in item:
                raise ValueError(f"--set expects key=value, got {item!r}")
            key, raw = item.split("=", 1)
            yield key.strip(), parse_value(raw)
        else:
            yield item


def apply_overrides(defaults: dict, pairs) -> dict:
    """A deep copy of ``defaults`` with ``key=value`` strings (or ``(key, value)`` pairs) applied.

    Unknown top-level keys raise ``ValueError`` listing the valid ones; nested dicts accept
    new keys (per-rule options, device overrides).
    """
    cfg = copy.deepcopy(defaults)
    for key, value in _pairs(pairs):
        parts = key.split(".")
        if parts[0] not in cfg:
            raise ValueError(f"unknown setting {parts[0]!r}; valid settings: {sorted(cfg)}")
        node = cfg
        for p in parts[:-1]:
            if not isinstance(node.get(p), dict):
                node[p] = {} if node.get(p) is None else _fail(key, p)
            node = node[p]
        node[parts[-1]] = copy.deepcopy(value)
    return cfg


def configure(sc: Scenario, pairs=(), *, quick: bool = False) -> dict:
    """The config of one run of ``sc``: defaults, then ``paper`` (if ``scale=paper``), then
    ``quick``, then ``pairs`` (see the module docstring)."""
    pairs = list(_pairs(pairs))
    scale = next((v for k, v in reversed(pairs) if k == "scale"), sc.defaults["scale"])
    if scale not in SCALES:
        raise ValueError(f"scale={scale!r} is not known; allowed: {list(SCALES)}")
    cfg = copy.deepcopy(sc.defaults)
    if scale == "paper":
        cfg = apply_overrides(cfg, sc.paper.items())
    if quick:
        cfg = apply_overrides(cfg, sc.quick.items())
    cfg = apply_overrides(cfg, pairs)
    for key, value in pairs:
        if "." not in key:
            check_type(key, value, [sc.defaults.get(key), sc.paper.get(key), sc.quick.get(key)])
    return cfg


# settings that take more than one kind of value (names, numbers, null)
KINDS = {"lr": (str, int, float), "rules": (str, list), "blas_threads": (int, type(None)),
         "max_loss_ratio": (int, float, type(None))}


def _kinds(ref) -> tuple:
    if isinstance(ref, bool):
        return (bool,)
    if isinstance(ref, float):
        return (int, float)
    for t in (int, str, list, dict):
        if isinstance(ref, t):
            return (t,)
    return ()


def check_type(key: str, value, refs) -> None:
    """Refuse a ``--set`` value whose kind differs from the setting's default (a list where a
    number belongs, a string where a list belongs…), naming the setting. Settings whose
    default is ``null`` take any value (their scenario checks it)."""
    refs = [r for r in refs if r is not None]
    if not refs and key not in KINDS:
        return
    kinds = KINDS.get(key) or tuple({k for r in refs for k in _kinds(r)})
    if not kinds:
        return
    ok = isinstance(value, kinds) and not (isinstance(value, bool) and bool not in kinds)
    if ok and isinstance(value, list):
        elems = {k for r in refs if isinstance(r, list) for x in r for k in _kinds(x)}
        if elems and elems <= {int, float, str, bool}:
            ok = all(isinstance(x, tuple(elems)) and not (isinstance(x, bool) and bool not in elems) for x in value)
    if not ok:
        names = sorted({"a number" if k in (int, float) else {bool: "true/false", str: "a string", list: "a list",
                        dict: "a group of settings", type(None): "null"}[k] for k in kinds})
        example = next((r for r in refs), None)
        raise ValueError(f"{key}={value!r} is not valid: {key} takes {' or '.join(names)}"
                         + (f" (default {example!r})" if example is not None else ""))


def validate(cfg: dict) -> None:
    """Check the common settings before anything runs: the device (preset and overrides),
    the rule names, the seed and the backend. Raises ``ValueError`` naming the setting."""
    import noisesim
    import noisesim.backend

    for group in ("device_overrides", "rule_options", "lr_search"):
        if group in cfg and not isinstance(cfg[group] or {}, dict):
            raise ValueError(f"{group}={cfg[group]!r} must be a group of settings (key=value pairs)")
    for name, opts in (cfg.get("rule_options") or {}).items():
        if not isinstance(opts, dict):
            raise ValueError(f"rule_options.{name}={opts!r} must be a group of settings, e.g. "
                             f"rule_options.{name}.lr=0.001")
    noisesim.DeviceConfig.preset(cfg["device"], **(cfg.get("device_overrides") or {}))
    from .experiment import rule_names

    rule_names(cfg)
    if isinstance(cfg["seed"], bool) or not isinstance(cfg["seed"], int) or cfg["seed"] < 0:
        raise ValueError(f"seed={cfg['seed']!r} is out of range; allowed: an integer ≥ 0")
    if cfg["backend"] not in ("auto", "numpy", "cupy"):
        raise ValueError(f"backend={cfg['backend']!r} is not known; allowed: ['auto', 'numpy', 'cupy']")
    noisesim.backend.get_backend(cfg["backend"], cfg["dtype"])    # cupy without a GPU, an unknown dtype
    _check_sizes(cfg)


# integer settings some scenarios have: (lowest, highest) allowed
COUNTS = {"epochs": (0, 1_000_000), "batch_size": (1, 2 ** 31 - 1), "n_seeds": (1, 1000), "width": (1, 1_000_000),
          "n_train": (1, 2 ** 31 - 1), "n_test": (1, 2 ** 31 - 1)}
BYTES_PER_WEIGHT = 40   # float32 weights, conductance pair, optimizer moments, update and scratch copies


def _check_sizes(cfg: dict) -> None:
    """Integer settings, layer widths and the memory the network needs, checked before any
    training so that an absurd value costs nothing."""
    from .train import check_count

    for key, (lo, hi) in COUNTS.items():
        if key in cfg and cfg[key] is not None:
            check_count(key, cfg[key], lo, hi)
    if cfg.get("max_loss_ratio") is not None:
        v = cfg["max_loss_ratio"]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 1:
            raise ValueError(f"max_loss_ratio={v!r} is out of range; allowed: a number > 1, or null")
    for key in ("sizes", "hidden"):
        if key not in cfg or cfg[key] is None:
            continue
        v = cfg[key]
        if not isinstance(v, list) or not v:
            raise ValueError(f"{key}={v!r} must be a list of layer widths, e.g. [64, 256, 10]")
        for w in v:
            check_count(f"{key} entry", w, 1, 1_000_000)
    widths = cfg.get("sizes") or ([cfg.get("n_in", 0)] + list(cfg.get("hidden") or []) + [cfg.get("n_out", 0)])
    weights = sum(int(a) * int(b) for a, b in zip(widths, widths[1:]))
    need = weights * BYTES_PER_WEIGHT * (2 if cfg.get("dtype") == "float64" else 1)
    have = _available_memory()
    if have and need > have:
        raise ValueError(f"sizes={widths} has {weights:,} weights and needs about {need / 2**30:.1f} GiB; "
                         f"this machine has {have / 2**30:.1f} GiB available")


def _available_memory() -> int | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        import os

        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def _fail(key, part):
    raise ValueError(f"setting {key!r}: {part!r} is not a group of settings")
