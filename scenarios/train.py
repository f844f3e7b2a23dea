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

from . import checkpoint as _checkpoint

log = logging.getLogger("noisesim")


@dataclass
class History:
    """Per-epoch metrics of one run (epoch 0 is the untrained network).

    ``train_loss``/``train_acc`` and ``test_*`` come from noisy device inference on the whole
    split at the end of each epoch; ``step_loss`` is the mean loss the rule saw during it.
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


def _targets(y, n_out):
    if y.ndim == 1:
        return np.eye(n_out, dtype=np.float32)[y]
    return y.astype(np.float32, copy=False)


def train(net, rule, data, epochs: int = 5, batch_size: int = 64, *, progress: bool = True,
          on_step=None, label: str | None = None, trace=None, trace_options: dict | None = None,
          checkpoint=None) -> History:
    """Train ``net`` with ``rule`` on ``data`` (a :class:`scenarios.datasets.Dataset`).

    Access is checked before the first step. Batches are drawn in an order from the network's
    ``data`` stream. A non-finite loss or update stops the run with a message in
    ``History.diverged``; the network keeps its last good state. ``on_step(step, x_idx, est)``
    is called after each applied step. ``trace=FILE`` records every step into an HDF5 trace
    (:class:`noisesim.trace.TraceWriter`, keyword options in ``trace_options``: ``compression``,
    ``float16``, ``meta``…), closed when training ends however it ends. ``checkpoint`` (a
    :class:`scenarios.checkpoint.Checkpoint`; default: the active checkpoint session's next
    file, if any) saves the complete state every N steps and at the end, and continues from
    the file when it exists (see :mod:`scenarios.checkpoint`).
    """
    if epochs < 0 or batch_size < 1:
        raise ValueError(f"epochs={epochs!r} must be ≥ 0 and batch_size={batch_size!r} ≥ 1")
    if data.n_features != net.sizes[0] or data.n_outputs != net.sizes[-1]:
        raise ValueError(f"dataset {data.name!r} is {data.n_features}→{data.n_outputs} but the network "
                         f"is {net.sizes[0]}→{net.sizes[-1]}")
    # checkpoints: continue from a saved state (or return a finished run's history at once)
    ck = _checkpoint.for_run(checkpoint, label or rule.label)
    pos = None
    restored = History(rule=label or rule.label)
    if ck is not None:
        pos = ck.restore(net, rule, restored)
        if pos is not None and pos.epoch is None:
            return restored
    writer = None
    if trace is not None:
        import noisesim.trace

        Path(trace).parent.mkdir(parents=True, exist_ok=True)
        resume = {} if pos is None else {"resume_steps": restored.steps}   # the trace continues too
        writer = noisesim.trace.TraceWriter(trace, net, rule, **(trace_options or {}), **resume)
        on_step = _chain(writer.on_step, on_step)
    try:
        if pos is None:
            rule.init(net)
    except BaseException:
        if writer is not None:
            writer.close()
        raise
    hist = History(rule=label or rule.label, trace=None if writer is None else str(writer.path)) \
        if pos is None else restored
    order_rng = net.random("data")
    n = len(data.x_train)
    steps_per_epoch = (n + batch_size - 1) // batch_size

    def record(epoch, step_loss, wall):
        te_loss, te_acc = evaluate(net, data.x_test, data.y_test, rule.loss)
        tr_loss, tr_acc = evaluate(net, data.x_train, data.y_train, rule.loss)
        hist.epochs.append(dict(epoch=epoch, train_loss=tr_loss, train_acc=tr_acc, test_loss=te_loss,
                                test_acc=te_acc, step_loss=step_loss, forward_passes=hist.forward_passes,
                                wall_s=wall))

    if pos is None:
        record(0, float("nan"), 0.0)
    bar = _progress(epochs * steps_per_epoch, hist.rule, progress)
    if pos is not None:
        bar.update(hist.steps)
    scope = contextlib.ExitStack()
    t0 = time.perf_counter() - (hist.wall_s if pos is not None else 0.0)
    try:
        if writer is not None and writer.background:
            # the trace writer process gets a core of its own (BLAS gives one up meanwhile)
            scope.enter_context(noisesim.trace.leave_a_core())
        for epoch in range(1 if pos is None else pos.epoch, epochs + 1):
            if pos is not None and epoch == pos.epoch:     # the epoch a checkpoint stopped in
                perm, losses, first = pos.perm, pos.losses, pos.step
            else:
                perm, losses, first = order_rng.permutation(n), [], 0
            for s in range(first, steps_per_epoch):
                idx = perm[s * batch_size:(s + 1) * batch_size]
                x = data.x_train[idx]
                t = _targets(data.y_train[idx], net.sizes[-1])
                est = rule.step(net, x, t)
                hist.forward_passes += est.forward_passes
                hist.steps += 1
                losses.append(est.loss)
                if on_step is not None:
                    on_step(hist.steps, idx, est)
                if ck is not None and ck.due(hist.steps):
                    if writer is not None:
                        writer.flush()          # the trace holds every step the checkpoint has
                    hist.wall_s = time.perf_counter() - t0
                    ck.save(net, rule, hist, _checkpoint.Position(epoch, s + 1, perm, losses))
                bar.update(1)
            hist.wall_s = time.perf_counter() - t0
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
    if ck is not None:   # a finished (or diverged) run: its final state and history
        ck.save(net, rule, hist, _checkpoint.Position(epochs, steps_per_epoch, None), done=True)
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
