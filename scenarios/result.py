"""What a scenario returns: named tables, named arrays, figures and checked claims.

One contract for every experiment, learning curves or not. A scenario builds a
:class:`Result`; :mod:`scenarios.output` writes it (``results.h5``, ``summary.json``, one
PNG per figure) and prints its main table. Nothing here touches files or matplotlib.

>>> r = Result(main="runs")
>>> t = r.table("runs", ["rule", "test_acc"])
>>> t.add(rule="BP", test_acc=0.97)
>>> r.tables["runs"].column("test_acc")
[0.97]
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

# line styles by the role of a curve; colours are assigned per ``group`` (the rule) by the writer
ROLES = {"test": "-", "train": "--", "other": ":"}


@dataclass
class Table:
    """Rows of metrics with a fixed column order (numbers, strings, booleans or ``None``)."""

    columns: list[str]
    rows: list[dict] = field(default_factory=list)

    def add(self, **row) -> dict:
        """Append a row; keys must be columns (missing ones are ``None``)."""
        unknown = set(row) - set(self.columns)
        if unknown:
            raise ValueError(f"row has columns {sorted(unknown)} that the table does not: {self.columns}")
        full = {c: _plain(row.get(c)) for c in self.columns}
        self.rows.append(full)
        return full

    def column(self, name: str) -> list:
        return [r[name] for r in self.rows]

    def where(self, **match) -> list[dict]:
        """Rows whose values equal every ``key=value`` given."""
        return [r for r in self.rows if all(r.get(k) == v for k, v in match.items())]

    def cells(self, digits: int = 3) -> list[list[str]]:
        """Every row's values as display strings (numbers to ``digits`` significant places)."""
        return [[format_cell(r[c], digits) for c in self.columns] for r in self.rows]

    def format(self, digits: int = 3) -> str:
        """A plain-text table (the one printed at the end of a run)."""
        body = self.cells(digits)
        head = [c.replace("_", " ") for c in self.columns]
        widths = [max([len(head[i])] + [len(b[i]) for b in body]) for i in range(len(head))]
        numeric = [all(isinstance(r[c], (int, float)) or r[c] is None for r in self.rows) for c in self.columns]

        def line(vals):
            return "  ".join(v.rjust(w) if num else v.ljust(w) for v, w, num in zip(vals, widths, numeric)).rstrip()
        return "\n".join([line(head), "  ".join("-" * w for w in widths)] + [line(b) for b in body])


def format_cell(v, digits: int = 3) -> str:
    """One table value for display: ``-`` for none, yes/no, thousands separators, 3 decimals."""
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        a = abs(v)
        if a != 0 and (a < 10 ** -digits or a >= 1e5):
            return f"{v:.{digits - 1}e}"
        return f"{v:.{digits}f}" if a < 100 else f"{v:.1f}"
    return str(v)


@dataclass
class Array:
    """A named n-d array with named dimensions and (optional) coordinates per dimension."""

    values: np.ndarray
    dims: tuple[str, ...]
    coords: dict[str, Sequence] = field(default_factory=dict)
    attrs: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        self.values = np.asarray(self.values)
        self.dims = tuple(self.dims)
        if len(self.dims) != self.values.ndim:
            raise ValueError(f"array of shape {self.values.shape} given {len(self.dims)} dims {self.dims}")
        for d, c in self.coords.items():
            if d not in self.dims:
                raise ValueError(f"coordinate {d!r} is not one of the dims {self.dims}")
            if len(c) != self.values.shape[self.dims.index(d)]:
                raise ValueError(f"coordinate {d!r} has {len(c)} values for an axis of "
                                 f"{self.values.shape[self.dims.index(d)]}")


@dataclass
class Series:
    """One curve: ``y`` against ``x``, optionally with a shaded band ``[lo, hi]``.

    ``group`` picks the colour (the rule: one colour per rule across every panel); ``role``
    picks the line style (``test`` solid, ``train`` dashed, ``other`` dotted).
    """

    label: str
    x: Sequence[float]
    y: Sequence[float]
    lo: Sequence[float] | None = None
    hi: Sequence[float] | None = None
    group: str | None = None
    role: str = "test"
    marker: str | None = None

    def __post_init__(self):
        if self.role not in ROLES:
            raise ValueError(f"role={self.role!r}; allowed: {list(ROLES)}")
        if len(self.x) != len(self.y):
            raise ValueError(f"series {self.label!r}: {len(self.x)} x values for {len(self.y)} y values")


