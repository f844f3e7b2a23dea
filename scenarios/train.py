"""The training loop: forward → rule step → optimizer → device update, once per batch.

>>> history = scenarios.train(net, rule, scenarios.load("digits"), epochs=5)   # doctest: +SKIP
"""
from __future__ import annotations

import contextlib

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from noisesim.backend import to_numpy
from noisesim.errors import DivergenceError

log = logging.getLogger("noisesim")


@dataclass
class History:
    """Per-epoch metrics of one run (epoch 0 is the untrained network).

    ``test_*`` come from noisy device inference on the whole test split, ``train_*`` on the
    training samples :func:`eval_subset` picks (all of them up to ``eval_train``), at the end
    of every ``eval_every``-th epoch and of the last; ``step_loss`` is the mean loss the rule
    saw during the epoch.
    """

    rule: str
    epochs: list = field(default_factory=list)
    forward_passes: int = 0
    steps: int = 0
    wall_s: float = 0.0
    diverged: str | None = None
    trace: str | None = None

    def last(self, key: str):
        return self.epochs[-1][key] if self.epochs else None

    def column(self, key: str) -> np.ndarray:
        return np.array([e[key] for e in self.epochs], dtype=float)


def evaluate(net, x, y, loss, batch_size: int = 1000) -> tuple[float, float]:
    """(mean loss, accuracy or NaN for regression) of noisy device inference on ``x``."""
    total, correct = 0.0, 0
    classification = y.ndim == 1
    for i in range(0, len(x), batch_size):
        xb = x[i:i + batch_size]
        out = net.forward(xb, purpose="eval").out
        tb = _targets(y[i:i + batch_size], net.sizes[-1])
        total += float(loss.per_sample(out, net.backend.asarray(tb)).sum())
        if classification:
            correct += int((to_numpy(out).argmax(axis=1) == y[i:i + batch_size]).sum())
    n = len(x)
    return total / n, (correct / n if classification else float("nan"))


