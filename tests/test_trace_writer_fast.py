"""The trace writer's fast paths: low-level row writes, the gzip background thread (checksum
and deflate there, HDF5 writes on the training thread), and the hand-built gzip stream
(shuffle + per-part deflate/Huffman-only/stored blocks)."""
from __future__ import annotations

import zlib

import h5py
import numpy as np
import pytest

import noisesim
import rules
import scenarios
from noisesim.trace import TraceError, TraceWriter, open_trace, replay

SIZES = [64, 16, 10]


@pytest.fixture(scope="module")
def digits():
    return scenarios.load("digits")


def record(path, digits, rule_name="danp", *, batch=300, retry=None, **opts):
    net = noisesim.Network.mlp(SIZES, device=noisesim.DeviceConfig.preset("ideal"), seed=3, backend="numpy")
    rule = rules.make(rule_name, lr=1e-2)
    with TraceWriter(path, net, rule, **opts) as tw:
        if retry is not None:
            tw.RETRY_STEPS = retry
        scenarios.train(net, rule, digits, epochs=1, batch_size=batch, progress=False, on_step=tw.on_step)
    return net.get_state()


def steps_of(path):
    with open_trace(path) as r:
        assert r.verify() == r.complete_steps
        return r.complete_steps, [r.step(i) for i in range(r.complete_steps)]


def same_steps(a, b):
    assert a[0] == b[0] > 0
    for sa, sb in zip(a[1], b[1]):
        assert (sa.step, sa.batch_size, sa.loss) == (sb.step, sb.batch_size, sb.loss)
        assert np.array_equal(sa.indices, sb.indices)
        for xa, xb in zip(sa.inputs, sb.inputs):
            assert np.array_equal(xa, xb)
        assert sa.record.keys() == sb.record.keys()
        for k in sa.record:
            va, vb = sa.record[k], sb.record[k]
            for u, v in (zip(va, vb) if isinstance(va, (list, tuple)) else [(va, vb)]):
                assert np.array_equal(u, v)


@pytest.mark.parametrize("opts", [{}, dict(compression="lzf"), dict(float16=True)])
def test_synchronous_writer_replays(tmp_path, digits, opts):
    final = record(tmp_path / "sync.h5", digits, "danp", batch=200, **opts)
    n, _ = steps_of(tmp_path / "sync.h5")
    assert n == 8
    if not opts:
        assert replay(tmp_path / "sync.h5").matches is True


def test_background_needs_gzip(tmp_path):
    net = noisesim.Network.mlp(SIZES, device=noisesim.DeviceConfig.preset("ideal"), seed=3, backend="numpy")
    with pytest.raises(TraceError, match="background=True needs compression='gzip'"):
        TraceWriter(tmp_path / "x.h5", net, compression="lzf", background=True)


def test_background_failure_is_reported_and_the_file_keeps_whole_steps(tmp_path, digits):
    net = noisesim.Network.mlp(SIZES, device=noisesim.DeviceConfig.preset("ideal"), seed=3, backend="numpy")
    rule = rules.make("danp", lr=1e-2)
    tw = TraceWriter(tmp_path / "x.h5", net, rule, compression="gzip")
    calls = []
    deflate = tw._deflate

    def failing(row, which=0):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("disk on fire")
        return deflate(row, which)

    tw._deflate = failing
    with pytest.raises(TraceError, match="failed in the background.*disk on fire"):
        scenarios.train(net, rule, digits, epochs=1, batch_size=100, progress=False, on_step=tw.on_step)
    with pytest.raises(TraceError, match="trace ends at its 2 complete steps"):
        tw.write(99, np.arange(3), None)
    tw.close()
    with open_trace(tmp_path / "x.h5") as r:
        assert r.complete_steps == 2 and r.verify() == 2 and r.closed and r.final_state() is None
    assert replay(tmp_path / "x.h5").steps == 2


