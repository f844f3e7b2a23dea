"""Weight perturbation (Jabri & Flower 1992): WP, and DWP with ``decorrelate=True``.

A known perturbation ``Ω_l ~ N(0, σ²)`` is added to **every weight of every layer** for one
pass (through the device's ``inject`` source, :meth:`Network.forward_weight_perturbed`). The
whole batch sees the same perturbed weights, so the batch-mean loss difference is the
right pairing here (one Ω per pass, not per sample):

    ΔW_l = ⟨δL⟩_batch · Ω_l / σ²                              (baseline "clean" or "noisy")
    ΔW_l = ⟨δL⟩_batch · (Ω⁽¹⁾_l − Ω⁽²⁾_l) / (2σ²)              (baseline "noisy-known")

averaged over K perturbations with ``samples=K``. Unbiased to first order in σ and of very
high variance: every one of the ~|W| weights is a separate random direction.

Baselines as for NP (:mod:`rules.node`): ``"clean"`` gates intrinsic noise in every pass
(needs ``clean`` + ``inject``), ``"noisy"`` perturbs the weights of one of two noisy passes,
``"noisy-known"`` perturbs both with known ``Ω⁽¹⁾, Ω⁽²⁾``.

Record keys: ``dL (K, B)``; ``omega`` — per layer ``(K, n_out, n_in)``; ``omega2``
(``"noisy-known"`` only). σ comes from the rule's config.
"""
from __future__ import annotations

from .base import Estimate, host_float
from .perturbation import BASELINES, InjectingRule, known_layout


def weight_updates(dL, omega, sigma: float, omega2=None) -> list:
    """WP update directions from per-sample ``dL (K, B)`` and per-layer ``Ω (K, n_out, n_in)``."""
    c = dL.mean(axis=1)                                           # (K,): one Ω per pass
    K = dL.shape[0]
    if omega2 is None:
        return [(c[:, None, None] * o).sum(axis=0) / (K * sigma * sigma) for o in omega]
    return [(c[:, None, None] * (o1 - o2)).sum(axis=0) / (2 * K * sigma * sigma)
            for o1, o2 in zip(omega, omega2)]


class WeightPerturbation(InjectingRule):
    """WP; ``decorrelate=True`` gives DWP.

    Parameters
    ----------
    baseline : {"clean", "noisy", "noisy-known"}
    samples : int
        Weight perturbations K averaged per update.
    sigma : float
        Std of the weight perturbation.

    Example
    -------
    >>> rule = rules.make("wp", baseline="clean", samples=10, sigma=1e-3)   # doctest: +SKIP
    """

    name = "wp"
    baselines = BASELINES

    def forward_passes(self, n_layers: int | None = None) -> int:
        return known_layout(self.baseline, self.samples)[0]

    def estimate(self, net, x, t) -> Estimate:
        K, xp = self.samples, net.xp
        P, clean, first, second, ref = known_layout(self.baseline, K)
        rng = net.random("inject")
        shapes = [(n_out, n_in) for n_in, n_out in zip(net.sizes[:-1], net.sizes[1:])]
        omega = [rng.normal((K, *s), self.sigma) for s in shapes]
        omega2 = None
        if self.baseline == "noisy-known":
            omega2 = [rng.normal((K, *s), self.sigma) for s in shapes]
        full = []
        for l, s in enumerate(shapes):
            o = xp.zeros((P, *s), dtype=net.dtype)
            o[first] = omega[l]
            if omega2 is not None:
                o[second] = omega2[l]
            full.append(o)
        p = net.forward_weight_perturbed(x, full, clean=clean)
        L = self.loss.per_sample(p.out, net.backend.asarray(t))     # (P, B)
        record = {"dL": L[first] - L[second], "omega": omega}
        if omega2 is not None:
            record["omega2"] = omega2
        return Estimate(self.updates_from_record(record), host_float(L[ref].mean()), P,
                        [xi[ref] for xi in p.inputs], p.out[ref], L[ref], record)

    def updates_from_record(self, record: dict) -> list:
        """WP updates from ``dL (K, B)`` and ``omega`` (and ``omega2``); σ from the config."""
        return weight_updates(record["dL"], record["omega"], self.sigma, record.get("omega2"))
