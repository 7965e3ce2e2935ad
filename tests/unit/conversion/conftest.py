"""Tiny random HF models for the converter tests (built locally, odd sizes, GQA, tied and untied)."""

from __future__ import annotations

import glob

import pytest
import torch
from safetensors.torch import load_file

from pipeline.data.tiny_model import save_random_hf_model, tiny_hf_config

# (arch, tied): Qwen2 tied (QKV bias), Llama untied (llama3 RoPE scaling, no bias).
VARIANTS = [("qwen2", True), ("llama", False), ("qwen2", False)]


def build_hf(path, arch: str, tied: bool, *, shard: str | None = "150KB", **overrides):
    cfg = tiny_hf_config(
        arch,
        tie_word_embeddings=tied,
        num_layers=4,
        hidden_size=96,
        intermediate_size=136,
        num_heads=3 * 2,
        num_kv_heads=2,
        vocab_size=137,
        **overrides,
    )
    save_random_hf_model(path, cfg, seed={"qwen2": 1, "llama": 2}[arch] + 10 * tied, max_shard_size=shard)
    return path


def load_all(hf_dir) -> dict[str, torch.Tensor]:
    """Every tensor of an HF dir with the safetensors library (the independent reference reader)."""
    out: dict[str, torch.Tensor] = {}
    for f in sorted(glob.glob(f"{hf_dir}/*.safetensors")):
        out.update(load_file(f))
    return out


@pytest.fixture(
    scope="session", params=VARIANTS, ids=[f"{a}-{'tied' if t else 'untied'}" for a, t in VARIANTS]
)
def hf_dir(request, tmp_path_factory):
    arch, tied = request.param
    return build_hf(tmp_path_factory.mktemp(f"{arch}_{tied}"), arch, tied)


@pytest.fixture(scope="session")
def qwen_dir(tmp_path_factory):
    return build_hf(tmp_path_factory.mktemp("qwen_tied"), "qwen2", True)
