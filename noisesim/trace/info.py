"""``noisesim trace info``: what a trace holds, how big it is, and statistics of its δa.

Per layer of every per-layer record array other than the inputs (``da`` for the activity
rules, ``g`` for BP …), over the recorded samples of up to ``max_steps`` evenly spaced steps:
mean, std, and a summary of the unit-by-unit correlation matrix — mean and max |off-diagonal
correlation| and the participation ratio ``(Σλ)²/Σλ²`` of the covariance eigenvalues divided
by the width (1: isotropic, 1/n: one direction).
"""
from __future__ import annotations

import json
import os

import numpy as np

from .reader import open_trace


def _corr_summary(X: np.ndarray) -> dict:
    X = X.astype(np.float64)
    out = {"samples": int(X.shape[0]), "mean": float(X.mean()) if X.size else float("nan"),
           "std": float(X.std()) if X.size else float("nan")}
    n = X.shape[1]
    if X.shape[0] < 2 or n < 2:
        return {**out, "mean_abs_corr": float("nan"), "max_abs_corr": float("nan"), "participation": float("nan")}
    Xc = X - X.mean(axis=0)
    C = Xc.T @ Xc / (X.shape[0] - 1)
    d = np.sqrt(np.clip(np.diag(C), 0, None))
    live = d > 0
    R = C[np.ix_(live, live)] / np.outer(d[live], d[live])
    off = R[~np.eye(R.shape[0], dtype=bool)]
    lam = np.clip(np.linalg.eigvalsh(C), 0, None)
    pr = float(lam.sum() ** 2 / (lam ** 2).sum() / n) if (lam ** 2).sum() > 0 else float("nan")
    return {**out, "mean_abs_corr": float(np.abs(off).mean()) if off.size else float("nan"),
            "max_abs_corr": float(np.abs(off).max()) if off.size else float("nan"), "participation": pr}


def info(path, *, verify: bool = True, max_steps: int = 200) -> dict:
    """A dict describing the trace at ``path`` (raises ``TraceError`` if it is damaged)."""
    with open_trace(path) as r:
        n = r.complete_steps
        verified = r.verify() if verify else None
        d = {"path": r.path, "format_version": r.version, "noisesim_version": r.noisesim_version,
             "created": r.created, "config": r.config, "complete_steps": n, "closed": r.closed,
             "status": r.status, "error": r.error,
             "has_final_state": r.has_final_state, "verified_steps": verified,
             "storage_dtype": r.storage_dtype, "lossy": r.lossy, "compression": r.compression,
             "file_bytes": os.path.getsize(r.path), "dataset_bytes": r.storage_bytes()}
        d["bytes_per_step"] = (sum(d["dataset_bytes"].values()) / n) if n else None
        d["complete"] = bool(r.closed and r.status == "complete" and d["has_final_state"])
        d["arrays"] = [{"name": e["name"], "shape": e["shape"], "dtype": e["stored"],
                        "alias": None if e["alias"] is None else e["alias"]["of"] + ("[0]" if e["alias"]["first"] else "")}
                       for e in (r.schema or {}).get("arrays", [])]
        rows = np.unique(np.linspace(0, n - 1, min(n, max_steps)).astype(int)) if n else []
        per, losses = {}, []
        for row in rows:
            st = r.step(int(row))
            losses.append(st.loss)
            for key, v in st.record.items():
                if not isinstance(v, list) or key == "inputs":
                    continue
                for l, a in enumerate(v):
                    if a.dtype.kind == "f" and a.ndim >= 1:
                        per.setdefault((key, l), []).append(a.reshape(-1, a.shape[-1]))
        d["stats"] = {f"{k}/{l}": _corr_summary(np.concatenate(v)) for (k, l), v in sorted(per.items())}
        d["loss_first_last"] = (losses[0], losses[-1]) if losses else None
    return d


def format_info(d: dict) -> str:
    """The text ``noisesim trace info`` prints."""
    c = d["config"]
    rule = c.get("rule") or {}
    status = d.get("status")
    if d["complete"]:
        state = "complete (closed cleanly, final state stored)"
    elif status == "interrupted":
        state = "INTERRUPTED (the run stopped before its end" + (f": {d['error']}" if d.get("error") else "") + \
                "; no final state)"
    elif status == "failed":
        state = f"FAILED (recording stopped by a write error: {d.get('error') or 'unknown'})"
    else:
        state = "INCOMPLETE (the writer did not close: the run or its writer process was killed)"
    lines = [
        f"trace {d['path']}",
        f"  format v{d['format_version']}, written by noisesim {d['noisesim_version']} at {d['created']}",
        f"  status: {state}; {d['complete_steps']} complete steps"
        + (f", all {d['verified_steps']} checksums verified" if d["verified_steps"] is not None else ""),
        f"  network {c['network'].get('sizes')} {c['network'].get('activation', '')}, backend {c.get('backend')}, "
        f"dtype {c.get('dtype')}, seed {c['seeds'].get('network') if c.get('seeds') else None}",
        f"  rule {json.dumps(rule, sort_keys=True)}",
        f"  device {json.dumps({k: v for k, v in (c.get('device') or {}).items() if v not in (0, 0.0, None)}, sort_keys=True)}",
        f"  run {json.dumps(c.get('run', {}), sort_keys=True)}",
        f"  storage {d['storage_dtype']}{' (LOSSY)' if d['lossy'] else ''}, compression {d['compression']}; "
        f"file {d['file_bytes']:,} bytes"
        + (f", {d['bytes_per_step']:,.0f} bytes/step" if d["bytes_per_step"] else ""),
        "  arrays per step (datasets under /steps): " + ", ".join(
            f"{e['name']}{tuple(e['shape'])}" + (f" (= {e['alias']})" if e["alias"] else "") for e in d["arrays"]),
    ]
    if d["loss_first_last"]:
        lines.append(f"  loss: first step {d['loss_first_last'][0]:.4g}, last step {d['loss_first_last'][1]:.4g}")
    if d["stats"]:
        lines.append("  per-layer statistics (correlation across units over recorded samples):")
        lines.append(f"    {'array':<10} {'samples':>8} {'mean':>11} {'std':>10} {'mean|corr|':>10} {'max|corr|':>9} {'PR/n':>6}")
        for k, s in d["stats"].items():
            lines.append(f"    {k:<10} {s['samples']:>8} {s['mean']:>11.3e} {s['std']:>10.3e} "
                         f"{s['mean_abs_corr']:>10.3f} {s['max_abs_corr']:>9.3f} {s['participation']:>6.3f}")
    return "\n".join(lines)
