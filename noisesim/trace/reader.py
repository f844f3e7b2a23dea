"""Reading a trace safely: :func:`open_trace` → :class:`TraceReader`.

Everything structural is validated when the file is opened — format name and version, the
config, the layout, every dataset's presence, dtype and shape against the config — before any
array data is read; each step's checksum is verified when the step is read. Any problem raises
:class:`~noisesim.trace.format.TraceError` naming the file and what is wrong. No pickle, no eval:
the config and layout are JSON, arrays are plain numeric datasets.
"""
from __future__ import annotations

import math
import os
import zlib
from dataclasses import dataclass

import h5py
import numpy as np

from .format import (CRC_COLUMN, FORMAT_NAME, MAX_ROW_BYTES, META_FIXED, STORAGE_DTYPES, SUPPORTED_VERSIONS,
                     TraceError, decode_json_attr, step_checksum, validate_layout)


@dataclass
class TraceStep:
    """One recorded step, as the rule consumed it (host arrays in the run's dtype)."""

    row: int
    step: int
    batch_size: int
    forward_passes: int
    loss: float
    indices: np.ndarray
    record: dict
    inputs: list
    losses: np.ndarray | None = None
    time: float | None = None


def _int_attr(attrs, name, where, default=None):
    if name not in attrs:
        if default is not None:
            return default
        raise TraceError(f"{where}: missing root attribute {name!r}")
    v = attrs[name]
    if isinstance(v, np.ndarray) and v.shape == ():
        v = v[()]
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)):
        raise TraceError(f"{where}: root attribute {name!r}={v!r} is not an integer")
    return int(v)


def _str_attr(attrs, name, where):
    if name not in attrs:
        raise TraceError(f"{where}: missing root attribute {name!r}")
    v = attrs[name]
    if isinstance(v, bytes):
        v = v.decode("utf-8", "replace")
    if not isinstance(v, str):
        raise TraceError(f"{where}: root attribute {name!r} is not a string")
    return v


