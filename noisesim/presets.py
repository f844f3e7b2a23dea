"""Named device presets.

Each preset is a plain dict of :class:`~noisesim.config.DeviceConfig` values plus a one-line
description and the literature source of every number it sets.
"""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Preset:
    description: str
    values: dict
    sources: dict = field(default_factory=dict)


PRESETS: dict[str, Preset] = {
    "ideal": Preset(
        description="the node-perturbation paper's setting: exact weights, intrinsic node noise σ=1e-3 only",
        values=dict(node_noise=1e-3, access=("observe", "clean", "inject", "backward", "oracle")),
        sources={"node_noise": "Dalm, van Gerven & Ahmad (σ² = 1e-6, Appendix F)"},
    ),
}
