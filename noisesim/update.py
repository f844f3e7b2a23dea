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

A model is a function ``model(tile, delta)`` registered in :data:`MODELS`. It reads the
device through :attr:`Tile.pair <noisesim.tile.Tile.pair>`, ``bounds``, ``target``,
``w_max`` and ``config``, and changes it only through the tile's own operations —
``write_pair`` (exact), ``program_where`` (program-and-verify) and ``pulse`` — which keep the
drift clocks, dtypes and effective weights right. Adding a model is one function here and its
name in :data:`MODELS` (plus any new parameters in :class:`~noisesim.config.DeviceConfig`).
"""
from __future__ import annotations

from . import conductance


def ideal(tile, delta) -> None:
    xp = tile.xp
    gp, gm = tile.pair
    d = delta / tile.w_max
    hi, lo = (b if b is not None else 1 for b in tile.bounds)
    new = xp.minimum(xp.maximum((gp - gm) + d, -lo), hi)
    tile.write_pair(*conductance.split(new, xp), changed=d != 0)


def pulsed(tile, delta) -> None:
    tile.pulse(delta / tile.w_max if tile.w_max != 1 else delta)


def write_verify(tile, delta) -> None:
    xp, w_max, n_levels = tile.xp, tile.w_max, tile.config.n_levels
    old = tile.target
    new = xp.clip(old + delta, -w_max, w_max)
    if n_levels is not None:
        k = n_levels - 1
        changed = xp.rint(old / w_max * k) != xp.rint(new / w_max * k)
    else:
        changed = new != old
    tile.program_where(new, changed)


MODELS = {"ideal": ideal, "pulsed": pulsed, "write_verify": write_verify}
UPDATE_MODELS = tuple(MODELS)
