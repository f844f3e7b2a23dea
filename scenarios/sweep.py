"""Parameter sweeps on Dask: one task per point, on a laptop or a cluster, resumable.

    noisesim sweep SWEEP.toml [--scheduler ADDRESS] [--workers N] [--out DIR]

A sweep file names a scenario, settings common to every point, a grid (every combination of
the listed values) and/or explicit points, and the seeds; every (point, seed) is one run of the
scenario with ``n_seeds=1`` — one Dask task::

    scenario = "quickstart"
    quick = true                   # the scenario's --quick size
    metric = "test_acc"            # a column of the scenario's main table (default test_acc)
    x = "rule_options.danp.lr"     # the setting on the figure's x axis (default: the first swept one)
    seeds = [0, 1]                 # or a count: seeds = 3 → 0, 1, 2
    checkpoint_every = 100         # steps between checkpoints of a point (0: final state only)

    [settings]                     # every point (--set key=value; dotted keys reach nested ones)
    epochs = 3

    [grid]                         # every combination
    "rule_options.danp.lr" = [1e-3, 3e-3]
    device = ["ideal", "reram"]

    [[points]]                     # and these, each with every seed
    "rule_options.danp.lr" = 1e-2
    device = "ideal"

Without ``--scheduler`` the points run on a ``dask.distributed.LocalCluster`` of ``--workers``
processes (default: one per core; with CuPy and GPUs present, one per GPU, each pinned to its
GPU with ``CUDA_VISIBLE_DEVICES``); each worker limits BLAS and Numba to ``cores ÷ workers``
threads, so workers × threads ≤ cores. With ``--scheduler tcp://host:8786`` they run on that
cluster (started by ``dask scheduler``/``dask worker``, dask-jobqueue or dask-kubernetes; the
workers need noisesim installed and the data files at the same paths).

Output folder (default ``runs/sweep-<file name>``)::

    sweep.toml, points.json        the sweep as run, and its points
    points/<point>/result/         the point's results.h5, summary.json, figures and point.json
    points/<point>/checkpoint/     its training checkpoints (a killed worker's point continues)
    points/<point>/failed.json     the error of a point that failed (removed once it succeeds)
    points.csv, summary.csv        one row per point and main-table row; mean, min, max over seeds
    sweep.h5                       both tables (/tables/points/<col>, /tables/summary/<col>)
    sweep.png                      the metric against the x setting, mean and range over seeds

A point is complete when ``points/<point>/result/`` exists: it is written in a temporary folder
and renamed into place in one step, so a killed worker or two sweeps writing one folder never
leave a half-written result that counts. Running the sweep again skips complete points and
reruns failed and missing ones. A point whose run stopped on its divergence guard is
``diverged`` (with the step and what became non-finite), not ``failed``: only errors fail.
"""
from __future__ import annotations

import contextlib
import csv
import hashlib
import itertools
import json
import logging
import math
import os
import re
import shutil
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import checkpoint
from .result import Table

DONE = ("done", "diverged")
STATUS = ("done", "diverged", "failed", "missing")


# ------------------------------------------------------------------------------- the sweep file
@dataclass
class Point:
    """One run of the sweep: the swept ``params`` (setting → value) and the ``seed``."""

    params: dict
    seed: int

    @property
    def name(self) -> str:
        """The point's folder name: its settings and seed, readable (hashed when too long)."""
        parts = [f"{k}={_short(v)}" for k, v in self.params.items()] + [f"seed={self.seed}"]
        text = "__".join(re.sub(r"[^A-Za-z0-9.=+-]+", "_", part).strip("_") for part in parts)
        if len(text) > 120:
            digest = hashlib.sha1(json.dumps([self.params, self.seed], sort_keys=True).encode()).hexdigest()[:12]
            text = f"{text[:100]}-{digest}"
        return text


def _short(v) -> str:
    return json.dumps(v, separators=(",", ":")) if not isinstance(v, str) else v


