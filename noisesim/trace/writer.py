"""Recording a trace: :class:`TraceWriter`, one HDF5 file per run, one row per step.

>>> with noisesim.trace.TraceWriter("run.h5", net, rule) as tw:           # doctest: +SKIP
...     scenarios.train(net, rule, data, on_step=tw.on_step)
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import json
import math
import os
import queue
import subprocess
import sys
import threading
import zlib

import h5py
import numpy as np

from .._version import __version__
from ..backend import to_numpy
from . import _sink
from ._sink import FRAME, LIBVER, REPLY, Sink
from .format import (COMPRESSIONS, CRC_COLUMN, FORMAT_NAME, FORMAT_VERSION, META_FIXED, TraceError,
                     entry_name)


def network_config(net) -> dict:
    """What it takes to rebuild ``net`` with :meth:`noisesim.Network.mlp` (best effort for
    other :class:`~noisesim.protocol.DeviceNetwork` implementations)."""
    cfg = {"sizes": [int(s) for s in net.sizes], "dtype": np.dtype(net.dtype).name,
           "seed": getattr(net, "seed", None), "backend": getattr(getattr(net, "backend", None), "name", None),
           "class": f"{type(net).__module__}.{type(net).__qualname__}"}
    for attr, key in (("activation", "activation"), ("output_activation", "output_activation")):
        act = getattr(net, attr, None)
        if act is not None and hasattr(act, "name"):
            cfg[key] = act.name
            cfg["slope"] = float(getattr(act, "slope", 0.2))
    cfg["decorrelated"] = bool(getattr(net, "decorrelated", False))
    return cfg


def stream_states(net) -> dict:
    """Bit-generator states (plain dicts of ints) of the NumPy streams ``net`` has created so far.

    A replay restores them, so a stochastic update model draws exactly what it drew when
    recorded even if the network was used before tracing began. CuPy streams are not captured.
    """
    out = {}
    gens = getattr(getattr(net, "streams", None), "_gens", None) or {}
    for name, g in gens.items():
        bg = getattr(getattr(g, "_g", None), "bit_generator", None)
        if isinstance(bg, np.random.BitGenerator):
            out[str(name)] = bg.state
    return out


def _kind(a) -> str:
    k = a.dtype.kind
    if k == "f":
        return "float"
    if k in "iub":
        return "int"
    raise TraceError(f"cannot trace an array of dtype {a.dtype} (only floating, integer and bool arrays)")


class TraceWriter:
    """Write what a rule consumed, step by step, into one HDF5 file (format in :mod:`.format`).

    Parameters
    ----------
    path : str or Path
        The file (overwritten).
    network : DeviceNetwork
        The network being trained; its config and exact state are recorded now, as the
        initial state a replay starts from. Create the writer before training starts.
    rule : object with ``config()``, optional
        The rule whose estimates are recorded (its config goes into the file).
    meta : dict, optional
        JSON-serialisable run description (scenario, dataset, epochs, batch size …).
    compression : {None, "gzip", "lzf"}
        Compression of the per-step arrays (with the shuffle filter).
    float16 : bool
        Store floating arrays as float16 (half the bytes; the file is flagged lossy and a
        replay of it warns that it is not exact). The initial/final states stay exact.
    background : bool
        Hand the HDF5 work to a separate writer process (default). The training process then
        only packs each step into one buffer and writes it into a pipe (~1 MiB of buffered
        steps; a full pipe makes :meth:`write` wait); the writer process checksums,
        compresses, writes the rows, ``complete_steps`` and flushes, step by step, and keeps
        every whole step it received if the training process dies. With gzip it deflates the
        rows itself; with any compression, while ``BACKLOG_STEPS`` further steps (or half a
        MiB, for larger steps) already wait in the pipe it stores a step unfiltered instead (HDF5's per-chunk filter mask;
        readers see no difference): compression gives way before training does. ``False``: all of the work
        in this process, inside :meth:`write`, with HDF5's own filters.

    Each step adds one row to every per-step dataset, then rewrites the root attribute
    ``complete_steps`` and flushes, so a run killed at any point leaves a file whose first
    ``complete_steps`` steps are whole.
    """

    RETRY_STEPS = 64      # how often the hand-built gzip re-decides its per-part coding
    PIPE_DIRECT_BYTES = 1 << 19   # larger step frames are written by a pump thread
    PUMP_FRAMES = 3               # buffers in flight with the pump thread
    BACKLOG_STEPS = 1             # compression: store a step unfiltered while this many more wait

    def __init__(self, path, network, rule=None, *, meta: dict | None = None, compression: str | None = None,
                 compression_opts=None, float16: bool = False, background: bool = True):
        if compression == "none":
            compression = None
        if compression not in COMPRESSIONS:
            raise TraceError(f"compression={compression!r} is not known; allowed: {list(COMPRESSIONS)}")
        self.path = os.fspath(path)
        self._network = network
        self.n_layers = int(network.n_layers)
        self.compression, self.compression_opts = compression, compression_opts
        if compression == "lzf":
            self.compression_opts = None
        self.float16 = bool(float16)
        self.background = bool(background)
        net_dtype = self._net_dtype = np.dtype(network.dtype)
        self.storage_dtype = np.dtype(np.float16) if self.float16 else net_dtype
        device = getattr(network, "device", None)
        config = {
            "network": network_config(network),
            "device": device.to_dict() if hasattr(device, "to_dict") else None,
            "rule": rule.config() if rule is not None and hasattr(rule, "config") else None,
            "seeds": {"network": getattr(network, "seed", None)},
            "backend": getattr(getattr(network, "backend", None), "name", None),
            "dtype": net_dtype.name,
            "run": meta or {},
            "streams": stream_states(network),
        }
        try:
            config_json = json.dumps(config, sort_keys=True)
        except TypeError as exc:
            raise TraceError(f"{self.path}: the run config is not JSON-serialisable ({exc})") from None
        f = h5py.File(self.path, "w", libver=LIBVER)
        try:
            a = f.attrs
            a["format"] = FORMAT_NAME
            a["format_version"] = FORMAT_VERSION
            a["noisesim_version"] = __version__
            a["created"] = _dt.datetime.now(_dt.timezone.utc).isoformat()
            a["config"] = config_json
            a["config_crc32"] = zlib.crc32(config_json.encode())
            a["storage_dtype"] = self.storage_dtype.name
            a["lossy"] = int(self.float16)
            a["compression"] = compression or "none"
            a["complete_steps"] = 0
            a["closed"] = 0
            self._write_state(f, "initial_state", network.get_state())
            f.flush()
        except BaseException:
            f.close()
            raise
        self._layout = None
        self._written = 0          # steps handed over (to the sink, or the process)
        self._confirmed = 0        # steps known to be in the file
        self._failed = None        # why the writer process stopped, once it has
        self._pump, self._pump_error = None, None
        if self.background:
            f.close()
            self._f, self._sink = None, None
            self._proc = _start_process(self.path)
        else:
            self._f, self._sink, self._proc = f, Sink(f), None

    # -- helpers ---------------------------------------------------------------------------------
    @staticmethod
    def _write_state(f, group: str, state: dict) -> None:
        g = f.create_group(group)
        for k, v in state.items():
            a = np.ascontiguousarray(to_numpy(v))
            g.create_dataset(k, data=a).attrs["crc32"] = zlib.crc32(a.view(np.uint8))

    @staticmethod
    def _items(est) -> list:
        """``(source, key, layer, host array)`` for everything the step consumed, in a fixed order."""
        items = []
        for key, v in est.record.items():
            if isinstance(v, (list, tuple)):
                items += [("record", str(key), l, to_numpy(a)) for l, a in enumerate(v)]
            else:
                items.append(("record", str(key), None, to_numpy(v)))
        items += [("xstar", "xstar", l, to_numpy(x)) for l, x in enumerate(est.inputs)]
        if getattr(est, "losses", None) is not None:
            items.append(("losses", "losses", None, to_numpy(est.losses)))
        return items

    def _build_layout(self, items, batch: int) -> None:
        xstar = {l: a for src, _, l, a in items if src == "xstar"}
        entries, offsets = [], {"float": 0, "int": 0}
        for src, key, layer, a in items:
            name = entry_name(key, layer) if src != "record" else "record/" + entry_name(key, layer)
            e = {"name": name, "source": src, "key": key, "layer": layer, "shape": list(a.shape),
                 "dtype": "int64" if _kind(a) == "int" else a.dtype.name, "kind": _kind(a), "alias": None}
            x = xstar.get(layer) if src == "record" else None
            # The update's own copy of x* (e.g. ANP's baseline inputs) is stored once, as x*.
            if x is not None and a.size == x.size and a.dtype == x.dtype and np.array_equal(a.reshape(x.shape), x):
                e["alias"], e["offset"] = "xstar", None
            else:
                e["offset"] = offsets[e["kind"]]
                offsets[e["kind"]] += a.size
            entries.append(e)
        if offsets["float"] == 0:
            raise TraceError(f"{self.path}: the rule's estimate recorded no floating arrays")
        cols = list(META_FIXED) + [f"{e['name']}:{i}" for e in entries for i in range(len(e["shape"]))]
        self._keys = [(src, key, layer) for src, key, layer, _ in items]
        self._layout = {"entries": entries, "values_width": offsets["float"], "ints_width": offsets["int"],
                        "max_batch": int(batch), "meta_columns": cols}
        V, I, B = offsets["float"], offsets["int"], max(int(batch), 1)
        # One chunk per step for every per-step dataset: a flush then writes the new step's
        # bytes only, never a half-filled chunk of earlier steps again.
        comp = dict(compression=self.compression, compression_opts=self.compression_opts)
        deflate = self.background and self.compression == "gzip"
        layout_json = json.dumps(self._layout)
        spec = {
            "datasets": [
                {"name": "values", "width": V, "dtype": self.storage_dtype.name, "chunk_rows": 1,
                 "frame_dtype": self._net_dtype.name, **comp},
                {"name": "ints", "width": I, "dtype": "int64", "chunk_rows": 1, **comp},
                {"name": "indices", "width": B, "dtype": "int64", "chunk_rows": 1, "fillvalue": -1},
                {"name": "scalars", "width": 2, "dtype": "float64", "chunk_rows": 1},
                {"name": "meta", "width": len(cols), "dtype": "int64", "chunk_rows": 1},
            ],
            "attrs": {"layout": layout_json, "layout_crc32": zlib.crc32(layout_json.encode())},
            # the gzip chunks of values/ints are deflated by the writer process itself (Sink._deflate)
            "deflate": deflate, "level": 4 if self.compression_opts is None else int(self.compression_opts),
            "retry_steps": int(self.RETRY_STEPS), "backlog_steps": int(self.BACKLOG_STEPS),
            # region boundaries (one per non-alias array) of the values and ints rows
            "regions": [sorted({0, width} | {e["offset"] for e in entries
                                             if e["kind"] == kind and e["offset"] is not None and e["offset"] < width})
                        for kind, width in (("float", V), ("int", I))],
        }
        # One buffer holds a whole step — frame header, then the five rows — so a step is one
        # write into the pipe; the rows are views into it. A frame larger than the pipe would
        # block the training thread until the writer process has read most of it: such frames
        # go through a pump thread instead (os.write releases the GIL), from a few buffers.
        sizes = _sink.row_sizes(spec)
        nbytes = [w * np.dtype(t).itemsize for _, w, t in sizes]

        def frame():
            buf = np.zeros(FRAME.size + sum(nbytes), np.uint8)
            buf[:FRAME.size] = np.frombuffer(FRAME.pack(b"S", sum(nbytes)), np.uint8)
            off, rows = FRAME.size, []
            for (_, w, t), nb in zip(sizes, nbytes):
                rows.append(buf[off:off + nb].view(t))
                off += nb
            return buf, rows

        self._frames = [frame()]
        if self._proc is not None and self._frames[0][0].nbytes > self.PIPE_DIRECT_BYTES:
            self._frames += [frame() for _ in range(self.PUMP_FRAMES - 1)]
            self._start_pump()
        # Per entry, in item order: (alias?, layer, float?, offset, capacity, ndim, entry).
        self._plan = [(e["alias"] == "xstar", e["layer"], e["kind"] == "float", e["offset"],
                       math.prod(e["shape"]), len(e["shape"]), e) for e in entries]
        self._xstar_of = {l: i for i, (src, _, l, _) in enumerate(items) if src == "xstar"}
        if self._proc is not None:
            self._send(b"L", json.dumps(spec).encode())
        else:
            self._sink.create(spec)

    # -- the writer process ---------------------------------------------------------------------
    def _send(self, kind: bytes, payload=b"") -> None:
        msg = FRAME.pack(kind, len(payload)) + bytes(payload)
        if self._pump is not None:               # behind the step frames already queued
            self._full.put((msg, None))
        else:
            self._pipe_write(memoryview(msg))

    def _start_pump(self) -> None:
        self._free, self._full = queue.Queue(), queue.Queue()
        for f in self._frames:
            self._free.put(f)
        self._pump = threading.Thread(target=self._run_pump, name="TraceWriter pump", daemon=True)
        self._pump.start()

    def _run_pump(self) -> None:
        """Pump thread: write queued frames into the pipe, in order, and recycle the buffers.
        After a failed write it only recycles (the training thread raises at its next write)."""
        fd = self._proc.stdin.fileno()
        while True:
            buf, rows = self._full.get()
            if buf is None:
                return
            if self._pump_error is None:
                try:
                    data = memoryview(buf)
                    while data:
                        data = data[os.write(fd, data):]
                except OSError as exc:
                    self._pump_error = exc
            if rows is not None:
                self._free.put((buf, rows))

    def _stop_pump(self) -> None:
        if self._pump is not None:
            self._full.put((None, None))
            self._pump.join()
            self._pump = None

    def _pipe_write(self, data: memoryview) -> None:
        fd = self._proc.stdin.fileno()
        try:
            while data:
                data = data[os.write(fd, data):]
        except OSError as exc:  # BrokenPipeError: the writer process is gone
            raise self._process_failed(exc) from None

    def _reply(self, kind: bytes) -> int:
        if self._pump is not None:
            self._stop_pump_if_failed()
        head = b""
        while len(head) < REPLY.size:
            more = self._proc.stdout.read(REPLY.size - len(head))
            if not more:
                raise self._process_failed(None)
            head += more
        got, n = REPLY.unpack(head)
        if got != kind:
            raise self._process_failed(f"unexpected reply {got!r}")
        self._confirmed = n
        return n

    def _stop_pump_if_failed(self) -> None:
        if self._pump_error is not None:
            self._stop_pump()
            raise self._process_failed(self._pump_error)

    def _process_failed(self, why) -> TraceError:
        """The error for a writer process that stopped; it has ended or is ended now."""
        if self._failed is None:
            try:
                code = self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                code = self._proc.wait()
            err = self._proc.stderr.read().decode(errors="replace").strip() if self._proc.stderr else ""
            how = (f"exited with status {code}" if code >= 0 else f"was killed by signal {-code}")
            self._failed = f"the trace writer process {how}" + (f": {err}" if err else "") + \
                           (f" ({why})" if why and not err else "")
        return TraceError(f"{self.path}: {self._failed}; the file keeps the whole steps it received")

    # -- the public API ---------------------------------------------------------------------------
    @property
    def complete_steps(self) -> int:
        """Steps known to be in the file: every written step without ``background``; with it,
        those confirmed by the last :meth:`flush` (call it first for an exact count)."""
        return self._written if self._proc is None else self._confirmed

    def write(self, step: int, indices, est) -> None:
        """Record one applied step: its batch ``indices`` and the rule's ``Estimate``."""
        if self._sink is None and self._proc is None:
            raise TraceError(f"{self.path}: the trace writer is closed")
        if self._failed is not None:
            raise TraceError(f"{self.path}: {self._failed}; the trace ends at its {self._confirmed} "
                             f"confirmed steps")
        items = self._items(est)
        idx = np.asarray(to_numpy(indices), dtype=np.int64).ravel()
        if self._layout is None:
            self._build_layout(items, len(idx))
        lay = self._layout
        keys = [(src, key, layer) for src, key, layer, _ in items]
        if keys != self._keys:
            raise TraceError(f"{self.path}: step {step} recorded the arrays {keys}; the trace's layout "
                             f"(set at its first step) has {self._keys}")
        if len(idx) > lay["max_batch"]:
            raise TraceError(f"{self.path}: step {step} has a batch of {len(idx)}, larger than the first "
                             f"step's {lay['max_batch']}; start tracing with the largest batch")
        if self._pump is not None:
            buf, rows = self._free.get()          # waits while every buffer is in flight
            if self._pump_error is not None:
                self._free.put((buf, rows))
                raise self._process_failed(self._pump_error)
        else:
            buf, rows = self._frames[0]
        row, irow_, irow, scalars, meta = rows
        xstar = {l: items[i][3] for l, i in self._xstar_of.items()}
        shapes = []
        for (alias, layer, is_float, off, cap, ndim, e), (_, _, _, a) in zip(self._plan, items):
            if a.ndim != ndim or a.size > cap:
                raise TraceError(f"{self.path}: step {step}: {e['name']} has shape {a.shape}, which does not "
                                 f"fit the shape {tuple(e['shape'])} set at the first step")
            shapes += a.shape
            if alias:
                x = xstar[layer]
                if a.size != x.size or not (
                        (a.dtype == x.dtype and a.flags.c_contiguous and x.flags.c_contiguous
                         and a.__array_interface__["data"][0] == x.__array_interface__["data"][0])
                        or np.array_equal(a.reshape(x.shape), x)):
                    raise TraceError(f"{self.path}: step {step}: {e['name']} no longer equals x* of layer {layer}")
                continue
            r = row if is_float else irow_
            n = a.size
            r[off:off + n] = a.reshape(-1)
            if n < cap:
                r[off + n:off + cap] = 0
        irow[:len(idx)] = idx
        irow[len(idx):] = -1
        t = getattr(self._network, "time", None)
        scalars[0] = float(est.loss)
        scalars[1] = float(t) if isinstance(t, (int, float)) else np.nan
        meta[0], meta[1], meta[2] = int(step), len(idx), int(getattr(est, "forward_passes", 0))
        meta[CRC_COLUMN] = 0                    # the sink computes the checksum
        meta[CRC_COLUMN + 1:] = shapes
        if self._pump is not None:
            self._full.put((buf, rows))
        elif self._proc is not None:
            self._pipe_write(memoryview(buf))   # copied into the pipe: the buffer is free again
        else:
            self._sink.step(row, irow_, irow, scalars, meta)
        self._written += 1

    def flush(self) -> None:
        """Wait until every step handed to :meth:`write` is in the file."""
        if self._proc is not None and self._failed is None:
            self._send(b"F")
            self._reply(b"F")
        if self._failed is not None:
            raise TraceError(f"{self.path}: {self._failed}; the trace ends at its {self._confirmed} "
                             f"confirmed steps")

    def on_step(self, step, indices, est) -> None:
        """The ``scenarios.train(on_step=…)`` hook: same as :meth:`write`."""
        self.write(step, indices, est)

    def close(self, network=None) -> None:
        """Trim the datasets to the steps written, store the network's final state, mark closed.

        After the writer process failed the file keeps its whole steps and no final state; a
        failure first noticed here is raised."""
        if self._sink is None and self._proc is None:
            return
        network = network if network is not None else self._network
        self._network = None
        error = None
        if self._proc is not None:
            proc, self._proc = self._proc, None
            if self._failed is None:
                self._proc = proc
                try:
                    self._send(b"C")
                    self._reply(b"C")
                    proc.wait(timeout=60)
                except TraceError as exc:
                    error = exc
                self._proc = None
            self._stop_pump()
            proc.stdin.close()
            proc.stdout.close()
            proc.stderr.close()
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            f = h5py.File(self.path, "r+", libver=LIBVER)
        else:
            self._sink.trim()
            f, self._f, self._sink = self._f, None, None
        try:
            if network is not None and self._failed is None:  # else the network ran past the last step
                self._write_state(f, "final_state", network.get_state())
            f.attrs["closed"] = 1
        finally:
            f.close()
        if error is not None:
            raise error

    def __enter__(self):
        return self

    def __exit__(self, exc_type, *exc):
        try:
            self.close()
        except TraceError:
            if exc_type is None:
                raise
        return False


