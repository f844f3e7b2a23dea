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
from rules.base import DivergenceGuard, blas_threads, takes_guard

from . import checkpoint as _checkpoint

log = logging.getLogger("noisesim")


MAX_EPOCHS = 1_000_000
GOOD_LOSS_GROWTH = 2.0   # a stopped run's state is reported when its loss is at most this × the last epoch's


@dataclass
class History:
    """Per-epoch metrics of one run (epoch 0 is the untrained network).

    ``test_*`` come from noisy device inference on the whole test split, ``train_*`` on the
    training samples :func:`eval_subset` picks (all of them up to ``eval_train``), at the end
    of every ``eval_every``-th epoch and of the last; ``step_loss`` is the mean loss the rule
    saw during the epoch.
    ``diverged``: why the divergence guard stopped the run (the last row is then the last
    good state's numbers, see :func:`train`); ``interrupted``: why the run was cut short
    (Ctrl-C, a trace that could not be written, an error) — its rows are the epochs finished.
    """

    rule: str
    epochs: list = field(default_factory=list)
    forward_passes: int = 0
    steps: int = 0
    wall_s: float = 0.0
    diverged: str | None = None
    trace: str | None = None
    interrupted: str | None = None
    backend: str | None = None
    dtype: str | None = None

    def last(self, key: str):
        return self.epochs[-1][key] if self.epochs else None

    def column(self, key: str) -> np.ndarray:
        return np.array([e[key] for e in self.epochs], dtype=float)


def evaluate(net, x, y, loss, batch_size: int = 1000, *, task: str | None = None) -> tuple[float, float]:
    """(mean loss, accuracy or NaN for regression) of noisy device inference on ``x``.

    ``task``: ``"classification"`` (``y`` class indices) or ``"regression"``; by default
    1-D ``y`` are class indices. NaNs for an empty ``x``."""
    total, correct = 0.0, 0
    classification = y.ndim == 1 if task is None else task == "classification"
    if len(x) == 0:
        return float("nan"), float("nan")
    for i in range(0, len(x), batch_size):
        xb = x[i:i + batch_size]
        out = net.forward(xb, purpose="eval").out
        tb = _targets(y[i:i + batch_size], net.sizes[-1], classification)
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


def _targets(y, n_out, classification: bool):
    if classification:
        return np.eye(n_out, dtype=np.float32)[y]
    return y.astype(np.float32, copy=False).reshape(len(y), n_out)


