"""``quickstart``: DANP from two noisy passes next to backprop on the ideal device.

A 64-256-256-256-10 leaky-ReLU network on scikit-learn's digits, every MVM on a simulated
crossbar with intrinsic node noise σ = 1e-3 (the ``ideal`` preset). DANP learns from the
difference of two noisy passes — no clean pass, no noise readout; BP uses transposed reads.
Loss: softmax cross-entropy summed over classes, averaged over the batch; batch 32 (digits
has 1 437 training samples: 45 steps an epoch).

Outputs: table ``final`` (accuracies of noisy device inference, final training loss, forward
passes, seconds), the ``learning_curves`` figure and arrays. About 6 s on 2 cores. BLAS runs on
one thread (``blas_threads``): at batch 32 a second thread only contends, and on a machine busy
with other work it made the run 6× slower (37 s against 6 s, measured).
"""
from __future__ import annotations

from ..experiment import EVALUATION, learning_curves
from ..result import Result
from ..runner import train_rules
from ..scenario import register

DEFAULTS = {
    "dataset": "digits",
    "sizes": [64, 256, 256, 256, 10],
    "rules": ["danp", "bp"],
    "rule_options": {
        "danp": {"baseline": "noisy", "lr": 1e-3},
        "bp": {"lr": 1e-3},
    },
    "device": "ideal",
    "device_overrides": {},
    "epochs": 15,
    "batch_size": 32,
    "seed": 0,
    "backend": "auto",
    "dtype": "float32",
    "activation": "leaky_relu",
    "slope": 0.2,
    "scale": "offline",
    "blas_threads": 1,
    "max_loss_ratio": 1e3,
    **EVALUATION,
}


@register("quickstart", "DANP (two noisy passes) vs BP on digits, ideal device", DEFAULTS,
          quick={"epochs": 2, "sizes": [64, 64, 10]}, paper={"dataset": "cifar10", "sizes": [3072, 1024, 1024, 1024, 10],
                                                             "batch_size": 1000, "epochs": 100, "blas_threads": None}, traces=True)
def quickstart(cfg: dict, ctx) -> Result:
    histories = train_rules(cfg, progress=ctx.progress, trace=ctx.trace, trace_options=ctx.trace_options,
                            scenario=ctx.scenario, ctx=ctx)
    res = Result(main="final")
    t = res.table("final", ["rule", "train_acc", "test_acc", "final_loss", "forward_passes", "wall_s", "diverged"])
    for label, h in histories.items():
        t.add(rule=label, train_acc=h.last("train_acc"), test_acc=h.last("test_acc"),
              final_loss=h.last("train_loss"), forward_passes=h.forward_passes, wall_s=round(h.wall_s, 2),
              diverged=h.diverged or "")
        if h.diverged:
            res.notes.append(f"{label} stopped early: {h.diverged}")
        if h.trace:
            res.notes.append(f"trace of {label}: {h.trace}")
    learning_curves(res, {k: [h] for k, h in histories.items()}, title="quickstart: DANP vs BP on digits")
    return res
