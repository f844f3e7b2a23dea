"""What adding to the simulator takes, checked by doing it outside the packages: an update
model is one function in ``noisesim.update.MODELS``; a rule is one class, registered by name —
the device, the traces and the saved state need nothing else."""
from __future__ import annotations

import h5py
import numpy as np

import noisesim
import rules
import scenarios
from noisesim import update
from rules.base import Rule, batch_outer, forward_with_output_error, host_float


def sign_update(tile, delta):
    """A made-up model: every device moves by ±dw_min·w_max, exactly (signSGD on the device)."""
    xp = tile.xp
    gp, gm = tile.pair
    step = xp.sign(delta) * tile.config.dw_min
    hi, lo = (b if b is not None else 1 for b in tile.bounds)
    new = xp.minimum(xp.maximum((gp - gm) + step, -lo), hi)
    tile.write_pair(xp.maximum(new, 0), xp.maximum(-new, 0), changed=step != 0)


def test_a_new_update_model_is_one_function(monkeypatch):
    monkeypatch.setitem(update.MODELS, "sign", sign_update)
    dev = noisesim.DeviceConfig.preset("ideal", w_max=1.0, update="sign", dw_min=0.01, drift_nu=0.05, t0=1.0)
    net = noisesim.Network.mlp([8, 4], device=dev, seed=0, backend="numpy")
    w0 = net.get_state()["W0"]
    net.apply_update(0, np.full((4, 8), 1e-6, np.float32))
    np.testing.assert_allclose(net.get_state()["W0"], np.clip(w0 + 0.01, -1, 1), atol=1e-6)
    net.advance_time(100.0)                                     # drift clocks were restarted by the write
    twin = noisesim.Network.from_state(net.state())
    np.testing.assert_array_equal(twin.get_state()["W0"], net.get_state()["W0"])


class SignBackprop(Rule):
    """BP whose update keeps only the sign of each gradient entry, with a running count of the
    steps it took (its own state). Record keys: ``g``, ``inputs`` per layer."""

    name = "sign-bp"
    needs = ("observe", "backward")
    state_attrs = ("counts",)

    def init(self, net):
        super().init(net)
        self.counts = [np.zeros(1) for _ in range(net.n_layers)]

    def estimate(self, net, x, t):
        p, losses, g = forward_with_output_error(self, net, x, t)
        gs = [None] * net.n_layers
        gs[-1] = g
        for l in range(net.n_layers - 1, 0, -1):
            g = net.backward_read(l, g) * net.act_grad(l - 1, p.pre[l - 1])
            gs[l - 1] = g
        record = {"g": gs, "inputs": p.inputs}
        return noisesim.Estimate(self.updates_from_record(record), host_float(losses.mean()), 1, p.inputs, p.out,
                                 losses, record)

    def updates_from_record(self, record):
        return [np.sign(batch_outer(g, x)) * 1e-2 for g, x in zip(record["g"], record["inputs"])]

    def apply(self, net, est):
        super().apply(net, est)
        for c in self.counts:
            c += 1


def test_a_new_rule_is_one_class_registered_by_name(tmp_path, monkeypatch):
    monkeypatch.setitem(noisesim.registry.RULES, "sign-bp", lambda **options: SignBackprop(**options))
    data = scenarios.load("digits", n_train=256, n_test=64)
    net = noisesim.Network.mlp([64, 12, 10], seed=2, backend="numpy")
    rule = SignBackprop(lr=1e-2)
    hist = scenarios.train(net, rule, data, epochs=1, batch_size=64, progress=False, trace=tmp_path / "t.h5")
    assert hist.steps == 4 and rule.counts[0][0] == 4
    with h5py.File(tmp_path / "t.h5", "r") as f:                # its record keys became datasets
        assert f["steps/g/0"].shape == (4, 64, 12) and f["steps/inputs/1"].shape == (4, 64, 12)
        assert f["final_state/rule/extra/counts/0"][()] == [4.0]
    res = noisesim.trace.replay(tmp_path / "t.h5")              # found through the registry
    assert res.matches, res.max_abs_diff
    s = rule.state()
    again = SignBackprop(lr=1e-2)
    again.load_state(s, net)
    assert again.counts[1][0] == 4 and again.opt_state["t"] == 4
    assert rules.RULES.get("sign-bp") is None                  # the rules package was not touched
