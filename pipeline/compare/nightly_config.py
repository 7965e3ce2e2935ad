"""The nightly comparison recipe: `configs/nightly/*.yaml`, a small schema of its own.

A nightly names one experiment config (the recipe every run starts from), the runs to compare (a
GRPO baseline and GRPO-λ variants), the paired seeds, the curve compared and the tolerances of the
regression checks. Every run of seed k gets `rollout.seed=k`, `run.seed` = `model_seed` (or k when
null) and `data.shuffle_seed` = `shuffle_seed` (or k when null) whatever its variant, so the runs of
one seed see the same initial model, the same prompts in the same order and the same sampling seed;
they differ only in the algorithm settings of their arm.

Loading reuses pipeline.config's YAML reader and strict dataclass builder: unknown keys, missing keys
and wrong types raise `ConfigError` naming the dotted key path (e.g. `variants[1].stlye`). Paths are
relative to the nightly file. The runs' experiment configs are validated as well (`plan_runs` loads
each with its overrides) before anything starts.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from pipeline.config import ConfigError, dataclass_from_dict, read_yaml_mapping

__all__ = ["NightlyConfig", "SlurmSettings", "Tolerances", "VariantSpec", "load_nightly_config"]


@dataclass(frozen=True, kw_only=True)
class VariantSpec:
    """One arm of the comparison: a name and its algorithm settings."""

    name: str
    """Label in run dirs, tables and plots (letters, digits, `-`, `_`, `.`)."""
    variant: str
    """algorithm.variant of its runs: `grpo`, `epsilon-trace` or `epsilon-weight`."""
    style: str = "recent"
    """algorithm.style of its runs: `recent` or `both` (ignored by grpo)."""
    overrides: list[str] = field(default_factory=list)
    """Extra dotted overrides for this arm only (e.g. `algorithm.lam=0.95`)."""

    def experiment_overrides(self) -> list[str]:
        """The experiment-config overrides that select this arm."""
        return [f"algorithm.variant={self.variant}", f"algorithm.style={self.style}", *self.overrides]


@dataclass(frozen=True, kw_only=True)
class Tolerances:
    """How far results may fall before a check fails (absolute units of the compared quantity)."""

    auc: float = 0.05
    """Mean AUC of `metric` (per arm) may fall at most this far below its golden value."""
    final_eval: float = 0.05
    """Mean final evaluation `eval_metric` (per arm and benchmark) may fall at most this far below golden."""
    below_baseline: float = 0.0
    """A variant's mean paired AUC gain over the baseline may be at most this far below 0."""


@dataclass(frozen=True, kw_only=True)
class SlurmSettings:
    """How `--executor slurm` submits runs (one sbatch per run, then a dependent report job)."""

    run_script: str = "slurm/nightly.sbatch"
    """Job script, relative to the submitting directory; called as `<script> run ITERATIONS --config EXP
    --run-dir DIR overrides...` for a run and `<script> report --config NIGHTLY --out DIR` for the report."""
    chain: int = 1
    """Jobs per run chained with `--dependency=singleton` (each resumes the run; for runs longer than
    the time limit)."""
    sbatch_args: list[str] = field(default_factory=list)
    """Extra sbatch arguments of every run job (e.g. `--nodes=1`, `--gpus-per-node=8`, `--time=08:00:00`)."""
    report_sbatch_args: list[str] = field(default_factory=list)
    """Extra sbatch arguments of the report job (CPU only, a few minutes)."""


