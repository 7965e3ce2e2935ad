"""The `train` stage: advantages, the GRPO-λ update, and (staged mode) checkpoint + weight export.

`train_on_rollouts` is the colocated loop's train step as well; `train_stage` is the process entry of
`python -m pipeline train` in staged mode: it trains iteration `completed_iterations` on
`rollouts/iter_XXXX.pt`, saves the checkpoint, exports HF weights to `weights/iter_XXXX` for the next
rollout stage, appends the metrics row and commits the iteration.
"""

from __future__ import annotations

import time
from typing import Any

from tqdm.auto import tqdm

from pipeline.config import ExperimentConfig
from pipeline.manifest import RunLayout, load_manifest, resolve_in_run_dir
from pipeline.metrics import MetricsLogger
from pipeline.stages.actor import Actor
from pipeline.stages.batch import check_finite, training_batch
from pipeline.stages.rollout import RolloutResult, load_rollouts
from pipeline.stages.state import NonFiniteError, commit_iteration, discard_uncommitted

FINITE_KEYS = ("train/loss", "train/grad_norm")


def train_on_rollouts(actor: Actor, result: RolloutResult, cfg: ExperimentConfig) -> dict[str, float]:
    """Advantages from the rewards, then the optimizer step(s); raises NonFiniteError on NaN/inf."""
    pad_id = actor.hf_config.get("pad_token_id")  # HF config.json: absent in some models
    batch = training_batch(
        result.samples,
        result.scores,
        group_size=cfg.rollout.samples_per_prompt,
        normalize_std=cfg.algorithm.normalize_std,
        leave_one_out=cfg.algorithm.leave_one_out,
        pad_id=0 if pad_id is None else int(pad_id),
    )
    steps = cfg.algorithm.updates_per_iteration
    where = (
        f"iteration {result.iteration}: the update diverged (lower optimizer.lr?); nothing of this "
        "iteration was saved and the run dir still holds the last complete iteration's checkpoint"
    )
    t0 = time.perf_counter()
    bar = tqdm(
        total=steps, desc=f"train {result.iteration}", unit="step", disable=not cfg.run.progress, leave=False
    )
    try:
        metrics = actor.update(batch, progress=bar.update)
    except ValueError as e:  # the loss library rejects NaN/inf log-probs (weights already diverged)
        if "non-finite" not in str(e):
            raise
        raise NonFiniteError(f"{where}: {e}") from e
    finally:
        bar.close()
    metrics["time/train"] = time.perf_counter() - t0
    metrics["advantage/abs_mean"] = float(batch["advantages"].abs().mean())
    check_finite(metrics, FINITE_KEYS, where=where)
    return metrics


def train_stage(cfg: ExperimentConfig, layout: RunLayout) -> dict[str, Any]:
    """One staged-mode training iteration (see the module docstring); returns its metrics row."""
    manifest = load_manifest(layout.root)
    if manifest is None or manifest.stage("prepare").state != "done":
        raise FileNotFoundError(f"{layout.root}: not prepared; run `python -m pipeline prepare` first")
    it = manifest.completed_iterations
    if it >= cfg.run.iterations:
        return {}
    discard_uncommitted(layout, manifest)
    result = load_rollouts(layout.rollouts(it))
    base_hf = resolve_in_run_dir(layout.root, manifest.base_hf_dir)
    actor = Actor.build(cfg, base_hf)
    actor.load(resolve_in_run_dir(layout.root, manifest.checkpoint), with_optimizer=it > 0)
    if cfg.algorithm.kl_coef > 0:
        actor.load_reference(layout.init_checkpoint)
    row = dict(result.metrics)
    row.update(train_on_rollouts(actor, result, cfg))
    t0 = time.perf_counter()
    actor.save(layout.checkpoint(it), iteration=it + 1, extra={"iteration": it})
    row["time/save"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    actor.save_hf(layout.weights(it), side_files_from=base_hf)
    row["time/export"] = time.perf_counter() - t0
    if actor.groups.world_rank != 0:  # rank 0 alone writes the run dir's state
        return row
    with MetricsLogger(layout.metrics, layout.tensorboard, completed_iterations=it) as metrics:
        row = metrics.log(it, row)
    commit_iteration(layout, manifest, it, checkpoint=layout.checkpoint(it), weights=layout.weights(it))
    return row
