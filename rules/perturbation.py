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

from .base import Rule

BASELINES = ("clean", "noisy", "noisy-known")


def contract(G, xs):
    """``Σ_{k,b} G_kb x_kbᵀ / (K·B)`` for ``G (K, B, n_out)`` and ``xs (K|1, B, n_in)``.

    A first axis of 1 in ``xs`` means all K perturbations share the reference input.
    """
    K, B = G.shape[0], G.shape[1]
    if xs.shape[0] == 1:
        u = G.sum(axis=0).T @ xs[0]
    else:
        u = G.reshape(K * B, -1).T @ xs.reshape(K * B, -1)
    return u / (K * B)


def known_layout(baseline: str, K: int):
    """Pass layout of an injecting rule: ``(P, clean flags, first, second, ref)``.

    ``first[k]`` is the pass carrying perturbation ``ε⁽¹⁾_k``, ``second[k]`` the reference
    pass of sample k (carrying ``ε⁽²⁾_k`` for ``"noisy-known"``), ``ref`` the pass whose
    loss and inputs the estimate reports.
    """
    if baseline == "clean":
        return K + 1, [True] * (K + 1), list(range(1, K + 1)), [0] * K, 0
    first, second = list(range(0, 2 * K, 2)), list(range(1, 2 * K, 2))
    return 2 * K, None, first, second, 1


def injection(xp, dtype, P: int, B: int, n: int, rows: dict):
    """A ``(P, B, n)`` injection holding ``rows[p]`` in pass ``p`` and zeros elsewhere."""
    out = xp.zeros((P, B, n), dtype=dtype)
    for p, v in rows.items():
        out[p] = v
    return out


def intrinsic_sigma_error(name: str, sigma) -> str:
    """Why an observing rule (ANP, regression) takes no ``sigma``, and how to set σ instead."""
    return (f"{name} takes no sigma: its perturbation is the device's intrinsic node noise, which "
            f"the rule neither sets nor reads. Set it on the device — "
            f"DeviceConfig.preset('ideal', node_noise={sigma!r}) — or get the device and the rule "
            f"in one line with rules.with_sigma({name!r}, {sigma!r})")


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
    **kw
        The options of :class:`rules.base.Rule` (``lr``, ``optimizer``, ``loss``…).

    """

    baselines: tuple = ("clean", "noisy")
    injects = False

    def __init__(self, *, baseline: str = "noisy", samples: int = 1, **kw):
        if "sigma" in kw and not self.injects:
            raise TypeError(intrinsic_sigma_error(self.name, kw["sigma"]))
        super().__init__(**kw)
        if baseline not in self.baselines:
            raise ValueError(f"{self.name}: baseline={baseline!r} is not known; allowed: {list(self.baselines)}")
        if isinstance(samples, bool) or not isinstance(samples, (int, np.integer)) or samples < 1:
            raise ValueError(f"{self.name}: samples={samples!r} is out of range; allowed: an integer ≥ 1")
        self.baseline, self.samples = baseline, int(samples)

    def _options(self) -> dict:
        return {"baseline": self.baseline, "samples": self.samples}

    def required_access(self) -> tuple:
        need = ["observe"] + (["clean"] if self.baseline == "clean" else [])
        return tuple(need + (["inject"] if self.injects else []))


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