@contextlib.contextmanager
def leave_a_core():
    """While the block runs, BLAS uses at most one thread fewer than this process has cores.

    The writer process then has a core of its own: on a small machine a BLAS pool spread over
    every core slows each GEMM whenever the writer takes one of them (measured 1.35–2.3× per
    traced step on 2 cores against ≤ 1.2× with a core left). A no-op on one core, when BLAS
    already uses fewer threads, or without ``threadpoolctl`` (a dependency of scikit-learn).
    """
    try:
        from threadpoolctl import threadpool_info, threadpool_limits
    except ImportError:
        yield
        return
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    blas = [i["num_threads"] for i in threadpool_info() if i.get("user_api") == "blas"]
    if cores < 2 or not blas or max(blas) < cores:
        yield
        return
    with threadpool_limits(limits=cores - 1, user_api="blas"):
        yield


def _start_process(path: str) -> subprocess.Popen:
    """Start the writer process (:mod:`._sink` run as a script) for the trace at ``path``."""
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, os.path.abspath(_sink.__file__), path], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, bufsize=0,
                            start_new_session=True)   # Ctrl-C in a terminal reaches training only
    try:  # room for several steps in the pipe (Linux; elsewhere the default size)
        import fcntl

        fcntl.fcntl(proc.stdin.fileno(), getattr(fcntl, "F_SETPIPE_SZ", 1031), 1 << 20)
    except (ImportError, OSError):
        pass
    return proc


assert META_FIXED[CRC_COLUMN] == "crc32"