def test_background_lag_is_bounded_by_queue_steps(tmp_path, digits):
    net = noisesim.Network.mlp(SIZES, device=noisesim.DeviceConfig.preset("ideal"), seed=3, backend="numpy")
    rule = rules.make("danp", lr=1e-2)
    tw = TraceWriter(tmp_path / "x.h5", net, rule, compression="gzip", queue_steps=2)
    seen = []

    def on_step(step, idx, est):
        tw.on_step(step, idx, est)
        seen.append((step, tw.complete_steps))

    scenarios.train(net, rule, digits, epochs=1, batch_size=100, progress=False, on_step=on_step)
    assert all(k - n <= 2 for k, (_, n) in enumerate(seen, 1))
    tw.flush()
    assert tw.complete_steps == len(seen)
    with h5py.File(tmp_path / "x.h5", "r") as f:
        assert f.attrs["complete_steps"] == len(seen)
    tw.close()


@pytest.mark.parametrize("level", [1, 4])
@pytest.mark.parametrize("rule_name", ["danp", "np"])
def test_hand_built_gzip_chunks_read_back_like_hdf5s_own(tmp_path, digits, level, rule_name):
    # background=True: rows deflated by the writer; background=False: HDF5's own gzip filter.
    # retry=2: the per-part coding is re-decided during the run.
    record(tmp_path / "bg.h5", digits, rule_name, compression="gzip", compression_opts=level, retry=2)
    record(tmp_path / "h5.h5", digits, rule_name, compression="gzip", compression_opts=level, background=False)
    assert steps_of(tmp_path / "bg.h5")[0] == 5
    same_steps(steps_of(tmp_path / "bg.h5"), steps_of(tmp_path / "h5.h5"))
    with h5py.File(tmp_path / "bg.h5", "r") as f:
        d = f["steps/values"]
        assert d.compression == "gzip" and d.shuffle
        assert f.attrs["complete_steps"] == d.shape[0]


def test_deflate_stream_is_a_valid_zlib_stream_of_the_shuffled_row(tmp_path, digits):
    net = noisesim.Network.mlp(SIZES, device=noisesim.DeviceConfig.preset("ideal"), seed=3, backend="numpy")
    tw = TraceWriter(tmp_path / "x.h5", net, compression="gzip", compression_opts=1)
    try:
        rng = np.random.default_rng(0)
        # regions: noise (stored), small integers (deflated), a constant (deflated), a short tail
        tw._regions = [[0, 4000, 8000, 9000, 9003], [0]]
        for trial in range(3):
            row = np.concatenate([rng.standard_normal(4000), rng.integers(0, 5, 4000), np.full(1000, 0.5),
                                  rng.standard_normal(3)]).astype(np.float32)
            z = tw._deflate(row)
            shuffled = np.ascontiguousarray(row.view(np.uint8).reshape(-1, 4).T).tobytes()
            assert zlib.decompress(z) == shuffled
            assert len(z) < row.nbytes
        runs = tw._plane_state[0][1]  # [start, stop, (level, strategy)] over the shuffled bytes
        assert runs[0][0] == 0 and runs[-1][1] == row.nbytes
        assert all(r[1] == q[0] and r[2] != q[2] for r, q in zip(runs, runs[1:]))
        assert any(r[2][0] == 0 for r in runs) and any(r[2][0] != 0 for r in runs)
    finally:
        tw.close()


def test_empty_region_and_single_plane(tmp_path):
    net = noisesim.Network.mlp(SIZES, device=noisesim.DeviceConfig.preset("ideal"), seed=3, backend="numpy")
    tw = TraceWriter(tmp_path / "x.h5", net, compression="gzip")
    try:
        tw._regions = [[0, 0, 5], [0, 7]]
        row = np.arange(5, dtype=np.float32)
        assert zlib.decompress(tw._deflate(row)) == np.ascontiguousarray(row.view(np.uint8).reshape(-1, 4).T).tobytes()
        ints = np.arange(7, dtype=np.int64)
        assert zlib.decompress(tw._deflate(ints, 1)) == np.ascontiguousarray(
            ints.view(np.uint8).reshape(-1, 8).T).tobytes()
    finally:
        tw.close()