@dataclass
class Panel:
    """One set of axes: labelled, with a legend, optional reference lines."""

    title: str
    xlabel: str
    ylabel: str
    series: list[Series] = field(default_factory=list)
    xscale: str = "linear"
    yscale: str = "linear"
    vlines: list[tuple[float, str]] = field(default_factory=list)
    hlines: list[tuple[float, str]] = field(default_factory=list)

    def add(self, *args, **kw) -> Series:
        s = Series(*args, **kw)
        self.series.append(s)
        return s


@dataclass
class Figure:
    """Panels side by side (``columns`` per row); written as one PNG named after the figure."""

    title: str
    panels: list[Panel] = field(default_factory=list)
    columns: int = 3
    caption: str = ""

    def panel(self, *args, **kw) -> Panel:
        p = Panel(*args, **kw)
        self.panels.append(p)
        return p


@dataclass
class Claim:
    """A claim of the seeds checked by this run's own numbers.

    ``holds`` is the verdict (``None``: not evaluated, e.g. a rule it needs did not run);
    ``ours`` and ``paper`` are short human-readable numbers; ``values`` the raw numbers;
    ``note`` says why ours disagree, when they do.
    """

    key: str
    statement: str
    holds: bool | None
    ours: str
    paper: str = ""
    note: str = ""
    values: dict = field(default_factory=dict)

    @property
    def verdict(self) -> str:
        return {True: "holds", False: "does not hold", None: "not evaluated"}[self.holds]


@dataclass
class Result:
    """Everything a scenario produced. ``main`` names the table printed at the end."""

    main: str
    tables: dict[str, Table] = field(default_factory=dict)
    arrays: dict[str, Array] = field(default_factory=dict)
    figures: dict[str, Figure] = field(default_factory=dict)
    claims: list[Claim] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def table(self, name: str, columns: Sequence[str]) -> Table:
        """A new, empty table registered under ``name``."""
        if name in self.tables:
            raise ValueError(f"table {name!r} already exists")
        self.tables[name] = t = Table(list(columns))
        return t

    def array(self, name: str, values, dims, coords=None, **attrs) -> Array:
        if name in self.arrays:
            raise ValueError(f"array {name!r} already exists")
        self.arrays[name] = a = Array(values, dims, dict(coords or {}), attrs)
        return a

    def figure(self, name: str, title: str, **kw) -> Figure:
        if name in self.figures:
            raise ValueError(f"figure {name!r} already exists")
        self.figures[name] = f = Figure(title, **kw)
        return f

    def claim(self, *args, **kw) -> Claim:
        c = Claim(*args, **kw)
        self.claims.append(c)
        return c

    def check(self) -> None:
        """Raise ``ValueError`` when the result breaks the contract (writers call this first)."""
        if self.main not in self.tables:
            raise ValueError(f"main table {self.main!r} is not among the tables {sorted(self.tables)}")
        for name in [*self.tables, *self.arrays, *self.figures]:
            if not name or "/" in name or name.startswith("."):
                raise ValueError(f"name {name!r} is not usable as a file or HDF5 name")
        keys = [c.key for c in self.claims]
        if len(keys) != len(set(keys)):
            raise ValueError(f"claim keys repeat: {keys}")


def _plain(v):
    """A JSON/HDF5-friendly scalar: NumPy scalars to Python ones."""
    if isinstance(v, np.generic):
        return v.item()
    return v


def spread(values) -> dict:
    """``{"mean", "min", "max", "n"}`` of finite values (NaN when none)."""
    v = np.asarray([x for x in values if x is not None], dtype=float)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return {"mean": float("nan"), "min": float("nan"), "max": float("nan"), "n": 0}
    return {"mean": float(v.mean()), "min": float(v.min()), "max": float(v.max()), "n": int(v.size)}


def fmt_spread(values, digits: int = 3, unit: str = "") -> str:
    """``"0.912 (0.905–0.920, 3 seeds)"``: the mean and the range over seeds."""
    s = spread(values)
    if s["n"] == 0:
        return "n/a"
    if s["n"] == 1:
        return f"{s['mean']:.{digits}f}{unit} (1 seed)"
    return f"{s['mean']:.{digits}f}{unit} ({s['min']:.{digits}f}–{s['max']:.{digits}f}, {s['n']} seeds)"
