"""The one writer of scenario results: ``results.h5``, ``summary.json``, one PNG per figure.

``results.h5`` (plain HDF5, no noisesim needed to read it)::

    /                       attrs: format="noisesim-results", format_version=2, scenario,
                            noisesim_version, created, main (the main table), config (JSON);
                            from the command line also backend and dtype (as used), command
                            (JSON list), complete (bool), interrupted (why, when it was),
                            diverged (bool), wall_s, quick
    /tables/<name>/<col>    one dataset per column (float64, int64, bool or UTF-8 strings);
                            group attr "columns" lists the column order (JSON)
    /arrays/<name>/values   the array; attr "dims" (JSON list); one dataset per dimension
                            with coordinates, named after it and attached as a dimension scale
    /claims/<col>           the claims as a table: key, statement, verdict, ours, paper, note

``summary.json`` holds the config, the tables' rows, the claims and the figure files.

>>> import h5py                                                          # doctest: +SKIP
>>> with h5py.File("runs/decorrelation-…/results.h5") as f:              # doctest: +SKIP
...     acc = f["tables/final/test_acc"][()]
"""
from __future__ import annotations

import datetime as _dt
import json
import math
import os
from pathlib import Path

import h5py
import numpy as np

import noisesim

from .result import ROLES, Result, Table

FORMAT, FORMAT_VERSION = "noisesim-results", 2


def default_out_dir(scenario: str, root="runs") -> Path:
    """A new folder ``runs/<scenario>-<time>`` created here and now (``-2``, ``-3``… when a run
    started in the same second already took the name): two runs never share a folder."""
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    Path(root).mkdir(parents=True, exist_ok=True)
    for i in range(1, 1000):
        out = Path(root) / (f"{scenario}-{stamp}" + (f"-{i}" if i > 1 else ""))
        try:
            out.mkdir()
            return out
        except FileExistsError:
            continue
    raise ValueError(f"could not create a new run folder under {root}/")


def prepare_out_dir(path) -> Path:
    """Create ``path`` (a directory) before any work runs, so a bad ``--out`` costs nothing.

    Raises ``ValueError`` when it exists as a file or is not writable (tried by writing).
    """
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} exists and is not a directory")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ValueError(f"--out {out}: cannot create the directory ({exc.strerror or exc})") from None
    if not os.access(out, os.W_OK):
        raise ValueError(f"--out {out} is not writable")
    probe = out / f".noisesim-write-test-{os.getpid()}"
    try:        # a read-only file system, /proc, a quota: found by writing, as root too
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise ValueError(f"--out {out} is not writable ({exc.strerror or exc})") from None
    return out


# --------------------------------------------------------------------------- results.h5
def _column_data(values):
    kinds = {type(v) for v in values if v is not None}
    if kinds <= {bool}:
        return np.array([bool(v) for v in values], dtype=bool)
    if kinds <= {int} and None not in values:
        return np.array(values, dtype=np.int64)
    if kinds <= {int, float}:
        return np.array([np.nan if v is None else float(v) for v in values], dtype=np.float64)
    return np.array(["" if v is None else str(v) for v in values], dtype=h5py.string_dtype())


def _write_table(g, table: Table) -> None:
    g.attrs["columns"] = json.dumps(table.columns)
    for c in table.columns:
        g.create_dataset(c, data=_column_data(table.column(c)))


def _attr(v):
    return v if isinstance(v, (int, float, str, bool, np.number)) else json.dumps(v, default=_json_default)


RUN_ATTRS = ("backend", "dtype", "command", "complete", "interrupted", "diverged", "wall_s", "quick")


