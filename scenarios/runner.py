"""Building networks, rules and data from a scenario config, and training each rule."""
from __future__ import annotations

import re
from pathlib import Path

import noisesim
import rules as rules_pkg

from .datasets import load
from .experiment import eval_options, rule_names, trained


def build_rule(name: str, cfg: dict):
    options = dict(cfg.get("rule_options", {}).get(name, {}))
    return rules_pkg.make(name, **options)


def build_network(cfg: dict, device: noisesim.DeviceConfig):
    return noisesim.Network.mlp(
        cfg["sizes"], device=device, seed=cfg["seed"], backend=cfg["backend"], dtype=cfg["dtype"],
        activation=cfg.get("activation", "leaky_relu"), slope=cfg.get("slope", 0.2),
    )


def rule_label(rule) -> str:
    base = getattr(rule, "baseline", None)
    return f"{rule.label}({base})" if base else rule.label


def trace_path(trace, label: str, n_rules: int) -> Path:
    """The trace file of one rule: ``trace`` itself for a single rule, else ``stem-<label>.h5``."""
    p = Path(trace)
    if n_rules == 1:
        return p
    tag = re.sub(r"[^a-z0-9]+", "-", label.lower()).strip("-")
    return p.with_name(f"{p.stem}-{tag}{p.suffix or '.h5'}")


def train_rules(cfg: dict, *, progress: bool = True, on_step_factory=None, trace=None,
                trace_options: dict | None = None, scenario: str | None = None, ctx=None) -> dict:
    """Train one fresh network (same seed, same initial weights) per rule in ``cfg["rules"]``.

    Every rule's access is checked against the device before the first one trains.
    With ``trace=FILE`` each rule's run is recorded (:class:`noisesim.trace.TraceWriter`, options
    ``trace_options`` such as ``compression``/``float16``) into one file per rule
    (:func:`trace_path`); the paths are in ``History.trace``. Each rule's run is reported to
    ``ctx`` as soon as it finishes or is interrupted (:meth:`Context.finished`). Returns
    ``{label: History}``.
    """
    device = noisesim.DeviceConfig.preset(cfg["device"], **cfg.get("device_overrides", {}))
    data = load(cfg["dataset"])
    planned = []
    for name in rule_names(cfg):
        rule = build_rule(name, cfg)
        net = build_network(cfg, device)
        net.require(f"rule {rule.label!r}", rule.required_access())
        planned.append((rule, net))
    out = {}
    for rule, net in planned:
        label = rule_label(rule)
        on_step = on_step_factory(label, rule, net) if on_step_factory else None
        path = options = None
        if trace is not None:
            meta = {"scenario": scenario, "label": label, "dataset": cfg["dataset"], "epochs": cfg["epochs"],
                    "batch_size": cfg["batch_size"], "scenario_config": cfg}
            path = trace_path(trace, label, len(planned))
            options = {**(trace_options or {}), "meta": meta}
        out[label] = trained(ctx, label, net, rule, data, epochs=cfg["epochs"], batch_size=cfg["batch_size"],
                             progress=progress, on_step=on_step, trace=path, trace_options=options,
                             max_loss_ratio=cfg.get("max_loss_ratio", 1e3), **eval_options(cfg))
    return out
