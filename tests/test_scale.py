"""K samples per update without K× memory and without repeated work.

* A stack of passes run in parts draws exactly the noise of the whole stack, and every
  perturbation rule's estimate in parts equals the whole one (tolerance 0: the sums are formed
  sample by sample in one order, so the bits agree) and replays from its record.
* The passes of a stack share layer 0's GEMM, yet each draws its own independent noise of the
  configured variance (statistics with stated tolerances).
* Every rule's ``forward_passes`` is the number of passes it actually runs (counted at the
  device), for both baselines and several K.
* Memory: the peak of a K-sample estimate under a budget does not grow with K.
"""
from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

import noisesim
import rules
from noisesim.tile import Tile
from rules.perturbation import Contraction, contract

CASES = [("anp", "clean"), ("anp", "noisy"), ("np", "clean"), ("np", "noisy"), ("np", "noisy-known"),
         ("inp", "clean"), ("inp", "noisy"), ("wp", "clean"), ("wp", "noisy"), ("wp", "noisy-known"),
         ("regression", "clean"), ("regression", "noisy")]
# a device with every read effect that draws noise or rounds: read, node and output noise,
# ADC, DAC and two row tiles
RICH = dict(read_noise=0.02, out_noise=0.01, out_bits=8, out_bound=8.0, in_bits=8, in_bound=1.0, tile_rows=7)


def one_sample(name, baseline, net, B, K):
    """The smallest memory budget that runs a batch of ``B`` whole: the K samples in parts of
    one sample each, the batch not sliced."""
    return rules.make(name, baseline=baseline, samples=K).sample_bytes(net, B)


def _setup(dtype="float32", device=None, sizes=(12, 20, 20, 5), B=16):
    r = np.random.default_rng(0)
    x = r.standard_normal((B, sizes[0])).astype(dtype)
    t = np.eye(sizes[-1], dtype=dtype)[r.integers(0, sizes[-1], B)]
    net = noisesim.Network.mlp(list(sizes), device=noisesim.DeviceConfig.preset("ideal", **(device or {})), seed=3,
                               backend="numpy", dtype=dtype, decorrelate=True)
    return net, x, t


# -- parts and whole ---------------------------------------------------------------------------------
@pytest.mark.parametrize("device", [None, RICH], ids=["ideal", "rich"])
def test_a_stack_run_in_parts_draws_the_whole_stack_s_noise(device):
    x = _setup(device=device)[1]
    whole = _setup(device=device)[0].forward_stacked(x, 7, clean=[True] + [False] * 6)
    st = _setup(device=device)[0].stack(x, 7, clean=[True] + [False] * 6)
    parts = [st.run(a, b) for a, b in ((0, 3), (3, 4), (4, 7))]
    for l in range(3):
        for what in ("inputs", "pre", "post"):
            np.testing.assert_array_equal(getattr(whole, what)[l],
                                          np.concatenate([getattr(p, what)[l] for p in parts]))
    with pytest.raises(ValueError, match="not in a stack of 7"):
        st.run(5, 9)


@pytest.mark.parametrize("device", [None, RICH], ids=["ideal", "rich"])
@pytest.mark.parametrize("name,baseline", CASES)
def test_an_estimate_in_parts_equals_the_whole_estimate_and_replays(name, baseline, device):
    """a budget of one sample's passes runs one sample per part; tolerance 0 (same bits): the noise is the
    same and the sums are formed sample by sample in the same order. The record of the parts
    is the record of the whole, and ``updates_from_record`` of it gives the estimate's bits."""
    K = 5
    ests = []
    for budget in (None, 1):
        net, x, t = _setup(device=device)
        rule = rules.make(name, baseline=baseline, samples=K, memory_budget=budget and one_sample(name, baseline, net, len(x), K),
                          record=True)
        ests.append(rule.estimate(net, x, t))
    whole, parts = ests
    assert whole.forward_passes == parts.forward_passes == rule.forward_passes(3)
    assert whole.loss == parts.loss
    for u, v in zip(whole.updates, parts.updates):
        np.testing.assert_array_equal(u, v)
    assert sorted(whole.record) == sorted(parts.record)
    for key, v in whole.record.items():
        for a, b in zip(v if isinstance(v, list) else [v], parts.record[key] if isinstance(v, list) else [parts.record[key]]):
            np.testing.assert_array_equal(a, b)
    for u, v in zip(parts.updates, rule.updates_from_record(parts.record)):
        np.testing.assert_array_equal(u, v)


