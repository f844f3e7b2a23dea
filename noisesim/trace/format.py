"""The on-disk format of a noisesim trace (HDF5), and the one error every reader raises.

Layout of format version 1 (``S`` = rows allocated, ``n = attrs["complete_steps"] ≤ S``)::

    /                        attrs: format="noisesim-trace", format_version=1, noisesim_version,
                                    created (ISO UTC), config (JSON), layout (JSON),
                                    storage_dtype, lossy (0/1), compression,
                                    complete_steps (rewritten and flushed after every step),
                                    closed (0/1, set by a clean close)
    /initial_state/W0 …      exact weights (and R_l) before the first recorded step; each
                             dataset has a crc32 attribute of its bytes
    /final_state/W0 …        exact weights after the last step (written by a clean close)
    config_crc32, layout_crc32   root attributes: crc32 of the JSON strings
    /steps/values  (S, V)    every floating array the step consumed, flattened and concatenated
                             in ``layout`` order (storage dtype; float16 when lossy)
    /steps/ints    (S, I)    the same for integer arrays (only when a rule records some)
    /steps/indices (S, Bmax) int64 batch indices, padded with -1
    /steps/scalars (S, 2)    float64: batch loss of the reference pass, device time (NaN: none)
    /steps/meta    (S, M)    int64: step, batch_size, forward_passes, crc32, then the actual
                             shape of every array (``layout["meta_columns"]`` names them)

Every array has a fixed *region* of its row (its capacity, the shape at the first step); a
smaller step (the last batch of an epoch) fills a prefix of the flattened region and its real
shape is in ``meta``. One row — and one chunk — per dataset per step keeps a traced step at a
handful of HDF5 writes, and a flush never rewrites earlier steps. With gzip the writer
process deflates rows itself and writes the filtered chunks directly (``write_direct_chunk``);
the file is the same as HDF5's own gzip+shuffle, except that a step written while the writer
was behind may be stored unfiltered (the chunk's filter mask says so; HDF5 reads it as is).
The crc32 covers the full stored rows of ``values``/``ints``/``indices``/``scalars`` and
the meta row up to the checksum column — exactly the bytes a reader gets back.

"""
from __future__ import annotations

import json
import math
import zlib

import numpy as np

FORMAT_NAME = "noisesim-trace"
FORMAT_VERSION = 1
SUPPORTED_VERSIONS = (1,)
META_FIXED = ("step", "batch_size", "forward_passes", "crc32")
CRC_COLUMN = META_FIXED.index("crc32")
STORAGE_DTYPES = ("float16", "float32", "float64")
COMPRESSIONS = (None, "gzip", "lzf")
# A reader refuses files whose declared per-step row is larger than this (untrusted input).
MAX_ROW_BYTES = 1 << 28
MAX_NDIM = 8


class TraceError(ValueError):
    """A trace file cannot be written or read as asked; the message names the file and the problem."""


class TraceWarning(UserWarning):
    """Something about a trace that makes a result approximate (e.g. float16 storage)."""


def step_checksum(values_row, ints_row, indices_row, scalars, meta_head) -> int:
    """crc32 over the stored bytes of one step (see the module docstring)."""
    c = zlib.crc32(np.ascontiguousarray(values_row).view(np.uint8))
    if ints_row is not None:
        c = zlib.crc32(np.ascontiguousarray(ints_row).view(np.uint8), c)
    c = zlib.crc32(np.ascontiguousarray(indices_row, dtype=np.int64).view(np.uint8), c)
    c = zlib.crc32(np.ascontiguousarray(scalars, dtype=np.float64).view(np.uint8), c)
    c = zlib.crc32(np.ascontiguousarray(meta_head, dtype=np.int64).view(np.uint8), c)
    return int(c)


def entry_name(key: str, layer) -> str:
    return key if layer is None else f"{key}/{layer}"


def validate_layout(layout, where: str) -> dict:
    """Check a decoded ``layout`` attribute: every field typed, bounded and self-consistent."""
    def bad(msg):
        raise TraceError(f"{where}: invalid layout attribute: {msg}")

    if not isinstance(layout, dict):
        bad("not a JSON object")
    for k in ("entries", "values_width", "ints_width", "max_batch", "meta_columns"):
        if k not in layout:
            bad(f"missing {k!r}")
    for k in ("values_width", "ints_width", "max_batch"):
        v = layout[k]
        if not isinstance(v, int) or isinstance(v, bool) or v < 0:
            bad(f"{k}={v!r} is not a non-negative integer")
    entries = layout["entries"]
    if not isinstance(entries, list) or not entries:
        bad("'entries' is not a non-empty list")
    offsets = {"float": 0, "int": 0}
    ncol = len(META_FIXED)
    seen = set()
    for e in entries:
        if not isinstance(e, dict):
            bad("an entry is not an object")
        name, key, layer, kind = e.get("name"), e.get("key"), e.get("layer"), e.get("kind")
        shape, off, dtype = e.get("shape"), e.get("offset"), e.get("dtype")
        if not isinstance(name, str) or not isinstance(key, str) or name in seen:
            bad(f"entry name {name!r} is missing, not a string or repeated")
        seen.add(name)
        if layer is not None and (not isinstance(layer, int) or isinstance(layer, bool) or layer < 0):
            bad(f"entry {name!r}: layer={layer!r}")
        if kind not in ("float", "int"):
            bad(f"entry {name!r}: kind={kind!r}")
        if dtype not in ("float16", "float32", "float64", "int64"):
            bad(f"entry {name!r}: dtype={dtype!r}")
        if (not isinstance(shape, list) or len(shape) > MAX_NDIM
                or any(not isinstance(d, int) or isinstance(d, bool) or d < 0 for d in shape)):
            bad(f"entry {name!r}: shape={shape!r}")
        alias = e.get("alias")
        if alias not in (None, "xstar"):
            bad(f"entry {name!r}: alias={alias!r}")
        if alias is None:
            if off != offsets[kind]:
                bad(f"entry {name!r}: offset={off!r}, expected {offsets[kind]}")
            offsets[kind] += math.prod(shape)
        elif off is not None or layer is None:
            bad(f"entry {name!r}: an alias of x* needs a layer and no offset")
        ncol += len(shape)
    if offsets["float"] != layout["values_width"] or offsets["int"] != layout["ints_width"]:
        bad(f"region sizes {offsets} do not add up to values_width={layout['values_width']}, "
            f"ints_width={layout['ints_width']}")
    cols = layout["meta_columns"]
    if not isinstance(cols, list) or len(cols) != ncol or list(cols[:len(META_FIXED)]) != list(META_FIXED):
        bad(f"meta_columns does not match the entries ({ncol} columns expected)")
    return layout


def decode_json_attr(attrs, name: str, where: str):
    """Parse a JSON root attribute after checking it against its ``<name>_crc32`` attribute."""
    try:
        raw = attrs[name]
    except Exception:
        raise TraceError(f"{where}: missing root attribute {name!r}") from None
    if isinstance(raw, bytes):
        raw = raw.decode("utf-8", "replace")
    if not isinstance(raw, str):
        raise TraceError(f"{where}: root attribute {name!r} is not a string")
    crc = attrs.get(f"{name}_crc32")
    if not isinstance(crc, (int, np.integer)) or isinstance(crc, (bool, np.bool_)) \
            or int(crc) != zlib.crc32(raw.encode("utf-8", "surrogatepass")):
        raise TraceError(f"{where}: root attribute {name!r} does not match its checksum {name}_crc32; "
                         "the file is corrupted or was edited")
    try:
        return json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise TraceError(f"{where}: root attribute {name!r} is not valid JSON ({exc})") from None
