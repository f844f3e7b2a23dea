"""Layer specifications and their crossbar mapping: dense and convolutional (1-D and 2-D) layers.

A convolution is mapped on a crossbar the standard way (im2col): its kernel, reshaped to the
matrix ``W`` of shape ``C_out × (k·C_in)``, is programmed on the tiles, and the layer reads the
tiles once per output position with that position's patch vector ``p`` (the ``k`` input
pixels under the kernel, all channels)::

    a[b, i, :] = W p[b, i],      p[b, i] = x[b, s·i − pad : s·i − pad + k, :].ravel()

so every non-ideality of the device (converters, read/node/output noise, tiling, programming,
drift, faults, the update models) applies to a conv layer as to a dense one, and each
position's read draws its own noise. Arrays are channels-last: a 2-D layer's input is
``(B, H, W, C)``, its patch vectors are ``(B, H_out, W_out, kh·kw·C)`` with the channel
index running fastest (then ``kw``, then ``kh``), its output ``(B, H_out, W_out, C_out)``.
A dense layer after a convolution flattens its input (row-major, channels fastest).

Specifications: :class:`Dense`, :class:`Conv`, or a string of tokens separated by spaces or
commas, as Table 1 of the node-perturbation paper writes them — ``c3x3x16s2`` is a 3×3
convolution with 16 output channels and stride 2 (``p1`` adds padding 1), ``c5x16`` a 1-D
kernel of 5 (square on 2-D inputs), ``f1024`` a dense layer of 1024 units, ``flat`` an
explicit flatten (what a dense layer does to a spatial input anyway; ``flat3600`` also checks
that the flattened width is 3600 — a model ported from code that writes ``Linear(3600, …)``
after its flatten fails when built if the shapes say otherwise)::

    Network.build((32, 32, 3), "c3x3x16s2 c3x3x32s2 c3x3x64 f1024 f10")     # the paper's ConvNet

:func:`build` checks that every layer fits its input when the network is built and names the
layer and the shapes when one does not.
"""
from __future__ import annotations

import itertools
import math
import re
from dataclasses import dataclass
from typing import Sequence, Union

import numpy as np

from . import _kernels
from .backend import get_array_module


@dataclass(frozen=True)
class Dense:
    """A fully connected layer of ``units`` outputs (flattens a spatial input)."""

    units: int

    def spec(self) -> str:
        return f"f{self.units}"


@dataclass(frozen=True)
class Conv:
    """A convolution with ``channels`` outputs.

    ``kernel``, ``stride``, ``padding``: an int (the same along every spatial axis) or one
    value per spatial axis; the number of spatial axes (1 or 2) comes from the layer's input.
    Zero padding on both sides; no dilation, no groups.
    """

    channels: int
    kernel: Union[int, tuple] = 3
    stride: Union[int, tuple] = 1
    padding: Union[int, tuple] = 0

    def spec(self) -> str:
        k = "x".join(map(str, _tuple(self.kernel)))
        same = lambda v: str(v[0]) if len(set(v)) == 1 else "x".join(map(str, v))
        s, p = same(_tuple(self.stride)), same(_tuple(self.padding))
        return f"c{k}x{self.channels}" + (f"s{s}" if s != "1" else "") + (f"p{p}" if p != "0" else "")


@dataclass(frozen=True)
class Flatten:
    """An explicit flatten of a spatial input (row-major, channels fastest): no crossbar, no
    weights, nothing a dense layer would not do anyway. ``width``: the flattened width the
    next layer expects (checked when the network is built), or ``None``."""

    width: Union[int, None] = None

    def spec(self) -> str:
        return "flat" if self.width is None else f"flat{self.width}"


def dense(units: int) -> Dense:
    """A :class:`Dense` layer."""
    return Dense(units)


def conv(channels: int, kernel=3, stride=1, padding=0) -> Conv:
    """A :class:`Conv` layer."""
    return Conv(channels, kernel, stride, padding)


Spec = Union[Dense, Conv, Flatten]

