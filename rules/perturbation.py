"""The perturbation family: what NP, INP, ANP, WP and the regression estimator share.

Every member compares the loss of a *perturbed* forward pass with that of a *reference*
pass, per sample (``δL = L⁽¹⁾ − L⁽²⁾`` formed before any reduction), and turns it into
``ΔW_l`` with its own small estimator function (:mod:`rules.node`, :mod:`rules.iterative`,
:mod:`rules.activity`, :mod:`rules.weight`, :mod:`rules.regression`). This module holds
the options they share and the pass layouts:

``baseline``
    * ``"clean"`` — the reference pass is noise-gated (needs ``clean`` access).
    * ``"noisy"`` — the reference pass is an ordinary noisy pass: nothing gated, nothing
      read (the paper's §3.4).
    * ``"noisy-known"`` (rules that inject only) — both passes carry a known injected
      perturbation, ``ε⁽¹⁾`` and ``ε⁽²⁾``, and the estimate uses ``ε⁽¹⁾ − ε⁽²⁾`` over
      ``2σ²`` (Cho et al. 2011): NP's best case with a noisy baseline.
``samples``
    K perturbations averaged per update (the paper's resampling); passes scale with K.
    The passes of one estimate are one stack (:meth:`noisesim.network.Network.stack`: layer
    0's GEMM once for all of them), run in parts of as many samples as fit the rule's
    ``memory_budget`` (bytes, default :data:`MEMORY_BUDGET`); the parts draw the noise of
    the whole stack and the sums are formed sample by sample (:class:`Contraction`), so the
    estimate is the same, bit for bit, whatever the budget.

What the clean baseline means for the rules that *inject* (NP, INP, WP): on a device
whose intrinsic node noise is always on, the ``clean`` switch gates that noise for a whole
pass. With ``baseline="clean"`` these rules gate it in **every** pass, reference and
perturbed alike, so the perturbed pass carries only the injected, known ``ε`` — exactly the
paper's clean setting, where the rule knows the whole perturbation. With ``"noisy"``
nothing is gated: the perturbed pass carries ``ε⁽¹⁾`` plus unread intrinsic noise and the
reference pass intrinsic noise only, so NP's ``δL ε⁽¹⁾/σ²`` stays unbiased but its
variance grows — the setting in which the paper's DNP degrades. The observing rules (ANP,
regression) inject nothing; their perturbation *is* the intrinsic noise, so with
``"clean"`` only the reference pass is gated.
"""
from __future__ import annotations

import numpy as np

from noisesim import _kernels
from noisesim.layers import rows

from .base import Estimate, Rule, layout

BASELINES = ("clean", "noisy", "noisy-known")


# Bytes the stacked passes of one estimate may hold at once (passes, their observables and
# the arrays formed from them). K samples that do not fit are run in parts of as many whole
# samples as fit, with the same noise and the same sums (see ``Contraction``). Per rule:
# ``memory_budget=`` (bytes).
MEMORY_BUDGET = 1 << 30

# The largest array of one layer a part may stack (its passes' pre-activations, say): a
# part's arrays are allocated and freed once per part, and the heap recycles arrays up to
# this size (noisesim.heap.MMAP_THRESHOLD), while larger ones are mapped afresh, every page
# faulted, and their element-wise passes stream from memory. Measured on a K = 100 DANP step
# of 3072-1024-1024-1024-10 at batch 1000 (parts of 1, 2, 4 and 8 samples, arrays of 8–65
# MB): 10.0–10.7 s for 1–4 samples a part, 12.5–13.8 s for 8. Parts of more samples than
# this are no faster: their GEMMs are as efficient at 2 000 rows as at 16 000.
PART_ARRAY_BYTES = 32 << 20


