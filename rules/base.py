"""What every learning rule shares: declared access, the optimizer, decorrelation, one step.

A rule *computes* updates (:meth:`Rule.estimate`) and never writes device state itself;
:meth:`Rule.step` hands them to the optimizer and then to ``Network.apply_update`` —
the one place weights change. Sign convention: ``W_l ← W_l − η·ΔW_l`` (through the optimizer).
"""
from __future__ import annotations

import contextlib
import inspect

import numpy as np

from noisesim import _kernels, threads
from noisesim.backend import get_array_module, to_numpy
from noisesim.errors import DivergenceError
from noisesim.layers import dense_layers, rows
from noisesim.protocol import Estimate

from .decorrelation import update_decorrelation
from .losses import Loss
from .optim import OPTIMIZERS, SGD, Adam, make_optimizer

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

    def step(self, net, x, t, *, guard: "DivergenceGuard | None" = None) -> Estimate:
        """Estimate, update decorrelation, take the optimizer step, apply through the device.

        ``x`` is a ``(B, n_in)`` batch of real inputs (B ≥ 1), ``t`` its ``(B, n_out)`` targets;
        ``guard`` watches for divergence (see :meth:`apply`)."""
        check_batch(net, x, t, self.label)
        if self.optimizer is None:
            self.init(net)
        with blas_threads(net, len(x)):          # the update's products too, not only the passes
            return self._step(net, x, t, guard)

    def _step(self, net, x, t, guard):
        est = self.estimate(net, x, t)
        if takes_guard(self.apply):
            self.apply(net, est, guard=guard)
        else:       # a subclass's apply(net, est) of before the guard: check, then apply
            if guard is not None:
                guard.check(self, est)
            self.apply(net, est)
        return est

    def apply(self, net, est: Estimate, *, guard: "DivergenceGuard | None" = None) -> None:
        """Apply an estimate: decorrelation first (after the estimate), then the weights.

        Nothing changes when the step shows divergence: ``guard`` (a :class:`DivergenceGuard`;
        without one, non-finite values only) raises :class:`~noisesim.errors.DivergenceError`
        naming the step, the layer, the quantity that blew up first and the likely setting.
        """
        guard = guard if guard is not None else DivergenceGuard(max_loss_ratio=None, step=None, scales=False)
        guard.check(self, est)
        if self.decorrelate:        # all layers or none; R + ΔR formed and checked in one buffer
            try:
                update_decorrelation(net, est.inputs, self.alpha)
            except DivergenceError as exc:
                raise guard.decorrelation_error(self, est, exc.layer, exc) from None
        # the guard found every update finite, and SGD's and Adam's steps from finite updates
        # are finite: the network need not check them again (a device without the option does)
        vouch = {"finite": True} if type(self.optimizer) in (SGD, Adam) and takes_finite(net) else {}
        # Adam adds its step straight to weights the network lets it write (same bits, no
        # array of deltas); the layers it did not are applied as before
        into = {}
        if vouch and type(self.optimizer) is Adam and hasattr(net, "update_in_place"):
            into = {"into": [net.update_in_place(l) for l in range(len(est.updates))]}
        deltas = self.optimizer.update(est.updates, self.opt_state, **into)
        del into                    # its references to W: apply_update adds in place without them
        for l, d in enumerate(deltas):
            if d is not None:
                net.apply_update(l, d, **vouch)


def blas_threads(net, rows: int):
    """The network's choice of BLAS threads for ``rows`` samples (by its layers' products); for a
    device that describes itself by ``sizes`` only, the choice for those widths."""
    choose = getattr(net, "blas_threads", None)
    if choose is not None:
        return choose(rows)
    sizes = getattr(net, "sizes", None)
    return threads.for_layers(sizes, rows) if sizes is not None else contextlib.nullcontext()


def takes_finite(net) -> bool:
    """Whether ``net.apply_update`` takes ``finite=`` (a device of before the option does not)."""
    fn = type(net).apply_update
    found = _TAKES_GUARD.get(("finite", fn))
    if found is None:
        try:
            found = "finite" in inspect.signature(fn).parameters
        except (TypeError, ValueError):
            found = False
        _TAKES_GUARD[("finite", fn)] = found
    return found


