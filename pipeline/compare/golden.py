"""Golden values of a nightly recipe and the checks that gate it.

The golden file (JSON beside the nightly config, e.g. `configs/nightly/tiny_cpu.golden.json`) records,
per arm, the mean AUC of the compared metric and the mean final evaluation accuracy per benchmark,
plus the recipe they belong to (`recipe`: nightly name, iterations, seeds, metric, and the config hash
of every arm's resolved experiment config). It is only written on purpose (`--update-golden`).

Checks (each a `Check(name, passed, message)`; the nightly fails when any fails):
- `run <arm>/seed<k>`: every planned run finished (all iterations and the final evaluation).
- `golden recipe`: the golden values were recorded for this exact recipe (else they compare nothing).
- `golden auc <arm>`: mean AUC >= golden - tolerances.auc.
- `golden eval <arm>/<benchmark>`: mean final accuracy >= golden - tolerances.final_eval.
- `vs baseline <arm>`: mean paired AUC gain over the baseline >= -tolerances.below_baseline.
Only drops fail: a result above its golden value beyond tolerance passes with a note to update.
"""

from __future__ import annotations

import datetime
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.compare.analysis import Comparison
from pipeline.manifest import atomic_write_json

__all__ = [
    "GOLDEN_VERSION",
    "Check",
    "check_golden",
    "check_runs",
    "check_vs_baseline",
    "golden_values",
    "read_golden",
    "write_golden",
]

GOLDEN_VERSION = 1


@dataclass(frozen=True)
class Check:
    """One gate of the nightly."""

    name: str
    passed: bool
    message: str


def check_runs(comparison: Comparison) -> list[Check]:
    """One failed check per planned run that did not finish; one passing summary check otherwise."""
    bad = comparison.incomplete
    checks = [
        Check(f"run {r.arm}/seed{r.seed}", False, f"{r.status}: {r.message} ({r.run_dir})") for r in bad
    ]
    if not bad:
        checks.append(Check("runs", True, f"all {len(comparison.runs)} runs complete"))
    return checks


def golden_values(comparison: Comparison, recipe: dict[str, Any]) -> dict[str, Any]:
    """The golden document for this comparison (all runs must be complete)."""
    if comparison.incomplete:
        names = [f"{r.arm}/seed{r.seed}" for r in comparison.incomplete]
        raise ValueError(f"cannot record golden values while runs are incomplete: {names}")
    arms = {}
    for name, arm in comparison.arms.items():
        arms[name] = {
            "auc": float(arm.auc.mean()),
            "final_eval": {bench: float(v.mean()) for bench, v in arm.final_eval.items()},
        }
    return {
        "version": GOLDEN_VERSION,
        "updated": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "recipe": recipe,
        "arms": arms,
    }


def write_golden(path: str | Path, document: dict[str, Any]) -> None:
    """Write the golden document atomically."""
    atomic_write_json(path, document)


def read_golden(path: str | Path) -> dict[str, Any]:
    """The golden document at `path`; FileNotFoundError/ValueError naming the file when absent or malformed."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"golden values not found: {path} (record them deliberately with `--update-golden`)"
        )
    try:
        doc = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from e
    expected = {"version", "updated", "recipe", "arms"}
    if not isinstance(doc, dict) or set(doc) != expected:
        got = sorted(doc) if isinstance(doc, dict) else type(doc).__name__
        raise ValueError(f"{path}: expected keys {sorted(expected)}, got {got}")
    if doc["version"] != GOLDEN_VERSION:
        raise ValueError(f"{path}: version {doc['version']} is not {GOLDEN_VERSION}")
    return doc


def _recipe_diff(golden: dict[str, Any], current: dict[str, Any]) -> list[str]:
    keys = sorted(set(golden) | set(current))
    return [k for k in keys if k not in golden or k not in current or golden[k] != current[k]]


def _floor_check(name: str, value: float, golden: float, tol: float) -> Check:
    """value must be >= golden - tol; a rise beyond tol passes with a note."""
    delta = value - golden
    text = f"{value:.4f} vs golden {golden:.4f} (Δ {delta:+.4f}, tolerance {tol:.4f})"
    if delta < -tol:
        return Check(name, False, f"regressed: {text}")
    if delta > tol:
        return Check(name, True, f"improved beyond tolerance: {text}; consider --update-golden")
    return Check(name, True, text)


def check_golden(comparison: Comparison, golden: dict[str, Any], recipe: dict[str, Any]) -> list[Check]:
    """Compare per-arm mean AUC and final eval against the golden document (see the module doc)."""
    tol = comparison.config.tolerances
    diff = _recipe_diff(golden["recipe"], recipe)
    if diff:
        return [
            Check(
                "golden recipe",
                False,
                f"golden values were recorded for another recipe (differs in: {', '.join(diff)}); "
                "rerun with --update-golden if the change is intended",
            )
        ]
    checks = [Check("golden recipe", True, "golden values match this recipe")]
    for name, arm in comparison.arms.items():
        if name not in golden["arms"]:
            checks.append(Check(f"golden auc {name}", False, "no golden values for this arm"))
            continue
        if arm.auc.size == 0:
            continue  # no complete run: already a failed `run` check
        ref = golden["arms"][name]
        checks.append(_floor_check(f"golden auc {name}", float(arm.auc.mean()), ref["auc"], tol.auc))
        for bench, golden_acc in ref["final_eval"].items():
            check_name = f"golden eval {name}/{bench}"
            if bench not in arm.final_eval:
                checks.append(Check(check_name, False, "benchmark missing from the final evaluation"))
                continue
            mean = float(arm.final_eval[bench].mean())
            checks.append(_floor_check(check_name, mean, golden_acc, tol.final_eval))
    return checks


def check_vs_baseline(comparison: Comparison) -> list[Check]:
    """A variant fails when its mean paired AUC gain is below -tolerances.below_baseline."""
    tol = comparison.config.tolerances.below_baseline
    checks = []
    for name, gain in comparison.gains.items():
        check_name = f"vs baseline {name}"
        if gain is None:
            checks.append(Check(check_name, False, "no seed is complete for both this arm and the baseline"))
            continue
        text = (
            f"AUC gain {gain.gain:+.4f} over {comparison.config.baseline} on {len(gain.seeds)} paired seeds"
        )
        if gain.bootstrap is not None:
            b = gain.bootstrap
            text += f" ({b.confidence:.0%} bootstrap CI [{b.low:+.4f}, {b.high:+.4f}])"
        if gain.gain < -tol:
            checks.append(Check(check_name, False, f"below baseline beyond tolerance {tol:.4f}: {text}"))
        else:
            checks.append(Check(check_name, True, text))
    return checks
