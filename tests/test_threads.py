"""BLAS threads chosen per product size (noisesim.threads): small products on one thread,
large ones on the cores other processes leave free, never above an explicit limit."""
from __future__ import annotations

import numpy as np
import pytest
from threadpoolctl import threadpool_limits

import noisesim
import rules
import scenarios
from noisesim import threads

blas = threads._blas()
pytestmark = pytest.mark.skipif(not blas.libs, reason="no BLAS that threadpoolctl can drive")


@pytest.fixture
def two_threads():
    """BLAS allowed two threads for the test (whatever the machine's default)."""
    with threadpool_limits(limits=2, user_api="blas"):
        if blas.get() < 2:
            pytest.skip("BLAS runs on one thread here")
        yield


def test_small_products_get_one_thread_and_the_count_is_restored(two_threads):
    with threads.for_flops(2 * 32 * 256 * 256):
        assert blas.get() == 1
    assert blas.get() == 2


def test_large_products_get_the_free_cores(two_threads, monkeypatch):
    monkeypatch.setattr(threads, "free_cores", lambda: 2)
    with threads.for_flops(2 * 1000 * 3072 * 1024):
        assert blas.get() == 2
    monkeypatch.setattr(threads, "free_cores", lambda: 1)       # the other core is busy
    with threads.for_flops(2 * 1000 * 3072 * 1024):
        assert blas.get() == 1
    assert blas.get() == 2


def test_an_explicit_limit_always_wins(monkeypatch):
    monkeypatch.setattr(threads, "free_cores", lambda: 64)
    with threadpool_limits(limits=1, user_api="blas"):
        with threads.for_flops(1e12):
            assert blas.get() == 1


def test_the_choice_can_be_switched_off(two_threads, monkeypatch):
    monkeypatch.setattr(threads, "AUTO", False)
    with threads.for_flops(10):
        assert blas.get() == 2


def test_threads_for_and_layer_flops():
    assert threads.threads_for(threads.SMALL_FLOPS / 2, 8) == 1
    assert threads.threads_for(1e12, 1) == 1
    assert threads.layer_flops([64, 256, 10], 32) == 2 * 32 * 256 * 256      # R of the hidden layer's input
    assert threads.layer_flops([784, 256, 10], 32) == 2 * 32 * 784 * 784
    assert threads.layer_flops([3072, 1024, 10], 1000) == 2 * 1000 * 3072 * 3072    # decorrelation of the input
    assert 1 <= threads.free_cores() <= threads._cores()


def test_a_network_pass_and_a_training_step_of_small_layers_run_on_one_thread(two_threads):
    seen = []
    net = noisesim.Network.mlp([64, 32, 10], device=noisesim.DeviceConfig.preset("ideal"), seed=0, backend="numpy")
    rule = rules.make("bp")
    estimate = rule.estimate

    def est(net_, x, t):
        seen.append(blas.get())
        return estimate(net_, x, t)
    rule.estimate = est
    scenarios.train(net, rule, scenarios.load("digits", n_train=64, n_test=32), epochs=1, batch_size=32,
                    progress=False)
    assert seen == [1, 1]
    assert blas.get() == 2
    check = net._check_input
    inside = []
    net._check_input = lambda x: (inside.append(blas.get()), check(x))[1]
    net.forward(np.zeros((8, 64), np.float32))          # a pass of small layers chooses one thread itself
    assert inside == [1] and blas.get() == 2
