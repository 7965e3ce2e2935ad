"""Megatron `GPTModel` from a Hugging Face config of Qwen2/Qwen2.5 or Llama 3.x.

The HF config (a `PretrainedConfig` or the dict of `config.json`) maps onto a `TransformerConfig`:
RMSNorm, SwiGLU (`gated_linear_unit` + SiLU; fc1 rows are [gate; up] per TP rank), GQA
(`num_query_groups`), RoPE θ, QKV bias for Qwen2, tied or untied embeddings, vocab padded to a
multiple of 128·TP. Llama 3 RoPE scaling: GPTModel 0.16 only forwards the `factor` and hard-codes
`original_max_position_embeddings=8192` and the low/high frequency factors, so the rotary inverse
frequencies are recomputed here with every HF parameter (same formula as transformers'
`_compute_llama3_parameters`).

Backends: the local (pure Megatron-Core) layer spec on CPU, the Transformer Engine spec on GPU
(`use_te=None` picks TE iff CUDA and TE are present). FP8 (`fp8="hybrid"|"e4m3"`) needs TE and a GPU
and fails with a clear error otherwise. Parameters are fp32 on CPU, bf16 (or as asked) on GPU.
"""

from __future__ import annotations

import importlib.util
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from megatron_ext.cpu import enable_cpu_fallback

SUPPORTED_ARCHITECTURES = ("LlamaForCausalLM", "Qwen2ForCausalLM")
_MODEL_TYPES = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM"}
FP8_FORMATS = ("e4m3", "hybrid")
FP8_RECIPES = ("delayed", "tensorwise", "mxfp8", "blockwise")
ROPE_TYPES = ("default", "llama3")
RECOMPUTE = (None, "selective", "full")


@dataclass(frozen=True)
class Fp8Recipe:
    """FP8 scaling recipe fields passed to TransformerConfig (see Transformer Engine's DelayedScaling).

    recipe: TE recipe name; margin: exponent margin of the scale; amax_history_len: window of amax
    values; amax_compute_algo: "max" over the window or "most_recent".
    """

    recipe: str = "delayed"
    margin: int = 0
    amax_history_len: int = 1024
    amax_compute_algo: str = "max"


def transformer_engine_available() -> bool:
    """True when Transformer Engine is importable and a CUDA device is present."""
    return torch.cuda.is_available() and importlib.util.find_spec("transformer_engine") is not None


def padded_vocab_size(vocab_size: int, tp: int) -> int:
    """Smallest multiple of 128·tp that is >= vocab_size (Megatron's make-vocab-size-divisible-by)."""
    if vocab_size < 1 or tp < 1:
        raise ValueError(f"vocab_size and tp must be >= 1, got vocab_size={vocab_size}, tp={tp}")
    multiple = 128 * tp
    return int(math.ceil(vocab_size / multiple) * multiple)


def _hf_dict(hf_config: Any) -> dict[str, Any]:
    if isinstance(hf_config, Mapping):
        return dict(hf_config)
    if hasattr(hf_config, "to_dict"):
        return hf_config.to_dict()
    raise TypeError(f"hf_config must be a transformers PretrainedConfig or a dict, got {type(hf_config)}")


def hf_architecture(hf_config: Any) -> str:
    """The HF architecture name (`architectures[0]`, else from `model_type`), checked as supported."""
    cfg = _hf_dict(hf_config)
    archs = cfg.get("architectures") or []  # absent in configs built in memory, present in config.json
    arch = archs[0] if archs else _MODEL_TYPES.get(cfg.get("model_type", ""), "")
    if arch not in SUPPORTED_ARCHITECTURES:
        raise ValueError(
            f"unsupported architecture {arch or cfg.get('model_type')!r}; valid: {list(SUPPORTED_ARCHITECTURES)}"
        )
    return arch


def rope_parameters(hf_config: Any) -> dict[str, Any]:
    """RoPE θ and scaling as one dict {rope_type, rope_theta, ...} from transformers 5 or older configs."""
    cfg = _hf_dict(hf_config)
    params = dict(cfg.get("rope_parameters") or {})
    if not params:  # config.json of transformers < 5: rope_theta and rope_scaling at top level
        params = dict(cfg.get("rope_scaling") or {})
        params["rope_theta"] = cfg["rope_theta"]
    if "type" in params and "rope_type" not in params:
        params["rope_type"] = params.pop("type")
    params.setdefault("rope_type", "default")  # transformers treats a missing rope_type as "default"
    if params["rope_type"] not in ROPE_TYPES:
        raise ValueError(f"unsupported rope_type {params['rope_type']!r}; valid: {list(ROPE_TYPES)}")
    return params


