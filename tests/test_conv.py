"""Convolutional layers on crossbar tiles: the im2col mapping against a reference convolution,
shapes that do not fit, BP's conv gradient against finite differences, every rule's estimate
along BP's and every rule lowering a small ConvNet's loss, read-noise statistics per position."""
import numpy as np
import pytest
from scipy import signal

import rules
from noisesim import DeviceConfig, Network
from noisesim.layers import Conv, Dense, Flatten, build, parse


def quiet(**kw):
    """The ideal device with its node noise off: reads are exact products."""
    return DeviceConfig.preset("ideal", node_noise=0.0, access=("observe", "backward", "inject", "clean", "oracle"), **kw)


def reference_conv(x, W, lay):
    """``scipy.signal.correlate`` per (sample, output channel, input channel), strided and summed."""
    B = x.shape[0]
    C = lay.in_shape[-1]
    k = lay.kernel
    K = W[:, :lay.width].reshape(W.shape[0], *k, C)
    pad = [(0, 0)] + [(p, p) for p in lay.padding] + [(0, 0)]
    xp = np.pad(x.reshape(B, *lay.in_shape), pad)
    out = np.zeros((B, *lay.positions, W.shape[0]))
    steps = tuple(slice(None, None, s) for s in lay.stride)
    for b in range(B):
        for o in range(W.shape[0]):
            acc = sum(signal.correlate(xp[b, ..., c], K[o, ..., c], mode="valid") for c in range(C))
            out[b, ..., o] = acc[steps][tuple(slice(0, n) for n in lay.positions)]
            if lay.bias:
                out[b, ..., o] += W[o, -1]
    return out


@pytest.mark.parametrize("shape,spec", [
    ((12, 2), "c3x4"), ((13, 3), "c5x2s2p1"), ((11, 1), "c4x3s3p2"),
    ((8, 8, 1), "c3x3x5"), ((9, 7, 2), "c3x3x4s2p1"), ((10, 10, 3), "c5x3x2s2x1"),
])
def test_noise_free_conv_equals_reference_correlation(shape, spec):
    for bias in (False, True):
        net = Network.build(shape, spec + " f3", quiet(), seed=1, dtype="float64", bias=bias)
        lay = net.layers[0]
        W = net.weights(0)
        if bias:
            W[:, -1] = np.linspace(-0.5, 0.5, W.shape[0])
            net.tiles[0].restore(W)
        x = np.random.default_rng(2).standard_normal((3, int(np.prod(shape))))
        p = net.forward(x)
        assert p.pre[0].shape == (3, *lay.positions, lay.n_out)
        assert p.inputs[0].shape == (3, *lay.positions, lay.n_in)
        np.testing.assert_allclose(p.pre[0], reference_conv(x, W, lay), rtol=1e-12, atol=1e-12)


def test_float32_conv_within_dtype_tolerance():
    net = Network.build((16, 16, 3), "c3x3x8s2p1 c3x3x4 f10", quiet(), seed=3)
    x = np.random.default_rng(0).standard_normal((4, 16 * 16 * 3)).astype(np.float32)
    p = net.forward(x)
    ref = reference_conv(x.astype(np.float64), net.weights(0).astype(np.float64), net.layers[0])
    np.testing.assert_allclose(p.pre[0], ref, rtol=1e-4, atol=1e-5)
    ref1 = reference_conv(p.post[0].reshape(4, -1).astype(np.float64), net.weights(1).astype(np.float64),
                          net.layers[1])
    np.testing.assert_allclose(p.pre[1], ref1, rtol=1e-4, atol=1e-4)


def test_fold_is_the_adjoint_of_unfold():
    rng = np.random.default_rng(4)
    for shape, spec in (((9, 8, 3), "c3x3x2s2p1"), ((15, 2), "c4x2s3p2"), ((6, 6, 1), "c2x3x1s1x2")):
        lay = build(shape, spec)[0]
        x = rng.standard_normal((2, *shape))
        y = rng.standard_normal((2, *lay.positions, lay.width))
        assert np.isclose(np.sum(lay.unfold(x) * y), np.sum(x * lay.fold(y)))


