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

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from .activation import Activation
from .backend import Backend, Streams, get_backend, to_numpy
from .config import DeviceConfig
from .errors import AccessError, DivergenceError
from .tile import Tile
from . import _kernels, drift, layers as layers_mod, threads


@dataclass
class Pass:
    """Observables of one or more forward passes.

    ``inputs[l]`` is the input fed to layer ``l``'s tile (after decorrelation; with the
    constant bias input last when the network has biases), ``pre[l]`` the observed
    pre-activation (ADC output), ``post[l]`` the activation. Single pass: arrays of shape
    ``(B, n)``; stacked: ``(P, B, n)`` with ``passes = P``. A convolutional layer keeps its
    spatial shape, channels last: ``pre[l]`` and ``post[l]`` are ``(P, B, *positions, C_out)``
    and ``inputs[l]`` holds its patch vectors, ``(P, B, *positions, k·C_in)`` (see
    :mod:`noisesim.layers`).
    """

    inputs: list
    pre: list
    post: list
    passes: int = 1
    stacked: bool = False

    @property
    def out(self):
        """The network output, one flat vector per sample (a convolutional last layer flattened)."""
        y, lead = self.post[-1], 2 if self.stacked else 1
        return y if y.ndim == lead + 1 else y.reshape(*y.shape[:lead], -1)

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
        layers=None,
        input_shape: Sequence[int] | None = None,
        bias: bool = False,
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
        if not isinstance(bias, bool):
            raise ValueError(f"bias={bias!r} must be True or False")
        if layers is None:
            if any(w.ndim != 2 for w in weights) or not weights:
                raise ValueError("weights must be a non-empty list of 2-D matrices (n_out, n_in)")
            for l in range(1, len(weights)):
                if weights[l].shape[1] - bias != weights[l - 1].shape[0]:
                    raise ValueError(f"layer {l} expects {weights[l].shape[1] - bias} inputs but layer {l-1} has "
                                     f"{weights[l-1].shape[0]} outputs")
            built = layers_mod.dense_layers([weights[0].shape[1] - bias] + [w.shape[0] for w in weights], bias)
        else:
            if input_shape is None:
                raise ValueError("layers given without input_shape; give the shape of one input sample, "
                                 "e.g. (32, 32, 3)")
            built = layers_mod.build(input_shape, layers, bias=bias)
            if len(built) != len(weights):
                raise ValueError(f"{len(weights)} weight matrices for {len(built)} layers")
            for lay, w in zip(built, weights):
                if w.shape != (lay.n_out, lay.n_in):
                    raise ValueError(f"{lay.describe()}: weights of shape {w.shape}, expected {(lay.n_out, lay.n_in)} "
                                     f"(input {lay.in_shape} → output {lay.out_shape}"
                                     f"{', plus the bias input' if bias else ''})")
        self.layers = built
        self.bias = bias
        self.input_shape = built[0].in_shape
        # Tiles are built in layer order from the network's streams, so each layer's
        # fabrication draws (faults, d2d, drift exponents) are fixed by the seed.
        self.tiles = [Tile(w, device, self.backend, streams=self.streams) for w in weights]
        self.sizes = [math.prod(self.input_shape)] + [lay.units for lay in built]
        self._R: list = [None] * len(self.tiles)
        if decorrelate:
            self.enable_decorrelation()

    @classmethod
    def mlp(cls, sizes: Sequence[int], device: DeviceConfig | None = None, **options) -> "Network":
        """A fully connected network ``sizes[0] → … → sizes[-1]`` (no biases by default, as in
        the paper's equations).

        ``options`` are those of :meth:`build`: ``seed``, ``backend``, ``dtype``,
        ``activation``, ``slope``, ``output_activation``, ``decorrelate``, ``init`` (``"he"``:
        ``W ~ N(0, 2/n_in)``; ``"glorot"``: ``N(0, 2/(n_in+n_out))``) and ``bias``. Initial
        weights come from the ``init`` stream on the host, so backends start identical.
        """
        if isinstance(sizes, (str, bytes)) or not hasattr(sizes, "__len__"):
            raise ValueError(f"sizes={sizes!r} must list at least two positive layer widths")
        sizes = [int(s) for s in sizes]
        if len(sizes) < 2 or min(sizes) < 1:
            raise ValueError(f"sizes={sizes!r} must list at least two positive layer widths")
        return cls.build((sizes[0],), [layers_mod.Dense(n) for n in sizes[1:]], device, **options)

    @classmethod
    def build(
        cls,
        input_shape: Sequence[int] | int,
        layers,
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
        bias: bool = False,
    ) -> "Network":
        """A network of dense and convolutional layers on crossbar tiles (see :mod:`noisesim.layers`).

        ``input_shape``: one sample, channels last — ``(n,)``, ``(L, C)`` or ``(H, W, C)``; the
        network still takes flat ``(B, prod(input_shape))`` batches. ``layers``: a list of
        :class:`~noisesim.layers.Dense`/:class:`~noisesim.layers.Conv` or a string, e.g. the
        paper's ConvNet ``Network.build((32, 32, 3), "c3x3x16s2 c3x3x32s2 c3x3x64 f1024 f10")``
        and its Tiny ImageNet ConvNet ``Network.build((64, 64, 3), "c5x5x32s2 c3x3x64s2
        c5x5x128 f512 f512 f200")``. Shapes that do not fit fail here, naming the layer.

        ``bias=True`` gives every layer a bias the way a crossbar does it: one more input row
        driven at the constant 1 (converted like every input), whose conductances are the biases
        ``b`` — ``a = W x* + b`` is read as ``[W b] [x*; 1]``, so the biases are programmed,
        read with noise, converted, drifted and updated exactly like weights, and every rule
        learns them as the last column of ``ΔW``. The constant row is not decorrelated.

        ``init``: ``"he"`` ``W ~ N(0, 2/fan_in)`` or ``"glorot"`` ``N(0, 2/(fan_in+n_out))`` with
        ``fan_in`` the read width (``k·C_in`` for a convolution); biases start at 0. Initial
        weights come from the ``init`` stream on the host, so backends start identical.
        """
        if init not in ("he", "glorot"):
            raise ValueError(f"init={init!r} is not known; allowed: ['he', 'glorot']")
        shape = tuple(input_shape) if isinstance(input_shape, (tuple, list)) else (input_shape,)
        built = layers_mod.build(shape, layers, bias=bool(bias) if isinstance(bias, bool) else bias)
        rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence(int(seed), spawn_key=(0x1417,))))
        ws = []
        for lay in built:
            var = 2.0 / lay.width if init == "he" else 2.0 / (lay.width + lay.n_out)
            w = rng.standard_normal((lay.n_out, lay.width)) * np.sqrt(var)
            ws.append(np.concatenate([w, np.zeros((lay.n_out, 1))], axis=1) if lay.bias else w)
        return cls(ws, device, seed=seed, backend=backend, dtype=dtype, activation=activation,
                   slope=slope, output_activation=output_activation, decorrelate=decorrelate,
                   layers=[_spec_of(lay) for lay in built], input_shape=shape, bias=bias)

    def pass_flops(self, rows: int) -> float:
        """Floating-point operations of the largest product of one pass of ``rows`` samples: a
        tile's GEMM (``reads × n_in × n_out`` per sample: a convolution reads once per position)
        or a decorrelation product of a layer's read vectors with themselves (``reads × width²``).
        What :func:`noisesim.threads.for_flops` chooses BLAS threads by."""
        largest = max(max(l.reads * l.n_in * l.n_out, l.reads * l.width * l.width) for l in self.layers)
        return 2.0 * rows * largest

    def blas_threads(self, rows: int):
        """A context in which BLAS uses the threads chosen for a pass of ``rows`` samples
        (:func:`noisesim.threads.for_flops` of :meth:`pass_flops`)."""
        return threads.for_flops(self.pass_flops(rows))

    @property
    def convolutional(self) -> bool:
        """Whether any layer is a convolution."""
        return not layers_mod.is_dense(self.layers)

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

    def layer_input(self, l: int, h):
        """``x*`` fed to layer ``l``'s tile from its input ``h`` (``N`` samples, any shape holding
        ``in_shape``): the read vectors (patches of a convolution, the flattened input of a
        dense layer), decorrelated (``R_l`` on each), with the constant bias input appended.
        Shape ``(N, *positions, n_in)``. Digital and exact."""
        lay = self.layers[l]
        u = lay.unfold(h)
        R = self._R[l]
        if R is not None:
            u = (u.reshape(-1, lay.width) @ R.T).reshape(u.shape)
        if lay.bias:
            xp = self.xp
            u = xp.concatenate([u, xp.ones(u.shape[:-1] + (1,), dtype=u.dtype)], axis=-1)
        return u

    def input_gradient(self, l: int, d):
        """``∂L/∂x_{l−1}`` from ``d = ∂L/∂x*_l`` (``(N, *positions, n_in or width)``): the bias
        input dropped, ``R_lᵀ`` applied, the patches folded back onto the input (col2im);
        shaped like layer ``l − 1``'s output. Digital and exact."""
        lay = self.layers[l]
        d = d[..., :lay.width]
        R = self._R[l]
        if R is not None:
            d = (d.reshape(-1, lay.width) @ R).reshape(d.shape)
        g = lay.fold(d)
        return g.reshape(g.shape[0], *self.layers[l - 1].out_shape) if l > 0 else g

    def forward(self, x, *, purpose: str = "train") -> Pass:
        """One noisy forward pass of a batch ``x`` of shape ``(B, n_in)``."""
        p = self.forward_stacked(x, 1, purpose=purpose)
        return p[0]

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

        The network input is the same in every pass, so layer 0's DAC and GEMM run once for
        all passes; each pass still draws its own read, node and output noise.
        ``inputs[0]`` of the result is a read-only view of that one input (``(P, B, n)``,
        stride 0 along the passes). :meth:`stack` runs the same passes in parts.
        """
        with self.blas_threads(len(x)):
            return self.stack(x, passes, clean=clean, purpose=purpose).run(0, int(passes), inject=inject)

    def stack(self, x, passes: int, *, clean: Sequence[bool] | None = None, purpose: str = "train") -> "Stack":
        """A stack of ``passes`` forward passes of one batch ``x``, to be run in parts.

        ``stack(x, P).run(a, b)`` returns passes ``a … b−1`` of the stack with exactly the noise
        they have in ``forward_stacked(x, P)`` (and the same numbers when every part is run
        once, in order: each layer's noise keys are drawn by the first part and replayed by the
        others; on CuPy with ``NOISESIM_CUPY_EPILOGUE=unfused`` the parts draw their own noise).
        Layer 0's GEMM runs once for all parts. Memory then grows with the part, not with
        ``P``: what :mod:`rules` uses to average K samples within a memory budget.
        """
        return Stack(self, x, passes, clean, purpose)

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
        """``Wᵀ_l d`` per read through a transposed crossbar read (needs ``backward``):
        ``d (N, *positions, n_out)`` → ``(N, *positions, n_in)`` (see :meth:`input_gradient`)."""
        self.require("a transposed crossbar read", ["backward"])
        d = self.backend.asarray(d)
        out = self.tiles[l].read_transposed(d.reshape(-1, d.shape[-1]))
        return out.reshape(d.shape[:-1] + (out.shape[-1],))

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
        for l, lay in enumerate(self.layers):
            if self._R[l] is None:
                self._R[l] = self.xp.eye(lay.width, dtype=self.dtype)

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

    def apply_update(self, l: int, delta, *, finite: bool = False) -> None:
        """``W_l ← W_l + delta`` through the device update model (the only weight write).

        ``delta`` is checked for NaN and Inf first unless the caller vouches for it
        (``finite=True``: a rule's optimizer step from updates its divergence guard checked)."""
        tile = self.tiles[l]
        shape = (tile.n_out, tile.n_in)
        if finite:
            delta = self.backend.asarray(delta)
            if delta.shape != shape:
                raise ValueError(f"weight update for layer {l} has shape {tuple(delta.shape)}, expected {shape}")
            tile.apply(delta)
            return
        tile.apply(self._check_delta("weight update", l, delta, shape))

    def update_in_place(self, l: int):
        """Layer ``l``'s weight array when an update may be added to it in place with the bits
        of :meth:`apply_update` (an unmapped tile on NumPy whose weights nothing else holds),
        else ``None``. A caller that adds a delta to it has applied that update, unchecked:
        for an optimizer's step from updates its divergence guard found finite."""
        return self.tiles[l].update_in_place()

    def apply_decorrelation_update(self, l: int, delta) -> None:
        """``R_l ← R_l + delta`` (digital).

        One pass checks the new matrix for NaN/Inf (a non-finite ``delta`` shows there too,
        and is then named); on failure ``R_l`` is unchanged.
        """
        if self._R[l] is None:
            raise RuntimeError("decorrelation is off; call enable_decorrelation() first")
        R = self._R[l]
        delta = self.backend.asarray(delta)
        if delta.shape != R.shape:
            raise ValueError(f"decorrelation update for layer {l} has shape {tuple(delta.shape)}, expected {R.shape}")
        new = R + delta
        if not _kernels.all_finite(new):
            self._check_delta("decorrelation update", l, delta, R.shape)    # names a bad update
            raise DivergenceError(f"decorrelation matrix of layer {l} overflowed; state kept")
        self._R[l] = new

    def set_decorrelation(self, l: int, R) -> None:
        """``R_l ← R`` (digital; a checked, finite matrix of ``R_l``'s shape and dtype, which
        the network keeps: not copied)."""
        if self._R[l] is None:
            raise RuntimeError("decorrelation is off; call enable_decorrelation() first")
        R = self.backend.asarray(R)
        if R.shape != self._R[l].shape:
            raise ValueError(f"decorrelation matrix for layer {l} has shape {tuple(R.shape)}, expected {self._R[l].shape}")
        self._R[l] = R

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
        cfg = {"sizes": list(self.sizes), "device": self.device.to_dict(), "seed": self.seed,
               "backend": self.backend.name, "dtype": np.dtype(self.dtype).name,
               "activation": self.activation.name, "output_activation": self.output_activation.name,
               "slope": float(self.activation.slope)}
        if self.convolutional or self.bias:
            cfg.update(input_shape=list(self.input_shape), layers=" ".join(l.spec() for l in self.layers),
                       bias=self.bias)
        return cfg

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
                      output_activation=cfg["output_activation"], **layout_options(cfg))
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
        for key in ("sizes", "device", "dtype", "activation", "output_activation", "slope", "layers",
                    "input_shape", "bias"):
            if cfg.get(key) != mine.get(key):
                raise ValueError(f"network state: {key}={cfg.get(key)!r} differs from this network's {mine.get(key)!r}")
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
        for l, n in enumerate(lay.width for lay in self.layers):
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
        :meth:`Stack.run` with ``omega=`` runs the same passes in parts.
        """
        self.require("a known weight perturbation", ["inject"])
        if len(omega) != self.n_layers:
            raise ValueError(f"omega has {len(omega)} entries for {self.n_layers} layers")
        P = next((int(o.shape[0]) for o in omega if o is not None), 1)
        return self.stack(x, P, clean=clean, purpose=purpose).run(0, P, omega=omega)


class Stack:
    """``P`` forward passes of one batch, run in parts (:meth:`Network.stack`).

    Holds what the parts share: the checked input, layer 0's decorrelated input and its
    prepared read (DAC and GEMM, once for every pass), the clean flags and, per layer, the
    noise keys the first part draws and later parts replay.
    """

    def __init__(self, net: Network, x, passes: int, clean, purpose: str):
        self.net = net
        x = net._check_input(x)
        self.P, self.B = int(passes), x.shape[0]
        if self.P < 1:
            raise ValueError(f"passes={passes!r} must be at least 1")
        self.purpose = purpose
        self.flags = None
        if clean is not None and any(clean):
            net.require("a clean (noise-gated) pass", ["clean"])
            if len(clean) != self.P:
                raise ValueError(f"clean has {len(clean)} entries for {self.P} passes")
            self.flags = [0 if c else 1 for c in clean]
        # the network input is the same in every pass: unfolded, decorrelated, converted and
        # multiplied once
        self.x0 = net.layer_input(0, x)
        self.first = net.tiles[0].prepare(self.x0.reshape(-1, self.x0.shape[-1]),
                                          check_finite=net._first_read_checks_input())
        self.keys = [dict() for _ in net.tiles]

    def _gate(self, start: int, stop: int, reads: int):
        if self.flags is None or all(self.flags[start:stop]):
            return None
        xp = self.net.xp
        return xp.repeat(xp.asarray(self.flags[start:stop], dtype=self.net.dtype), self.B * reads)

    def run(self, start: int, stop: int, *, inject: Sequence | None = None, omega: Sequence | None = None) -> Pass:
        """Passes ``start … stop−1`` as a stacked :class:`Pass` (``passes = stop − start``).

        ``inject[l]``: the known perturbation of these passes, ``(stop − start, B, n_l)`` or
        ``(P, B, n_l)`` for the whole stack (needs ``inject``); ``omega[l]``: a known weight
        perturbation, ``(stop − start | P, n_out, n_in)`` (see
        :meth:`Network.forward_weight_perturbed`). BLAS threads are chosen for the batch size
        (:meth:`Network.blas_threads`) while it runs.
        """
        with self.net.blas_threads(self.B):
            return self._run(start, stop, inject, omega)

    def _run(self, start, stop, inject, omega) -> Pass:
        net, xp, B = self.net, self.net.xp, self.B
        start, stop = int(start), int(stop)
        if not 0 <= start < stop <= self.P:
            raise ValueError(f"passes {start}…{stop - 1} are not in a stack of {self.P}")
        n = stop - start

        def part(a, what, l):
            a = net.backend.asarray(a)
            if a.shape[0] == self.P and n != self.P:
                a = a[start:stop]
            if a.shape[0] != n:
                raise ValueError(f"{what}[{l}] has {a.shape[0]} passes for {n} (passes {start}…{stop - 1})")
            return a

        known = None
        if inject is not None:
            net.require("an injected perturbation", ["inject"])
            if len(inject) != net.n_layers:
                raise ValueError(f"inject has {len(inject)} entries for {net.n_layers} layers")

            def known(l, xs):
                if inject[l] is None:
                    return None
                a = part(inject[l], "inject", l)
                if a.shape[1:] != (B, *net.layers[l].out_shape):
                    raise ValueError(f"inject[{l}] has shape {tuple(a.shape)}, expected {(n, B, *net.layers[l].out_shape)}")
                return a.reshape(-1, net.tiles[l].n_out)
        elif omega is not None:
            net.require("a known weight perturbation", ["inject"])
            if len(omega) != net.n_layers:
                raise ValueError(f"omega has {len(omega)} entries for {net.n_layers} layers")

            def known(l, xs):
                if omega[l] is None:
                    return None
                tile = net.tiles[l]
                om = part(omega[l], "omega", l)
                if om.shape[1:] != (tile.n_out, tile.n_in):
                    raise ValueError(f"omega[{l}] has shape {tuple(om.shape)}, expected {(n, tile.n_out, tile.n_in)}")
                x2 = self.x0.reshape(-1, tile.n_in) if l == 0 else xs.reshape(n, -1, tile.n_in)
                return (x2 @ xp.swapaxes(om, 1, 2)).reshape(-1, tile.n_out)

        inputs, pre, post = [], [], []
        for l, (tile, lay) in enumerate(zip(net.tiles, net.layers)):
            if l == 0:
                xs = xp.broadcast_to(self.x0, (n, *self.x0.shape))
                src = self.first
            else:
                xs = net.layer_input(l, h)
                src = xs.reshape(-1, tile.n_in)
            inj = known(l, xs) if known is not None else None
            a = tile.read(src, gate=self._gate(start, stop, lay.reads), inject=inj, purpose=self.purpose,
                          repeat=n if l == 0 else 1, row0=start * B * lay.reads, keys=self.keys[l],
                          consume=l == 0 and self.P == 1)
            h = net.act(l, a).reshape(n * B, *lay.out_shape)
            inputs.append(xs.reshape(n, B, *lay.positions, tile.n_in))
            pre.append(a.reshape(n, B, *lay.out_shape))
            post.append(h.reshape(n, B, *lay.out_shape))
        return Pass(inputs, pre, post, passes=n, stacked=True)


def _spec_of(layer):
    if layer.kind == "dense":
        return layers_mod.Dense(layer.n_out)
    return layers_mod.Conv(layer.n_out, layer.kernel, layer.stride, layer.padding)


def layout_options(cfg: dict) -> dict:
    """The ``layers``/``input_shape``/``bias`` options of a recorded network config (none for a
    plain fully connected network, which its ``sizes`` describe)."""
    if "layers" not in cfg:
        return {}
    shape = cfg.get("input_shape")
    if not isinstance(shape, list) or not isinstance(cfg["layers"], str):
        raise ValueError(f"network config: layers={cfg['layers']!r} and input_shape={shape!r} must be a string "
                         "and a list of sizes")
    return {"layers": cfg["layers"], "input_shape": tuple(shape), "bias": cfg.get("bias", False)}


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
