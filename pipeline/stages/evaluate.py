"""`python -m pipeline evaluate --model-dir HF_DIR --benchmarks a,b --samples k`: evaluate any HF model.

`pipeline/__main__.py` owns the parser; it calls `add_evaluate_arguments(parser)` for the evaluate
sub-command and `evaluate_cli(args)` to run it. With `--config`, sampling settings, local benchmark
files, the prompt template and the arithmetic level come from the experiment config (and its
overrides); flags given on the command line win. Without a config the flags' defaults below apply.
Prints the markdown table and writes results.json / results.md to `--out` (default: MODEL_DIR/eval).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class StandaloneEvalSettings:
    """Evaluation settings when no experiment config is given (each has a command-line flag)."""

    samples: int = 1
    """k samples per problem for pass@1."""
    temperature: float = 0.6
    """Sampling temperature of the k samples (0 = greedy; greedy accuracy is always reported)."""
    max_new_tokens: int = 1024
    max_model_len: int | None = None
    """None: the model's max_position_embeddings, capped at 32768."""
    template: str = "auto"
    seed: int = 0
    dtype: str = "auto"
    """vLLM dtype; "auto" = the checkpoint's own (float32 for the tiny models, bfloat16 for Qwen/Llama)."""
    difficulty: int = 1
    """Level of the `arithmetic` benchmark."""
    limit: int | None = None


def add_evaluate_arguments(parser: argparse.ArgumentParser, *, with_common: bool = True) -> None:
    """Add the evaluate flags. with_common=False skips --model-dir/--benchmarks/--samples/--limit/--out
    when the caller's parser defines those already."""
    if with_common:
        parser.add_argument("--model-dir", help="HF model directory to evaluate")
        parser.add_argument("--benchmarks", help="comma-separated benchmark names")
        parser.add_argument("--samples", type=int, help="k samples per problem (pass@1 over k)")
        parser.add_argument("--limit", type=int, help="at most this many problems per benchmark")
        parser.add_argument("--out", help="report directory (default: MODEL_DIR/eval)")
    parser.add_argument("--temperature", type=float, help="sampling temperature of the k samples")
    parser.add_argument("--max-new-tokens", type=int, help="most tokens per response")
    parser.add_argument("--max-model-len", type=int, help="prompt + response token limit")
    parser.add_argument("--template", choices=["auto", "chat", "plain"], help="prompt template")
    parser.add_argument("--seed", type=int, help="sampling seed")
    parser.add_argument("--dtype", help="vLLM dtype (auto, float32, bfloat16, ...)")
    parser.add_argument(
        "--eval-file",
        action="append",
        default=[],
        metavar="NAME=PATH",
        help="local file for a benchmark (repeatable), e.g. math500=/data/math500.parquet",
    )


def _from_config(args: argparse.Namespace) -> tuple[StandaloneEvalSettings, list[str], dict[str, list[str]]]:
    """Settings, benchmark names and local files from --config (+ overrides), else the defaults."""
    if not args.config:
        return StandaloneEvalSettings(), [], {}
    from pipeline.config import load_config

    cfg = load_config(args.config, list(args.overrides))
    settings = StandaloneEvalSettings(
        samples=cfg.run.eval_samples,
        temperature=cfg.rollout.temperature,
        max_new_tokens=cfg.rollout.max_new_tokens,
        max_model_len=cfg.rollout.max_model_len,
        template=cfg.data.prompt_template,
        seed=cfg.run.seed,
        dtype=cfg.model.params_dtype,
        difficulty=cfg.data.arithmetic_difficulty,
        limit=cfg.data.eval_limit,
    )
    return settings, list(cfg.data.eval_benchmarks), {k: list(v) for k, v in cfg.data.eval_files.items()}


def _flag(args: argparse.Namespace, name: str) -> Any:
    """A flag's value, None when the caller's parser does not define it (then the settings apply)."""
    return vars(args)[name] if name in vars(args) else None


def resolve_eval_settings(
    args: argparse.Namespace,
) -> tuple[StandaloneEvalSettings, list[str], dict[str, list[str]]]:
    """Merge config (if any) and command-line flags; validate the model dir and benchmark list."""
    settings, benchmarks, files = _from_config(args)
    flags = {
        "samples": _flag(args, "samples"),
        "temperature": _flag(args, "temperature"),
        "max_new_tokens": _flag(args, "max_new_tokens"),
        "max_model_len": _flag(args, "max_model_len"),
        "template": _flag(args, "template"),
        "seed": _flag(args, "seed"),
        "dtype": _flag(args, "dtype"),
        "limit": _flag(args, "limit"),
    }
    settings = replace(settings, **{k: v for k, v in flags.items() if v is not None})
    if _flag(args, "benchmarks"):
        benchmarks = [b.strip() for b in args.benchmarks.split(",") if b.strip()]
    if not benchmarks:
        raise ValueError(
            "evaluate: no benchmarks (give --benchmarks a,b or a --config with data.eval_benchmarks)"
        )
    for item in _flag(args, "eval_file") or []:
        name, sep, path = item.partition("=")
        if not sep:
            raise ValueError(f"--eval-file expects NAME=PATH, got {item!r}")
        files.setdefault(name, []).append(path)
    if not _flag(args, "model_dir"):
        raise ValueError("evaluate: --model-dir is required for a standalone evaluation")
    model_dir = Path(args.model_dir)
    if not (model_dir / "config.json").is_file():
        raise FileNotFoundError(f"--model-dir {model_dir}: no config.json (not an HF model directory)")
    if settings.max_model_len is None:
        max_pos = json.loads((model_dir / "config.json").read_text())["max_position_embeddings"]
        settings = replace(settings, max_model_len=min(int(max_pos), 32768))
    return settings, benchmarks, files


def evaluate_cli(args: argparse.Namespace) -> dict[str, Any]:
    """Run the standalone evaluation described by `args`; print the table; return the results."""
    from pipeline.evaluation import evaluate_model, format_eval_table, write_eval_report

    settings, benchmarks, files = resolve_eval_settings(args)
    results = evaluate_model(
        args.model_dir,
        benchmarks,
        samples=settings.samples,
        limit=settings.limit,
        local_files={k: v for k, v in files.items() if k in benchmarks},
        template=settings.template,
        max_new_tokens=settings.max_new_tokens,
        temperature=settings.temperature,
        seed=settings.seed,
        max_model_len=settings.max_model_len,
        dtype=settings.dtype,
        difficulty=settings.difficulty,
    )
    out = Path(_flag(args, "out") or Path(args.model_dir) / "eval")
    paths = write_eval_report(results, out)
    print(format_eval_table(results))
    print(f"wrote {paths['json']} and {paths['markdown']}")
    return results
