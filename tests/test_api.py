"""The Python API a user writes (names fixed by the spec so scripts keep working)."""
from __future__ import annotations

import numpy as np


def test_user_script_from_the_readme_runs():
    import noisesim
    import rules
    import scenarios

    dev = noisesim.DeviceConfig.preset("ideal", node_noise=1e-3)
    net = noisesim.Network.mlp([64, 256, 10], device=dev, seed=0, backend="numpy")
    x = scenarios.load("digits").x_train[:100]
    p = net.forward(x)
    assert p.inputs[0].shape == (100, 64) and p.pre[1].shape == (100, 10)
    assert p.post[0].shape == (100, 256) and p.out.shape == (100, 10)
    assert not hasattr(p, "noise")
    rule = rules.make("danp", baseline="noisy", lr=1e-3)
    history = scenarios.train(net, rule, scenarios.load("digits"), epochs=5, progress=False)
    assert history.last("test_acc") > 0.75   # measured 0.81; chance is 0.10
    assert history.forward_passes == 2 * history.steps
    t = np.eye(10, dtype=np.float32)[scenarios.load("digits").y_train[:100]]
    updates = rule.estimate(net, x, t).updates
    assert [u.shape for u in updates] == [(256, 64), (10, 256)]
    angles = rules.alignment(net, rule, x, t)
    assert set(angles) == {0, 1, "all"} and all(0 <= a <= 180 for a in angles.values())


def test_train_records_a_trace_that_replays_exactly(tmp_path):
    import noisesim
    import noisesim.trace
    import rules
    import scenarios

    data = scenarios.load("digits", n_train=256, n_test=64)
    net = noisesim.Network.mlp([64, 32, 10], seed=1, backend="numpy")
    path = tmp_path / "not" / "yet" / "run.h5"   # folders are created
    history = scenarios.train(net, rules.make("danp", baseline="noisy"), data, epochs=2,
                              batch_size=64, progress=False, trace=path)
    assert history.trace == str(path)
    result = noisesim.trace.replay(str(path))
    assert result.matches
    for key, value in net.get_state().items():
        np.testing.assert_array_equal(noisesim.trace.open_trace(str(path)).final_state()[key], value)
