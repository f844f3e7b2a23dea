"""Datasets for the noisesim scenarios.

Offline defaults that need no download:

* ``digits`` -- scikit-learn's 8x8 digits, features in [0, 1], fixed stratified split;
* ``mnist1d`` -- MNIST-1D (Greydanus 2020, "Scaling down deep learning"), generated
  locally by its published procedure and cached as ``.npz``;
* ``teacher`` -- synthetic teacher-network tasks drawn from a seed.

Loaders for files the user already has, found under ``$NOISESIM_DATA`` or an
explicit ``path=`` (parsing lives in :mod:`scenarios.loaders`): ``cifar10``,
``mnist``, ``sarcos`` and ``tiny-imagenet``.

Every loader accepts ``n_train`` / ``n_test`` to keep only the first ``n``
examples of each split (deterministic; scaling statistics are always those of
the full training split).  Use :func:`load` with a name from :data:`DATASETS`.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import platformdirs

from . import loaders
from .loaders import ENV_VAR

__all__ = ["Dataset", "DATASETS", "load", "cache_dir", "load_digits", "load_mnist1d",
           "load_teacher", "load_cifar10", "load_mnist", "load_sarcos", "load_tiny_imagenet"]

_TASKS = ("classification", "regression")


@dataclass(frozen=True, eq=False)
class Dataset:
    """A train/test split ready for training.

    Attributes
    ----------
    name : str
        Registry name.
    x_train, x_test : ndarray of float32, shape (n, n_features)
        Inputs.
    y_train, y_test : ndarray
        int64 class labels, shape (n,), for classification; float32 targets,
        shape (n, n_out), for regression.
    task : {"classification", "regression"}
    n_classes : int or None
        Number of classes; ``None`` for regression.
    meta : dict
        Provenance and scaling information (not part of the data).
    """

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    task: str
    n_classes: int | None
    meta: dict = field(default_factory=dict, repr=False)

    def __post_init__(self):
        if self.task not in _TASKS:
            raise ValueError(f"task must be one of {_TASKS}, got {self.task!r}")
        if (self.task == "classification") != (self.n_classes is not None):
            raise ValueError("n_classes must be set for classification and None for regression")
        for x, y, split in ((self.x_train, self.y_train, "train"), (self.x_test, self.y_test, "test")):
            if x.ndim != 2 or len(x) != len(y):
                raise ValueError(f"{self.name}: {split} inputs {x.shape} do not match targets {y.shape}")
        check_split(self.name, self.x_train, self.y_train, "train", self.task, self.n_classes)
        check_split(self.name, self.x_test, self.y_test, "test", self.task, self.n_classes, empty_ok=True)

    def __repr__(self) -> str:
        kind = f"{self.n_classes} classes" if self.n_classes is not None else "regression"
        return (f"Dataset({self.name!r}, {kind}, train {self.x_train.shape}, "
                f"test {self.x_test.shape})")

    @property
    def n_features(self) -> int:
        """Number of input features."""
        return int(self.x_train.shape[1])

    @property
    def n_outputs(self) -> int:
        """Network outputs needed: ``n_classes``, or the target width for regression."""
        if self.task == "classification":
            return int(self.n_classes)
        return int(self.y_train.shape[1]) if self.y_train.ndim == 2 else 1

    def targets(self, y) -> np.ndarray:
        """Training targets for labels/targets ``y`` of this dataset.

        Parameters
        ----------
        y : array_like
            ``y_train``, ``y_test`` or a subset of either.

        Returns
        -------
        ndarray of float32
            One-hot ``(n, n_classes)`` for classification; ``y`` as float32 of
            shape ``(n, n_outputs)`` for regression.
        """
        y = np.asarray(y)
        if self.task == "regression":
            return y.astype(np.float32).reshape(len(y), -1)
        if y.size and (y.min() < 0 or y.max() >= self.n_classes):
            raise ValueError(f"labels must lie in 0..{self.n_classes - 1}")
        return np.eye(self.n_classes, dtype=np.float32)[y.astype(np.int64)]


def check_split(name, x, y, split: str, task: str, n_outputs, *, empty_ok: bool = False) -> None:
    """Raise ``ValueError`` naming the problem unless ``x`` is a 2-D array of real numbers and
    ``y`` fits ``task``: integer class labels in ``[0, n_outputs)`` (classification) or real
    targets of width ``n_outputs`` (regression; ``None``: any width)."""
    x, y = np.asarray(x), np.asarray(y)
    if x.dtype.kind not in "fiu":
        raise ValueError(f"{name}: {split} inputs must be real numbers, got dtype {x.dtype}")
    if x.ndim != 2 or len(x) != len(y):
        raise ValueError(f"{name}: {split} inputs {x.shape} do not match targets {y.shape}")
    if len(x) == 0 and not empty_ok:
        raise ValueError(f"{name}: the {split} split is empty")
    if task == "classification":
        if y.ndim != 1:
            raise ValueError(f"{name}: {split} labels must be one class index per sample, shape ({len(x)},); "
                             f"got shape {y.shape}")
        if y.dtype.kind not in "iu":
            raise ValueError(f"{name}: {split} labels must be integers (class indices), got dtype {y.dtype}")
        if y.size and (int(y.min()) < 0 or int(y.max()) >= n_outputs):
            bad = int(y.min()) if int(y.min()) < 0 else int(y.max())
            raise ValueError(f"{name}: {split} label {bad} is outside [0, {n_outputs}) for {n_outputs} classes")
    else:
        if y.dtype.kind not in "fiu":
            raise ValueError(f"{name}: {split} targets must be real numbers, got dtype {y.dtype}")
        width = y.shape[1] if y.ndim == 2 else 1 if y.ndim == 1 else None
        if width is None or (n_outputs is not None and width != n_outputs):
            raise ValueError(f"{name}: {split} targets of shape {y.shape}; expected ({len(x)}, {n_outputs})")


def _subsample(a: np.ndarray, n, what: str) -> np.ndarray:
    if n is None:
        return a
    n = int(n)
    if not 0 <= n <= len(a):
        raise ValueError(f"{what}={n} out of range: the split holds {len(a)} examples")
    return a[:n]


def _make(name, x_train, y_train, x_test, y_test, task, n_classes, n_train, n_test, meta):
    ydt = np.int64 if task == "classification" else np.float32
    return Dataset(name=name,
                   x_train=np.ascontiguousarray(_subsample(x_train, n_train, "n_train"), np.float32),
                   y_train=np.ascontiguousarray(_subsample(y_train, n_train, "n_train"), ydt),
                   x_test=np.ascontiguousarray(_subsample(x_test, n_test, "n_test"), np.float32),
                   y_test=np.ascontiguousarray(_subsample(y_test, n_test, "n_test"), ydt),
                   task=task, n_classes=n_classes, meta=meta)


# --------------------------------------------------------------------------- digits
def load_digits(n_train=None, n_test=None) -> Dataset:
    """scikit-learn's 8x8 digits: 1437 train / 360 test, 64 features in [0, 1].

    Pixels (0..16) are divided by 16.  The split is stratified with
    ``train_test_split(test_size=0.2, random_state=0)`` and identical on every call.
    """
    from sklearn.datasets import load_digits as _sk_digits
    from sklearn.model_selection import train_test_split
    d = _sk_digits()
    x, y = d.data / 16.0, d.target.astype(np.int64)
    xtr, xte, ytr, yte = train_test_split(x, y, test_size=0.2, random_state=0, stratify=y)
    return _make("digits", xtr, ytr, xte, yte, "classification", 10, n_train, n_test,
                 {"source": "sklearn.datasets.load_digits", "scaling": "x / 16"})


# --------------------------------------------------------------------------- MNIST-1D
MNIST1D_DEFAULTS = dict(num_samples=5000, train_split=0.8, template_len=12, padding=(36, 60),
                        scale_coeff=0.4, max_translation=48, corr_noise_scale=0.25,
                        iid_noise_scale=2e-2, shear_scale=0.75, shuffle_seq=False,
                        final_seq_length=40, seed=42)
_MNIST1D_VERSION = 1  # bump when the generator changes: invalidates caches

# The ten 12-point digit outlines of the published MNIST-1D (rows = digits 0..9).
_MNIST1D_OUTLINES = np.array([
    [5, 6, 6.5, 6.75, 7, 7, 7, 7, 6.75, 6.5, 6, 5],
    [5, 3, 3, 3.4, 3.8, 4.2, 4.6, 5, 5.4, 5.8, 5, 5],
    [5, 6, 6.5, 6.5, 6, 5.25, 4.75, 4, 3.5, 3.5, 4, 5],
    [5, 6, 6.5, 6.5, 6, 5, 5, 6, 6.5, 6.5, 6, 5],
    [5, 4.4, 3.8, 3.2, 2.6, 2.6, 5, 5, 5, 5, 5, 5],
    [5, 3, 3, 3, 3, 5, 6, 6.5, 6.5, 6, 4.5, 5],
    [5, 4, 3.5, 3.25, 3, 3, 3, 3, 3.25, 3.5, 4, 5],
    [5, 7, 7, 6.6, 6.2, 5.8, 5.4, 5, 4.6, 4.2, 5, 5],
    [5, 4, 3.5, 3.5, 4, 5, 5, 4, 3.5, 3.5, 4, 5],
    [5, 4, 3.5, 3.5, 4, 5, 5, 5, 5, 4.7, 4.3, 5]])


def _mnist1d_templates() -> np.ndarray:
    """Outlines normalised per row, shifted to start at 0 and scaled by 1/6."""
    t = _MNIST1D_OUTLINES - _MNIST1D_OUTLINES.mean(1, keepdims=True)
    t = t / t.std(1, keepdims=True)
    return (t - t[:, :1]) / 6.0


def generate_mnist1d(**params) -> dict:
    """Generate raw (unscaled) MNIST-1D arrays by the published procedure.

    Each example takes its class template (plus 1e-8 so the signal is
    non-zero), appends a random number of zeros (``padding``), resamples the
    result to ``template_len + padding[1]`` points, multiplies by a random
    scale, rolls it circularly by a random offset below ``max_translation``,
    replaces the zero (padding) points with Gaussian-smoothed noise
    (sigma = 2 samples), adds iid noise everywhere, subtracts a random linear
    ramp (shear) and resamples to ``final_seq_length`` points.  Examples are
    shuffled and split ``train_split`` / rest.  Randomness comes from
    ``numpy.random.default_rng(seed)``, so the values differ from the
    reference pickle while the distribution is the same.

    Parameters
    ----------
    **params
        Overrides of :data:`MNIST1D_DEFAULTS`.

    Returns
    -------
    dict
        ``x_train``, ``y_train``, ``x_test``, ``y_test`` (float32 / int64).
    """
    from scipy.ndimage import gaussian_filter1d
    unknown = set(params) - set(MNIST1D_DEFAULTS)
    if unknown:
        raise TypeError(f"unknown MNIST-1D parameters {sorted(unknown)}; "
                        f"valid: {sorted(MNIST1D_DEFAULTS)}")
    p = {**MNIST1D_DEFAULTS, **params}
    lo, hi = (int(v) for v in p["padding"])
    if not (0 <= lo <= hi and p["max_translation"] >= 1 and p["num_samples"] >= 10
            and 0 < p["train_split"] < 1 and p["final_seq_length"] >= 2):
        raise ValueError(f"invalid MNIST-1D parameters: {p}")
    rng = np.random.default_rng(p["seed"])
    templates = _mnist1d_templates()
    labels = np.repeat(np.arange(10), p["num_samples"] // 10)
    n, length, out_len = labels.size, int(p["template_len"]) + hi, int(p["final_seq_length"])
    pads = rng.integers(lo, hi + 1, size=n)
    scales = 1.0 + p["scale_coeff"] * (rng.random(n) - 0.5)
    shifts = rng.integers(0, int(p["max_translation"]), size=n)
    corr = gaussian_filter1d(p["corr_noise_scale"] * rng.standard_normal((n, length)), 2.0, axis=1)
    iid = p["iid_noise_scale"] * rng.standard_normal((n, length))
    shears = p["shear_scale"] * (rng.random(n) - 0.5)
    grid, ramp = np.linspace(0, 1, length), np.linspace(-0.5, 0.5, length)
    out_grid = np.linspace(0, 1, out_len)
    xs = np.empty((n, out_len))
    for i in range(n):
        sig = np.concatenate([templates[labels[i]] + 1e-8, np.zeros(pads[i])])
        sig = np.interp(grid, np.linspace(0, 1, sig.size), sig) * scales[i]
        sig = np.roll(sig, shifts[i])
        sig = np.where(sig != 0, sig, corr[i]) + iid[i] - shears[i] * ramp
        xs[i] = np.interp(out_grid, grid, sig)
    order = rng.permutation(n)
    xs, labels = xs[order], labels[order]
    if p["shuffle_seq"]:
        xs = xs[:, rng.permutation(out_len)]
    split = int(n * p["train_split"])
    return {"x_train": xs[:split].astype(np.float32), "y_train": labels[:split].astype(np.int64),
            "x_test": xs[split:].astype(np.float32), "y_test": labels[split:].astype(np.int64)}


def cache_dir() -> Path:
    """Folder for generated data (MNIST-1D, learning-rate searches): ``$NOISESIM_DATA`` when
    set, else the platform's user cache folder — ``$XDG_CACHE_HOME/noisesim``, by default
    ``~/.cache/noisesim``, on Linux (:func:`platformdirs.user_cache_dir`). Nothing is ever
    written into the installed package or the source checkout."""
    env = os.environ.get(ENV_VAR)
    if env:
        return Path(env).expanduser()
    return Path(platformdirs.user_cache_dir("noisesim", appauthor=False))


def _read_cache(path: Path, key: str):
    try:
        with np.load(path, allow_pickle=False) as z:
            if str(z["key"]) != key:
                return None
            arrays = {k: z[k] for k in ("x_train", "y_train", "x_test", "y_test")}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        return None
    ok = (arrays["x_train"].dtype == np.float32 and arrays["x_test"].dtype == np.float32
          and arrays["x_train"].ndim == 2 and arrays["x_test"].ndim == 2
          and len(arrays["x_train"]) == len(arrays["y_train"])
          and len(arrays["x_test"]) == len(arrays["y_test"]))
    return arrays if ok else None


def _write_cache(path: Path, key: str, arrays: dict) -> None:
    """Atomically write the cache; silently skip when the folder is not writable."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".npz")
        try:
            with os.fdopen(fd, "wb") as f:
                np.savez(f, key=np.array(key), **arrays)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    except OSError:
        pass


