"""Comparing rules on identical recorded activity: feed one trace to several estimators.

Every step of a trace holds what the recorded rule consumed (for the activity rules: per-sample
``δL``, per-layer ``δa`` and inputs ``x*``). Any estimator that is a pure function of those
arrays can be evaluated on exactly the same activity, and the angle between its update and the
recorded rule's update measured per step — the comparison is then free of sampling noise
between runs. Estimators:

* any rule name of :data:`rules.RULES` whose ``updates_from_record`` accepts the recorded keys
  (``anp`` — N δL δa_l/‖δa‖²; ``regression`` — ridge over the K copies), built with the
  options of the recorded rule it accepts;
* ``np-scale`` — NP-style scaling of the measured δa: ``δL δa_l / σ_δa² · x*ᵀ`` with
  ``σ_δa² = 2σ²`` for a noisy baseline and ``σ²`` for a clean one (σ = the device's node noise);
* ``inp-scale`` — INP's per-layer normaliser on the same δa: ``N_l δL δa_l / ‖δa_l‖² · x*ᵀ``.

>>> table = compare("run.h5", ["anp", "np-scale", "regression"])      # doctest: +SKIP
"""
from __future__ import annotations

import inspect

import numpy as np

import noisesim
import rules as rules_pkg
from noisesim.trace import TraceError, open_trace
from noisesim.trace.replay import build_rule, estimate_from_step


def _activity(record):
    try:
        return record["dL"], record["da"], record["inputs"]
    except KeyError as exc:
        raise TraceError(f"this estimator needs the activity record (dL, da, inputs); the trace recorded "
                         f"{sorted(record)} (missing {exc})") from None


def _scaled(dL, da, xs, scale_per_layer):
    xp = noisesim.get_array_module(dL)
    K, B = dL.shape
    out = []
    for l, (d, x) in enumerate(zip(da, xs)):
        c = scale_per_layer(l, d) * dL
        G = c[..., None] * d
        X = xp.broadcast_to(x, (K,) + x.shape[1:]) if x.shape[0] == 1 else x
        out.append(G.reshape(K * B, -1).T @ X.reshape(K * B, -1) / (K * B))
    return out


def np_scale(record, sigma2):
    dL, da, xs = _activity(record)
    return _scaled(dL, da, xs, lambda l, d: 1.0 / sigma2)


def inp_scale(record, sigma2=None):
    dL, da, xs = _activity(record)

    def norm(l, d):
        xp = noisesim.get_array_module(d)
        n2 = (d * d).sum(axis=-1)
        return xp.where(n2 > 0, d.shape[-1] / xp.where(n2 > 0, n2, 1), 0)
    return _scaled(dL, da, xs, norm)


BUILTIN = {"np-scale": np_scale, "inp-scale": inp_scale}


def _estimator(name: str, rule_cfg: dict):
    """``updates(record)`` for an estimator name (see the module docstring)."""
    if name in BUILTIN:
        return BUILTIN[name]
    if name.lower() not in rules_pkg.RULES:
        raise ValueError(f"unknown estimator {name!r}; valid: {sorted(BUILTIN) + sorted(rules_pkg.RULES)}")
    cls, fixed = rules_pkg.RULES[name.lower()]
    accepted = set()
    for klass in cls.__mro__:
        if "__init__" in vars(klass):
            accepted |= set(inspect.signature(klass.__init__).parameters)
    options = {k: v for k, v in (rule_cfg or {}).items() if k in accepted and k not in fixed and k != "rule"}
    rule = rules_pkg.make(name, **options)
    return lambda record, sigma2=None: rule.updates_from_record(record)


def compare(trace, estimators, *, steps: int | None = None, on_row=None) -> dict:
    """Angle (degrees) per step between each estimator's update and the recorded rule's.

    Returns ``{"steps": [...], name: {"all": array (n,), 0: array (n,), …}}``.
    """
    with open_trace(trace) as reader:
        cfg = reader.config
        ref_rule = build_rule(cfg.get("rule"))
        net = noisesim.trace.build_network(cfg, backend="numpy")
        node = float((cfg.get("device") or {}).get("node_noise") or 0.0)
        baseline = (cfg.get("rule") or {}).get("baseline", "noisy")
        sigma2 = (2.0 if baseline == "noisy" else 1.0) * node * node
        fns = {}
        for name in estimators:
            fn = _estimator(name, cfg.get("rule"))
            if name == "np-scale":
                if sigma2 <= 0:
                    raise TraceError(f"{reader.path}: np-scale needs the device's node_noise > 0")
                fn = (lambda f: lambda record, _s=None: f(record, sigma2))(fn)
            fns[name] = fn
        n = reader.complete_steps if steps is None else min(steps, reader.complete_steps)
        out = {"steps": [], **{name: {} for name in fns}}
        for st in reader.steps(0, n):
            est = estimate_from_step(net, st, ref_rule.updates_from_record)
            out["steps"].append(st.step)
            row = {}
            for name, fn in fns.items():
                try:
                    ups = fn(est.record)
                except KeyError as exc:
                    raise TraceError(f"{reader.path}: estimator {name!r} cannot consume this trace: it needs "
                                     f"record key {exc}, the trace recorded {sorted(est.record)}") from None
                a = rules_pkg.angles(ups, est.updates)
                row[name] = a
                for k, v in a.items():
                    out[name].setdefault(k, []).append(v)
            if on_row is not None:
                on_row(st.step, row)
        for name in fns:
            out[name] = {k: np.asarray(v) for k, v in out[name].items()}
    return out
