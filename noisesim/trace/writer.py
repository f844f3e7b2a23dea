"""Recording a trace: :class:`TraceWriter`, one HDF5 file per run, one row per step.

>>> with noisesim.trace.TraceWriter("run.h5", net, rule) as tw:           # doctest: +SKIP
...     scenarios.train(net, rule, data, on_step=tw.on_step)
"""
from __future__ import annotations

import datetime as _dt
import json
import math
import os
import queue
import threading
import zlib

import h5py
import numpy as np
from h5py import h5a, h5f, h5s, h5t

from .._version import __version__
from ..backend import to_numpy
from .format import (COMPRESSIONS, CRC_COLUMN, FORMAT_NAME, FORMAT_VERSION, META_FIXED, TraceError,
                     entry_name)

# HDF5 1.8 file format: checksummed superblock and object headers, and — unlike the 1.10
# format — no "open for writing" flag left behind when the writer is killed, so a file cut
# off by SIGKILL still opens.
LIBVER = ("v108", "v108")


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
    background : bool, optional
        Compress and write in a background thread (default: on for gzip). Up to
        ``queue_steps`` steps may then be in memory, not yet in the file; :meth:`flush` waits.
        The thread only checksums and deflates (zlib runs without the GIL); the training thread
        writes the finished steps into the file at its next :meth:`write`.

    Each :meth:`write` adds one row to every per-step dataset, then rewrites the root
    attribute ``complete_steps`` and flushes, so a run killed at any point leaves a file
    whose first ``complete_steps`` steps are whole.
    """

    def __init__(self, path, network, rule=None, *, meta: dict | None = None, compression: str | None = None,
                 compression_opts=None, float16: bool = False, background: bool | None = None,
                 queue_steps: int = 4):
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
        net_dtype = np.dtype(network.dtype)
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
        self._f = h5py.File(self.path, "w", libver=LIBVER)
        a = self._f.attrs
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
        self._write_state("initial_state", network.get_state())
        self._layout = None
        self._n = 0
        self._cap = 0
        # gzip runs in a background thread (zlib releases the GIL; h5py's own filters do not),
        # writing pre-filtered chunks (see _deflate). At most
        # ``queue_steps`` steps wait in memory. Steps reach the file, and ``complete_steps``, in
        # order, so a crash still leaves whole steps only.
        background = compression == "gzip" if background is None else bool(background)
        if background and compression != "gzip":
            raise TraceError(f"{self.path}: background=True needs compression='gzip'")
        self._level = 4 if compression_opts is None else int(compression_opts)
        self._plane_state = [[0, None], [0, None]]  # values, ints: [steps to the next trial, levels]
        self._queue = queue.Queue() if background else None  # steps to the worker
        self._done = queue.Queue()  # (step, deflated chunks, error) from the worker, in order
        self._qmax = max(1, int(queue_steps))
        self._inflight = 0  # handed to the worker, not yet in the file
        self._failed = False  # sticky: no step is written after one that failed
        self._worker = None
        self._error = None
        self._f.flush()
        self._fid = self._f.id
        self._cs_attr = h5a.open(self._fid, b"complete_steps")
        self._cs_buf = np.zeros((), np.int64)

    # -- helpers ---------------------------------------------------------------------------------
    def _write_state(self, group: str, state: dict) -> None:
        g = self._f.create_group(group)
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
        chunk_opts = dict(compression=self.compression, compression_opts=self.compression_opts,
                          shuffle=self.compression is not None)
        g = self._f.create_group("steps")
        V, I = offsets["float"], offsets["int"]
        self._values = g.create_dataset("values", (0, V), maxshape=(None, V), chunks=(1, V),
                                        dtype=self.storage_dtype, **chunk_opts)
        self._ints = (g.create_dataset("ints", (0, I), maxshape=(None, I), chunks=(1, I), dtype=np.int64,
                                       **chunk_opts) if I else None)
        small = min(1024, max(1, (1 << 16) // (8 * max(len(cols), batch, 1))))
        self._indices = g.create_dataset("indices", (0, max(batch, 1)), maxshape=(None, max(batch, 1)),
                                         chunks=(small, max(batch, 1)), dtype=np.int64, fillvalue=-1)
        self._loss = g.create_dataset("scalars", (0, 2), maxshape=(None, 2), chunks=(1024, 2), dtype=np.float64)
        self._meta = g.create_dataset("meta", (0, len(cols)), maxshape=(None, len(cols)),
                                      chunks=(small, len(cols)), dtype=np.int64)
        self._row = np.zeros(V, self.storage_dtype)
        # Per entry, in item order: (alias?, layer, float?, offset, capacity, ndim, entry).
        self._plan = [(e["alias"] == "xstar", e["layer"], e["kind"] == "float", e["offset"],
                       math.prod(e["shape"]), len(e["shape"]), e) for e in entries]
        self._xstar_of = {l: i for i, (src, _, l, _) in enumerate(items) if src == "xstar"}
        # Region boundaries (one per non-alias array) of the values and ints rows, for _deflate.
        self._regions = [sorted({0, width} | {e["offset"] for e in entries
                                              if e["kind"] == kind and e["offset"] is not None and e["offset"] < width})
                         for kind, width in (("float", V), ("int", I))]
        self._irow = np.zeros(I, np.int64) if I else None
        layout_json = json.dumps(self._layout)
        self._f.attrs["layout"] = layout_json
        self._f.attrs["layout_crc32"] = zlib.crc32(layout_json.encode())

    def _grow(self) -> None:
        self._cap = self._cap + max(16, self._cap // 2)
        for d in (self._values, self._ints, self._indices, self._loss, self._meta):
            if d is not None:
                d.resize(self._cap, axis=0)
        # Low-level row writers: (dataset id, memory space of one row, file space, width). The
        # file space is fetched once per resize and only its selection changes per step.
        self._sinks = [None if d is None else (d.id, h5s.create_simple((1, d.shape[1])), d.id.get_space(),
                                               d.shape[1], h5t.py_create(d.dtype))
                       for d in (self._values, self._ints, self._indices, self._loss, self._meta)]

    @staticmethod
    def _put(sink, s: int, arr) -> None:
        """Write the C-contiguous row ``arr`` (the dataset's dtype, ``width`` items) at row ``s``."""
        dsid, mspace, fspace, width, mtype = sink
        fspace.select_hyperslab((s, 0), (1, width))
        dsid.write(mspace, fspace, arr, mtype)

    # -- the public API ---------------------------------------------------------------------------
    @property
    def complete_steps(self) -> int:
        """Steps in the file so far (lags :meth:`write` by up to ``queue_steps`` in background mode)."""
        return self._n

    def write(self, step: int, indices, est) -> None:
        """Record one applied step: its batch ``indices`` and the rule's ``Estimate``."""
        if self._f is None:
            raise TraceError(f"{self.path}: the trace writer is closed")
        self._check_worker()
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
        bg = self._queue is not None
        # In background mode each step packs into fresh rows (the queue holds them); else the
        # rows are reused.
        row = np.empty_like(self._row) if bg else self._row
        irow_ = self._irow
        if irow_ is not None and bg:
            irow_ = np.empty_like(irow_)
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
        irow = np.full(lay["max_batch"] or 1, -1, np.int64)
        irow[:len(idx)] = idx
        t = getattr(self._network, "time", None)
        scalars = np.array([float(est.loss), float(t) if isinstance(t, (int, float)) else np.nan])
        meta = np.empty(len(self._layout["meta_columns"]), np.int64)
        meta[0], meta[1], meta[2] = int(step), len(idx), int(getattr(est, "forward_passes", 0))
        meta[CRC_COLUMN + 1:] = shapes
        if not bg:
            meta[CRC_COLUMN] = self._crc(row, irow_, irow, scalars, meta)
            self._commit((row, irow_, irow, scalars, meta))
            return
        if self._worker is None:
            self._worker = threading.Thread(target=self._work, name="TraceWriter", daemon=True)
            self._worker.start()
        self._collect(block=False)
        while self._inflight >= self._qmax:
            self._collect(block=True)
        self._check_worker()
        self._inflight += 1
        self._queue.put((row, irow_, irow, scalars, meta))  # the checksum is computed by the worker

    @staticmethod
    def _crc(row, irow_, irow, scalars, meta) -> int:
        """:func:`.format.step_checksum` of C-contiguous rows of the right dtypes, without copies."""
        c = zlib.crc32(row)
        if irow_ is not None:
            c = zlib.crc32(irow_, c)
        c = zlib.crc32(irow, c)
        c = zlib.crc32(scalars, c)
        return zlib.crc32(meta[:CRC_COLUMN], c)

    # Byte planes whose deflate output is larger than this fraction of their size are stored
    # (deflate "stored" blocks) instead: the low mantissa bytes of noise-like floats do not
    # compress, and deflating them costs most of the time. Re-decided every RETRY_STEPS steps.
    PLANE_RATIO = 0.95
    RETRY_STEPS = 64

    def _deflate(self, row, which: int = 0) -> bytes:
        """HDF5's shuffle + deflate filters, done here so the GIL-free zlib overlaps training.

        The result is one zlib stream, as HDF5's deflate filter writes and reads it: a header,
        then for each byte plane of the shuffled row and each array's region in it, deflate
        blocks, then the adler32 of the whole shuffled row. Each part is coded the cheapest
        way that was smallest at the last trial (every ``RETRY_STEPS`` steps): deflate at
        ``self._level``, Huffman-only (the exponent bytes of noise-like floats: faster and
        smaller than LZ matching), or stored blocks when neither saves ``1 - PLANE_RATIO``
        (the low mantissa bytes, whose deflating would cost most of the time for nothing).
        """
        n = row.itemsize
        b = np.ascontiguousarray(np.ascontiguousarray(row).view(np.uint8).reshape(-1, n).T).reshape(-1)
        state = self._plane_state[which]
        parts = [b"\x78\x01"]  # zlib header: deflate, 32 KiB window (FLEVEL is informational)
        if state[0] <= 0:  # trial: code each part every way, keep the smallest
            width = len(b) // n
            bounds = [p * width + o for p in range(n) for o in self._regions[which][:-1]] + [len(b)]
            runs = []
            for j in range(len(bounds) - 1):
                data = b[bounds[j]:bounds[j + 1]]
                mode = zlib.Z_FINISH if j == len(bounds) - 2 else zlib.Z_SYNC_FLUSH
                best, code = None, None
                for cand in ((self._level, zlib.Z_DEFAULT_STRATEGY), (self._level, zlib.Z_HUFFMAN_ONLY)):
                    c = zlib.compressobj(cand[0], zlib.DEFLATED, -15, 8, cand[1])
                    seg = c.compress(data) + c.flush(mode)
                    if best is None or len(seg) < len(best):
                        best, code = seg, cand
                if len(best) > self.PLANE_RATIO * len(data):
                    code = (0, zlib.Z_DEFAULT_STRATEGY)
                    c = zlib.compressobj(0, zlib.DEFLATED, -15)
                    best = c.compress(data) + c.flush(mode)
                parts.append(best)
                # Adjacent parts (also across planes) coded alike are one run from now on:
                # fewer zlib calls, so fewer GIL hand-overs with the training thread.
                if runs and runs[-1][2] == code:
                    runs[-1][1] = bounds[j + 1]
                else:
                    runs.append([bounds[j], bounds[j + 1], code])
            state[0], state[1] = self.RETRY_STEPS, runs
        else:
            runs = state[1]
            for j, (lo, hi, (level, strategy)) in enumerate(runs):
                c = zlib.compressobj(level, zlib.DEFLATED, -15, 8, strategy)
                parts.append(c.compress(b[lo:hi]) + c.flush(zlib.Z_FINISH if j == len(runs) - 1 else zlib.Z_SYNC_FLUSH))
        parts.append(zlib.adler32(b).to_bytes(4, "big"))
        state[0] -= 1
        return b"".join(parts)

    def _commit(self, job, chunks=None) -> None:
        """Write one step's rows, then the new ``complete_steps``, then flush (crash-safe order)."""
        values, ints, irow, scalars, meta = job
        s = self._n
        if s >= self._cap:
            self._grow()
        sv, si, sx, sl, sm = self._sinks
        put = self._put
        if chunks is not None:
            sv[0].write_direct_chunk((s, 0), chunks[0])
            if ints is not None:
                si[0].write_direct_chunk((s, 0), chunks[1])
        else:
            put(sv, s, values)
            if ints is not None:
                put(si, s, ints)
        put(sx, s, irow)
        put(sl, s, scalars)
        put(sm, s, meta)
        self._n = s + 1
        # Written in place (the attribute is opened once); the steps above are in before it.
        self._cs_buf[()] = self._n
        self._cs_attr.write(self._cs_buf)
        h5f.flush(self._fid)

    def _work(self) -> None:
        """Background thread: checksum and deflate each step (zlib runs without the GIL). The
        HDF5 writes stay on the training thread (:meth:`_collect`): h5py holds the GIL
        throughout, and a worker doing them would stall training at every hand-over."""
        while True:
            job = self._queue.get()
            if job is None:
                return
            try:
                values, ints, irow, scalars, meta = job
                meta[CRC_COLUMN] = self._crc(values, ints, irow, scalars, meta)
                chunks = (self._deflate(values), None if ints is None else self._deflate(ints, 1))
                self._done.put((job, chunks, None))
            except BaseException as exc:  # reported to the training thread at its next write/close
                self._done.put((job, None, exc))

    def _collect(self, block: bool) -> None:
        """Commit, in order, the steps the worker has finished; with ``block``, wait for one."""
        while self._inflight:
            try:
                job, chunks, exc = self._done.get(block)
            except queue.Empty:
                return
            block = False
            self._inflight -= 1
            if self._failed:  # a step failed: later ones must not follow it in (a gap)
                continue
            if exc is None:
                try:
                    self._commit(job, chunks)
                except BaseException as e:
                    exc = e
            if exc is not None:
                self._error, self._failed = exc, True

    def _check_worker(self) -> None:
        if self._failed and self._error is None:
            raise TraceError(f"{self.path}: a step failed to be written in the background; the trace ends "
                             f"at its {self._n} complete steps")
        if self._error is not None:
            exc, self._error = self._error, None
            raise TraceError(f"{self.path}: writing the trace failed in the background ({exc})") from exc

    def flush(self) -> None:
        """Wait until every step handed to :meth:`write` is in the file."""
        while self._inflight:
            self._collect(block=True)
        self._check_worker()

    def on_step(self, step, indices, est) -> None:
        """The ``scenarios.train(on_step=…)`` hook: same as :meth:`write`."""
        self.write(step, indices, est)

    def close(self, network=None) -> None:
        """Trim the datasets to the steps written, store the network's final state, mark closed.

        After a failed background write the file keeps its whole steps and no final state."""
        if self._f is None:
            return
        network = network if network is not None else self._network
        self._network = None
        try:
            if self._worker is not None:
                while self._inflight:
                    self._collect(block=True)
                self._queue.put(None)
                self._worker.join()
                self._worker = None
                if self._error is not None:  # not reported yet
                    self._check_worker()
            self._cs_attr = None
            if self._layout is not None:
                for d in (self._values, self._ints, self._indices, self._loss, self._meta):
                    if d is not None:
                        d.resize(self._n, axis=0)
            if network is not None and not self._failed:  # else the network ran past the last step
                self._write_state("final_state", network.get_state())
            self._f.attrs["closed"] = 1
        finally:
            self._f.close()
            self._f = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


assert META_FIXED[CRC_COLUMN] == "crc32"