@pytest.mark.parametrize("name,baseline", [("anp", "noisy"), ("np", "clean"), ("inp", "noisy"), ("wp", "noisy")])
def test_without_the_full_record_the_summed_update_is_recorded_and_replays(name, baseline):
    net, x, t = _setup()
    rule = rules.make(name, baseline=baseline, samples=4, memory_budget=one_sample(name, baseline, net, len(x), 4))   # parts: no full record
    est = rule.estimate(net, x, t)
    assert list(est.record) == ["updates"]
    for u, v in zip(est.updates, rule.updates_from_record(est.record)):
        np.testing.assert_array_equal(u, v)
    full = rules.make(name, baseline=baseline, samples=4).estimate(_setup()[0], x, t)   # fits: full record
    assert "dL" in full.record
    for u, v in zip(est.updates, full.updates):
        np.testing.assert_array_equal(u, v)
    with pytest.raises(ValueError, match="memory_budget"):
        rules.make(name, memory_budget=0)
    with pytest.raises(ValueError, match="record"):
        rules.make(name, record="yes")


def test_the_contraction_is_one_sum_whatever_the_parts():
    r = np.random.default_rng(1)
    G, X = r.standard_normal((6, 9, 4)), r.standard_normal((6, 9, 3))
    np.testing.assert_allclose(contract(G, X), np.einsum("kbo,kbi->oi", G, X) / 54, rtol=1e-12)
    np.testing.assert_allclose(contract(G, X[:1]), np.einsum("kbo,bi->oi", G, X[0]) / 54, rtol=1e-12)
    for shared in (False, True):
        xs = X[:1] if shared else X
        a, b = Contraction(1), Contraction(1)
        a.add(0, G, xs, shared)
        for k in range(6):
            b.add(0, G[k:k + 1], xs if shared else X[k:k + 1], shared)
        np.testing.assert_array_equal(a.result(54)[0], b.result(54)[0])


# -- one GEMM for layer 0, independent noise per pass ---------------------------------------------------
def test_passes_share_layer_0_s_gemm(monkeypatch):
    """Every stacked rule multiplies layer 0's input once per estimate (B rows), whatever K."""
    rows = []
    real = Tile.prepare

    def counting(self, x, **kw):
        if self is net.tiles[0]:
            rows.append(x.shape[0])
        return real(self, x, **kw)

    monkeypatch.setattr(Tile, "prepare", counting)
    for name, baseline in CASES:
        for budget in (None, 1):
            net, x, t = _setup()
            rows.clear()
            rules.make(name, baseline=baseline, samples=3,
                       memory_budget=budget and one_sample(name, baseline, net, len(x), 3)).estimate(net, x, t)
            assert rows == [len(x)], (name, baseline, budget)


def test_each_pass_draws_its_own_noise_of_the_configured_variance():
    """Node noise σ = 0.05 on 400 passes sharing one layer-0 GEMM (n = 4 000 outputs per pass):
    per pass the std is σ within 5 % and the mean 0 within 6/√n; the 79 800 correlations between
    the noise of two passes are those of independent noise — their spread 1/√n within 5 %,
    their mean within 0.002 of 0, none beyond 6/√n. Read noise (std 0.03‖x‖) likewise."""
    sigma, P = 0.05, 400
    for dev in (dict(node_noise=sigma), dict(node_noise=0.0, read_noise=0.03)):
        net = noisesim.Network.mlp([30, 200, 4], device=noisesim.DeviceConfig.preset("ideal", **dev), seed=5,
                                   backend="numpy", dtype="float64")
        x = np.random.default_rng(2).standard_normal((20, 30))
        a = net.forward_stacked(x, P).pre[0]                              # (P, 20, 200)
        clean = x @ net.tiles[0].weights().T
        z = (a - clean).reshape(P, -1)
        std = (sigma if "read_noise" not in dev else 0.03 * np.linalg.norm(x, axis=1))
        z = z / np.broadcast_to(np.reshape(std, (-1, 1)) if np.ndim(std) else std, (20, 200)).reshape(1, -1)
        n = z.shape[1]
        np.testing.assert_allclose(z.std(axis=1), 1.0, rtol=0.05)
        assert np.abs(z.mean(axis=1)).max() < 6 / np.sqrt(n)
        off = np.corrcoef(z)[~np.eye(P, dtype=bool)]
        assert off.std() == pytest.approx(1 / np.sqrt(n), rel=0.05)
        assert abs(off.mean()) < 0.002                                    # no shared component
        assert np.abs(off).max() < 6 / np.sqrt(n)


