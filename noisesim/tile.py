"""A crossbar tile: one weight matrix held in (simulated) analog conductances.

One read of ``x`` (rows are samples) computes, per physical tile, in order:

1. input scaling and DAC: with ``io_scaling="abs_max"`` each row is divided by
   ``s = max|x|`` (digital); then clip to ``[-in_bound, in_bound]`` and quantise to ``in_bits``;
2. the analog MVM ``a = x̂ Wᵀ`` with the programmed, drifted, faulty conductances
   (``W = w_max (G⁺ − G⁻)``, precomputed once per change of state or time);
3. fresh read noise, per output ``N(0, (read_noise · w_max · ‖x̂‖₂)²)`` — the exact
   distribution of i.i.d. per-device read noise of std ``read_noise · w_max`` — and analog
   output noise ``N(0, (out_noise · w_max · s)²)``, drawn together as one Gaussian per output
   (variances add) from the ``read`` stream;
4. intrinsic node noise ``N(0, node_noise²)`` (pre-activation units) from the ``node``
   stream, plus any injected perturbation — all *before* the ADC, so a perturbation below
   one ADC step can vanish;
5. output ADC: saturate at ``out_bound`` and quantise to ``out_bits`` (relative to
   ``w_max · s`` under ``abs_max``), then the code is scaled back to pre-activation units;
6. tiling: the input dimension is split into ``tile_rows``-row tiles, each with its own read
   noise, node/output noise and ADC; partial sums are added digitally. The read noise of the
   sum keeps its untiled distribution (variances add to ``read_noise² w_max² ‖x‖²``), but
   each tile's output carries its own node/output noise, so the observed pre-activation has
   ``√k`` times that std over ``k`` row tiles, and ``k`` quantisation errors. An injected
   perturbation enters once, on the first tile. (Output columns are independent per ADC
   already, so ``tile_cols`` changes only the transposed read.)

A read sets up all of its noise itself, from the tile's config and its named streams
(``read`` and ``node``, or ``<purpose>/read`` …); the caller says only which rows are clean
passes (``gate``) and what is injected.

With ``w_max=None`` there is no conductance mapping: the weights are exact numbers and only
steps 1 and 3–6 apply (the ``ideal`` preset). Weights change only through :meth:`Tile.apply`
(the device update model, :mod:`noisesim.update`, which changes the pairs through
:meth:`Tile.write_pair`, :meth:`Tile.program_where` and :meth:`Tile.pulse`) or
:meth:`Tile.program`. :meth:`Tile.state` gives every array of the device as plain data and
:meth:`Tile.load_state` puts it back.
"""
from __future__ import annotations

import numpy as np

import dataclasses

from . import _kernels, conductance, drift, update
from .backend import Backend, KeyTape, Streams, sole_owner, to_numpy
from .config import DeviceConfig


