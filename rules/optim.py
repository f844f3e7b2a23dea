"""Optimizers turning an update direction ΔW into the step the device applies.

Sign convention: ``W ← W − η·ΔW`` for SGD; the returned arrays are the *deltas* to add,
i.e. already negated, so ``Network.apply_update(l, delta)`` receives ``−η·(…)``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

OPTIMIZERS = ("adam", "sgd")


@dataclass
class SGD:
    """``v ← μ v + ΔW``; ``delta = −η v`` (plain SGD when ``momentum=0``)."""

    lr: float = 1e-3
    momentum: float = 0.0
    _v: list = field(default_factory=list, repr=False)

    def init(self, params_like) -> None:
        self._v = [None] * len(params_like)

    def step(self, grads) -> list:
        out = []
        for i, g in enumerate(grads):
            if self.momentum:
                self._v[i] = g.copy() if self._v[i] is None else self.momentum * self._v[i] + g
                g = self._v[i]
            out.append((-self.lr) * g)
        return out

    def state(self) -> dict:
        return {f"v{i}": v for i, v in enumerate(self._v) if v is not None}


@dataclass
class Adam:
    """Adam (Kingma & Ba 2015) with the paper's ``β₁=0.9, β₂=0.999, ε=1e-7``.

    ``m ← β₁m + (1−β₁)g``, ``v ← β₂v + (1−β₂)g²``,
    ``delta = −η √(1−β₂ᵗ)/(1−β₁ᵗ) · m / (√v + ε)`` (the Keras form the authors used).
    """

    lr: float = 1e-3
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-7
    t: int = 0
    _m: list = field(default_factory=list, repr=False)
    _v: list = field(default_factory=list, repr=False)

    def init(self, params_like) -> None:
        self.t = 0
        self._m = [None] * len(params_like)
        self._v = [None] * len(params_like)

    def step(self, grads) -> list:
        self.t += 1
        b1, b2 = self.beta1, self.beta2
        lr_t = self.lr * math.sqrt(1 - b2**self.t) / (1 - b1**self.t)
        out = []
        for i, g in enumerate(grads):
            if self._m[i] is None:
                self._m[i] = (1 - b1) * g
                self._v[i] = (1 - b2) * (g * g)
            else:
                self._m[i] *= b1
                self._m[i] += (1 - b1) * g
                self._v[i] *= b2
                self._v[i] += (1 - b2) * (g * g)
            sq = self._v[i] ** 0.5
            out.append((-lr_t) * self._m[i] / (sq + self.eps))
        return out


def make_optimizer(name: str, lr: float, momentum: float = 0.0):
    if name == "adam":
        return Adam(lr=lr)
    if name == "sgd":
        return SGD(lr=lr, momentum=momentum)
    raise ValueError(f"optimizer={name!r} is not known; allowed: {list(OPTIMIZERS)}")
