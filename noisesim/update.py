"""Device update models: how a requested ``ΔW`` becomes a change of conductances.

A learning rule asks for ``W ← W + ΔW``; the device decides what actually happens. Let
``u = G⁺ − G⁻ = w / w_max`` be the normalised weight of a pair and ``d = ΔW / w_max``.

``ideal``
    Exact: ``u ← clip(u + d, −Ĝ⁻_max, Ĝ⁺_max)``; no noise, no levels. The pair is rewritten
    with one device at zero; changed devices restart their drift clock.
``pulsed``
    Stochastic pulse counts and soft bounds (Gokmen & Vlasov 2016; aihwkit's
    ``SoftBoundsDevice``): ``n = ⌊|d|/dw_min⌋ + Bernoulli(frac(|d|/dw_min))`` pulses (so
    ``E[n]·dw_min = |d|``), each of size ``s± = dw_min·(1+d2d ζ)·(1 ± asymmetry)`` scaled by
    the distance to the bound; ``n`` pulses in closed form
    ``u ← b⁺ − (b⁺ − u)(1 − s⁺/b⁺)ⁿ`` (up) or ``u ← −b⁻ + (u + b⁻)(1 − s⁻/b⁻)ⁿ`` (down), plus
    cycle-to-cycle noise ``c2c · s± · √n · ξ``. So one pulse from ``u`` moves
    ``s⁺(1 − u/b⁺)`` up and ``s⁻(1 + u/b⁻)`` down, and the weight saturates at the bounds.
    The peripheral circuit only knows the nominal ``dw_min``; asymmetry and d2d are what it
    does not know. Streams: ``update`` (pulse-count rounding), ``c2c`` (cycle noise).
``write_verify``
    Program-and-verify to a digital target (the mixed-precision scheme of Nandakumar et al.
    2020): the target ``w*`` accumulates ``ΔW`` in digital precision and a pair is
    reprogrammed — levels and programming noise, see :func:`noisesim.conductance.program` —
    only when its level-quantised target changes (any change when ``n_levels`` is ``None``).
    Updates smaller than one level thus accumulate instead of being lost. Stream:
    ``programming``.
"""
from __future__ import annotations

from . import _kernels, conductance

UPDATE_MODELS = ("ideal", "pulsed", "write_verify")


def ideal(tile, delta) -> None:
    xp = tile.xp
    u = tile._gp - tile._gm
    d = delta / tile.w_max
    new = u + d
    hi = tile.fab.gmax_p if tile.fab.gmax_p is not None else 1
    lo = tile.fab.gmax_m if tile.fab.gmax_m is not None else 1
    new = xp.minimum(xp.maximum(new, -lo), hi)
    gp, gm = conductance.split(new, xp)
    if tile._tprog is not None:
        changed = d != 0
        tile._tprog[changed] = tile.time
    tile._gp, tile._gm = gp.astype(tile.dtype, copy=False), gm.astype(tile.dtype, copy=False)


def pulsed(tile, delta) -> None:
    c, xp = tile.config, tile.xp
    d = delta / tile.w_max if tile.w_max != 1 else delta
    d = xp.ascontiguousarray(d, dtype=tile.dtype)
    # With no drift and no faults the kernel writes the effective weights directly.
    direct = tile._tprog is None and not tile.fab.has_faults
    _kernels.pulsed_update(
        tile._gp, tile._gm, d, rng=tile.streams.get("update"), c2c_rng=tile.streams.get("c2c"),
        dw_min=c.dw_min, asymmetry=c.asymmetry, c2c=c.c2c,
        dw_scale=tile.fab.dw_scale, bound_up=tile.fab.gmax_p, bound_down=tile.fab.gmax_m,
        tprog=tile._tprog, now=tile.time, w=tile._w if direct else None, w_scale=tile.w_max,
    )
    return direct


def write_verify(tile, delta) -> None:
    c, xp = tile.config, tile.xp
    old = tile._target
    new = xp.clip(old + delta, -tile.w_max, tile.w_max)
    if c.n_levels is not None:
        k = c.n_levels - 1
        changed = xp.rint(old / tile.w_max * k) != xp.rint(new / tile.w_max * k)
    else:
        changed = new != old
    tile._target = new.astype(tile.dtype, copy=False)
    gp, gm = conductance.program(new / tile.w_max, c, tile.fab, tile.streams.get("programming"), xp)
    tile._gp = xp.where(changed, gp, tile._gp).astype(tile.dtype, copy=False)
    tile._gm = xp.where(changed, gm, tile._gm).astype(tile.dtype, copy=False)
    if tile._tprog is not None:
        tile._tprog[changed] = tile.time


MODELS = {"ideal": ideal, "pulsed": pulsed, "write_verify": write_verify}