def write_results_h5(path: Path, scenario: str, config: dict, result: Result, meta: dict | None = None) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with h5py.File(tmp, "w") as f:
        f.attrs["format"] = FORMAT
        f.attrs["format_version"] = FORMAT_VERSION
        f.attrs["noisesim_version"] = noisesim.__version__
        f.attrs["scenario"] = scenario
        for k in RUN_ATTRS:     # what made the run and how it ended (also in summary.json)
            if (meta or {}).get(k) is not None:
                f.attrs[k] = _attr(meta[k])
        f.attrs["created"] = _dt.datetime.now(_dt.timezone.utc).isoformat()
        f.attrs["main"] = result.main
        f.attrs["config"] = json.dumps(config, sort_keys=True, default=_json_default)
        for name, table in result.tables.items():
            _write_table(f.create_group(f"tables/{name}"), table)
        for name, arr in result.arrays.items():
            g = f.create_group(f"arrays/{name}")
            ds = g.create_dataset("values", data=arr.values)
            g.attrs["dims"] = json.dumps(list(arr.dims))
            for k, v in arr.attrs.items():
                g.attrs[k] = _attr(v)
            for i, d in enumerate(arr.dims):
                if d in arr.coords:
                    c = _column_data(list(_plain_list(arr.coords[d])))
                    cd = g.create_dataset(d, data=c)
                    if c.dtype.kind in "fiub":
                        cd.make_scale(d)
                        ds.dims[i].attach_scale(cd)
                    ds.dims[i].label = d
        _write_table(f.create_group("claims"), claims_table(result))
    os.replace(tmp, path)


def _plain_list(seq):
    for v in seq:
        yield v.item() if isinstance(v, np.generic) else v


def claims_table(result: Result) -> Table:
    t = Table(["key", "statement", "verdict", "ours", "paper", "note"])
    for c in result.claims:
        t.add(key=c.key, statement=c.statement, verdict=c.verdict, ours=c.ours, paper=c.paper, note=c.note)
    return t


# --------------------------------------------------------------------------- figures
def _colours(result: Result) -> dict:
    """One colour per group (rule), in order of first appearance across all figures."""
    import matplotlib

    palette = matplotlib.colormaps["tab10"].colors + matplotlib.colormaps["Dark2"].colors
    out: dict = {}
    for fig in result.figures.values():
        for p in fig.panels:
            for s in p.series:
                g = s.group or s.label
                if g not in out:
                    out[g] = palette[len(out) % len(palette)]
    return out


def plot_figure(path: Path, fig, colours: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker  # noqa: F401

    n = max(len(fig.panels), 1)
    cols = min(fig.columns, n)
    rows = math.ceil(n / cols)
    f, axes = plt.subplots(rows, cols, figsize=(4.6 * cols, 3.6 * rows), squeeze=False)
    for ax, p in zip(axes.flat, fig.panels):
        for s in p.series:
            c = colours.get(s.group or s.label)
            x, y = np.asarray(s.x, float), np.asarray(s.y, float)
            ax.plot(x, y, ROLES[s.role], color=c, marker=s.marker, markersize=4, label=s.label)
            if s.lo is not None and s.hi is not None:
                ax.fill_between(x, np.asarray(s.lo, float), np.asarray(s.hi, float), color=c, alpha=0.15, lw=0)
        for x, label in p.vlines:
            ax.axvline(x, color="0.4", ls=":", lw=1)
            ax.annotate(label, (x, 1), xycoords=("data", "axes fraction"), rotation=90, va="top",
                        ha="right", fontsize=7, color="0.3")
        for y, label in p.hlines:
            ax.axhline(y, color="0.4", ls=":", lw=1)
            ax.annotate(label, (0, y), xycoords=("axes fraction", "data"), va="bottom", fontsize=7, color="0.3")
        ax.set(title=p.title, xlabel=p.xlabel, ylabel=p.ylabel, xscale=p.xscale, yscale=p.yscale)
        lo, hi = ax.get_ylim()
        if p.yscale == "log" and 0 < lo and hi / lo < 10:   # plain numbers within a decade, not 2.6×10⁰
            plain = matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}")
            ax.yaxis.set_major_formatter(plain)
            ax.yaxis.set_minor_formatter(plain)
        if p.series:
            ax.legend(fontsize=7)
        ax.grid(alpha=0.25)
    for ax in list(axes.flat)[n:]:
        ax.set_visible(False)
    f.suptitle(fig.title)
    f.tight_layout()
    f.savefig(path, dpi=100)
    plt.close(f)


