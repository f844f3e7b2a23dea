"""The layering noisesim ← rules ← scenarios, checked on the source: no module of a lower
package imports an upper one, directly or through importlib/__import__, and importing the
device (with its traces) loads neither package."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
UPPER = {"noisesim": {"rules", "scenarios"}, "rules": {"scenarios"}}


def _imports(path: Path):
    """``(line, what)`` for every import in a module and every dynamic import call."""
    tree = ast.parse(path.read_text(), str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                yield node.lineno, a.name
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.lineno, node.module
        elif isinstance(node, ast.Call):
            f = node.func
            name = f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else None
            if name in ("import_module", "__import__", "find_spec", "spec_from_file_location", "run_module"):
                arg = node.args[0] if node.args else None
                yield node.lineno, arg.value if isinstance(arg, ast.Constant) else f"<dynamic {name}>"


@pytest.mark.parametrize("package", sorted(UPPER))
def test_no_module_imports_an_upper_layer(package):
    bad = []
    for path in sorted((ROOT / package).rglob("*.py")):
        for line, what in _imports(path):
            top = str(what).split(".")[0]
            if top in UPPER[package] or str(what).startswith("<dynamic"):
                bad.append(f"{path.relative_to(ROOT)}:{line} imports {what}")
    assert not bad, "\n".join(bad)


def test_importing_the_device_and_replaying_loads_no_rules():
    code = """
import sys, tempfile, os
import numpy as np
import noisesim, noisesim.trace
assert "rules" not in sys.modules and "scenarios" not in sys.modules
# a replay with the rule handed over never needs the registry
class Plain:
    def config(self): return {"rule": "plain"}
    def state(self): return {"initialised": False}
    def init(self, net): self.step = 0
    def updates_from_record(self, rec): return [np.zeros((n_out, n_in), np.float32) for n_in, n_out in zip([4, 3], [3, 2])]
    def apply(self, net, est):
        for l, u in enumerate(est.updates): net.apply_update(l, u)
net = noisesim.Network.mlp([4, 3, 2], seed=0, backend="numpy")
path = os.path.join(tempfile.mkdtemp(), "t.h5")
with noisesim.trace.TraceWriter(path, net, Plain(), background=False) as tw:
    x = np.ones((5, 4), np.float32)
    p = net.forward(x)
    tw.write(1, np.arange(5), noisesim.Estimate([], 0.5, 1, [p.inputs[0], p.inputs[1]], None, None, {"a": p.pre[0]}))
try:
    noisesim.trace.replay(path)
except noisesim.trace.TraceError as exc:
    assert "no rule named 'plain' is registered" in str(exc), exc
else:
    raise AssertionError("a rule nobody registered was found")
res = noisesim.trace.replay(path, rule=Plain())
assert res.steps == 1 and res.matches
assert "rules" not in sys.modules and "scenarios" not in sys.modules
"""
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                       env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "OPENBLAS_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-3000:]


def test_rules_fill_the_registry_the_device_owns():
    import noisesim
    import rules

    assert set(rules.RULES) <= set(noisesim.registry.RULES)
    rule = noisesim.registry.make_rule({"rule": "anp", "decorrelate": True, "baseline": "noisy"})
    assert isinstance(rule, rules.ActivityNodePerturbation) and rule.label == "DANP"
    assert rules.Estimate is noisesim.Estimate is noisesim.trace.ReplayedEstimate   # one Estimate type
