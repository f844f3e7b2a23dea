"""Device configuration: every non-ideality of a crossbar tile, validated and frozen.

A :class:`DeviceConfig` is a frozen dataclass; ``__post_init__`` checks every field and a
bad value raises ``ValueError`` naming the field, the value and the allowed range. Configs
serialise to JSON (:meth:`DeviceConfig.to_dict`) because they go into traces and results.

Access levels a device may grant to learning rules:

``observe``   only :class:`~noisesim.network.Pass` data (inputs, pre-activations, outputs)
``clean``     gate the intrinsic node noise off for one pass (a switch, not a readout)
``inject``    add a known perturbation to pre-activations (or weights) on top of the noise
``backward``  transposed reads through the crossbar, with their own noise and ADC
``oracle``    exact weights — the software reference, never needed to train
"""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from typing import Any

ACCESS_LEVELS = ("observe", "clean", "inject", "backward", "oracle")
W_MAX_MODES = ("absolute", "init")
IO_SCALINGS = ("none", "abs_max")

_INF = math.inf


def _range(lo, hi, lo_open=False, hi_open=False, optional=False, integer=False):
    return dict(lo=lo, hi=hi, lo_open=lo_open, hi_open=hi_open, optional=optional, integer=integer)


# field -> allowed range; the one table every check and every error message comes from.
_RANGES: dict[str, dict] = {
    "w_max": _range(0, _INF, lo_open=True, hi_open=True, optional=True),
    "g_max": _range(0, _INF, lo_open=True, hi_open=True),
    "n_levels": _range(2, 2**24, optional=True, integer=True),
    "prog_noise": _range(0, 1),
    "read_noise": _range(0, 10),
    "node_noise": _range(0, 10),
    "out_noise": _range(0, 10),
    "in_bits": _range(1, 24, optional=True, integer=True),
    "in_bound": _range(0, _INF, lo_open=True, hi_open=True, optional=True),
    "out_bits": _range(1, 24, optional=True, integer=True),
    "out_bound": _range(0, _INF, lo_open=True, hi_open=True, optional=True),
    "tile_rows": _range(1, 2**20, optional=True, integer=True),
    "tile_cols": _range(1, 2**20, optional=True, integer=True),
    "drift_nu": _range(0, 1),
    "drift_nu_std": _range(0, 1),
    "t0": _range(0, _INF, lo_open=True, hi_open=True),
    "stuck_off": _range(0, 1),
    "stuck_on": _range(0, 1),
    "d2d": _range(0, 1),
    "dw_min": _range(0, 1, lo_open=True),
    "asymmetry": _range(-1, 1, lo_open=True, hi_open=True),
    "c2c": _range(0, 10),
}


def _describe(spec) -> str:
    lo = "(" if spec["lo_open"] else "["
    hi = ")" if spec["hi_open"] else "]"
    kind = "an integer in " if spec["integer"] else ""
    s = f"{kind}{lo}{spec['lo']:g}, {spec['hi']:g}{hi}".replace("inf", "∞")
    return s + (" or None" if spec["optional"] else "")


def _check(name: str, value: Any) -> None:
    spec = _RANGES[name]
    allowed = _describe(spec)
    if value is None:
        if spec["optional"]:
            return
        raise ValueError(f"DeviceConfig.{name}=None is not allowed; allowed range: {allowed}")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"DeviceConfig.{name}={value!r} must be a number; allowed range: {allowed}")
    if spec["integer"] and int(value) != value:
        raise ValueError(f"DeviceConfig.{name}={value!r} must be an integer; allowed range: {allowed}")
    v = float(value)
    ok = not math.isnan(v)
    ok = ok and (v > spec["lo"] if spec["lo_open"] else v >= spec["lo"])
    ok = ok and (v < spec["hi"] if spec["hi_open"] else v <= spec["hi"])
    if not ok:
        raise ValueError(f"DeviceConfig.{name}={value!r} is out of range; allowed range: {allowed}")