_TOKEN = re.compile(r"^(?:(?P<flat>flat(?:ten)?)(?P<width>\d+)?|(?P<f>f|fc)(?P<units>\d+)|c(?P<dims>\d+(?:x\d+)*)(?:s(?P<s>\d+(?:x\d+)?))?(?:p(?P<p>\d+(?:x\d+)?))?)$")


def parse(text: str) -> list:
    """Layer specifications from a string such as ``"c3x3x16s2 c3x3x32s2 c3x3x64 f1024 f10"``."""
    if not isinstance(text, str):
        raise TypeError(f"layers must be a string or a list of layer specifications, got {type(text).__name__}")
    out = []
    for tok in filter(None, re.split(r"[\s,]+", text.strip())):
        m = _TOKEN.match(tok.lower())
        if m is None:
            raise ValueError(f"layer {len(out)}: {tok!r} is not a layer; write fN (dense, N units), "
                             "cKxC[sS][pP] / cKxKxC[sS][pP] (convolution: kernel, channels, stride, padding) "
                             "or flat[N] (flatten, checking the width N)")
        if m["flat"]:
            out.append(Flatten(None if m["width"] is None else int(m["width"])))
            continue
        if m["f"]:
            out.append(Dense(int(m["units"])))
            continue
        dims = [int(d) for d in m["dims"].split("x")]
        if len(dims) < 2 or len(dims) > 3:
            raise ValueError(f"layer {len(out)}: {tok!r} needs a kernel and a channel count (c5x16, c3x3x16)")
        per = lambda v, d: d if v is None else tuple(int(a) for a in v.split("x")) if "x" in v else int(v)
        out.append(Conv(dims[-1], tuple(dims[:-1]) if len(dims) == 3 else dims[0], per(m["s"], 1), per(m["p"], 0)))
    if not out:
        raise ValueError("layers is empty; give at least one layer")
    return out


def _tuple(v) -> tuple:
    return tuple(int(a) for a in v) if isinstance(v, (tuple, list)) else (int(v),)


def _positive(v) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v >= 1


