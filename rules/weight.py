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
(``"noisy-known"`` only), drawn sample by sample; or ``updates`` (see :mod:`rules.activity`).
σ comes from the rule's config. ``Ω x*`` costs a GEMM per pass of its own, so only the
unperturbed ``W x*`` of layer 0 is shared between the passes.
"""
from __future__ import annotations

from .base import Estimate, host_float, layout
from .node import draw_samples
from .perturbation import BASELINES, InjectingRule, concat, parts, placed, stacked


def _add_weight(sums: list, dL, omega, omega2=None) -> None:
    """Add ``⟨δL⟩_batch Ω`` (or ``⟨δL⟩ (Ω⁽¹⁾ − Ω⁽²⁾)``) of each sample, in order, to ``sums``."""
    c = dL.mean(axis=1)                                           # (k,): one Ω per pass
    for l, o in enumerate(omega):
        for k in range(o.shape[0]):
            d = o[k] if omega2 is None else o[k] - omega2[l][k]
            t = c[k] * d
            if sums[l] is None:
                sums[l] = t
            else:
                sums[l] += t


def weight_updates(dL, omega, sigma: float, omega2=None) -> list:
    """WP update directions from per-sample ``dL (K, B)`` and per-layer ``Ω (K, n_out, n_in)``."""
    sums = [None] * len(omega)
    _add_weight(sums, dL, omega, omega2)
    return _scaled(sums, dL.shape[0], sigma, omega2 is not None)


def _scaled(sums, K: int, sigma: float, symmetric: bool) -> list:
    return [u / ((2 if symmetric else 1) * K * sigma * sigma) for u in sums]


class WeightPerturbation(InjectingRule):
    """WP; ``decorrelate=True`` gives DWP.

    Parameters
    ----------
    baseline : {"clean", "noisy", "noisy-known"}
    samples : int
        Weight perturbations K averaged per update.
    sigma : float
        Std of the weight perturbation.
    memory_budget, record
        As for :class:`rules.activity.ActivityNodePerturbation`.

    Example
    -------
    >>> rule = rules.make("wp", baseline="clean", samples=10, sigma=1e-3)   # doctest: +SKIP
    """

    name = "wp"
    baselines = BASELINES

    def forward_passes(self, n_layers: int | None = None) -> int:
        return self.samples + 1 if self.baseline == "clean" else 2 * self.samples

    def _record_floats(self, net) -> int:
        return 1

    def estimate(self, net, x, t) -> Estimate:
        K, B, xp, dt = self.samples, len(x), net.xp, net.dtype
        clean = self.baseline == "clean"
        head, per = (1, 1) if clean else (0, 2)
        P = head + per * K
        known2 = self.baseline == "noisy-known"
        shapes = [(lay.n_out, lay.n_in) for lay in layout(net)]
        W = sum(a * b for a, b in shapes)
        item = xp.dtype(dt).itemsize
        # per sample: the Ω of its passes (and its ⟨Ω x*⟩), and Ω in the record
        chunk, keep = self._plan(net, B, per, extra_bytes=item * W * (per + (2 if known2 else 1)))
        rng = net.random("inject")
        t = net.backend.asarray(t)
        st = stacked(net, x, P, clean=[True] * P if clean else None)
        sums = [None] * net.n_layers
        rec = {"dL": [], "omega": [[] for _ in shapes], "omega2": [[] for _ in shapes]}
        ref = None
        own = (lambda a: a.copy()) if chunk < K else (lambda a: a)    # parts must not keep views of a part
        for k0, k1 in parts(K, chunk):
            k = k1 - k0
            drawn = draw_samples(rng, k, shapes, self.sigma, 2 if known2 else 1)
            omega, omega2 = drawn[0], (drawn[1] if known2 else None)
            lo = 0 if k0 == 0 else head + per * k0
            n = head + per * k1 - lo
            off = head if k0 == 0 else 0
            full = placed(xp, dt, n, off, per, shapes, omega, omega2)
            p = st.run(lo, lo + n, omega=full)
            del full
            L = self.loss.per_sample(p.out, t)
            if k0 == 0:
                r = 0 if clean else 1
                ref = (own(L[r]), [own(xi[r]) for xi in p.inputs], own(p.out[r]))   # not views: parts free their passes
            dL = L[off:] - ref[0] if clean else L[0::2] - L[1::2]
            _add_weight(sums, dL, omega, omega2)
            if keep:
                rec["dL"].append(dL)
                for l in range(len(shapes)):
                    rec["omega"][l].append(omega[l])
                    if known2:
                        rec["omega2"][l].append(omega2[l])
            del p, L, dL, omega, omega2, drawn
        updates = _scaled(sums, K, self.sigma, known2)
        if keep:
            record = {"dL": concat(xp, rec["dL"]), "omega": [concat(xp, o) for o in rec["omega"]]}
            if known2:
                record["omega2"] = [concat(xp, o) for o in rec["omega2"]]
        else:
            record = {"updates": updates}
        Lr, xr, out = ref
        return Estimate(updates, host_float(Lr.mean()), P, xr, out, Lr, record)

    def updates_from_record(self, record: dict) -> list:
        """WP updates from ``dL (K, B)`` and ``omega`` (and ``omega2``); σ from the config (or
        the summed ``updates`` of an estimate that kept no full record)."""
        if "updates" in record:
            return [u.copy() for u in record["updates"]]
        return weight_updates(record["dL"], record["omega"], self.sigma, record.get("omega2"))
