"""Node perturbation with known injected perturbations: NP, and DNP with ``decorrelate=True``.

A perturbation ``ε_l ~ N(0, σ²)`` is injected into the pre-activations of **every** layer
at once (through the device's ``inject`` source; intrinsic noise stays on top unless the
baseline gates it). With the per-sample loss difference ``δL = L⁽¹⁾ − L⁽²⁾``,

    ΔW_l = ⟨ δL ε_l / σ² · x*ᵀ_{l−1} ⟩                     (baseline "clean" or "noisy")
    ΔW_l = ⟨ δL (ε⁽¹⁾_l − ε⁽²⁾_l) / (2σ²) · x*ᵀ_{l−1} ⟩    (baseline "noisy-known")

``E[εεᵀ]/σ² = I``, so the first form is unbiased to first order in σ; the second, with both
passes perturbed by known ``ε⁽¹⁾, ε⁽²⁾``, is Cho et al.'s (2011) symmetric estimator.

* ``"clean"`` (needs ``clean`` + ``inject``; K+1 passes): intrinsic noise gated in every
  pass, so the perturbed pass carries exactly the known ε — the paper's NP.
* ``"noisy"`` (needs ``inject``; 2K passes): pass 1 carries ``ε⁽¹⁾`` + intrinsic noise, the
  reference pass intrinsic noise only. NP knows only ``ε⁽¹⁾``; the unread noise of both
  passes enters ``δL`` and inflates the variance — the paper's noisy-baseline setting.
* ``"noisy-known"`` (needs ``inject``; 2K passes): both passes injected and known.

Record keys: ``dL (K, B)``; ``eps`` — per layer ``(K, B, n_l)``, the injected ``ε⁽¹⁾``;
``eps2`` (``"noisy-known"`` only) — per layer ``(K, B, n_l)``; ``inputs`` — per layer
``(K|1, B, n_{l−1})``. σ comes from the rule's config.
"""
from __future__ import annotations

from .base import Estimate, host_float
from .perturbation import BASELINES, InjectingRule, contract, injection, known_layout


def node_updates(dL, eps, xs, sigma: float, eps2=None) -> list:
    """NP update directions ``⟨δL ε_l/σ² x*ᵀ⟩`` (or the symmetric form when ``eps2`` is given)."""
    if eps2 is None:
        c = dL / (sigma * sigma)
        return [contract(c[..., None] * e, x) for e, x in zip(eps, xs)]
    c = dL / (2 * sigma * sigma)
    return [contract(c[..., None] * (e1 - e2), x) for e1, e2, x in zip(eps, eps2, xs)]


class NodePerturbation(InjectingRule):
    """NP; ``decorrelate=True`` gives DNP.

    Parameters
    ----------
    baseline : {"clean", "noisy", "noisy-known"}
    samples : int
        Perturbations K averaged per update.
    sigma : float
        Std of the injected perturbation (paper: σ = 1e-3, σ² = 1e-6).

    Example
    -------
    >>> rule = rules.make("dnp", baseline="noisy", sigma=1e-3, lr=1e-4)   # doctest: +SKIP
    """

    name = "np"
    baselines = BASELINES

    def forward_passes(self, n_layers: int | None = None) -> int:
        return known_layout(self.baseline, self.samples)[0]

    def estimate(self, net, x, t) -> Estimate:
        K, xp, dt = self.samples, net.xp, net.dtype
        B = len(x)
        P, clean, first, second, ref = known_layout(self.baseline, K)
        rng = net.random("inject")
        eps = [rng.normal((K, B, n), self.sigma) for n in net.sizes[1:]]
        eps2 = None
        rows = [{first[k]: e[k] for k in range(K)} for e in eps]
        if self.baseline == "noisy-known":
            eps2 = [rng.normal((K, B, n), self.sigma) for n in net.sizes[1:]]
            for r, e in zip(rows, eps2):
                r.update({second[k]: e[k] for k in range(K)})
        inject = [injection(xp, dt, P, B, n, r) for n, r in zip(net.sizes[1:], rows)]
        p = net.forward_stacked(x, P, clean=clean, inject=inject)
        L = self.loss.per_sample(p.out, net.backend.asarray(t))        # (P, B)
        dL = L[first] - L[second]
        xs = [xi[:1] for xi in p.inputs] if self.baseline == "clean" else [xi[second] for xi in p.inputs]
        record = {"dL": dL, "eps": eps, "inputs": xs}
        if eps2 is not None:
            record["eps2"] = eps2
        return Estimate(self.updates_from_record(record), host_float(L[ref].mean()), P,
                        [xi[ref] for xi in p.inputs], p.out[ref], L[ref], record)

    def updates_from_record(self, record: dict) -> list:
        """NP updates from ``dL``, ``eps`` (and ``eps2``), ``inputs``; σ from the config."""
        return node_updates(record["dL"], record["eps"], record["inputs"], self.sigma, record.get("eps2"))
