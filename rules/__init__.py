"""Learning rules that train networks through the ``noisesim`` device protocol.

>>> import rules
>>> rule = rules.make("danp", baseline="noisy", lr=1e-3)
>>> rule.label
'DANP'
"""
from __future__ import annotations

from .base import Estimate, Rule
from .bp import Backprop
from .losses import Loss
from .optim import SGD, Adam
from .perturbation import ActivityNodePerturbation
from .reference import alignment, angle, angles, exact_gradients

# name -> (class, fixed options). The "d" names are the decorrelated variants of one rule.
RULES: dict[str, tuple[type, dict]] = {
    "bp": (Backprop, {}),
    "dbp": (Backprop, {"decorrelate": True}),
    "anp": (ActivityNodePerturbation, {}),
    "danp": (ActivityNodePerturbation, {"decorrelate": True}),
}


def make(name: str, **options) -> Rule:
    """A rule by registry name with its options, e.g. ``make("danp", baseline="noisy")``."""
    key = name.lower()
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


__all__ = ["Estimate", "Rule", "Backprop", "Loss", "SGD", "Adam", "ActivityNodePerturbation",
           "alignment", "angle", "angles", "exact_gradients", "RULES", "make"]