@dataclass
class Sweep:
    """A parsed sweep file (see the module docstring)."""

    scenario: str
    quick: bool = False
    settings: dict = field(default_factory=dict)
    grid: dict = field(default_factory=dict)
    points: list = field(default_factory=list)
    seeds: list = field(default_factory=lambda: [0])
    metric: str = "test_acc"
    x: str | None = None
    checkpoint_every: int = 100

    KEYS = ("scenario", "quick", "settings", "grid", "points", "seeds", "metric", "x", "checkpoint_every")

    @classmethod
    def from_dict(cls, d: dict, where: str = "sweep") -> "Sweep":
        unknown = sorted(set(d) - set(cls.KEYS))
        if unknown:
            raise ValueError(f"{where}: unknown entries {unknown}; allowed: {list(cls.KEYS)}")
        if not isinstance(d.get("scenario"), str):
            raise ValueError(f"{where}: 'scenario' must name a scenario")
        seeds = d.get("seeds", [0])
        if isinstance(seeds, int) and not isinstance(seeds, bool):
            if seeds < 1:
                raise ValueError(f"{where}: seeds={seeds} must be ≥ 1 (a count) or a list of seeds")
            seeds = list(range(seeds))
        if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) and not isinstance(s, bool)
                                                                 and s >= 0 for s in seeds):
            raise ValueError(f"{where}: seeds={seeds!r} must be a count or a non-empty list of integers ≥ 0")
        grid = d.get("grid", {})
        if not isinstance(grid, dict) or not all(isinstance(v, list) and v for v in grid.values()):
            raise ValueError(f"{where}: [grid] must map each setting to a non-empty list of values")
        points = d.get("points", [])
        if not isinstance(points, list) or not all(isinstance(p, dict) for p in points):
            raise ValueError(f"{where}: [[points]] must be tables of settings")
        if not grid and not points:
            raise ValueError(f"{where}: no points: give a [grid] or [[points]]")
        if "seed" in grid or any("seed" in p for p in points) or "seed" in d.get("settings", {}):
            raise ValueError(f"{where}: give the seeds as 'seeds = [...]', not as a setting")
        every = d.get("checkpoint_every", 100)
        if isinstance(every, bool) or not isinstance(every, int) or every < 0:
            raise ValueError(f"{where}: checkpoint_every={every!r} must be an integer ≥ 0 (steps)")
        sw = cls(scenario=d["scenario"], quick=bool(d.get("quick", False)), settings=dict(d.get("settings", {})),
                 grid=dict(grid), points=[dict(p) for p in points], seeds=list(seeds),
                 metric=str(d.get("metric", "test_acc")), x=d.get("x"), checkpoint_every=every)
        if sw.x is not None and sw.x not in sw.swept():
            raise ValueError(f"{where}: x={sw.x!r} is not a swept setting; swept: {sw.swept()}")
        return sw

    def swept(self) -> list[str]:
        """The settings that vary, in file order (grid first, then the points' own)."""
        out = list(self.grid)
        for p in self.points:
            out.extend(k for k in p if k not in out)
        return out

    def expand(self) -> list[Point]:
        """Every (grid combination or explicit point) × seed, duplicates removed, in order."""
        combos = [dict(zip(self.grid, vals)) for vals in itertools.product(*self.grid.values())] if self.grid else []
        combos += [dict(p) for p in self.points]
        out, seen = [], set()
        for params in combos:
            for s in self.seeds:
                p = Point(params, s)
                if p.name not in seen:
                    seen.add(p.name)
                    out.append(p)
        return out

    def pairs(self, point: Point, defaults: dict) -> list:
        """The ``(key, value)`` settings of one point's run (``n_seeds=1`` where the scenario has it)."""
        pairs = [*self.settings.items(), *point.params.items(), ("seed", point.seed)]
        if "n_seeds" in defaults:
            pairs.append(("n_seeds", 1))
        return pairs


