"""Complete state as plain data, written to and read from HDF5 — no pickle.

A *state* is a nested ``dict`` with string keys whose leaves are NumPy arrays or JSON values
(numbers, strings, booleans, ``None``, and lists or dicts of them). ``Network.state()``,
``Rule.state()`` and ``Streams.state()`` give one; their ``from_state``/``load_state`` take
one back. In HDF5 a dict is a group, each array a dataset (with a ``crc32`` attribute of its
bytes), and the JSON leaves of a dict one attribute ``json`` of its group (with
``json_crc32``), so h5py, MATLAB or Julia read the arrays by name::

    >>> noisesim.state.save("ckpt.h5", {"network": net.state(), "rule": rule.state()})   # doctest: +SKIP
    >>> s = noisesim.state.load("ckpt.h5")                                               # doctest: +SKIP
    >>> net = noisesim.Network.from_state(s["network"]); rule = rules.from_state(s["rule"], net)  # doctest: +SKIP

Reading is safe on untrusted files: only groups, numeric datasets stored in the file itself
(no soft or external links, no external storage, no virtual datasets) and JSON attributes are
accepted, sizes are checked against a budget before anything is read, and every array's
checksum is verified. Any problem raises :class:`StateError` (a ``ValueError``) naming it.
"""
from __future__ import annotations

import json
import os
import re
import zlib

import h5py
import numpy as np

# dtypes a state array may have (what the device, the rules and the streams use)
DTYPES = frozenset(np.dtype(t) for t in ("bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32",
                                          "uint64", "float16", "float32", "float64"))
NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]{0,99}$")
MAX_BYTES = 1 << 36      # default read budget of one state (arrays)
MAX_JSON = 1 << 24       # longest JSON attribute read
MAX_DEPTH = 16
MAX_RATIO = 1024         # largest size / stored bytes of a compressed state array


class StateError(ValueError):
    """A state cannot be written or read as asked; the message names the problem."""


def _is_array(v) -> bool:
    return isinstance(v, np.ndarray)


def _has_array(v) -> bool:
    return _is_array(v) or (isinstance(v, dict) and any(_has_array(x) for x in v.values()))


def _json_leaf(v, path):
    """``v`` as plain JSON (NumPy scalars become Python numbers); raises on arrays in it."""
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, (list, tuple)):
        return [_json_leaf(x, f"{path}[{i}]") for i, x in enumerate(v)]
    if isinstance(v, dict):
        return {str(k): _json_leaf(x, f"{path}/{k}") for k, x in v.items()}
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    raise StateError(f"state entry {path!r} is a {type(v).__name__}; a state holds NumPy arrays and JSON values "
                     "(arrays inside lists are not allowed: use a dict keyed by index)")


def write(group: h5py.Group, state: dict, *, path: str = "") -> None:
    """Write ``state`` into the (empty) HDF5 ``group``: arrays as datasets, dicts that hold
    arrays as subgroups, everything else into the group's ``json`` attribute."""
    if not isinstance(state, dict):
        raise StateError(f"state {path or '/'!r} is a {type(state).__name__}, not a dict")
    rest = {}
    for k, v in state.items():
        where = f"{path}/{k}"
        if not isinstance(k, str) or not NAME.match(k):
            raise StateError(f"state key {where!r} is not a valid name (letters, digits, '_', '-', '.')")
        if _is_array(v):
            a = np.ascontiguousarray(v)
            if a.dtype not in DTYPES:
                raise StateError(f"state array {where!r} has dtype {a.dtype}; allowed: {sorted(map(str, DTYPES))}")
            group.create_dataset(k, data=a).attrs["crc32"] = np.uint32(zlib.crc32(a.view(np.uint8).reshape(-1)))
        elif isinstance(v, dict) and _has_array(v):
            write(group.create_group(k), v, path=where)
        else:
            rest[k] = _json_leaf(v, where)
    text = json.dumps(rest, allow_nan=True)
    group.attrs["json"] = text
    group.attrs["json_crc32"] = np.uint32(zlib.crc32(text.encode()))