def eval_subset(n: int, eval_train: int | None) -> slice:
    """The training samples the train metrics are measured on: all ``n`` when ``eval_train`` is
    None or ≥ n, else ``eval_train`` of them evenly spaced (a fixed slice, the same every
    epoch, so curves compare like with like, and an ordered split is sampled evenly)."""
    if eval_train is None or eval_train >= n:
        return slice(None)
    return slice(0, (n // eval_train) * eval_train, n // eval_train)


def _check_count(name: str, value, lo: int, optional: bool = False):
    if optional and value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < lo:
        raise ValueError(f"{name}={value!r} is out of range; allowed: an integer ≥ {lo}"
                         + (" or None" if optional else ""))
    return int(value)


def _targets(y, n_out):
    if y.ndim == 1:
        return np.eye(n_out, dtype=np.float32)[y]
    return y.astype(np.float32, copy=False)


def train(net, rule, data, epochs: int = 5, batch_size: int = 64, *, progress: bool = True,
          on_step=None, label: str | None = None, trace=None, trace_options: dict | None = None,
          eval_every: int = 1, eval_train: int | None = 2000) -> History:
    """Train ``net`` with ``rule`` on ``data`` (a :class:`scenarios.datasets.Dataset`).

    ``batch_size`` defaults to 64: on the offline datasets (1.4k–16k training samples) that is
    20–250 updates an epoch, enough for Adam at the paper's rates to learn in tens of epochs on
    a laptop, while each update still averages the rule's estimate over 64 samples. The paper
    uses 1000 on CIFAR-10's 50k samples (its scenarios' ``scale=paper`` settings do too); the
    quickstart uses 32 on digits' 1437 for more updates in its few seconds.

    Evaluation (noisy device inference, its own random streams: it never shifts training)
    costs forward passes over the data; ``eval_every`` (epochs; the last epoch is always
    measured) and ``eval_train`` (training samples measured, see :func:`eval_subset`; None for
    all) bound it. The defaults keep every epoch's curve point and measure the training
    split on at most 2000 samples (±1 % on accuracy); the test split is always measured whole.

    Access is checked before the first step. Batches are drawn in an order from the network's
    ``data`` stream. A non-finite loss or update stops the run with a message in
    ``History.diverged``; the network keeps its last good state. ``on_step(step, x_idx, est)``
    is called after each applied step. ``trace=FILE`` records every step into an HDF5 trace
    (:class:`noisesim.trace.TraceWriter`, keyword options in ``trace_options``: ``compression``,
    ``float16``, ``meta``…), closed when training ends however it ends.
    """
    if epochs < 0 or batch_size < 1:
        raise ValueError(f"epochs={epochs!r} must be ≥ 0 and batch_size={batch_size!r} ≥ 1")
    eval_every = _check_count("eval_every", eval_every, 1)
    eval_train = _check_count("eval_train", eval_train, 1, optional=True)
    if data.n_features != net.sizes[0] or data.n_outputs != net.sizes[-1]:
        raise ValueError(f"dataset {data.name!r} is {data.n_features}→{data.n_outputs} but the network "
                         f"is {net.sizes[0]}→{net.sizes[-1]}")
    writer = None
    if trace is not None:
        import noisesim.trace

        Path(trace).parent.mkdir(parents=True, exist_ok=True)
        writer = noisesim.trace.TraceWriter(trace, net, rule, **(trace_options or {}))
        on_step = _chain(writer.on_step, on_step)
    try:
        rule.init(net)
    except BaseException:
        if writer is not None:
            writer.close()
        raise
    hist = History(rule=label or rule.label, trace=None if writer is None else str(writer.path))
    order_rng = net.random("data")
    n = len(data.x_train)
    steps_per_epoch = (n + batch_size - 1) // batch_size

    on_train = eval_subset(n, eval_train)

    def record(epoch, step_loss, wall):
        te_loss, te_acc = evaluate(net, data.x_test, data.y_test, rule.loss)
        tr_loss, tr_acc = evaluate(net, data.x_train[on_train], data.y_train[on_train], rule.loss)
        hist.epochs.append(dict(epoch=epoch, train_loss=tr_loss, train_acc=tr_acc, test_loss=te_loss,
                                test_acc=te_acc, step_loss=step_loss, forward_passes=hist.forward_passes,
                                wall_s=wall))

    record(0, float("nan"), 0.0)
    bar = _progress(epochs * steps_per_epoch, hist.rule, progress)
    scope = contextlib.ExitStack()
    t0 = time.perf_counter()
    try:
        if writer is not None and writer.background:
            # the trace writer process gets a core of its own (BLAS gives one up meanwhile)
            scope.enter_context(noisesim.trace.leave_a_core())
        for epoch in range(1, epochs + 1):
            perm = order_rng.permutation(n)
            losses = []
            for s in range(steps_per_epoch):
                idx = perm[s * batch_size:(s + 1) * batch_size]
                x = data.x_train[idx]
                t = _targets(data.y_train[idx], net.sizes[-1])
                est = rule.step(net, x, t)
                hist.forward_passes += est.forward_passes
                hist.steps += 1
                losses.append(est.loss)
                if on_step is not None:
                    on_step(hist.steps, idx, est)
                bar.update(1)
            hist.wall_s = time.perf_counter() - t0
            if epoch % eval_every and epoch != epochs:
                continue
            record(epoch, float(np.mean(losses)), hist.wall_s)
            bar.set_postfix(test_acc=f"{hist.last('test_acc'):.3f}", loss=f"{hist.last('train_loss'):.3f}")
    except DivergenceError as exc:
        hist.diverged = str(exc)
        log.warning("%s stopped: %s", hist.rule, exc)
    finally:
        scope.close()
        bar.close()
        hist.wall_s = time.perf_counter() - t0
        if writer is not None:
            writer.close()
    return hist


def _chain(first, second):
    if second is None:
        return first

    def both(step, idx, est):
        first(step, idx, est)
        second(step, idx, est)
    return both


def _progress(total, desc, enabled):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=f"{desc:>6}", disable=not enabled, leave=False, unit="step")