def _validate_fp8(fp8: str | None, use_te: bool, params_dtype: torch.dtype) -> None:
    if fp8 is None:
        return
    if fp8 not in FP8_FORMATS:
        raise ValueError(f"unknown fp8 format {fp8!r}; valid: [None, {', '.join(map(repr, FP8_FORMATS))}]")
    if not torch.cuda.is_available():
        raise ValueError(f"model.fp8={fp8!r} needs a CUDA GPU; none is available (set fp8 to null on CPU)")
    if not use_te:
        raise ValueError(
            f"model.fp8={fp8!r} needs Transformer Engine (pip install transformer-engine[pytorch]) "
            "and the TE layer spec; it is not installed or use_transformer_engine is false"
        )
    if params_dtype == torch.float32:
        raise ValueError("model.fp8 needs params_dtype bfloat16 (FP8 GEMMs keep bf16 master weights)")


def _validate_shape(cfg: dict[str, Any], tp: int, pp: int) -> None:
    """TP must divide the attention and KV heads, PP the layers; the MLP must be SwiGLU."""
    heads, groups = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    if heads % tp or groups % tp:
        raise ValueError(
            f"parallelism.tensor_parallel={tp} must divide num_attention_heads={heads} and "
            f"num_key_value_heads={groups}"
        )
    if cfg["num_hidden_layers"] % pp:
        raise ValueError(
            f"parallelism.pipeline_parallel={pp} must divide num_hidden_layers={cfg['num_hidden_layers']}"
        )
    if cfg["hidden_act"] != "silu":
        raise ValueError(f"unsupported hidden_act {cfg['hidden_act']!r}; valid: ['silu']")


def _fp8_kwargs(fp8: str | None, recipe: Fp8Recipe) -> dict[str, Any]:
    """TransformerConfig's FP8 fields ({} when fp8 is None)."""
    if fp8 is None:
        return {}
    if recipe.recipe not in FP8_RECIPES:
        raise ValueError(f"unknown fp8 recipe {recipe.recipe!r}; valid: {list(FP8_RECIPES)}")
    return dict(
        fp8=fp8,
        fp8_recipe=recipe.recipe,
        fp8_margin=recipe.margin,
        fp8_amax_history_len=recipe.amax_history_len,
        fp8_amax_compute_algo=recipe.amax_compute_algo,
    )


def transformer_config_from_hf(
    hf_config: Any,
    *,
    tp: int,
    pp: int,
    params_dtype: torch.dtype,
    fp8: str | None = None,
    fp8_recipe: Fp8Recipe | None = None,
    use_te: bool | None = None,
    recompute_granularity: str | None = None,
):
    """The Megatron `TransformerConfig` equivalent to an HF Qwen2/Llama config at the given TP/PP.

    recompute_granularity: None, "selective" (recompute core attention in backward: long sequences
    without flash attention) or "full" (every layer).
    """
    from megatron.core.transformer.enums import AttnBackend
    from megatron.core.transformer.transformer_config import TransformerConfig

    cfg = _hf_dict(hf_config)
    arch = hf_architecture(cfg)
    use_te = transformer_engine_available() if use_te is None else use_te
    _validate_fp8(fp8, use_te, params_dtype)
    _validate_shape(cfg, tp, pp)
    heads, groups = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    if recompute_granularity not in RECOMPUTE:
        raise ValueError(f"unknown recompute_granularity {recompute_granularity!r}; valid: {list(RECOMPUTE)}")
    recompute = {"recompute_granularity": recompute_granularity}
    if recompute_granularity == "full":
        recompute.update(recompute_method="uniform", recompute_num_layers=1)
    qkv_bias = True if arch == "Qwen2ForCausalLM" else bool(cfg["attention_bias"])
    fp8_kwargs = _fp8_kwargs(fp8, fp8_recipe or Fp8Recipe())
    return TransformerConfig(
        num_layers=cfg["num_hidden_layers"],
        hidden_size=cfg["hidden_size"],
        ffn_hidden_size=cfg["intermediate_size"],
        num_attention_heads=heads,
        num_query_groups=groups,
        kv_channels=cfg.get("head_dim") or cfg["hidden_size"] // heads,  # head_dim is optional in HF
        normalization="RMSNorm",
        layernorm_epsilon=cfg["rms_norm_eps"],
        gated_linear_unit=True,
        activation_func=F.silu,
        add_bias_linear=False,
        add_qkv_bias=qkv_bias,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        init_method_std=cfg["initializer_range"],
        tensor_model_parallel_size=tp,
        pipeline_model_parallel_size=pp,
        pipeline_dtype=params_dtype,
        params_dtype=params_dtype,
        bf16=params_dtype == torch.bfloat16,
        fp16=params_dtype == torch.float16,
        use_cpu_initialization=not torch.cuda.is_available(),
        attention_backend=AttnBackend.auto if use_te else AttnBackend.local,
        attention_softmax_in_fp32=True,
        bias_activation_fusion=False,
        masked_softmax_fusion=False,
        bias_dropout_fusion=False,
        apply_rope_fusion=False,
        persist_layer_norm=False,
        gradient_accumulation_fusion=False,
        **recompute,
        **fp8_kwargs,
    )


