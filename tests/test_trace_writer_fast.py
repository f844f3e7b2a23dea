"""The trace writer's fast paths: the writer process (all HDF5 work out of the training
process, fed one buffer per step through a pipe), low-level row writes, and the hand-built
gzip stream (shuffle + per-part deflate/Huffman-only/stored blocks)."""
from __future__ import annotations

import os
import signal
import zlib

import h5py
import numpy as np
import pytest

import noisesim
import rules
import scenarios
from noisesim.trace import TraceError, TraceWriter, open_trace, replay
from noisesim.trace._sink import Sink

SIZES = [64, 16, 10]


@pytest.fixture(scope="module")
def digits():
    return scenarios.load("digits")


def record(path, digits, rule_name="danp", *, batch=300, retry=None, pump=False, backlog=None, **opts):
    net = noisesim.Network.mlp(SIZES, device=noisesim.DeviceConfig.preset("ideal"), seed=3, backend="numpy")
    rule = rules.make(rule_name, lr=1e-2)
    with TraceWriter(path, net, rule, **opts) as tw:
        if retry is not None:
            tw.RETRY_STEPS = retry
        if pump:                  # every frame counts as large: written by the pump thread
            tw.PIPE_DIRECT_BYTES = 0
        if backlog is not None:   # 0: every gzip step counts as behind, stored unfiltered
            tw.BACKLOG_STEPS = backlog
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
    record(tmp_path / "sync.h5", digits, "danp", batch=200, background=False, **opts)
    n, _ = steps_of(tmp_path / "sync.h5")
    assert n == 8
    if not opts:
        assert replay(tmp_path / "sync.h5").matches is True


def test_a_killed_writer_process_is_reported_and_the_file_keeps_whole_steps(tmp_path, digits):
    net = noisesim.Network.mlp(SIZES, device=noisesim.DeviceConfig.preset("ideal"), seed=3, backend="numpy")
    rule = rules.make("danp", lr=1e-2)
    tw = TraceWriter(tmp_path / "x.h5", net, rule, compression="gzip")
    seen = []

    def on_step(step, idx, est):
        tw.on_step(step, idx, est)
        seen.append(step)
        if step == 3:
            tw.flush()                                        # steps 1-3 are in the file
            assert tw.complete_steps == 3
            os.kill(tw._proc.pid, signal.SIGKILL)
            tw._proc.wait()

    with pytest.raises(TraceError, match="recording stopped: the trace writer process was killed by signal 9.*"
                                         "keeps its first 3 steps"):
        scenarios.train(net, rule, digits, epochs=1, batch_size=100, progress=False, on_step=on_step)
    assert seen == [1, 2, 3]
    with pytest.raises(TraceError, match="keeps its first 3 steps"):
        tw.write(99, np.arange(3), None)
    tw.close()                                               # reported already: no second error
    with open_trace(tmp_path / "x.h5") as r:    # left as the killed writer left it, still readable
        assert r.complete_steps == 3 and r.verify() == 3 and r.final_state() is None
        assert not r.closed and r.status == "recording"
    assert replay(tmp_path / "x.h5").steps == 3


def test_a_failing_writer_process_reports_its_error(tmp_path, digits):
    net = noisesim.Network.mlp(SIZES, device=noisesim.DeviceConfig.preset("ideal"), seed=3, backend="numpy")
    rule = rules.make("danp", lr=1e-2)
    tw = TraceWriter(tmp_path / "x.h5", net, rule)
    scenarios.train(net, rule, digits, epochs=1, batch_size=300, progress=False, on_step=tw.on_step)
    tw._send(b"X")                                           # a frame the process does not know
    with pytest.raises(TraceError, match=r"recording stopped: ValueError: unknown frame kind b'X'"):
        tw.flush()
    tw.close()
    with open_trace(tmp_path / "x.h5") as r:
        assert r.complete_steps == 5 and r.verify() == 5 and r.final_state() is None


