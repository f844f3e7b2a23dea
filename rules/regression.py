"""The regression ("weak gradient") estimator: ``g_l`` by ridge least squares over S copies.

S perturbed copies of the batch are run next to one reference pass; for each sample and
each layer the loss differences ``δL_s`` (shape S) are regressed on the observed activity
differences ``δa_{l,s} = ã_{l,s} − a_{l,ref}`` (an ``S × N_l`` matrix ``A``):

    g_l = argmin_g ‖δL − A g‖² + λ ‖g‖²  = Aᵀ (A Aᵀ + λ I_S)⁻¹ δL,
    ΔW_l = ⟨ g_l x*ᵀ_{l−1} ⟩,

with ``λ = ρ · tr(AAᵀ)/S`` (ρ relative to the size of a sample's copies), ρ chosen per layer
and batch by generalised cross-validation (``ridge="gcv"``, the default; :func:`gcv_ridge`)
or fixed (``ridge=ρ``).

Regressing layer by layer is what makes it consistent in a deep network: downstream noise
is independent of ``δa_l`` and upstream noise reaches the loss only through ``a_l``, so
``Cov(δa_l)⁻¹ Cov(δa_l, δL) = ∂L/∂a_l`` to first order. With ``S ≥ N_l`` and small λ it is
the least-squares gradient; with ``S < N_l`` it is the minimum-norm solution — the
projection of ``g_l`` on the span of the S observed directions, of magnitude about
``S/N_l`` of the gradient (Adam does not care; with SGD raise ``lr``). S = 1 gives
``δL δa_l / ((1+ridge)‖δa_l‖²)``: INP's direction from observed activity, without ``N_l``.

Why GCV by default. With a fixed small ridge (``ridge=1e-3``) least squares has its variance
peak where the copies S reach the unknowns N_l — the interpolation threshold ("double
descent"): on a 256-wide first hidden layer its angle to BP got *worse* from S = 100 to
S = 300 (50.8° → 53.2°). In a hidden layer δL is dominated by the other layers' noise, so
the regression is noisy and needs a ridge that grows with that noise; GCV estimates the
prediction error for every ρ from one eigen-decomposition per sample and picks the best for
the batch, and with it more copies do not make the estimate worse (measured on 40-64-64-64-10,
first hidden layer, S = 32 → 64 → 256: 54.7° → 43.3° → 23.6° against 60.1° → 74.4° → 25.3° with
ρ = 1e-3; tests/test_regression_ridge.py and the ``weak-gradient`` scenario). It costs one
eigen-decomposition of the smaller Gram matrix per sample (about 2–4× a linear solve), and ρ
depends on the whole batch, so the estimate is no longer a sum of per-sample terms.

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

import numpy as np

from noisesim.backend import get_array_module

from .base import Estimate, batch_outer, host_float
from .perturbation import PerturbationRule, concat, parts, stacked


# relative ridges ρ (λ = ρ · tr(AAᵀ)/S) among which generalised cross-validation chooses
GCV_GRID = np.logspace(-6, 3, 37)


def ridge_gradients(dL, da, ridge):
    """Per-sample ridge solution ``Aᵀ(AAᵀ+λI)⁻¹δL`` for ``dL (S, B)``, ``da (S, B, n)`` → ``(B, n)``.

    ``ridge`` a number: ``λ = ridge · tr(AAᵀ)/S``, solved in the smaller of the two equivalent
    forms — the S×S system above when ``S ≤ n``, else ``(AᵀA+λI)⁻¹AᵀδL`` (n×n).
    ``ridge="gcv"``: ρ chosen for the batch by generalised cross-validation, see :func:`gcv_ridge`.
    """
    xp = get_array_module(dL)
    A = xp.ascontiguousarray(xp.moveaxis(da, 0, 1))               # (B, S, n)
    S, n = A.shape[1], A.shape[2]
    At = xp.swapaxes(A, 1, 2)                                     # (B, n, S)
    y = dL.T[..., None]                                           # (B, S, 1)
    M = A @ At if S <= n else At @ A                              # (B, S, S) or (B, n, n)
    tr = xp.trace(M, axis1=1, axis2=2)                            # tr(AAᵀ) = tr(AᵀA)
    ok = tr > 0
    if isinstance(ridge, str):
        g = gcv_ridge(A, At, y, M, xp.where(ok, tr, 1) / S)
        return xp.where(ok[:, None], g, 0)
    lam = ridge * xp.where(ok, tr, 1) / S
    M = M + lam[:, None, None] * xp.eye(M.shape[-1], dtype=M.dtype)
    if S <= n:
        g = (At @ xp.linalg.solve(M, y))[..., 0]
    else:
        g = xp.linalg.solve(M, At @ y)[..., 0]
    return xp.where(ok[:, None], g, 0)


def gcv_ridge(A, At, y, M, scale, grid=GCV_GRID):
    """Ridge solutions with ``λ_b = ρ·scale_b``, one relative ridge ρ for the batch chosen by
    generalised cross-validation.

    GCV (Golub, Heath & Wahba 1979) estimates a ridge fit's prediction error without held-out
    copies: ``GCV_b(λ) = S‖(I−H_λ)δL‖² / tr(I−H_λ)²`` with ``H_λ = A(AᵀA+λI)⁻¹Aᵀ``. From the
    eigen-decomposition of the smaller Gram matrix ``M`` (eigenvalues ``μ_i``, ``m = min(S, n)``
    of them) and the coordinates ``z_i`` of δL on the matching left singular vectors,
    ``‖(I−H)δL‖² = ‖δL⊥‖² + Σ (λ/(μ_i+λ))² z_i²`` and ``tr(I−H) = S − m + Σ λ/(μ_i+λ)``, so a
    whole grid of ρ costs one decomposition per sample. ρ minimises the batch's mean of
    ``GCV_b(ρ·scale_b) / GCV_b(∞)`` (each sample's score relative to predicting nothing, so
    every sample weighs the same). One ρ for the batch, not one per sample: a per-sample
    choice is itself noisy, and shrinking each sample's g by its own factor tilts the batch
    update ``⟨g xᵀ⟩`` (measured: worse than a fixed ridge below the layer width).
    """
    xp = get_array_module(A)
    S = A.shape[1]
    mu, Q = xp.linalg.eigh(M)                                     # ascending, (B, m), (B, m, m)
    mu = xp.maximum(mu, 0)
    yy = (y[..., 0] ** 2).sum(axis=1)                             # ‖δL‖²
    if S <= A.shape[2]:
        z = (xp.swapaxes(Q, 1, 2) @ y)[..., 0]                    # δL on the eigenvectors of AAᵀ
        w = None
    else:
        w = (xp.swapaxes(Q, 1, 2) @ (At @ y))[..., 0]             # VᵀAᵀδL = √μ · z
        z = xp.where(mu > 0, w / xp.sqrt(xp.where(mu > 0, mu, 1)), 0)
    z2 = z * z
    perp = xp.maximum(yy - z2.sum(axis=1), 0)                     # δL outside the span of A's columns
    null = xp.where(yy > 0, yy, 1) / S ** 2                       # GCV_b(∞) / S
    scores = []
    for rho in grid:
        lam = (rho * scale)[:, None]                              # (B, 1)
        f = lam / (mu + lam)
        gcv = (perp + (f * f * z2).sum(axis=1)) / (S - mu.shape[1] + f.sum(axis=1)) ** 2
        scores.append(float(xp.where(yy > 0, gcv / null, 1).mean()))
    rho = float(grid[int(np.argmin(scores))])
    lam = (rho * scale)[:, None]
    if w is None:                                                 # g = Aᵀ Q (μ+λ)⁻¹ z
        return (At @ (Q @ (z / (mu + lam))[..., None]))[..., 0]
    return (Q @ (w / (mu + lam))[..., None])[..., 0]              # g = V (μ+λ)⁻¹ VᵀAᵀδL


def regression_updates(dL, da, xs, ridge: float) -> list:
    """``ΔW_l = ⟨g_l x*ᵀ⟩`` with ``g_l`` the per-layer ridge solution.

    A convolution's units are every channel at every position: ``δa_l`` is regressed as one
    vector of ``positions × C_out`` per copy, and ``g_l`` contracted over the positions."""
    out = []
    for d, x in zip(da, xs):
        S, B = d.shape[:2]
        g = ridge_gradients(dL, d.reshape(S, B, -1), ridge).reshape(d.shape[1:])
        out.append(batch_outer(g, x[0]))
    return out


class RegressionPerturbation(PerturbationRule):
    """The regression ("weak gradient") estimator; ``decorrelate=True`` gives DREG.

    Parameters
    ----------
    baseline : {"clean", "noisy"}
    samples : int
        S, perturbed copies per update (S + 1 passes). Default 10.
    ridge : "gcv" or float
        ``"gcv"`` (default): ρ chosen per layer for the batch by generalised cross-validation
        over :data:`GCV_GRID` (1e-6 to 1e3 of a sample's mean ``‖δa_l‖²``). A number: the ridge
        strength ρ relative to the mean ``‖δa_l‖²`` of a sample (> 0 keeps the S×S solve well
        conditioned when copies are nearly collinear); the estimate's variance then peaks near
        S ≈ N_l.

    Example
    -------
    >>> rule = rules.make("regression", samples=32)               # ridge chosen by GCV
    >>> rule = rules.make("regression", samples=32, ridge=1e-3)   # a fixed relative ridge
    """

    name = "regression"
    needs = ("observe",)

    def __init__(self, *, samples: int = 10, ridge: float | str = "gcv", **kw):
        super().__init__(samples=samples, **kw)
        if ridge != "gcv" and not (isinstance(ridge, (int, float)) and not isinstance(ridge, bool)
                                   and np.isfinite(ridge) and ridge > 0):
            raise ValueError(f"{self.name}: ridge={ridge!r} is out of range; allowed: \"gcv\" or a number in (0, ∞)")
        self.ridge = ridge if ridge == "gcv" else float(ridge)

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
