"""The on-disk format of a noisesim trace (HDF5), and the one error every reader raises.

Format version 2 — one named, chunked dataset per recorded array, the step as its first axis
(the schema for users, with a plain-h5py example, is ``docs/trace-format.md``). ``S`` rows
are allocated, ``n = attrs["complete_steps"] ≤ S`` of them are whole steps::

    /                         attrs: format="noisesim-trace", format_version=2,
                                     noisesim_version, created (ISO UTC), config (JSON),
                                     schema (JSON), storage_dtype, lossy (0/1), compression,
                                     complete_steps (rewritten and flushed after every step),
                                     closed (0/1), status, error; config_crc32, schema_crc32
    /initial_state/network/…  the complete network state before the first recorded step
    /initial_state/rule/…     the rule's state then (noisesim.state layout: groups,
                              arrays with a crc32 attribute, JSON attributes)
    /final_state/…            the same after the last step (written by a clean close)
    /steps/<key>              a record entry (e.g. dL)                 (S, *capacity)
    /steps/<key>/<layer>      a per-layer record entry (da/0, inputs/0 …)
    /steps/xstar/<layer>      the reference input x* when it is not a record entry
    /steps/losses             per-sample losses of the reference pass  (S, B)
    /steps/indices            batch indices, padded with -1            (S, B) int64
    /steps/step, batch_size, forward_passes                             (S,) int64
    /steps/loss, time         batch loss; device time (NaN: none)       (S,) float64
    /steps/shapes             the actual shape of each array per step   (S, C) int32
    /steps/checksum           crc32 of the step (see :func:`step_checksum`) (S,) uint32

Every array dataset has a fixed per-step *capacity* (its shape at the first step) and one
chunk per step; a smaller step (the last batch of an epoch) fills the leading corner
``[:d0, :d1, …]`` and zeros the rest, its real shape in ``steps/shapes`` (columns named by
the dataset's ``shape_columns`` attribute and the schema). Floating arrays are stored in
their own dtype, or float16 when ``lossy``.

The ``schema`` attribute lists the arrays in checksum order::

    {"arrays": [{"name": "da/0", "role": "record", "key": "da", "layer": 0, "kind": "float",
                 "dtype": "float32", "stored": "float32", "shape": [1, 32, 256],
                 "columns": [2, 5], "alias": null}, …],
     "max_batch": 32, "columns": 11}

``role`` is ``record`` (an entry of the rule's ``Estimate.record``), ``xstar`` (its input
``x*``) or ``losses``. An ``xstar`` entry with ``alias = {"of": "inputs/0", "first": true}``
has no dataset: it is ``inputs/0`` (its first slice along the first axis when ``first``).
"""
from __future__ import annotations

import json
import math
import re
import zlib

import numpy as np

FORMAT_NAME = "noisesim-trace"
FORMAT_VERSION = 2
SUPPORTED_VERSIONS = (2,)
STORAGE_DTYPES = ("float16", "float32", "float64")
COMPRESSIONS = (None, "gzip", "lzf")
# A reader refuses files whose declared per-step arrays are larger than this (untrusted input).
MAX_STEP_BYTES = 1 << 28
MAX_NDIM = 8
MAX_ARRAYS = 4096
# config bounds (untrusted input): layers, the widest layer, all weights together
MAX_LAYERS = 1000
MAX_WIDTH = 1 << 24
MAX_WEIGHTS = 1 << 32
# per-step datasets that are not record entries, in checksum order after the arrays
META = (("indices", "int64"), ("step", "int64"), ("batch_size", "int64"), ("forward_passes", "int64"),
        ("loss", "float64"), ("time", "float64"), ("shapes", "int32"))
RESERVED = frozenset(name for name, _ in META) | {"checksum", "losses", "xstar"}
KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
FLOATS = ("float16", "float32", "float64")
# the root attribute ``status``: "recording" until the writer ends; then "complete" (a clean
# close, final state stored), "interrupted" (the run stopped early: Ctrl-C, an error, the
# training process died) or "failed" (a write error; ``error`` says which)
STATUSES = ("recording", "complete", "interrupted", "failed")
INTS = ("bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32")


class TraceError(ValueError):
    """A trace file cannot be written or read as asked; the message names the file and the problem."""


