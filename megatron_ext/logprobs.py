"""Token log-probs and entropy from vocab-parallel logits, in fp32, without gathering the vocabulary.

Each TP rank holds logits for a contiguous slice of the (padded) vocabulary, columns
[r·V_s, (r+1)·V_s). With x = logits / temperature (padding columns >= vocab_size excluded):

    m      = max_v x_v                       (all-reduce MAX over TP; no gradient needed)
    S      = Σ_v exp(x_v − m)                (all-reduce SUM)
    log p(y) = x_y − m − log S               (x_y: all-reduce SUM of the one rank that owns y)
    H      = m + log S − Σ_v p_v x_v         (entropy of the tempered distribution; all-reduce SUM)

The sums use an all-reduce whose backward is the identity: every TP rank computes the same
(replicated) loss from the reduced values, so each rank's gradient w.r.t. its own partial sum is the
gradient w.r.t. the total. Only [B, T]-sized tensors cross ranks.
"""

from __future__ import annotations

import torch
import torch.distributed as dist


class _AllReduceSum(torch.autograd.Function):
    """All-reduce SUM forward over `group`; identity backward (the consumer is replicated on the group)."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor, group) -> torch.Tensor:
        out = tensor.clone()
        dist.all_reduce(out, op=dist.ReduceOp.SUM, group=group)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad, None


def _tp_size_rank(tp_group) -> tuple[int, int]:
    if tp_group is None or not dist.is_initialized():
        return 1, 0
    return dist.get_world_size(tp_group), dist.get_rank(tp_group)


def _all_reduce_sum(tensor: torch.Tensor, tp_group, tp_size: int) -> torch.Tensor:
    return tensor if tp_size == 1 else _AllReduceSum.apply(tensor, tp_group)


def token_logprobs(
    logits_tp_shard: torch.Tensor,
    target_ids: torch.Tensor,
    *,
    temperature: float = 1.0,
    tp_group=None,
    with_entropy: bool = False,
    vocab_size: int | None = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """log π(target) (and entropy) per position from this rank's vocab shard of the logits.

    Args:
        logits_tp_shard: [B, T, V/tp] logits of this TP rank's vocabulary slice (any float dtype).
        target_ids: [B, T] int token ids in the full vocabulary.
        temperature: the sampling temperature; logits are divided by it (as the rollout did).
        tp_group: the tensor-parallel group; None means the logits hold the whole vocabulary.
        with_entropy: also return the entropy [B, T] of the tempered distribution.
        vocab_size: true (unpadded) vocabulary size; columns at or past it are excluded. None: all.

    Returns:
        logp [B, T] fp32, or (logp, entropy) when with_entropy.
    """
    if logits_tp_shard.dim() != 3 or target_ids.shape != logits_tp_shard.shape[:2]:
        raise ValueError(
            f"token_logprobs expects logits [B, T, V/tp] and target_ids [B, T]; got "
            f"{tuple(logits_tp_shard.shape)} and {tuple(target_ids.shape)}"
        )
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    tp_size, tp_rank = _tp_size_rank(tp_group)
    shard = logits_tp_shard.shape[-1]
    start = tp_rank * shard
    x = logits_tp_shard.float() / temperature
    valid_cols = None
    if vocab_size is not None and start + shard > vocab_size:
        valid_cols = torch.arange(start, start + shard, device=x.device) < vocab_size
        x = x.masked_fill(~valid_cols, float("-inf"))

    with torch.no_grad():
        m = x.max(dim=-1).values
        if tp_size > 1:
            dist.all_reduce(m, op=dist.ReduceOp.MAX, group=tp_group)
    shifted = x - m.unsqueeze(-1)
    exp = shifted.exp()
    sum_exp = _all_reduce_sum(exp.sum(dim=-1), tp_group, tp_size)
    log_z = sum_exp.log()

    local = target_ids.long() - start
    owned = (local >= 0) & (local < shard)
    picked = shifted.gather(-1, local.clamp(0, shard - 1).unsqueeze(-1)).squeeze(-1)
    target_shifted = _all_reduce_sum(torch.where(owned, picked, torch.zeros_like(picked)), tp_group, tp_size)
    logp = target_shifted - log_z
    if not with_entropy:
        return logp
    # H = log S − Σ_v p_v (x_v − m); padding columns have p_v = 0 and are zeroed to avoid 0·(−inf).
    weighted = exp * shifted
    if valid_cols is not None:
        weighted = torch.where(valid_cols, weighted, torch.zeros_like(weighted))
    expected_shifted = _all_reduce_sum(weighted.sum(dim=-1), tp_group, tp_size) / sum_exp
    entropy = log_z - expected_shifted
    return logp, entropy