def test_the_papers_convnets_are_one_line_each():
    net = Network.build((32, 32, 3), "c3x3x16s2 c3x3x32s2 c3x3x64 f1024 f10", seed=0)
    assert [l.out_shape for l in net.layers] == [(15, 15, 16), (7, 7, 32), (5, 5, 64), (1024,), (10,)]
    assert [(t.n_out, t.n_in) for t in net.tiles] == [(16, 27), (32, 144), (64, 288), (1024, 1600), (10, 1024)]
    tin = Network.build((64, 64, 3), "c5x5x32s2 c3x3x64s2 c5x5x128 f512 f512 f200", seed=0)
    assert [l.out_shape for l in tin.layers][:3] == [(30, 30, 32), (14, 14, 64), (10, 10, 128)]
    assert parse("c3x3x16s2, f10") == [Conv(16, (3, 3), 2, 0), Dense(10)]


@pytest.mark.parametrize("shape,spec,words", [
    ((5, 5, 1), "c7x7x2 f3", ["layer 0", "c7x7x2", "larger than its input", "(5, 5)"]),
    ((20,), "c3x4 f2", ["layer 0", "needs a spatial input", "(20,)"]),
    ((8, 2), "f5 c3x2", ["layer 1", "needs a spatial input", "(5,)"]),
    ((8, 8, 1), "c3x3x0 f2", ["layer 0", "channels=0"]),
    ((8, 8, 1), "c3x3x2s0 f2", ["layer 0", "stride"]),
    ((8, 8, 1), "c3x2x3x4 f2", ["layer 0", "c3x2x3x4"]),
    ((8, 8, 1), [Conv(2, (3, 3, 3))], ["layer 0", "3 values for 2 spatial axes"]),
    ((8, 8, 1), "q12", ["layer 0", "'q12' is not a layer"]),
    ((8, 8, 1), "c3x3x2 flat71 f4", ["flatten (flat71) before layer 1", "(6, 6, 2)", "width 72", "not 71"]),
    ((8, 8, 1), "c3x3x2 flat c3x3x2 f4", ["layer 1", "convolution after a flatten", "(6, 6, 2)"]),
    ((8, 8, 1), "c3x3x2 flat", ["flatten (flat) before layer 1", "no layer follows it"]),
    ((8, 8, 1), [Conv(2, 3), Flatten(0), Dense(4)], ["flatten (flat0)", "not 0"]),
])
def test_shapes_that_do_not_fit_fail_at_build(shape, spec, words):
    with pytest.raises(ValueError) as err:
        Network.build(shape, spec)
    for w in words:
        assert w in str(err.value)


def test_an_explicit_flatten_checks_its_width_and_builds_the_same_network():
    """``flat``/``flatN`` (or :class:`Flatten`) builds no layer: the network is the one built
    without it (same layers, same weights, same reads); ``flatN`` checks the width."""
    assert parse("c3x3x2, flatten flat72 f4") == [Conv(2, (3, 3), 1, 0), Flatten(), Flatten(72), Dense(4)]
    assert [f.spec() for f in (Flatten(), Flatten(72))] == ["flat", "flat72"]
    dev = DeviceConfig.preset("pcm")
    a = Network.build((8, 8, 1), "c3x3x2 flat72 f4", dev, seed=3, backend="numpy")
    b = Network.build((8, 8, 1), [Conv(2, 3), Dense(4)], dev, seed=3, backend="numpy")
    assert a.layers == b.layers and a.n_layers == 2
    x = np.random.default_rng(0).uniform(0, 1, (5, 64)).astype(np.float32)
    pa, pb = a.forward(x), b.forward(x)
    for l in range(2):
        np.testing.assert_array_equal(a.tiles[l].weights(), b.tiles[l].weights())
        np.testing.assert_array_equal(pa.pre[l], pb.pre[l])


