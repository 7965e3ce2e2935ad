"""Llama 3.x: no biases (attention_bias / mlp_bias false), RMSNorm, SwiGLU, GQA, llama3 RoPE scaling."""

from __future__ import annotations

from typing import Any

from conversion.arch.base import ArchMapping


def _check(cfg: dict[str, Any]) -> None:
    if cfg["mlp_bias"]:
        raise ValueError(
            "Llama with mlp_bias=true is not supported (Megatron's fused linear_fc1 has no bias here)"
        )
    if cfg["hidden_act"] != "silu":
        raise ValueError(f"Llama hidden_act {cfg['hidden_act']!r} is not supported (only 'silu')")


LLAMA = ArchMapping(
    architecture="LlamaForCausalLM", check_config=_check, qkv_bias=lambda cfg: bool(cfg["attention_bias"])
)
