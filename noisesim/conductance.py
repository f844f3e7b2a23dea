"""Weights held in differential conductance pairs: mapping, levels, programming, faults.

All conductances here are *normalised* to the nominal maximum ``g_max`` (``G = 1`` means
``g_max`` µS). A weight ``w ∈ [−w_max, w_max]`` is held by a pair

    w = w_max · (G⁺ − G⁻),      target mapping  G⁺ = max(w, 0)/w_max,  G⁻ = max(−w, 0)/w_max

(one device of the pair at zero — the standard differential mapping). One *programming
event* writes a target pair as

    G ← clip(Q_L(G_target) + σ(G_target) · ξ,  0,  Ĝ_max),     ξ ~ N(0, 1),

where ``Q_L`` rounds to ``n_levels`` equally spaced levels on ``[0, 1]``,
``σ(G) = prog_noise + Σ_k c_k G^k`` (``prog_noise_poly``; aihwkit's PCM polynomial is
``[0.26348, 1.965, −1.1731] µS / 25 µS``) and ``Ĝ_max = 1 + d2d·ζ`` is the device's own
maximum (device-to-device variation, ``ζ ~ N(0, 1)`` fixed at fabrication).

Fabrication (drawn once per tile, each effect from its own stream, so turning one on never
shifts another's numbers): stuck-at faults (``faults``: a device is stuck at 0 with
probability ``stuck_off`` and at ``Ĝ_max`` with probability ``stuck_on``) and the d2d draws
(``d2d``: ``Ĝ_max`` of both devices and the pulsed-update step scale of the pair).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .config import DeviceConfig


@dataclass
class Fabrication:
    """Per-device properties fixed at fabrication (``None`` where the effect is off)."""

    gmax_p: Any = None        # Ĝ_max of G⁺ devices (d2d)
    gmax_m: Any = None        # Ĝ_max of G⁻ devices (d2d)
    dw_scale: Any = None      # pulsed-update step scale of each pair (d2d)
    stuck_p: Any = None       # bool mask: G⁺ device stuck
    stuck_m: Any = None
    stuck_val_p: Any = None   # value a stuck G⁺ device holds (0 or Ĝ_max)
    stuck_val_m: Any = None

    @property
    def has_faults(self) -> bool:
        return self.stuck_p is not None


def fabricate(shape, config: DeviceConfig, streams, xp, dtype) -> Fabrication:
    """Draw the fabrication-time properties of one tile of ``shape`` (n_out, n_in)."""
    fab = Fabrication()
    if config.d2d > 0:
        rng = streams.get("d2d")
        fab.gmax_p = xp.maximum(1 + config.d2d * rng.normal(shape), 0).astype(dtype, copy=False)
        fab.gmax_m = xp.maximum(1 + config.d2d * rng.normal(shape), 0).astype(dtype, copy=False)
        if config.update == "pulsed":
            fab.dw_scale = xp.maximum(1 + config.d2d * rng.normal(shape), 0).astype(dtype, copy=False)
    if config.stuck_off > 0 or config.stuck_on > 0:
        rng = streams.get("faults")
        for side in ("p", "m"):
            u = rng.uniform(shape)
            off = u < config.stuck_off
            on = (u >= config.stuck_off) & (u < config.stuck_off + config.stuck_on)
            gmax = getattr(fab, f"gmax_{side}")
            top = gmax if gmax is not None else xp.ones(shape, dtype)
            setattr(fab, f"stuck_{side}", off | on)
            setattr(fab, f"stuck_val_{side}", xp.where(on, top, xp.zeros((), dtype)).astype(dtype, copy=False))
    return fab


def split(w_norm, xp):
    """The target pair ``(max(u, 0), max(−u, 0))`` of normalised weights ``u = w/w_max``."""
    return xp.maximum(w_norm, 0), xp.maximum(-w_norm, 0)


def quantise_levels(g, n_levels, xp):
    """``Q_L(g) = round(g (L−1)) / (L−1)`` on ``[0, 1]``: exactly ``L`` possible values."""
    k = n_levels - 1
    return xp.rint(xp.clip(g, 0, 1) * k) / k


def prog_sigma(g, config: DeviceConfig, xp):
    """Programming-noise std ``σ(G)/g_max = prog_noise + Σ_k c_k G^k`` (clipped at 0)."""
    sig = xp.full(g.shape, config.prog_noise, dtype=g.dtype) if config.prog_noise else xp.zeros_like(g)
    gk = None
    for k, c in enumerate(config.prog_noise_poly):
        if k == 0:
            sig += c
            continue
        gk = g if gk is None else gk * g
        sig += c * gk
    return xp.maximum(sig, 0)


def program(w_norm, config: DeviceConfig, fab: Fabrication, rng, xp):
    """One programming event of normalised target weights; returns ``(G⁺, G⁻)``.

    ``rng`` is the ``programming`` stream; it is consumed (two draws of the full shape) only
    when programming noise is on, so levels or bounds never shift its numbers.
    """
    gp, gm = split(w_norm, xp)
    if config.n_levels is not None:
        gp, gm = quantise_levels(gp, config.n_levels, xp), quantise_levels(gm, config.n_levels, xp)
    if config.prog_noise > 0 or config.prog_noise_poly:
        gp = gp + prog_sigma(gp, config, xp) * rng.normal(gp.shape)
        gm = gm + prog_sigma(gm, config, xp) * rng.normal(gm.shape)
    return clip_pair(gp, gm, fab, xp)


def clip_pair(gp, gm, fab: Fabrication, xp):
    """Each device within ``[0, Ĝ_max]``."""
    hp = fab.gmax_p if fab.gmax_p is not None else 1
    hm = fab.gmax_m if fab.gmax_m is not None else 1
    return xp.clip(gp, 0, hp), xp.clip(gm, 0, hm)


def apply_faults(gp, gm, fab: Fabrication, xp):
    """Stuck devices hold their stuck value whatever was programmed."""
    if not fab.has_faults:
        return gp, gm
    return xp.where(fab.stuck_p, fab.stuck_val_p, gp), xp.where(fab.stuck_m, fab.stuck_val_m, gm)
