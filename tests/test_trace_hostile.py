"""Damaged and hostile trace files: every one ends, within seconds, in a ``TraceError`` naming the
problem, or reads exactly like the original — never a hang, a crash or a traceback.

Each case runs in a forked child with a time limit (:func:`bounded`), so a reader that loops
inside HDF5 fails its case instead of hanging the suite. The families: truncations, byte flips,
zeroed 4 KiB blocks at many offsets, crafted attributes and configs with valid checksums,
storage and links that reach outside the file, and paths that are not regular files.
"""
from __future__ import annotations

import json
import os
import pickle
import select
import shutil
import signal
import time
import traceback
import zlib

import h5py
import numpy as np
import pytest

import noisesim
import rules
import scenarios
from noisesim.trace import TraceError, TraceWriter, info, replay

SIZES = [64, 16, 10]
CASE_SECONDS = 30.0     # far above a case's ~0.1 s: only a hang reaches it


@pytest.fixture(scope="module")
def original(tmp_path_factory):
    """A small closed DANP trace (digits, 8 steps) and what reading it gives."""
    path = tmp_path_factory.mktemp("hostile") / "t.h5"
    digits = scenarios.load("digits")
    net = noisesim.Network.mlp(SIZES, device=noisesim.DeviceConfig.preset("ideal"), seed=3, backend="numpy")
    rule = rules.make("danp", lr=1e-2)
    with TraceWriter(path, net, rule) as tw:
        scenarios.train(net, rule, digits, epochs=1, batch_size=200, progress=False, on_step=tw.on_step)
    ref = summary(path, with_replay=True)
    assert ref["complete_steps"] == 8 and ref["replay"] == [8, True]
    return path, ref


def summary(path, with_replay=False) -> dict:
    """What a user gets from ``trace info`` (and ``trace replay``), minus the path."""
    d = info(path)
    out = {k: v for k, v in d.items() if k not in ("path", "file_bytes", "dataset_bytes", "bytes_per_step")}
    if with_replay:
        r = replay(path)
        out["replay"] = (r.steps, r.matches)
    return json.loads(json.dumps(out, sort_keys=True, default=repr))


def bounded(fn, *args, seconds=CASE_SECONDS):
    """``fn(*args)`` in a forked child: ``("ok", value)``, ``("error", message)`` for a
    TraceError, ``("traceback", text)`` for any other exception, ``("crash", signal)`` or
    ``("hang", seconds)``."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(r)
            try:
                out = ("ok", fn(*args))
            except TraceError as exc:
                out = ("error", str(exc))
            except BaseException:  # noqa: BLE001 - reported to the parent
                out = ("traceback", traceback.format_exc())
            os.write(w, pickle.dumps(out))
        finally:
            os._exit(0)
    os.close(w)
    data, deadline = b"", time.monotonic() + seconds
    try:
        while time.monotonic() < deadline:
            if select.select([r], [], [], max(0.0, deadline - time.monotonic()))[0]:
                more = os.read(r, 1 << 16)
                if not more:
                    break
                data += more
        else:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            return ("hang", seconds)
    finally:
        os.close(r)
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status):
        return ("crash", os.WTERMSIG(status))
    return pickle.loads(data) if data else ("crash", "no result")


def check(case, path, ref, with_replay=False):
    """A clear error naming the file, or exactly the original's result."""
    kind, value = bounded(summary, path, with_replay)
    if kind == "error":
        assert str(path) in value and len(value) < 4000, (case, value)
        return "error"
    assert kind == "ok", (case, kind, value)
    assert value == ref if with_replay else value == {k: v for k, v in ref.items() if k != "replay"}, case
    return "same"


# -- generated families --------------------------------------------------------------------------
def _damaged(original, tmp_path, edit):
    src, _ = original
    p = tmp_path / "d.h5"
    shutil.copyfile(src, p)
    with open(p, "r+b") as fh:
        edit(fh, os.path.getsize(src))
    return p


def _truncate(n):
    return lambda fh, size: fh.truncate(min(n, size))


def _flip(off, mask=0xFF):
    def edit(fh, size):
        fh.seek(off % size)
        b = fh.read(1)
        fh.seek(off % size)
        fh.write(bytes([b[0] ^ mask]))
    return edit


def _zero(off, n=4096):
    def edit(fh, size):
        fh.seek(off % size)
        fh.write(b"\0" * min(n, size - off % size))
    return edit


