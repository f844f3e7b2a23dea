"""Replaying a trace: re-apply the recorded steps from the recorded initial state.

``replay(trace)`` rebuilds the network from the recorded complete state
(:meth:`noisesim.Network.from_state`: weights, conductance pairs, fabrication draws, drift
clocks, write-verify targets and every named random stream's position) and the rule from its
recorded config through :mod:`noisesim.registry`, which the package defining the rules fills
(``import rules`` does; ``noisesim`` never imports it). Pass ``rule=`` (and ``network=``) to
replay onto anything implementing the protocols (``DeviceNetwork``; a rule with ``init``,
``updates_from_record`` and ``apply``).

Exactness: each step's updates are recomputed with the rule's pure ``updates_from_record`` on
the recorded arrays and applied with ``rule.apply`` — the same decorrelation update, optimizer
and device update model as the run. The rule starts from its recorded state (its optimizer's
moments, feedback matrices) when it had been initialised before recording began, else it is
initialised as at the start of training. Stochastic update models draw from the network's
``update`` stream, restored where it stood. Same backend and dtype ⇒ bit-identical weights,
checked against the recorded final state (every device array and the rule's state). A float16
(lossy) trace replays approximately and warns.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

from .. import registry
from ..protocol import Estimate
from ..state import differences
from .format import TraceError, TraceWarning
from .reader import TraceReader, TraceStep, open_trace

# One estimate type: what a rule returns and what a replay rebuilds (kept under this name too).
ReplayedEstimate = Estimate


@dataclass
class ReplayResult:
    """What a replay did. ``matches`` is ``None`` when the trace holds no final state;
    ``max_abs_diff`` names every array of the state that differs (``{}`` when none does)."""

    steps: int
    state: dict
    matches: bool | None
    max_abs_diff: dict
    exact_expected: bool


def build_network(config: dict, *, backend: str | None = None):
    """A fresh ``noisesim.Network`` from a trace's recorded config (not its state: the initial
    weights come from the seed)."""
    from ..config import DeviceConfig
    from ..network import Network, layout_options

    net_cfg, dev = config["network"], config.get("device")
    try:
        device = DeviceConfig.from_dict(dev) if dev is not None else None
        opts = dict(device=device, seed=int(net_cfg.get("seed") or 0),
                    backend=backend or net_cfg.get("backend") or "auto", dtype=config["dtype"],
                    activation=net_cfg.get("activation", "leaky_relu"), slope=float(net_cfg.get("slope", 0.2)),
                    output_activation=net_cfg.get("output_activation", "linear"))
        layout = layout_options(net_cfg)
        if layout:
            return Network.build(layout["input_shape"], layout["layers"], bias=layout["bias"], **opts)
        return Network.mlp(net_cfg["sizes"], **opts)
    except (TypeError, ValueError, KeyError) as exc:
        raise TraceError(f"cannot rebuild the recorded network from the trace's config: {exc}") from None


def build_rule(rule_config: dict | None, factory=None):
    """A rule from its recorded ``config()``, through :mod:`noisesim.registry` (or ``factory(name,
    **options)`` when given)."""
    if not isinstance(rule_config, dict) or not isinstance(rule_config.get("rule"), str):
        raise TraceError("the trace records no rule config; pass rule=… to replay it")
    try:
        if factory is not None:
            return factory(rule_config["rule"], **{k: v for k, v in rule_config.items() if k != "rule"})
        return registry.make_rule(rule_config)
    except LookupError as exc:
        raise TraceError(f"cannot rebuild the recorded rule: {exc}; or pass rule=… to replay") from None
    except Exception as exc:  # a crafted config: any failure to build the rule is the file's
        raise TraceError(f"cannot rebuild rule {rule_config['rule']!r} from the trace's config: "
                         f"{type(exc).__name__}: {exc}") from None


def estimate_from_step(net, st: TraceStep, updates_from_record) -> Estimate:
    """Backend arrays of one step and the updates the rule computes from them."""
    def conv(a):
        if a.dtype.kind == "f":
            return net.backend.asarray(a) if hasattr(net, "backend") else net.xp.asarray(a, dtype=net.dtype)
        return net.xp.asarray(a)

    record = {k: [conv(a) for a in v] if isinstance(v, list) else conv(v) for k, v in st.record.items()}
    inputs = [conv(x) for x in st.inputs]
    losses = conv(st.losses) if st.losses is not None else None
    updates = updates_from_record(record)
    return Estimate(updates, st.loss, st.forward_passes, inputs, None, losses, record)


def _same_weights(a: dict, b: dict) -> bool:
    return set(a) == set(b) and all(np.shape(a[k]) == np.shape(b[k]) and np.array_equal(a[k], b[k]) for k in a)


def start(trace, network=None, rule=None, *, backend: str | None = None):
    """Open ``trace`` and prepare ``(reader, network, rule)`` in the recorded initial state.

    Without ``network`` the recorded network is rebuilt from its complete state; a given
    network is used as it is (a warning says so when its weights are not the recorded ones).
    Without ``rule`` the recorded rule is rebuilt and put in its recorded state; a given rule
    is initialised afresh on the network.
    """
    reader = trace if isinstance(trace, TraceReader) else open_trace(trace)
    initial = reader.state("initial")
    net_state, rule_state = initial.get("network"), initial.get("rule")
    if network is None:
        from ..network import Network

        cfg = net_state.get("config") if isinstance(net_state, dict) else None
        if not isinstance(cfg, dict) or cfg.get("sizes") != list(reader.sizes):
            raise TraceError(f"{reader.path}: the recorded network state's config.sizes="
                             f"{cfg.get('sizes') if isinstance(cfg, dict) else None!r} differs from the trace's "
                             f"config network.sizes={reader.sizes}")
        try:
            network = Network.from_state(net_state, backend=backend)
        except MemoryError:
            raise TraceError(f"{reader.path}: not enough memory to rebuild the recorded network "
                             f"(sizes {reader.sizes})") from None
        except Exception as exc:  # a crafted state: any failure to rebuild is the file's
            raise TraceError(f"{reader.path}: cannot rebuild the recorded network from its state: "
                             f"{type(exc).__name__}: {exc}") from None
    elif not _same_weights(network.get_state(), reader.initial_state()):
        warnings.warn("replaying onto a network whose weights are not the recorded initial weights; the result "
                      "is not the recorded run", TraceWarning, stacklevel=3)
    if list(network.sizes) != list(reader.sizes):
        raise TraceError(f"{reader.path}: the trace is for sizes {reader.sizes}, the network has {list(network.sizes)}")
    if rule is None:
        rule = build_rule(reader.config.get("rule"))
        if isinstance(rule_state, dict) and rule_state.get("initialised") and hasattr(rule, "load_state"):
            try:
                rule.load_state(rule_state, network)
            except Exception as exc:  # a crafted state: any failure to restore it is the file's
                raise TraceError(f"{reader.path}: cannot restore the recorded rule state: "
                                 f"{type(exc).__name__}: {exc}") from None
        else:
            rule.init(network)  # access check, decorrelation on, fresh optimizer — as training starts
    else:
        rule.init(network)
    return reader, network, rule


def _final_differences(reader, net, rule) -> dict:
    """What differs between the replayed and the recorded final state: every device array and
    decorrelation matrix, and the rule's optimizer and own arrays when it is the recorded rule."""
    final = reader.state("final")
    if not hasattr(net, "state"):
        w = net.get_state()
        ref = reader.final_state()
        return differences({k: np.asarray(v) for k, v in w.items()}, ref)
    got = net.state()
    diffs = differences({k: final["network"].get(k) for k in ("tiles", "decorrelation")},
                        {k: got.get(k) for k in ("tiles", "decorrelation")})
    rec = final.get("rule")
    if isinstance(rec, dict) and rec.get("initialised") and hasattr(rule, "state") \
            and rec.get("config") == getattr(rule, "config", dict)():
        mine = rule.state()
        diffs.update({f"rule/{k}": v for k, v in differences(
            {k: rec.get(k) for k in ("optimizer", "extra")}, {k: mine.get(k) for k in ("optimizer", "extra")}).items()})
    return diffs


def replay(trace, network=None, rule=None, *, steps: int | None = None, backend: str | None = None,
           on_step=None) -> ReplayResult:
    """Re-apply the recorded steps; compare with the recorded final state when the trace has one.

    Parameters
    ----------
    trace : path or TraceReader
    network : DeviceNetwork, optional
        Default: rebuilt from the recorded initial state.
    rule : object with ``init``, ``updates_from_record``, ``apply``, optional
        Default: rebuilt from the trace's rule config through :mod:`noisesim.registry`.
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
    matches, diffs = None, {}
    if n == reader.complete_steps and reader.has_final_state:
        diffs = _final_differences(reader, net, rule)
        matches = not diffs
    state = net.get_state()
    if trace is not reader:
        reader.close()
    return ReplayResult(n, state, matches, diffs, exact)