def save(path, state: dict) -> None:
    """Write ``state`` (a dict of states, e.g. ``{"network": …, "rule": …}``) to a new HDF5
    file at ``path`` (replaced if it exists; the old file stays whole until the new one is)."""
    path = os.fspath(path)
    tmp = path + ".partial"
    try:
        with h5py.File(tmp, "w", libver=("v110", "v110")) as f:   # checksummed metadata
            f.attrs["format"] = "noisesim-state"
            write(f, state)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


class _Budget:
    def __init__(self, n: int):
        self.left = int(n)

    def take(self, nbytes: int, where: str, what: str) -> None:
        if nbytes > self.left:
            raise StateError(f"{where}: {what} would read more than the allowed {self.left} bytes; "
                             "refusing (raise max_bytes to read larger states)")
        self.left -= nbytes


def _json_attr(group, where):
    raw = group.attrs.get("json")
    if raw is None:
        raise StateError(f"{where}: group {group.name!r} has no 'json' attribute")
    if isinstance(raw, bytes):
        raw = raw.decode("utf-8", "replace")
    if not isinstance(raw, str) or len(raw) > MAX_JSON:
        raise StateError(f"{where}: the 'json' attribute of {group.name!r} is not a string of at most {MAX_JSON} characters")
    crc = group.attrs.get("json_crc32")
    if not isinstance(crc, (int, np.integer)) or isinstance(crc, (bool, np.bool_)) \
            or int(crc) != zlib.crc32(raw.encode("utf-8", "surrogatepass")):
        raise StateError(f"{where}: the 'json' attribute of {group.name!r} does not match its checksum")
    try:
        out = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise StateError(f"{where}: the 'json' attribute of {group.name!r} is not valid JSON ({exc})") from None
    if not isinstance(out, dict):
        raise StateError(f"{where}: the 'json' attribute of {group.name!r} is not a JSON object")
    return out


def check_storage(ds: h5py.Dataset) -> None:
    """Refuse a dataset that declares more bytes than it stores (unwritten chunks read as fill
    values: a few bytes on disk could otherwise make a reader allocate gigabytes). Datasets
    with filters (compression) are bounded by :data:`MAX_RATIO`."""
    nbytes = int(np.prod(ds.shape, dtype=np.int64)) * ds.dtype.itemsize
    stored = int(ds.id.get_storage_size())
    filtered = ds.id.get_create_plist().get_nfilters() > 0
    if ds.chunks is not None and ds.maxshape and ds.maxshape[0] is None:
        return     # per-step datasets: read one checksummed row at a time, rows past the last step never
    if (stored < nbytes and not filtered) or stored * MAX_RATIO < nbytes:
        raise StateError(f"dataset {ds.name!r} declares shape {ds.shape} ({nbytes} bytes) but stores {stored} bytes; "
                         "refused")


def _dataset(ds: h5py.Dataset, where: str, budget: _Budget) -> np.ndarray:
    name = ds.name
    if ds.dtype not in DTYPES:
        raise StateError(f"{where}: dataset {name!r} has dtype {ds.dtype}, not a numeric state array")
    if ds.is_virtual or ds.external:
        raise StateError(f"{where}: dataset {name!r} keeps its data outside the file; refused")
    try:
        check_storage(ds)
    except StateError as exc:
        raise StateError(f"{where}: {exc}") from None
    budget.take(int(np.prod(ds.shape, dtype=np.int64)) * ds.dtype.itemsize, where, f"dataset {name!r}")
    try:
        a = np.ascontiguousarray(ds[()])
    except Exception as exc:
        raise StateError(f"{where}: cannot read {name!r} ({type(exc).__name__}: {exc})") from None
    crc = ds.attrs.get("crc32")
    if not isinstance(crc, (int, np.integer)) or int(crc) != zlib.crc32(a.view(np.uint8).reshape(-1)):
        raise StateError(f"{where}: checksum mismatch in {name!r}; the file is corrupted")
    return a


