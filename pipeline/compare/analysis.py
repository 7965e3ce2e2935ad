"""From run results to the numbers the report and the checks use.

`analyze(cfg, runs)` groups the complete runs by arm and computes, for the compared metric on the
iteration grid shared by all of them: per-seed AUC and iterations-to-threshold, the mean AUC with a
t interval across seeds, and for every non-baseline arm the paired gain over the baseline (bootstrap
percentile CI, and a paired t interval beside it) over the seeds complete in both arms. Other metrics
(`plot_metrics`, `table_metrics`) are aligned per arm for the plots and final-value tables.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import reduce

import numpy as np

from pipeline.compare.collect import RunResult
from pipeline.compare.nightly_config import NightlyConfig
from pipeline.compare.stats import (
    BootstrapGain,
    CurveBand,
    area_under_curve,
    iterations_to_threshold,
    mean_curve_band,
    paired_bootstrap_gain,
    paired_t_interval,
    student_t_quantile,
)

__all__ = ["ArmSummary", "Comparison", "Gain", "analyze", "mean_interval"]


def mean_interval(values: np.ndarray, confidence: float) -> tuple[float, float, float]:
    """(mean, low, high) with the t interval mean ± t·sd/√n; a single value gives a zero-width interval."""
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        return math.nan, math.nan, math.nan
    if v.size == 1:
        return float(v[0]), float(v[0]), float(v[0])
    half = student_t_quantile(0.5 + confidence / 2.0, v.size - 1) * v.std(ddof=1) / math.sqrt(v.size)
    return float(v.mean()), float(v.mean() - half), float(v.mean() + half)


@dataclass(frozen=True)
class ArmSummary:
    """The complete runs of one arm. Arrays indexed by position in `seeds`."""

    name: str
    seeds: list[int]
    auc: np.ndarray  # [S] AUC of the compared metric per seed
    iters_to_threshold: list[float | None]  # [S]
    bands: dict[str, CurveBand]  # metric -> mean curve with band over seeds
    final: dict[str, np.ndarray]  # table metric -> [S] value at the last iteration
    final_eval: dict[str, np.ndarray]  # benchmark -> [S] final evaluation accuracy

    def auc_interval(self, confidence: float) -> tuple[float, float, float]:
        return mean_interval(self.auc, confidence)


@dataclass(frozen=True)
class Gain:
    """Paired AUC gain of one arm over the baseline, over the seeds complete in both.

    gain = mean_s(auc_arm[s] - auc_base[s]); relative = gain / mean_s(auc_base[s]). The intervals are
    None with a single paired seed (no spread to estimate).
    """

    arm: str
    seeds: list[int]
    gain: float
    relative: float
    bootstrap: BootstrapGain | None
    t_interval: tuple[float, float, float] | None

    @property
    def significant(self) -> bool:
        """Declared only when the bootstrap AND the paired t interval exclude 0 on the same side: with
        few seeds the percentile bootstrap alone is too narrow (see `stats`), the t interval is not."""
        if self.bootstrap is None or self.t_interval is None:
            return False
        _, t_low, t_high = self.t_interval
        b = self.bootstrap
        return (b.low > 0.0 and t_low > 0.0) or (b.high < 0.0 and t_high < 0.0)


@dataclass(frozen=True)
class Comparison:
    config: NightlyConfig
    runs: list[RunResult]
    grid: np.ndarray  # iterations the compared metric is evaluated on
    arms: dict[str, ArmSummary]
    gains: dict[str, Gain | None]  # None when no seed is complete in both arms

    @property
    def incomplete(self) -> list[RunResult]:
        return [r for r in self.runs if r.status != "complete"]


def _common_grid(runs: list[RunResult], key: str) -> np.ndarray:
    """Iterations at which every run logged a finite `key`."""
    grids = [set(run.curve(key)[0].tolist()) for run in runs]
    return np.asarray(sorted(reduce(set.intersection, grids))) if grids else np.zeros(0)


def _on_grid(run: RunResult, key: str, grid: np.ndarray) -> np.ndarray:
    x, y = run.curve(key)
    return y[np.isin(x, grid)]


def _band(runs: list[RunResult], key: str, cfg: NightlyConfig) -> CurveBand | None:
    if not runs or any(key not in r.metrics for r in runs):
        return None
    grid = _common_grid(runs, key)
    if grid.size == 0:
        return None
    curves = np.stack([_on_grid(r, key, grid) for r in runs])
    return mean_curve_band(
        grid, curves, confidence=cfg.confidence, method=cfg.band, rng_seed=cfg.bootstrap_seed
    )


def _summarize_arm(name: str, runs: list[RunResult], grid: np.ndarray, cfg: NightlyConfig) -> ArmSummary:
    aucs, reached = [], []
    for run in runs:
        y = _on_grid(run, cfg.metric, grid)
        aucs.append(area_under_curve(grid, y))
        reached.append(iterations_to_threshold(grid, y, cfg.threshold))
    bands = {}
    for key in dict.fromkeys([cfg.metric, *cfg.plot_metrics]):
        band = _band(runs, key, cfg)
        if band is not None:
            bands[key] = band
    final = {
        key: np.asarray([r.curve(key)[1][-1] for r in runs])
        for key in cfg.table_metrics
        if runs and all(key in r.metrics for r in runs)
    }
    benches = sorted(set.intersection(*(set(r.final_eval) for r in runs))) if runs else []
    final_eval = {b: np.asarray([r.final_eval[b] for r in runs]) for b in benches}
    return ArmSummary(name, [r.seed for r in runs], np.asarray(aucs), reached, bands, final, final_eval)


def _gain(base: ArmSummary, arm: ArmSummary, cfg: NightlyConfig) -> Gain | None:
    seeds = [s for s in base.seeds if s in arm.seeds]
    if not seeds:
        return None
    b = np.asarray([base.auc[base.seeds.index(s)] for s in seeds])
    v = np.asarray([arm.auc[arm.seeds.index(s)] for s in seeds])
    gain = float(np.mean(v - b))
    relative = gain / float(b.mean()) if b.mean() != 0 else math.nan
    if len(seeds) < 2:
        return Gain(arm.name, seeds, gain, relative, None, None)
    boot = paired_bootstrap_gain(
        b, v, num_resamples=cfg.bootstrap_resamples, confidence=cfg.confidence, rng_seed=cfg.bootstrap_seed
    )
    return Gain(arm.name, seeds, gain, relative, boot, paired_t_interval(b, v, confidence=cfg.confidence))


def analyze(cfg: NightlyConfig, runs: list[RunResult]) -> Comparison:
    """Summaries per arm and paired gains over the baseline from the complete runs in `runs`.

    Raises KeyError naming the run dir and the logged keys when a complete run lacks `cfg.metric`.
    """
    complete = [r for r in runs if r.status == "complete"]
    for run in complete:
        run.curve(cfg.metric)  # a clear KeyError when the compared metric is misnamed
    grid = _common_grid(complete, cfg.metric)
    if complete and grid.size == 0:
        raise ValueError(f"the complete runs share no iteration with a finite {cfg.metric!r}")
    arms = {}
    for spec in cfg.variants:
        arm_runs = sorted((r for r in complete if r.arm == spec.name), key=lambda r: cfg.seeds.index(r.seed))
        arms[spec.name] = _summarize_arm(spec.name, arm_runs, grid, cfg)
    base = arms[cfg.baseline]
    gains = {spec.name: _gain(base, arms[spec.name], cfg) for spec in cfg.compared}
    return Comparison(cfg, runs, grid, arms, gains)
