"""Learning rules that train networks through the ``noisesim`` device protocol.

Every rule of the spec's table, each a small module, registered here by name:

======================  ===========================================  =====================
name                    rule                                         access it needs
======================  ===========================================  =====================
``bp``                  backprop through transposed crossbar reads   observe, backward
``fa`` / ``dfa``        feedback alignment / *direct* FA             observe
``wp``                  weight perturbation                          inject (+ clean)
``np``                  node perturbation, known injected ε          inject (+ clean)
``inp``                 iterative NP, one layer per pass             inject (+ clean)
``anp``                 activity-based NP, observed δa               observe (+ clean)
``regression``          ridge "weak gradient" over S copies          observe (+ clean)
======================  ===========================================  =====================

``(+ clean)`` only with ``baseline="clean"``. The decorrelated variants are the same rules
with ``decorrelate=True``: ``dbp``, ``dnp``, ``dinp``, ``danp``, ``dwp``, ``dregression``,
and — because ``dfa`` already names direct feedback alignment — ``d-fa`` and ``d-dfa``.

>>> import rules
>>> rule = rules.make("danp", baseline="noisy", lr=1e-3)
>>> rule.label
'DANP'
"""
from __future__ import annotations

import functools

import noisesim.registry

from .base import DivergenceGuard, Estimate, Rule
from .bp import Backprop
from .losses import Loss
from .optim import SGD, Adam
from .perturbation import PerturbationRule, node_perturbation
from .activity import ActivityNodePerturbation
from .feedback import FeedbackAlignment
from .iterative import IterativeNodePerturbation
from .node import NodePerturbation
from .reference import alignment, angle, angles, diagnostics, exact_gradients
from .regression import RegressionPerturbation
from .weight import WeightPerturbation

_BASE: dict[str, tuple[type, dict]] = {
    "bp": (Backprop, {}),
    "fa": (FeedbackAlignment, {}),
    "dfa": (FeedbackAlignment, {"direct": True}),
    "wp": (WeightPerturbation, {}),
    "np": (NodePerturbation, {}),
    "inp": (IterativeNodePerturbation, {}),
    "anp": (ActivityNodePerturbation, {}),
    "regression": (RegressionPerturbation, {}),
}
# One line per base rule, for listings (`noisesim list`).
DESCRIPTIONS: dict[str, str] = {
    "bp": "backpropagation through transposed crossbar reads",
    "fa": "feedback alignment: fixed random feedback matrices layer by layer",
    "dfa": "direct feedback alignment: the output error sent to every layer by fixed random matrices",
    "wp": "weight perturbation: known perturbations on every weight, two passes",
    "np": "node perturbation: known perturbations injected on every unit, two passes",
    "inp": "iterative node perturbation: one layer perturbed per pass, L+1 passes",
    "anp": "activity-based node perturbation: measured activity differences, no noise readout",
    "regression": "weak gradient: ridge regression of δL on observed δa over S perturbed copies",
}
# name -> (class, fixed options). "d" + name is the decorrelated variant of a rule.
RULES: dict[str, tuple[type, dict]] = dict(_BASE)
for _name, (_cls, _fixed) in _BASE.items():
    _dname = ("d-" if _cls is FeedbackAlignment else "d") + _name
    RULES[_dname] = (_cls, {**_fixed, "decorrelate": True})


def from_state(state: dict, net) -> Rule:
    """The rule saved as ``state`` (:meth:`Rule.state`), ready to continue on ``net``.

    >>> rule = rules.from_state(noisesim.state.load("ckpt.h5")["rule"], net)   # doctest: +SKIP
    """
    cfg = state.get("config") if isinstance(state, dict) else None
    if not isinstance(cfg, dict) or not isinstance(cfg.get("rule"), str):
        raise ValueError("not a rule state: it has no config with a rule name")
    rule = make(cfg["rule"], **{k: v for k, v in cfg.items() if k != "rule"})
    rule.load_state(state, net)
    return rule


def make(name: str, **options) -> Rule:
    """A rule by registry name with its options, e.g. ``make("danp", baseline="noisy")``."""
    key = name.strip().lower() if isinstance(name, str) else None
    if key not in RULES:
        raise ValueError(f"unknown rule {name!r}; valid rules: {sorted(RULES)}")
    cls, fixed = RULES[key]
    clash = {k for k in fixed if k in options and options[k] != fixed[k]}
    if clash:
        raise ValueError(f"rule {name!r} fixes {sorted(clash)}; use the plain rule name to change them")
    try:
        return cls(**{**options, **fixed})
    except TypeError as exc:
        raise ValueError(f"rule {name!r}: {exc}") from None
    except ValueError as exc:   # the classes name their base rule ("anp: …"); say the one asked for
        msg = str(exc)
        if msg.startswith(f"{cls.name}: "):
            msg = f"{key}: " + msg[len(cls.name) + 2:]
        raise ValueError(msg) from None


# noisesim finds rules by name here (trace replay), without importing this package itself
for _name in RULES:
    noisesim.registry.register_rule(_name, functools.partial(make, _name))

__all__ = ["DivergenceGuard", "Estimate", "Rule", "Backprop", "FeedbackAlignment", "WeightPerturbation",
           "NodePerturbation", "IterativeNodePerturbation", "ActivityNodePerturbation",
           "RegressionPerturbation", "PerturbationRule", "node_perturbation", "Loss", "SGD", "Adam",
           "alignment", "angle", "angles", "diagnostics", "exact_gradients", "RULES", "DESCRIPTIONS", "make",
           "from_state"]
