"""Replaying a trace: re-apply the recorded steps from the recorded initial state.

``replay(trace)`` rebuilds the network from the recorded config (``Network.mlp`` with the
recorded device, seed, backend and dtype) and the rule from its recorded config. The rule is
resolved by importing the fixed package name ``rules`` lazily (``importlib.import_module("rules")``
and ``rules.make(name, **options)``) — never a module name read from the file — so ``noisesim``
never imports ``rules`` at module level. Pass ``network=`` and ``rule=`` objects to replay onto
anything implementing the protocols (``DeviceNetwork``; a rule with ``init``,
``updates_from_record`` and ``apply``).

Exactness: each step's updates are recomputed with the rule's pure ``updates_from_record`` on
the recorded arrays and applied with ``rule.apply`` — the same decorrelation update, optimizer
and device update model as the run. Stochastic update models draw from the network's named
``update`` stream; the replay network starts with the same seed and the stream states captured
when recording began, so it draws the same numbers. Same backend and dtype ⇒ bit-identical
weights. A float16 (lossy) trace replays approximately and warns.
"""
from __future__ import annotations

import importlib
import warnings
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from .format import TraceError, TraceWarning
from .reader import TraceReader, TraceStep, open_trace


class ReplayRule(Protocol):
    def init(self, net) -> None: ...
    def updates_from_record(self, record: dict) -> list: ...
    def apply(self, net, est) -> None: ...


@dataclass
class ReplayedEstimate:
    """Duck-typed ``rules.Estimate`` rebuilt from a trace step (what ``rule.apply`` reads)."""

    updates: list
    loss: float
    forward_passes: int
    inputs: list
    outputs: Any = None
    losses: Any = None
    record: dict = field(default_factory=dict)


@dataclass
class ReplayResult:
    """What a replay did. ``matches`` is ``None`` when the trace holds no final state."""

    steps: int
    state: dict
    matches: bool | None
    max_abs_diff: dict
    exact_expected: bool


def build_network(config: dict, *, backend: str | None = None):
    """A fresh ``noisesim.Network`` from a trace's recorded config."""
    from ..config import DeviceConfig
    from ..network import Network

    net_cfg, dev = config["network"], config.get("device")
    try:
        device = DeviceConfig.from_dict(dev) if dev is not None else None
        return Network.mlp(
            net_cfg["sizes"], device=device, seed=int(net_cfg.get("seed") or 0),
            backend=backend or net_cfg.get("backend") or "auto", dtype=config["dtype"],
            activation=net_cfg.get("activation", "leaky_relu"), slope=float(net_cfg.get("slope", 0.2)),
            output_activation=net_cfg.get("output_activation", "linear"),
        )
    except (TypeError, ValueError, KeyError) as exc:
        raise TraceError(f"cannot rebuild the recorded network from the trace's config: {exc}") from None


def build_rule(rule_config: dict | None, factory=None):
    """A rule from its recorded ``config()``: ``rules.make(config["rule"], **rest)``."""
    if not isinstance(rule_config, dict) or not isinstance(rule_config.get("rule"), str):
        raise TraceError("the trace records no rule config; pass rule=… to replay it")
    if factory is None:
        factory = importlib.import_module("rules").make  # fixed name, never read from the file
    options = {k: v for k, v in rule_config.items() if k != "rule"}
    try:
        return factory(rule_config["rule"], **options)
    except (TypeError, ValueError) as exc:
        raise TraceError(f"cannot rebuild rule {rule_config['rule']!r} from the trace's config: {exc}") from None


def restore_streams(net, states: dict) -> None:
    """Set the NumPy bit-generator state of each named stream recorded in ``states``."""
    streams = getattr(net, "streams", None)
    if not states or streams is None:
        return
    if getattr(getattr(net, "backend", None), "name", "numpy") != "numpy":
        warnings.warn("stream states are recorded for NumPy only; replay on another backend is not exact",
                      TraceWarning, stacklevel=3)
        return
    for name, st in states.items():
        bg = getattr(getattr(streams.get(name), "_g", None), "bit_generator", None)
        if bg is None:
            continue
        try:
            bg.state = st
        except (TypeError, ValueError, KeyError) as exc:
            raise TraceError(f"recorded state of random stream {name!r} is invalid: {exc}") from None


