"""Scenario registry and configuration overrides.

A scenario is a function ``run(config) -> dict[label, History]`` plus a dict of defaults.
``--set key=value`` overrides a default; dotted keys reach into nested dicts
(``rule_options.danp.lr=5e-4``). Values are parsed as JSON (numbers, booleans, lists) and
fall back to plain strings — never evaluated as code.
"""
from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from typing import Callable

SCENARIOS: dict[str, "Scenario"] = {}


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    defaults: dict
    run: Callable[[dict], dict]


def register(name: str, description: str, defaults: dict):
    """Decorator adding a scenario function to :data:`SCENARIOS`."""
    def deco(fn):
        SCENARIOS[name] = Scenario(name, description, defaults, fn)
        return fn
    return deco


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


def apply_overrides(defaults: dict, pairs) -> dict:
    """A deep copy of ``defaults`` with ``key=value`` strings (or ``(key, value)`` pairs) applied.

    Unknown top-level keys raise ``ValueError`` listing the valid ones; nested dicts accept
    new keys (per-rule options, device overrides).
    """
    cfg = copy.deepcopy(defaults)
    for item in pairs:
        if isinstance(item, str):
            if "=" not in item:
                raise ValueError(f"--set expects key=value, got {item!r}")
            key, raw = item.split("=", 1)
            value = parse_value(raw)
        else:
            key, value = item
        parts = key.strip().split(".")
        if parts[0] not in cfg:
            raise ValueError(f"unknown setting {parts[0]!r}; valid settings: {sorted(cfg)}")
        node = cfg
        for p in parts[:-1]:
            if not isinstance(node.get(p), dict):
                node[p] = {} if node.get(p) is None else _fail(key, p)
            node = node[p]
        node[parts[-1]] = value
    return cfg


def _fail(key, part):
    raise ValueError(f"setting {key!r}: {part!r} is not a group of settings")
