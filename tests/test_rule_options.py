"""What each rule takes: documented options, clear errors for the others, σ in one line."""
import inspect
import re

import numpy as np
import pytest

import noisesim
import rules
from noisesim.backend import to_numpy


def _introducer(cls, option):
    """The most basic class in ``cls``'s MRO whose ``__init__`` takes ``option``."""
    return next(k for k in reversed(cls.__mro__) if k is not object and "__init__" in k.__dict__
                and option in inspect.signature(k.__dict__["__init__"]).parameters)


@pytest.mark.parametrize("name", sorted(rules.RULES))
def test_every_option_is_documented_where_it_is_introduced(name):
    cls, fixed = rules.RULES[name]
    opts = rules.options(name)
    assert {"lr", "optimizer", "loss", "alpha"} <= set(opts) and not set(fixed) & set(opts)
    for opt in opts:
        doc = inspect.getdoc(_introducer(cls, opt)) or ""
        assert re.search(rf"^\s*{opt}\s*:", doc, re.M), f"{name}: option {opt!r} undocumented"
    rules.make(name, **opts)          # the listed defaults are accepted as they are


@pytest.mark.parametrize("name", ["anp", "danp", "regression", "dregression"])
def test_sigma_for_an_observing_rule_says_where_sigma_lives(name):
    with pytest.raises(ValueError) as e:
        rules.make(name, sigma=1e-2)
    msg = str(e.value)
    assert repr(name) in msg and "intrinsic node noise" in msg
    assert "node_noise=0.01" in msg and "rules.with_sigma" in msg
    cls, fixed = rules.RULES[name]
    with pytest.raises(TypeError, match="node_noise"):
        cls(sigma=1e-2, **fixed)


def test_unknown_option_lists_the_options_the_rule_takes():
    with pytest.raises(ValueError, match=r"rule 'bp' takes no option 'sigma'; its options: lr, optimizer"):
        rules.make("bp", sigma=1e-3)
    with pytest.raises(ValueError, match=r"rule 'danp' takes no option 'smaples'.*samples"):
        rules.make("danp", smaples=3)


def test_with_sigma_sets_the_device_and_the_injecting_rule():
    dev, rule = rules.with_sigma("np", 1e-2, samples=3)
    assert dev.node_noise == 1e-2 and rule.sigma == 1e-2 and rule.samples == 3
    assert dev == noisesim.DeviceConfig.preset("ideal", node_noise=1e-2)
    dev, rule = rules.with_sigma("danp", 2e-3, device="pcm", baseline="clean")
    assert dev == noisesim.DeviceConfig.preset("pcm", node_noise=2e-3)
    assert rule.label == "DANP" and not hasattr(rule, "sigma")
    base = noisesim.DeviceConfig.preset("reram")
    dev, _ = rules.with_sigma("regression", 5e-3, device=base)
    assert dev == base.replace(node_noise=5e-3)
    with pytest.raises(ValueError, match="not a perturbation rule"):
        rules.with_sigma("bp", 1e-3)
    with pytest.raises(ValueError, match=r"sigma=-1.0 is out of range"):
        rules.with_sigma("anp", -1.0)
    with pytest.raises(ValueError, match="neither a DeviceConfig nor a preset"):
        rules.with_sigma("anp", 1e-3, device=3)


@pytest.mark.parametrize("name", ["anp", "np"])
def test_one_line_sweeps_sigma_alike_for_anp_and_np(name):
    """The same line gives each rule a perturbation of std σ: for ANP layer 1's activity
    difference against a clean reference is the device's node noise itself; for NP (whose
    clean baseline gates that noise) the injected ε."""
    rng = np.random.default_rng(0)
    x = rng.random((200, 20), dtype=np.float32)
    t = np.eye(5, dtype=np.float32)[rng.integers(0, 5, 200)]
    for sigma in (1e-3, 1e-2):
        device, rule = rules.with_sigma(name, sigma, baseline="clean", samples=4)
        net = noisesim.Network.mlp([20, 16, 5], device=device, seed=1, backend="numpy")
        rule.init(net)
        rec = rule.estimate(net, x, t).record
        d1 = to_numpy(rec["da"][0] if name == "anp" else rec["eps"][0])
        assert d1.std() == pytest.approx(sigma, rel=0.05)
