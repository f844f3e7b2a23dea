"""Named device presets, each number with its literature source.

Each preset is a plain dict of :class:`~noisesim.config.DeviceConfig` values plus a one-line
description and, per field, where the number comes from. ``DeviceConfig.preset(name,
**overrides)`` builds one; ``noisesim list`` shows them.

``ideal``
    The node-perturbation paper's setting: exact weights, only intrinsic node noise
    ``σ = 1e-3`` (σ² = 1e-6), all five access levels.
``pcm``
    Phase-change memory for inference-style use (programmed by program-and-verify):

    * read noise 0.0175 of ``w_max``, output noise 0.04, 8-bit DAC and ADC, output bound 10
      (in units of ``w_max · max|x|``), 512-row tiles, per-layer weight scaling with
      ω = 1 — the standard hardware-aware-training preset of Rasch et al. 2023 (*Nature
      Commun.* 14, 5282; aihwkit ``StandardHWATrainingPreset``: ``w_noise=0.0175``,
      ``out_noise=0.04``, ``inp_res=out_res=254``, ``out_bound=10``, ``max_input_size=512``,
      ``weight_scaling_omega=1``). Input scaling ``abs_max`` stands in for their learned
      input range (aihwkit's noise management).
    * programming noise ``σ(G) = 0.26348 + 1.965 (G/g_max) − 1.1731 (G/g_max)²`` µS at
      ``g_max = 25`` µS (aihwkit's ``PCMLikeNoiseModel``, fitted to Joshi et al. 2020,
      *Nature Commun.* 11, 2473), stored divided by 25 µS;
    * drift ``ν ~ N(0.05, 0.01²)``, ``t₀ = 20`` s: aihwkit's PCM model gives
      ``ν = clamp(−0.0155 ln G + 0.0244, 0.049, 0.1)`` and
      ``σ_ν = clamp(−0.0125 ln G − 0.0059, 0.008, 0.045)`` — 0.049 and 0.008 for
      ``G ≳ 0.3 g_max``; the spec's range is ν 0.05–0.1, σ_ν 0.01–0.045. Global drift
      compensation on, as in aihwkit's ``StandardHWATrainingPreset``.
    * ``w_max = 1.25`` in ``init`` mode: the largest initial weight sits at 80 % of
      ``g_max`` — Rasch et al. map it to 100 % (ω = 1); the 25 % headroom is ours, so that
      on-device training can grow weights (without it the quickstart net's output layer
      saturates).
    * ``update="write_verify"``: PCM is written by iterative program-and-verify with a
      digital target (Nandakumar et al. 2020, *Front. Neurosci.* 14:406, mixed precision).
``reram``
    A ReRAM crossbar trained in place with stochastic pulses (Gokmen & Vlasov 2016, *Front.
    Neurosci.* 10:333; aihwkit ``ReRamSBPresetDevice``, a soft-bounds fit to Gong et al.
    2018, *Nature Commun.* 9, 2102): ``dw_min = 0.002`` of ``w_max``, 30 % device-to-device
    variation of step and bounds (``dw_min_dtod = 0.3``), cycle-to-cycle noise 0.3 of the step
    (Gokmen & Vlasov's 30 %; aihwkit's fit to Gong et al. is far larger, ``dw_min_std = 3.75``
    — set ``c2c`` to try it), 7-bit DAC, 9-bit ADC, output noise 0.06 (Gokmen & Vlasov), output
    bound 20 (aihwkit ``PresetIOParameters``); programming error 1 % of ``g_max`` on the initial
    write (CrossSim's sweeps use 0.25–1.5 %). ``w_max = 1.5`` in ``init`` mode (ours: headroom
    so the soft bounds do not pin the initial weights).
``ecram``
    Electrochemical RAM: small, nearly symmetric steps (aihwkit ``EcRamPresetDevice``, a fit to
    Tang et al. 2018, IEDM): ``dw_min = 0.002``, device-to-device 10 % (``dw_min_dtod = 0.1``),
    cycle-to-cycle 0.3 of the step (``dw_min_std = 0.3``), no up/down asymmetry after shifting
    to the symmetry point (``up_down = 0``); peripheral defaults of aihwkit's
    ``PresetIOParameters``: 7-bit DAC, 9-bit ADC, output bound 20, output noise 0.1. Our soft
    bounds are stronger than Tang's nearly linear steps (aihwkit's ``gamma_up = 0.12``,
    ``gamma_down = 0.51``); ``w_max = 1.5`` in ``init`` mode (ours).

Realistic presets grant ``("observe", "backward")``; add ``inject``/``clean``/``oracle`` with
``access=``. ``pcm`` leaves faults and d2d off (PCM variability is in its programming noise);
the often-quoted ReRAM fault rates of Chen et al. 2015 (*IEEE Trans. Comput.* 64(1): 1.75 %
stuck at 0, 9.04 % stuck at 1) are a ``stuck_off=0.0175, stuck_on=0.0904`` override away.
"""
from __future__ import annotations