def load(path) -> Sweep:
    """Read a sweep file (TOML)."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib
    path = Path(path)
    try:
        d = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"sweep file {path} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"{path}: not valid TOML ({exc})") from None
    return Sweep.from_dict(d, str(path))


def check(sweep: Sweep) -> None:
    """Fail before anything runs when the scenario, a setting or the metric is unknown."""
    from .scenario import configure, get

    sc = get(sweep.scenario)
    for p in sweep.expand():
        configure(sc, sweep.pairs(p, sc.defaults), quick=sweep.quick)


# ------------------------------------------------------------------------------- one point (on a worker)
def limit_threads(n: int):
    """Limit BLAS/OpenMP (threadpoolctl) and Numba to ``n`` threads in this process (a context)."""
    from threadpoolctl import threadpool_limits

    stack = contextlib.ExitStack()
    stack.enter_context(threadpool_limits(limits=n))
    try:
        import numba

        before = numba.get_num_threads()
        numba.set_num_threads(max(1, min(n, numba.config.NUMBA_NUM_THREADS)))
        stack.callback(numba.set_num_threads, before)
    except Exception:  # pragma: no cover - Numba without a threading layer
        pass
    return stack


def publish(tmp: Path, final: Path) -> bool:
    """Rename the finished folder ``tmp`` to ``final`` in one step. ``False`` (and ``tmp``
    removed) when ``final`` already exists: another writer finished the same point first."""
    try:
        os.rename(tmp, final)
        return True
    except OSError:
        if not (final / "point.json").exists():
            raise
        shutil.rmtree(tmp, ignore_errors=True)
        return False


def read_point(point_dir) -> dict:
    """The status of a point folder: its ``point.json`` when complete, else the failure, else missing."""
    point_dir = Path(point_dir)
    done = point_dir / "result" / "point.json"
    if done.exists():
        return json.loads(done.read_text())
    failed = point_dir / "failed.json"
    if failed.exists():
        with contextlib.suppress(ValueError):
            return json.loads(failed.read_text())
    return {"status": "missing"}


def run_point(scenario: str, quick: bool, pairs: list, point_dir: str, checkpoint_every: int,
              threads: dict | int = 1) -> dict:
    """Run one point (this is the Dask task): the scenario with ``pairs``, its results written
    into ``point_dir/result/`` atomically. Returns the point's status (``done``, ``diverged`` or
    ``failed``, with the error); a complete point already there is returned as it is."""
    from .output import write_result
    from .scenario import Context, configure, execute, get, validate

    point_dir = Path(point_dir)
    status = read_point(point_dir)
    if status.get("status") in DONE:
        return status
    n = threads if isinstance(threads, int) else threads.get(_host(), 1)
    t0 = time.perf_counter()
    point_dir.mkdir(parents=True, exist_ok=True)
    info = {"pairs": pairs, "host": _host(), "pid": os.getpid(), "threads": n}
    tmp = None
    try:
        with limit_threads(n):
            sc = get(scenario)
            cfg = configure(sc, pairs, quick=quick)
            validate(cfg)
            with checkpoint.session(point_dir / "checkpoint", checkpoint_every) as sess:
                result = execute(sc, cfg, Context(progress=False, scenario=scenario))
            diverged = [{"run": ck.label, "step": ck.history.steps + 1, "what": ck.history.diverged}
                        for ck in sess.runs if ck.history is not None and ck.history.diverged]
            resumed = [{"run": ck.label, "step": ck.resumed_at} for ck in sess.runs if ck.resumed_at is not None]
            tmp = Path(tempfile.mkdtemp(prefix=".result-", dir=point_dir))
            wall = time.perf_counter() - t0
            write_result(tmp, scenario, cfg, result, wall_s=round(wall, 2), quick=quick)
            status = {"status": "diverged" if diverged else "done", "diverged": diverged, "resumed": resumed,
                      "wall_s": round(wall, 2), "main": result.main, **info}
            checkpoint.atomic_write_json(tmp / "point.json", status)
        if publish(tmp, point_dir / "result"):
            with contextlib.suppress(FileNotFoundError):
                os.remove(point_dir / "failed.json")
        return read_point(point_dir)
    except Exception as exc:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        status = {"status": "failed", "error": f"{type(exc).__name__}: {exc}",
                  "traceback": traceback.format_exc(), "wall_s": round(time.perf_counter() - t0, 2), **info}
        checkpoint.atomic_write_json(point_dir / "failed.json", status)
        return status


def _host() -> str:
    import socket

    return socket.gethostname()


# ------------------------------------------------------------------------------- workers
def cores() -> int:
    """CPU cores this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - macOS, Windows
        return os.cpu_count() or 1


def detect_gpus() -> list[int]:
    """The CUDA devices usable through CuPy (``[]`` without CuPy or GPUs)."""
    try:
        import cupy

        return list(range(cupy.cuda.runtime.getDeviceCount()))
    except Exception:
        return []


THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS")