def layer_spec(config, *, use_te: bool):
    """Transformer Engine layer spec on GPU, the local Megatron-Core spec otherwise (one switch)."""
    from megatron.core.models.gpt.gpt_layer_specs import (
        get_gpt_layer_local_spec,
        get_gpt_layer_with_transformer_engine_spec,
    )

    if use_te:
        return get_gpt_layer_with_transformer_engine_spec(qk_layernorm=False)
    return get_gpt_layer_local_spec(normalization="RMSNorm")


def _set_llama3_inv_freq(model, rope: dict[str, Any], kv_channels: int) -> None:
    """Recompute RoPE inverse frequencies with all of HF's llama3 parameters (see module docstring)."""
    rot = model.rotary_pos_emb
    device = rot.inv_freq.device
    base = 1.0 / (rope["rope_theta"] ** (torch.arange(0, kv_channels, 2, dtype=torch.float32) / kv_channels))
    rot.inv_freq = rot._apply_scaling(
        base,
        factor=rope["factor"],
        low_freq_factor=rope["low_freq_factor"],
        high_freq_factor=rope["high_freq_factor"],
        original_max_position_embeddings=rope["original_max_position_embeddings"],
    ).to(device)


def build_gpt_model(
    hf_config: Any,
    *,
    tp: int,
    pp: int,
    params_dtype: torch.dtype,
    fp8: str | None = None,
    fp8_recipe: Fp8Recipe | None = None,
    use_te: bool | None = None,
    recompute_granularity: str | None = None,
) -> list:
    """The GPTModel chunk(s) of this rank (one chunk: no virtual pipeline), on the current device.

    Needs `megatron_ext.parallel.initialize_model_parallel(tp, pp, ...)` first. Each chunk gets
    `hf_vocab_size` (the unpadded vocabulary) so log-probs can ignore the padding columns.
    """
    from megatron.core import parallel_state as ps
    from megatron.core.models.gpt import GPTModel

    enable_cpu_fallback()
    if ps.get_tensor_model_parallel_world_size() != tp or ps.get_pipeline_model_parallel_world_size() != pp:
        raise ValueError(
            f"model asked for tp={tp}, pp={pp} but the parallel state has "
            f"tp={ps.get_tensor_model_parallel_world_size()}, pp={ps.get_pipeline_model_parallel_world_size()}"
        )
    cfg = _hf_dict(hf_config)
    use_te = transformer_engine_available() if use_te is None else use_te
    config = transformer_config_from_hf(
        cfg,
        tp=tp,
        pp=pp,
        params_dtype=params_dtype,
        fp8=fp8,
        fp8_recipe=fp8_recipe,
        use_te=use_te,
        recompute_granularity=recompute_granularity,
    )
    rope = rope_parameters(cfg)
    model = GPTModel(
        config=config,
        transformer_layer_spec=layer_spec(config, use_te=use_te),
        vocab_size=padded_vocab_size(cfg["vocab_size"], tp),
        max_sequence_length=cfg["max_position_embeddings"],
        pre_process=ps.is_pipeline_first_stage(),
        post_process=ps.is_pipeline_last_stage(),
        parallel_output=True,
        share_embeddings_and_output_weights=bool(cfg["tie_word_embeddings"]),
        position_embedding_type="rope",
        rotary_percent=1.0,
        rotary_base=int(rope["rope_theta"]),
        rope_scaling=rope["rope_type"] == "llama3",
    )
    if rope["rope_type"] == "llama3":
        _set_llama3_inv_freq(model, rope, config.kv_channels)
    if torch.cuda.is_available():
        model.cuda(torch.cuda.current_device())
    model.hf_vocab_size = cfg["vocab_size"]
    return [model]