def shares_input(xs, K: int | None = None) -> bool:
    """Whether the ``K`` samples of ``xs (K|1, B, n)`` share one input: a broadcast view
    (stride 0 along the samples, as a stack's layer-0 input), or a first axis of 1 for
    ``K > 1`` samples (a recorded shared reference; for one sample both readings agree)."""
    return (xs.shape[0] > 1 and xs.strides[0] == 0) or (xs.shape[0] == 1 and (K is None or K > 1))


class Contraction:
    """``Σ_{k,b} G_kb x_kbᵀ / (K·B)`` per layer, accumulated one sample at a time.

    A convolution's ``G (k, B, *positions, n_out)`` and ``xs (k, B, *positions, n_in)`` are
    contracted over the positions too (one kernel serves them all): ``Σ_{k,b,i} G_kbi x_kbiᵀ``.

    Samples are added in order, each with its own GEMM (``G_kᵀ x_k``), so the sums do not
    depend on how the K samples were split into parts: an estimate run in parts and
    ``updates_from_record`` of its whole record give the same bits. When every sample shares
    its input (:func:`shares_input`) the ``G_k`` are summed first and contracted against that
    input once.
    """

    def __init__(self, n_layers: int):
        self.u = [None] * n_layers
        self.g = [None] * n_layers
        self.x = [None] * n_layers

    def add(self, l: int, G, xs, shared: bool | None = None, owned: bool = False) -> None:
        """Add the samples ``G (k, B, n_out)`` with inputs ``xs (k|1, B, n_in)`` to layer ``l``.

        ``shared``: whether every sample of the *whole* estimate shares this layer's input
        (default: :func:`shares_input` of ``xs`` for ``k`` samples). A layer is contracted
        one way for all its samples, so parts of one estimate must say it alike.
        ``owned``: ``G`` is the caller's scratch, which nobody reads afterwards: a single
        sample's array may become the running sum instead of a copy of it.
        """
        if shared is None:
            shared = shares_input(xs, G.shape[0])
        if shared:
            self.x[l] = xs[0]
            for k in range(G.shape[0]):
                if self.g[l] is None:
                    self.g[l] = G[k] if owned and G.shape[0] == 1 else G[k].copy()
                else:
                    self.g[l] += G[k]
            return
        for k in range(G.shape[0]):
            t = rows(G[k]).T @ rows(xs[k])
            if self.u[l] is None:
                self.u[l] = t
            else:
                self.u[l] += t

    def result(self, count: int) -> list:
        """The per-layer sums divided by ``count`` (``K·B``), in place: call it once.
        Afterwards :attr:`finite` says whether every one of them is finite (found by the
        division's own pass)."""
        out = []
        self.finite = True
        for u, g, x in zip(self.u, self.g, self.x):
            if g is not None:
                v = rows(g).T @ rows(x)
                u = v if u is None else u + v
            # the sums are this object's own arrays
            self.finite = _kernels.divide_all_finite(u, count) and self.finite
            out.append(u)
        return out


def contract(G, xs):
    """``Σ_{k,b} G_kb x_kbᵀ / (K·B)`` for ``G (K, B, n_out)`` and ``xs (K|1, B, n_in)``.

    A first axis of 1 in ``xs`` (or a broadcast one) means all K perturbations share the
    reference input.
    """
    acc = Contraction(1)
    acc.add(0, G, xs)
    return acc.result(G.shape[0] * G.shape[1])[0]


def record_inputs(xp, pieces: list, shared: bool):
    """A layer's recorded inputs from the parts of an estimate: ``(1, B, n)`` when shared."""
    return pieces[0][:1] if shared else concat(xp, pieces)


def stacked(net, x, passes: int, clean=None):
    """``net.stack(x, passes, clean=…)``, or — on a device without :meth:`stack` — an object
    whose ``run(a, b, inject=…, omega=…)`` runs passes ``a … b−1`` with ``forward_stacked``."""
    if hasattr(net, "stack"):
        return net.stack(x, passes, clean=clean)
    return _Unstacked(net, x, passes, clean)


