"""Carry HF Qwen2/Llama weights into Megatron GPTModel shards BY HAND (test helper, independent of conversion/).

Megatron layouts (per TP rank r of t; local or Transformer Engine spec):
- linear_qkv rows are grouped per KV head: for group g, [q heads of g ..., k_g, v_g], each head_dim rows;
  TP splits the groups, so rank r holds groups [r·G/t, (r+1)·G/t).
- linear_fc1 rows are [gate_r; up_r] where gate_r / up_r are rank r's row slices of gate / up.
- word embeddings and output layer: rows of the vocabulary padded with zeros to V_p, split by rank.
- linear_proj and linear_fc2 are split along columns (row-parallel).
- layer norms: `input_layernorm` / `pre_mlp_layernorm` (local spec) or the fused
  `linear_qkv.layer_norm_weight` / `linear_fc1.layer_norm_weight` (TE spec).
"""

from __future__ import annotations

import re

import torch

_LAYER = re.compile(r"^decoder\.layers\.(\d+)\.(.+)$")


def random_hf_model(arch: str, *, tied: bool, vocab_size: int = 131, seed: int = 1234):
    """A random tiny HF causal LM (eval mode) and its config dict; identical in every process."""
    from transformers import AutoModelForCausalLM

    from pipeline.data.tiny_model import tiny_hf_config

    cfg = tiny_hf_config(arch, tie_word_embeddings=tied, vocab_size=vocab_size)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(1.0 + 0.1 * torch.randn_like(p) if "norm" in name else 0.05 * torch.randn_like(p))
    return model.eval(), cfg.to_dict()


