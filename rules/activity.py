"""Activity-based node perturbation: ANP, and DANP with ``decorrelate=True`` (Algorithm 1).

ANP measures the perturbation instead of knowing it. For a pair of passes with activity
difference ``δa = ã⁽¹⁾ − ã⁽²⁾`` (or ``ã − a`` against a clean pass) and loss difference
``δL = L⁽¹⁾ − L⁽²⁾``, both formed **per sample**,

    ΔW_l = ⟨ N δL δa_l / ‖δa‖² · x*ᵀ_{l−1} ⟩

where ``‖δa‖²`` is summed over *all* layers of one sample and ``N`` counts every perturbed
unit, the output layer included (3 082 for 3×1024+10). ``x*_{l−1}`` is the (decorrelated)
input of the reference pass. With ``samples=K`` the estimate is averaged over K
perturbations. The perturbation is the device's intrinsic noise; nothing is injected.

Baselines: ``"clean"`` — one noise-gated reference pass and K noisy passes (needs
``clean``; K+1 passes); ``"noisy"`` — K pairs of noisy passes, nothing gated and nothing
read (2K passes; needs only ``observe``).

A sample whose perturbation vanished (``‖δa‖ = 0``, e.g. below one ADC step) contributes
nothing rather than dividing by zero.

ANP is biased past the first hidden layer. With a clean reference and node noise ε_m of
variance σ² entering every layer's pre-activation, ``δa_l = Σ_{m≤l} J_{l←m} ε_m`` with
``J_{l←m} = ∂a_l/∂a_m`` (``J_{l←l} = I``), and to first order ``δL = Σ_m g_mᵀ ε_m`` with
``g_m = ∂L/∂a_m = J_{l←m}ᵀ g_l`` for ``m ≤ l``; noise of layers above l is independent of
``δa_l``. Hence

    E[δa_l δL] = σ² (I + Σ_{m<l} J_{l←m} J_{l←m}ᵀ) g_l ,

not ``σ² g_l``: the noise propagated from the layers below correlates with δL through their
own gradients. In the first hidden layer the sum is empty and ANP equals NP (unbiased); deeper,
the expected update is tilted by the upstream Jacobians' Gram matrices. More samples shrink
the variance, not this bias, so ANP's angle to BP levels off at large K while NP's keeps
falling: on MNIST-1D 40-256-256-256-10 (batch 1000, σ = 1e-3) the last hidden layer goes
45.1° → 42.1° from K = 100 to 300, NP's 38.4° → 24.9°. Tests: ``tests/test_anp_bias.py``
checks the formula against ANP's average on a small network and this floor. (The paper's
§3.3 motivates ANP by δa carrying all the noise; the bias is the price of also carrying the
upstream layers' noise in δa_l.)

Record keys: ``dL (K, B)``; ``da`` — per layer ``(K, B, n_l)``; ``inputs`` — per layer
``(K|1, B, n_{l−1})`` (1 when the K samples share a clean reference pass).
"""
from __future__ import annotations

from noisesim.backend import get_array_module

from .base import Estimate, host_float
from .perturbation import PerturbationRule, contract


def activity_updates(dL, da, xs, n_units: int) -> list:
    """ANP update directions from what the rule consumed.

    Parameters
    ----------
    dL : array (K, B)
        Per-sample loss differences.
    da : list of arrays (K, B, n_l)
        Per-layer activity differences.
    xs : list of arrays (K, B, n_{l-1}) or (1, B, n_{l-1})
        Per-layer reference inputs (shared by all K when the first axis is 1).
    n_units : int
        N, the number of perturbed units.
    """
    xp = get_array_module(dL)
    norm2 = sum((d * d).sum(axis=-1) for d in da)
    safe = xp.where(norm2 > 0, norm2, 1)
    c = xp.where(norm2 > 0, n_units * dL / safe, 0).astype(dL.dtype, copy=False)
    return [contract(c[..., None] * d, x) for d, x in zip(da, xs)]


class ActivityNodePerturbation(PerturbationRule):
    """ANP; ``decorrelate=True`` gives DANP.

    Parameters
    ----------
    baseline : {"clean", "noisy"}
        Reference pass: noise-gated (needs ``clean``) or a second noisy pass.
    samples : int
        Perturbations K averaged per update.

    Example
    -------
    >>> rule = rules.make("danp", baseline="noisy", samples=1, lr=1e-3)   # doctest: +SKIP
    """

    name = "anp"
    needs = ("observe",)

    def forward_passes(self, n_layers: int | None = None) -> int:
        return self.samples + 1 if self.baseline == "clean" else 2 * self.samples

    def estimate(self, net, x, t) -> Estimate:
        K = self.samples
        t = net.backend.asarray(t)
        if self.baseline == "clean":
            p = net.forward_stacked(x, K + 1, clean=[True] + [False] * K)
            L = self.loss.per_sample(p.out, t)               # (K+1, B)
            dL = L[1:] - L[0]
            da = [a[1:] - a[0] for a in p.pre]
            xs = [xi[:1] for xi in p.inputs]
            ref = 0
        else:
            p = net.forward_stacked(x, 2 * K)
            L = self.loss.per_sample(p.out, t)               # (2K, B): pairs (2k, 2k+1)
            dL = L[0::2] - L[1::2]
            da = [a[0::2] - a[1::2] for a in p.pre]
            xs = [xi[1::2] for xi in p.inputs]
            ref = 1
        record = {"dL": dL, "da": da, "inputs": xs}
        return Estimate(self.updates_from_record(record), host_float(L[ref].mean()), p.passes,
                        [xi[ref] for xi in p.inputs], p.out[ref], L[ref], record)

    def updates_from_record(self, record: dict) -> list:
        """ANP updates from ``dL (K, B)``, ``da[l] (K, B, n_l)``, ``inputs[l] (K|1, B, n)``.

        N is the total number of perturbed units, read off the recorded shapes.
        """
        n_units = sum(d.shape[-1] for d in record["da"])
        return activity_updates(record["dL"], record["da"], record["inputs"], n_units)
