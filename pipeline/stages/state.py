"""Committing iterations to the run dir, and cleaning up what an interrupted attempt left behind.

An iteration is complete when its checkpoint is saved, its metrics row is written and the manifest
says so, in that order. On resume everything past the manifest's `completed_iterations` is an
uncommitted leftover of the killed attempt and is removed (checkpoints, exported weights, metrics rows).
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from pipeline.config import ExperimentConfig
from pipeline.manifest import Manifest, RunLayout, resolve_in_run_dir, save_manifest


class NonFiniteError(RuntimeError):
    """The loss or the gradient norm became NaN/inf; nothing of the failing iteration was saved."""


_ITER_NAME = re.compile(r"^iter_(\d{4,})(\.pt)?$")


def should_save(cfg: ExperimentConfig, iteration: int) -> bool:
    """Checkpoint after `iteration`? Every `run.save_every` iterations and after the last one;
    staged mode always does (the trainer process restarts each iteration)."""
    last = iteration == cfg.run.iterations - 1
    return cfg.run.mode == "staged" or last or (iteration + 1) % cfg.run.save_every == 0


def _iterations_in(folder: Path) -> dict[int, Path]:
    if not folder.is_dir():
        return {}
    found = {}
    for p in folder.iterdir():
        m = _ITER_NAME.match(p.name)
        if m:
            found[int(m.group(1))] = p
    return found


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()


def discard_uncommitted(layout: RunLayout, manifest: Manifest) -> list[Path]:
    """Remove checkpoints and weights of iterations >= completed_iterations (an interrupted attempt's)."""
    done = manifest.completed_iterations
    removed = []
    for folder in (layout.root / "checkpoints", layout.root / "weights"):
        for it, path in _iterations_in(folder).items():
            if it >= done:
                _remove(path)
                removed.append(path)
    for folder in (layout.root / "checkpoints", layout.root / "weights"):
        if folder.is_dir():
            for tmp in folder.glob(".*tmp*"):
                _remove(tmp)
    return removed


def commit_iteration(
    layout: RunLayout, manifest: Manifest, iteration: int, *, checkpoint: Path, weights: Path | None = None
) -> None:
    """Record `iteration` as complete (atomically), then prune superseded checkpoints and weights."""
    manifest.completed_iterations = iteration + 1
    manifest.checkpoint = layout.rel(checkpoint)
    outputs = {"checkpoint": layout.rel(checkpoint)}
    if weights is not None:
        outputs["weights"] = layout.rel(weights)
    manifest.set_stage("train", "done", iteration=iteration, **outputs)
    if manifest.stage("rollout").iteration != iteration:  # colocated: the rollout happened in-process
        manifest.set_stage("rollout", "done", iteration=iteration)
    save_manifest(layout.root, manifest)
    prune(layout, manifest)


def prune(layout: RunLayout, manifest: Manifest) -> None:
    """Delete checkpoints other than the manifest's, and exported weights other than the latest
    (rollout files are kept: they are small and worth analysing)."""
    current = resolve_in_run_dir(layout.root, manifest.checkpoint)
    for path in _iterations_in(layout.root / "checkpoints").values():
        if current is None or path.resolve() != current.resolve():
            _remove(path)
    for it, path in _iterations_in(layout.root / "weights").items():
        if it < manifest.completed_iterations - 1:
            _remove(path)
