"""Readers for dataset files the user already has (CIFAR-10, MNIST, SARCOS, Tiny ImageNet).

Files are looked up under an explicit ``path`` or under the folder named by
the ``NOISESIM_DATA`` environment variable; nothing is ever downloaded.  The
``*_arrays`` functions return plain NumPy arrays plus task metadata, which
:mod:`scenarios.datasets` wraps into :class:`~scenarios.datasets.Dataset`
loaders (``load_cifar10`` etc.).

Every parser validates what it reads before trusting it: IDX headers are
checked against the file size before any allocation, pickles are loaded with
:class:`SafeUnpickler` (NumPy arrays and plain containers only, never an
arbitrary callable), and malformed files raise :class:`ValueError` naming the
file and the problem.
"""

from __future__ import annotations

import gzip
import math
import os
import pickle
import struct
import zlib
from pathlib import Path

import numpy as np

ENV_VAR = "NOISESIM_DATA"

#: Largest IDX payload accepted (bytes); guards against absurd headers.
MAX_IDX_BYTES = 1 << 32

_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


# --------------------------------------------------------------------------- locating files
def data_root(dataset: str, files, path=None) -> Path:
    """Return the folder to search: ``path`` if given, else ``$NOISESIM_DATA``.

    Raises
    ------
    FileNotFoundError
        If neither is given, naming the expected files and the variable.
    """
    if path is not None:
        return Path(path).expanduser()
    env = os.environ.get(ENV_VAR)
    if env:
        return Path(env).expanduser()
    raise FileNotFoundError(
        f"{dataset}: no data folder: set the {ENV_VAR} environment variable (or pass "
        f"path=...) to a folder holding {', '.join(files)}")


def find_files(dataset: str, files, path=None, subdirs=(), gz=False) -> dict:
    """Locate all of ``files`` in one folder.

    The candidates are the root (see :func:`data_root`) and then each of its
    ``subdirs``; the first folder that holds every file wins.

    Parameters
    ----------
    dataset : str
        Dataset name, used in error messages.
    files : sequence of str
        Required file names.
    path : str or os.PathLike, optional
        Explicit folder; defaults to ``$NOISESIM_DATA``.
    subdirs : sequence of str
        Conventional sub-folders to try as well (e.g. ``cifar-10-batches-py``).
    gz : bool
        Also accept ``<name>.gz`` for each file.

    Returns
    -------
    dict
        ``{name: Path}`` for every requested name.

    Raises
    ------
    FileNotFoundError
        Naming the expected files, the folders searched and ``NOISESIM_DATA``.
    """
    root = data_root(dataset, files, path)
    candidates = [root] + [root / s for s in subdirs]
    for folder in candidates:
        found = {}
        for name in files:
            for cand in ([name, name + ".gz"] if gz else [name]):
                if (folder / cand).is_file():
                    found[name] = folder / cand
                    break
        if len(found) == len(files):
            return found
    raise FileNotFoundError(
        f"{dataset}: expected files {', '.join(files)}{' (optionally .gz)' if gz else ''} "
        f"in one of: {', '.join(str(c) for c in candidates)}. Pass path=... or set "
        f"{ENV_VAR} to the folder that holds them.")


# --------------------------------------------------------------------------- safe pickles
def _latin1_encode(text, encoding="latin1"):
    """Stand-in for ``_codecs.encode`` as used by protocol-2 pickles of bytes."""
    if encoding.replace("-", "").lower() != "latin1" or not isinstance(text, str):
        raise pickle.UnpicklingError(f"forbidden _codecs.encode call with encoding {encoding!r}")
    return text.encode("latin1")


