"""The regression ("weak gradient") estimator: ``g_l`` by ridge least squares over S copies.

S perturbed copies of the batch are run next to one reference pass; for each sample and
each layer the loss differences ``δL_s`` (shape S) are regressed on the observed activity
differences ``δa_{l,s} = ã_{l,s} − a_{l,ref}`` (an ``S × N_l`` matrix ``A``):

    g_l = argmin_g ‖δL − A g‖² + λ ‖g‖²  = Aᵀ (A Aᵀ + λ I_S)⁻¹ δL,
    λ = ridge · tr(A Aᵀ) / S,
    ΔW_l = ⟨ g_l x*ᵀ_{l−1} ⟩.

Regressing layer by layer is what makes it consistent in a deep network: downstream noise
is independent of ``δa_l`` and upstream noise reaches the loss only through ``a_l``, so
``Cov(δa_l)⁻¹ Cov(δa_l, δL) = ∂L/∂a_l`` to first order. With ``S ≥ N_l`` and small λ it is
the least-squares gradient; with ``S < N_l`` it is the minimum-norm solution — the
projection of ``g_l`` on the span of the S observed directions, of magnitude about
``S/N_l`` of the gradient (Adam does not care; with SGD raise ``lr``). S = 1 gives
``δL δa_l / ((1+ridge)‖δa_l‖²)``: INP's direction from observed activity, without ``N_l``.

Like ANP it only observes: the perturbations are the intrinsic noise. ``"clean"`` gates the
reference pass (needs ``clean``); ``"noisy"`` uses a noisy reference shared by the S copies.
S + 1 passes either way. Schaeffer's "weak gradient" note (seed 003) makes the S copies by
enlarging the batch, as the stacked forward pass does here.

Record keys: ``dL (S, B)``; ``da`` — per layer ``(S, B, n_l)``; ``inputs`` — per layer
``(1, B, n_{l−1})``. ``ridge`` comes from the rule's config.

The S copies are solved jointly for each sample, so their δL and δa are all kept (the
record); the passes themselves run in parts within ``memory_budget`` (layer 0's GEMM once).
"""
from __future__ import annotations

from noisesim.backend import get_array_module

from .base import Estimate, host_float
from .perturbation import PerturbationRule, concat, parts, stacked


def ridge_gradients(dL, da, ridge: float):
    """Per-sample ridge solution ``Aᵀ(AAᵀ+λI)⁻¹δL`` for ``dL (S, B)``, ``da (S, B, n)`` → ``(B, n)``.

    Solved in the smaller of the two equivalent forms: the S×S system above when ``S ≤ n``,
    else ``(AᵀA+λI)⁻¹AᵀδL`` (n×n); both are the same minimiser.
    """
    xp = get_array_module(dL)
    A = xp.ascontiguousarray(xp.moveaxis(da, 0, 1))               # (B, S, n)
    S, n = A.shape[1], A.shape[2]
    At = xp.swapaxes(A, 1, 2)                                     # (B, n, S)
    y = dL.T[..., None]                                           # (B, S, 1)
    M = A @ At if S <= n else At @ A                              # (B, S, S) or (B, n, n)
    tr = xp.trace(M, axis1=1, axis2=2)                            # tr(AAᵀ) = tr(AᵀA)
    ok = tr > 0
    lam = ridge * xp.where(ok, tr, 1) / S
    M = M + lam[:, None, None] * xp.eye(M.shape[-1], dtype=M.dtype)
    if S <= n:
        g = (At @ xp.linalg.solve(M, y))[..., 0]
    else:
        g = xp.linalg.solve(M, At @ y)[..., 0]
    return xp.where(ok[:, None], g, 0)


def regression_updates(dL, da, xs, ridge: float) -> list:
    """``ΔW_l = ⟨g_l x*ᵀ⟩`` with ``g_l`` the per-layer ridge solution."""
    out = []
    for d, x in zip(da, xs):
        g = ridge_gradients(dL, d, ridge)
        out.append((g.T @ x[0]) / g.shape[0])
    return out


class RegressionPerturbation(PerturbationRule):
    """The regression ("weak gradient") estimator; ``decorrelate=True`` gives DREG.

    Parameters
    ----------
    baseline : {"clean", "noisy"}
    samples : int
        S, perturbed copies per update (S + 1 passes). Default 10.
    ridge : float
        Ridge strength relative to the mean ``‖δa_l‖²`` of a sample (> 0 keeps the S×S
        solve well conditioned when copies are nearly collinear).

    Example
    -------
    >>> rule = rules.make("regression", samples=32, ridge=1e-3)   # doctest: +SKIP
    """

    name = "regression"
    needs = ("observe",)

    def __init__(self, *, samples: int = 10, ridge: float = 1e-3, **kw):
        super().__init__(samples=samples, **kw)
        if not (isinstance(ridge, (int, float)) and ridge > 0):
            raise ValueError(f"{self.name}: ridge={ridge!r} is out of range; allowed range: (0, ∞)")
        self.ridge = float(ridge)

    @property
    def label(self) -> str:
        return ("D" if self.decorrelate else "") + "REG"

    def _options(self) -> dict:
        return {**super()._options(), "ridge": self.ridge}

    def forward_passes(self, n_layers: int | None = None) -> int:
        return self.samples + 1

    def _plan(self, net, B: int, per: int, extra_bytes: int = 0):
        # the S copies are solved jointly per sample: the whole record is always kept
        rule_keep, self.keep_record = self.keep_record, True
        try:
            return super()._plan(net, B, per, extra_bytes)
        finally:
            self.keep_record = rule_keep

    def estimate(self, net, x, t) -> Estimate:
        S, B, xp = self.samples, len(x), net.xp
        clean = [True] + [False] * S if self.baseline == "clean" else None
        chunk, _ = self._plan(net, B, 1)
        t = net.backend.asarray(t)
        st = stacked(net, x, S + 1, clean=clean)
        dLs, das = [], [[] for _ in range(net.n_layers)]
        own = (lambda a: a.copy()) if chunk < S else (lambda a: a)    # parts must not keep views of a part
        for k0, k1 in parts(S, chunk):
            # the reference pass, then the copies, in parts (only δL and δa are kept)
            p = st.run(0 if k0 == 0 else 1 + k0, 1 + k1)
            L = self.loss.per_sample(p.out, t)
            s = 1 if k0 == 0 else 0
            if k0 == 0:
                ref = (own(L[0]), [own(a[0]) for a in p.pre], [own(xi[0]) for xi in p.inputs], own(p.out[0]))
            dLs.append(L[s:] - ref[0])
            for l, a in enumerate(p.pre):
                das[l].append(a[s:] - ref[1][l])
            del p
        Lr, _, xr, out = ref
        record = {"dL": concat(xp, dLs), "da": [concat(xp, d) for d in das], "inputs": [xi[None] for xi in xr]}
        return Estimate(self.updates_from_record(record), host_float(Lr.mean()), S + 1, xr, out, Lr, record)

    def updates_from_record(self, record: dict) -> list:
        """Ridge updates from ``dL (S, B)``, ``da[l] (S, B, n_l)``, ``inputs[l] (1, B, n)``."""
        return regression_updates(record["dL"], record["da"], record["inputs"], self.ridge)