class _Unstacked:
    def __init__(self, net, x, passes, clean):
        self.net, self.x, self.P, self.clean = net, x, passes, clean

    def run(self, start, stop, *, inject=None, omega=None):
        clean = None if self.clean is None else list(self.clean)[start:stop]
        if omega is not None:
            return self.net.forward_weight_perturbed(self.x, omega, clean=clean)
        return self.net.forward_stacked(self.x, stop - start, clean=clean, inject=inject)


def parts(K: int, chunk: int):
    """Sample ranges ``(k0, k1)`` of at most ``chunk`` samples covering ``0 … K−1``."""
    chunk = max(1, int(chunk))
    return [(k, min(k + chunk, K)) for k in range(0, K, chunk)]


def concat(xp, pieces):
    """``pieces`` joined along the first axis (the one piece itself when there is one)."""
    return pieces[0] if len(pieces) == 1 else xp.concatenate(pieces, axis=0)


def intrinsic_sigma_error(name: str, sigma) -> str:
    """Why an observing rule (ANP, regression) takes no ``sigma``, and how to set σ instead."""
    return (f"{name} takes no sigma: its perturbation is the device's intrinsic node noise, which "
            f"the rule neither sets nor reads. Set it on the device — "
            f"DeviceConfig.preset('ideal', node_noise={sigma!r}) — or get the device and the rule "
            f"in one line with rules.with_sigma({name!r}, {sigma!r})")


def placed(xp, dtype, n: int, off: int, per: int, shapes, first, second=None) -> list:
    """A part's known perturbations in its pass layout: per layer an ``(n, *shape)`` array of
    zeros holding sample k's ``first[l][k]`` in pass ``off + per·k`` and, when given,
    ``second[l][k]`` in the pass after it."""
    out = []
    for l, shape in enumerate(shapes):
        z = xp.zeros((n, *shape), dtype=dtype)
        k = first[l].shape[0]
        z[off::per][:k] = first[l]
        if second is not None:
            z[off + 1::per][:k] = second[l]
        out.append(z)
    return out


def _read_floats(net) -> int:
    """Numbers of the tile inputs x* of one sample, past layer 0 (whose input is shared):
    a convolution's patch vectors, ``positions × n_in``."""
    return sum(lay.reads * lay.n_in for lay in layout(net)[1:])


def unit_shapes(net, B: int) -> list:
    """Per layer the shape of a batch's per-unit perturbation, ``(B, *out_shape)``."""
    return [(B, *lay.out_shape) for lay in layout(net)]


def check_sigma(name: str, sigma) -> float:
    if not (isinstance(sigma, (int, float)) and np.isfinite(sigma) and sigma > 0):
        raise ValueError(f"{name}: sigma={sigma!r} is out of range; allowed range: (0, ∞)")
    return float(sigma)


