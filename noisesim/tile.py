"""A crossbar tile: one weight matrix held in (simulated) analog conductances.

One read of ``x`` (rows are samples) computes, in order:

1. input DAC: clip ``x`` to ``[-in_bound, in_bound]`` and quantise to ``in_bits``;
2. the analog MVM ``a = x Wᵀ`` with the programmed weights;
3. fresh read noise, per output ``N(0, (read_noise · w_max · ‖x‖₂)²)`` — the exact
   distribution of i.i.d. per-device read noise of std ``read_noise · w_max``;
4. intrinsic node noise ``N(0, node_noise²)`` on every pre-activation (unreadable; it can be
   gated off per pass when the device grants ``clean``), plus any injected perturbation;
5. output ADC: saturate at ``out_bound`` and quantise to ``out_bits``.

Weights change only through :meth:`Tile.apply` (the device update model) or
:meth:`Tile.program`.
"""
from __future__ import annotations

import numpy as np

from . import _kernels
from .backend import Backend, Generator
from .config import DeviceConfig


class Tile:
    """A weight matrix ``W`` of shape ``(n_out, n_in)`` on a simulated crossbar."""

    def __init__(self, w0: np.ndarray, config: DeviceConfig, backend: Backend):
        w0 = np.asarray(w0)
        if w0.ndim != 2:
            raise ValueError(f"Tile weights must be 2-D (n_out, n_in), got shape {w0.shape}")
        self.config = config
        self.backend = backend
        self.n_out, self.n_in = w0.shape
        self._w = backend.asarray(w0)
        self.program(self._w)

    # -- state --------------------------------------------------------------------------
    def program(self, w) -> None:
        """Program target weights (a programming event): clip to the weight range."""
        w = self.backend.asarray(w)
        if w.shape != (self.n_out, self.n_in):
            raise ValueError(f"Tile.program: weights of shape {w.shape}, expected {(self.n_out, self.n_in)}")
        if self.config.w_max is not None:
            w = self.backend.xp.clip(w, -self.config.w_max, self.config.w_max)
        self._w = w if w.flags.c_contiguous else self.backend.xp.ascontiguousarray(w)

    def restore(self, w) -> None:
        """Set the exact weights (checkpoint restore; no programming noise, no update model)."""
        w = self.backend.asarray(w)
        if w.shape != (self.n_out, self.n_in):
            raise ValueError(f"Tile.restore: weights of shape {w.shape}, expected {(self.n_out, self.n_in)}")
        self._w = self.backend.xp.array(w, copy=True, order="C")

    def weights(self):
        """The effective weights the analog MVM uses right now (oracle access)."""
        return self._w

    def apply(self, delta) -> None:
        """Apply an update ``W ← W + delta`` through the device update model (``ideal``)."""
        self.program(self._w + delta)

    # -- reads ---------------------------------------------------------------------------
    def _read_std(self, x):
        c = self.config
        scale = c.read_noise * (c.w_max if c.w_max is not None else 1.0)
        return scale * self.backend.xp.sqrt((x * x).sum(axis=1))

    def read(self, x, *, read_rng: Generator, node_rng: Generator, node_std=None, inject=None):
        """Observed pre-activations for inputs ``x`` of shape ``(M, n_in)``.

        ``node_std``: per-row std of the intrinsic node noise, shape ``(M,)`` (``None``: off).
        ``inject``: a known perturbation of shape ``(M, n_out)`` added before the ADC.
        """
        c = self.config
        if c.in_bound is not None:
            x = _kernels.convert(x, c.in_bits, c.in_bound)
        a = x @ self._w.T
        read_z = read_std = node_z = None
        if c.read_noise > 0:
            read_std = self._read_std(x).astype(a.dtype, copy=False)
            read_z = read_rng.normal(a.shape)
        if node_std is not None:
            node_z = node_rng.normal(a.shape)
        return _kernels.read_epilogue(
            a, read_z=read_z, read_std=read_std, node_z=node_z, node_std=node_std,
            inject=inject, bits=c.out_bits, bound=c.out_bound,
        )

    def read_transposed(self, d, *, read_rng: Generator):
        """A transposed read ``d W`` (i.e. ``Wᵀ d`` per row) with read noise and the ADC."""
        c = self.config
        out = d @ self._w
        read_z = read_std = None
        if c.read_noise > 0:
            read_std = self._read_std(d).astype(out.dtype, copy=False)
            read_z = read_rng.normal(out.shape)
        return _kernels.read_epilogue(out, read_z=read_z, read_std=read_std, bits=c.out_bits, bound=c.out_bound)
