"""Read what the nightly compares from finished run directories.

A run directory (written by `python -m pipeline run`) holds `manifest.json` (completed iterations and
the state and outputs of each stage), `metrics.jsonl` (one row per iteration: `{"iteration": i,
"<group>/<name>": value, ...}`) and the final evaluation JSON (the `evaluate` stage's output in the
manifest). A run is complete when all iterations are committed and its last stage (`report`) is done. `load_run` turns one directory into a `RunResult`; a missing or
unfinished directory is a result with `status != "complete"` and a message saying what is missing, so
the report can name it instead of crashing.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.manifest import Manifest, ManifestError, RunLayout, load_manifest, resolve_in_run_dir
from pipeline.metrics import read_metrics

__all__ = ["RunResult", "final_eval_path", "load_run", "read_final_eval", "run_is_complete"]


@dataclass(frozen=True)
class RunResult:
    """One run of one arm and seed.

    metrics: key -> (iterations[T], values[T]) over the rows where the key has a finite value.
    final_eval: benchmark -> the nightly's eval_metric of the final evaluation (empty when none was written).
    status: "complete" (all iterations and the final eval are there), "incomplete" or "missing".
    """

    arm: str
    seed: int
    run_dir: Path
    status: str
    message: str
    completed_iterations: int
    metrics: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    final_eval: dict[str, float] = field(default_factory=dict)

    def curve(self, key: str) -> tuple[np.ndarray, np.ndarray]:
        """(iterations[T], values[T]) of metric `key`; KeyError listing the keys this run logged."""
        if key not in self.metrics:
            raise KeyError(
                f"metric {key!r} is not in {self.run_dir / 'metrics.jsonl'}; logged keys: {sorted(self.metrics)}"
            )
        return self.metrics[key]


def _curves(rows: list[dict[str, Any]]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Columns of metrics rows; a later row for the same iteration replaces an earlier one."""
    by_iteration = {int(row["iteration"]): row for row in rows}
    columns: dict[str, tuple[list[float], list[float]]] = {}
    for it in sorted(by_iteration):
        for key, value in by_iteration[it].items():
            if key == "iteration" or isinstance(value, bool) or not isinstance(value, int | float):
                continue
            if not math.isfinite(value):
                continue
            xs, ys = columns.setdefault(key, ([], []))
            xs.append(float(it))
            ys.append(float(value))
    return {k: (np.asarray(x), np.asarray(y)) for k, (x, y) in columns.items()}


def final_eval_path(run_dir: str | Path, manifest: Manifest | None) -> Path | None:
    """The final evaluation JSON recorded by the `evaluate` stage in the manifest (None if not done)."""
    if manifest is None or "evaluate" not in manifest.stages or manifest.stages["evaluate"].state != "done":
        return None
    outputs = [v for v in manifest.stages["evaluate"].outputs.values() if v.endswith(".json")]
    return resolve_in_run_dir(run_dir, outputs[0]) if outputs else None


def read_final_eval(path: str | Path, key: str) -> dict[str, float]:
    """benchmark -> value of `key` from an evaluation JSON `{"benchmarks": {name: {key: v, ...}}, ...}`
    (pipeline.evaluation.write_eval_report)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: unreadable evaluation JSON ({e})") from e
    if not isinstance(data, dict) or "benchmarks" not in data or not isinstance(data["benchmarks"], dict):
        raise ValueError(f"{path}: expected an object with a 'benchmarks' mapping")
    result = {}
    for bench, entry in data["benchmarks"].items():
        if not isinstance(entry, dict) or key not in entry:
            raise ValueError(f"{path}: benchmark {bench!r} has no {key!r} entry: {entry!r}")
        result[str(bench)] = float(entry[key])
    return result


def _is_finished(manifest: Manifest | None, iterations: int) -> bool:
    """All iterations committed and the last step of `python -m pipeline run` (report) done."""
    if manifest is None or manifest.completed_iterations < iterations:
        return False
    return "report" in manifest.stages and manifest.stages["report"].state == "done"


def run_is_complete(run_dir: str | Path, iterations: int) -> bool:
    """True when the run dir's manifest records `iterations` complete iterations and a finished run."""
    try:
        return _is_finished(load_manifest(run_dir), iterations)
    except ManifestError:
        return False


def load_run(run_dir: str | Path, *, arm: str, seed: int, iterations: int, eval_metric: str) -> RunResult:
    """Everything the comparison needs from one run directory (never raises for a missing/partial run).

    `eval_metric` is the per-benchmark key of the final evaluation JSON kept in `final_eval`.
    """
    run_dir = Path(run_dir)
    if not run_dir.exists():
        return RunResult(arm, seed, run_dir, "missing", "the run dir does not exist", 0)
    try:
        manifest = load_manifest(run_dir)
        rows = read_metrics(RunLayout(run_dir).metrics)
        eval_path = final_eval_path(run_dir, manifest)
        final_eval = read_final_eval(eval_path, eval_metric) if eval_path is not None else {}
    except (ManifestError, ValueError) as e:
        return RunResult(arm, seed, run_dir, "incomplete", f"unreadable run dir: {e}", 0)
    done = min(manifest.completed_iterations, iterations) if manifest is not None else 0
    metrics = _curves([r for r in rows if int(r["iteration"]) < done])
    if _is_finished(manifest, iterations):
        return RunResult(arm, seed, run_dir, "complete", "ok", done, metrics, final_eval)
    problem = f"{done}/{iterations} iterations complete" if done < iterations else "the run did not finish"
    return RunResult(arm, seed, run_dir, "incomplete", problem, done, metrics, final_eval)