class PerturbationRule(Rule):
    """Base of the perturbation family: validates ``baseline`` and ``samples``.

    Subclasses set ``baselines`` (the ones they support), ``injects`` (whether they need
    ``inject`` access) and implement ``estimate``/``updates_from_record``/``forward_passes``.

    Parameters
    ----------
    baseline : {"clean", "noisy"} (injecting rules also "noisy-known")
        The reference pass: noise-gated (needs ``clean``), an ordinary noisy pass, or a
        second pass with its own known perturbation (see the module docstring).
    samples : int
        K perturbations averaged per update (the paper's resampling; passes scale with K).
    memory_budget : float, optional
        Bytes the stacked passes of one estimate may hold at once (default
        :data:`MEMORY_BUDGET`, 1 GiB). K samples beyond it run in parts with the same noise
        and the same update, bit for bit; more memory means fewer, larger GEMMs. A resource,
        not a result: it is not part of :meth:`config`.
    record : bool, optional
        What ``Estimate.record`` holds: ``None`` (default) the full record when all K samples
        fit into one part, else the summed update (``updates``); ``True`` always the full
        record (its memory grows with K); ``False`` always the summed update. Not part of
        :meth:`config` either.
    **kw
        The options of :class:`rules.base.Rule` (``lr``, ``optimizer``, ``loss``…).

    """

    baselines: tuple = ("clean", "noisy")
    injects = False

    def __init__(self, *, baseline: str = "noisy", samples: int = 1, memory_budget: float | None = None,
                 record: bool | None = None, **kw):
        if "sigma" in kw and not self.injects:
            raise TypeError(intrinsic_sigma_error(self.name, kw["sigma"]))
        super().__init__(**kw)
        if baseline not in self.baselines:
            raise ValueError(f"{self.name}: baseline={baseline!r} is not known; allowed: {list(self.baselines)}")
        if isinstance(samples, bool) or not isinstance(samples, (int, np.integer)) or samples < 1:
            raise ValueError(f"{self.name}: samples={samples!r} is out of range; allowed: an integer ≥ 1")
        if memory_budget is not None and not (isinstance(memory_budget, (int, float)) and memory_budget > 0):
            raise ValueError(f"{self.name}: memory_budget={memory_budget!r} is out of range; allowed: bytes > 0 "
                             "or None (the default, rules.perturbation.MEMORY_BUDGET)")
        if record not in (None, True, False):
            raise ValueError(f"{self.name}: record={record!r} is not known; allowed: None (automatic), True, False")
        self.baseline, self.samples = baseline, int(samples)
        # resources, not results: neither changes an update, so neither is in config()
        self.memory_budget, self.keep_record = memory_budget, record

    def _options(self) -> dict:
        return {"baseline": self.baseline, "samples": self.samples}

    def required_access(self) -> tuple:
        need = ["observe"] + (["clean"] if self.baseline == "clean" else [])
        return tuple(need + (["inject"] if self.injects else []))

    # -- a batch too large for the budget ----------------------------------------------------
    def estimate(self, net, x, t) -> Estimate:
        """The estimate of :meth:`_estimate`, in slices of the batch when one sample's passes for
        the whole batch do not fit ``memory_budget`` (convolutions unfold into many patch
        vectors per sample): each slice is estimated on its own and the updates are averaged
        weighted by the slice sizes — the batch mean of the same per-sample terms, each slice
        with its own noise draws — and the record then holds the averaged ``updates``."""
        B = len(x)
        n = self._batch_slice(net, B)
        if n >= B:
            return self._estimate(net, x, t)
        xp = net.xp
        updates = inputs = None
        outputs, losses, loss = [], [], 0.0
        for i in range(0, B, n):
            e = self._estimate(net, x[i:i + n], t[i:i + n])
            b = len(e.losses)
            if updates is None:         # the whole batch's reference inputs, filled slice by slice
                updates = [b / B * u for u in e.updates]
                inputs = [xp.empty((B, *a.shape[1:]), dtype=a.dtype) for a in e.inputs]
                passes = e.forward_passes
            else:
                for u, v in zip(updates, e.updates):
                    u += b / B * v
            for whole, a in zip(inputs, e.inputs):
                whole[i:i + b] = a
            outputs.append(e.outputs)
            losses.append(e.losses)
            loss += b * e.loss
            del e
        return Estimate(updates, float(loss / B), passes, inputs, xp.concatenate(outputs), xp.concatenate(losses),
                        {"updates": updates})

    def _estimate(self, net, x, t) -> Estimate:
        raise NotImplementedError  # pragma: no cover - abstract

    def _batch_slice(self, net, B: int) -> int:
        """Samples of the batch whose passes for one of the K samples fit the memory budget."""
        budget = float(self.memory_budget if self.memory_budget is not None else MEMORY_BUDGET)
        return max(1, int(budget // (self.sample_bytes(net, B) / B)))

    def sample_bytes(self, net, B: int) -> int:
        """Bytes one of the K samples holds for a batch of ``B`` while its part is processed:
        the smallest ``memory_budget`` that runs the batch whole (in parts of one sample)."""
        per = -(-self.forward_passes(net.n_layers) // self.samples)     # passes per sample, rounded up
        return np.dtype(net.dtype).itemsize * per * self._pass_floats(net) * B

    # -- K samples within a memory budget ----------------------------------------------------
    def _pass_floats(self, net) -> int:
        """Numbers one pass of one batch row holds while a part is processed: the layer
        inputs x* (layer 0's is shared), pre- and post-activations, and about two more per unit
        for the differences and products formed from them."""
        units = sum(net.sizes[1:])
        return _read_floats(net) + 4 * units

    def _record_floats(self, net) -> int:
        """Numbers one sample's full record holds per batch row (δL, δa or ε, x*)."""
        return 1 + sum(net.sizes[1:]) + _read_floats(net)

    def _plan(self, net, B: int, per: int, extra_bytes: int = 0):
        """``(samples per part, keep the full record)`` for K samples of ``per`` passes each.

        The full record (what traces store) is kept when all K samples fit into one part with
        it (``record=None``), always (``record=True``: its memory grows with K) or never
        (``record=False``); without it the estimate records its summed update instead
        (``updates``), which replays exactly but cannot be fed to other estimators.
        """
        K = self.samples
        budget = float(self.memory_budget if self.memory_budget is not None else MEMORY_BUDGET)
        item = np.dtype(net.dtype).itemsize
        run = item * B * per * self._pass_floats(net) + extra_bytes
        rec = item * B * self._record_floats(net)
        with_record = max(1, int(budget // (run + rec)))
        keep = self.keep_record if self.keep_record is not None else with_record >= K
        chunk = with_record if keep else max(1, int(budget // run))
        # and no layer's stacked array beyond PART_ARRAY_BYTES
        widest = max([lay.reads * lay.n_in for lay in layout(net)[1:]] + list(net.sizes[1:]))
        chunk = min(chunk, max(1, int(PART_ARRAY_BYTES // (item * B * per * widest))))
        return min(chunk, K), keep


class InjectingRule(PerturbationRule):
    """A perturbation rule that injects known Gaussian perturbations of std ``sigma``
    (needs ``inject`` access; paper: σ = 1e-3, σ² = 1e-6).

    Parameters
    ----------
    sigma : float
        Std of the injected perturbation ε (> 0). The device's own node noise is set on the
        device; :func:`rules.with_sigma` sets both to one σ."""

    needs = ("observe", "inject")
    injects = True

    def __init__(self, *, sigma: float = 1e-3, **kw):
        super().__init__(**kw)
        self.sigma = check_sigma(self.name, sigma)

    def _options(self) -> dict:
        return {**super()._options(), "sigma": self.sigma}


def node_perturbation(estimator: str = "activity", **options) -> Rule:
    """One factory for the node-perturbation family.

    Parameters
    ----------
    estimator : {"node", "iterative", "activity", "regression"}
        NP (known injected ε), INP (one layer per pass), ANP (observed δa) or the ridge
        regression ("weak gradient") estimator.
    **options
        ``baseline``, ``samples``, ``decorrelate``, ``sigma`` (injecting rules), ``lr``, …

    Example
    -------
    >>> rule = node_perturbation("activity", decorrelate=True, baseline="noisy", samples=10)
    >>> rule.label
    'DANP'
    """
    from .activity import ActivityNodePerturbation
    from .iterative import IterativeNodePerturbation
    from .node import NodePerturbation
    from .regression import RegressionPerturbation

    table = {"node": NodePerturbation, "iterative": IterativeNodePerturbation,
             "activity": ActivityNodePerturbation, "regression": RegressionPerturbation}
    if estimator not in table:
        raise ValueError(f"estimator={estimator!r} is not known; allowed: {list(table)}")
    return table[estimator](**options)
