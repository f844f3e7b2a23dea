"""Per-sample losses and their gradients with respect to the network output.

Reductions (they set the effective learning rate, so they are stated here once):

* ``cce`` — softmax cross-entropy on one-hot targets, **summed over classes**, per sample
  ``L = −Σ_k t_k log softmax(y)_k``; gradient ``softmax(y) − t``.
* ``mse`` — squared error **averaged over outputs**, per sample ``L = (1/n) Σ_k (y_k − t_k)²``;
  gradient ``2 (y − t) / n``.

Batch losses are means over samples. Perturbation rules form ``δL`` per sample, before any
reduction.
"""
from __future__ import annotations

from dataclasses import dataclass

from noisesim.backend import get_array_module

LOSSES = ("cce", "mse")


@dataclass(frozen=True)
class Loss:
    name: str = "cce"

    def __post_init__(self):
        if self.name not in LOSSES:
            raise ValueError(f"loss={self.name!r} is not known; allowed: {list(LOSSES)}")

    def per_sample(self, y, t):
        """Loss of each sample; ``y``, ``t`` of shape ``(..., n)`` → ``(...)``."""
        xp = get_array_module(y)
        if self.name == "cce":
            m = y.max(axis=-1, keepdims=True)
            z = y - m
            lse = xp.log(xp.exp(z).sum(axis=-1))
            return lse - (t * z).sum(axis=-1)
        d = y - t
        return (d * d).mean(axis=-1)

    def grad(self, y, t):
        """``∂L_b/∂y_b`` per sample, shape of ``y``."""
        xp = get_array_module(y)
        if self.name == "cce":
            z = xp.exp(y - y.max(axis=-1, keepdims=True))
            return z / z.sum(axis=-1, keepdims=True) - t
        return (2.0 / y.shape[-1]) * (y - t)
