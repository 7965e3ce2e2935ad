"""Plan and execute the runs of a nightly: every arm × every paired seed.

`plan_runs` turns a NightlyConfig into `PlannedRun`s (run dir `OUT/runs/<arm>/seed<k>`, the experiment
overrides of the run) and validates each run's experiment config with `pipeline.config.load_config`
before anything starts. Overrides are applied in this order, so an arm can never break the pairing:
the nightly's common overrides, the arm's algorithm settings and overrides, then the iterations and
seeds the nightly controls (`run.iterations`, `run.seed`, `rollout.seed`, `data.shuffle_seed`), which
neither may set.

Executors:
- `run_local`: one `python -m pipeline run` subprocess per run, sequentially, output to
  `OUT/logs/<arm>-seed<k>.log`. Resumable: a complete run is skipped; an incomplete one is started
  again in the same run dir and the pipeline continues from its last complete iteration.
- `submit_slurm`: per incomplete run, `slurm.chain` jobs of one name chained by
  `--dependency=singleton` (`<run_script> run ITERATIONS --config EXP --run-dir DIR overrides...`; each
  resumes the run, and is a no-op once it is complete), then a report job
  `--dependency=afterany:<all>` (`<run_script> report --config NIGHTLY --out DIR`, which runs
  `python -m pipeline compare --report-only`; its exit code is the nightly's verdict).
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.compare.collect import run_is_complete
from pipeline.compare.nightly_config import NightlyConfig
from pipeline.config import ConfigError, config_hash, load_config

__all__ = ["PlannedRun", "plan_runs", "recipe_fingerprint", "run_local", "submit_slurm"]

# Keys the nightly sets itself; arms and common overrides may not touch them (pairing).
CONTROLLED_KEYS = ("run.iterations", "run.seed", "rollout.seed", "data.shuffle_seed")
# Overrides of an arm may not touch the data (same prompts in the same order for every arm).
ARM_FORBIDDEN_PREFIXES = ("data.",)


@dataclass(frozen=True)
class PlannedRun:
    """One run: arm × seed, its run dir and the overrides applied to the nightly's experiment config."""

    arm: str
    seed: int
    run_dir: Path
    overrides: list[str]
    config_hash: str

    @property
    def label(self) -> str:
        return f"{self.arm}/seed{self.seed}"

    def command(self, experiment: str, python: str = sys.executable) -> list[str]:
        """The `python -m pipeline run` command line of this run."""
        return [
            python,
            "-m",
            "pipeline",
            "run",
            "--config",
            experiment,
            "--run-dir",
            str(self.run_dir),
        ] + list(self.overrides)


def _override_key(text: str) -> str:
    return text.partition("=")[0].strip()


def _check_overrides(cfg: NightlyConfig) -> None:
    for i, text in enumerate(cfg.overrides):
        if _override_key(text) in CONTROLLED_KEYS:
            raise ConfigError(
                f"{cfg.name}: overrides[{i}]: {text!r} sets a key the nightly controls "
                f"({', '.join(CONTROLLED_KEYS)}); use `iterations`, `seeds` or `shuffle_seed` instead"
            )
    for i, spec in enumerate(cfg.variants):
        for j, text in enumerate(spec.overrides):
            key = _override_key(text)
            if key in CONTROLLED_KEYS or key.startswith(ARM_FORBIDDEN_PREFIXES):
                raise ConfigError(
                    f"{cfg.name}: variants[{i}].overrides[{j}]: {text!r} would break the pairing of seeds "
                    f"and prompts across arms (an arm may not set {', '.join(CONTROLLED_KEYS)} or data.*)"
                )


def plan_runs(cfg: NightlyConfig, out_dir: str | Path) -> list[PlannedRun]:
    """All arm × seed runs under `out_dir/runs`, each validated by loading its experiment config.

    Raises ConfigError naming the arm and seed when a run's config is invalid.
    """
    _check_overrides(cfg)
    out_dir = Path(out_dir).resolve()
    runs = []
    for i, spec in enumerate(cfg.variants):
        for seed in cfg.seeds:
            shuffle = cfg.shuffle_seed if cfg.shuffle_seed is not None else seed
            model_seed = cfg.model_seed if cfg.model_seed is not None else seed
            overrides = [
                *cfg.overrides,
                *spec.experiment_overrides(),
                f"run.iterations={cfg.iterations}",
                f"run.seed={model_seed}",
                f"rollout.seed={seed}",
                f"data.shuffle_seed={shuffle}",
            ]
            try:
                exp = load_config(cfg.experiment, overrides)
            except ConfigError as e:
                raise ConfigError(f"{cfg.name}: variants[{i}] ({spec.name}), seed {seed}: {e}") from e
            run_dir = out_dir / "runs" / spec.name / f"seed{seed}"
            runs.append(PlannedRun(spec.name, seed, run_dir, overrides, config_hash(exp)))
    return runs


