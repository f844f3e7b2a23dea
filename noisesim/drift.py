"""Power-law conductance drift.

Every device drifts from the moment it was last programmed:

    G(t) = G₀ · (τ / t₀)^(−ν),     τ = max(t − t_prog, t₀),

so nothing changes within ``t₀`` of a programming event (the model's reference read time;
aihwkit's PCM model uses ``t₀ = 20 s``). The exponent is fixed per device at fabrication,
``ν ~ N(drift_nu, drift_nu_std²)`` clipped at 0 (a negative ν — conductance *growing* with
time — is not what PCM drift measurements show), drawn from the ``drift`` stream.
The device clock is advanced by :meth:`noisesim.Network.advance_time` /
:meth:`~noisesim.Network.set_time`; effective weights are recomputed once per change of
time or state, never per read.
"""
from __future__ import annotations

import math

from .config import DeviceConfig


def exponents(shape, config: DeviceConfig, streams, xp, dtype):
    """Per-device exponents ``(ν⁺, ν⁻)`` of one tile, or ``(None, None)`` when drift is off."""
    if config.drift_nu <= 0 and config.drift_nu_std <= 0:
        return None, None
    rng = streams.get("drift")
    nu_p = xp.maximum(config.drift_nu + config.drift_nu_std * rng.normal(shape), 0).astype(dtype, copy=False)
    nu_m = xp.maximum(config.drift_nu + config.drift_nu_std * rng.normal(shape), 0).astype(dtype, copy=False)
    return nu_p, nu_m


def factor(nu, t, t_prog, t0: float, xp):
    """``(max(t − t_prog, t₀)/t₀)^(−ν)`` elementwise (``t_prog`` an array or a scalar)."""
    age = xp.maximum(t - t_prog, t0) / t0
    if xp.ndim(age) == 0:
        return xp.exp(-nu * math.log(float(age)))
    return xp.exp(-nu * xp.log(age))


def check_time(t, name: str = "t") -> float:
    """A device time in seconds: finite and ``≥ 0``; raises ``ValueError`` naming ``name``."""
    if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(float(t)) or t < 0:
        raise ValueError(f"{name}={t!r} is out of range; allowed range: [0, ∞) seconds")
    return float(t)
