"""scenarios.train's evaluation settings: how often and on how many training samples."""
import numpy as np
import pytest

import noisesim
import rules
import scenarios
from noisesim.backend import to_numpy
from scenarios.train import eval_subset, evaluate, train


@pytest.fixture(scope="module")
def digits():
    return scenarios.load("digits")


def _net(seed=0):
    dev = noisesim.DeviceConfig.preset("ideal", node_noise=1e-3)
    return noisesim.Network.mlp([64, 32, 10], device=dev, seed=seed, backend="numpy")


def test_eval_subset_is_fixed_evenly_spaced_and_sized():
    idx = np.arange(1437)[eval_subset(1437, 100)]
    assert len(idx) == 100 and np.all(np.diff(idx) == 14)
    assert len(np.arange(1437)[eval_subset(1437, None)]) == 1437
    assert len(np.arange(1437)[eval_subset(1437, 5000)]) == 1437
    assert len(np.arange(4000)[eval_subset(4000, 2000)]) == 2000


def test_evaluation_frequency_keeps_the_last_epoch_and_never_shifts_training(digits):
    """Evaluation draws from its own streams: evaluating less often gives the same weights."""
    runs = {}
    for every in (1, 3):
        net = _net()
        h = train(net, rules.make("danp", baseline="noisy", lr=1e-3), digits, epochs=7, batch_size=64,
                  progress=False, eval_every=every)
        runs[every] = (h, [to_numpy(net.weights(l)).copy() for l in range(net.n_layers)])
    assert [e["epoch"] for e in runs[1][0].epochs] == list(range(8))
    assert [e["epoch"] for e in runs[3][0].epochs] == [0, 3, 6, 7]
    for a, b in zip(runs[1][1], runs[3][1]):
        np.testing.assert_array_equal(a, b)
    assert runs[1][0].forward_passes == runs[3][0].forward_passes == 7 * 23 * 2
    for k in ("test_acc", "train_acc"):
        a, b = runs[3][0].column(k), runs[1][0].column(k)[[0, 3, 6, 7]]
        assert a[0] == b[0]           # same weights; later evaluations draw later eval noise:
        np.testing.assert_allclose(a, b, atol=0.02)         # close, not equal


def test_train_metrics_measured_on_the_chosen_subset(digits):
    hs = {}
    for n in (None, 200):
        net = _net(1)
        hs[n] = train(net, rules.make("bp", lr=1e-3), digits, epochs=2, progress=False, eval_train=n)
        sl = eval_subset(len(digits.x_train), n)
        loss, acc = evaluate(net, digits.x_train[sl], digits.y_train[sl], rules.Loss("cce"))
        assert hs[n].last("train_acc") == pytest.approx(acc, abs=1 / 200)
    a, b = hs[None].column("test_acc"), hs[200].column("test_acc")
    assert a[0] == b[0] and np.allclose(a, b, atol=0.02)   # the test split is always measured whole
    assert hs[None].last("train_acc") != hs[200].last("train_acc")   # a different sample of the split


@pytest.mark.parametrize("kw, field", [({"eval_every": 0}, "eval_every=0"), ({"eval_every": 1.5}, "eval_every=1.5"),
                                       ({"eval_train": 0}, "eval_train=0"), ({"eval_train": "all"}, "eval_train='all'")])
def test_bad_evaluation_settings_name_the_field(digits, kw, field):
    with pytest.raises(ValueError, match=field):
        train(_net(), rules.make("bp"), digits, epochs=1, progress=False, **kw)


def test_scenarios_take_the_evaluation_settings(tmp_path):
    from scenarios.cli import main
    assert main(["run", "quickstart", "--quick", "--no-progress", "--out", str(tmp_path / "q"),
                 "--set", "eval_every=2", "--set", "eval_train=100", "--set", "epochs=3"]) == 0
    import h5py
    with h5py.File(tmp_path / "q" / "results.h5") as f:
        epochs = [f[f"arrays/{name}/epoch"][()].tolist() for name in f["arrays"] if "epoch" in f[f"arrays/{name}"]]
    assert epochs and all(e == [0, 2, 3] for e in epochs)
