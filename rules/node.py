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
``(K|1, B, n_{l−1})`` (1 where the samples share their input: the clean reference, layer 0);
or, when K samples do not fit the memory budget in one part, ``updates`` (see
:mod:`rules.activity`). σ comes from the rule's config.

The perturbations are drawn sample by sample (every layer of sample 1, then of sample 2 …;
``noisy-known``: ``ε⁽¹⁾`` then ``ε⁽²⁾`` of each sample), so running the K samples in parts
draws the same numbers.
"""
from __future__ import annotations

from noisesim.layers import per_sample

from .base import Estimate, host_float
from .perturbation import (BASELINES, Contraction, InjectingRule, concat, parts, placed, record_inputs, stacked,
                           unit_shapes)


def _add_node(acc, dL, eps, xs, sigma: float, eps2=None, shared=None) -> None:
    sh = (lambda l: None) if shared is None else (lambda l: shared[l])
    if eps2 is None:
        c = dL / (sigma * sigma)
        for l, (e, x) in enumerate(zip(eps, xs)):
            acc.add(l, per_sample(c, e) * e, x, sh(l), owned=True)
        return
    c = dL / (2 * sigma * sigma)
    for l, (e1, e2, x) in enumerate(zip(eps, eps2, xs)):
        acc.add(l, per_sample(c, e1) * (e1 - e2), x, sh(l), owned=True)


def node_updates(dL, eps, xs, sigma: float, eps2=None) -> list:
    """NP update directions ``⟨δL ε_l/σ² x*ᵀ⟩`` (or the symmetric form when ``eps2`` is given)."""
    acc = Contraction(len(eps))
    _add_node(acc, dL, eps, xs, sigma, eps2)
    return acc.result(dL.shape[0] * dL.shape[1])


def draw_samples(rng, k: int, shapes, sigma: float, copies: int = 1):
    """``copies`` lists of per-layer perturbations ``(k, *shape)`` for k samples, drawn sample by
    sample (for each sample, each copy, each layer), so the numbers of sample ``j`` do not
    depend on how many samples are drawn at once."""
    out = [[[] for _ in shapes] for _ in range(copies)]
    for _ in range(k):
        for c in range(copies):
            for l, shape in enumerate(shapes):
                out[c][l].append(rng.normal(shape, sigma))
    xp = rng.backend.xp
    return [[xp.stack(v) for v in per] for per in out]


class NodePerturbation(InjectingRule):
    """NP; ``decorrelate=True`` gives DNP.

    Parameters
    ----------
    baseline : {"clean", "noisy", "noisy-known"}
    samples : int
        Perturbations K averaged per update.
    sigma : float
        Std of the injected perturbation (paper: σ = 1e-3, σ² = 1e-6).
    memory_budget, record
        As for :class:`rules.activity.ActivityNodePerturbation`.

    Example
    -------
    >>> rule = rules.make("dnp", baseline="noisy", sigma=1e-3, lr=1e-4)   # doctest: +SKIP
    """

    name = "np"
    baselines = BASELINES

    def forward_passes(self, n_layers: int | None = None) -> int:
        return self.samples + 1 if self.baseline == "clean" else 2 * self.samples

    def _record_floats(self, net) -> int:
        return super()._record_floats(net) + (sum(net.sizes[1:]) if self.baseline == "noisy-known" else 0)

    def _estimate(self, net, x, t) -> Estimate:
        K, B, xp, dt = self.samples, len(x), net.xp, net.dtype
        clean = self.baseline == "clean"
        head, per = (1, 1) if clean else (0, 2)
        P = head + per * K
        known2 = self.baseline == "noisy-known"
        chunk, keep = self._plan(net, B, per)
        rng = net.random("inject")
        t = net.backend.asarray(t)
        st = stacked(net, x, P, clean=[True] * P if clean else None)
        shapes = unit_shapes(net, B)
        L_ = net.n_layers
        acc = Contraction(L_)
        rec = {"dL": [], "eps": [[] for _ in range(L_)], "eps2": [[] for _ in range(L_)],
               "inputs": [[] for _ in range(L_)]}
        ref = None
        shared = [clean or l == 0 for l in range(L_)]
        own = (lambda a: a.copy()) if chunk < K else (lambda a: a)    # parts must not keep views of a part
        for k0, k1 in parts(K, chunk):
            k = k1 - k0
            drawn = draw_samples(rng, k, shapes, self.sigma, 2 if known2 else 1)
            eps, eps2 = drawn[0], (drawn[1] if known2 else None)
            lo = 0 if k0 == 0 else head + per * k0
            n = head + per * k1 - lo
            off = head if k0 == 0 else 0                # local index of this part's first sample pass
            inject = placed(xp, dt, n, off, per, shapes, eps, eps2)
            p = st.run(lo, lo + n, inject=inject)
            del inject
            L = self.loss.per_sample(p.out, t)
            if k0 == 0:
                r = 0 if clean else 1
                ref = (own(L[r]), [own(xi[r]) for xi in p.inputs], own(p.out[r]))   # not views: parts free their passes
                if clean:
                    xs_ref = [own(xi[:1]) for xi in p.inputs]
            if clean:
                dL = L[off:] - ref[0]
                xs = xs_ref
            else:
                dL = L[0::2] - L[1::2]
                xs = [xi[1::2] for xi in p.inputs]
            _add_node(acc, dL, eps, xs, self.sigma, eps2, shared)
            if keep:
                rec["dL"].append(dL)
                for l in range(L_):
                    rec["eps"][l].append(eps[l])
                    if known2:
                        rec["eps2"][l].append(eps2[l])
                    rec["inputs"][l].append(xs[l])
            del p, L, dL, xs, eps, eps2, drawn
        updates = acc.result(K * B)
        if keep:
            record = {"dL": concat(xp, rec["dL"]), "eps": [concat(xp, e) for e in rec["eps"]],
                      "inputs": [record_inputs(xp, xi, sh) for xi, sh in zip(rec["inputs"], shared)]}
            if known2:
                record["eps2"] = [concat(xp, e) for e in rec["eps2"]]
        else:
            record = {"updates": updates}
        Lr, xr, out = ref
        return Estimate(updates, host_float(Lr.mean()), P, xr, out, Lr, record,
                        finite=tuple(updates) if acc.finite else ())

    def updates_from_record(self, record: dict) -> list:
        """NP updates from ``dL``, ``eps`` (and ``eps2``), ``inputs``; σ from the config (or
        the summed ``updates`` of an estimate that kept no full record)."""
        if "updates" in record:
            return [u.copy() for u in record["updates"]]
        return node_updates(record["dL"], record["eps"], record["inputs"], self.sigma, record.get("eps2"))
