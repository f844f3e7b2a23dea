"""Complete state: a network and a rule saved mid-training, restored in a fresh process, train
on bit for bit like the run that never stopped — every rule of the generic table, on the
``ideal``, ``pcm`` (write-verify, drift, programming noise) and ``reram`` (pulsed, d2d, c2c)
devices. Plus the HDF5 layout, the checks on reading, and the random streams alone."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import types
import zlib
from pathlib import Path

import h5py
import numpy as np
import pytest

import noisesim
import rules
from noisesim import DeviceConfig, Network
from noisesim.backend import Backend, Streams, get_backend
from noisesim.config import ACCESS_LEVELS
from noisesim.state import StateError
from test_rules import IDS, RULES_UNDER_TEST

ROOT = Path(__file__).resolve().parents[1]
SIZES = [12, 10, 8, 5]
BEFORE, AFTER = 3, 3       # steps before the checkpoint, and after it
DT = 50.0                  # device seconds between steps (drift moves on)

# Run in the parent to make the checkpoints and in a fresh process to continue from them.
CONTINUE = """
import json, sys
import numpy as np
import noisesim, rules
sys.path.insert(0, sys.argv[2])
from test_state import batches, train_on
out = {}
for case in json.loads(open(sys.argv[1] + "/cases.json").read()):
    s = noisesim.state.load(f"{sys.argv[1]}/{case}.h5")
    net = noisesim.Network.from_state(s["network"])
    rule = rules.from_state(s["rule"], net)
    losses = train_on(net, rule, batches(case)[len(s["losses"]):])
    np.savez(f"{sys.argv[1]}/{case}-resumed.npz", losses=np.array(losses), **net.get_state())
    noisesim.state.save(f"{sys.argv[1]}/{case}-resumed.h5", {"network": net.state(), "rule": rule.state()})
