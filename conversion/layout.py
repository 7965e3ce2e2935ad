"""Pure tensor transforms between HF and Megatron-Core parameter layouts (no I/O, no Megatron import).

Shapes (h = hidden size, d = head_dim, n_q / n_kv = attention / key-value heads, f = MLP size):
- HF q/k/v_proj.weight: [n_q*d, h], [n_kv*d, h], [n_kv*d, h] (biases: the same without h).
- Megatron linear_qkv.weight: [(n_q + 2*n_kv)*d, h], grouped per KV head g = 0..n_kv-1 as
  [q heads g*r .. g*r+r-1 (r = n_q/n_kv), k head g, v head g]. Because the groups are contiguous, the
  TP shard of rank t is the contiguous row block t of this global tensor (TP must divide n_kv).
- Megatron linear_fc1.weight: [2f, h] = [gate_proj; up_proj] globally. Under TP, rank t holds
  [gate rows of block t; up rows of block t] (see `fc1_tp_shard` / `fc1_from_tp_shards`).
- Embedding / output layer: vocab rows padded with zeros up to Megatron's padded vocab size.
"""

from __future__ import annotations

import torch


def fuse_qkv(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, num_heads: int, num_kv_heads: int
) -> torch.Tensor:
    """Interleave HF q/k/v ([n*d, ...]) into Megatron's per-KV-group layout [(n_q+2*n_kv)*d, ...]."""
    _check_heads(num_heads, num_kv_heads)
    d = q.shape[0] // num_heads
    if q.shape[0] != num_heads * d or k.shape[0] != num_kv_heads * d or v.shape[0] != num_kv_heads * d:
        raise ValueError(
            f"q/k/v rows {q.shape[0]}/{k.shape[0]}/{v.shape[0]} do not match {num_heads} heads and "
            f"{num_kv_heads} KV heads of a common head_dim"
        )
    r = num_heads // num_kv_heads
    rest = q.shape[1:]
    qg = q.reshape(num_kv_heads, r * d, *rest)
    kg = k.reshape(num_kv_heads, d, *rest)
    vg = v.reshape(num_kv_heads, d, *rest)
    return torch.cat([qg, kg, vg], dim=1).reshape((num_heads + 2 * num_kv_heads) * d, *rest)


def split_qkv(
    qkv: torch.Tensor, num_heads: int, num_kv_heads: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Inverse of `fuse_qkv`: [(n_q+2*n_kv)*d, ...] -> (q [n_q*d, ...], k [n_kv*d, ...], v [n_kv*d, ...])."""
    _check_heads(num_heads, num_kv_heads)
    total = num_heads + 2 * num_kv_heads
    if qkv.shape[0] % total:
        raise ValueError(f"fused QKV has {qkv.shape[0]} rows, not a multiple of n_q + 2*n_kv = {total}")
    d = qkv.shape[0] // total
    r = num_heads // num_kv_heads
    rest = qkv.shape[1:]
    grouped = qkv.reshape(num_kv_heads, (r + 2) * d, *rest)
    q, k, v = torch.split(grouped, [r * d, d, d], dim=1)
    return (
        q.reshape(num_heads * d, *rest).contiguous(),
        k.reshape(num_kv_heads * d, *rest).contiguous(),
        v.reshape(num_kv_heads * d, *rest).contiguous(),
    )


def fuse_gate_up(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """Megatron's global linear_fc1 [2f, h] = [gate_proj; up_proj]."""
    if gate.shape != up.shape:
        raise ValueError(f"gate_proj {tuple(gate.shape)} and up_proj {tuple(up.shape)} differ in shape")
    return torch.cat([gate, up], dim=0)


def split_gate_up(fc1: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Inverse of `fuse_gate_up`."""
    if fc1.shape[0] % 2:
        raise ValueError(f"linear_fc1 has an odd number of rows ({fc1.shape[0]})")
    gate, up = torch.chunk(fc1, 2, dim=0)
    return gate.contiguous(), up.contiguous()


def fc1_from_tp_shards(shards: list[torch.Tensor]) -> torch.Tensor:
    """Global [gate; up] from TP-local linear_fc1 shards, each [gate_t; up_t] ([2f/tp, h])."""
    halves = [torch.chunk(s, 2, dim=0) for s in shards]
    return torch.cat([g for g, _ in halves] + [u for _, u in halves], dim=0)


def fc1_tp_shard(fc1: torch.Tensor, tp: int, rank: int) -> torch.Tensor:
    """TP-local linear_fc1 of `rank`: [gate block rank; up block rank]."""
    gate, up = torch.chunk(fc1, 2, dim=0)
    return torch.cat([torch.chunk(gate, tp, dim=0)[rank], torch.chunk(up, tp, dim=0)[rank]], dim=0)


def pad_vocab(weight: torch.Tensor, padded_vocab: int) -> torch.Tensor:
    """Append zero rows so that weight [V, h] becomes [padded_vocab, h]."""
    vocab = weight.shape[0]
    if padded_vocab < vocab:
        raise ValueError(f"padded vocab {padded_vocab} is smaller than the vocab {vocab}")
    if padded_vocab == vocab:
        return weight
    pad = weight.new_zeros((padded_vocab - vocab, *weight.shape[1:]))
    return torch.cat([weight, pad], dim=0)


def unpad_vocab(weight: torch.Tensor, vocab: int) -> torch.Tensor:
    """The first `vocab` rows of a padded [V_pad, h] embedding / output weight."""
    if weight.shape[0] < vocab:
        raise ValueError(f"weight has {weight.shape[0]} vocab rows, fewer than the config's {vocab}")
    return weight[:vocab].contiguous()


def _check_heads(num_heads: int, num_kv_heads: int) -> None:
    if num_kv_heads < 1 or num_heads % num_kv_heads:
        raise ValueError(
            f"num_attention_heads {num_heads} is not a multiple of num_key_value_heads {num_kv_heads}"
        )