# -- counted passes ------------------------------------------------------------------------------------
@pytest.mark.parametrize("budget", [None, 1])
def test_forward_passes_counts_the_passes_actually_run(monkeypatch, budget):
    """Counted at the device: rows leaving the output layer's tile, over the batch size."""
    out_rows = []
    real = Tile.read

    def counting(self, x, **kw):
        a = real(self, x, **kw)
        if self is net.tiles[-1]:
            out_rows.append(a.shape[0])
        return a

    monkeypatch.setattr(Tile, "read", counting)
    for name, baseline in CASES:
        for K in (1, 3, 4):
            net, x, t = _setup()
            out_rows.clear()
            rule = rules.make(name, baseline=baseline, samples=K,
                              memory_budget=budget and one_sample(name, baseline, net, len(x), K))
            est = rule.estimate(net, x, t)
            ran = sum(out_rows) // len(x)
            assert ran == est.forward_passes == rule.forward_passes(net.n_layers), (name, baseline, K)
    assert rules.make("inp", baseline="clean", samples=10).forward_passes(3) == 10 * 3 + 1
    assert rules.make("inp", baseline="noisy", samples=10).forward_passes(3) == 10 * 4


# -- memory bounded in K --------------------------------------------------------------------------------
def test_peak_memory_of_an_estimate_under_a_budget_does_not_grow_with_k():
    """tracemalloc's peak (NumPy reports its allocations) of a DANP estimate on 64-256-256-10,
    batch 200, budget 4 MB: K = 24 stays within 1.5× K = 2 (unbounded it would be ~10×), and
    K = 24 without a budget takes over 4× as much."""
    def peak(K, budget):
        net, x, t = _setup(sizes=(64, 256, 256, 10), B=200)
        rule = rules.make("danp", samples=K, memory_budget=budget)
        rule.estimate(net, x, t)                      # warm-up (numba, BLAS buffers)
        tracemalloc.start()
        try:
            rule.estimate(net, x, t)
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    small, big, free = peak(2, 4e6), peak(24, 4e6), peak(24, 1e12)
    assert big < 1.5 * small, (small, big)
    assert free > 4 * big, (big, free)


# -- the decorrelation update -----------------------------------------------------------------------------
@pytest.mark.parametrize("B", [8, 40])                     # B < n (factored) and B ≥ n (moment first)
def test_the_folded_decorrelation_update_equals_check_then_add(B):
    """``update_decorrelation`` (ΔR formed in place, R + ΔR in ΔR's buffer, one max|R| pass for
    both checks) gives the bits of ``decorrelation_delta`` + ``check_decorrelation`` + ``R + ΔR``;
    a diverging update raises naming the stable bound and changes no layer."""
    from noisesim.errors import DivergenceError
    from rules.decorrelation import check_decorrelation, decorrelation_delta, update_decorrelation

    r = np.random.default_rng(4)
    nets = [_setup(sizes=(12, 20, 20, 5))[0] for _ in range(2)]
    Rs = [(np.eye(n) + 0.05 * r.standard_normal((n, n))).astype(np.float32) for n in nets[0].sizes[:-1]]
    for net in nets:
        for l, R in enumerate(Rs):
            net.set_decorrelation(l, R.copy())
    xs = [r.standard_normal((B, n)).astype(np.float32) for n in nets[0].sizes[:-1]]
    a, b = nets
    d = [decorrelation_delta(xs[l], a.decorrelation(l), 1e-2) for l in range(a.n_layers)]
    for l in range(a.n_layers):
        check_decorrelation(a.decorrelation(l) + d[l], xs[l], 1e-2, l)
        a.apply_decorrelation_update(l, d[l])
    update_decorrelation(b, xs, 1e-2)
    for l in range(a.n_layers):
        np.testing.assert_array_equal(a.decorrelation(l), b.decorrelation(l))
    before = [b.decorrelation(l).copy() for l in range(b.n_layers)]
    xs[1] = xs[1] * 1e4                                    # layer 1 diverges at this α
    with pytest.raises(DivergenceError, match="layer 1 diverged.*alpha < 2/λ_max") as e:
        update_decorrelation(b, xs, 1e-2)
    assert e.value.layer == 1
    for l in range(b.n_layers):
        np.testing.assert_array_equal(b.decorrelation(l), before[l])
    with pytest.raises(DivergenceError, match="layer 0 diverged"):
        update_decorrelation(b, [np.full_like(xs[0], np.nan)] + xs[1:], 1e-2)


