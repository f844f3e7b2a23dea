"""A feed-forward network whose every matrix-vector product runs on a simulated crossbar.

Layer ``l`` (1-based in the equations, 0-based in code) computes::

    x*_{l-1} = R_{l-1} x_{l-1}          (digital decorrelation, identity when off)
    a_l      = Tile_l.read(x*_{l-1})     (DAC → G·x + read noise + node noise → ADC)
    x_l      = f(a_l)                    (linear on the output layer)

``forward`` returns a :class:`Pass` of observables only — never the noise. Several passes
of one batch are stacked along the batch axis so each layer runs one GEMM for all of them.
Everything a learning rule may do to the device goes through the methods listed in
:class:`noisesim.protocol.DeviceNetwork`, each checking the access it needs.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from .activation import Activation
from .backend import Backend, Streams, get_backend, to_numpy
from .config import DeviceConfig
from .errors import AccessError, DivergenceError
from .tile import Tile
from . import _kernels, drift, threads


@dataclass
class Pass:
    """Observables of one or more forward passes.

    ``inputs[l]`` is the input fed to layer ``l``'s tile (after decorrelation),
    ``pre[l]`` the observed pre-activation (ADC output), ``post[l]`` the activation.
    Single pass: arrays of shape ``(B, n)``; stacked: ``(P, B, n)`` with ``passes = P``.
    """

    inputs: list
    pre: list
    post: list
    passes: int = 1
    stacked: bool = False

    @property
    def out(self):
        return self.post[-1]

    def __getitem__(self, k: int) -> "Pass":
        if not self.stacked:
            raise IndexError("a single Pass cannot be indexed; use forward_stacked for several passes")
        return Pass([a[k] for a in self.inputs], [a[k] for a in self.pre], [a[k] for a in self.post])


class Network:
    """A stack of crossbar tiles with activations and optional input decorrelation.

    Build one with :meth:`Network.mlp`. Weights change only through :meth:`apply_update`.
    """

    def __init__(
        self,
        weights: Sequence[np.ndarray],
        device: DeviceConfig | None = None,
        *,
        seed: int = 0,
        backend: str | Backend = "auto",
        dtype: str = "float32",
        activation: str = "leaky_relu",
        slope: float = 0.2,
        output_activation: str = "linear",
        decorrelate: bool = False,
    ):
        if device is None:
            device = DeviceConfig.preset("ideal")
        if not isinstance(device, DeviceConfig):
            raise TypeError(f"device must be a DeviceConfig, got {type(device).__name__}")
        self.device = device
        self.backend = backend if isinstance(backend, Backend) else get_backend(backend, dtype)
        self.xp = self.backend.xp
        self.dtype = self.backend.dtype
        self.seed = int(seed)
        self.streams = Streams(self.seed, self.backend)
        self.activation = Activation(activation, slope)
        self.output_activation = Activation(output_activation, slope)
        weights = [to_numpy(w) for w in weights]      # (np.asarray refuses CuPy arrays)
        for l in range(1, len(weights)):
            if weights[l].shape[1] != weights[l - 1].shape[0]:
                raise ValueError(f"layer {l} expects {weights[l].shape[1]} inputs but layer {l-1} has {weights[l-1].shape[0]} outputs")
        # Tiles are built in layer order from the network's streams, so each layer's
        # fabrication draws (faults, d2d, drift exponents) are fixed by the seed.
        self.tiles = [Tile(w, device, self.backend, streams=self.streams) for w in weights]
        self.sizes = [weights[0].shape[1]] + [w.shape[0] for w in weights]
        self._R: list = [None] * len(self.tiles)
        if decorrelate:
            self.enable_decorrelation()

    @classmethod
    def mlp(
        cls,
        sizes: Sequence[int],
        device: DeviceConfig | None = None,
        *,
        seed: int = 0,
        backend: str | Backend = "auto",
        dtype: str = "float32",
        activation: str = "leaky_relu",
        slope: float = 0.2,
        output_activation: str = "linear",
        decorrelate: bool = False,
        init: str = "he",
    ) -> "Network":
        """A fully connected network ``sizes[0] → … → sizes[-1]`` (no biases, as in the paper).

        ``init="he"``: ``W ~ N(0, 2/n_in)``; ``"glorot"``: ``N(0, 2/(n_in+n_out))``. Initial
        weights come from the ``init`` stream on the host, so backends start identical.
        """
        sizes = [int(s) for s in sizes]
        if len(sizes) < 2 or min(sizes) < 1:
            raise ValueError(f"sizes={sizes!r} must list at least two positive layer widths")
        if init not in ("he", "glorot"):
            raise ValueError(f"init={init!r} is not known; allowed: ['he', 'glorot']")
        rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence(int(seed), spawn_key=(0x1417,))))
        ws = []
        for n_in, n_out in zip(sizes[:-1], sizes[1:]):
            var = 2.0 / n_in if init == "he" else 2.0 / (n_in + n_out)
            ws.append(rng.standard_normal((n_out, n_in)) * np.sqrt(var))
        return cls(ws, device, seed=seed, backend=backend, dtype=dtype, activation=activation,
                   slope=slope, output_activation=output_activation, decorrelate=decorrelate)

    # -- description ------------------------------------------------------------------------
    @property
    def n_layers(self) -> int:
        return len(self.tiles)

    @property
    def grants(self) -> frozenset:
        """Access levels this device grants to learning rules."""
        return frozenset(self.device.access)

    def require(self, who: str, needs) -> None:
        """Raise :class:`AccessError` unless every level in ``needs`` is granted."""
        missing = [n for n in needs if n not in self.grants]
        if missing:
            raise AccessError(
                f"{who} needs access {sorted(needs)} but the device grants only {sorted(self.grants)} "
                f"(missing: {missing}); choose a device preset or config whose 'access' includes them"
            )

    def _activation(self, l: int) -> Activation:
        return self.output_activation if l == self.n_layers - 1 else self.activation

    def act(self, l: int, a):
        """``f_l(a)`` of layer ``l`` (linear output layer by default)."""
        return self._activation(l)(a)

    def act_grad(self, l: int, a):
        """``f_l′(a)`` of layer ``l``."""
        return self._activation(l).grad(a)

    def random(self, name: str):
        """The named random stream ``name`` (e.g. ``"inject"`` for known perturbations)."""
        return self.streams.get(name)

    # -- forward ------------------------------------------------------------------------------
    def _first_read_checks_input(self) -> bool:
        """Whether layer 0's tile finds NaN/Inf in the network input itself: its ``abs_max``
        DAC takes ``max|x|`` of every row anyway, so the check costs no pass of its own."""
        return self.tiles[0].config.io_scaling == "abs_max" and self._R[0] is None

    def _check_input(self, x):
        x = self.backend.asarray(x)
        if x.ndim != 2 or x.shape[1] != self.sizes[0]:
            raise ValueError(f"input of shape {tuple(x.shape)}; expected (batch, {self.sizes[0]})")
        if not self._first_read_checks_input() and not _kernels.all_finite(x):
            raise ValueError("input contains NaN or Inf")
        return x

    def forward(self, x, *, purpose: str = "train") -> Pass:
        """One noisy forward pass of a batch ``x`` of shape ``(B, n_in)``."""
        p = self.forward_stacked(x, 1, purpose=purpose)
        return p[0]

    @threads.sized
    def forward_stacked(self, x, passes: int, *, clean: Sequence[bool] | None = None,
                        inject: Sequence | None = None, purpose: str = "train") -> Pass:
        """``passes`` forward passes of one batch, one GEMM per layer for all of them.

        Parameters
        ----------
        clean : sequence of bool, optional
            Per pass, gate the intrinsic node noise off (needs ``clean`` access).
        inject : sequence, optional
            Per layer, a known perturbation of shape ``(passes, B, n_l)`` (or ``None`` for a
            layer left alone) added to the pre-activations before the ADC (needs ``inject``).
        purpose : {"train", "eval"}
            Which family of noise streams to draw from, so evaluation never shifts training.
        """
        x = self._check_input(x)
        P, B = int(passes), x.shape[0]
        if P < 1:
            raise ValueError(f"passes={passes!r} must be at least 1")
        known = None
        if inject is not None:
            self.require("an injected perturbation", ["inject"])
            if len(inject) != self.n_layers:
                raise ValueError(f"inject has {len(inject)} entries for {self.n_layers} layers")

            def known(l, xs):
                if inject[l] is None:
                    return None
                return self.backend.asarray(inject[l]).reshape(P * B, self.tiles[l].n_out)
        return self._run_stacked(x, P, clean, known, purpose)

    def _run_stacked(self, x, P: int, clean, known, purpose: str) -> Pass:
        """The stacked forward shared by every public pass: ``known(l, x*)`` returns the known
        term injected into layer ``l``'s pre-activations (or ``None``)."""
        B, xp = x.shape[0], self.xp
        gate = None
        if clean is not None and any(clean):
            self.require("a clean (noise-gated) pass", ["clean"])
            if len(clean) != P:
                raise ValueError(f"clean has {len(clean)} entries for {P} passes")
            # per row of the stacked batch: 0 in a clean pass (each tile's read gates its own noise)
            gate = xp.repeat(xp.asarray([0 if c else 1 for c in clean], dtype=self.dtype), B)
        inputs, pre, post = [], [], []
        for l, tile in enumerate(self.tiles):
            R = self._R[l]
            if l == 0:  # the network input is the same in every pass: decorrelate it once
                x0 = x @ R.T if R is not None else x
                xs = xp.tile(x0, (P, 1)) if P > 1 else x0
            else:
                xs = h @ R.T if R is not None else h
            inj = known(l, xs) if known is not None else None
            a = tile.read(xs, gate=gate, inject=inj, purpose=purpose,
                          check_finite=l == 0 and self._first_read_checks_input())
            h = self.act(l, a)
            inputs.append(xs.reshape(P, B, -1))
            pre.append(a.reshape(P, B, -1))
            post.append(h.reshape(P, B, -1))
        return Pass(inputs, pre, post, passes=P, stacked=True)

    # -- device time (conductance drift) -------------------------------------------------------
    @property
    def time(self) -> float:
        """Device time in seconds since fabrication (0 at construction)."""
        return self.tiles[0].time

    def set_time(self, t: float) -> None:
        """Set the device clock to ``t ≥ 0`` seconds; drifted weights are recomputed once.

        Each device drifts as ``(max(t − t_prog, t₀)/t₀)^(−ν)`` from its last programming.
        """
        t = drift.check_time(t, "t")
        for tile in self.tiles:
            tile.set_time(t)

    def advance_time(self, dt: float) -> None:
        """Advance the device clock by ``dt ≥ 0`` seconds (see :meth:`set_time`)."""
        dt = drift.check_time(dt, "dt")
        self.set_time(self.time + dt)

    # -- transposed reads and references --------------------------------------------------------
    def backward_read(self, l: int, d):
        """``Wᵀ_l d`` per row through a transposed crossbar read (needs ``backward``)."""
        self.require("a transposed crossbar read", ["backward"])
        return self.tiles[l].read_transposed(self.backend.asarray(d))

    def weights(self, l: int):
        """Exact current weights of layer ``l`` (needs ``oracle``; a copy)."""
        self.require("reading exact weights", ["oracle"])
        return self.tiles[l].weights().copy()

    def decorrelation(self, l: int):
        """The digital decorrelation matrix ``R_l`` of layer ``l``'s input, or ``None``."""
        return self._R[l]

    @property
    def decorrelated(self) -> bool:
        return self._R[0] is not None

    def enable_decorrelation(self) -> None:
        """Put ``R_l = I`` in front of every layer input (no-op if already on)."""
        for l, n in enumerate(self.sizes[:-1]):
            if self._R[l] is None:
                self._R[l] = self.xp.eye(n, dtype=self.dtype)

    # -- updates --------------------------------------------------------------------------------
    def _check_delta(self, what: str, l: int, delta, shape):
        delta = self.backend.asarray(delta)
        if delta.shape != shape:
            raise ValueError(f"{what} for layer {l} has shape {tuple(delta.shape)}, expected {shape}")
        if not _kernels.all_finite(delta):
            raise DivergenceError(
                f"{what} for layer {l} contains NaN or Inf; the update was not applied and the "
                "network keeps its last good state (lower the learning rate)"
            )
        return delta

    def apply_update(self, l: int, delta) -> None:
        """``W_l ← W_l + delta`` through the device update model (the only weight write)."""
        tile = self.tiles[l]
        tile.apply(self._check_delta("weight update", l, delta, (tile.n_out, tile.n_in)))

    def apply_decorrelation_update(self, l: int, delta) -> None:
        """``R_l ← R_l + delta`` (digital)."""
        if self._R[l] is None:
            raise RuntimeError("decorrelation is off; call enable_decorrelation() first")
        R = self._R[l]
        delta = self._check_delta("decorrelation update", l, delta, R.shape)
        new = R + delta
        if not _kernels.all_finite(new):
            raise DivergenceError(f"decorrelation matrix of layer {l} overflowed; state kept")
        self._R[l] = new

    # -- state ------------------------------------------------------------------------------------
    def get_state(self) -> dict:
        """Host copies of every weight and decorrelation matrix (exact; for traces/checkpoints)."""
        state = {f"W{l}": to_numpy(t.weights()).copy() for l, t in enumerate(self.tiles)}
        for l, R in enumerate(self._R):
            if R is not None:
                state[f"R{l}"] = to_numpy(R).copy()
        return state

    def set_state(self, state: dict) -> None:
        """Restore weights (reprogrammed, bypassing the update model) and decorrelation.

        Only the weights: hidden device state (conductance pairs, drift clocks) and the random
        streams are rebuilt from ``W``. For an exact restore use :meth:`state`/:meth:`load_state`.
        """
        for l, t in enumerate(self.tiles):
            t.restore(state[f"W{l}"])
        for l in range(self.n_layers):
            key = f"R{l}"
            self._R[l] = self.backend.asarray(state[key]).copy() if key in state else None

    # -- complete state (checkpoints, traces) ----------------------------------------------------
    STATE_VERSION = 1

    def config(self) -> dict:
        """What it takes to build this network again (JSON): sizes, device, seed, backend,
        dtype and activations; the weights and everything else are in :meth:`state`."""
        return {"sizes": list(self.sizes), "device": self.device.to_dict(), "seed": self.seed,
                "backend": self.backend.name, "dtype": np.dtype(self.dtype).name,
                "activation": self.activation.name, "output_activation": self.output_activation.name,
                "slope": float(self.activation.slope)}

    def state(self) -> dict:
        """The complete state as plain data (host arrays and JSON; no pickle).

        ``{"class", "version", "config", "streams", "tiles", "decorrelation"}``: the config of
        :meth:`config`; where every named random stream stands (:meth:`Streams.state`); per
        layer the device's arrays (:meth:`Tile.state`: weights, conductance pairs, fabrication
        draws, drift exponents and clocks, write-verify target) and the decorrelation matrix
        ``R_l`` (``None`` when off). :meth:`from_state` builds the network again from it and
        :meth:`load_state` puts it back into this one; a run continued from either draws the
        same numbers as the run that was saved. Write it to HDF5 with :func:`noisesim.state.save`.
        """
        return {"class": "noisesim.Network", "version": self.STATE_VERSION, "config": self.config(),
                "streams": self.streams.state(),
                "tiles": {str(l): t.state() for l, t in enumerate(self.tiles)},
                "decorrelation": {str(l): None if R is None else to_numpy(R).copy() for l, R in enumerate(self._R)}}

    @classmethod
    def from_state(cls, state: dict, *, backend: str | Backend | None = None) -> "Network":
        """A network rebuilt from :meth:`state` (on ``backend``, default the recorded one)."""
        cfg = _check_state_header(state)
        try:
            device = DeviceConfig.from_dict(cfg["device"])
            tiles = state["tiles"]
            weights = [to_numpy(tiles[str(l)]["w"]) for l in range(len(cfg["sizes"]) - 1)]
            net = cls(weights, device, seed=int(cfg["seed"]), backend=backend or cfg["backend"], dtype=cfg["dtype"],
                      activation=cfg["activation"], slope=float(cfg["slope"]),
                      output_activation=cfg["output_activation"])
        except (KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"invalid network state: {type(exc).__name__}: {exc}") from None
        net.load_state(state)
        return net

    def load_state(self, state: dict) -> None:
        """Put a :meth:`state` of a network with the same config back into this one.

        Raises ``ValueError`` naming what differs (sizes, device, dtype, activations, an
        array's shape or dtype) before anything changes. The seed and streams come from the
        state. A state saved on another backend restores the host streams only (NumPy and
        CuPy draw different numbers anyway).
        """
        cfg = _check_state_header(state)
        mine = self.config()
        for key in ("sizes", "device", "dtype", "activation", "output_activation", "slope"):
            if cfg.get(key) != mine[key]:
                raise ValueError(f"network state: {key}={cfg.get(key)!r} differs from this network's {mine[key]!r}")
        tiles, R = state.get("tiles"), state.get("decorrelation")
        if not isinstance(tiles, dict) or not isinstance(R, dict):
            raise ValueError("network state: 'tiles' and 'decorrelation' must be mappings by layer")
        prepared = []
        for l, t in enumerate(self.tiles):
            if str(l) not in tiles:
                raise ValueError(f"network state has no tile {l}")
            try:
                prepared.append(t._prepare(tiles[str(l)]))
            except (TypeError, KeyError) as exc:
                raise ValueError(f"network state, tile {l}: {type(exc).__name__}: {exc}") from None
        new_R = []
        for l, n in enumerate(self.sizes[:-1]):
            r = R.get(str(l))
            if r is not None:
                r = to_numpy(r)
                if r.shape != (n, n) or r.dtype != np.dtype(self.dtype):
                    raise ValueError(f"network state: R{l} has shape {r.shape} and dtype {r.dtype}, expected "
                                     f"{(n, n)} and {np.dtype(self.dtype)}")
                r = self.xp.array(r, order="C")
            new_R.append(r)
        self.streams.load_state(state.get("streams"))   # checked whole before it changes anything
        for t, p in zip(self.tiles, prepared):
            t._commit(p)
        self._R = new_R
        self.seed = self.streams.seed

    # -- weight perturbation ------------------------------------------------------------------------
    def forward_weight_perturbed(self, x, omega: Sequence, *, clean: Sequence[bool] | None = None,
                                 purpose: str = "train") -> Pass:
        """Stacked passes in which pass ``p`` runs with weights ``W_l + Ω_{p,l}`` (needs ``inject``).

        ``omega[l]`` is a known weight perturbation of shape ``(P, n_out, n_in)`` (``None``:
        layer ``l`` unperturbed); ``P`` is read from it and a pass with ``Ω = 0`` is an ordinary
        pass. The crossbar computes ``(W + Ω) x* = W x* + Ω x*``, so ``Ω x*`` enters each tile
        read as a known injected term before the ADC, with read and intrinsic noise on top —
        the conductances are never reprogrammed. ``clean`` gates intrinsic noise per pass.
        """
        self.require("a known weight perturbation", ["inject"])
        if len(omega) != self.n_layers:
            raise ValueError(f"omega has {len(omega)} entries for {self.n_layers} layers")
        P = next((int(o.shape[0]) for o in omega if o is not None), 1)
        x = self._check_input(x)
        B, xp = x.shape[0], self.xp

        def known(l, xs):
            if omega[l] is None:
                return None
            tile = self.tiles[l]
            om = self.backend.asarray(omega[l])
            if om.shape != (P, tile.n_out, tile.n_in):
                raise ValueError(f"omega[{l}] has shape {tuple(om.shape)}, expected {(P, tile.n_out, tile.n_in)}")
            return (xs.reshape(P, B, -1) @ xp.swapaxes(om, 1, 2)).reshape(P * B, tile.n_out)
        return self._run_stacked(x, P, clean, known, purpose)


def _check_state_header(state) -> dict:
    if not isinstance(state, dict) or state.get("class") != "noisesim.Network":
        raise ValueError("not a noisesim.Network state (its 'class' entry is not 'noisesim.Network')")
    if state.get("version") != Network.STATE_VERSION:
        raise ValueError(f"network state version {state.get('version')!r}; this noisesim reads version "
                         f"{Network.STATE_VERSION}")
    cfg = state.get("config")
    if not isinstance(cfg, dict):
        raise ValueError("network state has no 'config'")
    return cfg