@dataclass(frozen=True)
class Layer:
    """A layer built against its input shape: what it reads from, what it programs, what it gives.

    ``in_shape``: one sample's input (spatial axes then channels, or ``(n,)``); ``positions``:
    the output's spatial shape (``()`` for a dense layer: one read per sample); ``width``: the
    tile inputs per read (the patch length ``k·C_in``, or the flattened input); ``n_in``:
    ``width`` plus the bias row when there is one; ``n_out``: the tile outputs (channels or
    units); ``out_shape = positions + (n_out,)``.
    """

    index: int
    kind: str
    in_shape: tuple
    positions: tuple
    width: int
    n_out: int
    bias: bool = False
    kernel: tuple = ()
    stride: tuple = ()
    padding: tuple = ()

    @property
    def out_shape(self) -> tuple:
        return self.positions + (self.n_out,)

    @property
    def n_in(self) -> int:
        return self.width + int(self.bias)

    @property
    def reads(self) -> int:
        """Tile reads per sample (output positions)."""
        return math.prod(self.positions)

    @property
    def units(self) -> int:
        """Outputs per sample (positions × channels)."""
        return self.reads * self.n_out

    def spec(self) -> str:
        if self.kind == "dense":
            return f"f{self.n_out}"
        return Conv(self.n_out, self.kernel, self.stride, self.padding).spec()

    def describe(self) -> str:
        return f"layer {self.index} ({self.spec()})"

    # -- im2col and its adjoint ------------------------------------------------------------------
    def unfold(self, h):
        """The read vectors of a batch ``h`` of inputs, ``(N, *positions, width)``.

        Dense: ``h`` flattened per sample. Conv: the patch vectors (im2col), one copy of a
        strided view of the (padded) input. (A Numba loop measured no faster than NumPy's
        strided copy, and slower on the wider patches.)
        """
        N = h.shape[0]
        if self.kind == "dense":
            return h.reshape(N, self.width)
        xp = get_array_module(h)
        h = h.reshape(N, *self.in_shape)
        if any(self.padding):
            pad = [(0, 0)] + [(p, p) for p in self.padding] + [(0, 0)]
            h = xp.pad(h, pad)
        else:
            h = xp.ascontiguousarray(h)
        d = len(self.kernel)
        st = h.strides
        shape = (N, *self.positions, *self.kernel, h.shape[-1])
        strides = (st[0], *(st[1 + i] * self.stride[i] for i in range(d)), *st[1:1 + d], st[-1])
        windows = xp.lib.stride_tricks.as_strided(h, shape=shape, strides=strides)
        return xp.ascontiguousarray(windows).reshape(N, *self.positions, self.width)

    def fold(self, d):
        """The adjoint of :meth:`unfold` (col2im): ``(N, *positions, width)`` → ``(N, *in_shape)``.

        Each input pixel receives the sum of the entries of every patch it appears in: the
        gradient with respect to the layer input from the gradient with respect to its patches.
        One pass of a Numba kernel on NumPy arrays (:func:`noisesim._kernels.col2im`),
        :meth:`fold_plain` on others; the sums run in the same order, so both give the same
        numbers bit for bit.
        """
        N = d.shape[0]
        if self.kind == "dense":
            return d.reshape(N, *self.in_shape)
        if _kernels._path(d) == "numpy":
            return _kernels.col2im(d.reshape(N, *self.positions, self.width), self.in_shape[:-1], self.kernel,
                                   self.stride, self.padding)
        return self.fold_plain(d)

    def fold_plain(self, d):
        """:meth:`fold` in array operations of ``d``'s module (NumPy or CuPy): one strided
        addition per kernel offset into a padded buffer, then the padding cut off."""
        N = d.shape[0]
        if self.kind == "dense":
            return d.reshape(N, *self.in_shape)
        xp = get_array_module(d)
        C = self.in_shape[-1]
        padded = tuple(n + 2 * p for n, p in zip(self.in_shape[:-1], self.padding))
        out = xp.zeros((N, *padded, C), dtype=d.dtype)
        d = d.reshape(N, *self.positions, *self.kernel, C)
        nd = len(self.kernel)
        for offs in itertools.product(*(range(k) for k in self.kernel)):
            dst = (slice(None),) + tuple(slice(o, o + s * (n - 1) + 1, s)
                                         for o, s, n in zip(offs, self.stride, self.positions)) + (slice(None),)
            out[dst] += d[(slice(None),) * (1 + nd) + offs + (slice(None),)]
        if any(self.padding):
            out = out[(slice(None),) + tuple(slice(p, p + n) for p, n in zip(self.padding, self.in_shape[:-1]))]
        return out

    def to_config(self) -> str:
        return self.spec()


