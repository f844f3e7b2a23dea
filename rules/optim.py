"""Optimizers turning an update direction ΔW into the step the device applies.

Sign convention: ``W ← W − η·ΔW`` for SGD; the returned arrays are the *deltas* to add,
i.e. already negated, so ``Network.apply_update(l, delta)`` receives ``−η·(…)``.

An optimizer holds only its hyperparameters. Its state is explicit data, made by
``init(n_layers)`` and carried by the caller (the rule, which saves it with its state)::

    >>> opt = Adam(lr=1e-3)
    >>> state = opt.init(2)                      # {"t": 0, "m": [None, None], "v": [None, None]}
    >>> deltas = opt.update(grads, state)        # doctest: +SKIP

``update`` advances ``state`` in place (no copies of the moments) and returns the deltas.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numba
import numpy as np

OPTIMIZERS = ("adam", "sgd")


def _n(params_like) -> int:
    return params_like if isinstance(params_like, int) else len(params_like)


@dataclass
class SGD:
    """``v ← μ v + ΔW``; ``delta = −η v`` (plain SGD when ``momentum=0``).

    State: ``{"v": [velocity per layer, or None before its first step]}``.
    """

    lr: float = 1e-3
    momentum: float = 0.0
    name = "sgd"

    def init(self, params_like) -> dict:
        """Fresh state for ``params_like`` layers (an int, or a sequence of that length)."""
        return {"v": [None] * _n(params_like)}

    def update(self, grads, state: dict) -> list:
        v, out = state["v"], []
        for i, g in enumerate(grads):
            if self.momentum:
                v[i] = g.copy() if v[i] is None else self.momentum * v[i] + g
                g = v[i]
            out.append((-self.lr) * g)
        return out


@dataclass
class Adam:
    """Adam (Kingma & Ba 2015) with the paper's ``β₁=0.9, β₂=0.999, ε=1e-7``.

    ``m ← β₁m + (1−β₁)g``, ``v ← β₂v + (1−β₂)g²``,
    ``delta = −η √(1−β₂ᵗ)/(1−β₁ᵗ) · m / (√v + ε)`` (the Keras form the authors used).

    State: ``{"t": steps taken, "m": [first moments], "v": [second moments]}`` (``None``
    per layer before its first step).
    """

    lr: float = 1e-3
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-7
    name = "adam"

    def init(self, params_like) -> dict:
        """Fresh state for ``params_like`` layers (an int, or a sequence of that length)."""
        n = _n(params_like)
        return {"t": 0, "m": [None] * n, "v": [None] * n}

    def update(self, grads, state: dict, into=None) -> list:
        """The deltas of one step (see the module docstring).

        ``into``: per layer an array to add the delta to in place (the weights, see
        :meth:`noisesim.Network.update_in_place`), or ``None``. Where the one-pass step serves
        it, the delta is added there as ``w + delta`` rounds it, without an array of its own,
        and that layer's entry of the result is ``None``.
        """
        state["t"] += 1
        t, m, v = state["t"], state["m"], state["v"]
        b1, b2 = self.beta1, self.beta2
        lr_t = self.lr * math.sqrt(1 - b2**t) / (1 - b1**t)
        out = []
        for i, g in enumerate(grads):
            if _fused(g, m[i], v[i]):
                # one pass over g, m, v (the element-wise expressions below, in the same order
                # and precision, so the same bits): an Adam step reads 3 arrays and writes 3,
                # or adds its delta to the weights where it need not write it
                first = m[i] is None
                if first:
                    m[i], v[i] = np.empty_like(g), np.empty_like(g)
                w = None if into is None else into[i]
                add = w is not None and _fused(g, w, w) and w.shape == g.shape
                d = w if add else np.empty_like(g)
                c = g.dtype.type
                _adam_numba(g.reshape(-1), m[i].reshape(-1), v[i].reshape(-1), d.reshape(-1), first, add,
                            c(b1), c(1 - b1), c(b2), c(1 - b2), c(-lr_t), c(self.eps))
                out.append(None if add else d)
                continue
            if m[i] is None:
                m[i] = (1 - b1) * g
                v[i] = (1 - b2) * (g * g)
            else:
                m[i] *= b1
                m[i] += (1 - b1) * g
                v[i] *= b2
                v[i] += (1 - b2) * (g * g)
            sq = v[i] ** 0.5
            out.append((-lr_t) * m[i] / (sq + self.eps))
        return out


def _fused(g, m, v) -> bool:
    """Whether the one-pass Numba Adam step serves these arrays (C-contiguous NumPy floats)."""
    arrs = (g,) if m is None else (g, m, v)
    return all(type(a) is np.ndarray and a.flags.c_contiguous and a.dtype == g.dtype for a in arrs) \
        and g.dtype in (np.float32, np.float64)


@numba.njit(cache=True, error_model="numpy")
def _adam_numba(g, m, v, d, first, add, b1, c1, b2, c2, neg_lr, eps):
    # NumPy's expressions element by element, each rounded to the arrays' precision; add:
    # d ← d + delta (the weights), else d ← delta
    for j in range(g.shape[0]):
        gj = g[j]
        if first:
            mj = c1 * gj
            vj = c2 * (gj * gj)
        else:
            mj = m[j] * b1
            mj = mj + c1 * gj
            vj = v[j] * b2
            vj = vj + c2 * (gj * gj)
        m[j] = mj
        v[j] = vj
        step = (neg_lr * mj) / (np.sqrt(vj) + eps)
        d[j] = d[j] + step if add else step


def make_optimizer(name: str, lr: float, momentum: float = 0.0):
    if name == "adam":
        return Adam(lr=lr)
    if name == "sgd":
        return SGD(lr=lr, momentum=momentum)
    raise ValueError(f"optimizer={name!r} is not known; allowed: {list(OPTIMIZERS)}")
