"""Qwen2 / Qwen2.5 (0.5B-72B): biases on q/k/v only, RMSNorm, SwiGLU, GQA, tied embeddings on small sizes."""

from __future__ import annotations

from typing import Any

from conversion.arch.base import ArchMapping


def _check(cfg: dict[str, Any]) -> None:
    if cfg.get("use_sliding_window"):
        raise ValueError(
            "Qwen2 with use_sliding_window=true is not supported by the Megatron GPTModel mapping"
        )
    if cfg["hidden_act"] != "silu":
        raise ValueError(f"Qwen2 hidden_act {cfg['hidden_act']!r} is not supported (only 'silu')")


QWEN2 = ArchMapping(architecture="Qwen2ForCausalLM", check_config=_check, qkv_bias=lambda cfg: True)
