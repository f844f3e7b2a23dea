"""Pieces shared by the node-perturbation paper's training comparisons (``decorrelation``,
``noisy-baseline``, ``resampling``, ``depth``): the data, rule factories with the
perturbation options, per-seed peak accuracies and claims that compare two of them.

Peak accuracy is the paper's measure (its Tables 3 and 4: the best accuracy over the epochs
of a run); differences are taken per seed, between runs that start from the same initial
weights (the same seed builds the same network for every rule).
"""
from __future__ import annotations

import dataclasses

import numpy as np

import rules as rules_pkg
from rules.perturbation import PerturbationRule

from ..datasets import load
from ..experiment import make_rule, options, training_trial
from ..lr_search import SEARCH_DEFAULTS
from ..result import spread

# the lr=auto search of these scenarios: doubling from 1e-4 (Table 2's lowest rate for these
# networks) with 10-epoch trials until the training loss rises between two epochs, ends above
# where it started, or ends higher than at half the rate (``min_gain=0``, scenarios.lr_search)
SEARCH = {**SEARCH_DEFAULTS, "start": 1e-4, "epochs": 10, "rise": 0.0, "min_gain": 0.0}
QUICK_SEARCH = {**SEARCH, "start": 1e-3, "epochs": 1, "max_trials": 2, "cache": False}

PERTURBATION = {n for n, (cls, _) in rules_pkg.RULES.items() if issubclass(cls, PerturbationRule)}


def load_data(cfg):
    """The scenario's dataset (``dataset``, optional ``n_train``/``n_test``), standardised per
    feature over the training split when ``standardize`` is set (the paper does so for Tiny
    ImageNet). A dataset read from ``$NOISESIM_DATA`` that is absent raises FileNotFoundError
    naming the files and the folder searched."""
    kw = {k: cfg[k] for k in ("n_train", "n_test") if cfg.get(k)}
    data = load(cfg["dataset"], **kw)
    if cfg.get("standardize"):
        mean = data.x_train.mean(0)
        std = np.maximum(data.x_train.std(0), 1e-6)
        data = dataclasses.replace(data, x_train=((data.x_train - mean) / std).astype(np.float32),
                                   x_test=((data.x_test - mean) / std).astype(np.float32))
    return data


# one sample of each dataset, channels last (CIFAR-10's python rows are channel-first: see channels_last)
INPUT_SHAPES = {"mnist1d": (40, 1), "digits": (8, 8, 1), "cifar10": (32, 32, 3), "mnist": (28, 28, 1),
                "tiny-imagenet": (64, 64, 3)}
CHANNEL_FIRST = {"cifar10": (3, 32, 32)}


def channels_last(data, name: str):
    """``data`` with its rows in channels-last order, as networks of layers read them (a no-op
    but for CIFAR-10, whose python batches hold channel-first 3×32×32 rows)."""
    if name not in CHANNEL_FIRST:
        return data
    c, *hw = CHANNEL_FIRST[name]

    def tr(x):
        return np.ascontiguousarray(x.reshape(len(x), c, *hw).transpose(0, 2, 3, 1).reshape(len(x), -1))
    return dataclasses.replace(data, x_train=tr(data.x_train), x_test=tr(data.x_test),
                               meta={**data.meta, "layout": "channels last (H, W, C)"})


def conv_architecture(layers_by_dataset, setting: str, name: str, data) -> dict:
    """``{"input_shape", "layers"}`` of dataset ``name``'s network of layers (``setting.<name>``, a
    layer string such as ``"c5x16s2 c3x32s2 f128 f10"``), checked against the data: the input
    shape of one sample must hold its features and the last layer must be dense with one unit
    per class. Raises ValueError naming the setting."""
    layers = (layers_by_dataset or {}).get(name)
    if not isinstance(layers, str) or not layers.strip():
        raise ValueError(f"{setting}.{name} is not set; give the network as a layer string, e.g. "
                         f"--set '{setting}.{name}=c3x3x16s2 c3x3x32s2 f128 f{data.n_outputs}'")
    shape = INPUT_SHAPES.get(name)
    if shape is None or int(np.prod(shape)) != data.n_features:
        raise ValueError(f"dataset {name!r}: no channels-last input shape known for {data.n_features} features "
                         f"(known: {sorted(INPUT_SHAPES)})")
    from noisesim.layers import build

    built = build(shape, layers)
    if built[-1].kind != "dense" or built[-1].n_out != data.n_outputs:
        raise ValueError(f"{setting}.{name}={layers!r} ends in {built[-1].spec()}; {name} needs a dense output "
                         f"layer of {data.n_outputs} units (f{data.n_outputs})")
    return {"input_shape": shape, "layers": layers}


def sizes(data, hidden) -> list[int]:
    """``[n_in, *hidden, n_out]`` for ``data``."""
    return [data.n_features, *[int(h) for h in hidden], data.n_outputs]


def rule_label(name: str) -> str:
    """The display label of rule ``name`` with its default options (``DANP``, ``BP`` …)."""
    return make_rule(name).label


def rule_kw(name: str, **perturbation) -> dict:
    """The perturbation options (``baseline``, ``samples``) that rule ``name`` accepts;
    backprop takes none of them."""
    return {k: v for k, v in perturbation.items() if v is not None and name in PERTURBATION}


def spec(cfg, label: str, name: str, lr: float, **perturbation):
    """``(label, factory)`` for :func:`scenarios.experiment.train_runs`: rule ``name`` at rate
    ``lr`` with the user's ``rule_options`` and the scenario's perturbation options on top
    (the scenario's experimental variable wins)."""
    opts = {**options(cfg, name), **rule_kw(name, **perturbation)}
    return label, lambda: make_rule(name, lr, **opts)


def search_trial(cfg, data, sz, batch_size: int, rule_kw: dict, net_kw: dict | None = None):
    """The lr-search trial of these scenarios: a short run (``lr_search.epochs``) on the first seed
    (``net_kw``: the network's ``layers``/``input_shape`` for a convolutional one)."""
    return training_trial(cfg, data, sz, batch_size=batch_size, rule_kw=rule_kw, net_kw=net_kw)


def per_seed(runs: dict, label: str, key: str = "test_acc", peak: bool = True) -> list[float]:
    """Per-seed peak (or final) value of ``key`` of run ``label`` (empty when it did not run)."""
    out = []
    for h in runs.get(label, []):
        col = h.column(key)
        col = col[np.isfinite(col)]
        if col.size:
            out.append(float(col.max() if peak else col[-1]))
    return out


def mean(values) -> float:
    return spread(values)["mean"]


def pct(values) -> str:
    """Paper-style percentages, e.g. ``"44.4 %"``."""
    return f"{values:.1f} %"


def differences(a: list[float], b: list[float]) -> list[float]:
    """Per-seed ``a − b`` over the seeds both ran."""
    return [x - y for x, y in zip(a, b)]


def gain_verdict(gains: list[float], margin: float) -> bool | None:
    """Holds when the mean per-seed gain is at least ``margin`` and every seed gains;
    ``None`` when nothing was measured."""
    if not gains:
        return None
    return bool(np.mean(gains) >= margin and min(gains) > 0)