def load_mnist1d(n_train=None, n_test=None, cache=True, **params) -> Dataset:
    """MNIST-1D generated locally (no download): 4000 train / 1000 test, 40 features.

    Parameters
    ----------
    n_train, n_test : int, optional
        Keep only the first ``n`` examples of each split.
    cache : bool
        Read/write ``mnist1d-<hash>.npz`` in :func:`cache_dir`; the hash covers
        all generator parameters.  An absent or unreadable cache is regenerated.
    **params
        Generator overrides, see :data:`MNIST1D_DEFAULTS` and :func:`generate_mnist1d`.

    Notes
    -----
    Features are standardised with a single scalar mean and standard
    deviation of the training inputs (the reference standardises with
    whole-dataset scalars), which keeps the shape of each signal.
    """
    p = {**MNIST1D_DEFAULTS, **params}
    if "padding" in p:
        p["padding"] = [int(v) for v in p["padding"]]
    key = json.dumps({"version": _MNIST1D_VERSION, **p}, sort_keys=True, default=str)
    path = cache_dir() / f"mnist1d-{hashlib.sha256(key.encode()).hexdigest()[:16]}.npz"
    arrays = _read_cache(path, key) if cache else None
    if arrays is None:
        arrays = generate_mnist1d(**p)
        if cache:
            _write_cache(path, key, arrays)
    xtr, xte = arrays["x_train"].astype(np.float64), arrays["x_test"].astype(np.float64)
    mean, std = xtr.mean(), xtr.std()
    return _make("mnist1d", (xtr - mean) / std, arrays["y_train"], (xte - mean) / std,
                 arrays["y_test"], "classification", 10, n_train, n_test,
                 {"source": "generated (Greydanus 2020 procedure)", "params": p,
                  "scaling": f"(x - {mean:.6g}) / {std:.6g} (train scalars)",
                  "cache": str(path) if cache else None})


