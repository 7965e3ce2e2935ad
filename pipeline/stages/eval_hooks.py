"""Where the pipeline calls the evaluation (pipeline.evaluation): during a run, after it, and standalone.

During a colocated run, `evaluate_during_run` reuses the refitted engine every `run.eval_every`
iterations and returns `eval/<benchmark>/<metric>` entries for that iteration's metrics row. The final
evaluation and `python -m pipeline evaluate` load a fresh engine from an HF directory (the export) and
write the JSON + markdown report under `run_dir/eval/` (or `--out`).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from pipeline.config import ExperimentConfig
from pipeline.manifest import RunLayout, load_manifest, save_manifest


def _flatten_results(results: dict[str, Any]) -> dict[str, float]:
    """`eval/<benchmark>/<metric>` for every numeric per-benchmark entry of evaluate_model's result."""
    out: dict[str, float] = {}
    for bench, res in results["benchmarks"].items():
        for key, value in res.items():
            if isinstance(value, int | float) and not isinstance(value, bool) and key != "time_s":
                out[f"eval/{bench}/{key}"] = float(value)
    return out


def _evaluate(
    cfg: ExperimentConfig,
    model_dir: Path,
    *,
    engine: Any,
    benchmarks: list[str],
    samples: int,
    limit: int | None,
) -> dict[str, Any]:
    from pipeline.evaluation import evaluate_model

    return evaluate_model(
        model_dir,
        benchmarks,
        samples=samples,
        engine=engine,
        limit=limit,
        local_files=cfg.data.eval_files,
        template=cfg.data.prompt_template,
        max_new_tokens=cfg.rollout.max_new_tokens,
        temperature=cfg.rollout.temperature if samples > 1 else 0.0,
        seed=cfg.run.seed,
        max_model_len=cfg.rollout.max_model_len,
        dtype=cfg.model.params_dtype,
        difficulty=cfg.data.arithmetic_difficulty,
        reward_timeout_s=cfg.reward.timeout_s,
        reward_workers=cfg.reward.num_workers,
        kv_cache_gb=cfg.rollout.kv_cache_gb,
    )


def evaluate_during_run(
    cfg: ExperimentConfig, layout: RunLayout, iteration: int, *, engine: Any
) -> dict[str, float]:
    """Metrics of the periodic evaluation after `iteration` ({} when none is due)."""
    every = cfg.run.eval_every
    if every == 0 or (iteration + 1) % every or not cfg.data.eval_benchmarks:
        return {}
    t0 = time.perf_counter()
    results = _evaluate_periodic(cfg, engine)
    return {**_flatten_results(results), "time/eval": time.perf_counter() - t0}


def evaluate_before_training(cfg: ExperimentConfig, *, engine: Any) -> dict[str, float]:
    """`eval_initial/<benchmark>/<metric>` of the initial model (logged with iteration 0) when periodic
    evaluation is on, so the curves have a starting point."""
    if cfg.run.eval_every == 0 or not cfg.data.eval_benchmarks:
        return {}
    results = _evaluate_periodic(cfg, engine)
    return {k.replace("eval/", "eval_initial/", 1): v for k, v in _flatten_results(results).items()}


def _evaluate_periodic(cfg: ExperimentConfig, engine: Any) -> dict:
    """The periodic evaluation (the config's benchmarks, samples and limit) with the live engine."""
    return _evaluate(
        cfg,
        engine.model_dir,
        engine=engine,
        benchmarks=list(cfg.data.eval_benchmarks),
        samples=cfg.run.eval_samples,
        limit=cfg.data.eval_limit,
    )


def evaluate_final(
    cfg: ExperimentConfig,
    layout: RunLayout,
    *,
    engine: Any = None,
    model_dir: Path | None = None,
    benchmarks: list[str] | None = None,
    samples: int | None = None,
    limit: int | None = None,
    out_dir: Path | None = None,
) -> dict[str, Any] | None:
    """Evaluate the run's final model and write results.json/.md (default under run_dir/eval/): with
    `engine` when given (colocated: it holds the final weights), else a fresh engine over `model_dir`
    (default: the export, run_dir/export/hf). Benchmarks, samples and limit default to the config's."""
    from pipeline.evaluation import write_eval_report

    benchmarks = list(cfg.data.eval_benchmarks) if benchmarks is None else benchmarks
    if not benchmarks:
        return None
    # With an engine the weights are already loaded; model_dir then only labels the report (the export
    # holds exactly the engine's weights).
    model_dir = model_dir or layout.export_hf
    results = _evaluate(
        cfg,
        model_dir,
        engine=engine,
        benchmarks=benchmarks,
        samples=samples or cfg.run.eval_samples,
        limit=limit or cfg.data.eval_limit,
    )
    paths = write_eval_report(results, out_dir or layout.eval_dir)
    manifest = load_manifest(layout.root)
    if manifest is not None and out_dir is None:
        manifest.set_stage(
            "evaluate",
            "done",
            iteration=manifest.completed_iterations - 1,
            **{k: layout.rel(Path(v)) for k, v in paths.items()},
        )
        save_manifest(layout.root, manifest)
    what = "the final weights (in-process engine)" if engine is not None else str(model_dir)
    print(f"[pipeline] evaluation of {what}: {paths['json']}", flush=True)
    return results


def evaluate_run_stage(
    cfg: ExperimentConfig, layout: RunLayout, args: argparse.Namespace
) -> dict[str, Any] | None:
    """`python -m pipeline evaluate --run-dir D [--benchmarks a,b] [--samples k] [--limit n] [--out O]`:
    the run's exported model (exported first if needed)."""
    from pipeline.stages.export import export_stage

    model_dir = (
        layout.export_hf if (layout.export_hf / "config.json").is_file() else export_stage(cfg, layout)
    )
    return evaluate_final(
        cfg,
        layout,
        model_dir=model_dir,
        benchmarks=[b for b in args.benchmarks.split(",") if b] if args.benchmarks else None,
        samples=args.samples,
        limit=args.limit,
        out_dir=Path(args.out) if args.out else None,
    )


def evaluate_standalone(args: argparse.Namespace) -> dict[str, Any]:
    """`python -m pipeline evaluate --model-dir D --benchmarks a,b --samples k [--config C]`
    (pipeline.stages.evaluate); bad arguments become ConfigError (a clear message, exit code 2)."""
    from pipeline.config import ConfigError
    from pipeline.stages.evaluate import evaluate_cli

    try:
        return evaluate_cli(args)
    except (ValueError, FileNotFoundError) as e:
        if isinstance(e, ConfigError):
            raise
        raise ConfigError(f"evaluate: {e}") from e