def _cases(size, n_flip, n_zero, n_trunc, seed):
    rng = np.random.default_rng(seed)
    cases = [(f"truncate {n}", _truncate(n)) for n in
             sorted({0, 1, 8, 47, 48, 96, 512, 2048, 4096, size // 2, size - 1, 14000,
                     *rng.integers(0, size, n_trunc).tolist()})]
    # flips: the metadata at the start densely, then everywhere
    flips = sorted({*range(0, 4096, 4096 // max(n_flip // 3, 1)), *rng.integers(0, size, n_flip - n_flip // 3).tolist()})
    cases += [(f"flip {o}", _flip(o, int(rng.integers(1, 256)))) for o in flips]
    cases += [(f"zero 4 KiB at {o}", _zero(o)) for o in
              sorted({0, 14000, *range(0, size, max(size // n_zero, 1))})]
    return cases


def _run_family(original, tmp_path, cases, replay_every=10):
    _, ref = original
    seen = {"error": 0, "same": 0}
    for i, (case, edit) in enumerate(cases):
        p = _damaged(original, tmp_path, edit)
        seen[check(case, p, ref, with_replay=i % replay_every == 0)] += 1
    return seen


def test_damaged_files_end_in_a_clear_error_or_read_the_same(original, tmp_path):
    size = os.path.getsize(original[0])
    cases = _cases(size, n_flip=120, n_zero=60, n_trunc=20, seed=0)
    assert len(cases) >= 200
    seen = _run_family(original, tmp_path, cases)
    assert seen["error"] > len(cases) // 3      # the family does hit what matters


@pytest.mark.slow
def test_damaged_files_larger_family(original, tmp_path):
    size = os.path.getsize(original[0])
    _run_family(original, tmp_path, _cases(size, n_flip=350, n_zero=120, n_trunc=40, seed=1), replay_every=5)


def test_zeroed_block_in_a_larger_trace_ends_quickly(tmp_path):
    """The reported case: 4 KiB zeroed at offset 14000 of a two-epoch quickstart-sized trace."""
    digits = scenarios.load("digits")
    net = noisesim.Network.mlp(SIZES, device=noisesim.DeviceConfig.preset("ideal"), seed=3, backend="numpy")
    rule = rules.make("danp", lr=1e-2)
    path = tmp_path / "q.h5"
    with TraceWriter(path, net, rule) as tw:
        scenarios.train(net, rule, digits, epochs=2, batch_size=32, progress=False, on_step=tw.on_step)
    ref = summary(path, with_replay=True)
    for off in (14000, 4096, 8192, os.path.getsize(path) // 2):
        p = tmp_path / "z.h5"
        shutil.copyfile(path, p)
        with open(p, "r+b") as fh:
            fh.seek(off)
            fh.write(b"\0" * 4096)
        check(f"zero at {off}", p, ref, with_replay=True)


# -- crafted attributes and configs (valid checksums) ---------------------------------------------
def _copy(original, tmp_path, name="c.h5"):
    p = tmp_path / name
    shutil.copyfile(original[0], p)
    return p


def _set_config(f, edit):
    c = json.loads(f.attrs["config"])
    edit(c)
    text = json.dumps(c, sort_keys=True)
    f.attrs["config"] = text
    f.attrs["config_crc32"] = zlib.crc32(text.encode())


CONFIG_EDITS = {
    "network.sizes": lambda c: c["network"].__setitem__("sizes", [64, 16777216, 10]),
    "network.sizes ": lambda c: c["network"].__setitem__("sizes", "64,16,10"),
    "network.sizes  ": lambda c: c["network"].__setitem__("sizes", [64, 16.5, 10]),
    "network": lambda c: c.__setitem__("network", [64, 16, 10]),
    "rule": lambda c: c.__setitem__("rule", ["danp"]),
    "rule.rule": lambda c: c["rule"].__setitem__("rule", 7),
    "seeds": lambda c: c.__setitem__("seeds", [3]),
    "device": lambda c: c.__setitem__("device", "ideal"),
    "run": lambda c: c.__setitem__("run", [1, 2]),
    "dtype": lambda c: c.__setitem__("dtype", "complex128"),
    "network.activation": lambda c: c["network"].__setitem__("activation", {"a": 1}),
    "network.slope": lambda c: c["network"].__setitem__("slope", "steep"),
    "network.seed": lambda c: c["network"].__setitem__("seed", 1.5),
    "(the whole config)": lambda c: (c.clear(), c.__setitem__("x", 1)),
}


@pytest.mark.parametrize("field", sorted(CONFIG_EDITS))
def test_a_crafted_config_names_its_field(original, tmp_path, field):
    p = _copy(original, tmp_path)
    with h5py.File(p, "r+") as f:
        _set_config(f, CONFIG_EDITS[field])
    kind, msg = bounded(summary, p, True)
    assert kind == "error", (kind, msg)
    want = "network" if field == "(the whole config)" else field.strip()
    assert f"config {want}" in msg or f"config {want}=" in msg, msg


def test_a_crafted_config_that_would_exhaust_memory_is_refused_before_allocating(original, tmp_path, monkeypatch):
    p = _copy(original, tmp_path)
    with h5py.File(p, "r+") as f:
        _set_config(f, lambda c: c["network"].__setitem__("sizes", [64, 4_000_000, 10]))
    monkeypatch.setattr(noisesim._hdf5, "available_memory", lambda: 1 << 30)
    with pytest.raises(TraceError, match=r"network.sizes=\[64, 4000000, 10\] needs about .* GiB"):
        noisesim.trace.open_trace(p)


ATTR_EDITS = {
    "format_version": lambda f: f.attrs.__setitem__("format_version", "2"),
    "complete_steps": lambda f: f.attrs.__setitem__("complete_steps", 10 ** 12),
    "complete_steps ": lambda f: f.attrs.__setitem__("complete_steps", -3),
    "closed": lambda f: f.attrs.__setitem__("closed", "yes"),
    "status": lambda f: f.attrs.__setitem__("status", "fine"),
    "storage_dtype": lambda f: f.attrs.__setitem__("storage_dtype", 5),
    "config": lambda f: f.attrs.__setitem__("config", np.zeros(3)),
    "schema": lambda f: f.attrs.__setitem__("schema", "{"),
    "format": lambda f: f.attrs.__setitem__("format", np.arange(1000)),
    "huge attribute": lambda f: h5py.h5a.create(f.id, b"x", h5py.h5t.IEEE_F64LE, h5py.h5s.create_simple((2_200_000,))),
    "schema shape": lambda f: _set_schema(f, lambda s: s["arrays"][0].__setitem__("shape", [1, 1 << 30, 256])),
    "schema arrays": lambda f: _set_schema(f, lambda s: s.__setitem__("arrays", {"a": 1})),
    "schema max_batch": lambda f: _set_schema(f, lambda s: s.__setitem__("max_batch", 1 << 40)),
    "weights shape": lambda f: _replace(f, "initial_state/network/tiles/0/w", np.zeros((16, 65), np.float32)),
    "weights unwritten": lambda f: _replace(f, "initial_state/network/tiles/0/w", None),
    "state json": lambda f: _set_json(f["initial_state/network"], lambda j: j.__setitem__("config", [1])),
    "rule state json": lambda f: _set_json(f["initial_state"], lambda j: j["rule"].update(initialised=True,
                                                                                          optimizer=[1, 2])),
    "state sizes": lambda f: _set_json(f["initial_state/network"],
                                       lambda j: j["config"].__setitem__("sizes", [64, 16777216, 10])),
}


def _set_schema(f, edit):
    s = json.loads(f.attrs["schema"])
    edit(s)
    text = json.dumps(s)
    f.attrs["schema"] = text
    f.attrs["schema_crc32"] = zlib.crc32(text.encode())


def _set_json(g, edit):
    j = json.loads(g.attrs["json"])
    edit(j)
    text = json.dumps(j)
    g.attrs["json"] = text
    g.attrs["json_crc32"] = np.uint32(zlib.crc32(text.encode()))


def _replace(f, name, a):
    crc = f[name].attrs["crc32"]
    shape, dtype = f[name].shape, f[name].dtype
    del f[name]
    if a is None:   # declared, never written: fill values on read
        ds = f.create_dataset(name, shape=shape, dtype=dtype, chunks=shape)
    else:
        ds = f.create_dataset(name, data=a)
    ds.attrs["crc32"] = crc


@pytest.mark.parametrize("case", sorted(ATTR_EDITS))
def test_crafted_attributes_and_states_end_in_a_clear_error(original, tmp_path, case):
    p = _copy(original, tmp_path)
    with h5py.File(p, "r+") as f:
        ATTR_EDITS[case](f)
    kind, msg = bounded(summary, p, True)
    assert kind == "error" and str(p) in msg, (kind, msg)


# -- the reader reads only the file it was given ---------------------------------------------------
W = "initial_state/network/tiles/0/w"


def _external_raw(f, tmp_path):
    """``W`` rewritten as external raw storage holding the same bytes (its checksum still verifies)."""
    a, crc = f[W][()], f[W].attrs["crc32"]
    raw = tmp_path / "outside.bin"
    raw.write_bytes(a.tobytes())
    del f[W]
    ds = f.create_dataset(W, shape=a.shape, dtype=a.dtype, external=[(str(raw), 0, a.nbytes)])
    ds.attrs["crc32"] = crc


def _virtual(f, tmp_path):
    a, crc = f[W][()], f[W].attrs["crc32"]
    with h5py.File(tmp_path / "src.h5", "w") as g:
        g["w"] = a
    layout = h5py.VirtualLayout(shape=a.shape, dtype=a.dtype)
    layout[...] = h5py.VirtualSource(str(tmp_path / "src.h5"), "w", shape=a.shape)
    del f[W]
    f.create_virtual_dataset(W, layout).attrs["crc32"] = crc


def _external_link(f, tmp_path):
    with h5py.File(tmp_path / "other.h5", "w") as g:
        g["w"] = f[W][()]
    f["steps/elsewhere"] = h5py.ExternalLink(str(tmp_path / "other.h5"), "/w")


OUTSIDE = {
    "external raw storage": (_external_raw, "external files"),
    "virtual dataset": (_virtual, "virtual dataset"),
    "external link": (_external_link, "external link"),
    "soft link": (lambda f, t: f.__setitem__("initial_state/alias", h5py.SoftLink("/" + W)), "soft link"),
    "soft link to a step": (lambda f, t: f["steps"].__setitem__("extra", h5py.SoftLink("/steps/da/0")), "soft link"),
    "unknown filter": (lambda f, t: f.create_dataset("x", data=np.zeros(8), chunks=(8,), compression=307,
                                                     allow_unknown_filter=True), "filter 307"),
}


@pytest.mark.parametrize("case", sorted(OUTSIDE))
def test_data_outside_the_file_is_refused(original, tmp_path, case):
    p = _copy(original, tmp_path)
    edit, words = OUTSIDE[case]
    with h5py.File(p, "r+") as f:
        edit(f, tmp_path)
    kind, msg = bounded(summary, p, True)
    assert kind == "error" and words in msg and str(p) in msg, (kind, msg)


def test_paths_that_are_not_regular_files_are_refused_before_opening(original, tmp_path):
    fifo = tmp_path / "pipe.h5"
    os.mkfifo(fifo)
    link = tmp_path / "link.h5"
    link.symlink_to(original[0])
    (tmp_path / "empty.h5").write_bytes(b"")
    (tmp_path / "text.h5").write_text("not hdf5\n" * 100)
    for p, words in [(fifo, "named pipe"), (tmp_path, "directory"), ("/dev/zero", "device"),
                     (link, "symbolic link"), (tmp_path / "none.h5", "no such file"),
                     (tmp_path / "empty.h5", "not a readable HDF5 file"),
                     (tmp_path / "text.h5", "not a readable HDF5 file")]:
        kind, msg = bounded(summary, p, seconds=10)
        assert kind == "error" and words in msg, (p, kind, msg)


# -- the bounded structure walk itself --------------------------------------------------------------
def test_a_structure_walk_that_never_ends_is_stopped_and_reported(original, monkeypatch):
    """What HDF5 does on metadata that sends it round in circles, stood in for by a walk that
    sleeps: the reader gives up after the time limit, with an error, and its child is gone."""
    monkeypatch.setattr(noisesim._hdf5, "walk", lambda path: time.sleep(3600))
    monkeypatch.setattr(noisesim._hdf5, "PROBE_SECONDS", 1.0)
    t0 = time.monotonic()
    with pytest.raises(TraceError, match=r"did not end within 1 s; the file is damaged"):
        noisesim.trace.open_trace(original[0])
    assert time.monotonic() - t0 < 20


def test_a_structure_walk_that_crashes_is_reported(original, monkeypatch):
    monkeypatch.setattr(noisesim._hdf5, "walk", lambda path: os.kill(os.getpid(), signal.SIGSEGV))
    with pytest.raises(TraceError, match=r"HDF5 crashed \(signal 11, SIGSEGV\)"):
        noisesim.trace.open_trace(original[0])


def test_saved_states_are_read_through_the_same_checks(original, tmp_path):
    net = noisesim.Network.mlp(SIZES, device=noisesim.DeviceConfig.preset("ideal"), seed=3, backend="numpy")
    p = tmp_path / "s.h5"
    noisesim.state.save(p, {"network": net.state()})
    link = tmp_path / "l.h5"
    link.symlink_to(p)
    with pytest.raises(noisesim.state.StateError, match="symbolic link"):
        noisesim.state.load(link)
    with h5py.File(p, "r+") as f:
        f["network/alias"] = h5py.SoftLink("/network/tiles")
    with pytest.raises(noisesim.state.StateError, match="soft link"):
        noisesim.state.load(p)
