"""Backpropagation through transposed crossbar reads.

``ΔW_l = ⟨g_l x*ᵀ_{l−1}⟩`` with ``g_L = ∂L/∂a_L`` and, going down,

    g_{l−1} = f′(a_{l−1}) ⊙ R_{l−1}ᵀ (W_lᵀ g_l)

where ``W_lᵀ g_l`` is a transposed read through the crossbar (its own read noise and ADC)
and ``f′`` is evaluated at the *observed* pre-activations of the one noisy forward pass.
A convolution reads ``W_lᵀ`` once per output position and folds the patch gradients back onto
its input (col2im, :meth:`Network.input_gradient`); its ``ΔW_l`` sums over the positions.
Needs ``backward`` access. ``rules.reference.exact_gradients`` is the noise-free software
reference (``oracle``).
"""
from __future__ import annotations

from .base import Estimate, Rule, batch_outer, forward_with_output_error, host_float


class Backprop(Rule):
    """BP on the device (``decorrelate=True`` gives DBP).

    Example
    -------
    >>> rule = rules.make("bp", lr=1e-3)         # doctest: +SKIP
    >>> est = rule.estimate(net, x, t)           # doctest: +SKIP
    """

    name = "bp"
    needs = ("observe", "backward")

    def estimate(self, net, x, t) -> Estimate:
        p, losses, g = forward_with_output_error(self, net, x, t)
        L = net.n_layers
        deltas = [None] * L
        deltas[L - 1] = g
        for l in range(L - 1, 0, -1):
            d = net.input_gradient(l, net.backward_read(l, g))
            g = d * net.act_grad(l - 1, p.pre[l - 1])
            deltas[l - 1] = g
        record = {"g": deltas, "inputs": p.inputs}
        return Estimate(self.updates_from_record(record), host_float(losses.mean()), 1,
                        p.inputs, p.out, losses, record)

    def updates_from_record(self, record: dict) -> list:
        """``ΔW_l = ⟨g_l x*ᵀ_{l−1}⟩`` from per-sample ``g`` and inputs, each ``(B, n)``."""
        return [batch_outer(g, x) for g, x in zip(record["g"], record["inputs"])]