def takes_guard(method) -> bool:
    """Whether a rule's ``step``/``apply`` accepts ``guard=`` (rules written before the guard
    override them without it and keep working)."""
    fn = getattr(method, "__func__", method)
    found = _TAKES_GUARD.get(fn)
    if found is None:
        try:
            found = "guard" in inspect.signature(method).parameters
        except (TypeError, ValueError):
            found = False
        _TAKES_GUARD[fn] = found
    return found


_TAKES_GUARD: dict = {}


def check_batch(net, x, t, who: str) -> None:
    """Raise ``ValueError`` unless ``x`` is a non-empty real ``(B, n_in)`` batch and ``t`` its
    ``(B, n_out)`` targets."""
    n_in, n_out = net.sizes[0], net.sizes[-1]
    for name, a, width in (("inputs", x, n_in), ("targets", t, n_out)):
        kind = getattr(getattr(a, "dtype", None), "kind", None)
        if kind not in ("f", "i", "u"):
            raise ValueError(f"{who}: {name} must be real numbers, got dtype {getattr(a, 'dtype', type(a).__name__)}")
        if a.ndim != 2 or a.shape[1] != width:
            raise ValueError(f"{who}: {name} of shape {tuple(a.shape)}; this network needs (batch, {width})")
    if x.shape[0] == 0:
        raise ValueError(f"{who}: the batch is empty")
    if t.shape[0] != x.shape[0]:
        raise ValueError(f"{who}: {x.shape[0]} inputs but {t.shape[0]} targets")


class DivergenceGuard:
    """Stops training when it blows up, before the step that shows it is applied.

    Checked on every step's estimate: a non-finite loss, activity or update, and a loss above
    ``max_loss_ratio`` × its starting value (``start_loss``, else the first step's loss;
    ``None`` switches that check off). The :class:`~noisesim.errors.DivergenceError` names
    the step, the layer, the quantity that blew up first and the setting most likely at fault
    (``lr``, or ``alpha`` when decorrelation diverges while the activity kept its scale); its
    attributes ``step``, ``layer``, ``quantity`` and ``setting`` say the same for programs.

    ``step`` counts the steps checked (the first checked is ``step + 1``; ``None``: not
    counted). ``scales``: remember the activity's scale at the first step, to say which layer
    blew up first (``False`` for a guard of one step, which has nothing to compare with).
    ``scenarios.train`` makes one per run with the untrained network's loss.
    """

    GROWTH = 10.0         # an activity this many times its starting RMS has blown up
    INPUT_GROWTH = 3.0    # the decorrelated data this many times its starting RMS: R_0 diverged

    def __init__(self, max_loss_ratio: float | None = 1e3, start_loss: float | None = None,
                 step: int | None = 0, scales: bool = True):
        if max_loss_ratio is not None and not (isinstance(max_loss_ratio, (int, float))
                                               and not isinstance(max_loss_ratio, bool) and max_loss_ratio > 1):
            raise ValueError(f"max_loss_ratio={max_loss_ratio!r} is out of range; allowed: a number > 1, or None")
        self.max_loss_ratio = None if max_loss_ratio is None else float(max_loss_ratio)
        self.start_loss = start_loss if start_loss is not None and np.isfinite(start_loss) and start_loss > 0 else None
        self.step = step
        self._scale = None if scales else []    # per layer: the RMS of its input at the first step

    def check(self, rule, est) -> None:
        if self.step is not None:
            self.step += 1
        loss = host_float(est.loss)
        if self._scale is None:
            self._scale = [_rms(x) for x in est.inputs]
            if self.start_loss is None and np.isfinite(loss) and loss > 0:
                self.start_loss = loss
        limit = None if self.max_loss_ratio is None or self.start_loss is None else self.max_loss_ratio * self.start_loss
        if not np.isfinite(loss) or (limit is not None and loss > limit):
            what = f"the loss became {loss:.3g}" if not np.isfinite(loss) else \
                f"the loss {loss:.3g} exceeded {self.max_loss_ratio:g}× its starting value {self.start_loss:.3g} " \
                "(max_loss_ratio)"
            raise self._error(rule, est, what, *self._first_blown(est))
        vouched = est.finite
        for l, u in enumerate(est.updates):
            if not ((l < len(vouched) and vouched[l] is u) or _kernels.all_finite(u)):
                raise self._error(rule, est, f"the update of layer {l} is not finite", l,
                                  f"the update of layer {l}", "lr")

    def decorrelation_error(self, rule, est, layer: int, exc) -> DivergenceError:
        """The error for a decorrelation matrix that blew up (``exc`` from the check)."""
        what = f"{exc}".split("; the network")[0].split(". Lower alpha")[0]
        first, quantity, setting = self._first_blown(est, upto=layer)
        if setting != "lr" and first != 0:
            first, quantity = layer, f"the decorrelation matrix R of layer {layer}"
        return self._error(rule, est, what, first, quantity, setting)

    # -- helpers ---------------------------------------------------------------------------
    def _growth(self, x, l) -> float:
        s0 = self._scale[l] if self._scale else 0.0
        s = _rms(x)
        if not np.isfinite(s):
            return float("inf")
        return s / s0 if s0 > 0 else 1.0

    def _first_blown(self, est, upto: int | None = None):
        """``(layer, quantity, setting)``: what blew up first, going forward through the layers.

        The data's scale is fixed, so a grown network input ``x*_0 = R_0 x`` means its
        decorrelation diverged (``alpha``); a grown input of layer ``l > 0`` means layer
        ``l - 1``'s output blew up (``lr``); else the output."""
        upto = len(est.inputs) - 1 if upto is None else upto
        g0 = self._growth(est.inputs[0], 0)
        if g0 > self.INPUT_GROWTH:
            return 0, f"the decorrelated network input (×{g0:.3g} its starting scale)", "alpha"
        for l in range(1, upto + 1):
            g = self._growth(est.inputs[l], l)
            if g > self.GROWTH:
                detail = "not finite" if not np.isfinite(g) else f"×{g:.3g} its starting scale"
                return l - 1, f"the output of layer {l - 1} ({detail})", "lr"
        last = len(est.inputs) - 1
        return last, f"the output of layer {last}", "lr" if upto == last else "alpha"

    def _error(self, rule, est, what, layer, quantity, setting) -> DivergenceError:
        at = f" at step {self.step}" if self.step is not None else ""
        value = getattr(rule, setting, None)
        hint = f"most likely {setting}={value:g} is too high" if isinstance(value, float) else f"check {setting}"
        kept = (f"the network keeps its state after step {self.step - 1}" if self.step is not None
                else "the network keeps its last good state")
        err = DivergenceError(f"{rule.label} diverged{at}: {what}; first to blow up: {quantity}; {hint}. "
                              f"Training stopped before applying this step; {kept}")
        err.step, err.layer, err.quantity, err.setting = self.step, layer, quantity, setting
        return err