class Tile:
    """A weight matrix ``W`` of shape ``(n_out, n_in)`` on a simulated crossbar.

    Parameters
    ----------
    w0 : array (n_out, n_in)
        Initial target weights; programmed once (a programming event).
    config : DeviceConfig
    backend : Backend
    streams : Streams, optional
        Named random streams (``read``, ``node``, ``backward``, ``programming``, ``faults``,
        ``d2d``, ``drift``, ``update``, ``c2c``); a network passes its own so fabrication draws
        follow the layer order.
    """

    def __init__(self, w0, config: DeviceConfig, backend: Backend, *, streams: Streams | None = None):
        w0 = np.asarray(w0) if not hasattr(w0, "__cuda_array_interface__") else w0
        if w0.ndim != 2:
            raise ValueError(f"Tile weights must be 2-D (n_out, n_in), got shape {w0.shape}")
        self.config = config
        self.backend = backend
        self.xp = backend.xp
        self.dtype = backend.dtype
        self.streams = streams if streams is not None else Streams(0, backend)
        self.n_out, self.n_in = w0.shape
        self.time = 0.0
        w0 = backend.asarray(w0)
        c = config
        self.mapped = c.w_max is not None
        if self.mapped:
            scale = float(self.xp.abs(w0).max()) if c.w_max_mode == "init" else 1.0
            self.w_max = float(c.w_max) * (scale if scale > 0 else 1.0)
        else:
            self.w_max = None
        shape = (self.n_out, self.n_in)
        if self.mapped:
            self.fab = conductance.fabricate(shape, c, self.streams, self.xp, self.dtype)
            self._nu_p, self._nu_m = drift.exponents(shape, c, self.streams, self.xp, self.dtype)
            self._tprog = self.xp.zeros(shape, self.dtype) if self._nu_p is not None else None
        self._target = None
        self._alpha = 1.0           # digital drift-compensation gain after the ADC
        self._stale = False         # the pairs changed since the effective weights were computed
        self._w = w0
        self.program(w0)

    # -- state --------------------------------------------------------------------------
    @property
    def drifts(self) -> bool:
        return self.mapped and self._nu_p is not None

    def program(self, w) -> None:
        """A programming event: write target weights ``w`` (clipped to ``[-w_max, w_max]``).

        Levels, programming noise and device bounds apply; stuck devices stay stuck; every
        device restarts its drift clock.
        """
        w = self._check_shape("program", w)
        if not self.mapped:
            self._w = w if w.flags.c_contiguous and w is not self._w else self.xp.array(w, order="C")
            return
        xp = self.xp
        target = xp.clip(w, -self.w_max, self.w_max)
        self._gp, self._gm = (g.astype(self.dtype, copy=False) for g in conductance.program(
            target / self.w_max, self.config, self.fab, self.streams.get("programming"), xp))
        if self.config.update == "write_verify":
            self._target = xp.array(target, dtype=self.dtype, order="C")
        if self._tprog is not None:
            self._tprog[...] = self.time
        self._refresh()

    def restore(self, w) -> None:
        """Set exact weights (checkpoint restore): no levels, no noise, no update model.

        With a conductance mapping the pair is rewritten from ``w`` (clipped to each device's
        range) and the drift clock restarts; stuck devices stay stuck.
        """
        w = self._check_shape("restore", w)
        if not self.mapped:
            self._w = self.xp.array(w, copy=True, order="C")
            return
        xp = self.xp
        gp, gm = conductance.clip_pair(*conductance.split(w / self.w_max, xp), self.fab, xp)
        self._gp, self._gm = gp.astype(self.dtype), gm.astype(self.dtype)
        if self._target is not None:
            self._target = xp.array(xp.clip(w, -self.w_max, self.w_max), dtype=self.dtype, order="C")
        if self._tprog is not None:
            self._tprog[...] = self.time
        self._refresh()

    def _check_shape(self, what, w):
        w = self.backend.asarray(w)
        if w.shape != (self.n_out, self.n_in):
            raise ValueError(f"Tile.{what}: weights of shape {tuple(w.shape)}, expected {(self.n_out, self.n_in)}")
        return w

    def _refresh(self) -> None:
        """Recompute the effective weights ``W = w_max (G⁺_eff − G⁻_eff)`` (drift, faults)."""
        xp = self.xp
        self._stale = False
        gp, gm = self._gp, self._gm
        if self.drifts:
            t0 = self.config.t0
            gp = gp * drift.factor(self._nu_p, self.time, self._tprog, t0, xp)
            gm = gm * drift.factor(self._nu_m, self.time, self._tprog, t0, xp)
        gp, gm = conductance.apply_faults(gp, gm, self.fab, xp)
        w = (gp - gm)
        w *= self.w_max
        self._w = xp.ascontiguousarray(w, dtype=self.dtype)
        self._alpha = 1.0
        if self.drifts and self.config.drift_compensation:
            # calibration read with an all-ones input, now versus right after programming
            g0p, g0m = conductance.apply_faults(self._gp, self._gm, self.fab, xp)
            ref = float(xp.abs((g0p - g0m).sum(axis=1)).sum()) * self.w_max
            now = float(xp.abs(self._w.sum(axis=1)).sum())
            self._alpha = ref / now if now > 0 else 1.0

    def set_time(self, t: float) -> None:
        """Set the device clock (seconds); drifting tiles recompute their effective weights."""
        t = drift.check_time(t)
        self.time = t
        if self.drifts:
            self._refresh()

    def weights(self):
        """The effective weights a read realises right now (oracle access).

        The drifted, faulty analog weights, times the digital drift-compensation gain when on.
        """
        return self._w if self._alpha == 1.0 else self._w * self.dtype(self._alpha)

    def conductances(self, *, programmed: bool = False):
        """``(G⁺, G⁻)`` in µS: effective now (drifted, faulty) or as ``programmed``.

        Raises ``ValueError`` without a conductance mapping (``w_max=None``).
        """
        if not self.mapped:
            raise ValueError("this tile has no conductance mapping (DeviceConfig.w_max=None)")
        xp, g = self.xp, self.config.g_max
        gp, gm = self._gp, self._gm
        if not programmed:
            if self.drifts:
                gp = gp * drift.factor(self._nu_p, self.time, self._tprog, self.config.t0, xp)
                gm = gm * drift.factor(self._nu_m, self.time, self._tprog, self.config.t0, xp)
            gp, gm = conductance.apply_faults(gp, gm, self.fab, xp)
        return (gp * g).astype(self.dtype, copy=False), (gm * g).astype(self.dtype, copy=False)

    def update_in_place(self):
        """``W`` itself when an update may be added to it in place with the bits of
        :meth:`apply` (exact software weights, a NumPy array nothing else holds), else
        ``None``: a caller that adds ``delta`` to it has applied the update."""
        if self.mapped or not sole_owner(self._w, 1):
            return None
        return self._w

    def apply(self, delta) -> None:
        """Apply an update ``W ← W + delta`` through the device update model."""
        delta = self._check_shape("apply", delta)
        if not self.mapped:  # exact software weights: the ideal update is the only model
            if sole_owner(self._w, 1):          # nothing else sees W: add in place, same bits
                self.xp.add(self._w, delta, out=self._w)
            else:
                self._w = self._w + delta
            return
        update.MODELS[self.config.update](self, delta)
        if self._stale:
            self._refresh()

    # -- what an update model may do to the device ----------------------------------------
    @property
    def pair(self):
        """The programmed pair ``(G⁺, G⁻)``, normalised to ``g_max`` (not drifted; read only)."""
        return self._gp, self._gm

    @property
    def bounds(self):
        """Each device's ``Ĝ_max`` as ``(G⁺ bounds, G⁻ bounds)``, ``None`` for the nominal 1."""
        return self.fab.gmax_p, self.fab.gmax_m

    @property
    def target(self):
        """The digital target weights of ``write_verify`` (``None`` under other models; read only)."""
        return self._target

    def write_pair(self, gp, gm, changed) -> None:
        """Set the pair exactly (no levels, no noise); devices in ``changed`` restart their
        drift clock. What an exact update writes."""
        if self._tprog is not None:
            self._tprog[changed] = self.time
        self._gp, self._gm = gp.astype(self.dtype, copy=False), gm.astype(self.dtype, copy=False)
        self._stale = True

    def program_where(self, target, changed) -> None:
        """Program-and-verify the devices in ``changed`` to ``target`` (weights, clipped to
        ``±w_max``): levels and programming noise as in :meth:`program`, the others keep their
        state. The target is kept as the digital reference of later updates."""
        xp = self.xp
        self._target = xp.clip(target, -self.w_max, self.w_max).astype(self.dtype, copy=False)
        gp, gm = conductance.program(self._target / self.w_max, self.config, self.fab,
                                     self.streams.get("programming"), xp)
        self.write_pair(xp.where(changed, gp, self._gp), xp.where(changed, gm, self._gm), changed)

    def pulse(self, d) -> None:
        """Send each device the pulses of a normalised step ``d = ΔW/w_max`` (see
        :func:`noisesim._kernels.pulsed_update`): stochastic pulse counts (``update`` stream),
        soft bounds at ``Ĝ_max``, the d2d step scale, cycle-to-cycle noise (``c2c`` stream);
        pulsed devices restart their drift clock."""
        c = self.config
        d = self.xp.ascontiguousarray(d, dtype=self.dtype)
        # With no drift and no faults the kernel writes the effective weights directly.
        direct = self._tprog is None and not self.fab.has_faults
        _kernels.pulsed_update(
            self._gp, self._gm, d, rng=self.streams.get("update"), c2c_rng=self.streams.get("c2c"),
            dw_min=c.dw_min, asymmetry=c.asymmetry, c2c=c.c2c,
            dw_scale=self.fab.dw_scale, bound_up=self.fab.gmax_p, bound_down=self.fab.gmax_m,
            tprog=self._tprog, now=self.time, w=self._w if direct else None, w_scale=self.w_max,
        )
        self._stale = not direct

    # -- complete state ----------------------------------------------------------------------
    _ARRAYS = ("w", "gp", "gm", "tprog", "target", "nu_p", "nu_m")

    def _array(self, name: str):
        return getattr(self, "_" + name)

    def state(self) -> dict:
        """Every array and number of this device as host copies and JSON: the weights a read
        uses (``w``), the programmed pair, drift exponents and clocks, the write-verify target,
        the fabrication draws (``None`` where an effect is off), the clock, ``w_max`` and the
        drift-compensation gain."""
        host = lambda a: None if a is None else to_numpy(a).copy()
        st = {"shape": [self.n_out, self.n_in], "mapped": self.mapped, "w_max": self.w_max,
              "time": self.time, "alpha": float(self._alpha)}
        names = self._ARRAYS if self.mapped else ("w",)
        st.update({k: host(self._array(k)) for k in names})
        if self.mapped:
            st["fabrication"] = {f.name: host(getattr(self.fab, f.name)) for f in dataclasses.fields(self.fab)}
        return st

    def load_state(self, state: dict) -> None:
        """Put back a :meth:`state` of a tile of the same shape and config (raises ``ValueError``
        naming the first array that does not fit, before anything changes)."""
        self._commit(self._prepare(state))

    def _prepare(self, state: dict):
        """The arrays and numbers of ``state``, checked against this tile, ready to commit."""
        if not isinstance(state, dict):
            raise ValueError("tile state is not a mapping")
        if list(state.get("shape", [])) != [self.n_out, self.n_in] or bool(state.get("mapped")) != self.mapped:
            raise ValueError(f"tile state of shape {state.get('shape')} (mapped={state.get('mapped')}) does not "
                             f"fit a tile of shape {[self.n_out, self.n_in]} (mapped={self.mapped})")
        names = self._ARRAYS if self.mapped else ("w",)
        new = {k: self._fit(k, self._array(k), state.get(k)) for k in names}
        fab = {}
        if self.mapped:
            saved = state.get("fabrication") or {}
            fab = {f.name: self._fit(f"fabrication/{f.name}", getattr(self.fab, f.name), saved.get(f.name))
                   for f in dataclasses.fields(self.fab)}
        w_max, t, alpha = state.get("w_max"), drift.check_time(state.get("time"), "time"), state.get("alpha")
        if self.mapped != (w_max is not None) or not isinstance(alpha, (int, float)) or (
                w_max is not None and not (isinstance(w_max, (int, float)) and w_max > 0)):
            raise ValueError(f"tile state has w_max={w_max!r}, alpha={alpha!r}")
        return new, fab, w_max, t, alpha

    def _commit(self, prepared) -> None:
        new, fab, w_max, t, alpha = prepared
        for k, v in new.items():
            setattr(self, "_" + k, v)
        for k, v in fab.items():
            setattr(self.fab, k, v)
        self.w_max = None if w_max is None else float(w_max)
        self.time, self._alpha, self._stale = t, float(alpha), False

    def _fit(self, name, current, saved):
        """``saved`` as an array of this backend, checked against the array it replaces."""
        if (current is None) != (saved is None):
            raise ValueError(f"tile state: {name} is {'absent' if saved is None else 'present'}, but this "
                             f"tile's config {'has' if current is not None else 'has no'} such array")
        if current is None:
            return None
        saved = to_numpy(saved)
        if saved.shape != tuple(current.shape) or saved.dtype != current.dtype:
            raise ValueError(f"tile state: {name} has shape {saved.shape} and dtype {saved.dtype}, expected "
                             f"{tuple(current.shape)} and {current.dtype}")
        return self.xp.array(saved, order="C")

    # -- reads ---------------------------------------------------------------------------
    def _scratch(self, like):
        """A buffer shaped like ``like`` for the converted inputs, which no caller sees: kept
        between reads (a fresh one costs page faults on every read). Not for concurrent reads
        of one tile from several threads — a network's streams are not either."""
        buf = getattr(self, "_dac_buf", None)
        if buf is None or buf.shape != like.shape or buf.dtype != like.dtype:
            buf = self._dac_buf = self.xp.empty_like(like)
        return buf

    def _mvm(self, x, mat, chunk, *, dac: bool = True, check_finite: bool = False) -> "Prepared":
        """The digital and analog front of a read: DAC, then ``x̂ @ mat`` per row tile."""
        c, xp = self.config, self.xp
        s = sumsq = None
        if c.io_scaling == "abs_max":
            x, s, sumsq = _kernels.dac_absmax(x, c.in_bits if dac else None, c.in_bound if dac else None,
                                              out=self._scratch(x), chunk=chunk or x.shape[1])
            if check_finite and not _kernels.all_finite(s):    # max|x| of a row is NaN or Inf
                raise ValueError("input contains NaN or Inf")
        elif check_finite and not _kernels.all_finite(x):
            raise ValueError("input contains NaN or Inf")
        elif dac and c.in_bound is not None:
            x = _kernels.convert(x, c.in_bits, c.in_bound)
        K = mat.shape[0]
        bounds = [(0, K)] if chunk is None or chunk >= K else [(k, min(k + chunk, K)) for k in range(0, K, chunk)]
        parts, sq = [], []
        for k, (lo, hi) in enumerate(bounds):
            xk = x if len(bounds) == 1 else x[:, lo:hi]
            parts.append(xk @ mat[lo:hi] if len(bounds) > 1 else xk @ mat)
            if c.read_noise > 0:
                sq.append(sumsq[:, k] if sumsq is not None else xp.einsum("ij,ij->i", xk, xk))
        return Prepared(parts, s, sq, x.shape[0])

    def _analog(self, prep: "Prepared", *, read_rng, node_rng=None, node_std=None, gate=None, inject=None,
                repeat: int = 1, row0: int = 0, keep: bool = False):
        """The analog tail of a read of ``prep`` (:meth:`_mvm`): noise, injection and ADC, per row
        tile, the tiles' codes summed digitally. ``repeat`` passes share ``prep``'s rows (row
        ``r·M + i`` of the result is pass ``r`` of input row ``i``), each with its own noise;
        ``row0`` is the first row's index in the stack whose noise the keyed epilogue draws."""
        c, xp = self.config, self.xp
        wscale = self.w_max if self.mapped else 1.0
        R = int(repeat)
        rep = (lambda v: v) if R == 1 else (lambda v: xp.tile(v, R))
        s = None if prep.s is None else rep(prep.s)
        gain, post = 1.0, None
        if s is not None:
            gain = 1.0 / wscale
            post = (s * (wscale * self._alpha)).astype(self.dtype, copy=False)
        elif self._alpha != 1.0:
            post = xp.full(prep.rows * R, self._alpha, dtype=self.dtype)
        # the output noise (units of x̂ @ mat, gated off on a clean pass) joins the read noise
        # below: both are independent Gaussians on every output of this read, so one draw
        # from the read stream with variance r² + o² has their sum's exact distribution
        out_var = None
        if c.out_noise > 0:
            o2 = (c.out_noise * wscale) ** 2
            out_var = o2 * gate if gate is not None else xp.full(prep.rows * R, o2, dtype=self.dtype)
        # per-row std of the intrinsic node noise in the same units
        nstd = None
        if node_std is not None:
            if node_rng is None:
                raise ValueError("node_std was given without a node_rng stream to draw the node noise from")
            if s is None and node_std.shape == (prep.rows * R,):
                nstd = node_std.astype(self.dtype, copy=False)
            else:
                nstd = xp.zeros(prep.rows * R, self.dtype) + (node_std / s if s is not None else node_std)
                nstd = nstd.astype(self.dtype, copy=False)
        if inject is not None and s is not None:
            inject = inject / s[:, None]
        out = None
        for k, part in enumerate(prep.parts):
            # passes sharing an input share its GEMM: its rows copied once per pass (the
            # epilogue works in place), far cheaper than the GEMM they stand for
            a = xp.tile(part, (R, 1)) if R > 1 else (part.copy() if keep else part)
            var = out_var
            if c.read_noise > 0:
                var = (c.read_noise * wscale) ** 2 * rep(prep.sumsq[k]) + (var if var is not None else 0)
            read_std = xp.sqrt(var).astype(self.dtype, copy=False) if var is not None else None
            # the noise itself is drawn inside the kernel module, from these named streams
            out = _kernels.read_epilogue(
                a, read_std=read_std, read_rng=read_rng if read_std is not None else None,
                node_std=nstd, node_rng=node_rng if nstd is not None else None,
                inject=inject if k == 0 else None, bits=c.out_bits, bound=c.out_bound,
                gain=gain, post=post, out=out, row0=row0,
            )
        return out

    def _constant_std(self, rows: int):
        """The node noise's std for ``rows`` ungated rows: kept between reads (no caller
        writes it)."""
        key = (rows, self.config.node_noise)
        if getattr(self, "_std_key", None) != key:
            self._std_rows = self.xp.full(rows, self.config.node_noise, dtype=self.dtype)
            self._std_key = key
        return self._std_rows

    def prepare(self, x, *, check_finite: bool = False) -> "Prepared":
        """The part of a read of ``x`` that does not depend on the noise — the DAC and the GEMM
        of each row tile — for :meth:`read` to finish once per pass (``repeat``) without
        repeating it: passes that share an input share its GEMM."""
        return self._mvm(x, self._w.T, self.config.tile_rows, check_finite=check_finite)

    def read(self, x, *, gate=None, inject=None, purpose: str = "train", check_finite: bool = False,
             repeat: int = 1, row0: int = 0, keys: dict | None = None, consume: bool = False):
        """Observed pre-activations for inputs ``x`` of shape ``(M, n_in)``.

        The read draws its own noise from the tile's streams ``read`` and ``node`` (prefixed
        ``<purpose>/`` unless ``purpose="train"``, so evaluation never shifts training), with
        the stds of its config.
        ``gate``: per-row 0/1 (0: a clean pass), multiplying the intrinsic node noise's std and
        the output noise's variance; ``None``: every row noisy. The read noise is never gated.
        ``inject``: a known perturbation of shape ``(M, n_out)`` added before the ADC (on the
        first row-tile's output when tiled).
        ``check_finite``: raise ``ValueError`` on NaN or Inf in ``x`` before any noise is drawn
        (under ``io_scaling="abs_max"`` from the DAC's ``max|x|``, at no extra pass).

        Stacks of passes (what :class:`noisesim.network.Stack` uses): ``x`` may be a
        :meth:`prepare`-d read, finished here ``repeat`` times — ``repeat`` passes of the same
        input, ``(repeat·M, n_out)`` rows, one GEMM for all of them, each pass with its own
        noise (``gate`` and ``inject`` then have ``repeat·M`` rows). ``row0`` and ``keys`` (a
        dict this read fills with a :class:`~noisesim.backend.KeyTape` per stream on its first
        call and replays on later ones) let one stack be read in several calls with the noise
        a single call would draw: row ``i`` of this call is row ``row0 + i`` of the stack.
        ``consume``: the prepared read is not used again, so its GEMM output may be overwritten.
        """
        prep = x if isinstance(x, Prepared) else None
        rows = (prep.rows if prep is not None else x.shape[0]) * int(repeat)
        prefix = "" if purpose == "train" else f"{purpose}/"

        def stream(name):
            gen = self.streams.get(prefix + name)
            if keys is None:
                return gen
            tape = keys.get(name)
            if tape is None:
                tape = keys[name] = KeyTape(gen)
            tape.rewind()
            return tape

        node_std = node_rng = None
        if self.config.node_noise > 0:
            if gate is not None:
                node_std = self.xp.full(rows, self.config.node_noise, dtype=self.dtype)
                node_std *= gate
            else:
                node_std = self._constant_std(rows)
            node_rng = stream("node")
        read_rng = stream("read")
        if prep is None:
            prep = self.prepare(x, check_finite=check_finite)
            keep = False
        else:
            keep = not consume
        return self._analog(prep, read_rng=read_rng, node_rng=node_rng, node_std=node_std, gate=gate,
                            inject=inject, repeat=repeat, row0=row0, keep=keep)

    def read_transposed(self, d):
        """A transposed read ``d W`` (``Wᵀ d`` per row) with read and output noise and the ADC,
        drawn from the ``backward`` stream.

        Tiled along the output dimension by ``tile_cols``; the DAC applies only under
        ``io_scaling="abs_max"`` (raw gradients are far below a forward DAC's range).
        """
        prep = self._mvm(d, self._w, self.config.tile_cols, dac=self.config.io_scaling == "abs_max")
        return self._analog(prep, read_rng=self.streams.get("backward"))


class Prepared:
    """A read's noise-free front (:meth:`Tile.prepare`): per row tile the GEMM output
    ``parts[k]`` (``(M, n_out)``), the rows' DAC scale ``s`` (``None`` without input scaling)
    and the ``Σ x̂²`` of each row tile (for the read noise)."""

    __slots__ = ("parts", "s", "sumsq", "rows")

    def __init__(self, parts, s, sumsq, rows):
        self.parts, self.s, self.sumsq, self.rows = parts, s, sumsq, int(rows)
