"""The ``noisesim`` command line.

    noisesim list
    noisesim run SCENARIO [--quick] [--rule R] [--device PRESET] [--set key=value]... [--seed N]
                          [--out DIR] [--trace FILE] [--backend auto|numpy|cupy] [--no-progress]
                          [--checkpoint-every N]
    noisesim run --resume DIR
    noisesim sweep SWEEP.toml [--scheduler ADDRESS] [--workers N] [--out DIR]
    noisesim report RUN_DIR... [-o docs/results.md]
    noisesim trace info|replay|compare FILE
"""
from __future__ import annotations

import argparse
import contextlib
import logging
import signal
import sys
import time

import noisesim
import noisesim.backend
import rules

from . import checkpoint, output, report, sweep, trace_cli
from .scenario import SCENARIOS, Context, configure, execute, get, validate

log = logging.getLogger("noisesim")


def _cmd_list(args) -> int:
    if args.names:
        print("\n".join(SCENARIOS))
        return 0
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
    if args.rule is not None:
        names = [r.strip() for r in args.rule.split(",") if r.strip()]
        if not names:
            raise ValueError(f"--rule {args.rule!r} names no rule; valid rules: {sorted(rules.RULES)}")
        for n in names:
            if n.lower() not in rules.RULES:
                raise ValueError(f"unknown rule {n!r}; valid rules: {sorted(rules.RULES)}")
        pairs.append(("rules", names))
    if args.device:
        if args.device not in noisesim.PRESETS:
            raise ValueError(f"unknown device preset {args.device!r}; valid presets: {sorted(noisesim.PRESETS)}")
        pairs.append(("device", args.device))
    if args.seed is not None:
        pairs.append(("seed", args.seed))
    if args.backend:
        pairs.append(("backend", args.backend))
    return sc.name, configure(sc, pairs, quick=args.quick)


def _cmd_run(args) -> int:
    if args.resume:                                    # checkpoints: the recorded command again
        args = checkpoint.resumed_args(args, build_parser())
    elif args.scenario is None:
        raise ValueError("noisesim run needs a SCENARIO (or --resume DIR)")
    name, cfg = _config_from_args(args)
    sc = get(name)
    if args.trace and not sc.traces:
        raise ValueError(f"scenario {name!r} does not support --trace")
    validate(cfg)
    out_dir = output.prepare_out_dir(args.out or output.default_out_dir(name))
    if args.trace:
        output.check_trace_path(args.trace, out_dir)
    ctx = Context(progress=not args.no_progress, trace=args.trace,
                  trace_options=trace_cli.run_options(args) if args.trace else {}, scenario=name)
    meta = {"quick": bool(args.quick), "command": ["noisesim", *sys.argv[1:]] if args.argv is None else args.argv,
            "backend": noisesim.backend.get_backend(cfg["backend"], cfg["dtype"]).name, "dtype": cfg["dtype"]}
    t0 = time.perf_counter()

    def write(result, **more):
        return output.write_result(out_dir, name, cfg, result, **{**meta, **ctx.used(),
                                   "wall_s": round(time.perf_counter() - t0, 2), **more})

    def on_partial(result):    # each finished run is on disk at once
        try:
            write(result, figures=False, complete=False)
        except OSError as exc:
            log.warning("could not write the partial results into %s: %s", out_dir, exc)
    ctx.on_partial = on_partial
    try:
        with _terminate_as_interrupt(), checkpoint.cli_session(args, out_dir):
            result = execute(sc, cfg, ctx)
    except Terminated:
        return _interrupted(write, ctx, out_dir, "terminated (SIGTERM)", 143)
    except KeyboardInterrupt:
        return _interrupted(write, ctx, out_dir, "interrupted by the user (Ctrl-C)", 130)
    except Exception as exc:
        if not ctx.runs:   # nothing trained yet: a plain error (a bad setting found late)
            raise
        return _interrupted(write, ctx, out_dir, _cause(exc), 2)
    write(result, complete=True)
    wall = time.perf_counter() - t0
    print(output.format_report(result))
    print(f"results written to {out_dir}/ (results.h5, summary.json, "
          + ", ".join(f"{f}.png" for f in result.figures) + f") in {wall:.1f} s")
    main_t = result.tables[result.main]
    return 1 if "diverged" in main_t.columns and any(main_t.column("diverged")) else 0


class Terminated(KeyboardInterrupt):
    """SIGTERM (``kill``, a batch system's time limit) while a run trains."""


@contextlib.contextmanager
def _terminate_as_interrupt():
    """While the block runs, SIGTERM stops it like Ctrl-C, so the run writes what it has."""
    def stop(signum, frame):
        raise Terminated()
    try:
        old = signal.signal(signal.SIGTERM, stop)
    except ValueError:      # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def _cause(exc) -> str:
    from .train import _why

    return _why(exc)


def _interrupted(write, ctx, out_dir, why: str, code: int) -> int:
    """Write what the run has (every run reported so far, marked interrupted) and say so."""
    from .experiment import partial_result

    result = partial_result(ctx.runs, ctx.scenario)
    result.notes.insert(0, f"the run was interrupted: {why}")
    try:
        write(result, complete=False, interrupted=why)
        where = f"the results so far are in {out_dir}/ (summary.json, results.h5)"
    except Exception as exc:   # noqa: BLE001 - the interruption is the message; say this too
        where = f"the results so far could not be written into {out_dir}/: {exc}"
    if ctx.runs:
        print(output.format_report(result))
    print(f"noisesim: run stopped: {why}; {where}", file=sys.stderr)
    return code


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="noisesim", description="Noisy analog hardware simulator and learning-rule testbed")
    p.add_argument("--version", action="version", version=f"noisesim {noisesim.__version__}")
    p.add_argument("-v", "--verbose", action="store_true", help="log what the backend chose and more")
    sub = p.add_subparsers(dest="command", required=True)
    lp = sub.add_parser("list", help="list scenarios, rules and device presets")
    lp.add_argument("--names", action="store_true", help="only the scenario names, one a line (for scripts)")
    lp.set_defaults(func=_cmd_list)
    r = sub.add_parser("run", help="run a scenario")
    r.add_argument("scenario", nargs="?")
    r.add_argument("--quick", action="store_true", help="the scenario's smoke size (under a minute)")
    r.add_argument("--rule", help="rule name(s), comma separated (overrides the scenario's rules)")
    r.add_argument("--device", help="device preset")
    r.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a setting (dotted keys reach nested ones)")
    r.add_argument("--seed", type=int)
    r.add_argument("--out", help="output directory (default runs/<scenario>-<time>)")
    r.add_argument("--backend", choices=["auto", "numpy", "cupy"])
    r.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    trace_cli.add_run_options(r)
    checkpoint.add_run_options(r)
    r.set_defaults(func=_cmd_run)
    report.add_parser(sub)
    trace_cli.add_parser(sub)
    sweep.add_parser(sub)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    args.argv = None if argv is None else ["noisesim", *argv]
    args.cli_argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    try:
        return args.func(args)
    except (ValueError, noisesim.AccessError, RuntimeError, FileNotFoundError) as exc:
        print(f"noisesim: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