# --------------------------------------------------------------------------- the run
def summarise(scenario: str, config: dict, result: Result, **meta) -> dict:
    return {
        "scenario": scenario, "noisesim_version": noisesim.__version__,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(), **meta,
        "config": config, "main": result.main,
        "tables": {name: t.rows for name, t in result.tables.items()},
        "claims": [{"key": c.key, "statement": c.statement, "verdict": c.verdict, "holds": c.holds,
                    "ours": c.ours, "paper": c.paper, "note": c.note, "values": c.values}
                   for c in result.claims],
        "figures": [f"{name}.png" for name in result.figures],
        "notes": result.notes,
    }


def write_result(out_dir, scenario: str, config: dict, result: Result, *, figures: bool = True, **meta) -> dict:
    """Write ``results.h5``, ``summary.json`` and ``<figure>.png`` into ``out_dir``; return the summary.

    ``meta`` (e.g. ``wall_s``, ``quick``, ``command``, ``backend``, ``dtype``, ``complete``,
    ``interrupted``) goes into ``summary.json`` as is, and the keys of :data:`RUN_ATTRS` into
    ``results.h5``'s attributes too. ``diverged`` is added: whether any run of the main table
    diverged. ``figures=False`` skips the PNGs (the partial results written during a run).
    Each file is written to a temporary name and renamed, so a reader never sees half of one.
    """
    result.check()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    main = result.tables[result.main]
    if "diverged" in main.columns:
        meta.setdefault("diverged", any(bool(v) for v in main.column("diverged")))
    write_results_h5(out / "results.h5", scenario, config, result, meta)
    if figures:
        colours = _colours(result)
        for name, fig in result.figures.items():
            plot_figure(out / f"{name}.png", fig, colours)
    summary = summarise(scenario, config, result, **meta)
    if not figures:
        summary["figures"] = []
    tmp = out / "summary.json.tmp"
    tmp.write_text(json.dumps(summary, indent=2, sort_keys=False, default=_json_default, allow_nan=True))
    os.replace(tmp, out / "summary.json")
    return summary


RESERVED = ("results.h5", "results.h5.tmp", "summary.json", "summary.json.tmp")


def check_trace_path(trace, out_dir) -> Path:
    """Refuse a ``--trace`` that would clash with the run's own outputs, be a directory or
    cannot be created — before any training. Returns the path."""
    p = Path(trace)
    if p.is_dir():
        raise ValueError(f"--trace {p} is a directory; give a file name such as {p / 'run.h5'}")
    out = Path(out_dir).resolve()
    try:
        parent = p.parent.resolve()
    except OSError as exc:
        raise ValueError(f"--trace {p}: {exc.strerror or exc}") from None
    if parent == out and (p.name in RESERVED or p.suffix.lower() == ".png"):
        raise ValueError(f"--trace {p} would be overwritten by the run's own {p.name} in --out {out_dir}; "
                         "choose another name (e.g. trace.h5)")
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ValueError(f"--trace {p}: cannot create its folder ({exc.strerror or exc})") from None
    existed = p.exists()
    try:
        with open(p, "ab"):
            pass
    except OSError as exc:
        raise ValueError(f"--trace {p} cannot be written ({exc.strerror or exc})") from None
    if not existed:
        p.unlink()
    return p


def _json_default(o):
    if isinstance(o, (np.floating, np.integer, np.bool_)):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def format_report(result: Result) -> str:
    """The main table, then one line per claim with its verdict."""
    lines = [result.tables[result.main].format()]
    for c in result.claims:
        lines.append(f"[{c.verdict}] {c.statement}: {c.ours}" + (f" (paper: {c.paper})" if c.paper else ""))
    lines.extend(f"note: {n}" for n in result.notes)
    return "\n".join(lines)
