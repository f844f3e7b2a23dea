"""Feedback alignment (Lillicrap et al. 2016) and direct feedback alignment (Nøkland 2016).

Backprop's error path with the transposed weights replaced by fixed random matrices, so the
rule needs no transposed read — only the observed pass:

    FA:   g_L = ∂L/∂a_L,   g_{l−1} = f′(a_{l−1}) ⊙ R_{l−1}ᵀ (B_l g_l)
    DFA:  g_L = ∂L/∂a_L,   g_l = f′(a_l) ⊙ (D_l g_L)
    ΔW_l = ⟨ g_l x*ᵀ_{l−1} ⟩

with ``f′`` at the observed pre-activations of one noisy pass. ``B_l`` has the shape of
``W_l`` (without a bias column; for a convolution a fixed random kernel, applied per position
and folded back like BP's transposed read) and the He scale ``N(0, 2/n_in)``; ``D_l`` maps the
output error to every unit of layer ``l`` (every channel at every position) with
``N(0, 1/n_L)``. Both are drawn once, from the network's ``"rule"`` stream, when the
rule is initialised on a network, and never change. The feedback is computed digitally
(``1 + feedback`` in the spec's table). ``R`` is the decorrelation matrix of the D variant
(identity when off). The forward weights come to align with ``B`` ("the FA-BP angle falls
below 90°"), which is how FA learns.

Naming: ``dfa`` is *direct* feedback alignment, as in the spec's table; the decorrelated
variants are ``d-fa`` (label ``D-FA``) and ``d-dfa`` (``D-DFA``).

Record keys (as BP's): ``g`` — per layer ``(B, n_l)``; ``inputs`` — per layer ``(B, n_{l−1})``.
"""
from __future__ import annotations

import numpy as np

from noisesim.layers import rows

from .base import Estimate, Rule, batch_outer, forward_with_output_error, host_float, layout


class FeedbackAlignment(Rule):
    """FA, or DFA with ``direct=True``; ``decorrelate=True`` for the decorrelated variants.

    Parameters
    ----------
    direct : bool
        Send the output error straight to every layer through its own fixed random matrix
        (DFA, Nøkland 2016) instead of layer by layer (FA).
    **kw
        The options of :class:`rules.base.Rule` (``lr``, ``optimizer``, ``loss``…).

    Example
    -------
    >>> rule = rules.make("fa", optimizer="sgd", lr=1e-2)   # doctest: +SKIP
    """

    name = "fa"
    needs = ("observe",)
    state_attrs = ("feedback",)

    def __init__(self, *, direct: bool = False, **kw):
        super().__init__(**kw)
        self.direct = bool(direct)
        self.feedback: list | None = None

    @property
    def label(self) -> str:
        return ("D-" if self.decorrelate else "") + ("DFA" if self.direct else "FA")

    def _options(self) -> dict:
        return {"direct": self.direct}

    def forward_passes(self, n_layers: int | None = None) -> int:
        return 1

    def init(self, net) -> None:
        super().init(net)
        self.feedback = self._draw(net)

    def _draw(self, net) -> list:
        rng, sizes, lays = net.random("rule"), net.sizes, layout(net)
        if self.direct:
            return [rng.normal((sizes[-1], n), float(np.sqrt(1.0 / sizes[-1]))) for n in sizes[1:-1]]
        return [None] + [rng.normal((lay.n_out, lay.width), float(np.sqrt(2.0 / lay.width))) for lay in lays[1:]]

    def _feedback_fits(self, net) -> bool:
        if self.feedback is None:
            return False
        want = len(net.sizes) - 2 if self.direct else len(net.sizes) - 1
        return len(self.feedback) == want

    def estimate(self, net, x, t) -> Estimate:
        if not self._feedback_fits(net):
            self.feedback = self._draw(net)
        p, losses, e = forward_with_output_error(self, net, x, t)
        L = net.n_layers
        g = [None] * L
        g[L - 1] = e
        if self.direct:
            for l in range(L - 1):
                g[l] = (e @ self.feedback[l]).reshape(p.pre[l].shape) * net.act_grad(l, p.pre[l])
        else:
            for l in range(L - 1, 0, -1):
                d = (rows(g[l]) @ self.feedback[l]).reshape(*g[l].shape[:-1], -1)
                g[l - 1] = net.input_gradient(l, d) * net.act_grad(l - 1, p.pre[l - 1])
        record = {"g": g, "inputs": p.inputs}
        return Estimate(self.updates_from_record(record), host_float(losses.mean()), 1,
                        p.inputs, p.out, losses, record)

    def updates_from_record(self, record: dict) -> list:
        """``ΔW_l = ⟨g_l x*ᵀ_{l−1}⟩`` from per-sample ``g`` and inputs, each ``(B, n)``."""
        return [batch_outer(g, x) for g, x in zip(record["g"], record["inputs"])]