def _qkv_rows(hf: dict, prefix: str, suffix: str, cfg: dict) -> torch.Tensor:
    """Full fused QKV (weight or bias) in Megatron's per-KV-group order."""
    heads, groups = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    hd = cfg.get("head_dim") or cfg["hidden_size"] // heads
    q = hf[f"{prefix}.self_attn.q_proj.{suffix}"]
    k = hf[f"{prefix}.self_attn.k_proj.{suffix}"]
    v = hf[f"{prefix}.self_attn.v_proj.{suffix}"]
    tail = q.shape[1:]
    q = q.reshape(groups, heads // groups * hd, *tail)
    k = k.reshape(groups, hd, *tail)
    v = v.reshape(groups, hd, *tail)
    return torch.cat([q, k, v], dim=1).reshape(-1, *tail)


def _chunk(t: torch.Tensor, dim: int, rank: int, size: int) -> torch.Tensor:
    return torch.chunk(t, size, dim=dim)[rank]


def _vocab_rows(w: torch.Tensor, padded: int, rank: int, size: int) -> torch.Tensor:
    full = torch.zeros(padded, w.shape[1], dtype=w.dtype)
    full[: w.shape[0]] = w
    return _chunk(full, 0, rank, size)


def megatron_shard(
    name: str, hf: dict, cfg: dict, *, layer_index: int | None, padded_vocab: int, tp_rank: int, tp_size: int
):
    """The tensor of Megatron parameter `name` (local layer names resolved to `layer_index`) for this TP rank."""
    r, t = tp_rank, tp_size
    if name == "embedding.word_embeddings.weight":
        return _vocab_rows(hf["model.embed_tokens.weight"], padded_vocab, r, t)
    if name == "output_layer.weight":
        key = "model.embed_tokens.weight" if cfg["tie_word_embeddings"] else "lm_head.weight"
        return _vocab_rows(hf[key], padded_vocab, r, t)
    if name == "decoder.final_layernorm.weight":
        return hf["model.norm.weight"]
    m = _LAYER.match(name)
    if m is None:
        raise KeyError(f"no HF source for Megatron parameter {name!r}")
    p = f"model.layers.{layer_index}"
    rest = m.group(2)
    if rest in ("input_layernorm.weight", "self_attention.linear_qkv.layer_norm_weight"):
        return hf[f"{p}.input_layernorm.weight"]
    if rest in ("pre_mlp_layernorm.weight", "mlp.linear_fc1.layer_norm_weight"):
        return hf[f"{p}.post_attention_layernorm.weight"]
    if rest == "self_attention.linear_qkv.weight":
        return _chunk(_qkv_rows(hf, p, "weight", cfg), 0, r, t)
    if rest == "self_attention.linear_qkv.bias":
        return _chunk(_qkv_rows(hf, p, "bias", cfg), 0, r, t)
    if rest == "self_attention.linear_proj.weight":
        return _chunk(hf[f"{p}.self_attn.o_proj.weight"], 1, r, t)
    if rest == "mlp.linear_fc1.weight":
        gate = _chunk(hf[f"{p}.mlp.gate_proj.weight"], 0, r, t)
        up = _chunk(hf[f"{p}.mlp.up_proj.weight"], 0, r, t)
        return torch.cat([gate, up], dim=0)
    if rest == "mlp.linear_fc2.weight":
        return _chunk(hf[f"{p}.mlp.down_proj.weight"], 1, r, t)
    raise KeyError(f"no HF source for Megatron parameter {name!r}")


def expected_shards(model, hf: dict, cfg: dict, *, tp_rank: int, tp_size: int) -> dict[str, torch.Tensor]:
    """{megatron param name: expected tensor} for every parameter of one GPTModel chunk."""
    from megatron_ext.model import padded_vocab_size

    padded = padded_vocab_size(cfg["vocab_size"], tp_size)
    out = {}
    for name, _ in model.named_parameters():
        m = _LAYER.match(name)
        layer_index = model.decoder.layers[int(m.group(1))].layer_number - 1 if m else None
        out[name] = megatron_shard(
            name, hf, cfg, layer_index=layer_index, padded_vocab=padded, tp_rank=tp_rank, tp_size=tp_size
        )
    return out


@torch.no_grad()
def load_hf_into_megatron(model_chunks, hf: dict, cfg: dict, *, tp_rank: int, tp_size: int) -> None:
    """Copy HF weights (a state dict of full tensors) into this rank's Megatron chunks."""
    for model in model_chunks:
        expected = expected_shards(model, hf, cfg, tp_rank=tp_rank, tp_size=tp_size)
        for name, param in model.named_parameters():
            src = expected[name]
            if src.shape != param.shape:
                raise ValueError(
                    f"{name}: HF-derived shape {tuple(src.shape)} != Megatron {tuple(param.shape)}"
                )
            param.copy_(src.to(param.dtype))


@torch.no_grad()
def megatron_tp1_to_hf(model, cfg: dict) -> dict[str, torch.Tensor]:
    """Inverse mapping for a TP=1, PP=1 model: HF-named full tensors (used to compare updated weights)."""
    heads, groups = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    hd = cfg.get("head_dim") or cfg["hidden_size"] // heads
    qpg = heads // groups
    sd = {
        k: v.detach().float().clone() for k, v in model.state_dict().items() if not k.endswith("_extra_state")
    }
    v = cfg["vocab_size"]
    hf = {
        "model.embed_tokens.weight": sd["embedding.word_embeddings.weight"][:v],
        "model.norm.weight": sd["decoder.final_layernorm.weight"],
    }
    if not cfg["tie_word_embeddings"]:
        hf["lm_head.weight"] = sd["output_layer.weight"][:v]
    for i in range(cfg["num_hidden_layers"]):
        src, dst = f"decoder.layers.{i}", f"model.layers.{i}"
        local_spec = f"{src}.input_layernorm.weight" in sd  # else the TE spec's fused layer norms
        ln1 = "input_layernorm.weight" if local_spec else "self_attention.linear_qkv.layer_norm_weight"
        ln2 = "pre_mlp_layernorm.weight" if local_spec else "mlp.linear_fc1.layer_norm_weight"
        hf[f"{dst}.input_layernorm.weight"] = sd[f"{src}.{ln1}"]
        hf[f"{dst}.post_attention_layernorm.weight"] = sd[f"{src}.{ln2}"]
        for suffix in ("weight", "bias"):
            key = f"{src}.self_attention.linear_qkv.{suffix}"
            if key not in sd:
                continue
            w = sd[key]
            w = w.reshape(groups, (qpg + 2) * hd, *w.shape[1:])
            q, k, vv = torch.split(w, [qpg * hd, hd, hd], dim=1)
            hf[f"{dst}.self_attn.q_proj.{suffix}"] = q.reshape(-1, *w.shape[2:])
            hf[f"{dst}.self_attn.k_proj.{suffix}"] = k.reshape(-1, *w.shape[2:])
            hf[f"{dst}.self_attn.v_proj.{suffix}"] = vv.reshape(-1, *w.shape[2:])
        hf[f"{dst}.self_attn.o_proj.weight"] = sd[f"{src}.self_attention.linear_proj.weight"]
        gate, up = torch.chunk(sd[f"{src}.mlp.linear_fc1.weight"], 2, dim=0)
        hf[f"{dst}.mlp.gate_proj.weight"] = gate
        hf[f"{dst}.mlp.up_proj.weight"] = up
        hf[f"{dst}.mlp.down_proj.weight"] = sd[f"{src}.mlp.linear_fc2.weight"]
    return hf