class TraceWriteError(TraceError):
    """Recording stopped: the file could not be written (a full disk, a file size limit, an I/O
    error, a writer process that died). ``path`` is the file, ``steps`` the whole steps it keeps
    (readable and replayable; ``None``: the file could not even be started and was removed),
    ``cause`` what went wrong, in words."""

    def __init__(self, path: str, cause: str, steps: int | None):
        self.path, self.cause, self.steps = path, cause, steps
        super().__init__(f"{path}: recording stopped: {cause}; " + (
            "no trace was written" if steps is None else f"the trace keeps its first {steps} steps"))


class TraceWarning(UserWarning):
    """Something about a trace that makes a result approximate (e.g. float16 storage)."""


def step_checksum(rows) -> int:
    """crc32 of one step: the stored bytes (little-endian) of every array dataset's row (its
    whole capacity) in schema order, then of ``indices``, ``step``, ``batch_size``,
    ``forward_passes``, ``loss``, ``time`` and ``shapes`` — exactly what a reader gets back."""
    c = 0
    for r in rows:
        c = zlib.crc32(np.ascontiguousarray(r).view(np.uint8).reshape(-1), c)
    return c


def validate_schema(schema, where: str) -> dict:
    """Check a decoded ``schema`` attribute: every field typed, bounded and self-consistent."""
    def bad(msg):
        raise TraceError(f"{where}: invalid schema attribute: {msg}")

    def count(v, what, lo=0):
        if not isinstance(v, int) or isinstance(v, bool) or v < lo:
            bad(f"{what}={v!r} is not an integer ≥ {lo}")
        return v

    if not isinstance(schema, dict):
        bad("not a JSON object")
    arrays = schema.get("arrays")
    if not isinstance(arrays, list) or not arrays or len(arrays) > MAX_ARRAYS:
        bad(f"'arrays' is not a list of 1 to {MAX_ARRAYS} entries")
    count(schema.get("max_batch"), "max_batch")
    ncol = count(schema.get("columns"), "columns")
    names, col = set(), 0
    for e in arrays:
        if not isinstance(e, dict):
            bad("an array entry is not an object")
        name, role, key, layer = e.get("name"), e.get("role"), e.get("key"), e.get("layer")
        if role not in ("record", "xstar", "losses"):
            bad(f"array {name!r}: role={role!r}")
        if not isinstance(key, str) or not KEY.match(key) or (role == "record" and key in RESERVED):
            bad(f"array {name!r}: key={key!r}")
        if layer is not None:
            count(layer, f"array {name!r}: layer")
        if name != (key if layer is None else f"{key}/{layer}") or name in names:
            bad(f"array name {name!r} is repeated or does not match its key and layer")
        if (role == "xstar") != (key == "xstar") or (role == "losses") != (key == "losses"):
            bad(f"array {name!r}: key {key!r} does not fit role {role!r}")
        names.add(name)
        kind, dtype, stored, shape = e.get("kind"), e.get("dtype"), e.get("stored"), e.get("shape")
        if kind == "float":
            if dtype not in FLOATS or stored not in (dtype, "float16"):
                bad(f"array {name!r}: dtype={dtype!r}, stored={stored!r}")
        elif kind == "int":
            if dtype not in INTS or stored != "int64":
                bad(f"array {name!r}: dtype={dtype!r}, stored={stored!r}")
        else:
            bad(f"array {name!r}: kind={kind!r}")
        if (not isinstance(shape, list) or len(shape) > MAX_NDIM
                or any(not isinstance(d, int) or isinstance(d, bool) or not 0 <= d < 1 << 31 for d in shape)):
            bad(f"array {name!r}: shape={shape!r}")
        cols = e.get("columns")
        if cols != [col, col + len(shape)]:
            bad(f"array {name!r}: columns={cols!r}, expected {[col, col + len(shape)]}")
        col += len(shape)
        alias = e.get("alias")
        if alias is not None and (role != "xstar" or not isinstance(alias, dict) or set(alias) != {"of", "first"}
                                  or not isinstance(alias["first"], bool)):
            bad(f"array {name!r}: alias={alias!r}")
    if col != ncol:
        bad(f"columns={ncol} but the arrays use {col}")
    by_name = {e["name"]: e for e in arrays}
    for e in arrays:   # every entry is well formed now: check what the aliases point at
        alias = e["alias"]
        if alias is None:
            continue
        src = by_name.get(alias["of"])
        if src is None or src["alias"] is not None or src["role"] != "record" or src["kind"] != "float" \
                or src["dtype"] != e["dtype"] or (alias["first"] and not src["shape"]):
            bad(f"array {e['name']!r}: alias of {alias['of']!r}, which is not a stored floating record array "
                "of its dtype")
        want = src["shape"][1:] if alias["first"] else src["shape"]
        if math.prod(e["shape"]) != math.prod(want):
            bad(f"array {e['name']!r}: shape {e['shape']} does not fit its alias of {alias['of']!r} {src['shape']}")
    return schema