"""


def device(preset: str) -> DeviceConfig:
    return DeviceConfig.preset(preset, access=ACCESS_LEVELS)


def batches(case: str):
    rng = np.random.default_rng(zlib.crc32(case.encode()))
    out = []
    for _ in range(BEFORE + AFTER):
        x = rng.standard_normal((8, SIZES[0])).astype(np.float32)
        out.append((x, np.eye(SIZES[-1], dtype=np.float32)[rng.integers(0, SIZES[-1], 8)]))
    return out


def train_on(net, rule, bs) -> list:
    losses = []
    for x, t in bs:
        losses.append(rule.step(net, x, t).loss)
        net.advance_time(DT)
    return losses


def start(preset, name, options):
    net = Network.mlp(SIZES, device=device(preset), seed=7, backend="numpy")
    rule = rules.make(name, **options)
    rule.init(net)
    return net, rule


@pytest.mark.parametrize("preset", ["ideal", "pcm", "reram"])
def test_resume_in_a_fresh_process_is_bit_identical(tmp_path, preset):
    cases, expected = [], {}
    for i, (name, options) in enumerate(RULES_UNDER_TEST):
        case = f"{preset}-{IDS[i]}"
        bs = batches(case)
        net, rule = start(preset, name, options)
        losses = train_on(net, rule, bs[:BEFORE])
        noisesim.state.save(tmp_path / f"{case}.h5", {"network": net.state(), "rule": rule.state(),
                                                      "losses": np.array(losses)})
        expected[case] = (train_on(net, rule, bs[BEFORE:]), net.get_state(), net.state(), rule.state())
        cases.append(case)
    (tmp_path / "cases.json").write_text(json.dumps(cases))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OPENBLAS_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-c", CONTINUE, str(tmp_path), str(ROOT / "tests")], env=env,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    for case in cases:
        losses, weights, net_state, rule_state = expected[case]
        got = np.load(tmp_path / f"{case}-resumed.npz")
        assert got["losses"].tolist() == losses, case                       # bit for bit, every step
        for k, w in weights.items():
            assert np.array_equal(got[k], w), (case, k)
        resumed = noisesim.state.load(tmp_path / f"{case}-resumed.h5")
        # every device array (pairs, clocks, targets, fabrication draws) and the rule's state
        assert noisesim.state.differences(resumed["network"], net_state, skip=("streams",)) == {}, case
        assert noisesim.state.differences(resumed["rule"], rule_state) == {}, case


def test_a_restored_run_differs_without_its_streams(tmp_path):
    """Control: the same weights and rule state with the random streams at their start give
    another run on a stochastic device — what the saved stream positions are for."""
    net, rule = start("reram", "danp", {})
    bs = batches("control")
    train_on(net, rule, bs[:BEFORE])
    s = net.state()
    s["streams"] = Network.mlp(SIZES, device=device("reram"), seed=7, backend="numpy").streams.state()
    twin = Network.from_state(s)
    twin_rule = rules.from_state(rule.state(), twin)
    a, b = train_on(net, rule, bs[BEFORE:]), train_on(twin, twin_rule, bs[BEFORE:])
    assert a != b


def test_state_file_is_plain_hdf5(tmp_path):
    net, rule = start("pcm", "dbp", {})
    train_on(net, rule, batches("plain")[:2])
    path = tmp_path / "ckpt.h5"
    noisesim.state.save(path, {"network": net.state(), "rule": rule.state()})
    with h5py.File(path, "r") as f:
        names = []
        f.visit(names.append)
        for want in ("network/tiles/0/w", "network/tiles/0/gp", "network/tiles/1/tprog", "network/tiles/2/target",
                     "network/tiles/0/nu_p", "network/decorrelation/0", "rule/optimizer/m/0", "rule/optimizer/v/2"):
            assert want in names, want
        assert f["network/tiles/0/gp"].dtype == np.float32 and f["network/tiles/0/gp"].shape == (10, 12)
        np.testing.assert_array_equal(f["network/tiles/1/w"][()], net.tiles[1].state()["w"])
        cfg = json.loads(f["network"].attrs["json"])["config"]
        assert cfg["sizes"] == SIZES and cfg["device"]["update"] == "write_verify"
        assert json.loads(f["rule/optimizer"].attrs["json"])["t"] == 2
    assert b"pickle" not in path.read_bytes()


def test_state_reading_refuses_links_foreign_data_and_damage(tmp_path):
    net, rule = start("ideal", "bp", {})
    path = tmp_path / "ckpt.h5"
    noisesim.state.save(path, {"network": net.state(), "rule": rule.state()})
    assert noisesim.state.load(path)["network"]["config"]["sizes"] == SIZES

    def damaged(edit, match):
        p = tmp_path / "bad.h5"
        p.write_bytes(path.read_bytes())
        with h5py.File(p, "r+") as f:
            edit(f)
        with pytest.raises(StateError, match=match):
            noisesim.state.load(p)

    damaged(lambda f: f["network/tiles/0"].__setitem__("extra", h5py.SoftLink("/network/tiles/1/w")), "SoftLink")
    damaged(lambda f: f["network/tiles/0"].__setitem__("extra", h5py.ExternalLink("other.h5", "/x")), "ExternalLink")
    damaged(lambda f: f["network/tiles/0"].create_dataset("extra", data=np.array([b"x"])), "not a numeric")

    def flip(f):
        w = f["network/tiles/0/w"]
        w[0, 0] = w[0, 0] + 1
    damaged(flip, "checksum mismatch in '/network/tiles/0/w'")
    damaged(lambda f: f["network"].attrs.__setitem__("json", "{}"), "does not match its checksum")
    with pytest.raises(StateError, match="more than the allowed"):
        noisesim.state.load(path, max_bytes=100)
    with pytest.raises(StateError, match="not a noisesim state file"):
        with h5py.File(tmp_path / "other.h5", "w"):
            pass
        noisesim.state.load(tmp_path / "other.h5")


def test_loading_a_state_that_does_not_fit_changes_nothing():
    net, rule = start("reram", "bp", {})
    other = Network.mlp([12, 10, 8, 6], device=device("reram"), seed=7, backend="numpy")
    before = net.state()
    with pytest.raises(ValueError, match="sizes"):
        net.load_state(other.state())
    bad = net.state()
    bad["tiles"]["2"]["gp"] = bad["tiles"]["2"]["gp"][:, :3]
    with pytest.raises(ValueError, match="tile state: gp has shape"):
        net.load_state(bad)
    bad = net.state()
    bad["streams"]["names"].append("one-more")
    with pytest.raises(ValueError, match="random-stream state"):
        net.load_state(bad)
    assert noisesim.state.differences(net.state(), before) == {}
    with pytest.raises(ValueError, match="does not fit this rule"):
        rules.make("bp", lr=0.5).load_state(rule.state(), net)
    with pytest.raises(ValueError, match="not a noisesim.Network state"):
        Network.from_state(rule.state())


def test_rule_state_before_init_and_feedback_matrices():
    net = Network.mlp(SIZES, device=device("ideal"), seed=7, backend="numpy")
    fa = rules.make("fa")
    s = fa.state()
    assert s["initialised"] is False and s["optimizer"] is None
    restored = rules.from_state(s, net)                 # initialises, like a fresh start
    assert restored.optimizer is not None and len(restored.feedback) == 3
    fa.init(net)
    s = fa.state()
    assert s["extra"]["feedback"]["0"] is None and s["extra"]["feedback"]["1"].shape == (8, 10)
    again = rules.from_state(s, net)
    for a, b in zip(again.feedback[1:], fa.feedback[1:]):
        np.testing.assert_array_equal(a, b)             # not redrawn


def test_stream_state_covers_the_split_generator_and_cupy_host_keys(monkeypatch):
    be = get_backend("numpy")
    s = Streams(5, be)
    g = s.get("inject")
    g.normal((600, 600))                                  # ≥ 2¹⁸ numbers: both PCG64 generators draw
    state = json.loads(json.dumps(s.state()))             # plain JSON
    assert state["generators"]["0"]["split"] is not None
    want = [g.normal((700, 700)), g.uniform((3,)), g.key(), g.permutation(10)]
    t = Streams(0, be)
    t.load_state(state)
    got = [t.get("inject").normal((700, 700)), t.get("inject").uniform((3,)), t.get("inject").key(),
           t.get("inject").permutation(10)]
    for a, b in zip(got, want):
        np.testing.assert_array_equal(a, b)
    # CuPy: keys and permutations come from the host PCG64 stream, which the state carries
    fake = types.ModuleType("cupy")
    fake.random = types.SimpleNamespace(XORWOW=lambda seed: None, Generator=lambda bg: None)
    monkeypatch.setitem(sys.modules, "cupy", fake)
    cp = Streams(9, Backend("cupy", fake, np.float32))
    [cp.get("read").key() for _ in range(3)]
    st = cp.state()
    assert st["generators"]["0"]["device"] is None        # no array drawn: no GPU generator made
    keys = [cp.get("read").key() for _ in range(4)]
    cp2 = Streams(9, Backend("cupy", fake, np.float32))
    cp2.load_state(st)
    assert [cp2.get("read").key() for _ in range(4)] == keys


class _FakeDeviceArray(np.ndarray):
    """A host array standing in for a CuPy array (``.get()`` copies it to the host)."""

    def get(self):
        return np.array(self)


def test_cupy_generator_states_are_saved_as_their_state_bytes(monkeypatch):
    """On CuPy a stream's array draws come from cuRAND XORWOW states on the GPU; the stream
    state carries their bytes, and loading them continues the draws. (A stand-in generator whose
    numbers follow from its state bytes, as cuRAND's do.)"""
    class XORWOW:
        def __init__(self, seed):
            self._state = np.full(48, seed % 251, np.uint8).view(_FakeDeviceArray)

    class Gen:
        def __init__(self, bg):
            self.bit_generator = bg

        def random(self, size, dtype):
            s = self.bit_generator._state
            s[...] = (s.astype(np.int64) * 31 + 7) % 251            # advance the state
            return np.resize(s.astype(dtype) / 251.0, size)

    fake = types.ModuleType("cupy")
    fake.random = types.SimpleNamespace(XORWOW=XORWOW, Generator=Gen)
    fake.asarray = np.asarray
    monkeypatch.setitem(sys.modules, "cupy", fake)
    be = Backend("cupy", fake, np.float32)
    a = Streams(3, be)
    a.get("update").uniform((4,))
    a.get("read").key()
    st = a.state()
    dev = st["generators"]["0"]["device"]
    assert isinstance(dev, np.ndarray) and dev.dtype == np.uint8 and dev.shape == (48,)
    assert st["generators"]["1"]["device"] is None                   # keys only: no GPU generator
    want = [a.get("update").uniform((4,)) for _ in range(3)] + [a.get("read").key()]
    b = Streams(3, be)
    b.load_state(st)
    got = [b.get("update").uniform((4,)) for _ in range(3)] + [b.get("read").key()]
    for x, y in zip(got, want):
        np.testing.assert_array_equal(x, y)
    st["generators"]["0"]["device"] = dev[:10]
    with pytest.raises(ValueError, match="does not fit this GPU's generator"):
        Streams(3, be).load_state(st)