def test_weights_that_do_not_fit_their_layers_fail_naming_both_shapes():
    good = Network.build((8, 8, 1), "c3x3x2 f4", seed=0)
    assert good.layers[1].in_shape == (6, 6, 2)
    ws = [np.zeros((2, 9)), np.zeros((4, 71))]                  # 6·6·2 = 72 flattened
    with pytest.raises(ValueError, match=r"layer 1 \(f4\): weights of shape \(4, 71\), expected \(4, 72\)"):
        Network(ws, layers="c3x3x2 f4", input_shape=(8, 8, 1))
    with pytest.raises(ValueError, match=r"layer 0 \(c3x3x2\): weights of shape \(2, 18\), expected \(2, 9\)"):
        Network([np.zeros((2, 18)), np.zeros((4, 72))], layers="c3x3x2 f4", input_shape=(8, 8, 1))   # 2 channels in
    with pytest.raises(ValueError, match="input_shape"):
        Network([np.zeros((2, 9))], layers="c3x3x2")


def small_convnet(seed=0, device=None, bias=False, decorrelate=False, dtype="float64", shape=(8, 8, 1),
                  spec="c3x3x3 c3x3x4s2 f6 f4"):
    return Network.build(shape, spec, device or quiet(), seed=seed, dtype=dtype, bias=bias,
                         decorrelate=decorrelate)


def batch(net, B=8, seed=1, classes=None):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((B, net.sizes[0]))
    n = net.sizes[-1]
    t = np.eye(n)[rng.integers(0, classes or n, B)]
    return x, t


@pytest.mark.parametrize("bias,decorrelate", [(False, False), (True, False), (True, True)])
def test_bp_conv_gradient_equals_finite_differences(bias, decorrelate):
    net = small_convnet(bias=bias, decorrelate=decorrelate)
    if decorrelate:       # a non-trivial R on every layer
        rng = np.random.default_rng(7)
        for l, lay in enumerate(net.layers):
            net.set_decorrelation(l, np.eye(lay.width) + 0.05 * rng.standard_normal((lay.width, lay.width)))
    x, t = batch(net)
    rule = rules.make("bp", loss="cce")
    rule.init(net)
    est = rule.estimate(net, x, t)
    loss = rules.losses.Loss("cce")
    h = 1e-6
    rng = np.random.default_rng(3)
    for l in range(net.n_layers):
        W = net.weights(l)
        for _ in range(4):
            i, j = rng.integers(0, W.shape[0]), rng.integers(0, W.shape[1])
            vals = []
            for s in (h, -h):
                Wp = W.copy()
                Wp[i, j] += s
                net.tiles[l].restore(Wp)
                vals.append(float(loss.per_sample(net.forward(x).out, t).mean()))
            net.tiles[l].restore(W)
            fd = (vals[0] - vals[1]) / (2 * h)
            assert est.updates[l][i, j] == pytest.approx(fd, rel=1e-5, abs=1e-9)


def test_exact_reference_agrees_with_bp_on_a_noiseless_conv_device():
    net = small_convnet(bias=True)
    x, t = batch(net)
    bp = rules.make("bp")
    bp.init(net)
    got = bp.estimate(net, x, t).updates
    for u, r in zip(got, rules.exact_gradients(net, x, t)):
        np.testing.assert_allclose(u, r, rtol=1e-10, atol=1e-12)


PERTURBATION = ["np", "inp", "anp", "wp", "regression"]