def validate_config(c, where: str) -> dict:
    """Check a decoded ``config`` attribute field by field (types and ranges) before any use;
    raises :class:`TraceError` naming the first bad field."""
    def bad(field, v, want):
        raise TraceError(f"{where}: config {field}={_short(v)} is not {want}")

    def opt(d, key, types, want, field):
        v = d.get(key)
        types = types if isinstance(types, tuple) else (types,)
        if v is not None and (not isinstance(v, types) or isinstance(v, bool) and bool not in types):
            bad(field, v, want)
        return v

    if not isinstance(c, dict):
        bad("(the whole config)", c, "a JSON object")
    net = c.get("network")
    if not isinstance(net, dict):
        bad("network", net, "an object")
    sizes = net.get("sizes")
    if (not isinstance(sizes, list) or not 2 <= len(sizes) <= MAX_LAYERS + 1
            or any(not isinstance(s, int) or isinstance(s, bool) or not 0 < s <= MAX_WIDTH for s in sizes)):
        bad("network.sizes", sizes, f"a list of 2 to {MAX_LAYERS + 1} layer widths from 1 to {MAX_WIDTH}")
    shapes = tile_shapes(net, bad)
    weights = sum(a * b for a, b in shapes)
    if weights > MAX_WEIGHTS:
        bad("network.sizes", sizes, f"a network of at most {MAX_WEIGHTS} weights (it has {weights})")
    for key in ("activation", "output_activation", "backend", "class"):
        opt(net, key, str, "a string", f"network.{key}")
    opt(net, "slope", (int, float), "a number", "network.slope")
    opt(net, "seed", int, "an integer", "network.seed")
    opt(net, "decorrelated", bool, "true or false", "network.decorrelated")
    if c.get("dtype") not in ("float32", "float64"):
        bad("dtype", c.get("dtype"), "'float32' or 'float64'")
    opt(c, "backend", str, "a string", "backend")
    for key in ("device", "rule", "seeds", "run"):
        opt(c, key, dict, "an object", key)
    rule = c.get("rule")
    if rule is not None and not isinstance(rule.get("rule"), str):
        bad("rule.rule", rule.get("rule"), "the rule's name (a string)")
    seeds = c.get("seeds") or {}
    opt(seeds, "network", int, "an integer", "seeds.network")
    return c


MAX_LAYERS_TEXT = 10_000


def tile_shapes(net: dict, bad=None) -> list:
    """Per layer the ``(n_out, n_in)`` of its tile, from a recorded network config: its
    ``layers``, ``input_shape`` and ``bias`` when it has them (convolutions, biases), else its
    fully connected ``sizes``. Checked against ``sizes``; ``bad(field, value, want)`` raises."""
    if bad is None:
        def bad(field, value, want):
            raise TraceError(f"config {field}={_short(value)}: expected {want}")
    sizes = net.get("sizes")
    if "layers" not in net:
        return [(b, a) for a, b in zip(sizes, sizes[1:])]
    from .. import layers as layers_mod
    text, shape, bias = net.get("layers"), net.get("input_shape"), net.get("bias", False)
    if not isinstance(text, str) or len(text) > MAX_LAYERS_TEXT:
        bad("network.layers", text, f"a layer string of at most {MAX_LAYERS_TEXT} characters")
    if (not isinstance(shape, list) or not 1 <= len(shape) <= 3
            or any(not isinstance(s, int) or isinstance(s, bool) or not 0 < s <= MAX_WIDTH for s in shape)):
        bad("network.input_shape", shape, f"a list of 1 to 3 sizes from 1 to {MAX_WIDTH}")
    if not isinstance(bias, bool):
        bad("network.bias", bias, "true or false")
    try:
        built = layers_mod.build(tuple(shape), text, bias=bias)
    except (ValueError, TypeError) as exc:
        bad("network.layers", text, f"layers that fit input_shape {shape} ({exc})")
    units = [math.prod(shape)] + [lay.units for lay in built]
    if units != sizes:
        bad("network.sizes", sizes, f"the units of its layers, {units}")
    return [(lay.n_out, lay.n_in) for lay in built]


def _short(v) -> str:
    r = repr(v)
    return r if len(r) <= 80 else r[:77] + "..."


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
