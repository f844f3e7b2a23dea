"""Iterative node perturbation: INP, and DINP with ``decorrelate=True``.

INP takes the directional derivative along a known perturbation one layer at a time: for
each sample, one reference pass and L passes, pass ``l`` perturbing **only** layer ``l``
with an injected ``v_l ~ N(0, σ²I)``. With the per-sample ``δL_l = L(pass l) − L(ref)``,

    ΔW_l = ⟨ N_l δL_l v_l / ‖v_l‖² · x*ᵀ_{l−1} ⟩,    N_l = width of layer l

each layer normalised by its own width and its own perturbation's norm (L+1 passes per
sample, not one pass normalised per layer). ``N_l/‖v_l‖² ≈ 1/σ²``, so INP is NP with the
layers perturbed in turn: no other layer's perturbation confounds ``δL_l``, and the
estimate is unbiased (to first order in σ) at every depth.

Baselines (see :mod:`rules.perturbation`): ``"clean"`` gates intrinsic noise in all L+1
passes (needs ``clean`` + ``inject``) — the paper's INP; ``"noisy"`` gates nothing, so
intrinsic noise of every layer, in both passes, adds variance to ``δL_l``.

Record keys: ``dL (K, L, B)``; ``eps`` — per layer ``(K, B, n_l)``, the ``v_l`` injected
in pass l; ``inputs`` — per layer ``(K|1, B, n_{l−1})`` of the reference passes.
"""
from __future__ import annotations

from noisesim.backend import get_array_module

from .base import Estimate, host_float
from .perturbation import InjectingRule, contract, injection


def iterative_updates(dL, eps, xs) -> list:
    """INP update directions ``⟨N_l δL_l v_l/‖v_l‖² x*ᵀ⟩`` per layer."""
    xp = get_array_module(dL)
    out = []
    for l, (v, x) in enumerate(zip(eps, xs)):
        n2 = (v * v).sum(axis=-1)                                # (K, B)
        safe = xp.where(n2 > 0, n2, 1)
        c = xp.where(n2 > 0, v.shape[-1] * dL[:, l] / safe, 0).astype(v.dtype, copy=False)
        out.append(contract(c[..., None] * v, x))
    return out


class IterativeNodePerturbation(InjectingRule):
    """INP; ``decorrelate=True`` gives DINP.

    Parameters
    ----------
    baseline : {"clean", "noisy"}
    samples : int
        Perturbations K per layer averaged per update; ``K (L+1)`` passes.
    sigma : float
        Std of the injected perturbation.

    Example
    -------
    >>> rule = rules.make("dinp", baseline="clean", samples=10)   # doctest: +SKIP
    """

    name = "inp"

    def forward_passes(self, n_layers: int | None = None) -> int:
        """``K (L+1)``; ``None`` when the depth is not given."""
        return None if n_layers is None else self.samples * (n_layers + 1)

    def estimate(self, net, x, t) -> Estimate:
        K, L, B = self.samples, net.n_layers, len(x)
        G = L + 1                                                # passes per sample: ref + one per layer
        P = K * G
        rng = net.random("inject")
        eps = [rng.normal((K, B, n), self.sigma) for n in net.sizes[1:]]
        inject = [injection(net.xp, net.dtype, P, B, n, {k * G + 1 + l: eps[l][k] for k in range(K)})
                  for l, n in enumerate(net.sizes[1:])]
        clean = [True] * P if self.baseline == "clean" else None
        p = net.forward_stacked(x, P, clean=clean, inject=inject)
        Ls = self.loss.per_sample(p.out, net.backend.asarray(t)).reshape(K, G, B)
        dL = Ls[:, 1:] - Ls[:, :1]                               # (K, L, B)
        xs = [xi.reshape(K, G, B, -1)[:, 0] for xi in p.inputs]  # reference inputs (K, B, n)
        record = {"dL": dL, "eps": eps, "inputs": xs}
        return Estimate(self.updates_from_record(record), host_float(Ls[0, 0].mean()), P,
                        [xi[0] for xi in p.inputs], p.out[0], Ls[0, 0], record)

    def updates_from_record(self, record: dict) -> list:
        """INP updates from ``dL (K, L, B)``, ``eps[l] (K, B, n_l)``, ``inputs[l]``."""
        return iterative_updates(record["dL"], record["eps"], record["inputs"])