@pytest.mark.parametrize("name", PERTURBATION)
def test_every_perturbation_rule_points_along_bp_on_one_conv_layer(name):
    """A single conv layer (plus a linear readout of it): the averaged estimate's cosine with
    BP's gradient approaches 1 as samples grow."""
    sigma = 1e-4
    dev = DeviceConfig.preset("ideal", node_noise=sigma, access=("observe", "backward", "inject", "clean", "oracle"))
    net = Network.build((10, 2), "c3x3s1", dev, seed=2, dtype="float64", bias=True)
    x = np.random.default_rng(5).standard_normal((16, net.sizes[0]))
    t = np.random.default_rng(6).standard_normal((16, net.sizes[-1]))
    opts = dict(loss="mse", baseline="clean")
    if name in ("np", "inp", "wp"):
        opts["sigma"] = sigma
    ref = rules.exact_gradients(net, x, t, "mse")[0].ravel()
    cos = []
    for K in (4, 400) if name != "regression" else (4, 64):
        rule = rules.make(name, samples=K, **opts)
        rule.init(net)
        u = rule.estimate(net, x, t).updates[0].ravel()
        cos.append(float(u @ ref / np.linalg.norm(u) / np.linalg.norm(ref)))
    assert cos[1] > cos[0]
    assert cos[1] > (0.9 if name != "wp" else 0.6)


ALL = ["bp", "dbp", "fa", "dfa", "np", "dnp", "inp", "dinp", "anp", "danp", "wp", "regression"]


@pytest.fixture(scope="module")
def digits():
    from sklearn.datasets import load_digits
    d = load_digits()
    return (d.data[:256] / 16.0).astype(np.float32), np.eye(10)[d.target[:256]]


@pytest.mark.parametrize("name", ALL)
def test_every_rule_lowers_a_small_convnets_loss(name, digits):
    """Digits on two 2-D conv layers and a dense readout, with biases, 60 steps of 256 samples."""
    x, t = digits
    dev = DeviceConfig.preset("ideal", access=("observe", "backward", "inject", "clean", "oracle"))
    net = Network.build((8, 8, 1), "c3x3x8 c3x3x8s2 f10", dev, seed=0, bias=True)
    opts = {"samples": 20} if name in ("wp", "regression") else {}
    if name.endswith("np") or name == "wp":
        opts["baseline"] = "noisy"
    if name.startswith("d") and name != "dfa":
        opts["alpha"] = 1e-4
    rule = rules.make(name, lr=1e-2, **opts)
    rule.init(net)
    loss = rules.losses.Loss("cce")
    before = float(loss.per_sample(net.forward(x, purpose="eval").out, t).mean())
    for _ in range(60):
        rule.step(net, x, t)
    after = float(loss.per_sample(net.forward(x, purpose="eval").out, t).mean())
    assert after < 0.8 * before, (before, after)
    assert np.abs(net.weights(0)[:, -1]).max() > 0       # the biases learned too


def test_fa_with_its_feedback_set_to_the_forward_weights_is_bp():
    """FA's conv error path is BP's with ``B_l`` in place of ``W_l``: with ``B_l = W_l`` (and a
    noiseless device) the two updates agree — the fold, the bias column and R included."""
    net = small_convnet(bias=True, decorrelate=True)
    rng = np.random.default_rng(9)
    for l, lay in enumerate(net.layers):
        net.set_decorrelation(l, np.eye(lay.width) + 0.05 * rng.standard_normal((lay.width, lay.width)))
    x, t = batch(net)
    fa = rules.make("fa")
    fa.init(net)
    fa.feedback = [None] + [net.weights(l)[:, :lay.width] for l, lay in enumerate(net.layers) if l > 0]
    bp = rules.make("bp")
    bp.init(net)
    for u, r in zip(fa.estimate(net, x, t).updates, bp.estimate(net, x, t).updates):
        np.testing.assert_allclose(u, r, rtol=1e-10, atol=1e-13)