# --------------------------------------------------------------------------- teacher
def load_teacher(n_in=30, n_out=10, hidden=(), n_train=1000, n_test=1000, noise=0.0, seed=0,
                 task="regression") -> Dataset:
    """Synthetic teacher task: a random network maps Gaussian inputs to targets.

    The teacher has weights ``W_l ~ N(0, 1/fan_in)``, no biases and ``tanh``
    hidden layers of sizes ``hidden`` (empty: a linear teacher).  Inputs are
    iid standard normal.  Teacher weights, training inputs, test inputs and
    label noise come from independent streams spawned from ``seed``, so the
    teacher does not change with ``n_train`` / ``n_test``.

    Parameters
    ----------
    n_in, n_out : int
        Input and output widths.
    hidden : sequence of int
        Hidden layer widths of the teacher.
    n_train, n_test : int
        Number of examples to draw.
    noise : float
        Std of Gaussian noise added to the training teacher outputs (before
        the argmax for classification, i.e. label noise); test targets are clean.
    seed : int
    task : {"regression", "classification"}
        Regression targets are the teacher outputs, shape (n, n_out);
        classification labels are their argmax (``n_out`` classes).

    Returns
    -------
    Dataset
        ``meta["weights"]`` holds the teacher weight matrices.
    """
    if task not in _TASKS:
        raise ValueError(f"task must be one of {_TASKS}, got {task!r}")
    ss = np.random.SeedSequence(seed)
    w_rng, tr_rng, te_rng, nz_rng = (np.random.default_rng(s) for s in ss.spawn(4))
    sizes = (int(n_in), *(int(h) for h in hidden), int(n_out))
    weights = [w_rng.standard_normal((a, b)) / np.sqrt(a) for a, b in zip(sizes[:-1], sizes[1:])]

    def teacher(x):
        for w in weights[:-1]:
            x = np.tanh(x @ w)
        return x @ weights[-1]

    x_train = tr_rng.standard_normal((int(n_train), sizes[0]))
    x_test = te_rng.standard_normal((int(n_test), sizes[0]))
    y_train = teacher(x_train) + noise * nz_rng.standard_normal((len(x_train), sizes[-1]))
    y_test = teacher(x_test)
    n_classes = None
    if task == "classification":
        y_train, y_test, n_classes = y_train.argmax(1), y_test.argmax(1), sizes[-1]
    return _make("teacher", x_train, y_train, x_test, y_test, task, n_classes, None, None,
                 {"weights": weights, "hidden": sizes[1:-1], "noise": noise, "seed": seed})


