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

import weakref

import numpy as np

from noisesim import _kernels, threads
from noisesim.backend import get_array_module, sole_owner, to_numpy
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


def _delta(xs, R, alpha: float, add: bool, out=None, scratch=None):
    """``ΔR`` (``add=False``) or ``R + ΔR`` (``add=True``) in one n×n buffer (``out`` when
    given, else a new one) and ``max |·|`` of it; ``scratch`` may hold the ``(B, n)`` product
    ``x* R``. After the GEMMs one pass over the result does the rest (diagonal term, scaling,
    ``+ R``, the largest magnitude): :func:`noisesim._kernels.decorrelation_tail`."""
    B, n = xs.shape
    xp = get_array_module(xs)
    numpy = xp is np and out is not None and xs.dtype == R.dtype == out.dtype and (
        scratch is None or scratch.dtype == R.dtype)
    if B >= n:
        M = offdiag_moment(xs)
        M = xp.matmul(M, R, out=out) if numpy else M @ R
        big = _kernels.decorrelation_tail(M, R, None, -alpha, add)
        return M, big
    if numpy:
        P = xp.matmul(xs, R, out=scratch)
        M = xp.matmul(xs.T, P, out=out)
        del P
    else:
        M = xs.T @ (xs @ R)
    d = _kernels.column_sumsq(xs)
    big = _kernels.decorrelation_tail(M, R, d, -alpha / B, add)
    return M, big


def decorrelation_delta(xs, R, alpha: float):
    """``ΔR = −α (⟨x* x*ᵀ⟩ − diag⟨x*²⟩) R`` for decorrelated inputs ``xs`` of shape ``(B, n)``.

    With fewer samples than inputs (``B < n``) it is computed as
    ``−α/B (x*ᵀ(x* R) − diag(Σ_b x*²) R)``: two ``B·n²`` products instead of ``B·n² + n³``.
    Either way the only n×n arrays are the products the arithmetic needs (the moment, when
    ``B ≥ n``, and ΔR itself): the diagonal term and the scaling are one pass over ΔR.
    """
    return _delta(xs, R, alpha, False)[0]


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
    _check_max(_kernels.max_abs(R), xs, alpha, layer, limit)


def _check_max(big: float, xs, alpha: float, layer: int, limit: float) -> None:
    """:func:`check_decorrelation` of a matrix whose ``max |R|`` is ``big``."""
    if not np.isfinite(big) or big > limit:
        raise DivergenceError(
            f"decorrelation of layer {layer} diverged (max |R| = {big:.3g}) with alpha={alpha:g}; "
            f"this batch is stable only for alpha < {_bound(xs)}. "
            "Lower alpha; the network keeps its last good state"
        )


# Per network, arrays the decorrelation update may write into on its next step: per layer
# the matrix R it replaced (when nothing else holds it) and the (B, n) scratch of x* R. A
# fresh n×n array costs page faults on every step (3072² floats: 36 MB, beyond malloc's reuse).
_SPARE: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def update_decorrelation(net, inputs, alpha: float, limit: float = 1e3) -> None:
    """``R_l ← R_l + ΔR_l`` on every layer (``ΔR_l`` of :func:`decorrelation_delta` for the
    decorrelated inputs ``inputs[l]``), all layers or none.

    The new matrix is formed in one n×n buffer (on NumPy the matrix this update replaced on
    the previous step, when nothing else holds it), and the pass that forms it also finds
    ``max |R|`` (``inf`` for NaN or Inf): both the finiteness check and the divergence check
    of :func:`check_decorrelation`, at no pass of its own. Raises :class:`DivergenceError`
    (naming α and its stable bound; its ``layer`` attribute is the layer) before anything
    changes.
    """
    try:
        spare = _SPARE.setdefault(net, {})
    except TypeError:                         # a network that takes no weak reference
        spare = {}
    # BLAS threads for the largest product, x*ᵀ(x* R) or the moment (see noisesim.threads)
    flops = max(2.0 * x.shape[0] * x.shape[1] ** 2 for x in inputs)
    with threads.for_flops(flops):
        new = _new_matrices(net, inputs, alpha, limit, spare)
    for l in range(len(new)):
        old = net.decorrelation(l)
        net.set_decorrelation(l, new[l])
        if sole_owner(old, 1):                # nobody else sees it: next step's buffer
            spare[("R", l)] = old
        del old


def _new_matrices(net, inputs, alpha, limit, spare) -> list:
    """``R_l + ΔR_l`` of every layer, checked (see :func:`update_decorrelation`)."""
    new = []
    for l in range(net.n_layers):
        R = net.decorrelation(l)
        xs = read_vectors(inputs[l], R.shape[0])
        out = spare.pop(("R", l), None)
        if out is not None and (out.shape != R.shape or out.dtype != R.dtype):
            out = None
        scratch = spare.get(("P", l))                  # one per layer: bounded memory
        if type(xs) is np.ndarray and xs.shape[0] < xs.shape[1] and (
                scratch is None or scratch.shape != (xs.shape[0], R.shape[1]) or scratch.dtype != R.dtype):
            scratch = spare[("P", l)] = np.empty((xs.shape[0], R.shape[1]), R.dtype)
        if out is None and type(R) is np.ndarray:
            out = np.empty_like(R)
        M, big = _delta(xs, R, alpha, True, out=out, scratch=scratch)
        del R, out
        try:
            _check_max(big, xs, alpha, l, limit)
        except DivergenceError as err:
            err.layer = l                     # for a caller that names the layer its own way
            raise
        new.append(M)
    return new
