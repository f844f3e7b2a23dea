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

Passes: with ``"clean"`` the reference pass is noise-gated and the same for every sample,
so it runs once: ``K·L + 1`` passes; with ``"noisy"`` every sample has its own noisy
reference: ``K (L+1)``.

Record keys: ``dL (K, L, B)``; ``eps`` — per layer ``(K, B, n_l)``, the ``v_l`` injected
in pass l (drawn sample by sample); ``inputs`` — per layer ``(K|1, B, n_{l−1})`` of the
reference passes (1 where shared: the clean reference, layer 0); or ``updates`` (see
:mod:`rules.activity`).
"""
from __future__ import annotations

from noisesim.backend import get_array_module
from noisesim.layers import per_sample, sample_sum, unit_count

from .base import Estimate, host_float
from .node import draw_samples
from .perturbation import Contraction, InjectingRule, concat, parts, record_inputs, stacked, unit_shapes


def _add_iterative(acc, dL, eps, xs, shared=None) -> None:
    xp = get_array_module(dL)
    for l, (v, x) in enumerate(zip(eps, xs)):
        n2 = sample_sum(v * v)                                   # (K, B)
        safe = xp.where(n2 > 0, n2, 1)
        c = xp.where(n2 > 0, unit_count(v) * dL[:, l] / safe, 0).astype(v.dtype, copy=False)
        acc.add(l, per_sample(c, v) * v, x, None if shared is None else shared[l], owned=True)


def iterative_updates(dL, eps, xs) -> list:
    """INP update directions ``⟨N_l δL_l v_l/‖v_l‖² x*ᵀ⟩`` per layer."""
    acc = Contraction(len(eps))
    _add_iterative(acc, dL, eps, xs)
    return acc.result(dL.shape[0] * dL.shape[2])


class IterativeNodePerturbation(InjectingRule):
    """INP; ``decorrelate=True`` gives DINP.

    Parameters
    ----------
    baseline : {"clean", "noisy"}
    samples : int
        Perturbations K per layer averaged per update; ``K·L + 1`` passes with a clean
        baseline (one clean reference serves every sample), ``K (L+1)`` with a noisy one.
    sigma : float
        Std of the injected perturbation.
    memory_budget, record
        As for :class:`rules.activity.ActivityNodePerturbation`.

    Example
    -------
    >>> rule = rules.make("dinp", baseline="clean", samples=10)   # doctest: +SKIP
    """

    name = "inp"

    def forward_passes(self, n_layers: int | None = None) -> int:
        """``K·L + 1`` (clean baseline) or ``K (L+1)`` (noisy); ``None`` when the depth is not given."""
        if n_layers is None:
            return None
        return self.samples * n_layers + 1 if self.baseline == "clean" else self.samples * (n_layers + 1)

    def _record_floats(self, net) -> int:
        return net.n_layers + super()._record_floats(net) - 1

    def _estimate(self, net, x, t) -> Estimate:
        K, L_, B, xp, dt = self.samples, net.n_layers, len(x), net.xp, net.dtype
        clean = self.baseline == "clean"
        # clean: one noise-gated reference, then per sample one pass per layer; noisy: per
        # sample its own noisy reference and one pass per layer
        head, per = (1, L_) if clean else (0, L_ + 1)
        P = head + per * K
        chunk, keep = self._plan(net, B, per)
        rng = net.random("inject")
        t = net.backend.asarray(t)
        st = stacked(net, x, P, clean=[True] * P if clean else None)
        shapes = unit_shapes(net, B)
        acc = Contraction(L_)
        rec = {"dL": [], "eps": [[] for _ in range(L_)], "inputs": [[] for _ in range(L_)]}
        ref = None
        shared = [clean or l == 0 for l in range(L_)]
        own = (lambda a: a.copy()) if chunk < K else (lambda a: a)    # parts must not keep views of a part
        for k0, k1 in parts(K, chunk):
            k = k1 - k0
            eps = draw_samples(rng, k, shapes, self.sigma)[0]
            lo = 0 if k0 == 0 else head + per * k0
            n = head + per * k1 - lo
            off = head if k0 == 0 else 0
            g = 0 if clean else 1                   # the perturbed passes of a sample start here
            inject = []
            for l, shape in enumerate(shapes):
                z = xp.zeros((n, *shape), dtype=dt)
                z[off + g + l::per][:k] = eps[l]
                inject.append(z)
            p = st.run(lo, lo + n, inject=inject)
            del inject
            Ls = self.loss.per_sample(p.out, t)
            if k0 == 0:
                ref = (own(Ls[0]), [own(xi[0]) for xi in p.inputs], own(p.out[0]))   # not views: parts free their passes
                if clean:
                    xs_ref = [own(xi[:1]) for xi in p.inputs]
            Lk = Ls[off:].reshape(k, per, B)
            if clean:
                dL = Lk - ref[0]                                     # (k, L, B)
                xs = xs_ref
            else:
                dL = Lk[:, 1:] - Lk[:, :1]
                xs = [xi[off:].reshape(k, per, *xi.shape[1:])[:, 0] for xi in p.inputs]
            _add_iterative(acc, dL, eps, xs, shared)
            if keep:
                rec["dL"].append(dL)
                for l in range(L_):
                    rec["eps"][l].append(eps[l])
                    rec["inputs"][l].append(xs[l])
            del p, Ls, Lk, dL, xs, eps
        updates = acc.result(K * B)
        if keep:
            record = {"dL": concat(xp, rec["dL"]), "eps": [concat(xp, e) for e in rec["eps"]],
                      "inputs": [record_inputs(xp, xi, sh) for xi, sh in zip(rec["inputs"], shared)]}
        else:
            record = {"updates": updates}
        Lr, xr, out = ref
        return Estimate(updates, host_float(Lr.mean()), P, xr, out, Lr, record,
                        finite=tuple(updates) if acc.finite else ())

    def updates_from_record(self, record: dict) -> list:
        """INP updates from ``dL (K, L, B)``, ``eps[l] (K, B, n_l)``, ``inputs[l]`` (or the
        summed ``updates`` of an estimate that kept no full record)."""
        if "updates" in record:
            return [u.copy() for u in record["updates"]]
        return iterative_updates(record["dL"], record["eps"], record["inputs"])
