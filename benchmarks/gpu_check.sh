#!/usr/bin/env bash
# The GPU check of the CuPy backend: one script, one run, under 8 minutes, on a machine with
# an NVIDIA GPU whose Python already has CuPy and the project's dependencies (nothing is
# downloaded).
#
#   OUT=/path/to/results bash benchmarks/gpu_check.sh [--cpu] [-- extra pytest arguments]
#
# Stages, each under its own timeout inside an overall budget (GPU_CHECK_BUDGET_S, default
# 450 s), so the script ends in time even when a stage hangs:
#   1. machine  — GPU, driver, CUDA runtime and CuPy versions (nvidia-smi, CuPy);
#   2. install  — pip install --no-deps --no-index --no-build-isolation -e . (where pip cannot
#                 build the project, the checkout is put on PYTHONPATH instead);
#   3. tests    — the suite with NOISESIM_TEST_BACKEND=cupy: every backend_name case on CuPy
#                 as well as NumPy, and a CuPy that cannot run stops it with an error (never
#                 a skip); -m "not slow": the slow tests are NumPy-only scientific checks
#                 that CI runs anyway. The CuPy cases run first, then the rest; failed tests
#                 then run once more (flaky or not);
#   4. figures  — benchmarks/bench_gpu.py: forward ÷ cuBLAS GEMM with both CuPy epilogues,
#                 DANP and BP steps, 50 DANP steps, pulsed ÷ SGD step, cross-backend
#                 agreement and determinism.
# Results in $OUT: gpu_check.log (everything printed), junit_cupy.xml and junit_rest.xml (and
# junit_rerun.xml) with the test results, gpu_figures.json (per stage: exit status and
# seconds; the test counts, CuPy cases apart; the figures). The exit status is 0 only when
# every stage but the rerun succeeded.
#
# --cpu checks the script itself on a machine without a GPU: no install, the suite on NumPy
# (NOISESIM_TEST_BACKEND=numpy) and the benchmark's quick mode on NumPy.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

CPU=0
PYTEST_EXTRA=()
while [[ $# -gt 0 ]]; do
    case "$1" in
        --cpu) CPU=1; shift ;;
        --) shift; PYTEST_EXTRA=("$@"); break ;;
        *) echo "gpu_check: unknown argument $1 (use --cpu, or -- followed by pytest arguments)" >&2; exit 2 ;;
    esac
done

OUT=${OUT:?"set OUT to the folder for the results"}
mkdir -p "$OUT"
LOG=$OUT/gpu_check.log
STATE=$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX")
: > "$LOG"
exec > >(tee -a "$LOG") 2>&1
TEE_PID=$!

BUDGET=${GPU_CHECK_BUDGET_S:-450}
T0=$(date +%s)
PY=${PYTHON:-python}
export PYTHONUNBUFFERED=1
export CUPY_TF32=0                      # never TF32: perturbations of 1e-3 need float32 GEMMs

elapsed() { echo $(( $(date +%s) - T0 )); }
# seconds a stage may take: at most $1, and leave $2 seconds of the budget for later stages
allow() {
    local left=$(( BUDGET - $(elapsed) - $2 ))
    (( left > $1 )) && left=$1
    (( left < 10 )) && left=10
    echo "$left"
}
# run a stage under a timeout; record its exit status and seconds in $STATE/<name>
stage() {
    local name=$1 limit=$2
    shift 2
    echo
    echo "=== [$(date +%T), +$(elapsed) s] stage $name (timeout ${limit} s): $*"
    local t=$(date +%s) rc=0
    timeout --kill-after=10 "$limit" "$@" || rc=$?
    (( rc == 124 || rc == 137 )) && echo "=== stage $name ran out of time (${limit} s)"
    echo "$rc $(( $(date +%s) - t )) $limit" > "$STATE/$name"
    echo "=== stage $name: exit status $rc after $(( $(date +%s) - t )) s"
    return 0
}

echo "gpu_check: $(date -u +%FT%TZ) on ${HOSTNAME:-this machine}, budget ${BUDGET} s, results in $OUT"
git -C "$ROOT" log -1 --format='gpu_check: commit %H %s' 2>/dev/null || true

# 1. machine -----------------------------------------------------------------------------------
cat > "$STATE/machine.py" <<'EOF'
import platform, sys
print("python", platform.python_version(), sys.executable)
try:
    import cupy
    rt = cupy.cuda.runtime
    p = rt.getDeviceProperties(0)
    name = p["name"].decode() if isinstance(p["name"], bytes) else p["name"]
    print(f"cupy {cupy.__version__}; CUDA runtime {rt.runtimeGetVersion()}, driver {rt.driverGetVersion()}; "
          f"GPU 0: {name}, {p['totalGlobalMem'] / 2**30:.0f} GiB, sm_{p['major']}{p['minor']}")