def test_read_noise_per_position_matches_the_closed_form():
    """Additive read noise of std σ_r·w_max·max|x| per output (abs_max inputs, no converters):
    every position of every sample draws its own noise of that std, uncorrelated between positions."""
    dev = DeviceConfig.preset("ideal", node_noise=0.0, read_noise=0.05, access=("observe", "oracle"))
    net = Network.build((6, 6, 1), "c3x3x2 f2", dev, seed=4, dtype="float64")
    lay = net.layers[0]
    x = np.random.default_rng(1).standard_normal((1, 36))
    exact = reference_conv(x, net.weights(0), lay)[0]
    p = net.forward_stacked(x, 4000)
    noise = p.pre[0][:, 0] - exact                       # (passes, 4, 4, 2)
    patches = lay.unfold(x.reshape(1, 6, 6, 1))[0]        # (4, 4, 9)
    expected = 0.05 * np.linalg.norm(patches, axis=-1)   # read_noise · ‖x‖₂ of each position's read
    std = noise.std(axis=0)
    np.testing.assert_allclose(std, np.broadcast_to(expected[..., None], std.shape), rtol=0.06)
    assert np.abs(noise.mean(axis=0)).max() < 4 * expected.max() / np.sqrt(noise.shape[0])
    flat = noise.reshape(noise.shape[0], -1)
    c = np.corrcoef(flat.T)
    assert np.abs(c - np.eye(c.shape[0])).max() < 0.1


# -- traces, state ------------------------------------------------------------------------------
@pytest.mark.parametrize("rule_name", ["danp", "dbp", "np", "inp", "fa"])
def test_conv_traces_record_and_replay_exactly(tmp_path, digits, rule_name):
    import scenarios
    from noisesim.trace import TraceWriter, open_trace, replay
    data = scenarios.load("digits", n_train=300, n_test=50)
    dev = DeviceConfig.preset("ideal", access=("observe", "backward", "inject", "clean", "oracle"))
    net = Network.build((8, 8, 1), "c3x3x4s2 c3x3x4 f10", dev, seed=3, bias=True)
    rule = rules.make(rule_name, lr=1e-2)
    path = tmp_path / "conv.h5"
    with TraceWriter(path, net, rule) as tw:
        hist = scenarios.train(net, rule, data, epochs=1, batch_size=100, progress=False, on_step=tw.on_step)
    assert hist.steps == 3
    with open_trace(path) as tr:
        step = tr.step(0)
        xs = [a for k, a in step.record.items() if k == "inputs"] if hasattr(step, "record") else []
    res = replay(path)
    assert res.matches is True and res.steps == 3
    final = net.get_state()
    assert all(np.array_equal(res.state[k], final[k]) for k in final)


def test_conv_network_state_round_trips(tmp_path):
    from noisesim import state as state_io
    dev = DeviceConfig.preset("pcm")
    net = Network.build((12, 2), "c3x4s2p1 f5", dev, seed=5, bias=True, decorrelate=True)
    x = np.random.default_rng(0).standard_normal((4, 24)).astype(np.float32)
    path = tmp_path / "net.h5"
    state_io.save(path, net.state())
    other = Network.from_state(state_io.load(path))
    assert other.config() == net.config() and other.layers == net.layers
    np.testing.assert_array_equal(other.forward(x).out, net.forward(x).out)
    mlp = Network.mlp([24, 24, 5], dev, seed=5)     # the same units, but dense and bias-free
    with pytest.raises(ValueError, match="layers"):
        mlp.load_state(net.state())


# -- memory: a batch too large for the budget is estimated in slices ------------------------------
def _conv_setup(B=40):
    dev = DeviceConfig.preset("ideal")
    net = Network.build((16, 16, 2), "c3x3x8 c3x3x8s2 f10", dev, seed=4)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((B, net.sizes[0])).astype(np.float32)
    return net, x, np.eye(10, dtype=np.float32)[rng.integers(0, 10, B)]


@pytest.mark.parametrize("name", ["danp", "np", "inp"])
def test_a_batch_over_the_budget_is_the_size_weighted_mean_of_its_slices(name):
    net, x, t = _conv_setup()
    whole = rules.make(name, samples=2).sample_bytes(net, len(x))
    rule = rules.make(name, samples=2, memory_budget=whole * 0.3)      # 12 of the 40 samples per slice
    assert rule._batch_slice(net, len(x)) == 12
    est = rule.estimate(net, x, t)
    assert list(est.record) == ["updates"]
    again, _, _ = _conv_setup()
    ref = rules.make(name, samples=2, memory_budget=whole * 0.3)
    pieces = [(len(x[i:i + 12]), ref._estimate(again, x[i:i + 12], t[i:i + 12])) for i in range(0, 40, 12)]
    assert [b for b, _ in pieces] == [12, 12, 12, 4]
    for l, u in enumerate(est.updates):
        np.testing.assert_allclose(u, sum(b / 40 * e.updates[l] for b, e in pieces), rtol=1e-6, atol=1e-9)
    assert est.loss == pytest.approx(sum(b * e.loss for b, e in pieces) / 40)
    assert est.inputs[1].shape == (40, *net.layers[1].positions, net.layers[1].n_in)
    assert est.forward_passes == rule.forward_passes(net.n_layers)


