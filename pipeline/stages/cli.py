"""From parsed command-line arguments to a stage call: config resolution, the lock, validation.

The resolved config is saved as `run_dir/config.yaml` on first use. Later invocations on the same run
dir may omit `--config`; when they give one, it must resolve to the same experiment except for keys
that do not change results (`RESUMABLE_CHANGES`), so a resumed run cannot silently train something else.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from pathlib import Path
from typing import Any

from pipeline.config import ConfigError, ExperimentConfig, config_to_dict, load_config, save_resolved_config
from pipeline.manifest import RunDirLock, RunLayout, load_manifest

# Keys that may differ between the saved config and a resuming invocation.
RESUMABLE_CHANGES = ("run.iterations", "run.progress", "run.eval_every", "cluster.")


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict) and v and k != "eval_files":
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def resolve_config(
    config: str | None, overrides: list[str], layout: RunLayout, *, save: bool = True
) -> ExperimentConfig:
    """The experiment of this invocation, checked against (and saved as) the run dir's config.yaml."""
    saved = layout.config
    if config is None:
        if not saved.is_file():
            raise ConfigError(f"--config is required: {saved} does not exist yet (a new run dir)")
        return load_config(saved, overrides)
    cfg = load_config(config, overrides)
    if saved.is_file():
        old, new = _flatten(config_to_dict(load_config(saved))), _flatten(config_to_dict(cfg))
        changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
        blocking = [k for k in changed if not k.startswith(RESUMABLE_CHANGES)]
        if blocking:
            diffs = ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in blocking)
            raise ConfigError(
                f"{config}: differs from the config this run dir was started with ({saved}) in {diffs}; "
                "use a new --run-dir for a different experiment"
            )
    if save:
        layout.root.mkdir(parents=True, exist_ok=True)
        save_resolved_config(cfg, saved)
    return cfg


def dispatch(args: argparse.Namespace) -> None:
    """Run the stage named by `args.stage` (see `pipeline.__main__`)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.stage == "evaluate" and args.model_dir is not None:
        from pipeline.stages.eval_hooks import evaluate_standalone

        evaluate_standalone(args)
        return
    if args.run_dir is None:
        raise ConfigError(f"{args.stage}: --run-dir is required (evaluate: or --model-dir)")
    layout = RunLayout(Path(args.run_dir).resolve())
    if args.stage == "status":
        print_status(resolve_config(args.config, args.overrides, layout, save=False), layout, args.field)
        return
    if int(os.environ.get("RANK", "0")) != 0:  # ranks > 0 of a multi-process train: rank 0 holds the lock
        _run_stage(args, resolve_config(args.config, args.overrides, layout, save=False), layout, None)
        return
    with RunDirLock(layout.root) as lock:
        cfg = resolve_config(args.config, args.overrides, layout)
        _run_stage(args, cfg, layout, lock)


def status(cfg: ExperimentConfig, layout: RunLayout) -> dict[str, Any]:
    """Progress of the run dir: what SLURM scripts need to decide the next job step."""
    manifest = load_manifest(layout.root)
    done = 0 if manifest is None else manifest.completed_iterations
    par = cfg.parallelism
    return {
        "name": cfg.name,
        "completed_iterations": done,
        "iterations": cfg.run.iterations,
        "done": done >= cfg.run.iterations,
        "prepared": manifest is not None and manifest.stage("prepare").state == "done",
        "mode": cfg.run.mode,
        "trainer_world": par.tensor_parallel * par.pipeline_parallel * par.data_parallel,
        "rollout_tensor_parallel": cfg.rollout.tensor_parallel,
        "gpus_per_node": cfg.cluster.gpus_per_node,
        "nodes": cfg.cluster.nodes,
    }


def print_status(cfg: ExperimentConfig, layout: RunLayout, field: str | None) -> None:
    info = status(cfg, layout)
    if field is None:
        print(json.dumps(info))
        return
    if field not in info:
        raise ConfigError(f"--field {field!r}: unknown; valid: {sorted(info)}")
    value = info[field]
    print(str(value).lower() if isinstance(value, bool) else value)


def _run_stage(
    args: argparse.Namespace, cfg: ExperimentConfig, layout: RunLayout, lock: RunDirLock | None
) -> None:
    _validate(args.stage, cfg)
    if args.stage == "run":
        from pipeline.run import run

        run(cfg, layout, lock)
    elif args.stage == "prepare":
        from pipeline.stages.prepare import prepare

        prepare(cfg, layout)
    elif args.stage == "rollout":
        from pipeline.stages.rollout import rollout_stage

        rollout_stage(cfg, layout)
    elif args.stage == "train":
        from pipeline.stages.train import train_stage

        train_stage(cfg, layout)
    elif args.stage == "export":
        from pipeline.stages.export import export_stage

        export_stage(cfg, layout, out=Path(args.out) if args.out else None)
    elif args.stage == "evaluate":
        from pipeline.stages.eval_hooks import evaluate_run_stage

        evaluate_run_stage(cfg, layout, args)
    elif args.stage == "report":
        from pipeline.stages.report import report_stage

        report_stage(cfg, layout)


def _validate(stage: str, cfg: ExperimentConfig) -> None:
    """Paths, model and resources before the stage starts (see `pipeline.validation`)."""
    from pipeline.validation import validate_before_start

    par = cfg.parallelism
    trainer_world: int | None = None
    if stage == "train" or (stage == "run" and cfg.run.mode == "colocated"):
        trainer_world = int(os.environ.get("WORLD_SIZE", "1"))
    elif stage == "run":  # staged: the train stage is launched with one process per rank
        trainer_world = par.tensor_parallel * par.pipeline_parallel * par.data_parallel
    hf_dir = None if cfg.model.bootstrap else cfg.model.hf_dir
    validate_before_start(cfg, hf_dir=hf_dir, trainer_world_size=trainer_world)