class TraceReader:
    """A validated, read-only view of one trace file. Use :func:`open_trace`."""

    def __init__(self, path):
        self.path = os.fspath(path)
        where = self.path
        if not os.path.exists(self.path):
            raise TraceError(f"{where}: no such file")
        try:
            self._f = h5py.File(self.path, "r")
        except Exception as exc:  # OSError from HDF5: truncated, not HDF5, corrupted superblock …
            raise TraceError(f"{where}: not a readable HDF5 file ({exc})") from None
        try:
            self._validate()
        except TraceError:
            self.close()
            raise
        except Exception as exc:  # anything h5py raises on a damaged file
            self.close()
            raise TraceError(f"{where}: damaged trace file ({type(exc).__name__}: {exc})") from None

    # -- validation ----------------------------------------------------------------------------
    def _dataset(self, name, dtype, shape_ok, what):
        where = self.path
        obj = self._f.get(name)
        if obj is None:
            raise TraceError(f"{where}: missing dataset {name!r} ({what})")
        if not isinstance(obj, h5py.Dataset):
            raise TraceError(f"{where}: {name!r} is not a dataset")
        if obj.dtype != np.dtype(dtype):
            raise TraceError(f"{where}: dataset {name!r} has dtype {obj.dtype}, expected {np.dtype(dtype)}")
        ok, expected = shape_ok(obj.shape)
        if not ok:
            raise TraceError(f"{where}: dataset {name!r} has shape {obj.shape}, expected {expected}")
        return obj

    def _validate(self) -> None:
        where, a = self.path, self._f.attrs
        if "format" not in a:
            raise TraceError(f"{where}: not a noisesim trace (no 'format' attribute)")
        fmt = _str_attr(a, "format", where)
        if fmt != FORMAT_NAME:
            raise TraceError(f"{where}: not a noisesim trace (format attribute is {fmt!r}, expected {FORMAT_NAME!r})")
        self.version = _int_attr(a, "format_version", where)
        if self.version not in SUPPORTED_VERSIONS:
            raise TraceError(f"{where}: unknown trace format version {self.version}; this noisesim "
                             f"reads versions {list(SUPPORTED_VERSIONS)}")
        self.noisesim_version = _str_attr(a, "noisesim_version", where)
        self.created = _str_attr(a, "created", where)
        self.config = decode_json_attr(a, "config", where)
        self._check_config()
        self.storage_dtype = _str_attr(a, "storage_dtype", where)
        if self.storage_dtype not in STORAGE_DTYPES:
            raise TraceError(f"{where}: storage_dtype={self.storage_dtype!r} is not one of {list(STORAGE_DTYPES)}")
        self.lossy = bool(_int_attr(a, "lossy", where))
        if self.lossy != (self.storage_dtype == "float16"):
            raise TraceError(f"{where}: lossy={int(self.lossy)} contradicts storage_dtype={self.storage_dtype!r}")
        if not self.lossy and self.storage_dtype != self.dtype:
            raise TraceError(f"{where}: storage_dtype={self.storage_dtype!r} differs from the run's dtype {self.dtype!r}")
        self.compression = _str_attr(a, "compression", where)
        self.closed = bool(_int_attr(a, "closed", where))
        n = _int_attr(a, "complete_steps", where)
        if n < 0:
            raise TraceError(f"{where}: complete_steps={n} is negative")
        self.complete_steps = n
        self.initial_state_keys = self._check_state("initial_state", required=True)
        self.final_state_keys = self._check_state("final_state", required=False)
        self.layout = None
        if "layout" in a:
            self.layout = validate_layout(decode_json_attr(a, "layout", where), where)
            self._check_steps()
        elif n > 0:
            raise TraceError(f"{where}: complete_steps={n} but the 'layout' attribute is missing")

    def _check_config(self) -> None:
        where, c = self.path, self.config
        if not isinstance(c, dict) or not isinstance(c.get("network"), dict):
            raise TraceError(f"{where}: config has no 'network' section")
        sizes = c["network"].get("sizes")
        if (not isinstance(sizes, list) or len(sizes) < 2 or len(sizes) > 1000
                or any(not isinstance(s, int) or isinstance(s, bool) or not 0 < s <= 1 << 24 for s in sizes)):
            raise TraceError(f"{where}: config network.sizes={sizes!r} is not a list of layer widths")
        dtype = c.get("dtype")
        if dtype not in ("float32", "float64"):
            raise TraceError(f"{where}: config dtype={dtype!r} is not float32 or float64")
        self.sizes, self.dtype = sizes, dtype
        self.n_layers = len(sizes) - 1

    def _check_state(self, group, required):
        where = self.path
        if group not in self._f:
            if required:
                raise TraceError(f"{where}: missing group {group!r} (the network state)")
            return None
        g = self._f[group]
        if not isinstance(g, h5py.Group):
            raise TraceError(f"{where}: {group!r} is not a group")
        keys = []
        for l in range(self.n_layers):
            shape = (self.sizes[l + 1], self.sizes[l])
            self._dataset(f"{group}/W{l}", self.dtype, lambda s, e=shape: (s == e, e), f"weights of layer {l}")
            keys.append(f"W{l}")
            if f"R{l}" in g:
                e = (self.sizes[l], self.sizes[l])
                self._dataset(f"{group}/R{l}", self.dtype, lambda s, e=e: (s == e, e), f"decorrelation of layer {l}")
                keys.append(f"R{l}")
        unknown = sorted(set(g.keys()) - set(keys))
        if unknown:
            raise TraceError(f"{where}: {group!r} holds unexpected entries {unknown}")
        return keys

    def _check_steps(self) -> None:
        where, lay, n = self.path, self.layout, self.complete_steps
        entries = lay["entries"]
        for l in range(self.n_layers):
            xs = [e for e in entries if e["name"] == f"xstar/{l}"]
            if len(xs) != 1 or xs[0]["kind"] != "float" or not xs[0]["shape"] or xs[0]["shape"][-1] != self.sizes[l]:
                raise TraceError(f"{where}: layout lacks x* of layer {l} with last dimension {self.sizes[l]}")
        V, I, B = lay["values_width"], lay["ints_width"], lay["max_batch"]
        itemsize = np.dtype(self.storage_dtype).itemsize
        if V * itemsize + I * 8 + max(B, 1) * 8 > MAX_ROW_BYTES:
            raise TraceError(f"{where}: layout declares {V * itemsize + I * 8} bytes per step, more than the "
                             f"reader's limit of {MAX_ROW_BYTES}")
        ncol = len(lay["meta_columns"])

        def rows(width):
            return lambda s: (len(s) == 2 and s[0] >= n and s[1] == width, f"(≥{n}, {width})")

        self._values = self._dataset("steps/values", self.storage_dtype, rows(V), "per-step floating arrays")
        self._ints = self._dataset("steps/ints", np.int64, rows(I), "per-step integer arrays") if I else None
        self._indices = self._dataset("steps/indices", np.int64, rows(max(B, 1)), "batch indices")
        self._loss = self._dataset("steps/scalars", np.float64, rows(2), "loss and device time")
        self._meta = self._dataset("steps/meta", np.int64, rows(ncol), "step table")

    # -- reading ---------------------------------------------------------------------------------
    def _read(self, ds, sel):
        try:
            return ds[sel]
        except Exception as exc:
            raise TraceError(f"{self.path}: cannot read {ds.name} ({type(exc).__name__}: {exc})") from None

    def __len__(self) -> int:
        return self.complete_steps

    def _state(self, group, keys) -> dict:
        out = {}
        for k in keys:
            ds = self._f[f"{group}/{k}"]
            a = np.ascontiguousarray(self._read(ds, ()))
            crc = ds.attrs.get("crc32")
            if not isinstance(crc, (int, np.integer)) or int(crc) != zlib.crc32(a.view(np.uint8)):
                raise TraceError(f"{self.path}: checksum mismatch in {group}/{k}; the file is corrupted")
            out[k] = a
        return out

    def initial_state(self) -> dict:
        """Exact network state before the first recorded step."""
        return self._state("initial_state", self.initial_state_keys)

    def final_state(self) -> dict | None:
        """Exact network state after the last step (``None`` unless the writer closed cleanly)."""
        return None if self.final_state_keys is None else self._state("final_state", self.final_state_keys)

    def step(self, row: int) -> TraceStep:
        """Step ``row`` (0-based), checksum-verified, shapes validated before any reshaping."""
        where = self.path
        if not 0 <= row < self.complete_steps:
            raise IndexError(f"{where}: step row {row} out of range; the trace has {self.complete_steps} complete steps")
        lay = self.layout
        meta = self._read(self._meta, row)
        values = self._read(self._values, row)
        ints = self._read(self._ints, row) if self._ints is not None else None
        irow = self._read(self._indices, row)
        scalars = self._read(self._loss, row)
        loss, time = float(scalars[0]), float(scalars[1])
        crc = step_checksum(values, ints, irow, scalars, meta[:CRC_COLUMN])
        if crc != int(meta[CRC_COLUMN]):
            raise TraceError(f"{where}: checksum mismatch at step row {row} (stored {int(meta[CRC_COLUMN])}, "
                             f"computed {crc}); the file is corrupted")
        step, B, fp = (int(v) for v in meta[:3])
        if not 0 <= B <= lay["max_batch"] or fp < 0:
            raise TraceError(f"{where}: step row {row} has batch_size={B}, forward_passes={fp}")
        idx = irow[:B]
        if (idx < 0).any():
            raise TraceError(f"{where}: step row {row} has negative batch indices")
        arrays, col = {}, len(META_FIXED)
        for e in lay["entries"]:
            nd = len(e["shape"])
            shape = tuple(int(v) for v in meta[col:col + nd])
            col += nd
            if any(d < 0 for d in shape) or math.prod(shape) > math.prod(e["shape"]):
                raise TraceError(f"{where}: step row {row}: {e['name']} has shape {shape}, which does not fit its "
                                 f"region {tuple(e['shape'])}")
            if e["alias"] is None:
                src = values if e["kind"] == "float" else ints
                a = src[e["offset"]:e["offset"] + math.prod(shape)].reshape(shape)
                arrays[e["name"]] = a.astype(e["dtype"], copy=False)
            else:
                arrays[e["name"]] = shape
        xstar = [arrays[f"xstar/{l}"] for l in range(self.n_layers)]
        record, lists = {}, {}
        for e in lay["entries"]:
            if e["source"] != "record":
                continue
            a = arrays[e["name"]]
            if e["alias"] == "xstar":
                x = xstar[e["layer"]]
                if math.prod(a) != x.size:
                    raise TraceError(f"{where}: step row {row}: {e['name']} shape {a} does not match x* {x.shape}")
                a = x.reshape(a)
            if e["layer"] is None:
                record[e["key"]] = a
            else:
                lists.setdefault(e["key"], {})[e["layer"]] = a
        for key, per_layer in lists.items():
            if sorted(per_layer) != list(range(len(per_layer))):
                raise TraceError(f"{where}: record key {key!r} has layers {sorted(per_layer)}")
            record[key] = [per_layer[l] for l in range(len(per_layer))]
        return TraceStep(row, step, B, fp, loss, idx, record, xstar, arrays.get("losses"),
                         None if math.isnan(time) else time)

    def steps(self, start: int = 0, stop: int | None = None):
        """Iterate over verified steps ``start … stop-1``."""
        stop = self.complete_steps if stop is None else min(stop, self.complete_steps)
        for r in range(start, stop):
            yield self.step(r)

    def verify(self) -> int:
        """Read and checksum every complete step; return their number (raises on the first bad one)."""
        for _ in self.steps():
            pass
        if self.final_state_keys is not None:
            self.final_state()
        self.initial_state()
        return self.complete_steps

    def storage_bytes(self) -> dict:
        """On-disk bytes of each per-step dataset (after compression)."""
        out = {}
        for name in ("values", "ints", "indices", "scalars", "meta"):
            if self.layout is not None and f"steps/{name}" in self._f:
                out[name] = int(self._f[f"steps/{name}"].id.get_storage_size())
        return out

    def close(self) -> None:
        f, self._f = getattr(self, "_f", None), None
        if f is not None:
            try:
                f.close()
            except Exception:
                pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


def open_trace(path) -> TraceReader:
    """Open and validate a trace; raises :class:`TraceError` on any problem."""
    return TraceReader(path)
