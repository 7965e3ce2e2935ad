"""The `prepare` stage: the model (bootstrap or HF dir), validation, the frozen training prompts, and the
HF→Megatron conversion of the initial weights. Idempotent: a run dir already prepared is left as is.

Outputs (relative to the run dir): `base_hf/` (bootstrapped model only), `data/train.jsonl` (one
`{"id", "problem", "answer", "prompt", "prompt_ids"}` per line, prompts over `data.max_prompt_tokens`
dropped), `checkpoints/init/` (model-only Megatron checkpoint), and `manifest.json`.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

from pipeline.config import ExperimentConfig
from pipeline.manifest import Manifest, RunLayout, atomic_write_text, load_manifest, save_manifest
from pipeline.validation import ValidationError, read_hf_config, validate_model

logger = logging.getLogger(__name__)


def base_model_dir(cfg: ExperimentConfig, layout: RunLayout) -> Path:
    """Where the run's initial HF model is (or will be, for a bootstrapped one)."""
    return layout.base_hf if cfg.model.bootstrap else Path(cfg.model.hf_dir).resolve()


def bootstrap_cache_dir() -> Path:
    """Where bootstrapped tiny models are cached across run dirs: $GRPO_LAMBDA_CACHE/bootstrap
    (default ~/.cache/grpo-lambda/bootstrap). Each run dir still gets its own copy (`base_hf/`)."""
    root = os.environ.get("GRPO_LAMBDA_CACHE") or Path.home() / ".cache" / "grpo-lambda"
    return Path(root) / "bootstrap"


def _build_base_model(cfg: ExperimentConfig, layout: RunLayout) -> Path:
    if not cfg.model.bootstrap:
        return base_model_dir(cfg, layout)
    from pipeline.data.bootstrap import BootstrapSettings, bootstrap_tiny_model

    if cfg.model.bootstrap_arch != "qwen2":
        raise ValidationError(
            f"model.bootstrap_arch: the bootstrapped tiny model is a Qwen2 model, got {cfg.model.bootstrap_arch!r}"
        )
    settings = BootstrapSettings(difficulty=cfg.data.arithmetic_difficulty)
    # bootstrap_tiny_model caches by the hash of its settings inside the directory it is given.
    cached = bootstrap_cache_dir() / f"qwen2-seed{cfg.run.seed}-difficulty{cfg.data.arithmetic_difficulty}"
    bootstrap_tiny_model(cached, seed=cfg.run.seed, settings=settings)
    tmp = layout.base_hf.with_name(f".{layout.base_hf.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(cached, tmp)
    shutil.rmtree(layout.base_hf, ignore_errors=True)
    tmp.rename(layout.base_hf)
    return layout.base_hf


def load_train_problems(cfg: ExperimentConfig) -> list[dict[str, Any]]:
    """The training set named by `data.train` (local files when given)."""
    from pipeline.data import load_dataset_split

    d = cfg.data
    return load_dataset_split(
        d.train,
        split="train",
        local_files=list(d.train_files) or None,
        arithmetic_difficulty=d.arithmetic_difficulty,
        shuffle_seed=d.shuffle_seed,
    )


def encode_problems(
    cfg: ExperimentConfig, problems: list[dict[str, Any]], hf_dir: Path
) -> list[dict[str, Any]]:
    """Template and tokenize each problem; drop those whose prompt exceeds `data.max_prompt_tokens`."""
    from transformers import AutoTokenizer

    from pipeline.data.prompts import build_prompt

    tokenizer = AutoTokenizer.from_pretrained(str(hf_dir))
    kept = []
    for p in problems:
        prompt = build_prompt(p["problem"], tokenizer, cfg.data.prompt_template)
        ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        if len(ids) <= cfg.data.max_prompt_tokens:
            kept.append(
                {
                    "id": str(p["id"]),
                    "problem": p["problem"],
                    "answer": str(p["answer"]),
                    "prompt": prompt,
                    "prompt_ids": ids,
                }
            )
    if not kept:
        raise ValidationError(
            f"data.max_prompt_tokens: all {len(problems)} prompts of data.train={cfg.data.train!r} are longer "
            f"than {cfg.data.max_prompt_tokens} tokens"
        )
    if len(kept) < len(problems):
        logger.warning(
            "dropped %d of %d prompts longer than data.max_prompt_tokens",
            len(problems) - len(kept),
            len(problems),
        )
    return kept


def convert_to_megatron(cfg: ExperimentConfig, hf_dir: Path, out_dir: Path) -> Path:
    from conversion.convert import hf_to_megatron

    par = cfg.parallelism
    return hf_to_megatron(
        hf_dir,
        out_dir,
        tp=par.tensor_parallel,
        pp=par.pipeline_parallel,
        dtype=cfg.model.params_dtype,
        force=True,
    )


def prepare(cfg: ExperimentConfig, layout: RunLayout) -> Manifest:
    """Run the stage (see the module docstring); returns the manifest."""
    manifest = load_manifest(layout.root) or Manifest()
    if manifest.stage("prepare").state == "done":
        return manifest
    manifest.set_stage("prepare", "running")
    save_manifest(layout.root, manifest)
    hf_dir = _build_base_model(cfg, layout)
    validate_model(cfg, read_hf_config(hf_dir), hf_dir=hf_dir)
    problems = encode_problems(cfg, load_train_problems(cfg), hf_dir)
    atomic_write_text(layout.data, "".join(json.dumps(p) + "\n" for p in problems))
    convert_to_megatron(cfg, hf_dir, layout.init_checkpoint)
    manifest.base_hf_dir = (
        layout.rel(hf_dir) if hf_dir.resolve().is_relative_to(layout.root.resolve()) else str(hf_dir)
    )
    manifest.checkpoint = layout.rel(layout.init_checkpoint)
    manifest.completed_iterations = 0
    manifest.set_stage(
        "prepare",
        "done",
        data=layout.rel(layout.data),
        checkpoint=manifest.checkpoint,
        base_hf=manifest.base_hf_dir,
    )
    save_manifest(layout.root, manifest)
    return manifest