from dataclasses import dataclass, field

_REALISTIC_ACCESS = ("observe", "backward")


@dataclass(frozen=True)
class Preset:
    description: str
    values: dict
    sources: dict = field(default_factory=dict)


_RASCH = "Rasch et al. 2023, Nat. Commun. 14:5282 (aihwkit StandardHWATrainingPreset)"
_AIHW_PCM = "aihwkit PCMLikeNoiseModel, fit to Joshi et al. 2020, Nat. Commun. 11:2473"
_GV = "Gokmen & Vlasov 2016, Front. Neurosci. 10:333"
_AIHW_IO = "aihwkit PresetIOParameters"

PRESETS: dict[str, Preset] = {
    "ideal": Preset(
        description="the node-perturbation paper's setting: exact weights, intrinsic node noise σ=1e-3 only",
        values=dict(node_noise=1e-3, access=("observe", "clean", "inject", "backward", "oracle")),
        sources={"node_noise": "Dalm, van Gerven & Ahmad (σ² = 1e-6, Appendix F)"},
    ),
    "pcm": Preset(
        description="phase-change memory (Rasch 2023 HWA preset + aihwkit PCM model): drift, write-verify",
        values=dict(
            w_max=1.25, w_max_mode="init", g_max=25.0,
            prog_noise_poly=(0.26348 / 25, 1.965 / 25, -1.1731 / 25),
            read_noise=0.0175, out_noise=0.04, io_scaling="abs_max",
            in_bits=8, in_bound=1.0, out_bits=8, out_bound=10.0,
            tile_rows=512, tile_cols=512,
            drift_nu=0.05, drift_nu_std=0.01, t0=20.0, drift_compensation=True,
            update="write_verify", access=_REALISTIC_ACCESS,
        ),
        sources={
            "w_max": "ours: 25 % headroom over Rasch 2023's ω = 1 per-layer scaling",
            "g_max": _AIHW_PCM, "prog_noise_poly": _AIHW_PCM,
            "read_noise": _RASCH, "out_noise": _RASCH, "in_bits": _RASCH, "out_bits": _RASCH,
            "out_bound": _RASCH, "tile_rows": _RASCH, "io_scaling": _RASCH + " (noise management)",
            "drift_nu": _AIHW_PCM, "drift_nu_std": _AIHW_PCM, "t0": _AIHW_PCM,
            "drift_compensation": _RASCH + " (GlobalDriftCompensation)",
            "update": "Nandakumar et al. 2020, Front. Neurosci. 14:406",
        },
    ),
    "reram": Preset(
        description="ReRAM trained in place with stochastic pulses (Gokmen & Vlasov 2016; aihwkit ReRamSB)",
        values=dict(
            w_max=1.5, w_max_mode="init", update="pulsed", dw_min=0.002, asymmetry=0.0,
            d2d=0.3, c2c=0.3, prog_noise=0.01, out_noise=0.06, io_scaling="abs_max",
            in_bits=7, in_bound=1.0, out_bits=9, out_bound=20.0, access=_REALISTIC_ACCESS,
        ),
        sources={
            "w_max": "ours: headroom for soft bounds",
            "dw_min": "aihwkit ReRamSBPresetDevice (Gong et al. 2018 fit)",
            "d2d": _GV + "; aihwkit ReRamSBPresetDevice dw_min_dtod", "c2c": _GV,
            "prog_noise": "CrossSim programming-error sweeps (0.25–1.5 % of g_max)",
            "out_noise": _GV, "in_bits": _GV, "out_bits": _GV, "out_bound": _AIHW_IO,
        },
    ),
    "ecram": Preset(
        description="electrochemical RAM: small symmetric pulsed steps (aihwkit EcRam, Tang et al. 2018)",
        values=dict(
            w_max=1.5, w_max_mode="init", update="pulsed", dw_min=0.002, asymmetry=0.0,
            d2d=0.1, c2c=0.3, out_noise=0.1, io_scaling="abs_max",
            in_bits=7, in_bound=1.0, out_bits=9, out_bound=20.0, access=_REALISTIC_ACCESS,
        ),
        sources={
            "w_max": "ours: headroom for soft bounds",
            "dw_min": "aihwkit EcRamPresetDevice (Tang et al. 2018 fit)",
            "d2d": "aihwkit EcRamPresetDevice dw_min_dtod", "c2c": "aihwkit EcRamPresetDevice dw_min_std",
            "asymmetry": "aihwkit EcRamPresetDevice up_down", "out_noise": _AIHW_IO,
            "in_bits": _AIHW_IO, "out_bits": _AIHW_IO, "out_bound": _AIHW_IO,
        },
    ),
}