except Exception as exc:
    print(f"cupy: not usable ({type(exc).__name__}: {exc})")
for mod in ("numpy", "numba", "scipy", "h5py", "sklearn", "pytest"):
    try:
        print(mod, __import__(mod).__version__)
    except Exception as exc:
        print(mod, "missing:", exc)
EOF
if command -v nvidia-smi > /dev/null; then
    timeout 30 nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap --format=csv || true
else
    echo "nvidia-smi: not found"
fi
stage machine "$(allow 60 400)" "$PY" "$STATE/machine.py"

# 2. install -----------------------------------------------------------------------------------
INSTALL=pip
if (( CPU )); then
    INSTALL=skipped
    echo "=== stage install: skipped (--cpu)"
else
    stage install "$(allow 90 380)" "$PY" -m pip install --no-deps --no-index --no-build-isolation -e "$ROOT"
    read -r rc _ < "$STATE/install"
    if (( rc != 0 )) || ! (cd "$STATE" && "$PY" -c "import noisesim, rules, scenarios") 2> /dev/null; then
        # (e.g. no `wheel` for setuptools' bdist_wheel): the checkout on PYTHONPATH, and a
        # `noisesim` command that runs the command line as the console script would
        INSTALL=PYTHONPATH
        export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
        mkdir -p "$STATE/bin"
        printf '#!/bin/sh\nexec "%s" -m scenarios.cli "$@"\n' "$(command -v "$PY")" > "$STATE/bin/noisesim"
        chmod +x "$STATE/bin/noisesim"
        export PATH="$STATE/bin:$PATH"
        echo "=== install: pip could not install the checkout; using PYTHONPATH=$ROOT and $STATE/bin/noisesim"
    fi
fi
echo "$INSTALL" > "$STATE/install_method"
"$PY" -c "import noisesim; print('noisesim', noisesim.__version__, 'from', noisesim.__file__)" || true

# 3. tests -------------------------------------------------------------------------------------
if (( CPU )); then TEST_BACKEND=numpy; else TEST_BACKEND=cupy; fi
CACHE="$STATE/pytest_cache"
PYTEST=("$PY" -m pytest -q -ra --durations=15 -m "not slow" -o cache_dir="$CACHE" -o timeout=150
        -p no:randomly "${PYTEST_EXTRA[@]}")
# the CuPy cases first (backend_name cases on cupy, test_gpu_*, the CuPy path's CPU checks), so
# that a suite cut off by its timeout has still run them; then everything else
SELECT_CUPY="cupy or gpu"
NOISESIM_TEST_BACKEND=$TEST_BACKEND NOISESIM_TEST_LOG="$STATE/tests_cupy.log" \
    stage tests_cupy "$(allow 180 200)" "${PYTEST[@]}" -k "$SELECT_CUPY" --junitxml="$OUT/junit_cupy.xml"
NOISESIM_TEST_BACKEND=$TEST_BACKEND NOISESIM_TEST_LOG="$STATE/tests_rest.log" \
    stage tests_rest "$(allow 200 130)" "${PYTEST[@]}" -k "not ($SELECT_CUPY)" --junitxml="$OUT/junit_rest.xml"
read -r rc_cupy _ < "$STATE/tests_cupy"
read -r rc_rest _ < "$STATE/tests_rest"
if (( rc_cupy == 1 || rc_rest == 1 )); then       # some tests failed: run only those once more
    NOISESIM_TEST_BACKEND=$TEST_BACKEND stage rerun "$(allow 60 120)" "${PYTEST[@]}" --lf \
        --junitxml="$OUT/junit_rerun.xml"
fi

# 4. figures -----------------------------------------------------------------------------------
if (( CPU )); then BENCH=(--backend numpy --quick); else BENCH=(--backend cupy); fi
stage bench "$(allow 200 15)" "$PY" "$ROOT/benchmarks/bench_gpu.py" "${BENCH[@]}" --json "$STATE/bench.json"

# the summary ------------------------------------------------------------------------------------
TOTAL=$(elapsed)
rc=0
"$PY" - "$STATE" "$OUT" "$TEST_BACKEND" "$TOTAL" "$BUDGET" <<'EOF' || rc=$?
import json, os, sys, xml.etree.ElementTree as ET
state, out, backend, total, budget = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])

