"""The rollout side of an iteration: prompts → vLLM samples → math rewards, and the rollout files.

`generate_and_score` is shared by the colocated loop (engine in the same process as the actor) and
the staged `rollout` stage (engine loaded from the latest exported HF weights, result written to
`rollouts/iter_XXXX.pt` for the `train` stage).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from pipeline.config import ExperimentConfig
from pipeline.stages.batch import iteration_problem_indices, rollout_statistics, sampling_seed


@dataclass
class RolloutResult:
    """One iteration's samples (prompt-major: G consecutive samples per prompt) and their rewards."""

    iteration: int
    problem_ids: list[str]
    samples: list[Any]  # pipeline.rollout.Sample
    answers: list[str]  # ground truth of each sample's problem
    scores: list[float]
    metrics: dict[str, float] = field(default_factory=dict)

    @property
    def correct(self) -> list[bool]:
        return [s >= 1.0 for s in self.scores]


def load_problems(path: Path) -> list[dict[str, Any]]:
    """The frozen training problems written by `prepare` (one JSON object per line)."""
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: run `python -m pipeline prepare` first")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def make_engine(cfg: ExperimentConfig, model_dir: Path):
    """A vLLM RolloutEngine over `model_dir` configured from the rollout section."""
    from pipeline.rollout import RolloutEngine

    ro = cfg.rollout
    return RolloutEngine(
        model_dir,
        dtype=cfg.model.params_dtype,
        seed=ro.seed,
        tensor_parallel_size=ro.tensor_parallel,
        gpu_memory_utilization=ro.gpu_memory_utilization,
        kv_cache_gb=ro.kv_cache_gb,
        max_model_len=ro.max_model_len,
        enable_sleep=ro.enable_sleep,
    )


def sampling_settings(cfg: ExperimentConfig, iteration: int):
    from pipeline.rollout import SamplingSettings

    ro = cfg.rollout
    return SamplingSettings(
        max_tokens=ro.max_new_tokens,
        temperature=ro.temperature,
        top_p=ro.top_p,
        top_k=ro.top_k,
        stop=tuple(ro.stop),
        seed=sampling_seed(ro.seed, iteration),
    )


def generate_and_score(
    engine: Any, cfg: ExperimentConfig, problems: list[dict[str, Any]], iteration: int
) -> RolloutResult:
    """Sample G responses for this iteration's prompts and score them (times under metrics time/*)."""
    from pipeline.rewards import score_batch

    ro, progress = cfg.rollout, cfg.run.progress
    chosen = [
        problems[i]
        for i in iteration_problem_indices(
            len(problems), iteration, ro.prompts_per_iteration, seed=cfg.data.shuffle_seed
        )
    ]
    n_samples = len(chosen) * ro.samples_per_prompt
    with tqdm(
        total=n_samples, desc=f"rollout {iteration}", unit="sample", disable=not progress, leave=False
    ) as bar:
        t0 = time.perf_counter()
        samples = engine.generate(
            [p["prompt_ids"] for p in chosen], ro.samples_per_prompt, sampling_settings(cfg, iteration)
        )
        t_rollout = time.perf_counter() - t0
        bar.update(len(samples))
    samples.sort(key=lambda s: (s.prompt_index, s.sample_index))
    answers = [chosen[s.prompt_index]["answer"] for s in samples]
    with tqdm(
        total=n_samples, desc=f"scoring {iteration}", unit="sample", disable=not progress, leave=False
    ) as bar:
        t0 = time.perf_counter()
        scores, stats = score_batch(
            [s.text for s in samples],
            answers,
            timeout_s=cfg.reward.timeout_s,
            num_workers=cfg.reward.num_workers,
            format_weight=cfg.reward.format_weight,
        )
        t_reward = time.perf_counter() - t0
        bar.update(len(scores))
    result = RolloutResult(
        iteration, [str(p["id"]) for p in chosen], samples, answers, [float(s) for s in scores]
    )
    metrics = rollout_statistics(samples, result.scores, result.correct, ro.samples_per_prompt)
    metrics["reward/no_answer_rate"] = stats["no_answer"] / max(len(samples), 1)
    metrics["reward/timeouts"] = stats["timeouts"]
    metrics["rollout/tokens_per_s"] = metrics["rollout/response_tokens"] / max(t_rollout, 1e-9)
    metrics["time/rollout"], metrics["time/reward"] = t_rollout, t_reward
    result.metrics = metrics
    return result


def save_rollouts(path: Path, result: RolloutResult) -> None:
    """Write a RolloutResult atomically (torch.save of plain Python data)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = asdict(result)
    payload["samples"] = [asdict(s) for s in result.samples]
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(payload, tmp)
    tmp.replace(path)


def load_rollouts(path: Path) -> RolloutResult:
    """Read a file written by `save_rollouts`."""
    from pipeline.rollout import Sample

    if not path.is_file():
        raise FileNotFoundError(
            f"{path} is missing: run `python -m pipeline rollout` for this iteration first"
        )
    payload = torch.load(path, weights_only=True)
    payload["samples"] = [Sample(**s) for s in payload["samples"]]
    return RolloutResult(**payload)


def rollout_stage(cfg: ExperimentConfig, layout) -> Path:
    """Staged mode: sample and score iteration `completed_iterations` with the latest exported weights
    (the base model before the first iteration) into `rollouts/iter_XXXX.pt`; returns that path.

    A rollout file that already exists is kept: it is deterministic in (weights, seeds), so a stage
    interrupted after writing it needs no redo.
    """
    from pipeline.manifest import load_manifest, resolve_in_run_dir, save_manifest

    manifest = load_manifest(layout.root)
    if manifest is None or manifest.stage("prepare").state != "done":
        raise FileNotFoundError(f"{layout.root}: not prepared; run `python -m pipeline prepare` first")
    it = manifest.completed_iterations
    out = layout.rollouts(it)
    if it >= cfg.run.iterations or out.exists():
        return out
    weights = layout.weights(it - 1) if it > 0 else resolve_in_run_dir(layout.root, manifest.base_hf_dir)
    engine = make_engine(cfg, weights)
    try:
        result = generate_and_score(engine, cfg, load_problems(layout.data), it)
    finally:
        engine.close()
    save_rollouts(out, result)
    manifest.set_stage("rollout", "done", iteration=it, rollouts=layout.rel(out))
    save_manifest(layout.root, manifest)
    return out
