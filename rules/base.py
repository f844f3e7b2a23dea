"""What every learning rule shares: declared access, the optimizer, decorrelation, one step.

A rule *computes* updates (:meth:`Rule.estimate`) and never writes device state itself;
:meth:`Rule.step` hands them to the optimizer and then to ``Network.apply_update`` —
the one place weights change. Sign convention: ``W_l ← W_l − η·ΔW_l`` (through the optimizer).
"""
from __future__ import annotations

import numpy as np

from noisesim.backend import to_numpy
from noisesim.errors import DivergenceError
from noisesim.protocol import Estimate

from .decorrelation import check_decorrelation, decorrelation_delta
from .losses import Loss
from .optim import OPTIMIZERS, make_optimizer

STATE_VERSION = 1


class Rule:
    """Base class of learning rules. Subclasses set ``name``, ``needs`` and ``estimate``.

    Contract: ``estimate`` observes the device only through the
    :class:`noisesim.protocol.DeviceNetwork` methods its declared access allows, writes
    nothing, and builds ``Estimate.updates`` as ``updates_from_record(Estimate.record)`` — a
    pure function of the record (string keys → arrays, or lists of arrays one per layer;
    never generator state) and of the rule's ``config()``. Each rule's module docstring
    lists its record keys. ``forward_passes(n_layers)`` is the cost of one update.

    Parameters
    ----------
    lr : float
        Learning rate η of the optimizer.
    optimizer : {"adam", "sgd"}
    momentum : float
        SGD momentum.
    loss : {"cce", "mse"}
        See :mod:`rules.losses` for the reductions.
    decorrelate : bool
        Decorrelate every layer input (the ``D`` variants), ``R_l`` updated with rate ``alpha``.
    alpha : float
        Decorrelation learning rate α.
    """

    name = "rule"
    needs: tuple = ("observe",)
    # attributes holding state the rule keeps between steps besides the optimizer's: each an
    # array, or a list of arrays (``None`` allowed, and before init); saved and restored by
    # state()/load_state()
    state_attrs: tuple = ()

    def __init__(self, *, lr: float = 1e-3, optimizer: str = "adam", momentum: float = 0.0,
                 loss: str = "cce", decorrelate: bool = False, alpha: float = 1e-3):
        if not (isinstance(lr, (int, float)) and lr > 0 and np.isfinite(lr)):
            raise ValueError(f"{self.name}: lr={lr!r} is out of range; allowed range: (0, ∞)")
        if optimizer not in OPTIMIZERS:
            raise ValueError(f"{self.name}: optimizer={optimizer!r} is not known; allowed: {list(OPTIMIZERS)}")
        if not 0 <= momentum < 1:
            raise ValueError(f"{self.name}: momentum={momentum!r} is out of range; allowed range: [0, 1)")
        if not (isinstance(alpha, (int, float)) and alpha >= 0):
            raise ValueError(f"{self.name}: alpha={alpha!r} is out of range; allowed range: [0, ∞)")
        self.lr, self.optimizer_name, self.momentum = float(lr), optimizer, float(momentum)
        self.loss = Loss(loss)
        self.decorrelate, self.alpha = bool(decorrelate), float(alpha)
        self.optimizer = None       # the optimizer (hyperparameters), made by init
        self.opt_state = None       # its state: explicit data (see rules.optim)

    # -- description -------------------------------------------------------------------------
    @property
    def label(self) -> str:
        """Display name, e.g. ``DANP`` for decorrelated ANP."""
        return ("D" if self.decorrelate else "") + self.name.upper()

    def required_access(self) -> tuple:
        """Access levels this rule, as configured, needs from the device."""
        return tuple(self.needs)

    def forward_passes(self, n_layers: int | None = None) -> int:
        """Forward passes one update uses (``n_layers`` for rules whose count depends on depth)."""
        return 1

    def config(self) -> dict:
        """JSON-serialisable description (goes into traces and summaries)."""
        return {"rule": self.name, "lr": self.lr, "optimizer": self.optimizer_name,
                "momentum": self.momentum, "loss": self.loss.name,
                "decorrelate": self.decorrelate, "alpha": self.alpha, **self._options()}

    def _options(self) -> dict:
        return {}

    def __repr__(self) -> str:
        opts = ", ".join(f"{k}={v!r}" for k, v in self.config().items() if k != "rule")
        return f"{type(self).__name__}({opts})"

    # -- lifecycle ---------------------------------------------------------------------------
    def init(self, net) -> None:
        """Check access (before any training), switch decorrelation on, reset the optimizer.

        A fresh start; to continue a saved run use :meth:`load_state` instead.
        """
        net.require(f"rule {self.label!r}", self.required_access())
        if self.decorrelate:
            net.enable_decorrelation()
        self.optimizer = make_optimizer(self.optimizer_name, self.lr, self.momentum)
        self.opt_state = self.optimizer.init(net.n_layers)

    # -- state --------------------------------------------------------------------------------
    def state(self) -> dict:
        """The rule's complete state as plain data (host arrays and JSON; no pickle).

        ``{"class", "version", "config", "initialised", "optimizer", "extra"}``: the
        :meth:`config` it is rebuilt from, the optimizer's state (``{"t", "m", "v"}`` for Adam,
        ``{"v"}`` for SGD; per layer an array or ``None``, keyed ``"0"``, ``"1"``, …) and the
        rule's own arrays (``state_attrs``, e.g. feedback alignment's ``B`` matrices). Before
        :meth:`init` the optimizer entry is ``None``. :func:`rules.from_state` rebuilds the
        rule; :meth:`load_state` puts the state back into this one.
        """
        host = lambda a: None if a is None else to_numpy(a).copy()

        def pack(v):
            if isinstance(v, (list, tuple)):
                return {str(i): host(a) for i, a in enumerate(v)}
            return host(v)

        opt = None
        if self.optimizer is not None:
            opt = {"name": self.optimizer_name}
            for k, v in self.opt_state.items():
                opt[k] = pack(v) if isinstance(v, (list, tuple)) else v
        return {"class": "rules.Rule", "version": STATE_VERSION, "config": self.config(),
                "initialised": self.optimizer is not None, "optimizer": opt,
                "extra": {k: pack(getattr(self, k, None)) for k in self.state_attrs}}

    def load_state(self, state: dict, net) -> None:
        """Continue from a :meth:`state` of a rule with the same config, on ``net`` (whose
        own state — decorrelation included — was restored first). Checks the access it needs;
        arrays become ``net``'s backend arrays. A state from before ``init`` initialises."""
        if not isinstance(state, dict) or state.get("class") != "rules.Rule":
            raise ValueError("not a rule state (its 'class' entry is not 'rules.Rule')")
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"rule state version {state.get('version')!r}; this version reads {STATE_VERSION}")
        if state.get("config") != self.config():
            raise ValueError(f"rule state of {state.get('config')!r} does not fit this rule {self.config()!r}")
        if not state.get("initialised"):
            self.init(net)
            return
        net.require(f"rule {self.label!r}", self.required_access())
        if self.decorrelate and not all(net.decorrelation(l) is not None for l in range(net.n_layers)):
            raise ValueError(f"rule {self.label!r} decorrelates, but the network has no decorrelation matrices; "
                             "load the network's state first")
        conv = lambda a: None if a is None else net.backend.asarray(a).copy() if np.asarray(a).dtype.kind == "f" \
            else net.xp.asarray(a)

        def unpack(v, n=None):
            if isinstance(v, dict):
                keys = sorted(v, key=int)
                if keys != [str(i) for i in range(len(keys))] or (n is not None and len(keys) != n):
                    raise ValueError(f"rule state: a per-layer entry has keys {keys}")
                return [conv(v[k]) for k in keys]
            return conv(v)

        saved = state.get("optimizer") or {}
        optimizer = make_optimizer(self.optimizer_name, self.lr, self.momentum)
        fresh = optimizer.init(net.n_layers)
        if saved.get("name") != self.optimizer_name or set(saved) - {"name"} != set(fresh):
            raise ValueError(f"rule state: optimizer entries {sorted(saved)} do not fit {self.optimizer_name!r} "
                             f"({sorted(fresh)})")
        opt_state = {k: unpack(saved[k], net.n_layers) if isinstance(fresh[k], list) else saved[k] for k in fresh}
        extra = state.get("extra") or {}
        if set(extra) != set(self.state_attrs):
            raise ValueError(f"rule state: extra entries {sorted(extra)}, expected {sorted(self.state_attrs)}")
        values = {k: unpack(extra[k]) for k in self.state_attrs}
        self.optimizer, self.opt_state = optimizer, opt_state
        for k, v in values.items():
            setattr(self, k, v)

    def estimate(self, net, x, t) -> Estimate:
        """Update directions ``ΔW_l`` for one batch; nothing is applied.

        Subclasses observe the device and then call :meth:`updates_from_record` on what they
        observed, so a recorded trace reproduces the same updates without the device.
        """
        raise NotImplementedError  # pragma: no cover - abstract

    def updates_from_record(self, record: dict) -> list:
        """``ΔW_l`` as a pure function of the arrays in ``Estimate.record``."""
        raise NotImplementedError  # pragma: no cover - abstract

    def step(self, net, x, t) -> Estimate:
        """Estimate, update decorrelation, take the optimizer step, apply through the device."""
        if self.optimizer is None:
            self.init(net)
        est = self.estimate(net, x, t)
        self.apply(net, est)
        return est

    def apply(self, net, est: Estimate) -> None:
        """Apply an estimate: decorrelation first (after the estimate), then the weights."""
        if not np.isfinite(est.loss):
            raise DivergenceError(
                f"{self.label}: the loss became {est.loss}; training stopped before applying the "
                "update, the network keeps its last good state"
            )
        for l, u in enumerate(est.updates):
            if not bool(net.xp.isfinite(u).all()):
                raise DivergenceError(f"{self.label}: update of layer {l} is not finite; state kept")
        if self.decorrelate:
            deltas_R = [decorrelation_delta(est.inputs[l], net.decorrelation(l), self.alpha)
                        for l in range(net.n_layers)]
            for l, d in enumerate(deltas_R):
                check_decorrelation(net.decorrelation(l) + d, est.inputs[l], self.alpha, l)
            for l, d in enumerate(deltas_R):
                net.apply_decorrelation_update(l, d)
        for l, d in enumerate(self.optimizer.update(est.updates, self.opt_state)):
            net.apply_update(l, d)


def forward_with_output_error(rule, net, x, t):
    """One noisy pass and the output error ``g_L = ∂L/∂a_L`` at the observed ``a_L``.

    Returns ``(pass, per-sample losses, g_L)``; BP and feedback alignment start from here.
    """
    p = net.forward(x)
    t = net.backend.asarray(t)
    L = net.n_layers
    losses = rule.loss.per_sample(p.out, t)
    return p, losses, rule.loss.grad(p.out, t) * net.act_grad(L - 1, p.pre[L - 1])


def batch_outer(g, x):
    """``⟨g xᵀ⟩`` over the batch: ``gᵀx / B`` for ``g (B, n_out)``, ``x (B, n_in)``."""
    return (g.T @ x) / g.shape[0]


def host_float(v) -> float:
    return float(v.item() if hasattr(v, "item") else v)
