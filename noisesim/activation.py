"""Activation functions and their derivatives, evaluated at observed pre-activations."""
from __future__ import annotations

from dataclasses import dataclass

from . import _kernels
from .backend import get_array_module

ACTIVATIONS = ("leaky_relu", "tanh", "sigmoid", "linear")


@dataclass(frozen=True)
class Activation:
    """``f`` and ``f′``; ``slope`` is the leaky-ReLU negative slope.

    Default slope 0.2, as ``tf.nn.leaky_relu`` in the node-perturbation authors' code
    (PyTorch's default is 0.01).
    """

    name: str = "leaky_relu"
    slope: float = 0.2

    def __post_init__(self):
        if self.name not in ACTIVATIONS:
            raise ValueError(f"activation={self.name!r} is not known; allowed: {list(ACTIVATIONS)}")
        if not 0.0 <= self.slope < 1.0:
            raise ValueError(f"leaky-ReLU slope={self.slope!r} is out of range; allowed range: [0, 1)")

    def __call__(self, a):
        xp = get_array_module(a)
        if self.name == "leaky_relu":      # max(a, s·a) = leaky ReLU for 0 ≤ s < 1 (one pass, no mask)
            return _kernels.leaky_relu(a, self.slope)
        if self.name == "tanh":
            return xp.tanh(a)
        if self.name == "sigmoid":
            return 1 / (1 + xp.exp(-a))
        return a

    def grad(self, a):
        """``f′(a)``."""
        xp = get_array_module(a)
        if self.name == "leaky_relu":
            return xp.where(a > 0, a.dtype.type(1), a.dtype.type(self.slope))
        if self.name == "tanh":
            return 1 - xp.tanh(a) ** 2
        if self.name == "sigmoid":
            s = 1 / (1 + xp.exp(-a))
            return s * (1 - s)
        return xp.ones_like(a)