@dataclass(frozen=True, kw_only=True)
class NightlyConfig:
    """A nightly comparison of GRPO-λ variants against a GRPO baseline over paired seeds."""

    name: str
    """Name of the nightly (report title, golden recipe)."""
    experiment: str
    """Experiment config every run starts from, relative to this file."""
    overrides: list[str] = field(default_factory=list)
    """Dotted overrides applied to every run (before the arm's own)."""
    iterations: int
    """RL iterations of every run (sets run.iterations)."""
    seeds: list[int]
    """Paired seeds: each arm runs once per seed (rollout.seed = the seed; see model_seed, shuffle_seed)."""
    shuffle_seed: int | None = None
    """data.shuffle_seed of every run; null = the run's seed (same across arms either way)."""
    model_seed: int | None = None
    """run.seed (model init / bootstrap, dropout) of every run; null = the run's seed. A fixed value
    shares one initial model across seeds (one bootstrap on CPU); seeds then vary the sampling
    (rollout.seed) and, unless `shuffle_seed` is fixed, the prompt order."""
    baseline: str = "grpo"
    """Name of the arm the others are compared against."""
    variants: list[VariantSpec]
    """All arms, the baseline included."""
    metric: str
    """metrics.jsonl key of the curve compared (AUC, threshold, gain, golden AUC)."""
    threshold: float
    """Level of `metric` for iterations-to-threshold."""
    eval_metric: str = "pass@1"
    """Per-benchmark key of the final evaluation JSON (pipeline.evaluation) in tables and golden checks."""
    confidence: float = 0.95
    """Confidence level of bands and intervals."""
    bootstrap_resamples: int = 10_000
    """Resamples of the paired bootstrap."""
    bootstrap_seed: int = 0
    """RNG seed of the bootstrap (the report is deterministic)."""
    band: Literal["t", "bootstrap"] = "t"
    """Confidence band of mean curves across seeds."""
    plot_metrics: list[str] = field(default_factory=list)
    """metrics.jsonl keys plotted as mean curves with bands (besides `metric`), one PNG each."""
    table_metrics: list[str] = field(default_factory=list)
    """metrics.jsonl keys whose final value (mean of the last iteration over seeds) the report tabulates."""
    golden: str
    """Golden values JSON, relative to this file (written by --update-golden)."""
    tolerances: Tolerances = field(default_factory=Tolerances)
    """Tolerances of the checks."""
    slurm: SlurmSettings = field(default_factory=SlurmSettings)
    """The SLURM executor."""

    def arm(self, name: str) -> VariantSpec:
        """The arm called `name` (KeyError listing the valid names)."""
        for spec in self.variants:
            if spec.name == name:
                return spec
        raise KeyError(f"no arm named {name!r}; valid: {[v.name for v in self.variants]}")

    @property
    def compared(self) -> list[VariantSpec]:
        """The arms other than the baseline, in file order."""
        return [v for v in self.variants if v.name != self.baseline]


def _validate(cfg: NightlyConfig, source: str) -> None:
    names = [v.name for v in cfg.variants]
    checks = [
        (bool(cfg.name.strip()), "name", "must not be empty"),
        (cfg.iterations >= 1, "iterations", f"must be >= 1, got {cfg.iterations}"),
        (len(cfg.seeds) >= 1, "seeds", "needs at least one seed"),
        (len(set(cfg.seeds)) == len(cfg.seeds), "seeds", f"has duplicates: {cfg.seeds}"),
        (len(set(names)) == len(names), "variants", f"names must be unique, got {names}"),
        (cfg.baseline in names, "baseline", f"{cfg.baseline!r} is not a variant name; valid: {names}"),
        (len(names) >= 2, "variants", "needs the baseline and at least one variant to compare"),
        (0 < cfg.confidence < 1, "confidence", f"must be in (0, 1), got {cfg.confidence}"),
        (
            cfg.bootstrap_resamples >= 100,
            "bootstrap_resamples",
            f"must be >= 100, got {cfg.bootstrap_resamples}",
        ),
        (bool(cfg.metric.strip()), "metric", "must name a metrics.jsonl key"),
    ]
    for i, spec in enumerate(cfg.variants):
        ok = bool(spec.name) and all(c.isalnum() or c in "-_." for c in spec.name)
        checks.append(
            (ok, f"variants[{i}].name", f"must be letters, digits, '-', '_' or '.', got {spec.name!r}")
        )
    checks.append((cfg.slurm.chain >= 1, "slurm.chain", f"must be >= 1, got {cfg.slurm.chain}"))
    for key in ("auc", "final_eval", "below_baseline"):
        value = getattr(cfg.tolerances, key)
        checks.append((value >= 0, f"tolerances.{key}", f"must be >= 0, got {value}"))
    for ok, key, problem in checks:
        if not ok:
            raise ConfigError(f"{source}: {key}: {problem}")


def load_nightly_config(path: str | Path) -> NightlyConfig:
    """Read and validate a nightly YAML; `experiment` and `golden` become absolute paths.

    Raises ConfigError naming the dotted key (and the file) for unknown/missing keys, wrong types and
    impossible values, and when the experiment config does not exist.
    """
    path = Path(path).resolve()
    cfg = dataclass_from_dict(NightlyConfig, read_yaml_mapping(path), source=str(path))
    _validate(cfg, str(path))
    experiment = (path.parent / cfg.experiment).resolve()
    if not experiment.is_file():
        raise ConfigError(f"{path}: experiment: experiment config not found: {experiment}")
    golden = (path.parent / cfg.golden).resolve()
    return dataclasses.replace(cfg, experiment=str(experiment), golden=str(golden))
