"""Decorrelation of layer inputs (Ahmad et al. 2023; the node-perturbation paper, eq. 7).

``x*_l = R_l x_l`` with ``R_l(0) = I`` and

    R_l ← R_l − α (⟨x*_l x*_lᵀ⟩ − diag⟨x*_l²⟩) R_l

as in the authors' code: uncentred second moment over the batch, no variance term, the
same α for every layer, R updated after the gradient estimate and before the optimizer
step.

A convolutional layer decorrelates what its crossbar multiplies — its patch vectors: one
``R_l`` of size ``k·C_in`` applied to the patch at every position, its moment taken over all
patches of the batch (every sample, every position). This is how the authors decorrelate
convolutions (Ahmad et al. 2023 and the node-perturbation code: the unfolded input's
``in_channels·kh·kw`` features, with the update over the patches; their code can subsample the
batch for it, which this one does not). The iteration is stable only for ``α < 2/λ_max`` of the off-diagonal second moment;
above it R diverges within a few steps, which :func:`check_decorrelation` reports.
"""
from __future__ import annotations

import numpy as np

from noisesim import _kernels
from noisesim.backend import get_array_module, to_numpy
from noisesim.errors import DivergenceError


def read_vectors(inputs, n: int):
    """The decorrelated read vectors ``x*`` of a layer's recorded inputs as rows ``(rows, n)``:
    one per sample for a dense layer, one per sample and position for a convolution (its patch
    vectors), without the constant bias input."""
    if inputs.shape[-1] != n:
        inputs = inputs[..., :n]
    return inputs.reshape(-1, n)


def offdiag_moment(xs):
    """``⟨x xᵀ⟩ − diag⟨x²⟩`` over the batch (rows of ``xs``)."""
    xp = get_array_module(xs)
    C = xs.T @ xs
    C /= xs.shape[0]
    idx = xp.arange(C.shape[0])
    C[idx, idx] = 0
    return C


# rows of R handled at once where ΔR needs ``diag(d) R``: a bounded temporary, never n×n
_ROWS = 256


def decorrelation_delta(xs, R, alpha: float):
    """``ΔR = −α (⟨x* x*ᵀ⟩ − diag⟨x*²⟩) R`` for decorrelated inputs ``xs`` of shape ``(B, n)``.

    With fewer samples than inputs (``B < n``) it is computed as
    ``−α/B (x*ᵀ(x* R) − diag(Σ_b x*²) R)``: two ``B·n²`` products instead of ``B·n² + n³``.
    Either way the only n×n arrays are the products the arithmetic needs (the moment, when
    ``B ≥ n``, and ΔR itself): scaling and the diagonal term work in place.
    """
    B, n = xs.shape
    if B >= n:
        M = offdiag_moment(xs) @ R
        M *= -alpha
        return M
    M = xs.T @ (xs @ R)
    d = (xs * xs).sum(axis=0)
    for i in range(0, n, _ROWS):
        M[i:i + _ROWS] -= d[i:i + _ROWS, None] * R[i:i + _ROWS]
    M *= -alpha / B
    return M


def _bound(xs) -> str:
    """``2/λ_max = …`` of this batch, for messages (NaN or Inf inputs have none)."""
    if not _kernels.all_finite(xs):
        return "an unknown bound (the layer's inputs are not finite)"
    return f"2/λ_max = {stability_limit(xs):.3g}"


def stability_limit(xs) -> float:
    """``2 / λ_max`` of the off-diagonal second moment: the largest stable α for this batch."""
    lam = np.abs(np.linalg.eigvalsh(to_numpy(offdiag_moment(xs)).astype(np.float64))).max()
    return float("inf") if lam == 0 else 2.0 / lam


def check_decorrelation(R, xs, alpha: float, layer: int, limit: float = 1e3) -> None:
    """Raise :class:`DivergenceError` when ``R`` has blown up, naming α and its stable bound.

    One pass over ``R`` (``max |R|``, NaN and Inf included), no copy of it.
    """
    big = _kernels.max_abs(R)
    if not np.isfinite(big) or big > limit:
        raise DivergenceError(
            f"decorrelation of layer {layer} diverged (max |R| = {big:.3g}) with alpha={alpha:g}; "
            f"this batch is stable only for alpha < {_bound(xs)}. "
            "Lower alpha; the network keeps its last good state"
        )


def update_decorrelation(net, inputs, alpha: float, limit: float = 1e3) -> None:
    """``R_l ← R_l + ΔR_l`` on every layer (``ΔR_l`` of :func:`decorrelation_delta` for the
    decorrelated inputs ``inputs[l]``), all layers or none.

    The new matrix is formed in ΔR's own buffer, and one pass over it (``max |R|``, which is
    ``inf`` for NaN or Inf) is both the finiteness check and the divergence check of
    :func:`check_decorrelation`: no n×n array beyond ΔR, no separate pass for either check.
    Raises :class:`DivergenceError` (naming α and its stable bound; its ``layer`` attribute
    is the layer) before anything changes.
    """
    new = []
    for l in range(net.n_layers):
        R = net.decorrelation(l)
        xs = read_vectors(inputs[l], R.shape[0])
        M = decorrelation_delta(xs, R, alpha)
        M += R
        try:
            check_decorrelation(M, xs, alpha, l, limit)
        except DivergenceError as err:
            err.layer = l                     # for a caller that names the layer its own way
            raise
        new.append(M)
    for l, M in enumerate(new):
        net.set_decorrelation(l, M)