def _allowed_globals() -> dict:
    try:  # NumPy >= 2
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # pragma: no cover - NumPy 1.x
        from numpy.core.multiarray import _reconstruct
    allowed = {("_codecs", "encode"): _latin1_encode,
               ("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype}
    for mod in ("numpy.core.multiarray", "numpy._core.multiarray"):
        allowed[(mod, "_reconstruct")] = _reconstruct
    for mod in ("numpy.core.numeric", "numpy._core.numeric"):
        allowed[(mod, "_frombuffer")] = _safe_frombuffer
    return allowed


def _safe_frombuffer(buf, dtype, shape, order):
    """Rebuild an array from a pickle-5 buffer (plain data types only)."""
    dtype = np.dtype(dtype)
    if dtype.hasobject:
        raise pickle.UnpicklingError("forbidden object array in pickle")
    arr = np.frombuffer(buf, dtype=dtype)
    return arr.reshape(shape, order=order if order in ("C", "F") else "C")


_ALLOWED = _allowed_globals()


class SafeUnpickler(pickle.Unpickler):
    """Unpickler that resolves no global except NumPy array reconstruction.

    Plain containers, strings, bytes and numbers need no globals at all; the
    only names resolved are ``numpy.ndarray``, ``numpy.dtype``,
    ``numpy[._]core.multiarray._reconstruct``,
    ``numpy[._]core.numeric._frombuffer`` (pickle protocol 5) and a
    latin-1-only stand-in for ``_codecs.encode`` (bytes in protocol 2).
    Anything else raises :class:`pickle.UnpicklingError` before it can run.
    """

    def find_class(self, module, name):
        fn = _ALLOWED.get((module, name))
        if fn is None:
            raise pickle.UnpicklingError(
                f"forbidden global {module}.{name} in pickle: only NumPy arrays and "
                "plain containers are allowed")
        return fn


def safe_load_pickle(path) -> object:
    """Unpickle ``path`` with :class:`SafeUnpickler` (``encoding='bytes'``).

    Raises
    ------
    ValueError
        If the file is not a valid pickle or refers to a forbidden global.
    """
    try:
        with open(path, "rb") as f:
            return SafeUnpickler(f, encoding="bytes").load()
    except pickle.UnpicklingError as e:
        raise ValueError(f"{path}: refused or invalid pickle: {e}") from e
    except (EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError,
            struct.error) as e:
        raise ValueError(f"{path}: corrupt pickle: {e!r}") from e


def read_cifar10_batch(path):
    """Read one CIFAR-10 "python version" batch.

    Returns
    -------
    x : ndarray of uint8, shape (n, 3072)
        Rows are the original channel-major (3x32x32) pixel layout.
    y : ndarray of int64, shape (n,)
    """
    d = safe_load_pickle(path)
    if not isinstance(d, dict):
        raise ValueError(f"{path}: expected a pickled dict, got {type(d).__name__}")
    d = {(k.decode("latin1") if isinstance(k, bytes) else k): v for k, v in d.items()}
    if "data" not in d or "labels" not in d:
        raise ValueError(f"{path}: missing key b'data' or b'labels' (keys: {sorted(d)})")
    x, y = d["data"], np.asarray(d["labels"])
    if not (isinstance(x, np.ndarray) and x.dtype == np.uint8 and x.ndim == 2
            and x.shape[1] == 3072):
        raise ValueError(f"{path}: b'data' must be a uint8 array of shape (n, 3072), got "
                         f"{getattr(x, 'dtype', type(x))} {getattr(x, 'shape', '')}")
    if y.shape != (x.shape[0],) or not np.issubdtype(y.dtype, np.integer) \
            or (y.size and (y.min() < 0 or y.max() > 9)):
        raise ValueError(f"{path}: b'labels' must be {x.shape[0]} integers in 0..9")
    return x, y.astype(np.int64)


# --------------------------------------------------------------------------- IDX (MNIST)
def read_idx(path) -> np.ndarray:
    """Read an IDX file (optionally gzip-compressed), validating its header.

    The header (two zero bytes, a type code, the number of dimensions, then
    big-endian uint32 sizes) is checked against the bytes actually present
    before the payload is allocated.

    Raises
    ------
    ValueError
        Naming the file and the problem (bad magic, unknown type code,
        truncated or oversized payload, corrupt gzip stream).
    """
    path = Path(path)
    is_gz = path.name.endswith(".gz")
    try:
        with (gzip.open(path, "rb") if is_gz else open(path, "rb")) as f:
            head = f.read(4)
            if len(head) < 4:
                raise ValueError(f"{path}: truncated IDX header ({len(head)} of 4 bytes)")
            if head[0] or head[1]:
                raise ValueError(f"{path}: bad IDX magic {head.hex()} (must start 0000)")
            code, ndim = head[2], head[3]
            if code not in _IDX_DTYPES:
                raise ValueError(f"{path}: unknown IDX type code 0x{code:02x}")
            if not 1 <= ndim <= 8:
                raise ValueError(f"{path}: unsupported IDX dimension count {ndim}")
            raw = f.read(4 * ndim)
            if len(raw) < 4 * ndim:
                raise ValueError(f"{path}: truncated IDX header (dimension sizes)")
            dims = struct.unpack(f">{ndim}I", raw)
            dtype = np.dtype(_IDX_DTYPES[code])
            nbytes = math.prod(dims) * dtype.itemsize
            if nbytes > MAX_IDX_BYTES:
                raise ValueError(f"{path}: IDX header claims {dims}, {nbytes} bytes: too large")
            if not is_gz:
                have = os.path.getsize(path) - 4 - 4 * ndim
                if have != nbytes:
                    raise ValueError(f"{path}: IDX header {dims} needs {nbytes} data bytes but "
                                     f"the file holds {have} ({'truncated' if have < nbytes else 'trailing data'})")
            data = f.read(nbytes)
            if len(data) != nbytes:
                raise ValueError(f"{path}: truncated IDX data ({len(data)} of {nbytes} bytes "
                                 f"for shape {dims})")
            if is_gz and f.read(1):
                raise ValueError(f"{path}: trailing data after IDX payload of shape {dims}")
    except (EOFError, zlib.error, gzip.BadGzipFile) as e:
        raise ValueError(f"{path}: corrupt gzip stream: {e}") from e
    return np.frombuffer(data, dtype=dtype).reshape(dims).astype(dtype.newbyteorder("="))


def read_mnist_pair(images_path, labels_path):
    """Read matching IDX image and label files.

    Returns
    -------
    x : ndarray of uint8, shape (n, rows * cols)
    y : ndarray of int64, shape (n,)
    """
    x, y = read_idx(images_path), read_idx(labels_path)
    if x.ndim != 3 or x.dtype != np.uint8:
        raise ValueError(f"{images_path}: expected uint8 images (n, rows, cols), got "
                         f"{x.dtype} {x.shape}")
    if y.ndim != 1 or y.dtype != np.uint8:
        raise ValueError(f"{labels_path}: expected uint8 labels (n,), got {y.dtype} {y.shape}")
    if len(x) != len(y):
        raise ValueError(f"{images_path} holds {len(x)} images but {labels_path} {len(y)} labels")
    if y.size and y.max() > 9:
        raise ValueError(f"{labels_path}: label {int(y.max())} outside 0..9")
    return x.reshape(len(x), -1), y.astype(np.int64)


# --------------------------------------------------------------------------- SARCOS (.mat)
def read_mat_matrix(path, variable, n_cols=None) -> np.ndarray:
    """Read one 2-D numeric variable from a MATLAB .mat file (``scipy.io.loadmat``)."""
    from scipy.io import loadmat
    try:
        mat = loadmat(path, variable_names=[variable])
    except (ValueError, TypeError, OSError, NotImplementedError) as e:
        raise ValueError(f"{path}: cannot read MATLAB file: {e}") from e
    if variable not in mat:
        raise ValueError(f"{path}: no variable {variable!r} in the MATLAB file")
    a = np.asarray(mat[variable])
    if a.ndim != 2 or not np.issubdtype(a.dtype, np.number) or \
            (n_cols is not None and a.shape[1] != n_cols):
        raise ValueError(f"{path}: {variable!r} must be a numeric (n, {n_cols}) matrix, got "
                         f"{a.dtype} {a.shape}")
    return a.astype(np.float64)


# --------------------------------------------------------------------------- Tiny ImageNet
def _read_image(path) -> np.ndarray:
    try:
        from PIL import Image
    except ImportError as e:  # pragma: no cover - pillow ships with matplotlib
        raise ImportError("tiny-imagenet: reading JPEG folders needs Pillow; or provide "
                          "a pre-converted tiny-imagenet.npz") from e
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"), dtype=np.uint8)


def read_tiny_imagenet_folder(root, n_train=None, n_test=None):
    """Read the standard ``tiny-imagenet-200`` folder layout.

    Training images come from ``train/<wnid>/images/*.JPEG`` in round-robin
    class order (image 0 of every class, then image 1, ...), so the first
    ``n_train`` are class-balanced; test images come from ``val/images`` in
    the order of ``val/val_annotations.txt``.  Only the requested images are
    decoded.  Classes are the sorted ``train/`` sub-folder names.

    Returns
    -------
    x_train, y_train, x_test, y_test, classes
        Images as uint8 arrays (n, 64, 64, 3) (HWC), labels int64.
    """
    root = Path(root)
    classes = sorted(p.name for p in (root / "train").iterdir() if p.is_dir())
    index = {w: i for i, w in enumerate(classes)}
    per_class = [sorted((root / "train" / w / "images").glob("*.JPEG")) for w in classes]
    order = [(files[j], index[w]) for j in range(max(map(len, per_class), default=0))
             for w, files in zip(classes, per_class) if j < len(files)]
    test = []
    for line in (root / "val" / "val_annotations.txt").read_text().splitlines():
        parts = line.split("\t")
        if len(parts) >= 2 and parts[1] in index:
            test.append((root / "val" / "images" / parts[0], index[parts[1]]))
        elif line.strip():
            raise ValueError(f"{root / 'val' / 'val_annotations.txt'}: bad line {line!r}")

    def take(items, n):
        items = items[:n] if n is not None else items
        if not items:
            return np.zeros((0, 64, 64, 3), np.uint8), np.zeros(0, np.int64)
        return (np.stack([_read_image(p) for p, _ in items]),
                np.array([c for _, c in items], dtype=np.int64))

    return (*take(order, n_train), *take(test, n_test), classes)


def read_npz_arrays(path, keys=("x_train", "y_train", "x_test", "y_test")):
    """Read named arrays from an ``.npz`` without allowing pickled objects."""
    try:
        with np.load(path, allow_pickle=False) as z:
            missing = [k for k in keys if k not in z.files]
            if missing:
                raise ValueError(f"{path}: missing arrays {missing} (has {z.files})")
            return [z[k] for k in keys]
    except (OSError, EOFError) as e:
        raise ValueError(f"{path}: unreadable .npz: {e}") from e


# --------------------------------------------------------------------------- dataset readers
# Each returns the keyword arguments of scenarios.datasets._make (arrays before
# subsampling, task, n_classes, meta); datasets.py wraps them into loaders.
def _standardise(train, test):
    """Scale columns to zero mean / unit std using training statistics."""
    mean, std = train.mean(0), train.std(0)
    std = np.where(std > 0, std, 1.0)
    return (train - mean) / std, (test - mean) / std, mean, std


def _head(a, n):
    return a if n is None else a[:max(int(n), 0)]


def cifar10_arrays(path=None, n_train=None, n_test=None) -> dict:
    """CIFAR-10 "python version": 50000 train / 10000 test, 3072 features in [0, 1].

    Reads ``data_batch_1..5`` and ``test_batch`` from ``path`` or
    ``$NOISESIM_DATA`` (or their ``cifar-10-batches-py`` sub-folder) with
    :class:`SafeUnpickler`.  Features keep the channel-major 3x32x32 layout.
    ``n_train`` / ``n_test`` keep the first ``n`` examples.
    """
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    files = find_files("cifar10", names, path, subdirs=("cifar-10-batches-py", "cifar10"))
    parts = [read_cifar10_batch(files[n]) for n in names]
    xtr, ytr = (np.concatenate([p[i] for p in parts[:5]]) for i in (0, 1))
    xte, yte = parts[5]
    return dict(x_train=_head(xtr, n_train) / 255.0, y_train=ytr,  # scale only what is kept
                x_test=_head(xte, n_test) / 255.0, y_test=yte, task="classification",
                n_classes=10, meta={"source": str(files["test_batch"].parent), "scaling": "x / 255"})


def mnist_arrays(path=None, n_train=None, n_test=None) -> dict:
    """MNIST from IDX files (optionally ``.gz``): 60000 / 10000, 784 features in [0, 1].

    Reads ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
    ``t10k-images-idx3-ubyte`` and ``t10k-labels-idx1-ubyte`` from ``path`` or
    ``$NOISESIM_DATA`` (or its ``mnist`` / ``MNIST/raw`` sub-folder).
    ``n_train`` / ``n_test`` keep the first ``n`` examples.
    """
    names = ["train-images-idx3-ubyte", "train-labels-idx1-ubyte",
             "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]
    f = find_files("mnist", names, path, subdirs=("mnist", "MNIST/raw"), gz=True)
    xtr, ytr = read_mnist_pair(f[names[0]], f[names[1]])
    xte, yte = read_mnist_pair(f[names[2]], f[names[3]])
    return dict(x_train=_head(xtr, n_train) / 255.0, y_train=ytr,
                x_test=_head(xte, n_test) / 255.0, y_test=yte, task="classification",
                n_classes=10, meta={"source": str(f[names[0]].parent), "scaling": "x / 255"})


def sarcos_arrays(path=None, n_train=None, n_test=None) -> dict:
    """SARCOS inverse dynamics: 21 inputs -> 7 joint torques (regression).

    Reads variables ``sarcos_inv`` / ``sarcos_inv_test`` (28 columns: 21
    inputs then 7 torques) from ``sarcos_inv.mat`` / ``sarcos_inv_test.mat``
    under ``path`` or ``$NOISESIM_DATA``.  Inputs and targets are standardised
    per column with statistics of the full training file (kept in ``meta``);
    ``n_train`` / ``n_test`` then keep the first ``n`` rows.
    """
    names = ["sarcos_inv.mat", "sarcos_inv_test.mat"]
    f = find_files("sarcos", names, path, subdirs=("sarcos",))
    train = read_mat_matrix(f[names[0]], "sarcos_inv", 28)
    test = read_mat_matrix(f[names[1]], "sarcos_inv_test", 28)
    xtr, xte, xm, xs = _standardise(train[:, :21], test[:, :21])
    ytr, yte, ym, ys = _standardise(train[:, 21:], test[:, 21:])
    return dict(x_train=xtr, y_train=ytr, x_test=xte, y_test=yte, task="regression",
                n_classes=None, meta={"source": str(f[names[0]].parent), "x_mean": xm,
                                      "x_std": xs, "y_mean": ym, "y_std": ys,
                                      "scaling": "per-column train standardisation"})


def tiny_imagenet_arrays(path=None, n_train=None, n_test=None) -> dict:
    """Tiny ImageNet (64x64 RGB), 12288 features in [0, 1] (HWC order).

    Uses ``tiny-imagenet.npz`` (arrays ``x_train``, ``y_train``, ``x_test``,
    ``y_test``; uint8 images in [0, 255] or float features) when present under
    ``path`` or ``$NOISESIM_DATA``, else the standard ``tiny-imagenet-200``
    folder (see :func:`read_tiny_imagenet_folder`; the labelled val split is
    the test split), decoding only the first ``n_train`` / ``n_test`` images
    with Pillow.  The full set needs about 5 GB as float32.
    """
    try:
        f = find_files("tiny-imagenet", ["tiny-imagenet.npz"], path)
    except FileNotFoundError:
        names = ["wnids.txt", "val/val_annotations.txt"]
        try:
            f = find_files("tiny-imagenet", names, path, subdirs=("tiny-imagenet-200",))
        except FileNotFoundError as e:
            raise FileNotFoundError(f"{e} (or a pre-converted tiny-imagenet.npz)") from None
        source = f["wnids.txt"].parent
        xtr, ytr, xte, yte, classes = read_tiny_imagenet_folder(source, n_train, n_test)
        n_classes = len(classes)
    else:
        source = f["tiny-imagenet.npz"]
        xtr, ytr, xte, yte = read_npz_arrays(source)
        n_classes = int(max(np.max(ytr, initial=0), np.max(yte, initial=0))) + 1

    def scale(x):
        x = np.asarray(x).reshape(len(x), -1)
        return x / 255.0 if x.dtype == np.uint8 else x

    return dict(x_train=scale(_head(xtr, n_train)), y_train=ytr, x_test=scale(_head(xte, n_test)),
                y_test=yte, task="classification", n_classes=n_classes,
                meta={"source": str(source), "scaling": "x / 255 if uint8"})