def test_slicing_the_batch_bounds_the_estimates_peak_memory():
    import tracemalloc

    def peak(budget):
        net, x, t = _conv_setup(B=120)
        rule = rules.make("danp", memory_budget=budget)
        rule.estimate(net, x, t)
        tracemalloc.start()
        rule.estimate(net, x, t)
        p = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        return p

    net, x, _ = _conv_setup(B=120)
    whole = rules.make("danp").sample_bytes(net, len(x))
    assert peak(whole / 8) < 0.5 * peak(None)         # the whole batch's reference inputs are kept either way


@pytest.mark.parametrize("change,field", [
    ({"layers": "c9x9x4 f10"}, "network.layers"),              # a kernel larger than the input
    ({"layers": "x" * 20000}, "network.layers"),
    ({"layers": 7}, "network.layers"),
    ({"input_shape": [8, 8, 1, 1]}, "network.input_shape"),
    ({"input_shape": [8, -8, 1]}, "network.input_shape"),
    ({"bias": "yes"}, "network.bias"),
    ({"layers": "c3x3x4 f12"}, "network.sizes"),               # layers that do not give the recorded sizes
])
def test_a_trace_config_with_bad_conv_layers_is_refused_naming_the_field(change, field):
    from noisesim.trace.format import TraceError, validate_config
    net = Network.build((8, 8, 1), "c3x3x4 f10", seed=0, bias=True)
    cfg = {"network": {**net.config(), **change}, "dtype": "float32"}
    cfg["network"].pop("device")
    validate_config({"network": {**net.config()}, "dtype": "float32"}, "ok.h5")
    with pytest.raises(TraceError, match=field.replace(".", r"\.")):
        validate_config(cfg, "bad.h5")


@pytest.mark.parametrize("preset,extra", [("pcm", {}), ("reram", {"stuck_off": 0.05, "stuck_on": 0.05}),
                                          ("ecram", {"node_noise": 0.01})])
def test_a_conv_layer_reads_its_tile_exactly_as_a_dense_layer_reads_the_patch_rows(preset, extra):
    """Every non-ideality (converters, read/output/node noise, tiling, programming, faults, d2d,
    drift, the update model) is the tile's: a conv layer's outputs are, bit for bit, those of a
    dense layer with the same weights fed the patch vectors as rows — also after an update and
    after drift."""
    dev = DeviceConfig.preset(preset, **extra)
    shape, spec = (9, 9, 3), "c3x3x6s2p1"
    lay = build(shape, spec)[0]
    w = np.random.default_rng(0).standard_normal((lay.n_out, lay.width)) * 0.3
    conv_net = Network([w], dev, seed=11, layers=spec, input_shape=shape)
    dense_net = Network([w], dev, seed=11)
    x = np.random.default_rng(1).standard_normal((5, 243)).astype(np.float32)
    patches = lay.unfold(x.reshape(5, *shape)).reshape(-1, lay.width)
    delta = np.random.default_rng(2).standard_normal(w.shape).astype(np.float32) * 0.01
    for step in range(3):
        got = conv_net.forward_stacked(x, 2).pre[0]
        want = dense_net.forward_stacked(patches, 2).pre[0]
        np.testing.assert_array_equal(got.reshape(2, -1, lay.n_out), want)
        assert got.shape == (2, 5, *lay.positions, lay.n_out)
        for net in (conv_net, dense_net):
            net.apply_update(0, delta)
            net.advance_time(100.0)
