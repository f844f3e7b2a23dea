"""Tests for scenarios.datasets / scenarios.loaders (fast: tiny files written here)."""

import gzip
import os
import pickle
import struct

import numpy as np
import pytest

from scenarios import datasets as D
from scenarios import loaders as L

_REPO = D.Path(D.__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _data_env(tmp_path, monkeypatch):
    """Never touch the repository's data/cache or the user's data from tests."""
    monkeypatch.setenv("NOISESIM_DATA", str(tmp_path / "nsdata"))


@pytest.fixture(scope="module")
def mnist1d():
    return D.load("mnist1d", cache=False)


# --------------------------------------------------------------------------- registry
def test_unknown_name_lists_valid_names():
    with pytest.raises(ValueError) as e:
        D.load("no-such-set")
    for name in ("digits", "mnist1d", "teacher", "cifar10", "mnist", "sarcos", "tiny-imagenet"):
        assert name in str(e.value)
    assert set(D.DATASETS) == {"digits", "mnist1d", "teacher", "cifar10", "mnist", "sarcos",
                               "tiny-imagenet"}


@pytest.mark.parametrize("name", ["cifar10", "mnist", "sarcos", "tiny-imagenet"])
def test_missing_files_mention_env_var(name, tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="NOISESIM_DATA"):
        D.load(name)  # NOISESIM_DATA points at an empty/missing folder
    monkeypatch.delenv("NOISESIM_DATA")
    with pytest.raises(FileNotFoundError, match="NOISESIM_DATA"):
        D.load(name)
    with pytest.raises(FileNotFoundError, match="NOISESIM_DATA"):
        D.load(name, path=tmp_path)


def test_cache_dir_precedence(tmp_path, monkeypatch):
    """$NOISESIM_DATA, else the user cache folder following XDG — never the source tree."""
    assert D.cache_dir() == tmp_path / "nsdata"
    monkeypatch.delenv("NOISESIM_DATA")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert D.cache_dir() == tmp_path / "xdg" / "noisesim"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert D.cache_dir() == tmp_path / "home" / ".cache" / "noisesim"


def test_generated_data_goes_to_the_user_cache_not_the_checkout(tmp_path, monkeypatch):
    monkeypatch.delenv("NOISESIM_DATA")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    before = sorted(p.name for p in (_REPO / "data").rglob("*")) if (_REPO / "data").is_dir() else []
    d = D.load_mnist1d(n_train=50, n_test=20)
    assert d.meta["cache"].startswith(str(tmp_path / "xdg" / "noisesim"))
    assert len(list((tmp_path / "xdg" / "noisesim").glob("mnist1d-*.npz"))) == 1
    after = sorted(p.name for p in (_REPO / "data").rglob("*")) if (_REPO / "data").is_dir() else []
    assert after == before
    np.testing.assert_array_equal(D.load_mnist1d(n_train=50, n_test=20).x_train, d.x_train)  # read back


# --------------------------------------------------------------------------- digits
def test_digits():
    d = D.load("digits")
    assert d.x_train.shape == (1437, 64) and d.x_test.shape == (360, 64)
    assert d.x_train.dtype == np.float32 and d.y_train.dtype == np.int64
    assert 0.0 <= d.x_train.min() and d.x_train.max() <= 1.0 and d.x_test.max() <= 1.0
    assert d.task == "classification" and d.n_classes == 10
    assert d.n_features == 64 and d.n_outputs == 10
    assert set(np.unique(d.y_test)) == set(range(10))
    assert np.bincount(d.y_test).min() >= 35  # stratified: 35-37 per class
    e = D.load("digits")
    for a in ("x_train", "y_train", "x_test", "y_test"):
        np.testing.assert_array_equal(getattr(d, a), getattr(e, a))
    t = d.targets(d.y_test[:5])
    assert t.shape == (5, 10) and t.dtype == np.float32
    np.testing.assert_array_equal(t.argmax(1), d.y_test[:5])
    np.testing.assert_array_equal(t.sum(1), 1.0)


def test_subsample_first_n():
    full, d = D.load("digits"), D.load("digits", n_train=100, n_test=7)
    assert len(d.x_train) == 100 and len(d.y_test) == 7
    np.testing.assert_array_equal(d.x_train, full.x_train[:100])
    np.testing.assert_array_equal(d.y_test, full.y_test[:7])
    with pytest.raises(ValueError, match="n_train"):
        D.load("digits", n_train=10**6)


# --------------------------------------------------------------------------- MNIST-1D
def test_mnist1d_shapes_and_balance(mnist1d):
    d = mnist1d
    assert d.x_train.shape == (4000, 40) and d.x_test.shape == (1000, 40)
    assert d.x_train.dtype == np.float32 and d.y_train.dtype == np.int64
    assert d.n_classes == 10 and d.n_outputs == 10
    assert np.bincount(d.y_train, minlength=10).min() >= 350
    assert np.bincount(d.y_train, minlength=10).max() <= 450
    assert np.bincount(d.y_test, minlength=10).min() >= 70
    assert abs(d.x_train.mean()) < 1e-4 and abs(d.x_train.std() - 1) < 1e-4  # train scalars
    assert np.isfinite(d.x_test).all()


def test_mnist1d_deterministic(mnist1d):
    again = D.load("mnist1d", cache=False)
    np.testing.assert_array_equal(again.x_train, mnist1d.x_train)
    np.testing.assert_array_equal(again.y_test, mnist1d.y_test)
    a = D.load("mnist1d", cache=False, seed=1, num_samples=500)
    b = D.load("mnist1d", cache=False, seed=2, num_samples=500)
    assert a.x_train.shape == (400, 40)
    assert not np.allclose(a.x_train, b.x_train)


def test_mnist1d_cache_roundtrip(tmp_path, monkeypatch, mnist1d):
    monkeypatch.setenv("NOISESIM_DATA", str(tmp_path))
    d = D.load("mnist1d")
    files = list(tmp_path.glob("mnist1d-*.npz"))
    assert len(files) == 1 and d.meta["cache"] == str(files[0])
    np.testing.assert_array_equal(d.x_train, mnist1d.x_train)  # cached == fresh
    mtime = files[0].stat().st_mtime_ns
    e = D.load("mnist1d")
    assert files[0].stat().st_mtime_ns == mtime  # read, not rewritten
    np.testing.assert_array_equal(e.x_test, d.x_test)
    np.testing.assert_array_equal(e.y_train, d.y_train)
    files[0].write_bytes(b"not a zip file")  # unreadable cache -> regenerated
    f = D.load("mnist1d")
    np.testing.assert_array_equal(f.x_train, d.x_train)
    D.load("mnist1d", num_samples=200, shear_scale=0.5)  # parameters are part of the key
    assert len(list(tmp_path.glob("mnist1d-*.npz"))) == 2
    with pytest.raises(TypeError, match="unknown MNIST-1D"):
        D.load("mnist1d", cache=False, bogus=1)


def test_mnist1d_learnable_but_not_trivial(mnist1d):
    from sklearn.linear_model import LogisticRegression
    from threadpoolctl import threadpool_limits  # scikit-learn dependency
    d = mnist1d
    with threadpool_limits(1):  # one BLAS thread: ~0.1 s instead of seconds on a busy box
        clf = LogisticRegression(max_iter=1000).fit(d.x_train, d.y_train)
    acc = clf.score(d.x_test, d.y_test)
    # Measured here: logistic regression 0.309 (seeds 0/1/2: 0.305/0.292/0.335), sklearn
    # MLP(100) 0.58-0.60; a reference-procedure run (global np.random, seed 42) gives 0.329
    # and 0.57.  Published MNIST-1D: logistic ~32%, MLP ~68% (tuned), CNN ~94%. Chance: 10%.
    assert 0.2 < acc < 0.6, acc


# --------------------------------------------------------------------------- teacher
def test_teacher_deterministic_and_shapes():
    a = D.load("teacher", n_in=8, n_out=3, n_train=50, n_test=20, seed=3)
    b = D.load("teacher", n_in=8, n_out=3, n_train=50, n_test=20, seed=3)
    c = D.load("teacher", n_in=8, n_out=3, n_train=50, n_test=20, seed=4)
    assert a.x_train.shape == (50, 8) and a.y_train.shape == (50, 3) and a.x_test.shape == (20, 8)
    assert a.task == "regression" and a.n_classes is None and a.n_outputs == 3
    assert a.x_train.dtype == np.float32 and a.y_train.dtype == np.float32
    np.testing.assert_array_equal(a.x_train, b.x_train)
    np.testing.assert_array_equal(a.y_test, b.y_test)
    assert not np.allclose(a.y_train, c.y_train)
    np.testing.assert_allclose(a.y_train, a.x_train @ a.meta["weights"][0], rtol=1e-5, atol=1e-5)
    bigger = D.load("teacher", n_in=8, n_out=3, n_train=80, n_test=20, seed=3)
    np.testing.assert_array_equal(bigger.y_test, a.y_test)  # teacher fixed by the seed
    assert a.targets(a.y_train).shape == (50, 3)


def test_teacher_classification_nonlinear_noise():
    d = D.load("teacher", n_in=10, n_out=4, hidden=(16, 16), n_train=300, n_test=100,
               task="classification", noise=0.5, seed=1)
    assert d.task == "classification" and d.n_classes == 4
    assert d.y_train.dtype == np.int64 and d.y_train.shape == (300,)
    assert set(np.unique(d.y_train)) <= set(range(4)) and len(np.unique(d.y_train)) == 4
    assert [w.shape for w in d.meta["weights"]] == [(10, 16), (16, 16), (16, 4)]
    clean = D.load("teacher", n_in=10, n_out=4, hidden=(16, 16), n_train=300, n_test=100,
                   task="classification", noise=0.0, seed=1)
    np.testing.assert_array_equal(d.y_test, clean.y_test)  # test labels are clean
    assert (d.y_train != clean.y_train).any()
    with pytest.raises(ValueError):
        D.load("teacher", task="ranking")


# --------------------------------------------------------------------------- CIFAR-10
def _write_cifar(folder, n=6, protocol=2, seed=0):
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    batches = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        d = {b"batch_label": name.encode(), b"labels": [int(v) for v in rng.integers(0, 10, n)],
             b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
             b"filenames": [b"img%d.png" % i for i in range(n)]}
        (folder / name).write_bytes(pickle.dumps(d, protocol=protocol))
        batches[name] = d
    return batches


@pytest.mark.parametrize("protocol", [2, pickle.DEFAULT_PROTOCOL, 5])
def test_cifar10_tiny_files(tmp_path, protocol):
    batches = _write_cifar(tmp_path / "cifar-10-batches-py", protocol=protocol)
    d = D.load("cifar10", path=tmp_path)  # found in the conventional sub-folder
    assert d.x_train.shape == (30, 3072) and d.x_test.shape == (6, 3072)
    assert d.x_train.dtype == np.float32 and 0 <= d.x_train.min() and d.x_train.max() <= 1
    np.testing.assert_allclose(d.x_test * 255, batches["test_batch"][b"data"], atol=1e-3)
    np.testing.assert_array_equal(d.y_train[6:12], batches["data_batch_2"][b"labels"])


def test_cifar10_via_env_and_subsample(tmp_path, monkeypatch):
    _write_cifar(tmp_path)
    monkeypatch.setenv("NOISESIM_DATA", str(tmp_path))
    d = D.load("cifar10", n_train=7, n_test=2)
    assert d.x_train.shape == (7, 3072) and d.y_test.shape == (2,)


def test_cifar10_python2_pickle(tmp_path):
    """The real batches were written by Python 2: str opcodes, numpy.core module names."""
    p = (b"\x80\x02}(U\x04data"
         b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x00\x85U\x01b\x87R"
         b"(K\x01K\x02M\x00\x0c\x86cnumpy\ndtype\nU\x02u1K\x00K\x01\x87R"
         b"(K\x03U\x01|NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tbI00\n"
         b"T\x00\x18\x00\x00" + bytes(range(256)) * 24 + b"tb"
         b"U\x06labels](K\x07K\x03eu.")
    (tmp_path / "b").write_bytes(p)
    x, y = L.read_cifar10_batch(tmp_path / "b")
    assert x.shape == (2, 3072) and x.dtype == np.uint8 and x[1, 1] == 1
    assert y.tolist() == [7, 3]


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_cifar10_forbidden_global_is_refused(tmp_path):
    _write_cifar(tmp_path)
    marker = tmp_path / "pwned"
    evil = {b"data": _Evil(marker), b"labels": [0]}
    (tmp_path / "data_batch_3").write_bytes(pickle.dumps(evil, protocol=2))
    with pytest.raises(ValueError, match="forbidden global"):
        D.load("cifar10", path=tmp_path)
    assert not marker.exists()
    (tmp_path / "x.pkl").write_bytes(pickle.dumps(_Evil(marker)))
    with pytest.raises(ValueError, match="system"):
        L.safe_load_pickle(tmp_path / "x.pkl")
    assert not marker.exists()


def test_cifar10_bad_contents(tmp_path):
    _write_cifar(tmp_path)
    (tmp_path / "test_batch").write_bytes(pickle.dumps({b"data": np.zeros((2, 10), np.uint8),
                                                        b"labels": [0, 1]}))
    with pytest.raises(ValueError, match="test_batch"):
        D.load("cifar10", path=tmp_path)
    (tmp_path / "test_batch").write_bytes(b"\x80\x02}q\x00(")  # truncated pickle
    with pytest.raises(ValueError, match="test_batch"):
        D.load("cifar10", path=tmp_path)


# --------------------------------------------------------------------------- MNIST (IDX)
def _idx(arr: np.ndarray) -> bytes:
    return bytes([0, 0, 0x08, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape) + \
        arr.astype(np.uint8).tobytes()


def _write_mnist(folder, n_train=5, n_test=3, gz=False, seed=0):
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {"train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28)),
              "train-labels-idx1-ubyte": rng.integers(0, 10, n_train),
              "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28)),
              "t10k-labels-idx1-ubyte": rng.integers(0, 10, n_test)}
    for name, a in arrays.items():
        if gz:
            with gzip.open(folder / (name + ".gz"), "wb") as f:
                f.write(_idx(a))
        else:
            (folder / name).write_bytes(_idx(a))
    return arrays


@pytest.mark.parametrize("gz", [False, True])
def test_mnist_tiny_idx(tmp_path, gz):
    arrays = _write_mnist(tmp_path, gz=gz)
    d = D.load("mnist", path=tmp_path)
    assert d.x_train.shape == (5, 784) and d.x_test.shape == (3, 784)
    assert d.x_train.dtype == np.float32 and d.x_train.max() <= 1.0
    np.testing.assert_array_equal(d.y_train, arrays["train-labels-idx1-ubyte"])
    np.testing.assert_allclose(d.x_test * 255, arrays["t10k-images-idx3-ubyte"].reshape(3, -1),
                               atol=1e-3)


def test_mnist_truncated_and_corrupt(tmp_path):
    _write_mnist(tmp_path)
    f = tmp_path / "train-images-idx3-ubyte"
    good = f.read_bytes()
    f.write_bytes(good[:-100])
    with pytest.raises(ValueError, match="train-images-idx3-ubyte.*truncated"):
        D.load("mnist", path=tmp_path)
    f.write_bytes(good[:6])
    with pytest.raises(ValueError, match="train-images-idx3-ubyte.*truncated"):
        D.load("mnist", path=tmp_path)
    f.write_bytes(b"\x01\x02" + good[2:])
    with pytest.raises(ValueError, match="magic"):
        D.load("mnist", path=tmp_path)
    # A header claiming a huge payload is refused before anything is allocated.
    f.write_bytes(bytes([0, 0, 8, 3]) + struct.pack(">3I", 2**31, 28, 28))
    with pytest.raises(ValueError, match="too large|truncated"):
        D.load("mnist", path=tmp_path)
    f.write_bytes(good)
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(_idx(np.zeros(4)))
    with pytest.raises(ValueError, match="5 images"):
        D.load("mnist", path=tmp_path)


def test_mnist_truncated_gzip(tmp_path):
    _write_mnist(tmp_path, gz=True)
    f = tmp_path / "t10k-images-idx3-ubyte.gz"
    f.write_bytes(f.read_bytes()[:-30])
    with pytest.raises(ValueError, match="t10k-images-idx3-ubyte.gz"):
        D.load("mnist", path=tmp_path)


# --------------------------------------------------------------------------- SARCOS
def _write_sarcos(folder, n_train=40, n_test=10, seed=0):
    from scipy.io import savemat
    rng = np.random.default_rng(seed)
    tr = rng.normal(3.0, 2.0, (n_train, 28))
    te = rng.normal(3.0, 2.0, (n_test, 28))
    savemat(folder / "sarcos_inv.mat", {"sarcos_inv": tr})
    savemat(folder / "sarcos_inv_test.mat", {"sarcos_inv_test": te})
    return tr, te


def test_sarcos_tiny_mat(tmp_path):
    tr, te = _write_sarcos(tmp_path)
    d = D.load("sarcos", path=tmp_path)
    assert d.task == "regression" and d.n_classes is None
    assert d.x_train.shape == (40, 21) and d.y_train.shape == (40, 7) and d.x_test.shape == (10, 21)
    assert d.n_features == 21 and d.n_outputs == 7
    assert d.y_train.dtype == np.float32
    np.testing.assert_allclose(d.x_train.mean(0), 0, atol=1e-5)
    np.testing.assert_allclose(d.y_train.std(0), 1, atol=1e-5)
    np.testing.assert_allclose(d.y_test * d.meta["y_std"] + d.meta["y_mean"], te[:, 21:], rtol=1e-5)
    assert d.targets(d.y_test).shape == (10, 7)
    assert D.load("sarcos", path=tmp_path, n_train=5).x_train.shape == (5, 21)


def test_sarcos_wrong_shape(tmp_path):
    from scipy.io import savemat
    _write_sarcos(tmp_path)
    savemat(tmp_path / "sarcos_inv.mat", {"sarcos_inv": np.zeros((4, 27))})
    with pytest.raises(ValueError, match="sarcos_inv.mat"):
        D.load("sarcos", path=tmp_path)
    savemat(tmp_path / "sarcos_inv.mat", {"other": np.zeros((4, 28))})
    with pytest.raises(ValueError, match="sarcos_inv"):
        D.load("sarcos", path=tmp_path)


# --------------------------------------------------------------------------- Tiny ImageNet
def test_tiny_imagenet_npz(tmp_path):
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "tiny-imagenet.npz",
             x_train=rng.integers(0, 256, (6, 64, 64, 3), dtype=np.uint8), y_train=np.arange(6) % 3,
             x_test=rng.integers(0, 256, (2, 64, 64, 3), dtype=np.uint8), y_test=np.array([0, 2]))
    d = D.load("tiny-imagenet", path=tmp_path, n_train=4)
    assert d.x_train.shape == (4, 12288) and d.x_test.shape == (2, 12288)
    assert d.n_classes == 3 and d.x_train.max() <= 1.0


def test_tiny_imagenet_folder(tmp_path):
    Image = pytest.importorskip("PIL.Image")
    root = tmp_path / "tiny-imagenet-200"
    wnids = ["n02", "n01"]
    rng = np.random.default_rng(0)
    for w in wnids:
        (root / "train" / w / "images").mkdir(parents=True)
        for j in range(2):
            Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(
                root / "train" / w / "images" / f"{w}_{j}.JPEG")
    (root / "val" / "images").mkdir(parents=True)
    Image.fromarray(np.zeros((64, 64), np.uint8)).save(root / "val" / "images" / "val_0.JPEG")
    (root / "wnids.txt").write_text("\n".join(wnids) + "\n")
    (root / "val" / "val_annotations.txt").write_text("val_0.JPEG\tn02\t0\t0\t10\t10\n")
    d = D.load("tiny-imagenet", path=tmp_path, n_train=3)
    assert d.x_train.shape == (3, 12288) and d.x_test.shape == (1, 12288)
    assert d.n_classes == 2
    np.testing.assert_array_equal(d.y_train, [0, 1, 0])  # round-robin over sorted wnids
    assert d.y_test.tolist() == [1] and d.x_test.max() < 0.05  # grey image -> RGB
