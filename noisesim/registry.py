"""Learning rules by name, for code in ``noisesim`` that must build one (trace replay).

``noisesim`` sits below the rules and never imports them; the package that defines rules
registers a factory for each name here when it is imported (``import rules`` does). A rule's
recorded ``config()`` — ``{"rule": name, **options}`` — is then enough to rebuild it::

    >>> import noisesim, rules
    >>> noisesim.registry.make_rule({"rule": "anp", "decorrelate": True}).label
    'DANP'
"""
from __future__ import annotations

from typing import Any, Callable

RULES: dict[str, Callable[..., Any]] = {}


def register_rule(name: str, factory: Callable[..., Any]) -> None:
    """Make ``factory(**options)`` the way to build the rule recorded as ``name``."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"rule name {name!r} must be a non-empty string")
    if not callable(factory):
        raise TypeError(f"the factory of rule {name!r} is not callable")
    RULES[name.lower()] = factory


def make_rule(config: dict):
    """A rule from its recorded ``config()``: ``RULES[config["rule"]](**rest)``.

    Raises ``LookupError`` when no rule of that name is registered (import the package that
    defines it, e.g. ``import rules``, or hand the rule object over directly).
    """
    if not isinstance(config, dict) or not isinstance(config.get("rule"), str):
        raise ValueError(f"a rule config must be a dict with a 'rule' name, got {config!r}")
    name = config["rule"].lower()
    if name not in RULES:
        known = sorted(RULES) or "none (import rules, or the package defining the rule, first)"
        raise LookupError(f"no rule named {config['rule']!r} is registered; registered: {known}")
    return RULES[name](**{k: v for k, v in config.items() if k != "rule"})
