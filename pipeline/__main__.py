"""`python -m pipeline <stage> --config CFG --run-dir DIR [section.key=value ...]`.

Stages: prepare (data, model, HF->Megatron), rollout and train (one iteration each, staged mode),
evaluate, export (Megatron->HF), report (PNG curves), run (the whole loop, then evaluate, export and
report). Every stage reads its inputs from the run dir, writes its outputs atomically and records its
state in manifest.json; a killed `run` continues from its last complete iteration when started again.
`evaluate` also works on any HF directory: `python -m pipeline evaluate --model-dir D --benchmarks a,b`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

STAGES = ("prepare", "rollout", "train", "evaluate", "export", "report", "run", "status")
EXIT_USAGE, EXIT_NONFINITE = 2, 3


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m pipeline", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="stage", required=True, metavar="STAGE")
    helps = {
        "prepare": "build/convert the model and freeze the training data into the run dir",
        "rollout": "sample the next iteration's rollouts with the latest exported weights (staged mode)",
        "train": "train on the next iteration's rollouts, checkpoint and export weights (staged mode)",
        "evaluate": "evaluate the run's latest model (or --model-dir) on benchmarks",
        "export": "convert the run's latest checkpoint to an HF directory (run_dir/export/hf or --out)",
        "report": "draw PNG curves and a markdown summary from metrics.jsonl",
        "run": "the whole loop: prepare, iterations (rollout, reward, train, refit), evaluate, export, report",
        "status": "print the run dir's progress (read-only, no lock): one field with --field, else JSON",
    }
    for name in STAGES:
        p = sub.add_parser(name, help=helps[name], description=helps[name])
        p.add_argument("--config", help="experiment YAML (default: the run dir's resolved config.yaml)")
        p.add_argument("--run-dir", required=name != "evaluate", help="the run directory")
        p.add_argument("overrides", nargs="*", help="config overrides section.key=value")
        if name == "evaluate":
            p.add_argument("--model-dir", help="evaluate this HF directory instead of a run's model")
            p.add_argument("--benchmarks", help="comma-separated benchmark names (default: the config's)")
            p.add_argument("--samples", type=int, help="samples per problem (default: run.eval_samples)")
            p.add_argument("--limit", type=int, help="at most this many problems per benchmark")
            p.add_argument("--out", help="report directory (default: run_dir/eval, or MODEL_DIR/eval)")
            from pipeline.stages.evaluate import add_evaluate_arguments

            add_evaluate_arguments(p, with_common=False)
        if name == "status":
            p.add_argument("--field", help="print only this field (e.g. completed_iterations, done)")
        if name == "export":
            p.add_argument("--out", help="output HF directory (default: run_dir/export/hf)")
    _add_compare(sub)
    return parser


def _add_compare(sub: argparse._SubParsersAction) -> None:
    """`python -m pipeline compare ...` (pipeline/compare/cli.py; sets `func` on its parser)."""
    from pipeline.compare.cli import add_compare_parser

    add_compare_parser(sub)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `python -m pipeline` and the `grpo-lambda` console script; returns the exit code."""
    args = build_parser().parse_args(argv)
    if getattr(args, "func", None) is not None:  # `compare` dispatches itself
        return int(args.func(args))
    from pipeline.config import ConfigError
    from pipeline.manifest import ManifestError, RunDirLockedError
    from pipeline.stages.cli import dispatch
    from pipeline.stages.state import NonFiniteError
    from pipeline.validation import ValidationError

    try:
        dispatch(args)
    except (ConfigError, ValidationError, RunDirLockedError, ManifestError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except NonFiniteError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_NONFINITE
    return 0


if __name__ == "__main__":
    sys.exit(main())