def worker_plan(n_workers: int | None, n_cores: int, gpus: list) -> list[dict]:
    """The environment of each local worker process.

    With GPUs: one worker per GPU (``n_workers`` at most), each seeing only its own
    (``CUDA_VISIBLE_DEVICES``). Else ``n_workers`` CPU workers (default one per core). Either
    way each gets ``max(1, cores // workers)`` BLAS/OpenMP/Numba threads: workers × threads ≤
    cores (one thread each when there are more workers than cores).
    """
    if n_workers is not None and n_workers < 1:
        raise ValueError(f"--workers {n_workers} is out of range; allowed: an integer ≥ 1")
    if gpus:
        devices = list(gpus)[:n_workers] if n_workers else list(gpus)
        threads = max(1, n_cores // len(devices))
        return [{**{v: str(threads) for v in THREAD_VARS}, "CUDA_VISIBLE_DEVICES": str(d)} for d in devices]
    n = n_workers or max(1, n_cores)
    threads = max(1, n_cores // n)
    return [{v: str(threads) for v in THREAD_VARS} for _ in range(n)]


def local_cluster(plan: list[dict]):
    """A cluster of one single-threaded worker process per entry of ``plan`` (its environment),
    on loopback: a ``LocalCluster`` when all environments are equal (CPU), else a ``SpecCluster``
    with one ``Nanny`` per GPU."""
    from distributed import LocalCluster, Nanny, Scheduler, SpecCluster

    if all(env == plan[0] for env in plan):
        return LocalCluster(n_workers=len(plan), threads_per_worker=1, processes=True, env=plan[0],
                            host="127.0.0.1", dashboard_address="127.0.0.1:0", silence_logs=logging.ERROR)
    workers = {f"gpu-{env['CUDA_VISIBLE_DEVICES']}": {
        "cls": Nanny, "options": {"nthreads": 1, "env": env, "host": "127.0.0.1", "silence_logs": logging.ERROR}}
        for env in plan}
    scheduler = {"cls": Scheduler, "options": {"host": "127.0.0.1", "dashboard_address": "127.0.0.1:0",
                                               "dashboard": False}}
    return SpecCluster(workers=workers, scheduler=scheduler, silence_logs=logging.ERROR)


def thread_budget(client) -> dict:
    """``{host: threads}`` for the workers of ``client``'s cluster: the host's cores ÷ the
    worker threads on it (at least 1)."""
    info = client.scheduler_info(n_workers=-1)["workers"] if _takes_n_workers(client) \
        else client.scheduler_info()["workers"]
    hosts: dict = {}
    for addr, w in info.items():
        hosts.setdefault(w.get("host", addr), []).append((addr, w.get("nthreads", 1)))
    ncores = client.run(lambda: (_host(), cores()))
    out = {}
    for addr, (host, n) in ncores.items():
        total = sum(t for _, t in hosts.get(info.get(addr, {}).get("host", addr), [(addr, 1)]))
        out[host] = max(1, n // max(1, total))
    return out


def _takes_n_workers(client) -> bool:
    import inspect

    return "n_workers" in inspect.signature(client.scheduler_info).parameters


# ------------------------------------------------------------------------------- the sweep
class Progress:
    """Points done / diverged / failed / running / waiting, elapsed time and ETA, printed one
    line per change (and every ``every`` seconds)."""

    def __init__(self, total: int, skipped: int, enabled: bool = True, stream=None, every: float = 30.0):
        self.total, self.skipped, self.enabled = total, skipped, enabled
        self.stream = stream or sys.stdout
        self.counts = {"done": 0, "diverged": 0, "failed": 0}
        self.t0 = time.perf_counter()
        self.every, self.last = every, 0.0

    def finished(self) -> int:
        return sum(self.counts.values())

    def add(self, status: str) -> None:
        self.counts["failed" if status not in DONE else status] += 1

    def line(self, running: int) -> str:
        todo = self.total - self.skipped
        left = todo - self.finished()
        elapsed = time.perf_counter() - self.t0
        eta = "?" if not self.finished() else _duration(elapsed / self.finished() * left)
        c = self.counts
        return (f"sweep: {self.skipped + c['done'] + c['diverged']}/{self.total} complete "
                f"({c['done']} done, {c['diverged']} diverged this run, {self.skipped} already), "
                f"{c['failed']} failed, {running} running, {max(0, left - running)} waiting; "
                f"{_duration(elapsed)} elapsed, ETA {eta if left else '0s'}")

    def show(self, running: int, force: bool = False) -> None:
        now = time.perf_counter()
        if self.enabled and (force or now - self.last >= self.every):
            print(self.line(running), file=self.stream, flush=True)
            self.last = now


def _duration(s: float) -> str:
    s = int(round(s))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


def run(sweep: Sweep, out, *, scheduler: str | None = None, workers: int | None = None,
        progress: bool = True, gpus: list | None = None, stream=None, threads: int | None = None) -> dict:
    """Run every point of ``sweep`` not complete in ``out`` on Dask, then write the aggregate.

    ``scheduler``: the address of a running cluster's scheduler (default: a local cluster of
    ``workers`` processes, :func:`worker_plan`); ``gpus``: the GPUs to pin local workers to
    (default: :func:`detect_gpus`); ``threads``: BLAS/Numba threads per point instead of the
    cores ÷ workers rule (for measurements). Returns ``{"points": [(Point, status)…], "tables": …}``.
    """
    from distributed import Client, wait

    from .scenario import get

    check(sweep)
    out = Path(out)
    (out / "points").mkdir(parents=True, exist_ok=True)
    points = sweep.expand()
    checkpoint.atomic_write_json(out / "points.json", [{"name": p.name, "params": p.params, "seed": p.seed}
                                                      for p in points])
    statuses = {p.name: read_point(out / "points" / p.name) for p in points}
    todo = [p for p in points if statuses[p.name].get("status") not in DONE]
    bar = Progress(len(points), len(points) - len(todo), progress, stream)
    defaults = get(sweep.scenario).defaults
    if todo:
        with contextlib.ExitStack() as stack:
            if scheduler:
                client = stack.enter_context(Client(scheduler, timeout="30s"))
                threads = threads or thread_budget(client)
            else:
                gpu_list = detect_gpus() if gpus is None else list(gpus)
                plan = worker_plan(workers or (None if gpu_list else min(cores(), len(todo))), cores(), gpu_list)
                cluster = stack.enter_context(local_cluster(plan))
                client = stack.enter_context(Client(cluster))
                threads = threads or int(plan[0]["OMP_NUM_THREADS"])
            futures = {client.submit(run_point, sweep.scenario, sweep.quick, sweep.pairs(p, defaults),
                                     str((out / "points" / p.name).resolve()), sweep.checkpoint_every, threads,
                                     key=f"point-{p.name}-{os.getpid()}-{time.time_ns()}", pure=False): p
                       for p in todo}
            pending = set(futures)
            bar.show(min(len(pending), _n_workers(client)), force=True)
            while pending:
                try:
                    done, _ = wait(list(pending), timeout=bar.every, return_when="FIRST_COMPLETED")
                except TimeoutError:
                    bar.show(_running(client, pending), force=True)
                    continue
                for fut in done:
                    pending.discard(fut)
                    p = futures[fut]
                    try:
                        st = fut.result()
                    except Exception as exc:   # the task itself died: a worker killed too often…
                        st = {"status": "failed", "error": f"{type(exc).__name__}: {exc}"}
                        checkpoint.atomic_write_json(out / "points" / p.name / "failed.json", st)
                    statuses[p.name] = st
                    bar.add(st.get("status"))
                    if st.get("status") == "failed" and progress:
                        print(f"point {p.name} failed: {st.get('error')}", file=bar.stream, flush=True)
                bar.show(_running(client, pending), force=True)
    else:
        bar.show(0, force=True)
    tables = aggregate(sweep, out, points, statuses)
    return {"points": [(p, statuses[p.name]) for p in points], "tables": tables}


def _n_workers(client) -> int:
    return max(1, len(client.scheduler_info().get("workers", {})))


def _running(client, pending) -> int:
    keys = {f.key for f in pending}
    try:
        processing = client.processing()
        slots = sum(w.get("nthreads", 1) for w in client.scheduler_info().get("workers", {}).values())
        return min(slots, sum(1 for ks in processing.values() for k in ks if k in keys))
    except Exception:  # pragma: no cover - a scheduler going away
        return 0


# ------------------------------------------------------------------------------- the aggregate
def aggregate(sweep: Sweep, out, points: list, statuses: dict | None = None) -> dict:
    """Write ``points.csv``, ``summary.csv``, ``sweep.h5`` and ``sweep.png`` from the point
    folders in ``out``; return the two :class:`Table` s."""
    out = Path(out)
    statuses = statuses or {p.name: read_point(out / "points" / p.name) for p in points}
    keys = sweep.swept()
    rows, metric_cols, label_col = [], [], None
    for p in points:
        st = statuses.get(p.name) or {"status": "missing"}
        base = {**{k: p.params.get(k) for k in keys}, "seed": p.seed, "point": p.name,
                "status": st.get("status", "missing"),
                "diverged_step": ", ".join(str(d["step"]) for d in st.get("diverged", [])) or None,
                "diverged": "; ".join(f"{d['run']}: {d['what']}" for d in st.get("diverged", [])) or None,
                "error": st.get("error")}
        summary = out / "points" / p.name / "result" / "summary.json"
        if st.get("status") in DONE and summary.exists():
            s = json.loads(summary.read_text())
            main = s["tables"][s["main"]]
            for r in main:
                label_col = label_col or next(iter(r))
                metric_cols.extend(c for c in r if c not in metric_cols)
                rows.append({**base, **{f"{c}" if c not in base else f"result_{c}": v for c, v in r.items()}})
        else:
            rows.append(base)
    head = [*keys, "seed", "status", "diverged_step", "diverged", "error", "point"]
    cols = head + [c if c not in head else f"result_{c}" for c in metric_cols]
    points_t = Table(cols)
    for r in rows:
        points_t.add(**{c: _cell(r.get(c)) for c in cols})
    summary_t = _summary(sweep, points_t, keys, label_col)
    _write_csv(out / "points.csv", points_t)
    _write_csv(out / "summary.csv", summary_t)
    _write_h5(out / "sweep.h5", sweep, points_t, summary_t)
    plot(out / "sweep.png", sweep, summary_t, keys, label_col)
    return {"points": points_t, "summary": summary_t}


def _cell(v):
    if isinstance(v, (list, dict)):
        return json.dumps(v)
    return v


def _summary(sweep: Sweep, t: Table, keys: list, label_col: str | None) -> Table:
    metric = sweep.metric
    group_cols = [*keys] + ([label_col] if label_col else [])
    cols = [*group_cols, "seeds", f"{metric}_mean", f"{metric}_min", f"{metric}_max", "done", "diverged", "failed",
            "missing"]
    out = Table(cols)
    groups: dict = {}
    for r in t.rows:
        key = tuple(json.dumps(r.get(c), sort_keys=True) for c in group_cols)
        groups.setdefault(key, []).append(r)
    for key, rs in groups.items():
        vals = [float(r[metric]) for r in rs if isinstance(r.get(metric), (int, float)) and r.get(metric) is not None]
        vals = [v for v in vals if not math.isnan(v)]
        row = {c: rs[0].get(c) for c in group_cols}
        row.update(seeds=len({r["seed"] for r in rs}), **{s: sum(r["status"] == s for r in rs) for s in STATUS})
        if vals:
            row.update({f"{metric}_mean": float(np.mean(vals)), f"{metric}_min": float(np.min(vals)),
                        f"{metric}_max": float(np.max(vals))})
        out.add(**row)
    return out


def _write_csv(path: Path, t: Table) -> None:
    tmp = path.with_name(f".{path.name}.partial")
    with open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(t.columns)
        for r in t.rows:
            w.writerow(["" if r[c] is None else r[c] for c in t.columns])
    os.replace(tmp, path)


def _write_h5(path: Path, sweep: Sweep, points_t: Table, summary_t: Table) -> None:
    import h5py

    import noisesim

    from .output import _write_table

    tmp = path.with_name(f".{path.name}.partial")
    with h5py.File(tmp, "w") as f:
        f.attrs["format"] = "noisesim-sweep"
        f.attrs["format_version"] = 1
        f.attrs["noisesim_version"] = noisesim.__version__
        f.attrs["sweep"] = json.dumps(sweep.__dict__, default=str)
        f.attrs["metric"] = sweep.metric
        _write_table(f.create_group("tables/points"), points_t)
        _write_table(f.create_group("tables/summary"), summary_t)
    os.replace(tmp, path)


def plot(path: Path, sweep: Sweep, summary_t: Table, keys: list, label_col: str | None) -> None:
    """The metric (mean over seeds, min–max shaded) against the x setting, one line per
    combination of the other swept settings and main-table row (rule)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = sweep.x or (keys[0] if keys else None)
    metric = sweep.metric
    others = [k for k in keys if k != x] + ([label_col] if label_col else [])
    lines: dict = {}
    for r in summary_t.rows:
        if r.get(f"{metric}_mean") is None:
            continue
        name = ", ".join(f"{k.split('.')[-1] if k != label_col else ''}{'=' if k != label_col else ''}{r[k]}"
                         for k in others) or metric
        lines.setdefault(name, []).append((r.get(x), r[f"{metric}_mean"], r[f"{metric}_min"], r[f"{metric}_max"]))
    xs_all = [r.get(x) for r in summary_t.rows]
    numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in xs_all)
    cats = [] if numeric else list(dict.fromkeys(json.dumps(v) if not isinstance(v, str) else v for v in xs_all))
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for name, pts in lines.items():
        pts.sort(key=lambda p: p[0] if numeric else cats.index(p[0] if isinstance(p[0], str) else json.dumps(p[0])))
        xv = [p[0] if numeric else cats.index(p[0] if isinstance(p[0], str) else json.dumps(p[0])) for p in pts]
        mean, lo, hi = (np.array([p[i] for p in pts], float) for i in (1, 2, 3))
        ax.plot(xv, mean, marker="o", markersize=4, label=name)
        ax.fill_between(xv, lo, hi, alpha=0.15, lw=0)
    if numeric:
        vals = [v for v in xs_all if v is not None]
        if vals and min(vals) > 0 and max(vals) / min(vals) >= 10:
            ax.set_xscale("log")
    else:
        ax.set_xticks(range(len(cats)), cats)
    ax.set(xlabel=x or "point", ylabel=f"{metric} (mean, range over seeds)",
           title=f"sweep of {sweep.scenario}: {metric} against {x}")
    if lines:
        ax.legend(fontsize=7)
    ax.grid(alpha=0.25)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.partial.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, path)


# ------------------------------------------------------------------------------- the command line
def add_parser(sub) -> None:
    p = sub.add_parser("sweep", help="run a parameter sweep (a TOML file) on Dask")
    p.add_argument("file", metavar="SWEEP.toml")
    p.add_argument("--scheduler", metavar="ADDRESS", help="a running Dask scheduler (tcp://host:8786); "
                   "default: a local cluster")
    p.add_argument("--workers", type=int, metavar="N", help="local worker processes (default: one per core, "
                   "or one per GPU)")
    p.add_argument("--out", metavar="DIR", help="output folder (default runs/sweep-<file name>); "
                   "rerunning into it skips complete points")
    p.add_argument("--checkpoint-every", type=int, metavar="N", help="steps between a point's checkpoints "
                   "(overrides the file's checkpoint_every)")
    p.add_argument("--no-progress", action="store_true", help="print no progress lines")
    p.set_defaults(func=_cmd_sweep)


def _cmd_sweep(args) -> int:
    try:
        import distributed  # noqa: F401
    except ImportError as exc:
        raise RuntimeError(f"noisesim sweep needs Dask: pip install 'noisesim[dist]' ({exc})") from None
    if not getattr(args, "verbose", False):
        logging.getLogger("distributed").setLevel(logging.WARNING)
    sw = load(args.file)
    if args.checkpoint_every is not None:
        if args.checkpoint_every < 0:
            raise ValueError(f"--checkpoint-every {args.checkpoint_every} is out of range; allowed: ≥ 0")
        sw.checkpoint_every = args.checkpoint_every
    out = Path(args.out or Path("runs") / f"sweep-{Path(args.file).stem}")
    out.mkdir(parents=True, exist_ok=True)
    checkpoint.atomic_write_bytes(out / "sweep.toml", Path(args.file).read_bytes())   # the sweep as run
    res = run(sw, out, scheduler=args.scheduler, workers=args.workers, progress=not args.no_progress)
    print(res["tables"]["summary"].format())
    failed = [(p, st) for p, st in res["points"] if st.get("status") not in DONE]
    for p, st in failed:
        print(f"{st.get('status')}: {p.name}: {st.get('error', '')}")
    print(f"results in {out}/ (points.csv, summary.csv, sweep.h5, sweep.png, points/)")
    return 1 if failed else 0