def _rms(x) -> float:
    xp = get_array_module(x)
    return float(xp.sqrt(xp.mean(xp.square(x.astype(xp.float64))))) if x.size else 0.0


def forward_with_output_error(rule, net, x, t):
    """One noisy pass and the output error ``g_L = ∂L/∂a_L`` at the observed ``a_L``.

    Returns ``(pass, per-sample losses, g_L)``; BP and feedback alignment start from here.
    """
    p = net.forward(x)
    t = net.backend.asarray(t)
    L = net.n_layers
    losses = rule.loss.per_sample(p.out, t)
    a = p.pre[L - 1]
    return p, losses, rule.loss.grad(p.out, t).reshape(a.shape) * net.act_grad(L - 1, a)


def batch_outer(g, x):
    """``⟨g xᵀ⟩`` over the batch: ``gᵀx / B`` for ``g (B, n_out)``, ``x (B, n_in)``; for a
    convolution ``g (B, *positions, n_out)`` and ``x (B, *positions, n_in)``, summed over the
    positions (the kernel is shared by them) and averaged over the batch."""
    return (rows(g).T @ rows(x)) / g.shape[0]


def layout(net) -> list:
    """The network's layers (:class:`noisesim.layers.Layer`: shapes, read width, positions);
    for a device that describes itself by ``sizes`` only, its fully connected layers."""
    found = getattr(net, "layers", None)
    return found if found is not None else dense_layers(net.sizes)


def host_float(v) -> float:
    return float(v.item() if hasattr(v, "item") else v)