def recipe_fingerprint(cfg: NightlyConfig) -> dict[str, Any]:
    """What golden values belong to: the nightly's name, length, seeds, metric and each arm's config.

    Each arm is identified by the config hash of its resolved experiment config at the first seed with
    that seed's keys reset, so the hash changes when the recipe does, not when seeds are added.
    """
    arms = {}
    for spec in cfg.variants:
        overrides = [*cfg.overrides, *spec.experiment_overrides(), f"run.iterations={cfg.iterations}"]
        overrides += ["run.seed=0", "rollout.seed=0", "data.shuffle_seed=0"]
        arms[spec.name] = config_hash(load_config(cfg.experiment, overrides))
    return {
        "nightly": cfg.name,
        "iterations": cfg.iterations,
        "seeds": list(cfg.seeds),
        "model_seed": cfg.model_seed,
        "shuffle_seed": cfg.shuffle_seed,
        "metric": cfg.metric,
        "eval_metric": cfg.eval_metric,
        "arms": arms,
    }


@dataclass(frozen=True)
class RunOutcome:
    run: PlannedRun
    state: str  # "skipped" (already complete), "ok", "failed"
    seconds: float
    log: Path | None
    returncode: int | None


def run_local(
    cfg: NightlyConfig,
    runs: Sequence[PlannedRun],
    out_dir: str | Path,
    *,
    python: str = sys.executable,
    env: dict[str, str] | None = None,
    echo: Callable[[str], None] = print,
) -> list[RunOutcome]:
    """Run every incomplete run sequentially as a subprocess; failures are recorded, not raised."""
    log_dir = Path(out_dir) / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    child_env = {**os.environ, **(env or {})}
    outcomes = []
    for n, run in enumerate(runs, start=1):
        prefix = f"[{n}/{len(runs)}] {run.label}"
        if run_is_complete(run.run_dir, cfg.iterations):
            echo(f"{prefix}: complete, skipped ({run.run_dir})")
            outcomes.append(RunOutcome(run, "skipped", 0.0, None, None))
            continue
        log = log_dir / f"{run.arm}-seed{run.seed}.log"
        echo(f"{prefix}: running (log: {log})")
        start = time.monotonic()
        with open(log, "ab") as fh:
            fh.write(f"$ {shlex.join(run.command(cfg.experiment, python))}\n".encode())
            fh.flush()
            proc = subprocess.run(
                run.command(cfg.experiment, python),
                stdout=fh,
                stderr=subprocess.STDOUT,
                env=child_env,
                check=False,
            )
        seconds = time.monotonic() - start
        state = "ok" if proc.returncode == 0 else "failed"
        echo(f"{prefix}: {state} in {seconds:.0f}s" + ("" if state == "ok" else f" (exit {proc.returncode})"))
        outcomes.append(RunOutcome(run, state, seconds, log, proc.returncode))
    return outcomes


def _sbatch(args: list[str], runner: Callable[..., subprocess.CompletedProcess]) -> str:
    proc = runner(["sbatch", "--parsable", *args], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"sbatch failed (exit {proc.returncode}): {proc.stderr.strip()}")
    return proc.stdout.strip().split(";")[0]


def submit_slurm(
    cfg: NightlyConfig,
    runs: Sequence[PlannedRun],
    out_dir: str | Path,
    *,
    nightly_config_path: str | Path,
    update_golden: bool = False,
    runner: Callable[..., subprocess.CompletedProcess] = subprocess.run,
    echo: Callable[[str], None] = print,
) -> list[str]:
    """Submit one job per incomplete run and a dependent report job; returns the job ids (report last)."""
    out_dir = Path(out_dir).resolve()
    log_dir = out_dir / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    script = cfg.slurm.run_script
    job_ids = []
    for run in runs:
        if run_is_complete(run.run_dir, cfg.iterations):
            echo(f"{run.label}: complete, not submitted")
            continue
        # `chain` jobs of one name run one after another (singleton); each resumes the run.
        for link in range(cfg.slurm.chain):
            args = [
                f"--job-name=nightly-{cfg.name}-{run.arm}-s{run.seed}",
                f"--output={log_dir / f'{run.arm}-seed{run.seed}-%j.log'}",
                *(["--dependency=singleton"] if link > 0 else []),
                *cfg.slurm.sbatch_args,
                script,
                "run",
                str(cfg.iterations),
                *run.command(cfg.experiment)[4:],  # --config EXP --run-dir DIR overrides...
            ]
            job_ids.append(_sbatch(args, runner))
            echo(f"{run.label}: submitted job {job_ids[-1]}")
    report_args = [
        f"--job-name=nightly-{cfg.name}-report",
        f"--output={log_dir / 'report-%j.log'}",
        *([f"--dependency=afterany:{':'.join(job_ids)}"] if job_ids else []),
        *cfg.slurm.report_sbatch_args,
        script,
        "report",
        "--config",
        str(Path(nightly_config_path).resolve()),
        "--out",
        str(out_dir),
        *(["--update-golden"] if update_golden else []),
    ]
    job_ids.append(_sbatch(report_args, runner))
    echo(f"report: submitted job {job_ids[-1]} (after {len(job_ids) - 1} run jobs)")
    return job_ids