# --------------------------------------------------------------------------- user files
def _from_files(name: str, reader) -> Callable[..., Dataset]:
    """Wrap a :mod:`scenarios.loaders` reader into a loader returning a Dataset."""
    def loader(path=None, n_train=None, n_test=None) -> Dataset:
        return _make(name, **reader(path, n_train, n_test), n_train=n_train, n_test=n_test)
    loader.__name__ = loader.__qualname__ = "load_" + name.replace("-", "_")
    loader.__doc__ = reader.__doc__
    return loader


load_cifar10 = _from_files("cifar10", loaders.cifar10_arrays)
load_mnist = _from_files("mnist", loaders.mnist_arrays)
load_sarcos = _from_files("sarcos", loaders.sarcos_arrays)
load_tiny_imagenet = _from_files("tiny-imagenet", loaders.tiny_imagenet_arrays)


# --------------------------------------------------------------------------- registry
DATASETS: dict[str, Callable[..., Dataset]] = {
    "digits": load_digits,
    "mnist1d": load_mnist1d,
    "teacher": load_teacher,
    "cifar10": load_cifar10,
    "mnist": load_mnist,
    "sarcos": load_sarcos,
    "tiny-imagenet": load_tiny_imagenet,
}


def load(name: str, **kwargs) -> Dataset:
    """Load dataset ``name`` from :data:`DATASETS`, passing ``kwargs`` to its loader.

    Raises
    ------
    ValueError
        For an unknown name (the message lists the valid ones).
    """
    loader = DATASETS.get(name)
    if loader is None:
        raise ValueError(f"unknown dataset {name!r}; valid names: {', '.join(DATASETS)}")
    return loader(**kwargs)
