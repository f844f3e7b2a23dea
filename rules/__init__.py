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

Options: :func:`options` lists what a rule takes; each
is documented under *Parameters* of the class that introduces it. Every rule takes ``lr``,
``optimizer``, ``momentum``, ``loss``, ``decorrelate``, ``alpha`` (:class:`Rule`); the perturbation rules
``baseline`` and ``samples`` (:class:`PerturbationRule`); the injecting ones (NP, INP, WP)
``sigma``; ``fa`` ``direct``; ``regression`` ``ridge``. ANP and regression take no ``sigma``:
their perturbation is the device's intrinsic node noise. One line gives the device and the
rule for a σ, whichever rule (:func:`with_sigma`)::

    device, rule = rules.with_sigma("anp", 1e-3, baseline="clean")    # the same for "np"
"""
from __future__ import annotations

import functools
import inspect

import noisesim.registry
from noisesim.config import DeviceConfig

from .base import DivergenceGuard, Estimate, Rule
from .bp import Backprop
from .losses import Loss
from .optim import SGD, Adam
from .perturbation import PerturbationRule, check_sigma, intrinsic_sigma_error, node_perturbation
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


def _lookup(name: str) -> tuple[type, dict]:
    key = name.strip().lower() if isinstance(name, str) else None
    if key not in RULES:
        raise ValueError(f"unknown rule {name!r}; valid rules: {sorted(RULES)}")
    return RULES[key]


def options(name: str) -> dict:
    """The options rule ``name`` takes, with their defaults (those its name fixes left out).

    Each is documented under *Parameters* of the class that introduces it (the rule's class
    or :class:`Rule`, :class:`PerturbationRule`, the injecting rules' ``sigma``).

    >>> sorted(rules.options("anp"))
    ['alpha', 'baseline', 'decorrelate', 'loss', 'lr', 'momentum', 'optimizer', 'samples']
    """
    cls, fixed = _lookup(name)
    found = {}
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None or klass is object:
            continue
        for p in inspect.signature(init).parameters.values():
            if p.kind is p.KEYWORD_ONLY and p.name not in found:
                found[p.name] = p.default
    return {k: v for k, v in found.items() if k not in fixed}


def make(name: str, **options_) -> Rule:
    """A rule by registry name with its options, e.g. ``make("danp", baseline="noisy")``.

    An option the rule does not take is an error naming the rule and listing what it takes
    (:func:`options`); ``sigma`` given to a rule that only observes (ANP, regression) says
    where σ lives instead.
    """
    cls, fixed = _lookup(name)
    clash = {k for k in fixed if k in options_ and options_[k] != fixed[k]}
    if clash:
        raise ValueError(f"rule {name!r} fixes {sorted(clash)}; use the plain rule name to change them")
    accepted = options(name)
    unknown = sorted(k for k in options_ if k not in accepted and k not in fixed)
    if "sigma" in unknown and issubclass(cls, PerturbationRule):
        raise ValueError(f"rule {name!r}: " + intrinsic_sigma_error(name, options_["sigma"]))
    if unknown:
        raise ValueError(f"rule {name!r} takes no option {', '.join(map(repr, unknown))}; "
                         f"its options: {', '.join(accepted)}")
    try:
        return cls(**{**options_, **fixed})
    except TypeError as exc:
        raise ValueError(f"rule {name!r}: {exc}") from None
    except ValueError as exc:   # the classes name their base rule ("anp: …"); say the one asked for
        msg, key = str(exc), name.strip().lower()
        if msg.startswith(f"{cls.name}: "):
            msg = f"{key}: " + msg[len(cls.name) + 2:]
        raise ValueError(msg) from None


def with_sigma(name: str, sigma: float, device=None, **options_) -> tuple[DeviceConfig, Rule]:
    """The device and the rule for a perturbation of std ``sigma`` — one line for every rule.

    The node-perturbation family differs in *where* σ lives. Rules that inject (NP, INP, WP
    and their D variants) add known ε ~ N(0, σ²) themselves (``sigma=``); rules that only
    observe (ANP, regression) are perturbed by the device's intrinsic node noise, which they
    can neither set nor read. This sets both to ``sigma``: the device's ``node_noise`` (so a
    noisy baseline carries the same intrinsic noise for every rule, as in the paper's noisy
    setting) and, for an injecting rule, its ``sigma``.

    Parameters
    ----------
    name : str
        A perturbation rule (:data:`RULES`).
    sigma : float
        Perturbation standard deviation σ (> 0).
    device : DeviceConfig or preset name, optional
        The device to start from; default the ``ideal`` preset.
    **options_
        Further rule options (``baseline``, ``samples``, ``lr``…).

    Example — sweeping σ, the same line for ANP and NP::

        for s in (1e-4, 1e-3, 1e-2):
            device, rule = rules.with_sigma("anp", s, baseline="clean", samples=10)  # or "np"
            net = noisesim.Network.mlp([40, 256, 10], device=device, seed=0)
    """
    cls, _ = _lookup(name)
    if not issubclass(cls, PerturbationRule):
        raise ValueError(f"rule {name!r} is not a perturbation rule: it has no σ; "
                         f"perturbation rules: {sorted(n for n, (c, _) in RULES.items() if issubclass(c, PerturbationRule))}")
    sigma = check_sigma(name, sigma)
    if device is None or isinstance(device, str):
        device = DeviceConfig.preset(device or "ideal", node_noise=sigma)
    elif isinstance(device, DeviceConfig):
        device = device.replace(node_noise=sigma)
    else:
        raise ValueError(f"device={device!r} is neither a DeviceConfig nor a preset name")
    if cls.injects:
        options_ = {**options_, "sigma": sigma}
    return device, make(name, **options_)


# noisesim finds rules by name here (trace replay), without importing this package itself
for _name in RULES:
    noisesim.registry.register_rule(_name, functools.partial(make, _name))

__all__ = ["DivergenceGuard", "Estimate", "Rule", "Backprop", "FeedbackAlignment", "WeightPerturbation",
           "NodePerturbation", "IterativeNodePerturbation", "ActivityNodePerturbation",
           "RegressionPerturbation", "PerturbationRule", "node_perturbation", "Loss", "SGD", "Adam",
           "alignment", "angle", "angles", "diagnostics", "exact_gradients", "RULES", "DESCRIPTIONS", "make",
           "options", "with_sigma", "from_state"]
