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
``(K|1, B, n_{l−1})`` (1 when the K samples share their input: a clean reference pass, and
the network input of layer 0). When K samples do not fit the memory budget in one part
and ``record`` is not ``True``, the record holds the summed update instead: ``updates`` —
per layer ``ΔW_l``.

Cost: the passes are run as one stack (layer 0's GEMM once for all of them) in parts of as
many samples as fit ``memory_budget``; every part draws the noise the whole stack would and
the sums are formed sample by sample, so the estimate does not depend on the parts.
"""
from __future__ import annotations

from noisesim import _kernels
from noisesim.backend import get_array_module
from noisesim.layers import per_sample, sample_sum, unit_count

from .base import Estimate, host_float
from .perturbation import Contraction, PerturbationRule, concat, parts, record_inputs, stacked


def _differences(firsts, seconds, da):
    """``δa_i = firsts[i] − seconds[i]`` written into ``da[i]`` for each sample ``i`` (``da``
    may be a view of the firsts: in place) and ``‖δa_i‖²`` per sample, shape ``(k, B)``: the
    bits of ``da = firsts − seconds`` and ``sample_sum(da * da)`` in one pass
    (:func:`noisesim._kernels.difference_sumsq`)."""
    xp = get_array_module(da)
    sums = xp.empty(da.shape[:2], da.dtype)
    for i, (f, s) in enumerate(zip(firsts, seconds)):
        B = f.shape[0]
        _, sums[i] = _kernels.difference_sumsq(f.reshape(B, -1), s.reshape(B, -1), out=da[i].reshape(B, -1))
    return sums


def _pair_differences(pre, s: int, ref, in_place: bool):
    """Per layer ``δa`` of a part's passes and their squared norm per sample summed over the
    layers: noisy pairs ``a[s::2] − a[s+1::2]`` (``ref`` None) or ``a[s:] − ref[l]`` (a clean
    reference). ``in_place``: written over the first pass of each pair, which nothing else
    reads afterwards."""
    da, norms = [], []
    for l, a in enumerate(pre):
        firsts = a[s::2] if ref is None else a[s:]
        seconds = a[s + 1::2] if ref is None else [ref[l]] * len(firsts)
        out = firsts if in_place else get_array_module(a).empty_like(firsts)
        norms.append(_differences(firsts, seconds, out))
        da.append(out)
    return da, sum(norms)


def _add_activity(acc, dL, da, xs, n_units: int, shared=None, scratch: bool = False, norm2=None) -> None:
    """Add the ANP terms of the samples ``dL (k, B)``, ``da[l] (k, B, n_l)``, ``xs[l]`` to ``acc``
    (``shared[l]``: see :meth:`Contraction.add`; ``scratch``: ``da`` is not needed afterwards
    and may be overwritten; ``norm2``: ``‖δa‖²`` per sample over all layers, when known)."""
    xp = get_array_module(dL)
    if norm2 is None:
        norm2 = sum(sample_sum(d * d) for d in da)
    safe = xp.where(norm2 > 0, norm2, 1)
    c = xp.where(norm2 > 0, n_units * dL / safe, 0).astype(dL.dtype, copy=False)
    for l, (d, x) in enumerate(zip(da, xs)):
        if scratch:
            d *= per_sample(c, d)
            G = d
        else:
            G = per_sample(c, d) * d
        acc.add(l, G, x, None if shared is None else shared[l], owned=scratch)


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
    acc = Contraction(len(da))
    _add_activity(acc, dL, da, xs, n_units)
    return acc.result(dL.shape[0] * dL.shape[1])


class ActivityNodePerturbation(PerturbationRule):
    """ANP; ``decorrelate=True`` gives DANP.

    Parameters
    ----------
    baseline : {"clean", "noisy"}
        Reference pass: noise-gated (needs ``clean``) or a second noisy pass.
    samples : int
        Perturbations K averaged per update.
    memory_budget : float, optional
        Bytes the stacked passes may hold at once (default
        ``rules.perturbation.MEMORY_BUDGET``, 1 GiB); K samples beyond it run in parts with
        the same noise and the same update.
    record : bool, optional
        Keep the full record (see :meth:`PerturbationRule._plan`).

    Example
    -------
    >>> rule = rules.make("danp", baseline="noisy", samples=1, lr=1e-3)   # doctest: +SKIP
    """

    name = "anp"
    needs = ("observe",)

    def forward_passes(self, n_layers: int | None = None) -> int:
        return self.samples + 1 if self.baseline == "clean" else 2 * self.samples

    def _estimate(self, net, x, t) -> Estimate:
        K, B, xp = self.samples, len(x), net.xp
        clean = self.baseline == "clean"
        head, per = (1, 1) if clean else (0, 2)
        P = head + per * K
        chunk, keep = self._plan(net, B, per)
        t = net.backend.asarray(t)
        st = stacked(net, x, P, clean=[True] + [False] * K if clean else None)
        n_units = sum(net.sizes[1:])
        acc = Contraction(net.n_layers)
        rec = {"dL": [], "da": [[] for _ in range(net.n_layers)], "inputs": [[] for _ in range(net.n_layers)]}
        ref = None
        # clean: every sample compares with the one reference; noisy: only the network input is shared
        shared = [clean or l == 0 for l in range(net.n_layers)]
        own = (lambda a: a.copy()) if chunk < K else (lambda a: a)    # parts must not keep views of a part
        for k0, k1 in parts(K, chunk):
            p = st.run(0 if k0 == 0 else head + per * k0, head + per * k1)
            L = self.loss.per_sample(p.out, t)
            if k0 == 0:      # the reporting pass: the clean reference, or the first pair's second pass
                r = 0 if clean else 1
                ref = (own(L[r]), [own(xi[r]) for xi in p.inputs], own(p.out[r]))   # not views: parts free their passes
            if clean:
                s = head if k0 == 0 else 0
                dL = L[s:] - ref[0]
                if k0 == 0:
                    a0 = [own(a[0]) for a in p.pre]
                    xs_ref = [own(xi[:1]) for xi in p.inputs]
                xs = xs_ref
                da, norm2 = _pair_differences(p.pre, s, a0, in_place=not keep)
            else:
                dL = L[0::2] - L[1::2]
                da, norm2 = _pair_differences(p.pre, 0, None, in_place=not keep)
                xs = [xi[1::2] for xi in p.inputs]
            _add_activity(acc, dL, da, xs, n_units, shared, scratch=not keep, norm2=norm2)
            if keep:
                rec["dL"].append(dL)
                for l in range(net.n_layers):
                    rec["da"][l].append(da[l])
                    rec["inputs"][l].append(xs[l])
            del p, L, dL, da, xs          # before the next part: these hold its passes
        updates = acc.result(K * B)
        if keep:
            record = {"dL": concat(xp, rec["dL"]), "da": [concat(xp, d) for d in rec["da"]],
                      "inputs": [record_inputs(xp, xi, sh) for xi, sh in zip(rec["inputs"], shared)]}
        else:
            record = {"updates": updates}
        Lr, xr, out = ref
        return Estimate(updates, host_float(Lr.mean()), P, xr, out, Lr, record,
                        finite=tuple(updates) if acc.finite else ())

    def updates_from_record(self, record: dict) -> list:
        """ANP updates from ``dL (K, B)``, ``da[l] (K, B, n_l)``, ``inputs[l] (K|1, B, n)``
        (or the summed ``updates`` of an estimate that kept no full record).

        N is the total number of perturbed units, read off the recorded shapes.
        """
        if "updates" in record:
            return [u.copy() for u in record["updates"]]
        n_units = sum(unit_count(d) for d in record["da"])
        return activity_updates(record["dL"], record["da"], record["inputs"], n_units)

