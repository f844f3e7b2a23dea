"""What every run writes: ``results.h5`` (per-epoch metrics), ``summary.json``, a PNG
learning curve, and the short table printed at the end."""
from __future__ import annotations

import datetime as _dt
import json
from pathlib import Path

import h5py
import numpy as np

import noisesim

METRICS = ("epoch", "train_loss", "train_acc", "test_loss", "test_acc", "step_loss", "forward_passes", "wall_s")


def default_out_dir(scenario: str) -> Path:
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{scenario}-{stamp}"


def summarise(scenario: str, config: dict, histories: dict) -> dict:
    results = {}
    for label, h in histories.items():
        results[label] = {
            "train_acc": h.last("train_acc"), "test_acc": h.last("test_acc"),
            "final_loss": h.last("train_loss"), "forward_passes": h.forward_passes,
            "wall_s": round(h.wall_s, 3), "steps": h.steps, "diverged": h.diverged,
        }
    return {"scenario": scenario, "config": config, "results": results}


def write_results_h5(path: Path, scenario: str, config: dict, histories: dict) -> None:
    with h5py.File(path, "w") as f:
        f.attrs["format"] = "noisesim-results"
        f.attrs["format_version"] = 1
        f.attrs["noisesim_version"] = noisesim.__version__
        f.attrs["scenario"] = scenario
        f.attrs["created"] = _dt.datetime.now(_dt.timezone.utc).isoformat()
        f.attrs["config"] = json.dumps(config, sort_keys=True)
        for label, h in histories.items():
            g = f.create_group(label)
            for key in METRICS:
                g.create_dataset(key, data=h.column(key))
            g.attrs["rule"] = label
            g.attrs["steps"] = h.steps
            g.attrs["diverged"] = h.diverged or ""


def plot_learning_curves(path: Path, scenario: str, histories: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    for label, h in histories.items():
        ep = h.column("epoch")
        ax1.plot(ep, h.column("test_acc"), label=f"{label} test")
        ax1.plot(ep, h.column("train_acc"), "--", alpha=0.6, label=f"{label} train")
        ax2.plot(ep, h.column("train_loss"), label=label)
    ax1.set(xlabel="epoch", ylabel="accuracy", title=f"{scenario}: accuracy")
    ax2.set(xlabel="epoch", ylabel="training loss", title=f"{scenario}: loss", yscale="log")
    ax1.legend(fontsize=8)
    ax2.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_run(out_dir, scenario: str, config: dict, histories: dict) -> dict:
    """Write results.h5, summary.json and learning_curve.png into ``out_dir``; return the summary."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    summary = summarise(scenario, config, histories)
    write_results_h5(out / "results.h5", scenario, config, histories)
    (out / "summary.json").write_text(json.dumps(summary, indent=2, sort_keys=True, default=_json_default))
    plot_learning_curves(out / "learning_curve.png", scenario, histories)
    return summary


def _json_default(o):
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def format_table(summary: dict) -> str:
    rows = [("rule", "train acc", "test acc", "final loss", "fwd passes", "seconds")]
    for label, r in summary["results"].items():
        rows.append((label, f"{r['train_acc']:.3f}", f"{r['test_acc']:.3f}", f"{r['final_loss']:.4f}",
                     f"{r['forward_passes']:,}", f"{r['wall_s']:.1f}"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    for label, r in summary["results"].items():
        if r.get("diverged"):
            lines.append(f"! {label} stopped early: {r['diverged']}")
    return "\n".join(lines)
