"""Reading a trace safely: :func:`open_trace` → :class:`TraceReader`.

Everything structural is validated when the file is opened — format name and version, the
config, the schema, every dataset's presence, dtype and shape against the schema — before any
array data is read; each step's checksum is verified when the step is read, and the recorded
states are read through :func:`noisesim.state.read` (checksummed arrays, bounded sizes). Objects
are reached through hard links only: soft and external links, external storage and virtual
datasets are refused. Any problem raises :class:`~noisesim.trace.format.TraceError` naming the
file and what is wrong. No pickle, no eval: the config and schema are JSON, arrays are plain
numeric datasets.

Before the file is opened, :func:`noisesim._hdf5.open_file` refuses what is not a regular
file (a named pipe, a device, a directory, a symbolic link) and walks the file's whole HDF5
structure in a forked child with a time limit, so damaged metadata that makes HDF5 loop or
crash ends in a ``TraceError`` within seconds; the same walk refuses any link, storage or
filter that reaches outside the file. Every config field is checked by type and range, the
recorded weights against the datasets present, and the memory a replay needs against the
memory available, before anything large is read.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass

import h5py
import numpy as np

from .. import _hdf5
from ._sink import STRING_ATTRS, strings_crc32
from .. import state as state_io
from .format import tile_shapes
from .format import (FORMAT_NAME, MAX_STEP_BYTES, META, STATUSES, STORAGE_DTYPES, SUPPORTED_VERSIONS,
                     TraceError, decode_json_attr, step_checksum, validate_config, validate_schema)

# Budget of the array bytes read from one recorded state (initial or final).
MAX_STATE_BYTES = 1 << 34
REPLAY_COPIES = 6   # the recorded weights' bytes a replay holds at once, about (state, tiles, optimizer)


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
        self._f = None
        try:
            self._f = _hdf5.open_file(self.path)
        except _hdf5.UnsafeFile as exc:
            raise TraceError(str(exc)) from None
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
    def _validate(self) -> None:
        where, a = self.path, self._f.attrs
        if "format" not in a:
            raise TraceError(f"{where}: not a noisesim trace (no 'format' attribute)")
        fmt = _str_attr(a, "format", where)
        if fmt != FORMAT_NAME:
            raise TraceError(f"{where}: not a noisesim trace (format attribute is {fmt!r}, expected {FORMAT_NAME!r})")
        self.version = _int_attr(a, "format_version", where)
        if self.version not in SUPPORTED_VERSIONS:
            old = (" (format 1 kept every step in one flat dataset; re-record the run, or read it with "
                   "noisesim 0.2)" if self.version == 1 else "")
            raise TraceError(f"{where}: unknown trace format version {self.version}{old}; this noisesim reads "
                             f"format version{'s' if len(SUPPORTED_VERSIONS) > 1 else ''} "
                             f"{', '.join(map(str, SUPPORTED_VERSIONS))}")
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
        # traces written before the status attribute: a clean close was the only ending recorded
        if "status" in a:
            self.status = _str_attr(a, "status", where)
            if self.status not in STATUSES:
                raise TraceError(f"{where}: status={self.status!r} is not one of {list(STATUSES)}")
        else:
            self.status = "complete" if self.closed else "recording"
        self.error = _str_attr(a, "error", where) if "error" in a else None
        if "strings_crc32" in a:     # traces of noisesim ≤ 0.3 have none
            crc = _int_attr(a, "strings_crc32", where)
            if crc != strings_crc32(a):
                raise TraceError(f"{where}: the string attributes ({', '.join(k for k in STRING_ATTRS if k in a)}) "
                                 "do not match their checksum strings_crc32; the file is corrupted or was edited")
        n = _int_attr(a, "complete_steps", where)
        if n < 0:
            raise TraceError(f"{where}: complete_steps={n} is negative")
        self.complete_steps = n
        self._check_group("initial_state", required=True)
        self.has_final_state = self._check_group("final_state", required=False)
        self.schema = None
        if "schema" in a:
            self.schema = validate_schema(decode_json_attr(a, "schema", where), where)
            self._check_steps()
        elif n > 0:
            raise TraceError(f"{where}: complete_steps={n} but the 'schema' attribute is missing")

    def _check_config(self) -> None:
        c = validate_config(self.config, self.path)
        self.sizes, self.dtype = c["network"]["sizes"], c["dtype"]
        self.n_layers = len(self.sizes) - 1
        self.tile_shapes = tile_shapes(c["network"])
        # a replay holds the recorded weights a few times over (state, device arrays, optimizer)
        need = REPLAY_COPIES * sum(a * b for a, b in self.tile_shapes) * np.dtype(self.dtype).itemsize
        have = _hdf5.available_memory()
        if have is not None and need > have:
            raise TraceError(f"{self.path}: config network.sizes={self.sizes} needs about {need / 2**30:.1f} GiB to "
                             f"replay, more than the {have / 2**30:.1f} GiB of memory available")

    def _object(self, name: str, kind, what: str):
        """The object at ``name`` through hard links only (never a soft or external link)."""
        where, node = self.path, self._f
        for part in name.split("/"):
            link = node.get(part, getlink=True) if isinstance(node, h5py.Group) else None
            if link is None:
                return None
            if not isinstance(link, h5py.HardLink):
                raise TraceError(f"{where}: {name!r} is reached through a {type(link).__name__}; only objects "
                                 "stored in the file are read")
            node = node[part]
        if not isinstance(node, kind):
            raise TraceError(f"{where}: {name!r} is not a {'dataset' if kind is h5py.Dataset else 'group'} ({what})")
        return node

    def _check_group(self, group, required) -> bool:
        """A recorded state is there, with each layer's weights of the right shape and dtype (the
        rest of it is checked when it is read, and against the network when it is loaded)."""
        g = self._object(group, h5py.Group, "a recorded state")
        if g is None:
            if required:
                raise TraceError(f"{self.path}: missing group {group!r} (the recorded state)")
            return False
        for l in range(self.n_layers):
            shape = self.tile_shapes[l]
            ds = self._dataset(f"{group}/network/tiles/{l}/w", self.dtype, shape[1:], shape[0],
                               f"weights of layer {l}")
            if ds.shape != shape:
                raise TraceError(f"{self.path}: dataset '{group}/network/tiles/{l}/w' has shape {ds.shape}, "
                                 f"expected {shape} (config network.sizes={self.sizes})")
        return True

    def _dataset(self, name, dtype, shape, n, what):
        where = self.path
        ds = self._object(name, h5py.Dataset, what)
        if ds is None:
            raise TraceError(f"{where}: missing dataset {name!r} ({what})")
        if ds.dtype != np.dtype(dtype):
            raise TraceError(f"{where}: dataset {name!r} has dtype {ds.dtype}, expected {np.dtype(dtype)}")
        if len(ds.shape) != 1 + len(shape) or ds.shape[0] < n or tuple(ds.shape[1:]) != tuple(shape):
            raise TraceError(f"{where}: dataset {name!r} has shape {ds.shape}, expected (≥{n}, "
                             f"{', '.join(map(str, shape))})".replace(", )", ")"))
        if ds.is_virtual or ds.external:
            raise TraceError(f"{where}: dataset {name!r} keeps its data outside the file; refused")
        try:
            state_io.check_storage(ds)
        except state_io.StateError as exc:
            raise TraceError(f"{where}: {exc}") from None
        return ds

    def _check_steps(self) -> None:
        where, sch, n = self.path, self.schema, self.complete_steps
        arrays = sch["arrays"]
        for l in range(self.n_layers):
            xs = [e for e in arrays if e["role"] == "xstar" and e["layer"] == l]
            n_in = self.tile_shapes[l][1]
            if len(xs) != 1 or xs[0]["kind"] != "float" or xs[0]["shape"][-1:] != [n_in]:
                raise TraceError(f"{where}: the schema lacks x* of layer {l} with last dimension {n_in}")
        if any(e["role"] == "xstar" and e["layer"] is not None and e["layer"] >= self.n_layers for e in arrays):
            raise TraceError(f"{where}: the schema has x* of a layer the network does not have")
        for e in arrays:
            if e["kind"] == "float" and e["stored"] != (self.storage_dtype if self.lossy else e["dtype"]):
                raise TraceError(f"{where}: array {e['name']!r} is stored as {e['stored']}, but the trace's "
                                 f"storage_dtype is {self.storage_dtype!r}")
        B, C = max(sch["max_batch"], 1), sch["columns"]
        step_bytes = sum(math.prod(e["shape"]) * np.dtype(e["stored"]).itemsize for e in arrays
                         if e["alias"] is None) + B * 8 + C * 8
        if step_bytes > MAX_STEP_BYTES:
            raise TraceError(f"{where}: the schema declares {step_bytes} bytes per step, more than the reader's "
                             f"limit of {MAX_STEP_BYTES}")
        self._arrays = [(e, None if e["alias"] is not None else
                         self._dataset(f"steps/{e['name']}", e["stored"], e["shape"], n, f"recorded {e['role']} array"))
                        for e in arrays]
        self._meta = {name: self._dataset(f"steps/{name}", dtype, [B] if name == "indices" else [C]
                                          if name == "shapes" else [], n, "per-step record")
                      for name, dtype in META}
        self._checksum = self._dataset("steps/checksum", np.uint32, [], n, "per-step checksums")

    # -- reading ---------------------------------------------------------------------------------
    def _read(self, ds, sel):
        try:
            return ds[sel]
        except Exception as exc:
            raise TraceError(f"{self.path}: cannot read {ds.name} ({type(exc).__name__}: {exc})") from None

    def __len__(self) -> int:
        return self.complete_steps

    def _state(self, group) -> dict:
        try:
            return state_io.read(self._f[group], where=self.path, max_bytes=MAX_STATE_BYTES)
        except state_io.StateError as exc:
            raise TraceError(f"{exc} (in {group})") from None

    def state(self, which: str = "initial") -> dict | None:
        """The complete recorded state ``{"network": …, "rule": …}`` (:meth:`noisesim.Network.state`
        and the rule's ``state()``, or ``None``): ``"initial"`` — before the first recorded step;
        ``"final"`` — after the last one (``None`` unless the writer closed cleanly)."""
        if which not in ("initial", "final"):
            raise ValueError(f"which={which!r}; allowed: 'initial', 'final'")
        if which == "final" and not self.has_final_state:
            return None
        return self._state(f"{which}_state")

    def initial_state(self) -> dict:
        """The weights and decorrelation matrices before the first step, as
        :meth:`noisesim.Network.get_state` gives them (``W0``, ``R0`` …); :meth:`state` has
        everything else."""
        return _weights(self.state("initial"), self.path)

    def final_state(self) -> dict | None:
        """The weights after the last step (``None`` unless the writer closed cleanly)."""
        st = self.state("final")
        return None if st is None else _weights(st, self.path)

    def _row(self, ds, row):
        try:
            return ds[row]
        except Exception as exc:
            raise TraceError(f"{self.path}: cannot read {ds.name} ({type(exc).__name__}: {exc})") from None

    def step(self, row: int) -> TraceStep:
        """Step ``row`` (0-based), checksum-verified, shapes validated before any slicing."""
        where = self.path
        if not 0 <= row < self.complete_steps:
            raise IndexError(f"{where}: step row {row} out of range; the trace has {self.complete_steps} complete steps")
        stored = [(e, self._row(ds, row)) for e, ds in self._arrays if ds is not None]
        meta = {name: self._row(ds, row) for name, ds in self._meta.items()}
        crc = step_checksum([np.asarray(a) for _, a in stored] + [np.asarray(meta[name]) for name, _ in META])
        want = int(self._row(self._checksum, row))
        if crc != want:
            raise TraceError(f"{where}: checksum mismatch at step row {row} (stored {want}, computed {crc}); "
                             "the file is corrupted")
        step, B, fp = int(meta["step"]), int(meta["batch_size"]), int(meta["forward_passes"])
        loss, time, shapes = float(meta["loss"]), float(meta["time"]), meta["shapes"]
        if not 0 <= B <= self.schema["max_batch"] or fp < 0:
            raise TraceError(f"{where}: step row {row} has batch_size={B}, forward_passes={fp}")
        idx = meta["indices"][:B]
        if (idx < 0).any():
            raise TraceError(f"{where}: step row {row} has negative batch indices")
        values = dict((e["name"], a) for e, a in stored)
        arrays = {}
        for e, _ in self._arrays:
            lo, hi = e["columns"]
            shape = tuple(int(v) for v in shapes[lo:hi])
            if any(not 0 <= d <= c for d, c in zip(shape, e["shape"])):
                raise TraceError(f"{where}: step row {row}: {e['name']} has shape {shape}, which does not fit its "
                                 f"capacity {tuple(e['shape'])}")
            if e["alias"] is None:
                a = values[e["name"]][tuple(slice(0, d) for d in shape)]
            else:
                src = arrays[e["alias"]["of"]]
                src = src[0] if e["alias"]["first"] and src.shape[0] else src
                if src.size != math.prod(shape):
                    raise TraceError(f"{where}: step row {row}: {e['name']} shape {shape} does not match "
                                     f"{e['alias']['of']} {src.shape}")
                a = src.reshape(shape)
            arrays[e["name"]] = a.astype(e["dtype"], copy=False)
        record, lists = {}, {}
        for e, _ in self._arrays:
            if e["role"] != "record":
                continue
            if e["layer"] is None:
                record[e["key"]] = arrays[e["name"]]
            else:
                lists.setdefault(e["key"], {})[e["layer"]] = arrays[e["name"]]
        for key, per_layer in lists.items():
            if sorted(per_layer) != list(range(len(per_layer))):
                raise TraceError(f"{where}: record key {key!r} has layers {sorted(per_layer)}")
            record[key] = [per_layer[l] for l in range(len(per_layer))]
        xstar = [arrays[f"xstar/{l}"] for l in range(self.n_layers)]
        return TraceStep(row, step, B, fp, loss, idx, record, xstar, arrays.get("losses"),
                         None if math.isnan(time) else time)

    def steps(self, start: int = 0, stop: int | None = None):
        """Iterate over verified steps ``start … stop-1``."""
        stop = self.complete_steps if stop is None else min(stop, self.complete_steps)
        for r in range(start, stop):
            yield self.step(r)

    def verify(self) -> int:
        """Read and checksum every complete step and both states; return the number of steps
        (raises on the first bad one)."""
        for _ in self.steps():
            pass
        self.state("final")
        self.state("initial")
        return self.complete_steps

    def storage_bytes(self) -> dict:
        """On-disk bytes of each per-step dataset (after compression), by name under ``steps/``."""
        out = {}
        if self.schema is not None:
            for e, ds in self._arrays:
                if ds is not None:
                    out[e["name"]] = int(ds.id.get_storage_size())
            for name, ds in [*self._meta.items(), ("checksum", self._checksum)]:
                out[name] = int(ds.id.get_storage_size())
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


def _weights(state: dict, where: str) -> dict:
    """``W0``, ``R0`` … of a recorded state, as ``Network.get_state`` gives them."""
    try:
        net = state["network"]
        out = {}
        for l in range(len(net["tiles"])):
            t = net["tiles"][str(l)]
            w, alpha = t["w"], t["alpha"]
            out[f"W{l}"] = w if alpha == 1.0 else w * w.dtype.type(alpha)
            R = (net.get("decorrelation") or {}).get(str(l))
            if R is not None:
                out[f"R{l}"] = R
        return out
    except (KeyError, TypeError, AttributeError) as exc:
        raise TraceError(f"{where}: the recorded network state lacks its weights ({type(exc).__name__}: {exc})") from None


def open_trace(path) -> TraceReader:
    """Open and validate a trace; raises :class:`TraceError` on any problem."""
    return TraceReader(path)