def estimate_from_step(net, st: TraceStep, updates_from_record) -> ReplayedEstimate:
    """Backend arrays of one step and the updates the rule computes from them."""
    def conv(a):
        if a.dtype.kind == "f":
            return net.backend.asarray(a) if hasattr(net, "backend") else net.xp.asarray(a, dtype=net.dtype)
        return net.xp.asarray(a)

    record = {k: [conv(a) for a in v] if isinstance(v, list) else conv(v) for k, v in st.record.items()}
    inputs = [conv(x) for x in st.inputs]
    losses = conv(st.losses) if st.losses is not None else None
    updates = updates_from_record(record)
    return ReplayedEstimate(updates, st.loss, st.forward_passes, inputs, None, losses, record)


def start(trace, network=None, rule=None, *, backend: str | None = None):
    """Open ``trace`` and prepare ``(reader, network, rule)`` in the recorded initial state."""
    reader = trace if isinstance(trace, TraceReader) else open_trace(trace)
    cfg = reader.config
    if network is None:
        network = build_network(cfg, backend=backend)
    if rule is None:
        rule = build_rule(cfg.get("rule"))
    if list(network.sizes) != list(reader.sizes):
        raise TraceError(f"{reader.path}: the trace is for sizes {reader.sizes}, the network has {list(network.sizes)}")
    rule.init(network)  # access check, decorrelation on, fresh optimizer — as at the start of training
    state = network.get_state()
    initial = reader.initial_state()
    # A network rebuilt from the recorded seed is already in the recorded state, hidden device
    # state included (conductance pairs, drift clocks, faults); set_state would reprogram it from
    # W alone. So restore only what differs.
    if any(k not in state or state[k].shape != v.shape or not np.array_equal(state[k], v) for k, v in initial.items()):
        if getattr(getattr(network, "device", None), "w_max", None) is not None:
            warnings.warn("restoring the recorded weights with set_state(); hidden device state (conductance "
                          "pairs, drift clocks) is not in the trace, so the replay may not be bit-exact",
                          TraceWarning, stacklevel=3)
        state.update(initial)
        network.set_state(state)
    restore_streams(network, cfg.get("streams") or {})
    return reader, network, rule


def replay(trace, network=None, rule=None, *, steps: int | None = None, backend: str | None = None,
           on_step=None) -> ReplayResult:
    """Re-apply the recorded steps; compare with the recorded final state when the trace has one.

    Parameters
    ----------
    trace : path or TraceReader
    network : DeviceNetwork, optional
        A freshly built network (default: rebuilt from the trace's config).
    rule : object with ``init``, ``updates_from_record``, ``apply``, optional
        Default: rebuilt from the trace's rule config through ``rules.make``.
    steps : int, optional
        Replay only the first ``steps`` steps (no final-state comparison then).
    on_step : callable(TraceStep, estimate), optional
    """
    reader, net, rule = start(trace, network, rule, backend=backend)
    exact = not reader.lossy
    if reader.lossy:
        warnings.warn(f"{reader.path} stores float16 (lossy) arrays; the replay is approximate, not exact",
                      TraceWarning, stacklevel=2)
    n = reader.complete_steps if steps is None else min(int(steps), reader.complete_steps)
    for st in reader.steps(0, n):
        if st.time is not None and hasattr(net, "set_time") and getattr(net, "time", None) != st.time:
            net.set_time(st.time)  # the drift clock the step was applied at
        est = estimate_from_step(net, st, rule.updates_from_record)
        rule.apply(net, est)
        if on_step is not None:
            on_step(st, est)
    state = net.get_state()
    final = reader.final_state() if n == reader.complete_steps else None
    matches, diffs = None, {}
    if final is not None:
        matches = set(final) == set(state)
        for k in sorted(set(final) & set(state)):
            a, b = np.asarray(state[k]), np.asarray(final[k])
            diffs[k] = float(np.max(np.abs(a.astype(np.float64) - b))) if a.size else 0.0
            matches = matches and a.shape == b.shape and np.array_equal(a, b)
    if trace is not reader:
        reader.close()
    return ReplayResult(n, state, matches, diffs, exact)
