"""``noisesim trace info|replay|compare FILE`` and the ``--trace`` options of ``noisesim run``."""
from __future__ import annotations

import csv
import math
import warnings

import numpy as np

import noisesim


def add_run_options(r) -> None:
    r.add_argument("--trace", metavar="FILE", help="record every step each rule consumed into an HDF5 trace "
                   "(one file per rule: FILE, or FILE-<rule>.h5 when several rules run)")
    r.add_argument("--trace-compression", choices=["none", "gzip", "lzf"], default="none",
                   help="compression of the per-step arrays (default none: activity noise barely compresses)")
    r.add_argument("--trace-float16", action="store_true", help="store the arrays as float16 (half the size; lossy)")


def run_options(args) -> dict:
    return {"compression": None if args.trace_compression == "none" else args.trace_compression,
            "float16": bool(args.trace_float16)}


def add_parser(sub) -> None:
    t = sub.add_parser("trace", help="inspect, replay or compare rules on a recorded trace")
    tsub = t.add_subparsers(dest="trace_command", required=True)
    i = tsub.add_parser("info", help="config, steps, sizes and δa statistics of a trace")
    i.add_argument("file")
    i.add_argument("--no-verify", action="store_true", help="skip checking every step's checksum")
    i.add_argument("--max-steps", type=int, default=200, help="steps sampled for the statistics (default 200)")
    i.set_defaults(func=cmd_info)
    r = tsub.add_parser("replay", help="re-apply the recorded steps and compare with the recorded final weights")
    r.add_argument("file")
    r.add_argument("--steps", type=int, help="replay only the first N steps")
    r.set_defaults(func=cmd_replay)
    c = tsub.add_parser("compare", help="angle per step between other estimators and the recorded rule")
    c.add_argument("file")
    c.add_argument("--rules", default="anp,inp-scale,np-scale,regression",
                   help="estimators, comma separated (rule names or np-scale, inp-scale)")
    c.add_argument("--steps", type=int, help="only the first N steps")
    c.add_argument("--csv", metavar="OUT", help="write the per-step, per-layer angles to a CSV file")
    c.set_defaults(func=cmd_compare)


def cmd_info(args) -> int:
    d = noisesim.trace.info(args.file, verify=not args.no_verify, max_steps=args.max_steps)
    print(noisesim.trace.format_info(d))
    return 0 if d["complete"] else 3


def cmd_replay(args) -> int:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", noisesim.trace.TraceWarning)
        res = noisesim.trace.replay(args.file, steps=args.steps)
    for w in caught:
        print(f"warning: {w.message}")
    print(f"replayed {res.steps} steps of {args.file}")
    if res.matches is None:
        print("no recorded final state to compare with (partial replay or an interrupted run)")
        return 0
    worst = max(res.max_abs_diff.values()) if res.max_abs_diff else 0.0
    if res.matches:
        print("final weights match the recorded run bit for bit")
        return 0
    print(f"final weights DIFFER from the recorded run (max |Δ| = {worst:.3g})"
          + ("" if res.exact_expected else "; expected for a lossy float16 trace"))
    return 1 if res.exact_expected else 0


def cmd_compare(args) -> int:
    from .trace_compare import compare

    names = [n.strip() for n in args.rules.split(",") if n.strip()]
    res = compare(args.file, names, steps=args.steps)
    n = len(res["steps"])
    print(f"angle (degrees) to the recorded rule's update over {n} steps, mean ± std [min, max]")
    layers = sorted(k for k in res[names[0]] if k != "all") if names else []
    head = f"{'estimator':<12} {'all layers':>26}" + "".join(f" {'layer ' + str(l):>14}" for l in layers)
    print(head)
    for name in names:
        a = res[name]
        s = a["all"]
        line = f"{name:<12} {np.nanmean(s):8.2f} ± {np.nanstd(s):5.2f} [{np.nanmin(s):5.1f}, {np.nanmax(s):5.1f}]"
        line += "".join(f" {np.nanmean(a[l]):8.2f} ± {np.nanstd(a[l]):4.1f}" for l in layers)
        print(line)
    if args.csv:
        with open(args.csv, "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["step", "estimator", "layer", "angle_deg"])
            for name in names:
                for k, v in res[name].items():
                    for step, ang in zip(res["steps"], v):
                        w.writerow([step, name, k, "" if math.isnan(ang) else f"{ang:.6g}"])
        print(f"per-step angles written to {args.csv}")
    return 0
