"""``quickstart``: DANP from two noisy passes next to backprop on the ideal device.

A 64-256-256-256-10 leaky-ReLU network on scikit-learn's digits, every MVM on a simulated
crossbar with intrinsic node noise σ = 1e-3 (the ``ideal`` preset). DANP learns from the
difference of two noisy passes — no clean pass, no noise readout; BP uses transposed reads.
Loss: softmax cross-entropy summed over classes, averaged over the batch.
"""
from __future__ import annotations

from .runner import train_rules
from .scenario import register

DEFAULTS = {
    "dataset": "digits",
    "sizes": [64, 256, 256, 256, 10],
    "rules": ["danp", "bp"],
    "rule_options": {
        "danp": {"baseline": "noisy", "lr": 1e-3},
        "bp": {"lr": 1e-3},
    },
    "device": "ideal",
    "device_overrides": {},
    "epochs": 15,
    "batch_size": 32,
    "seed": 0,
    "backend": "auto",
    "dtype": "float32",
    "activation": "leaky_relu",
    "slope": 0.2,
}


@register("quickstart", "DANP (two noisy passes) vs BP on digits, ideal device", DEFAULTS)
def quickstart(cfg: dict, **kw) -> dict:
    return train_rules(cfg, **kw)
