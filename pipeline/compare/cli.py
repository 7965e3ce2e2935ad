"""`python -m pipeline compare --config NIGHTLY --out DIR [--update-golden] [--executor local|slurm]`.

Runs (or submits) every arm × seed of a nightly recipe, then compares them and writes DIR/report.md,
DIR/summary.json and DIR/plots/*.png. Exit codes: 0 all checks pass; 1 a check failed (a run did not
finish, a regression against the golden values, a variant below the baseline beyond tolerance; the
report names it); 2 usage or config error (nothing is run). With `--executor slurm` the command exits
0 once the jobs are submitted; the dependent report job's exit code is the verdict.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

EXIT_OK, EXIT_CHECK_FAILED, EXIT_USAGE = 0, 1, 2

__all__ = ["EXIT_CHECK_FAILED", "EXIT_OK", "EXIT_USAGE", "add_compare_parser", "compare_main", "main"]

HELP = "run GRPO and GRPO-λ arms over paired seeds, compare them against golden values, write a report"


def _add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True, help="nightly recipe YAML (configs/nightly/*.yaml)")
    p.add_argument("--out", required=True, help="output directory (runs/, logs/, plots/, report.md)")
    p.add_argument(
        "--update-golden",
        action="store_true",
        help="record this comparison's values as the recipe's golden values (deliberately)",
    )
    p.add_argument(
        "--executor",
        choices=("local", "slurm"),
        default="local",
        help="local: sequential subprocesses (default); slurm: one sbatch per run + a dependent report job",
    )
    p.add_argument(
        "--report-only",
        action="store_true",
        help="do not start runs: compare the run dirs already under --out",
    )


def add_compare_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the `compare` subcommand to `python -m pipeline` (sets `func=compare_main`)."""
    p = subparsers.add_parser("compare", help=HELP, description=HELP)
    _add_arguments(p)
    p.set_defaults(func=compare_main)
    return p


def _error(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return EXIT_USAGE


def compare_main(args: argparse.Namespace) -> int:
    """Run the nightly described by `args` (see the module doc); returns the exit code."""
    from pipeline.compare.analysis import analyze
    from pipeline.compare.collect import load_run
    from pipeline.compare.golden import (
        Check,
        check_golden,
        check_runs,
        check_vs_baseline,
        golden_values,
        read_golden,
        write_golden,
    )
    from pipeline.compare.nightly_config import load_nightly_config
    from pipeline.compare.report import write_report
    from pipeline.compare.runner import plan_runs, recipe_fingerprint, run_local, submit_slurm
    from pipeline.config import ConfigError

    out = Path(args.out)
    try:
        cfg = load_nightly_config(args.config)
        runs = plan_runs(cfg, out)
        recipe = recipe_fingerprint(cfg)
        golden = None if args.update_golden else read_golden(cfg.golden)
    except (ConfigError, FileNotFoundError, ValueError) as e:
        return _error(str(e))

    start = time.monotonic()
    if not args.report_only:
        if args.executor == "slurm":
            try:
                submit_slurm(
                    cfg, runs, out, nightly_config_path=args.config, update_golden=args.update_golden
                )
            except (RuntimeError, FileNotFoundError) as e:
                return _error(f"submitting to SLURM: {e}")
            return EXIT_OK
        run_local(cfg, runs, out)
    elapsed = time.monotonic() - start

    results = [
        load_run(r.run_dir, arm=r.arm, seed=r.seed, iterations=cfg.iterations, eval_metric=cfg.eval_metric)
        for r in runs
    ]
    try:
        comparison = analyze(cfg, results)
    except (KeyError, ValueError) as e:
        return _error(f"comparing the runs: {e}")
    checks = check_runs(comparison)
    if args.update_golden:
        try:
            write_golden(cfg.golden, golden_values(comparison, recipe))
            checks.append(Check("golden update", True, f"golden values written to {cfg.golden}"))
        except ValueError as e:
            checks.append(Check("golden update", False, str(e)))
    else:
        checks += check_golden(comparison, golden, recipe)
    checks += check_vs_baseline(comparison)
    extra = (
        f"Wall time of the runs started by this invocation: {elapsed / 60:.1f} min."
        if not args.report_only
        else ""
    )
    report = write_report(comparison, checks, out, extra=extra)
    failed = [c for c in checks if not c.passed]
    for c in failed:
        print(f"FAILED {c.name}: {c.message}", file=sys.stderr)
    print(f"report: {report} ({'PASS' if not failed else f'{len(failed)} check(s) failed'})")
    return EXIT_CHECK_FAILED if failed else EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m pipeline.compare` (same arguments as `python -m pipeline compare`)."""
    parser = argparse.ArgumentParser(prog="python -m pipeline.compare", description=HELP)
    _add_arguments(parser)
    return compare_main(parser.parse_args(argv))