def stage(name):
    p = os.path.join(state, name)
    if not os.path.exists(p):
        return None
    rc, secs, limit = (int(v) for v in open(p).read().split())
    return {"exit_status": rc, "seconds": secs, "timeout_s": limit, "timed_out": rc in (124, 137)}

def outcomes_of_junit(path):
    for tc in ET.parse(path).getroot().iter("testcase"):
        kinds = {child.tag for child in tc}
        yield (f"{tc.get('classname', '')}::{tc.get('name', '')}",
               "failed" if "failure" in kinds else "errors" if "error" in kinds
               else "skipped" if "skipped" in kinds else "passed")

def outcomes_of_log(path):
    # tests.log (NOISESIM_TEST_LOG): what finished before the stage was cut off
    seen = {}
    for line in open(path):
        node, when, outcome, _ = line.rstrip("\n").split("\t")
        kind = {"passed": "passed", "skipped": "skipped"}.get(outcome, "failed" if when == "call" else "errors")
        if seen.get(node) in (None, "passed"):
            seen[node] = kind
    return seen.items()

def junit(*runs):
    """Counts over the runs [(junit.xml, log or None)]: a run's junit file, or what its log
    recorded when the run was cut off before writing one."""
    outcomes, sources = [], []
    for path, log in runs:
        if os.path.exists(path):
            sources.append(os.path.basename(path))
            outcomes += list(outcomes_of_junit(path))
        elif log and os.path.exists(log):
            sources.append(f"{os.path.basename(log)} (partial: the run was cut off)")
            outcomes += list(outcomes_of_log(log))
    if not sources:
        return None
    source = ", ".join(sources)
    counts = {"total": 0, "passed": 0, "failed": 0, "errors": 0, "skipped": 0}
    cupy = dict(counts)
    failed, skipped_cupy = [], []
    for node, kind in outcomes:
        name = node.rsplit("::", 1)[-1]
        params = name.split("[", 1)[1] if "[" in name else ""
        # a CuPy case: a backend_name case on cupy, or a GPU-only test (test_gpu_*)
        is_cupy = "cupy" in params.replace("]", "").split("-") or name.startswith("test_gpu_")
        for c in (counts, cupy) if is_cupy else (counts,):
            c["total"] += 1
            c[kind] += 1
        if kind in ("failed", "errors"):
            failed.append(node)
        if kind == "skipped" and is_cupy:
            skipped_cupy.append(node)
    return {"source": source, "counts": counts, "cupy_cases": cupy, "failed": failed[:100],
            "cupy_cases_skipped": skipped_cupy[:100]}

res = {"backend_under_test": backend, "total_seconds": total, "budget_s": budget,
       "install": open(os.path.join(state, "install_method")).read().strip(),
       "stages": {n: stage(n) for n in ("machine", "install", "tests_cupy", "tests_rest", "rerun", "bench")},
       "tests": junit((os.path.join(out, "junit_cupy.xml"), os.path.join(state, "tests_cupy.log")),
                      (os.path.join(out, "junit_rest.xml"), os.path.join(state, "tests_rest.log"))),
       "rerun": junit((os.path.join(out, "junit_rerun.xml"), None))}
bench = os.path.join(state, "bench.json")
res["figures"] = json.load(open(bench)) if os.path.exists(bench) else None
ok = all(s is None or s["exit_status"] == 0 for n, s in res["stages"].items() if n not in ("install", "rerun"))
res["ok"] = ok
with open(os.path.join(out, "gpu_figures.json"), "w") as f:
    json.dump(res, f, indent=1, ensure_ascii=False)
t = res["tests"]
print()
print(f"gpu_check: {'OK' if ok else 'FAILED'} in {total} s (budget {budget} s); install: {res['install']}")
if t:
    print(f"  tests: {t['counts']}; CuPy cases: {t['cupy_cases']}")
    for n in t["failed"][:20]:
        print(f"  failed: {n}")
if res["rerun"]:
    print(f"  rerun of the failed tests: {res['rerun']['counts']}")
fig = res["figures"]
if fig:
    for row in fig.get("forward", []):
        print(f"  forward {row['shape']:<10} {row['device']:<20} {row['epilogue']:<8} {row['ratio']['median']:.2f}×")
    e = fig.get("danp_epoch_50_steps_s")
    if e:
        print(f"  DANP epoch ({e['steps']} steps): {e['median']:.3f} s")
print(f"  results in {out}: gpu_figures.json, gpu_check.log, junit_cupy.xml, junit_rest.xml")
sys.exit(0 if ok else 1)
EOF
rm -rf "$STATE"
exec >&- 2>&-                           # let tee write the log's last lines before the exit
wait "$TEE_PID" 2> /dev/null || true
exit $rc
