"""Trace format v2 from the outside: a trace read with h5py alone (the example of
docs/trace-format.md, run in a process that never imports noisesim) gives the reader API's
arrays; h5dump lists the arrays by name; format 1 is refused naming both versions; links are
never followed."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

import noisesim
import rules
import scenarios
from noisesim.trace import TraceError, TraceWriter, open_trace

ROOT = Path(__file__).resolve().parents[1]
SIZES = [64, 16, 10]


def doc_example() -> str:
    text = (ROOT / "docs" / "trace-format.md").read_text()
    block = text.split("<!-- the test suite runs this block (tests/test_trace_format.py) -->", 1)[1]
    return re.search(r"```python\n(.*?)```", block, re.S).group(1)


def make(path, rule="danp", batch=400, **opts):
    data = scenarios.load("digits")
    net = noisesim.Network.mlp(SIZES, seed=1, backend="numpy")
    r = rules.make(rule, lr=1e-2, **({"samples": 3} if rule == "np" else {}))
    with TraceWriter(path, net, r, **opts) as tw:
        scenarios.train(net, r, data, epochs=1, batch_size=batch, progress=False, on_step=tw.on_step)
    return path


@pytest.mark.parametrize("rule, opts", [("danp", {}), ("np", {"compression": "gzip"}), ("bp", {"float16": True}),
                                        ("dbp", {"compression": "lzf"})])
def test_h5py_alone_reads_what_the_reader_reads(tmp_path, rule, opts):
    path = make(tmp_path / "run.h5", rule, **opts)          # 1437 samples: the last batch is smaller
    script = doc_example() + """
import sys
import numpy as np
assert "noisesim" not in sys.modules
path, out = sys.argv[1], sys.argv[2]
n = int(h5py.File(path, "r").attrs["complete_steps"])
arrays = {}
for s in range(n):
    for k, v in read_step(path, s).items():
        arrays[f"{s}|{k}"] = np.asarray(v)
arrays["loss_curve"] = loss_curve(path)
np.savez(out, **arrays)
assert "noisesim" not in sys.modules and "rules" not in sys.modules
"""
    out = tmp_path / "plain.npz"
    r = subprocess.run([sys.executable, "-c", script, str(path), str(out)], capture_output=True, text=True,
                       cwd=tmp_path, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    got = np.load(out)
    with open_trace(path) as tr:
        n = tr.complete_steps
        assert n == 4
        np.testing.assert_array_equal(got["loss_curve"], [tr.step(s).loss for s in range(n)])
        for s in range(n):
            st = tr.step(s)
            assert got[f"{s}|loss"] == st.loss
            np.testing.assert_array_equal(got[f"{s}|indices"], st.indices)
            expect = {"losses": st.losses, **{f"xstar/{l}": x for l, x in enumerate(st.inputs)}}
            for key, v in st.record.items():
                for l, a in (enumerate(v) if isinstance(v, list) else [(None, v)]):
                    expect[key if l is None else f"{key}/{l}"] = a
            for name, a in expect.items():
                plain = got[f"{s}|{name}"]
                assert plain.shape == a.shape, (s, name)
                np.testing.assert_array_equal(plain.astype(a.dtype), a, err_msg=f"step {s} {name}")
        assert st.batch_size == 1437 - 3 * 400 and st.indices.shape == (237,)


def test_h5dump_lists_the_arrays_by_name(tmp_path):
    h5dump = shutil.which("h5dump")
    if h5dump is None:
        pytest.skip("h5dump (hdf5-tools) is not installed")
    path = make(tmp_path / "run.h5")
    out = subprocess.run([h5dump, "-H", str(path)], capture_output=True, text=True, timeout=60).stdout
    for name in ('DATASET "dL"', 'GROUP "da"', 'GROUP "inputs"', 'DATASET "indices"', 'DATASET "loss"',
                 'DATASET "losses"', 'DATASET "checksum"'):
        assert name in out, name
    assert re.search(r'DATASET "0" \{\s+DATATYPE\s+H5T_IEEE_F32LE\s+DATASPACE\s+SIMPLE \{ \( 4, 1, 400, 16 \)', out)


def test_each_recorded_array_is_a_chunked_dataset_one_chunk_per_step(tmp_path):
    path = make(tmp_path / "run.h5")
    with h5py.File(path, "r") as f:
        schema = json.loads(f.attrs["schema"])
        stored = [a for a in schema["arrays"] if a["alias"] is None]
        assert [a["name"] for a in stored] == ["dL", "da/0", "da/1", "inputs/0", "inputs/1", "losses"]
        for a in stored:
            ds = f["steps/" + a["name"]]
            assert ds.chunks == (1, *a["shape"]) and ds.maxshape == (None, *a["shape"])
            assert list(ds.attrs["shape_columns"]) == a["columns"]
        assert [a["alias"] for a in schema["arrays"] if a["role"] == "xstar"] == [
            {"of": "inputs/0", "first": True}, {"of": "inputs/1", "first": True}]


def test_format_1_is_refused_naming_both_versions(tmp_path):
    p = tmp_path / "v1.h5"
    with h5py.File(p, "w") as f:       # what a format-1 trace looks like from the outside
        f.attrs["format"] = "noisesim-trace"
        f.attrs["format_version"] = 1
        f.create_dataset("steps/values", data=np.zeros((3, 10), np.float32))
    with pytest.raises(TraceError, match=r"unknown trace format version 1 .*reads format version 2"):
        open_trace(p)


def test_links_are_never_followed(tmp_path):
    path = make(tmp_path / "run.h5")
    other = tmp_path / "other.h5"
    shutil.copy(path, other)
    for link in (h5py.SoftLink("/steps/da/1"), h5py.ExternalLink(str(other), "/steps/da/0")):
        p = tmp_path / "linked.h5"
        shutil.copy(path, p)
        with h5py.File(p, "r+") as f:
            del f["steps/da/0"]
            f["steps/da/0"] = link
        with pytest.raises(TraceError, match=type(link).__name__):
            open_trace(p)


def test_a_record_key_that_collides_with_the_format_is_refused(tmp_path):
    net = noisesim.Network.mlp(SIZES, seed=1, backend="numpy")
    p = net.forward(np.zeros((4, 64), np.float32))
    est = noisesim.Estimate([], 0.1, 1, p.inputs, None, None, {"loss": p.pre[0]})
    with TraceWriter(tmp_path / "x.h5", net, background=False) as tw, \
            pytest.raises(TraceError, match="records an array named 'loss'"):
        tw.write(1, np.arange(4), est)