def check_count(name: str, value, lo: int, hi: int) -> int:
    """``value`` as an ``int`` in ``[lo, hi]``, else ``ValueError`` naming ``name``."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or not lo <= value <= hi:
        raise ValueError(f"{name}={value!r} is out of range; allowed: an integer in [{lo}, {hi:,}]")
    return int(value)


def check_data(data, net) -> str:
    """Check ``data`` against ``net`` before training (non-empty, real inputs of the network's
    width, labels or targets that fit its outputs); return the task."""
    from .datasets import check_split

    name = getattr(data, "name", "dataset")
    task = getattr(data, "task", None) or ("classification" if np.ndim(data.y_train) == 1 else "regression")
    n_in, n_out = net.sizes[0], net.sizes[-1]
    check_split(name, data.x_train, data.y_train, "train", task, n_out)
    check_split(name, data.x_test, data.y_test, "test", task, n_out, empty_ok=True)
    if data.x_train.shape[1] != n_in or getattr(data, "n_outputs", n_out) != n_out:
        raise ValueError(f"dataset {name!r} is {data.x_train.shape[1]}→{getattr(data, 'n_outputs', '?')} but the "
                         f"network is {n_in}→{n_out}")
    return task


def train(net, rule, data, epochs: int = 5, batch_size: int = 64, *, progress: bool = True,
          on_step=None, label: str | None = None, trace=None, trace_options: dict | None = None,
          max_loss_ratio: float | None = 1e3, eval_every: int = 1, eval_train: int | None = 2000,
          checkpoint=None) -> History:
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

    The arguments, the data and the rule's access are checked before the first step. Batches
    are drawn in an order from the network's ``data`` stream. A divergence guard
    (:class:`rules.base.DivergenceGuard`) stops the run before applying a step whose loss,
    activity or update is not finite or whose loss exceeds ``max_loss_ratio`` × the untrained
    network's (``None``: that check off): ``History.diverged`` says at which step, in which
    layer, what blew up first and the likely setting; the network keeps its state, and the
    last row of ``History.epochs`` is that state's numbers when they are finite and its loss
    at most ``GOOD_LOSS_GROWTH`` × the last epoch's (else the last epoch's row stays last:
    the last good state; ``History.diverged`` says which). ``on_step(step, x_idx, est)`` is
    called after each applied step. ``trace=FILE`` records every step into an HDF5 trace
    (:class:`noisesim.trace.TraceWriter`, keyword options in ``trace_options``:
    ``compression``, ``float16``, ``meta``…), closed when training ends however it ends.

    Ctrl-C, a trace that cannot be written (``TraceError``) or any other error stop the run:
    the trace is closed as interrupted, ``History.interrupted`` says why, and the exception is
    raised again carrying the run so far as ``exc.history``. ``checkpoint`` (a
    :class:`scenarios.checkpoint.Checkpoint`; default: the active checkpoint session's next
    file, if any) saves the complete state every N steps and at the end, and continues from
    the file when it exists (see :mod:`scenarios.checkpoint`).
    """
    epochs = check_count("epochs", epochs, 0, MAX_EPOCHS)
    batch_size = check_count("batch_size", batch_size, 1, 2 ** 31 - 1)
    eval_every = check_count("eval_every", eval_every, 1, MAX_EPOCHS)
    eval_train = None if eval_train is None else check_count("eval_train", eval_train, 1, 2 ** 62)
    task = check_data(data, net)
    guard = DivergenceGuard(max_loss_ratio)     # validates max_loss_ratio before anything starts
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
            _close(writer, "interrupted")
        raise
    hist = History(rule=label or rule.label, trace=None if writer is None else str(writer.path),
                   backend=net.backend.name, dtype=str(np.dtype(net.dtype))) \
        if pos is None else restored
    order_rng = net.random("data")
    n = len(data.x_train)
    steps_per_epoch = (n + batch_size - 1) // batch_size

    on_train = eval_subset(n, eval_train)

    def record(epoch, step_loss, wall):
        te_loss, te_acc = evaluate(net, data.x_test, data.y_test, rule.loss, task=task)
        tr_loss, tr_acc = evaluate(net, data.x_train[on_train], data.y_train[on_train], rule.loss, task=task)
        hist.epochs.append(dict(epoch=epoch, train_loss=tr_loss, train_acc=tr_acc, test_loss=te_loss,
                                test_acc=te_acc, step_loss=step_loss, forward_passes=hist.forward_passes,
                                wall_s=wall))

    bar = _progress(epochs * steps_per_epoch, hist.rule, progress)
    if pos is not None:
        bar.update(hist.steps)
    scope = contextlib.ExitStack()
    t0 = time.perf_counter()
    status = "complete"
    losses = []
    try:
        if pos is None:
            record(0, float("nan"), 0.0)
        guard.start_loss = hist.epochs[0]["train_loss"] if np.isfinite(hist.epochs[0]["train_loss"]) else None
        t0 = time.perf_counter() - (hist.wall_s if pos is not None else 0.0)
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
                t = _targets(data.y_train[idx], net.sizes[-1], task == "classification")
                with blas_threads(net, len(idx)):                 # BLAS threads for this size
                    est = rule.step(net, x, t, guard=guard) if takes_guard(rule.step) else rule.step(net, x, t)
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
            if epoch % eval_every and epoch != epochs:
                continue
            record(epoch, float(np.mean(losses)), hist.wall_s)
            bar.set_postfix(test_acc=f"{hist.last('test_acc'):.3f}", loss=f"{hist.last('train_loss'):.3f}")
    except DivergenceError as exc:
        hist.wall_s = time.perf_counter() - t0
        hist.diverged = str(exc) + _last_good(hist, record, losses, hist.steps / max(steps_per_epoch, 1))
        log.warning("%s stopped: %s", hist.rule, hist.diverged)
    except BaseException as exc:
        status = "interrupted"
        hist.interrupted = _why(exc)
        try:
            exc.history = hist
        except AttributeError:
            pass
        raise
    finally:
        scope.close()
        bar.close()
        hist.wall_s = time.perf_counter() - t0
        if writer is not None:
            _close(writer, status)
    if ck is not None:   # a finished (or diverged) run: its final state and history
        ck.save(net, rule, hist, _checkpoint.Position(epochs, steps_per_epoch, None), done=True)
    return hist


def _last_good(hist, record, losses, epoch) -> str:
    """Record the kept state's numbers when they are good; say which state the numbers are of."""
    kept_after = hist.steps
    n_rows = len(hist.epochs)
    if not losses:      # stopped at an epoch's first step: that state's numbers are the last row
        return f". The numbers reported are of epoch {hist.last('epoch')} (after step {kept_after}), the last good state"
    try:
        record(round(epoch, 4), float(np.mean(losses)), hist.wall_s)
    except (ValueError, FloatingPointError, ArithmeticError):   # the device refuses non-finite activity
        pass
    row = hist.epochs[-1] if len(hist.epochs) > n_rows else {"train_loss": float("nan"), "test_loss": float("nan")}
    # good: finite and not clearly worse than the last evaluated state (the blow-up had begun)
    before = hist.epochs[n_rows - 1]["train_loss"]
    good = all(np.isfinite(row[k]) for k in ("train_loss", "test_loss")) and \
        (not np.isfinite(before) or row["train_loss"] <= GOOD_LOSS_GROWTH * before)
    if good:
        return f". The numbers reported are of the network after step {kept_after}, the last good state"
    del hist.epochs[n_rows:]
    last = hist.epochs[-1]
    return (f". The numbers reported are of epoch {last['epoch']} (the last good state; the network after step "
            f"{kept_after} has train loss {row['train_loss']:.3g})")


def _why(exc) -> str:
    from noisesim.trace import TraceError

    if type(exc).__name__ == "Terminated":
        return "terminated (SIGTERM)"
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted by the user (Ctrl-C)"
    if isinstance(exc, TraceError):
        return f"the trace could not be written: {exc}"
    return f"{type(exc).__name__}: {exc}"


def _close(writer, status: str) -> None:
    """Close the trace; after an interruption mark it so and let the original error through."""
    if status == "complete":
        writer.close()
        return
    try:
        writer.close(status=status)
    except Exception as exc:   # the run's own error is the one to report
        log.warning("closing the trace %s: %s", writer.path, exc)


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