# -- traces of K-sample runs ------------------------------------------------------------------------------
@pytest.mark.parametrize("record", [False, True], ids=["summed-update", "full-record"])
def test_a_k_sample_run_in_parts_replays_bit_for_bit(tmp_path, record):
    """DANP with K = 3 in parts of one sample: traced with the summed update
    (the default beyond one part) or the full record, the replay reproduces the run exactly."""
    import scenarios
    from noisesim.trace import TraceWriter, replay

    digits = scenarios.load("digits")
    net = noisesim.Network.mlp([64, 16, 10], device=noisesim.DeviceConfig.preset("ideal"), seed=3, backend="numpy")
    rule = rules.make("danp", samples=3, memory_budget=one_sample("anp", "noisy", net, 200, 3), record=record, lr=1e-2)
    path = tmp_path / "run.h5"
    with TraceWriter(path, net, rule) as tw:
        hist = scenarios.train(net, rule, digits, epochs=1, batch_size=200, progress=False, on_step=tw.on_step)
    assert hist.diverged is None and hist.forward_passes == 6 * hist.steps
    res = replay(path)
    assert res.matches is True
    final = net.get_state()
    assert all(np.array_equal(res.state[k], final[k]) for k in final)


def test_the_one_pass_adam_step_gives_numpy_s_bits(monkeypatch):
    """The Numba Adam step (one pass over g, m, v) against the NumPy expressions it replaces, for
    four steps of gradients spanning 1e-3…1e4, float32 and float64: moments and deltas equal."""
    import rules.optim as optim

    for dt in (np.float32, np.float64):
        r = np.random.default_rng(0)
        adam = optim.Adam(lr=1e-3)
        fused, plain = adam.init(3), adam.init(3)
        for _ in range(4):
            g = [(r.standard_normal((30, 20)) * s).astype(dt) for s in (1e-3, 1.0, 1e4)]
            a = adam.update(g, fused)
            with monkeypatch.context() as m:
                m.setattr(optim, "_fused", lambda *arrays: False)
                b = adam.update(g, plain)
            for key in ("m", "v"):
                for x, y in zip(fused[key], plain[key]):
                    np.testing.assert_array_equal(x, y)
            for x, y in zip(a, b):
                assert x.dtype == dt
                np.testing.assert_array_equal(x, y)


def test_parts_stack_no_layer_array_beyond_part_array_bytes(monkeypatch):
    """However large the budget, a part stacks no more samples than keep each layer's stacked
    array within ``PART_ARRAY_BYTES`` (at least one sample); the estimate is the same bits."""
    import rules.perturbation as pert

    net = noisesim.Network.mlp([3072, 1024, 1024, 1024, 10], device=noisesim.DeviceConfig.preset("ideal"), seed=0,
                               backend="numpy")
    rule = rules.make("danp", baseline="noisy", samples=100)
    assert rule._plan(net, 1000, 2) == (4, False)       # 8 passes × 1000 × 1024 × 4 B = 32.8 MB ≤ 32 MiB
    assert rules.make("danp", baseline="noisy", samples=100, memory_budget=1e12)._plan(net, 1000, 2)[0] == 4
    assert rules.make("danp", baseline="noisy", samples=3)._plan(net, 1000, 2)[0] == 3
    assert rules.make("danp", baseline="noisy", samples=100)._plan(net, 5000, 2)[0] == 1    # at least one
    ests = []
    for cap in (pert.PART_ARRAY_BYTES, 1):
        monkeypatch.setattr(pert, "PART_ARRAY_BYTES", cap)
        small, x, t = _setup()
        rule = rules.make("anp", baseline="noisy", samples=5, record=True)
        assert rule._plan(small, len(x), 2)[0] == (5 if cap > 1 else 1)
        ests.append(rule.estimate(small, x, t))
    for u, v in zip(*(e.updates for e in ests)):
        np.testing.assert_array_equal(u, v)