def read(group: h5py.Group, *, where: str = "", max_bytes: int = MAX_BYTES, _budget=None, _depth=0) -> dict:
    """The state written by :func:`write` into ``group`` (see the module docstring for the
    checks); ``max_bytes`` bounds the array bytes read."""
    where = where or getattr(getattr(group, "file", None), "filename", "") or "state"
    if _budget is None:
        from ._hdf5 import available_memory

        have = available_memory()
        budget = _Budget(max_bytes if have is None else min(max_bytes, have))
    else:
        budget = _budget
    if _depth > MAX_DEPTH:
        raise StateError(f"{where}: state groups nested deeper than {MAX_DEPTH}")
    out = _json_attr(group, where)
    for k in group:
        link = group.get(k, getlink=True)
        if not isinstance(link, h5py.HardLink):
            raise StateError(f"{where}: {group.name}/{k} is a {type(link).__name__}; only objects stored in the "
                             "file are read")
        if not NAME.match(k) or k in out:
            raise StateError(f"{where}: unexpected entry {group.name}/{k}")
        obj = group[k]
        if isinstance(obj, h5py.Dataset):
            out[k] = _dataset(obj, where, budget)
        elif isinstance(obj, h5py.Group):
            out[k] = read(obj, where=where, _budget=budget, _depth=_depth + 1)
        else:  # pragma: no cover - committed datatypes
            raise StateError(f"{where}: {obj.name!r} is neither a group nor a dataset")
    return out


def load(path, *, max_bytes: int = MAX_BYTES) -> dict:
    """The state saved by :func:`save` at ``path``."""
    from . import _hdf5

    path = os.fspath(path)
    try:
        f = _hdf5.open_file(path)      # a regular file whose structure reads within seconds
    except _hdf5.UnsafeFile as exc:
        raise StateError(str(exc)) from None
    except Exception as exc:
        raise StateError(f"{path}: not a readable HDF5 file ({exc})") from None
    with f:
        if f.attrs.get("format") not in ("noisesim-state", b"noisesim-state"):
            raise StateError(f"{path}: not a noisesim state file (no format='noisesim-state' attribute)")
        try:
            return read(f, where=path, max_bytes=max_bytes)
        except StateError:
            raise
        except Exception as exc:  # anything h5py raises on a damaged file
            raise StateError(f"{path}: damaged state file ({type(exc).__name__}: {exc})") from None


def differences(a, b, *, skip: tuple = ()) -> dict:
    """``{path: max |a − b|}`` over the arrays of two states, ``inf`` where shapes, dtypes or
    presence differ, and ``nan`` where a JSON value differs; ``{}`` when they are equal.
    Top-level keys in ``skip`` are left out (e.g. ``("streams",)``)."""
    out = {}

    def walk(x, y, path):
        if isinstance(x, dict) and isinstance(y, dict):
            for k in sorted(set(x) | set(y)):
                if not path and k in skip:
                    continue
                if k not in x or k not in y:
                    out[f"{path}{k}"] = float("inf")
                else:
                    walk(x[k], y[k], f"{path}{k}/")
            return
        p = path.rstrip("/")
        if _is_array(x) or _is_array(y):
            if not (_is_array(x) and _is_array(y)) or x.shape != y.shape or x.dtype != y.dtype:
                out[p] = float("inf")
            elif not np.array_equal(x, y, equal_nan=x.dtype.kind == "f"):
                d = np.abs(x.astype(np.float64) - y.astype(np.float64))
                out[p] = float(np.nanmax(d)) if d.size else 0.0
                out[p] = out[p] if out[p] > 0 else float("nan")  # differ only in NaN positions
        elif x != y and not (isinstance(x, float) and isinstance(y, float) and x != x and y != y):
            out[p] = float("nan")

    walk(a, b, "")
    return out
