"""Software references and diagnostics: exact BP and the angle of any rule's update to it.

These read exact weights, so they need the ``oracle`` access level; they are never needed
to train.
"""
from __future__ import annotations

import numpy as np

from noisesim.backend import to_numpy
from noisesim.layers import rows

from .base import batch_outer

from .losses import Loss


def exact_forward(net, x):
    """Noise-free software forward with the exact weights: ``(inputs, pre, out)``."""
    net.require("exact reference forward", ["oracle"])
    h = net.backend.asarray(x)
    inputs, pre = [], []
    for l in range(net.n_layers):
        xs = _layer_input(net, l, h)
        a = (rows(xs) @ net.weights(l).T).reshape(*xs.shape[:-1], -1)
        inputs.append(xs)
        pre.append(a)
        h = net.act(l, a)
    return inputs, pre, h.reshape(h.shape[0], -1)


def _layer_input(net, l, h):
    if hasattr(net, "layer_input"):
        return net.layer_input(l, h)
    R = net.decorrelation(l)
    return h @ R.T if R is not None else h


def _input_gradient(net, l, d):
    if hasattr(net, "input_gradient"):
        return net.input_gradient(l, d)
    R = net.decorrelation(l)
    return d @ R if R is not None else d


def exact_gradients(net, x, t, loss: str | Loss = "cce") -> list:
    """Exact ``∂⟨L⟩/∂W_l`` (batch mean) by the chain rule in software (needs ``oracle``)."""
    loss = Loss(loss) if isinstance(loss, str) else loss
    inputs, pre, y = exact_forward(net, x)
    t = net.backend.asarray(t)
    L = net.n_layers
    g = loss.grad(y, t).reshape(pre[L - 1].shape) * net.act_grad(L - 1, pre[L - 1])
    grads = [None] * L
    for l in range(L - 1, -1, -1):
        grads[l] = batch_outer(g, inputs[l])
        if l:
            d = (rows(g) @ net.weights(l)).reshape(*g.shape[:-1], -1)
            g = _input_gradient(net, l, d) * net.act_grad(l - 1, pre[l - 1])
    return grads


def angle(u, v) -> float:
    """Angle in degrees between two arrays seen as flat vectors (float64)."""
    u = to_numpy(u).astype(np.float64).ravel()
    v = to_numpy(v).astype(np.float64).ravel()
    nu, nv = np.linalg.norm(u), np.linalg.norm(v)
    if nu == 0 or nv == 0:
        return float("nan")
    return float(np.degrees(np.arccos(np.clip(u @ v / (nu * nv), -1.0, 1.0))))


def angles(updates, reference) -> dict:
    """Per-layer angles and the whole-network angle (``"all"``) between two update lists."""
    out = {l: angle(u, r) for l, (u, r) in enumerate(zip(updates, reference))}
    flat = lambda us: np.concatenate([to_numpy(u).astype(np.float64).ravel() for u in us])
    out["all"] = angle(flat(updates), flat(reference))
    return out


def alignment(net, rule, x, t) -> dict:
    """Degrees between ``rule``'s update and exact BP's on the same batch, per layer and "all".

    Nothing is applied to the network.
    """
    est = rule.estimate(net, x, t)
    return angles(est.updates, exact_gradients(net, x, t, rule.loss))


def norms(updates) -> dict:
    """Frobenius norm of each layer's update and of the whole list (``"all"``)."""
    out = {l: float(np.linalg.norm(to_numpy(u).astype(np.float64))) for l, u in enumerate(updates)}
    out["all"] = float(np.sqrt(sum(v * v for v in out.values())))
    return out


def diagnostics(net, rule, x, t) -> dict:
    """What a rule's update on one batch looks like next to exact BP's (nothing applied).

    Returns ``{"angle": {layer: deg, "all": deg}, "norm": {...}, "bp_norm": {...},
    "forward_passes": int, "loss": float}``. Needs ``oracle`` for the reference.
    """
    est = rule.estimate(net, x, t)
    ref = exact_gradients(net, x, t, rule.loss)
    return {"angle": angles(est.updates, ref), "norm": norms(est.updates), "bp_norm": norms(ref),
            "forward_passes": est.forward_passes, "loss": est.loss}
