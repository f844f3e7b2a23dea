"""Recording a trace: :class:`TraceWriter`, one HDF5 file per run, one dataset per recorded array.

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
import signal
import subprocess
import sys
import threading
import time
import zlib

import h5py
import numpy as np

from .._version import __version__
from ..backend import to_numpy
from .. import state as state_io
from . import _sink
from ._sink import FRAME, LIBVER, REPLY, OutOfSpace, Sink, set_status
from .format import COMPRESSIONS, FORMAT_NAME, FORMAT_VERSION, KEY, META, RESERVED, TraceError, TraceWriteError


def network_config(net) -> dict:
    """What it takes to rebuild ``net`` (its ``config()``; best effort for other
    :class:`~noisesim.protocol.DeviceNetwork` implementations)."""
    if hasattr(net, "config"):
        cfg = dict(net.config())
        cfg.pop("device", None)      # recorded once, under the config's own "device"
    else:
        cfg = {"sizes": [int(s) for s in net.sizes], "dtype": np.dtype(net.dtype).name,
               "seed": getattr(net, "seed", None), "backend": getattr(getattr(net, "backend", None), "name", None)}
    cfg["class"] = f"{type(net).__module__}.{type(net).__qualname__}"
    cfg["decorrelated"] = bool(getattr(net, "decorrelated", False))
    return cfg


def _kind(a) -> str:
    k = a.dtype.kind
    if k == "f":
        return "float"
    if k in "iub":
        return "int"
    raise TraceError(f"cannot trace an array of dtype {a.dtype} (only floating, integer and bool arrays)")


def _differing(a, b, path="") -> list[str]:
    """The paths of the entries two JSON configs disagree on."""
    if isinstance(a, dict) and isinstance(b, dict):
        return [d for k in sorted(set(a) | set(b)) for d in _differing(a.get(k), b.get(k), f"{path}{k}.")]
    return [] if a == b else [path.rstrip(".")]


class TraceWriter:
    """Write what a rule consumed, step by step, into one HDF5 file (format in :mod:`.format`).

    Parameters
    ----------
    path : str or Path
        The file (overwritten).
    network : DeviceNetwork
        The network being trained; its config and complete state (``network.state()``) are
        recorded now, as the initial state a replay starts from, and its state again by a
        clean :meth:`close`. Create the writer before training starts.
    rule : object with ``config()`` and ``state()``, optional
        The rule whose estimates are recorded (its config and state go into the file with
        the network's).
    meta : dict, optional
        JSON-serialisable run description (scenario, dataset, epochs, batch size …).
    compression : {None, "gzip", "lzf"}
        Compression of the per-step arrays (with the shuffle filter); arrays of less than
        ``MIN_COMPRESS_BYTES`` (4 KiB) per step are stored uncompressed.
    float16 : bool
        Store floating arrays as float16 (half the bytes; the file is flagged lossy and a
        replay of it warns that it is not exact). The initial/final states stay exact.
    background : bool
        Hand the HDF5 work to a separate writer process (default). The training process then
        only packs each step into one buffer and writes it into a pipe (~1 MiB of buffered
        steps; a full pipe makes :meth:`write` wait); the writer process checksums,
        compresses, writes the rows, ``complete_steps`` and flushes, step by step, and keeps
        every whole step it received if the training process dies. With any compression,
        while ``BACKLOG_STEPS`` further steps (or half a MiB, for larger steps) already wait
        in the pipe it stores a step unfiltered instead (HDF5's per-chunk filter mask; readers
        see no difference): compression gives way before training does. ``False``: all of the
        work in this process, inside :meth:`write`.
    resume_steps : int, optional
        Continue the trace already at ``path`` after its first ``resume_steps`` steps (a run
        continued from a checkpoint taken after that step): later steps in the file are
        dropped, the next :meth:`write` is row ``resume_steps``, the initial state stays. The
        file must be a trace of the same config, storage and schema, with at least that many
        complete steps; else :class:`TraceError`.

    Each step adds one row (one chunk) to every per-step dataset — one named dataset per
    recorded array, ``steps/<key>`` or ``steps/<key>/<layer>``, laid out at the first step
    (the schema; see ``docs/trace-format.md``) — then rewrites the root attribute
    ``complete_steps`` and flushes, so a run killed at any point leaves a file whose first
    ``complete_steps`` steps are whole. Gzip chunks are deflated by the writer itself (HDF5's
    shuffle + deflate format, coded per byte plane; ``HDF5_GZIP = True`` uses HDF5's filter).
    """

    RETRY_STEPS = 64              # how often the hand-built gzip re-decides its per-plane coding
    PIPE_DIRECT_BYTES = 1 << 19   # larger step frames are written by a pump thread
    PUMP_FRAMES = 3               # buffers in flight with the pump thread
    BACKLOG_STEPS = 1             # compression: store a step unfiltered while this many more wait
    HDF5_GZIP = False             # gzip through HDF5's own filter instead of the sink's deflate
    MIN_COMPRESS_BYTES = 4096     # per-step arrays smaller than this are never compressed
    RESERVE_SPACE = True          # reserve each step's bytes before writing it (see _sink.reserve)

    def __init__(self, path, network, rule=None, *, meta: dict | None = None, compression: str | None = None,
                 compression_opts=None, float16: bool = False, background: bool = True,
                 resume_steps: int | None = None):
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
        }
        try:
            config_json = json.dumps(config, sort_keys=True)
        except TypeError as exc:
            raise TraceError(f"{self.path}: the run config is not JSON-serialisable ({exc})") from None
        if resume_steps is not None:            # a continued run: into the trace it started
            self._rule = rule
            self._continue(config_json, compression, int(resume_steps))
            return
        # the complete state a replay starts from (the trace reads it only through state())
        initial = {"network": network.state(), "rule": rule.state() if rule is not None and hasattr(rule, "state")
                   else None}
        self._rule = rule
        _ignore_sigxfsz()
        try:
            f = h5py.File(self.path, "w", libver=LIBVER)
        except OSError as exc:
            raise TraceError(f"{self.path}: cannot create the trace ({exc})") from None
        try:
            # room for the header and initial state first: a full disk stops the run here, cleanly
            fd = os.open(self.path, os.O_WRONLY)
            try:
                _sink.reserve(fd, (1 << 16) + _state_bytes(initial) * 5 // 4)
            finally:
                os.close(fd)
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
            set_status(f, "recording")
            self._write_state(f, "initial_state", initial)
            f.flush()
        except BaseException as exc:
            with contextlib.suppress(Exception):
                f.close()
            with contextlib.suppress(OSError):
                os.remove(self.path)
            if isinstance(exc, (OSError, RuntimeError)):
                raise TraceWriteError(self.path, f"cannot write the trace's header and initial state: "
                                      f"{_sink.describe(exc)}", None) from None
            raise
        self._attach(f, 0)

    # -- helpers ---------------------------------------------------------------------------------
    def _attach(self, f, steps: int) -> None:
        """Start writing to the open file ``f``, which holds ``steps`` complete steps: through a
        writer process (``f`` closed here and reopened there) or through a sink in this one."""
        self._schema = None
        self._written = steps       # steps handed over (to the sink, or the process)
        self._confirmed = steps     # steps known to be in the file
        self._failed = None         # why the writer process stopped, once it has
        self._pump, self._pump_error = None, None
        if self.background:
            f.close()
            self._f, self._sink = None, None
            self._proc = _start_process(self.path)
        else:
            self._f, self._sink, self._proc = f, Sink(f), None

    _stored_schema = None         # the schema of a continued trace (``resume_steps``)

    def _continue(self, config_json: str, compression, k: int) -> None:
        """Open the trace at ``path`` to continue after its step ``k`` (see ``resume_steps``)."""
        deadline = time.monotonic() + 30.0
        while True:    # the writer process of the stopped run may still be storing its last steps
            try:
                f = h5py.File(self.path, "r+", libver=LIBVER)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise TraceError(f"{self.path}: another process keeps the trace open; cannot continue it") \
                        from None
                time.sleep(0.05)
            except (OSError, ValueError) as exc:
                raise TraceError(f"{self.path}: cannot continue this trace ({exc})") from None
        try:
            a = f.attrs
            text = lambda v: v.decode() if isinstance(v, bytes) else v
            if text(a.get("format")) != FORMAT_NAME or int(a.get("format_version", -1)) != FORMAT_VERSION:
                raise TraceError(f"{self.path}: not a trace of format {FORMAT_VERSION}; cannot continue it")
            # the file keeps the config of when it started ("decorrelated" there is the network
            # before the rule's first step); every other entry must be this run's
            theirs, mine = json.loads(text(a.get("config")) or "{}"), json.loads(config_json)
            for c in (theirs, mine):
                (c.get("network") or {}).pop("decorrelated", None)
            if theirs != mine:
                raise TraceError(f"{self.path}: the trace was written by another run (its config differs in "
                                 f"{_differing(theirs, mine)})")
            if text(a.get("storage_dtype")) != self.storage_dtype.name or \
                    text(a.get("compression")) != (compression or "none"):
                raise TraceError(f"{self.path}: the trace is stored as {text(a.get('storage_dtype'))} with "
                                 f"compression {text(a.get('compression'))}; continue it with the same options")
            n = int(a["complete_steps"])
            if not 0 <= k <= n:
                raise TraceError(f"{self.path}: the trace has {n} complete steps; continuing after step {k} "
                                 "would leave a gap")
            if "steps" in f:     # the rows after step k are written again
                f["steps"].visititems(lambda _, ds: ds.resize(k, axis=0) if isinstance(ds, h5py.Dataset) else None)
            a["complete_steps"] = k
            a["closed"] = 0
            if "final_state" in f:
                del f["final_state"]
            if "schema" in a:
                self._stored_schema = json.loads(text(a["schema"]))
            f.flush()
        except BaseException:
            f.close()
            raise
        self._attach(f, k)

    @staticmethod
    def _write_state(f, group: str, state: dict) -> None:
        try:
            state_io.write(f.create_group(group), state)
        except state_io.StateError as exc:
            raise TraceError(f"{f.filename}: cannot store the {group.replace('_', ' ')}: {exc}") from None

    @staticmethod
    def _items(est) -> list:
        """``(role, key, layer, host array)`` for everything the step consumed, in a fixed order."""
        items = []
        for key, v in est.record.items():
            if isinstance(v, (list, tuple)):
                items += [("record", str(key), l, np.asarray(to_numpy(a))) for l, a in enumerate(v)]
            else:
                items.append(("record", str(key), None, np.asarray(to_numpy(v))))
        items += [("xstar", "xstar", l, to_numpy(x)) for l, x in enumerate(est.inputs)]
        if getattr(est, "losses", None) is not None:
            items.append(("losses", "losses", None, to_numpy(est.losses)))
        return items

    @staticmethod
    def _alias(x, src):
        """How ``x*`` sits in the record's ``inputs`` array ``src``: ``False`` (all of it),
        ``True`` (its first slice along the first axis), or ``None`` (not there)."""
        if src is None or src.dtype != x.dtype:
            return None
        if src.shape == x.shape and np.array_equal(src, x):
            return False
        if src.ndim >= 1 and src.shape[1:] == x.shape and src.shape[0] >= 1 and np.array_equal(src[0], x):
            return True
        return None

    def _build_schema(self, items, batch: int) -> None:
        inputs = {l: a for role, key, l, a in items if role == "record" and key == "inputs" and l is not None}
        arrays, col = [], 0
        for role, key, layer, a in items:
            name = key if layer is None else f"{key}/{layer}"
            if role == "record" and (not KEY.match(key) or key in RESERVED):
                raise TraceError(f"{self.path}: the rule records an array named {key!r}; trace keys are letters, "
                                 f"digits and '_', and not one of {sorted(RESERVED)}")
            if a.size == 0 or a.ndim > 8:
                raise TraceError(f"{self.path}: {name} has shape {a.shape}; traced arrays have 1 to 8 dimensions "
                                 "and at least one element")
            kind = _kind(a)
            alias = None
            if role == "xstar":
                first = self._alias(a, inputs.get(layer))
                if first is not None:
                    alias = {"of": f"inputs/{layer}", "first": first}
            stored = ("float16" if self.float16 else a.dtype.name) if kind == "float" else "int64"
            arrays.append({"name": name, "role": role, "key": key, "layer": layer, "kind": kind,
                           "dtype": a.dtype.name, "stored": stored, "shape": list(a.shape),
                           "columns": [col, col + a.ndim], "alias": alias})
            col += a.ndim
        if not any(e["kind"] == "float" for e in arrays):
            raise TraceError(f"{self.path}: the rule's estimate recorded no floating arrays")
        if self._stored_schema is not None:      # a continued trace keeps its first step's batch
            batch = max(int(batch), int(self._stored_schema.get("max_batch", 0)))
        B = max(int(batch), 1)
        self._schema = {"arrays": arrays, "max_batch": int(batch), "columns": col}
        if self._stored_schema is not None and self._schema != self._stored_schema:
            raise TraceError(f"{self.path}: the continued run records {self._schema}; the trace holds "
                             f"{self._stored_schema}")
        self._keys = [(role, key, layer) for role, key, layer, _ in items]
        schema_json = json.dumps(self._schema)
        comp = dict(compression=self.compression, compression_opts=self.compression_opts)
        datasets = []
        for e in arrays:
            if e["alias"] is not None:
                continue
            frame = e["dtype"] if e["kind"] == "float" else "int64"
            # arrays of a few KiB per step (δL, the output layer's δa) gain next to nothing
            # from compression and would cost a filter call each: stored as they are
            small = math.prod(e["shape"]) * np.dtype(e["stored"]).itemsize < self.MIN_COMPRESS_BYTES
            datasets.append({"name": "steps/" + e["name"], "shape": e["shape"], "dtype": e["stored"],
                             "frame_dtype": frame, "chunk_rows": 1, **({} if small else comp),
                             "attrs": {"shape_columns": e["columns"], "layer": -1 if e["layer"] is None else e["layer"]}})
        # small per-step datasets: many steps per chunk (a flush rewrites the last chunk in
        # place, with the same bytes for the earlier steps in it)
        for name, dtype in META:
            shape = [B] if name == "indices" else [col] if name == "shapes" else []
            datasets.append({"name": "steps/" + name, "shape": shape, "dtype": dtype,
                             "chunk_rows": 1 if name == "indices" else 64,
                             **({"fillvalue": -1} if name == "indices" else {})})
        datasets.append({"name": "steps/checksum", "shape": [], "dtype": "uint32", "chunk_rows": 64, "frame": False,
                         "role": "checksum"})
        spec = {
            "datasets": datasets,
            "attrs": {"schema": schema_json, "schema_crc32": zlib.crc32(schema_json.encode())},
            # gzip chunks are deflated by the sink itself (Sink._deflate), unless HDF5_GZIP
            "deflate": self.compression == "gzip" and not self.HDF5_GZIP,
            "level": 4 if self.compression_opts is None else int(self.compression_opts),
            "retry_steps": int(self.RETRY_STEPS), "backlog_steps": int(self.BACKLOG_STEPS),
            "reserve": bool(self.RESERVE_SPACE),
        }
        # One buffer holds a whole step — frame header, then every dataset's row — so a step is
        # one write into the pipe; the rows are views into it. A frame larger than the pipe
        # would block the training thread until the writer process has read most of it: such
        # frames go through a pump thread instead (os.write releases the GIL), from a few buffers.
        sizes = _sink.row_sizes(spec)
        nbytes = [n * np.dtype(t).itemsize for _, n, t in sizes]
        shapes = [tuple(d["shape"]) for d in datasets if d.get("frame", True)]

        def frame():
            buf = np.zeros(FRAME.size + sum(nbytes), np.uint8)
            buf[:FRAME.size] = np.frombuffer(FRAME.pack(b"S", sum(nbytes)), np.uint8)
            off, rows = FRAME.size, []
            for (_, _, t), nb, shape in zip(sizes, nbytes, shapes):
                rows.append(buf[off:off + nb].view(t).reshape(shape))
                off += nb
            return buf, rows

        self._frames = [frame()]
        if self._proc is not None and self._frames[0][0].nbytes > self.PIPE_DIRECT_BYTES:
            self._frames += [frame() for _ in range(self.PUMP_FRAMES - 1)]
            self._start_pump()
        # Per item: (its row in the frame, or None for an alias; its schema entry; the item an alias is of)
        row_of, r = {}, 0
        for e in arrays:
            if e["alias"] is None:
                row_of[e["name"]] = r
                r += 1
        index = {e["name"]: i for i, e in enumerate(arrays)}
        self._plan = [(row_of.get(e["name"]), e, None if e["alias"] is None else index[e["alias"]["of"]])
                      for e in arrays]
        self._meta_rows = r                          # indices, step, batch_size, forward_passes, loss, time, shapes
        self._shape_buf = np.zeros(col, np.int64)
        if self._proc is not None:
            self._send(b"L", json.dumps(spec).encode())
        else:
            self._sink.create(spec)
            self._sink.swmr()

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

    def _process_failed(self, why) -> TraceWriteError:
        """The error for a writer process that stopped; it has ended or is ended now."""
        if self._failed is None:
            try:
                code = self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                code = self._proc.wait()
            err = self._proc.stderr.read().decode(errors="replace").strip() if self._proc.stderr else ""
            # the sink's last line says what went wrong and how many steps the file keeps
            last = err.splitlines()[-1] if err else ""
            steps = _steps_kept(last)
            if steps is None:        # killed: what the file holds (it may be more than confirmed)
                steps = _steps_in(self.path)
            if steps is not None:
                self._confirmed = steps
            if code == 1 and last:
                self._failed = last
            else:
                how = (f"exited with status {code}" if code >= 0 else f"was killed by signal {-code}")
                self._failed = f"the trace writer process {how}" + (f": {last}" if last else "") + \
                               (f" ({why})" if why and not last else "")
        return self._error()

    def _error(self) -> TraceWriteError:
        cause = self._failed
        tail = cause.rfind("; the file keeps its first")
        return TraceWriteError(self.path, cause[:tail] if tail >= 0 else cause, self._confirmed)

    # -- the public API ---------------------------------------------------------------------------
    @property
    def complete_steps(self) -> int:
        """Steps known to be in the file: every written step without ``background``; with it,
        those confirmed by the last :meth:`flush` (call it first for an exact count)."""
        return self._written if self._proc is None else self._confirmed

    def write(self, step: int, indices, est) -> None:
        """Record one applied step: its batch ``indices`` and the rule's ``Estimate``."""
        if self._failed is not None:
            raise self._error()
        if self._sink is None and self._proc is None:
            raise TraceError(f"{self.path}: the trace writer is closed")
        items = self._items(est)
        idx = np.asarray(to_numpy(indices), dtype=np.int64).ravel()
        if self._schema is None:
            self._build_schema(items, len(idx))
        keys = [(role, key, layer) for role, key, layer, _ in items]
        if keys != self._keys:
            raise TraceError(f"{self.path}: step {step} recorded the arrays {keys}; the trace's schema "
                             f"(set at its first step) has {self._keys}")
        if len(idx) > self._schema["max_batch"]:
            raise TraceError(f"{self.path}: step {step} has a batch of {len(idx)}, larger than the first "
                             f"step's {self._schema['max_batch']}; start tracing with the largest batch")
        if self._pump is not None:
            buf, rows = self._free.get()          # waits while every buffer is in flight
            if self._pump_error is not None:
                self._free.put((buf, rows))
                raise self._process_failed(self._pump_error)
        else:
            buf, rows = self._frames[0]
        shapes = self._shape_buf
        for (r, e, src), (_, _, _, a) in zip(self._plan, items):
            cap = e["shape"]
            if a.ndim != len(cap) or any(d > c for d, c in zip(a.shape, cap)):
                raise TraceError(f"{self.path}: step {step}: {e['name']} has shape {a.shape}, which does not "
                                 f"fit the shape {tuple(cap)} set at the first step")
            lo, hi = e["columns"]
            shapes[lo:hi] = a.shape
            if r is None:                      # x* stored as (part of) the record's inputs
                x = items[src][3]
                first = e["alias"]["first"]
                same = x.ndim >= 1 and a.dtype == x.dtype and (
                    (a.shape == x.shape[1:] if first else a.shape == x.shape))
                if same and a.flags.c_contiguous and x.flags.c_contiguous and a.size and \
                        a.__array_interface__["data"][0] == x.__array_interface__["data"][0]:
                    continue
                if not same or not np.array_equal(x[0] if first else x, a):
                    raise TraceError(f"{self.path}: step {step}: {e['name']} no longer equals {e['alias']['of']}")
                continue
            row = rows[r]
            if a.shape == row.shape:
                row[...] = a
            else:                              # a smaller step fills the leading corner
                row[...] = 0
                row[tuple(slice(0, d) for d in a.shape)] = a
        m = self._meta_rows
        rows[m][:len(idx)] = idx
        rows[m][len(idx):] = -1
        t = getattr(self._network, "time", None)
        rows[m + 1][()] = int(step)
        rows[m + 2][()] = len(idx)
        rows[m + 3][()] = int(getattr(est, "forward_passes", 0))
        rows[m + 4][()] = float(est.loss)
        rows[m + 5][()] = float(t) if isinstance(t, (int, float)) else np.nan
        rows[m + 6][...] = shapes
        if self._pump is not None:
            self._full.put((buf, rows))
        elif self._proc is not None:
            self._pipe_write(memoryview(buf))   # copied into the pipe: the buffer is free again
        else:
            try:
                self._sink.step([r.reshape(-1) for r in rows])
            except OutOfSpace as exc:     # nothing of this step was written: close the file as it stands
                self._failed = str(exc)
                self._confirmed = self._sink.n
                sink, self._sink, self._f = self._sink, None, None
                with contextlib.suppress(Exception):
                    sink.finish("failed", str(exc)).close()
                raise self._error() from None
            except Exception as exc:      # HDF5's error: what it did to the file is unknown
                self._failed = f"{_sink.describe(exc)} while writing step {self._sink.n + 1}"
                self._confirmed = self._sink.n
                self._sink.abandon()
                self._sink = None
                raise self._error() from None
            self._confirmed = self._sink.n
        self._written += 1

    def flush(self) -> None:
        """Wait until every step handed to :meth:`write` is in the file."""
        if self._proc is not None and self._failed is None:
            self._send(b"F")
            self._reply(b"F")
        if self._failed is not None:
            raise self._error()

    def on_step(self, step, indices, est) -> None:
        """The ``scenarios.train(on_step=…)`` hook: same as :meth:`write`."""
        self.write(step, indices, est)

    def close(self, network=None, *, status: str = "complete") -> None:
        """Trim the datasets to the steps written, store the network's final state, mark closed.

        ``status="interrupted"``: the run stopped early (Ctrl-C, an error): the file keeps its
        whole steps, no final state (the network may be part-way through a step), and says
        so (``trace info``: INTERRUPTED). After a write error (:class:`TraceWriteError`) the
        file is not touched again: it keeps its whole steps, ``status="failed"`` and the cause
        when the sink could still record them; a failure first noticed here is raised."""
        if status not in ("complete", "interrupted"):
            raise ValueError(f"status={status!r}; allowed: 'complete', 'interrupted'")
        if self._sink is None and self._proc is None:
            if self._failed is not None and self._f is not None:
                self._f = None
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
            if self._failed is not None:    # the sink stopped; the file stays as it left it
                if error is not None:
                    raise error
                return
            try:
                f = h5py.File(self.path, "r+", libver=LIBVER)
            except OSError as exc:
                raise TraceWriteError(self.path, f"cannot reopen the trace to close it ({exc})",
                                      self._confirmed) from None
        else:
            sink, self._sink, self._f = self._sink, None, None
            try:
                f = sink.finish()
            except Exception as exc:
                raise TraceWriteError(self.path, f"cannot close the trace ({type(exc).__name__}: {exc})",
                                      sink.n) from None
        steps = self._confirmed
        try:
            final = None
            if network is not None and status == "complete":  # else the network may be mid-step
                rule = self._rule
                final = {"network": network.state(), "rule": rule.state()
                         if rule is not None and hasattr(rule, "state") else None}
            # room first (as for every step): a full disk must not meet HDF5 half-way through
            try:
                self._reserve_in(f, (1 << 16) + (_state_bytes(final) * 5 // 4 if final else 0))
            except OSError as exc:
                final, why = None, f"no room for the final state: {_sink.describe(exc)}"
                self._reserve_in(f, 1 << 16)      # the status attributes, at least
                set_status(f, "failed", why)
                error = error or TraceWriteError(self.path, why, steps)
            if final is not None:
                self._write_state(f, "final_state", final)
            f.attrs["closed"] = 1
            if error is None:
                set_status(f, status)
        except (OSError, RuntimeError) as exc:   # not even the status fits: the file stays as the sink left it
            error = error or TraceWriteError(self.path, f"cannot close the trace: {_sink.describe(exc)}", steps)
        finally:
            f.close()
        with contextlib.suppress(OSError, RuntimeError):
            # HDF5 trims the file to its end of allocation when it closes a file it found longer
            # than that — the reserved room this close did not use
            h5py.File(self.path, "r+", libver=LIBVER).close()
        if error is not None:
            raise error

    @staticmethod
    def _reserve_in(f, nbytes: int) -> None:
        fd = os.open(f.filename, os.O_WRONLY)
        try:
            _sink.reserve(fd, int(f.id.get_filesize()) + nbytes)
        finally:
            os.close(fd)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, *exc):
        try:
            self.close(status="complete" if exc_type is None else "interrupted")
        except TraceError:
            if exc_type is None:
                raise
        return False


def _state_bytes(state) -> int:
    """Bytes of the arrays in a (nested) state."""
    if isinstance(state, np.ndarray):
        return state.nbytes
    if isinstance(state, dict):
        return sum(_state_bytes(v) for v in state.values())
    return 0


def _steps_in(path: str) -> int | None:
    """``complete_steps`` of the trace at ``path`` as it stands (``None`` if it cannot be read)."""
    from .. import _hdf5

    try:
        with _hdf5.open_file(path, seconds=10) as f:
            n = f.attrs.get("complete_steps")
            return int(n) if isinstance(n, (int, np.integer)) and n >= 0 else None
    except Exception:  # noqa: BLE001 - the count is a courtesy; the error is reported either way
        return None


def _steps_kept(line: str) -> int | None:
    """The step count in the sink's last words ("…; the file keeps its first N steps")."""
    head, sep, rest = line.rpartition("the file keeps its first ")
    if not sep:
        return None
    n = rest.split(" ", 1)[0]
    return int(n) if n.isdigit() else None


def _ignore_sigxfsz() -> None:
    """Beyond ``RLIMIT_FSIZE`` a write then fails with EFBIG (an error the writer reports)
    instead of killing the process with SIGXFSZ. Only the main thread can set it."""
    if hasattr(signal, "SIGXFSZ") and threading.current_thread() is threading.main_thread():
        with contextlib.suppress(ValueError, OSError):
            if signal.getsignal(signal.SIGXFSZ) == signal.SIG_DFL:
                signal.signal(signal.SIGXFSZ, signal.SIG_IGN)


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