@dataclass(frozen=True)
class DeviceConfig:
    """Non-idealities of the simulated crossbar; every effect is off at its default.

    Parameters
    ----------
    w_max : float or None
        Weight range: weights are mapped to a differential conductance pair
        ``w = w_max (G⁺ − G⁻) / g_max`` and clipped to ``[-w_max, w_max]``. ``None``: unbounded
        weights, no conductance mapping (the ideal software setting).
    w_max_mode : {"absolute", "init"}
        ``"absolute"``: ``w_max`` is in weight units. ``"init"``: each layer's range is
        ``w_max · max|W₀|`` of its own initial weights — aihwkit's per-layer weight scaling
        (``weight_scaling_omega = 1/w_max``), so one preset suits every layer width.
    g_max : float
        Maximum conductance in µS (only its ratio to noise parameters matters).
    n_levels : int or None
        Number of programmable conductance levels per device (``None``: continuous).
    prog_noise : float
        Programming (write) noise std, relative to ``g_max``, on every programming event.
    prog_noise_poly : tuple of float
        Conductance-dependent programming noise added to ``prog_noise``:
        ``σ(G)/g_max = Σ_k c_k (G/g_max)^k`` (aihwkit's PCM polynomial divided by ``g_max``).
    read_noise : float
        Per-MVM read noise. Each output receives a fresh Gaussian of std
        ``read_noise · w_max · ‖x‖₂`` (exact in distribution for i.i.d. per-device noise of std
        ``read_noise · w_max``); with ``w_max=None`` the std is ``read_noise · ‖x‖₂``.
    node_noise : float
        Std of the intrinsic, unreadable noise added to every pre-activation (before the ADC),
        in pre-activation units.
    out_noise : float
        Analog output noise before the ADC, relative to full scale: std ``out_noise · w_max · s``
        with ``s`` the input scale (``max|x|`` per sample under ``io_scaling="abs_max"``, else 1).
        Gated by ``clean`` like ``node_noise``, but drawn with the read noise: one Gaussian per
        output from the ``read`` stream with variance ``read² + out²`` (their sum's exact
        distribution; toggling either rescales the same numbers and shifts no stream).
    in_bits, in_bound : int or None, float or None
        Input DAC resolution and clipping bound ``[-in_bound, in_bound]`` (``in_bound=None``:
        no DAC).
    out_bits, out_bound : int or None, float or None
        Output ADC resolution and saturation bound (``out_bound=None``: no ADC).
    io_scaling : {"none", "abs_max"}
        ``"abs_max"``: each input row is divided by its ``max|x|`` before the DAC and the
        output multiplied back (aihwkit's noise management); ``in_bound`` is then relative to
        ``max|x|`` and ``out_bound`` relative to ``w_max · max|x|``. ``"none"``: both bounds are
        in the units of ``x`` and of the pre-activation.
    tile_rows, tile_cols : int or None
        Physical tile size; larger matrices are split, each tile with its own ADC.
    drift_nu, drift_nu_std, t0 : float
        Conductance drift ``g(t) = g₀ (t/t₀)^(−ν)``, ``ν ~ N(drift_nu, drift_nu_std²)`` per device.
    drift_compensation : bool
        Global drift compensation (aihwkit's ``GlobalDriftCompensation``): a digital gain
        ``α = Σ_i|Σ_j W⁰_ij| / Σ_i|Σ_j W(t)_ij|`` after the ADC, from a calibration read with an
        all-ones input just after programming (``W⁰``) and now. It restores the output scale
        but not the resolution lost at the ADC, nor the per-device spread of ``ν``.
    stuck_off, stuck_on : float
        Fractions of devices stuck at 0 or at their ``g_max`` (fixed at fabrication; each device
        of a differential pair fails independently).
    d2d : float
        Relative device-to-device variation, fixed at fabrication: each device's maximum
        conductance is ``g_max (1 + d2d ξ)`` and, under ``update="pulsed"``, each weight's step
        is ``dw_min (1 + d2d ξ')`` (``ξ, ξ' ~ N(0, 1)``, clipped at zero).
    update : {"ideal", "pulsed", "write_verify"}
        Update model applied by :meth:`Network.apply_update` (see :mod:`noisesim.update`).
    dw_min, asymmetry, c2c : float
        Pulsed update: minimal step relative to ``w_max`` (``0.0016`` ≈ 1 250 states over
        ``[-w_max, w_max]``), up/down asymmetry (up steps ``× (1 + asymmetry)``, down steps
        ``× (1 − asymmetry)``) and cycle-to-cycle noise of each step, relative to the step.
    access : tuple of str
        Access levels the device grants to learning rules (see module docstring).
    """

    w_max: float | None = None
    g_max: float = 25.0
    n_levels: int | None = None
    prog_noise: float = 0.0
    read_noise: float = 0.0
    node_noise: float = 0.0
    in_bits: int | None = None
    in_bound: float | None = None
    out_bits: int | None = None
    out_bound: float | None = None
    tile_rows: int | None = None
    tile_cols: int | None = None
    drift_nu: float = 0.0
    drift_nu_std: float = 0.0
    t0: float = 1.0
    stuck_off: float = 0.0
    stuck_on: float = 0.0
    d2d: float = 0.0
    update: str = "ideal"
    dw_min: float = 0.001
    asymmetry: float = 0.0
    c2c: float = 0.0
    access: tuple = field(default=("observe",))
    w_max_mode: str = "absolute"
    prog_noise_poly: tuple = ()
    out_noise: float = 0.0
    io_scaling: str = "none"
    drift_compensation: bool = False

    def __post_init__(self):
        for name in _RANGES:
            _check(name, getattr(self, name))
        from .update import MODELS  # the registry of update models (noisesim.update imports this module)

        for name, allowed in (("update", tuple(MODELS)), ("w_max_mode", W_MAX_MODES), ("io_scaling", IO_SCALINGS)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"DeviceConfig.{name}={getattr(self, name)!r} is not known; allowed: {list(allowed)}")
        if not isinstance(self.drift_compensation, bool):
            raise ValueError(f"DeviceConfig.drift_compensation={self.drift_compensation!r} must be True or False")
        poly = self.prog_noise_poly
        if isinstance(poly, (str, bytes)) or not hasattr(poly, "__iter__"):
            raise ValueError(f"DeviceConfig.prog_noise_poly={poly!r} must be a sequence of at most 4 numbers")
        poly = tuple(poly)
        if len(poly) > 4 or not all(isinstance(c, (int, float)) and not isinstance(c, bool) and math.isfinite(c) and abs(c) <= 1 for c in poly):
            raise ValueError(
                f"DeviceConfig.prog_noise_poly={poly!r} is out of range; allowed: at most 4 finite "
                "coefficients in [-1, 1] (relative to g_max)"
            )
        object.__setattr__(self, "prog_noise_poly", tuple(float(c) for c in poly))
        access = self.access
        if isinstance(access, str):
            access = (access,)
        access = tuple(access)
        for a in access:
            if a not in ACCESS_LEVELS:
                raise ValueError(f"DeviceConfig.access contains {a!r}; allowed: {list(ACCESS_LEVELS)}")
        if "observe" not in access:
            raise ValueError(f"DeviceConfig.access={access!r} must include 'observe'")
        object.__setattr__(self, "access", tuple(a for a in ACCESS_LEVELS if a in access))
        if self.stuck_off + self.stuck_on > 1:
            raise ValueError(
                f"DeviceConfig.stuck_off + stuck_on = {self.stuck_off + self.stuck_on:g} exceeds 1; "
                "allowed: fractions summing to at most 1"
            )
        for bits, bound in (("in_bits", "in_bound"), ("out_bits", "out_bound")):
            if getattr(self, bits) is not None and getattr(self, bound) is None:
                raise ValueError(f"DeviceConfig.{bound}=None is not allowed when {bits} is set; allowed range: (0, ∞)")
        if self.update != "ideal" and self.w_max is None:
            raise ValueError(f"DeviceConfig.update={self.update!r} needs a weight range: set w_max in (0, ∞)")
        for name in ("n_levels", "prog_noise", "prog_noise_poly", "stuck_off", "stuck_on", "d2d", "drift_nu"):
            if getattr(self, name) and self.w_max is None:
                raise ValueError(f"DeviceConfig.{name}={getattr(self, name)!r} needs a conductance mapping: set w_max in (0, ∞)")

    # -- construction -------------------------------------------------------------------
    @classmethod
    def preset(cls, name: str, **overrides) -> "DeviceConfig":
        """A named preset (see ``noisesim.presets.PRESETS``) with validated overrides."""
        from .presets import PRESETS

        if name not in PRESETS:
            raise ValueError(f"unknown device preset {name!r}; valid presets: {sorted(PRESETS)}")
        base = dict(PRESETS[name].values)
        unknown = set(overrides) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"unknown DeviceConfig field(s) {sorted(unknown)}; valid: {cls.field_names()}")
        base.update(overrides)
        return cls(**base)

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    def replace(self, **changes) -> "DeviceConfig":
        """A copy with some fields changed (validated again)."""
        unknown = set(changes) - set(self.field_names())
        if unknown:
            raise ValueError(f"unknown DeviceConfig field(s) {sorted(unknown)}; valid: {self.field_names()}")
        return dataclasses.replace(self, **changes)

    def grants(self, level: str) -> bool:
        return level in self.access

    # -- serialisation -------------------------------------------------------------------
    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["access"] = list(self.access)
        d["prog_noise_poly"] = list(self.prog_noise_poly)
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict) -> "DeviceConfig":
        unknown = set(d) - set(cls.field_names())
        if unknown:
            raise ValueError(f"unknown DeviceConfig field(s) {sorted(unknown)}; valid: {cls.field_names()}")
        d = dict(d)
        if "access" in d:
            d["access"] = tuple(d["access"])
        if "prog_noise_poly" in d:
            d["prog_noise_poly"] = tuple(d["prog_noise_poly"])
        return cls(**d)