def test_flush_makes_every_written_step_visible(tmp_path, digits):
    net = noisesim.Network.mlp(SIZES, device=noisesim.DeviceConfig.preset("ideal"), seed=3, backend="numpy")
    rule = rules.make("danp", lr=1e-2)
    tw = TraceWriter(tmp_path / "x.h5", net, rule, compression="gzip")
    seen = []
    scenarios.train(net, rule, digits, epochs=1, batch_size=100, progress=False,
                    on_step=lambda *a: (tw.on_step(*a), seen.append(tw.complete_steps)))
    assert all(n <= k for k, n in enumerate(seen, 1))       # confirmed steps never run ahead
    tw.flush()
    assert tw.complete_steps == len(seen) == 15
    # the writer process holds it, in SWMR mode
    with h5py.File(tmp_path / "x.h5", "r", locking=False, swmr=True) as f:
        assert f.attrs["complete_steps"] == len(seen)
    tw.close()
    with open_trace(tmp_path / "x.h5") as r:
        assert r.closed and r.complete_steps == 15 and r.final_state() is not None


@pytest.mark.parametrize("opts", [{}, dict(pump=True), dict(pump=True, compression="gzip"), dict(float16=True),
                                  dict(compression="gzip", backlog=0), dict(compression="lzf", backlog=0)])
def test_writer_process_and_in_process_writer_write_the_same_steps(tmp_path, digits, opts):
    fg = {k: v for k, v in opts.items() if k not in ("pump", "backlog")}
    record(tmp_path / "bg.h5", digits, "danp", **opts)
    record(tmp_path / "fg.h5", digits, "danp", background=False, **fg)
    same_steps(steps_of(tmp_path / "bg.h5"), steps_of(tmp_path / "fg.h5"))
    if not opts.get("float16"):
        assert replay(tmp_path / "bg.h5").matches is True
    if opts.get("backlog") == 0:  # every array chunk stored unfiltered, in a compressed dataset
        with h5py.File(tmp_path / "bg.h5", "r") as f:
            assert f["steps/dL"].compression is None and f["steps/losses"].compression is None   # < 4 KiB
            for name in ("da/0", "da/1", "inputs/0", "inputs/1"):
                d = f["steps/" + name]
                assert d.compression == opts["compression"]
                masks = [d.id.get_chunk_info(i).filter_mask for i in range(d.id.get_num_chunks())]
                assert masks == [0b11] * d.shape[0]
                assert d.id.get_chunk_info(0).size == np.prod(d.shape[1:]) * d.dtype.itemsize


def test_a_killed_writer_process_is_reported_through_the_pump(tmp_path, digits):
    net = noisesim.Network.mlp(SIZES, device=noisesim.DeviceConfig.preset("ideal"), seed=3, backend="numpy")
    rule = rules.make("danp", lr=1e-2)
    tw = TraceWriter(tmp_path / "x.h5", net, rule)
    tw.PIPE_DIRECT_BYTES = 0

    def on_step(step, idx, est):
        tw.on_step(step, idx, est)
        if step == 2:
            tw.flush()
            os.kill(tw._proc.pid, signal.SIGKILL)
            tw._proc.wait()

    with pytest.raises(TraceError, match="killed by signal 9"):
        scenarios.train(net, rule, digits, epochs=3, batch_size=100, progress=False, on_step=on_step)
        tw.flush()
    tw.close()
    with open_trace(tmp_path / "x.h5") as r:
        assert r.complete_steps == 2 and r.verify() == 2