def build(input_shape: Sequence[int], specs, *, bias: bool = False) -> list:
    """Layers built one after another from the network's per-sample ``input_shape``.

    ``input_shape``: ``(n,)`` for vectors, ``(L, C)`` for 1-D and ``(H, W, C)`` for 2-D
    convolutions (channels last). ``specs``: a string (see :func:`parse`) or a list of
    :class:`Dense`/:class:`Conv`/:class:`Flatten`. Raises ``ValueError`` naming the layer and the
    shapes when a layer does not fit its input: a kernel larger than the (padded) input, a
    convolution after a dense layer or a flatten, a flatten to another width than its input's,
    a flatten with no layer after it, a non-positive size. A flatten builds no layer (the layers
    are numbered as the network's, and are those built without it).
    """
    if isinstance(specs, str):
        specs = parse(specs)
    specs = list(specs)
    if not specs:
        raise ValueError("layers is empty; give at least one layer")
    shape = tuple(input_shape) if isinstance(input_shape, (tuple, list)) else (input_shape,)
    if not shape or not all(_positive(s) for s in shape):
        raise ValueError(f"input_shape={tuple(input_shape) if isinstance(input_shape, (tuple, list)) else input_shape!r} "
                         "must be positive sizes: (n,), (length, channels) or (height, width, channels)")
    if len(shape) > 3:
        raise ValueError(f"input_shape={shape} has {len(shape) - 1} spatial axes; 1-D and 2-D inputs are supported")
    out, flattened = [], False
    for j, s in enumerate(specs):
        i = len(out)                       # the network's layer index (a flatten is no layer)
        where = f"layer {i} ({s.spec() if hasattr(s, 'spec') else s!r})"
        if isinstance(s, Flatten):
            where = f"the flatten ({s.spec()}) before layer {i}"
            width = math.prod(shape)
            if s.width is not None and (not _positive(s.width) or s.width != width):
                raise ValueError(f"{where}: its input of shape {shape} flattens to width {width}, not {s.width!r}")
            if j == len(specs) - 1:
                raise ValueError(f"{where}: no layer follows it (the network's output is its last layer's)")
            flattened = True       # the next layer sees the same input: a dense layer flattens it
            continue
        if isinstance(s, Dense):
            if not _positive(s.units):
                raise ValueError(f"{where}: units={s.units!r} must be a positive integer")
            layer = Layer(i, "dense", shape, (), math.prod(shape), int(s.units), bias)
        elif isinstance(s, Conv):
            nd = len(shape) - 1
            if flattened and nd >= 1:
                raise ValueError(f"{where}: a convolution after a flatten (its input of shape {shape} was "
                                 "flattened); put convolutions before the flatten")
            if nd < 1:
                raise ValueError(f"{where}: a convolution needs a spatial input, but its input has shape {shape} "
                                 "(a dense layer flattens; put convolutions first, or give input_shape with "
                                 "spatial axes and channels)")
            if not _positive(s.channels):
                raise ValueError(f"{where}: channels={s.channels!r} must be a positive integer")
            k, st, p = (_expand(v, nd, name, where) for v, name in ((s.kernel, "kernel"), (s.stride, "stride"),
                                                                      (s.padding, "padding")))
            if not all(v >= 1 for v in k + st) or not all(v >= 0 for v in p):
                raise ValueError(f"{where}: kernel {k} and stride {st} must be ≥ 1 and padding {p} ≥ 0")
            spatial = shape[:-1]
            if any(kk > n + 2 * pp for kk, n, pp in zip(k, spatial, p)):
                raise ValueError(f"{where}: kernel {k} is larger than its input {spatial} (padding {p}); "
                                 f"input shape {shape}")
            pos = tuple((n + 2 * pp - kk) // ss + 1 for n, kk, ss, pp in zip(spatial, k, st, p))
            layer = Layer(i, "conv", shape, pos, math.prod(k) * shape[-1], int(s.channels), bias, k, st, p)
        else:
            raise TypeError(f"layer {i}: {s!r} is not a layer specification (Dense, Conv, Flatten or a string token)")
        out.append(layer)
        shape = layer.out_shape
    return out


def _expand(v, nd: int, name: str, where: str) -> tuple:
    t = _tuple(v)
    if not all(isinstance(a, int) for a in t):
        raise ValueError(f"{where}: {name}={v!r} must be integers")
    if len(t) == 1:
        return t * nd
    if len(t) != nd:
        raise ValueError(f"{where}: {name}={v!r} has {len(t)} values for {nd} spatial axes")
    return t


def dense_layers(sizes: Sequence[int], bias: bool = False) -> list:
    """The layers of a fully connected network ``sizes[0] → … → sizes[-1]``."""
    return build((int(sizes[0]),), [Dense(int(n)) for n in sizes[1:]], bias=bias)


def is_dense(layers) -> bool:
    return all(l.kind == "dense" for l in layers)


# -- helpers the rules use on arrays laid out (…, B, *positions, width) ---------------------------
def rows(a):
    """A per-layer array ``(…, width)`` as a matrix of reads ``(rows, width)``."""
    return a.reshape(-1, a.shape[-1])


def per_sample(c, a):
    """Per-sample numbers ``c`` (shape of ``a``'s leading axes) broadcast over ``a``'s remaining axes."""
    return c.reshape(c.shape + (1,) * (a.ndim - c.ndim))


def sample_sum(a, lead: int = 2):
    """``a`` summed over every axis after the first ``lead`` (per sample, over positions and units)."""
    return a.reshape(a.shape[:lead] + (-1,)).sum(axis=-1)


def unit_count(a, lead: int = 2) -> int:
    """Units per sample of an array ``(*lead axes, *positions, width)``."""
    return math.prod(a.shape[lead:])
