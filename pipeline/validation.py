"""Checks run before a stage starts work, each failing with a message that names the config key.

`pipeline.config` validates what a config says on its own (types, ranges, TP*PP*DP against the
declared GPUs). This module checks the config against the machine and the model: the processes and
GPUs actually present, the model's heads and layers against TP/PP, and the architecture against the
converter's registry. It runs where the job runs (not on a login node).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from pipeline.config import ConfigError, ExperimentConfig, validate_paths


class ValidationError(ConfigError):
    """The config does not fit this machine or this model; the message names the key."""


def read_hf_config(hf_dir: str | Path, *, key: str = "model.hf_dir") -> dict[str, Any]:
    """config.json of an HF model directory as a dict (ValidationError naming `key` if unreadable)."""
    path = Path(hf_dir) / "config.json"
    if not path.is_file():
        raise ValidationError(f"{key}: {hf_dir} is not an HF model directory (no config.json)")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValidationError(f"{key}: {path} is not valid JSON ({e})") from e


def _cuda_devices() -> int:
    import torch  # only when GPUs are configured: keeps CPU error paths fast

    return torch.cuda.device_count()


def validate_resources(cfg: ExperimentConfig, *, world_size: int | None = None) -> None:
    """TP*PP*DP against the processes of this job, and GPUs against what the machine has."""
    par, cl = cfg.parallelism, cfg.cluster
    world = world_size if world_size is not None else int(os.environ.get("WORLD_SIZE", "1"))
    layout = par.tensor_parallel * par.pipeline_parallel * par.data_parallel
    if layout != world:
        raise ValidationError(
            f"parallelism: tensor_parallel*pipeline_parallel*data_parallel = {par.tensor_parallel}*"
            f"{par.pipeline_parallel}*{par.data_parallel} = {layout} must equal the {world} process(es) "
            f"of this job (WORLD_SIZE); start it with torchrun/srun --ntasks {layout} or change parallelism.*"
        )
    if cl.gpus_per_node > 0 and _cuda_devices() < min(cl.gpus_per_node, world):
        raise ValidationError(
            f"cluster.gpus_per_node: {cl.gpus_per_node} GPUs configured but this machine has "
            f"{_cuda_devices()} (set cluster.gpus_per_node=0 for a CPU run)"
        )
    if cfg.run.mode == "colocated" and world != 1:
        raise ValidationError(
            f"run.mode: colocated runs one process holding the actor and the engine, but the job has "
            f"{world} processes; use run.mode=staged for multi-process training"
        )


def validate_model(cfg: ExperimentConfig, hf_config: dict[str, Any], *, hf_dir: str | Path) -> None:
    """Heads and layers against TP/PP, the context length, and the architecture against the registry."""
    from conversion.registry import get_mapping

    par, ro = cfg.parallelism, cfg.rollout
    try:
        get_mapping(hf_config)
    except (KeyError, ValueError) as e:
        raise ValidationError(f"model.hf_dir: {hf_dir}: unsupported architecture: {e}") from None
    heads = hf_config["num_attention_heads"]
    kv_heads = hf_config.get("num_key_value_heads") or heads  # HF: absent means multi-head attention
    for key, tp in (
        ("parallelism.tensor_parallel", par.tensor_parallel),
        ("rollout.tensor_parallel", ro.tensor_parallel),
    ):
        if heads % tp or kv_heads % tp:
            raise ValidationError(
                f"{key}: {tp} must divide the model's attention heads ({heads}) and KV heads ({kv_heads}) "
                f"(model.hf_dir = {hf_dir})"
            )
    layers = hf_config["num_hidden_layers"]
    if layers % par.pipeline_parallel:
        raise ValidationError(
            f"parallelism.pipeline_parallel: {par.pipeline_parallel} must divide the model's "
            f"{layers} layers (model.hf_dir = {hf_dir})"
        )
    max_pos = hf_config.get("max_position_embeddings")
    if max_pos is not None and ro.max_model_len > max_pos:
        raise ValidationError(
            f"rollout.max_model_len: {ro.max_model_len} exceeds the model's max_position_embeddings "
            f"{max_pos} (model.hf_dir = {hf_dir})"
        )


def validate_before_start(
    cfg: ExperimentConfig, *, hf_dir: str | Path | None, trainer_world_size: int | None
) -> None:
    """Paths named by the config, then the model (skipped when `hf_dir` is None: a bootstrapped model
    does not exist yet), then the resources (only in processes that train: `trainer_world_size` is
    their number, None skips the check)."""
    validate_paths(cfg)
    if cfg.run.offpolicy_overlap:
        raise ValidationError(
            "run.offpolicy_overlap: one-step off-policy overlap is not implemented yet; set it false"
        )
    if hf_dir is not None:
        validate_model(cfg, read_hf_config(hf_dir), hf_dir=hf_dir)
    if trainer_world_size is not None:
        validate_resources(cfg, world_size=trainer_world_size)