@pytest.mark.parametrize("level", [1, 4])
@pytest.mark.parametrize("rule_name", ["danp", "np"])
def test_hand_built_gzip_chunks_read_back_like_hdf5s_own(tmp_path, digits, level, rule_name, monkeypatch):
    # rows deflated by the writer process itself, against HDF5's own gzip filter (in process).
    # retry=2: the per-plane coding is re-decided during the run.
    record(tmp_path / "bg.h5", digits, rule_name, compression="gzip", compression_opts=level, retry=2)
    with monkeypatch.context() as m:
        m.setattr(TraceWriter, "HDF5_GZIP", True)
        record(tmp_path / "h5.h5", digits, rule_name, compression="gzip", compression_opts=level, background=False)
    assert steps_of(tmp_path / "bg.h5")[0] == 5
    same_steps(steps_of(tmp_path / "bg.h5"), steps_of(tmp_path / "h5.h5"))
    with h5py.File(tmp_path / "bg.h5", "r") as f:
        for name in ("inputs/0", "inputs/1"):
            d = f["steps/" + name]
            assert d.compression == "gzip" and d.shuffle
            assert f.attrs["complete_steps"] == d.shape[0]


def _deflater(tmp_path, level=4):
    """A Sink set up for gzip rows (one float32 and one int64 dataset), its deflate method
    tested on its own."""
    f = h5py.File(tmp_path / "x.h5", "w")
    f.attrs["complete_steps"] = 0
    sink = Sink(f)
    sink.create({"datasets": [{"name": "steps/a", "shape": [9003], "dtype": "float32", "compression": "gzip"},
                              {"name": "steps/b", "shape": [7], "dtype": "int64", "compression": "gzip"}],
                 "attrs": {}, "deflate": True, "level": level})
    return f, sink


def test_deflate_stream_is_a_valid_zlib_stream_of_the_shuffled_row(tmp_path):
    # noise-like floats (δa): the sign/exponent plane deflates, the low mantissa planes are stored
    f, sink = _deflater(tmp_path, level=1)
    with f:
        rng = np.random.default_rng(0)
        for trial in range(3):
            row = (1e-3 * rng.standard_normal(9003)).astype(np.float32)
            z = sink._deflate(row, 0)
            shuffled = np.ascontiguousarray(row.view(np.uint8).reshape(-1, 4).T).tobytes()
            assert zlib.decompress(z) == shuffled
            assert len(z) < row.nbytes
        runs = sink._plane_state[0][1]  # [start, stop, (level, strategy)] over the shuffled bytes
        assert runs[0][0] == 0 and runs[-1][1] == row.nbytes
        assert all(r[1] == q[0] and r[2] != q[2] for r, q in zip(runs, runs[1:]))
        assert any(r[2][0] == 0 for r in runs) and any(r[2][0] != 0 for r in runs)


def test_single_element_and_integer_rows(tmp_path):
    f, sink = _deflater(tmp_path)
    with f:
        row = np.arange(1, dtype=np.float32)
        assert zlib.decompress(sink._deflate(row, 0)) == row.tobytes()
        ints = np.arange(7, dtype=np.int64)
        assert zlib.decompress(sink._deflate(ints, 1)) == np.ascontiguousarray(
            ints.view(np.uint8).reshape(-1, 8).T).tobytes()


def test_leave_a_core_gives_the_writer_process_a_core_and_restores_blas(tmp_path, digits):
    from threadpoolctl import threadpool_info, threadpool_limits

    from noisesim.trace import leave_a_core

    def blas():
        return max(i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas")

    cores = len(os.sched_getaffinity(0))
    with threadpool_limits(limits=max(cores, 2), user_api="blas"):   # BLAS on every core (or 2)
        before = blas()
        with leave_a_core():
            inside = blas()
        assert blas() == before
    assert inside == (before if cores < 2 else cores - 1)
    with threadpool_limits(limits=1, user_api="blas"):               # already fewer: left alone
        with leave_a_core():
            assert blas() == 1
    # scenarios.train does it while a writer process records the run
    net = noisesim.Network.mlp(SIZES, device=noisesim.DeviceConfig.preset("ideal"), seed=3, backend="numpy")
    seen = []
    with threadpool_limits(limits=max(cores, 2), user_api="blas"):
        scenarios.train(net, rules.make("bp"), digits, epochs=1, batch_size=500, progress=False,
                        trace=tmp_path / "t.h5", on_step=lambda *a: seen.append(blas()))
        assert blas() == before
    assert seen and set(seen) == {inside}
