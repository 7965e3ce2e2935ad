"""The decoder-only mapping shared by Qwen2 and Llama: which HF tensors make which Megatron parameter.

Every Megatron parameter is described by a `ParamSpec` in the GLOBAL (TP/PP-agnostic) layout:
its dist-checkpointing key (Transformer-Engine names, layers stacked on a prepended axis, exactly the
keys of `GPTModel.sharded_state_dict()`), its names inside a live model (local spec first, TE spec
second), its shape per layer, how TP shards it, and the HF tensors it is made of. The files path
(HF <-> dist checkpoint) and the in-memory export both go through `to_megatron` / `to_hf` below, so
there is one mapping.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from conversion import layout

# How a parameter is split across TP ranks.
TP_REPLICATED, TP_ROWS, TP_COLS, TP_GATE_UP = "replicated", "rows", "cols", "gate_up"
# How HF tensors combine into the Megatron one.
KIND_COPY, KIND_QKV, KIND_GATE_UP, KIND_VOCAB = "copy", "qkv", "gate_up", "vocab"
# Linear modules of a layer whose (empty on the local spec) `_extra_state` Megatron checkpoints.
LAYER_LINEARS = (
    "self_attention.linear_qkv",
    "self_attention.linear_proj",
    "mlp.linear_fc1",
    "mlp.linear_fc2",
)


@dataclass(frozen=True)
class ModelDims:
    """The sizes the mapping needs, read from an HF config.json."""

    vocab_size: int
    hidden_size: int
    ffn_hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    tied: bool
    qkv_bias: bool


@dataclass(frozen=True)
class ParamSpec:
    """One Megatron parameter; `layer` is the global layer index (None outside the decoder layers).

    `shape` is the global shape without the layer axis; on disk layer params have shape
    [num_layers, *shape] and the key `key`.
    """

    key: str
    module_names: tuple[str, ...]
    shape: tuple[int, ...]
    layer: int | None
    tp: str
    kind: str
    hf_names: tuple[str, ...]


@dataclass(frozen=True)
class ArchMapping:
    """An HF architecture: config validation + the ordered list of parameters.

    `check_config(cfg)` raises ValueError for settings the mapping cannot represent;
    `qkv_bias(cfg)` says whether q/k/v projections have biases.
    """

    architecture: str
    check_config: Callable[[dict[str, Any]], None]
    qkv_bias: Callable[[dict[str, Any]], bool]

    def dims(self, cfg: dict[str, Any]) -> ModelDims:
        self.check_config(cfg)
        heads = cfg["num_attention_heads"]
        # Qwen2 configs omit head_dim (it is hidden_size / heads there); Llama 3 configs carry it.
        head_dim = cfg["head_dim"] if cfg.get("head_dim") is not None else cfg["hidden_size"] // heads
        return ModelDims(
            vocab_size=cfg["vocab_size"],
            hidden_size=cfg["hidden_size"],
            ffn_hidden_size=cfg["intermediate_size"],
            num_layers=cfg["num_hidden_layers"],
            num_heads=heads,
            num_kv_heads=cfg["num_key_value_heads"],
            head_dim=head_dim,
            tied=bool(cfg["tie_word_embeddings"]),
            qkv_bias=self.qkv_bias(cfg),
        )

    def param_specs(self, dims: ModelDims, padded_vocab: int) -> list[ParamSpec]:
        """All Megatron parameters in checkpoint order: embedding, layers 0..L-1, final norm, output."""
        h = dims.hidden_size
        specs = [
            ParamSpec(
                "embedding.word_embeddings.weight",
                ("embedding.word_embeddings.weight",),
                (padded_vocab, h),
                None,
                TP_ROWS,
                KIND_VOCAB,
                ("model.embed_tokens.weight",),
            )
        ]
        for i in range(dims.num_layers):
            specs += _layer_specs(dims, i)
        specs.append(
            ParamSpec(
                "decoder.final_layernorm.weight",
                ("decoder.final_layernorm.weight",),
                (h,),
                None,
                TP_REPLICATED,
                KIND_COPY,
                ("model.norm.weight",),
            )
        )
        if not dims.tied:
            specs.append(
                ParamSpec(
                    "output_layer.weight",
                    ("output_layer.weight",),
                    (padded_vocab, h),
                    None,
                    TP_ROWS,
                    KIND_VOCAB,
                    ("lm_head.weight",),
                )
            )
        return specs


def _layer_specs(dims: ModelDims, i: int) -> list[ParamSpec]:
    h, d, f = dims.hidden_size, dims.head_dim, dims.ffn_hidden_size
    qkv_rows = (dims.num_heads + 2 * dims.num_kv_heads) * d
    hf = f"model.layers.{i}."
    attn = hf + "self_attn."
    specs = [
        ParamSpec(
            "decoder.layers.self_attention.linear_qkv.layer_norm_weight",
            ("input_layernorm.weight", "self_attention.linear_qkv.layer_norm_weight"),
            (h,),
            i,
            TP_REPLICATED,
            KIND_COPY,
            (hf + "input_layernorm.weight",),
        ),
        ParamSpec(
            "decoder.layers.self_attention.linear_qkv.weight",
            ("self_attention.linear_qkv.weight",),
            (qkv_rows, h),
            i,
            TP_ROWS,
            KIND_QKV,
            (attn + "q_proj.weight", attn + "k_proj.weight", attn + "v_proj.weight"),
        ),
    ]
    if dims.qkv_bias:
        specs.append(
            ParamSpec(
                "decoder.layers.self_attention.linear_qkv.bias",
                ("self_attention.linear_qkv.bias",),
                (qkv_rows,),
                i,
                TP_ROWS,
                KIND_QKV,
                (attn + "q_proj.bias", attn + "k_proj.bias", attn + "v_proj.bias"),
            )
        )
    specs += [
        ParamSpec(
            "decoder.layers.self_attention.linear_proj.weight",
            ("self_attention.linear_proj.weight",),
            (h, dims.num_heads * d),
            i,
            TP_COLS,
            KIND_COPY,
            (attn + "o_proj.weight",),
        ),
        ParamSpec(
            "decoder.layers.mlp.linear_fc1.layer_norm_weight",
            ("pre_mlp_layernorm.weight", "mlp.linear_fc1.layer_norm_weight"),
            (h,),
            i,
            TP_REPLICATED,
            KIND_COPY,
            (hf + "post_attention_layernorm.weight",),
        ),
        ParamSpec(
            "decoder.layers.mlp.linear_fc1.weight",
            ("mlp.linear_fc1.weight",),
            (2 * f, h),
            i,
            TP_GATE_UP,
            KIND_GATE_UP,
            (hf + "mlp.gate_proj.weight", hf + "mlp.up_proj.weight"),
        ),
        ParamSpec(
            "decoder.layers.mlp.linear_fc2.weight",
            ("mlp.linear_fc2.weight",),
            (h, f),
            i,
            TP_COLS,
            KIND_COPY,
            (hf + "mlp.down_proj.weight",),
        ),
    ]
    return specs


def to_megatron(spec: ParamSpec, dims: ModelDims, hf_tensors: list[torch.Tensor]) -> torch.Tensor:
    """The global Megatron tensor of `spec` from its HF tensors (in `spec.hf_names` order)."""
    if spec.kind == KIND_COPY:
        out = hf_tensors[0]
    elif spec.kind == KIND_QKV:
        out = layout.fuse_qkv(*hf_tensors, dims.num_heads, dims.num_kv_heads)
    elif spec.kind == KIND_GATE_UP:
        out = layout.fuse_gate_up(*hf_tensors)
    elif spec.kind == KIND_VOCAB:
        if hf_tensors[0].shape[0] != dims.vocab_size:
            raise ValueError(
                f"{spec.hf_names[0]} has {hf_tensors[0].shape[0]} rows but config vocab_size is {dims.vocab_size}"
            )
        out = layout.pad_vocab(hf_tensors[0], spec.shape[0])
    else:
        raise ValueError(f"unknown parameter kind {spec.kind!r}")
    if tuple(out.shape) != spec.shape:
        raise ValueError(
            f"{spec.hf_names} give shape {tuple(out.shape)} for {spec.key}, expected {spec.shape}"
        )
    return out


def to_hf(spec: ParamSpec, dims: ModelDims, tensor: torch.Tensor) -> list[tuple[str, torch.Tensor]]:
    """The HF (name, tensor) pairs of the global Megatron tensor of `spec`."""
    if tuple(tensor.shape) != spec.shape:
        raise ValueError(
            f"{spec.key} (layer {spec.layer}) has shape {tuple(tensor.shape)}, expected {spec.shape}"
        )
    if spec.kind == KIND_COPY:
        parts: tuple[torch.Tensor, ...] = (tensor,)
    elif spec.kind == KIND_QKV:
        parts = layout.split_qkv(tensor, dims.num_heads, dims.num_kv_heads)
    elif spec.kind == KIND_GATE_UP:
        parts = layout.split_gate_up(tensor)
    elif spec.kind == KIND_VOCAB:
        parts = (layout.unpad_vocab(tensor, dims.vocab_size),)
    else:
        raise ValueError(f"unknown parameter kind {spec.kind!r}")
    return list(zip(spec.hf_names, parts))


def hf_tensor_shapes(spec: ParamSpec, dims: ModelDims) -> list[tuple[str, tuple[int, ...]]]:
    """The HF names and shapes `to_hf` produces for `spec` (planning output shards before reading)."""
    meta = torch.empty(spec.shape, device="meta")
    return [(name, tuple(t.shape)) for name, t in to_hf(spec, dims, meta)]
