"""Reduce a per-token loss [B, T] to the scalar the optimizer sees."""

from __future__ import annotations

import torch

from megatron_ext.losses.registry import check_2d, check_mask, check_shape, get_aggregation


def _token_mean(loss: torch.Tensor, mask: torch.Tensor, denom: torch.Tensor | float) -> torch.Tensor:
    return (loss * mask).sum() / denom


def _seq_mean_token_mean(loss: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    per_seq = (loss * mask).sum(-1) / mask.sum(-1).clamp(min=1)
    return per_seq.mean()


def _seq_mean_token_sum(loss: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (loss * mask).sum(-1).mean()


def aggregate(
    loss: torch.Tensor,
    mask: torch.Tensor,
    mode: str,
    global_valid_tokens: int | float | torch.Tensor | None = None,
) -> torch.Tensor:
    """Aggregate a per-token loss over a batch of B sequences.

    * ``token-mean``: sum_{b,t} m_bt l_bt / N, N = ``global_valid_tokens`` if given (the valid-token
      count of the whole global batch, so summing the results of all microbatches and DP ranks gives
      the global token mean) else sum_{b,t} m_bt (clamped to >= 1).
    * ``seq-mean-token-mean``: (1/B) sum_b [sum_t m_bt l_bt / max(1, sum_t m_bt)].
    * ``seq-mean-token-sum``: (1/B) sum_b sum_t m_bt l_bt.

    ``global_valid_tokens`` is only meaningful for ``token-mean``; passing it with another mode raises.

    Args:
        loss: [B, T] floating. mask: [B, T] of 0/1. mode: a name in ``AGGREGATIONS``.

    Returns:
        A scalar tensor (differentiable in ``loss``).
    """
    get_aggregation(mode)
    check_2d("loss", loss)
    check_shape("mask", mask, loss.shape, "[B, T] like loss")
    check_mask("mask", mask)
    mask_f = mask.to(loss.dtype)
    if mode == "token-mean":
        if global_valid_tokens is None:
            return _token_mean(loss, mask_f, mask_f.sum().clamp(min=1))
        count = global_valid_tokens
        if isinstance(count, torch.Tensor):
            if count.numel() != 1:
                raise ValueError(f"global_valid_tokens must be a scalar, got shape {tuple(count.shape)}")
            bad = not bool(count > 0)
        else:
            bad = isinstance(count, bool) or not count > 0
        if bad:
            raise ValueError(f"global_valid_tokens must be > 0, got {count}")
        return _token_mean(loss, mask_f, count)
    if global_valid_tokens is not None:
        raise ValueError(f"global_valid_tokens applies only to mode 'token-mean', not {mode!r}")
    if mode == "seq-mean-token-mean":
        return _seq_mean_token_mean(loss, mask_f)
    return _seq_mean_token_sum(loss, mask_f)
