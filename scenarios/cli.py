"""The ``noisesim`` command line.

    noisesim list
    noisesim run SCENARIO [--rule R] [--device PRESET] [--set key=value]... [--seed N]
                          [--out DIR] [--trace FILE] [--backend auto|numpy|cupy] [--no-progress]
    noisesim trace info|replay|compare FILE
"""
from __future__ import annotations

import argparse
import inspect
import logging
import sys

import noisesim
import rules

from . import output, trace_cli
from .scenario import SCENARIOS, apply_overrides, get


def _cmd_list(args) -> int:
    print("scenarios:")
    for name, sc in SCENARIOS.items():
        print(f"  {name:<20} {sc.description}")
    print("rules:")
    for name, (cls, fixed) in rules.RULES.items():
        rule = rules.make(name)
        base = name[2:] if name.startswith("d-") else name[1:] if fixed.get("decorrelate") else name
        extra = " (inputs decorrelated)" if fixed.get("decorrelate") else ""
        print(f"  {name:<12} {rule.label:<7} {rules.DESCRIPTIONS[base]}{extra}; "
              f"needs {', '.join(rule.required_access())}")
    print("device presets:")
    for name, p in noisesim.PRESETS.items():
        print(f"  {name:<20} {p.description}")
    return 0


def _config_from_args(args) -> tuple[str, dict]:
    sc = get(args.scenario)
    pairs = list(args.set or [])
    if args.rule:
        pairs.append(("rules", [r.strip() for r in args.rule.split(",")]))
    if args.device:
        pairs.append(("device", args.device))
    if args.seed is not None:
        pairs.append(("seed", args.seed))
    if args.backend:
        pairs.append(("backend", args.backend))
    return sc.name, apply_overrides(sc.defaults, pairs)


def _cmd_run(args) -> int:
    name, cfg = _config_from_args(args)
    out_dir = args.out or output.default_out_dir(name)
    kw = {}
    if args.trace:
        params = inspect.signature(get(name).run).parameters
        if "trace" not in params and not any(p.kind is p.VAR_KEYWORD for p in params.values()):
            raise ValueError(f"scenario {name!r} does not support --trace")
        kw = dict(trace=args.trace, trace_options=trace_cli.run_options(args), scenario=name)
    histories = get(name).run(cfg, progress=not args.no_progress, **kw)
    summary = output.write_run(out_dir, name, cfg, histories)
    print(output.format_table(summary))
    print(f"results written to {out_dir}/ (results.h5, summary.json, learning_curve.png)")
    if args.trace:
        paths = [getattr(h, "trace", None) for h in histories.values()]
        if not all(paths):
            raise ValueError(f"scenario {name!r} did not record a trace for every rule")
        print("traces written: " + ", ".join(paths))
    return 1 if any(r["diverged"] for r in summary["results"].values()) else 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="noisesim", description="Noisy analog hardware simulator and learning-rule testbed")
    p.add_argument("--version", action="version", version=f"noisesim {noisesim.__version__}")
    p.add_argument("-v", "--verbose", action="store_true", help="log what the backend chose and more")
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="list scenarios, rules and device presets").set_defaults(func=_cmd_list)
    r = sub.add_parser("run", help="run a scenario")
    r.add_argument("scenario")
    r.add_argument("--rule", help="rule name(s), comma separated (overrides the scenario's rules)")
    r.add_argument("--device", help="device preset")
    r.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a setting (dotted keys reach nested ones)")
    r.add_argument("--seed", type=int)
    r.add_argument("--out", help="output directory (default runs/<scenario>-<time>)")
    r.add_argument("--backend", choices=["auto", "numpy", "cupy"])
    r.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    trace_cli.add_run_options(r)
    r.set_defaults(func=_cmd_run)
    trace_cli.add_parser(sub)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    try:
        return args.func(args)
    except (ValueError, noisesim.AccessError, RuntimeError, FileNotFoundError) as exc:
        print(f"noisesim: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
