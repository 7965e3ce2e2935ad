"""Rollout-engine vs trainer log-prob mismatch: a diagnostic and truncated importance weights (TIS).

The rollout engine (vLLM) and the trainer (Megatron) compute log pi_old(o_t) with different kernels,
so the samples come from pi_rollout, not exactly from pi_old as recomputed by the trainer.
"""

from __future__ import annotations

import math

import torch

from megatron_ext.losses.registry import (
    check_2d,
    check_finite,
    check_float,
    check_mask,
    check_shape,
)


def _check_pair(rollout_logp: torch.Tensor, trainer_logp: torch.Tensor, mask: torch.Tensor) -> None:
    check_2d("rollout_logp", rollout_logp)
    check_float("rollout_logp", rollout_logp)
    check_shape("trainer_logp", trainer_logp, rollout_logp.shape, "[B, T] like rollout_logp")
    check_float("trainer_logp", trainer_logp)
    check_shape("mask", mask, rollout_logp.shape, "[B, T] like rollout_logp")
    check_mask("mask", mask)
    check_finite("rollout_logp", rollout_logp)
    check_finite("trainer_logp", trainer_logp)


@torch.no_grad()
def logprob_mismatch(
    rollout_logp: torch.Tensor, trainer_logp: torch.Tensor, mask: torch.Tensor
) -> dict[str, torch.Tensor]:
    """Mismatch between the two log-prob computations over valid tokens.

    With delta_t = trainer_logp_t - rollout_logp_t:
      * ``mean_abs``: mean_t |delta_t| (0 when there is no valid token);
      * ``max_ratio``: max_t exp(|delta_t|), the largest per-token probability ratio in either
        direction (1 when there is no valid token).

    Args: [B, T] each; mask 0/1. Returns scalar float tensors (no gradient).
    """
    _check_pair(rollout_logp, trainer_logp, mask)
    valid = mask.bool()
    abs_delta = torch.where(valid, (trainer_logp - rollout_logp).abs(), 0.0)
    count = valid.sum().clamp(min=1)
    return {
        "mean_abs": abs_delta.sum() / count,
        "max_ratio": torch.exp(abs_delta.max()) if abs_delta.numel() else abs_delta.new_ones(()),
    }


@torch.no_grad()
def truncated_is_weights(
    rollout_logp: torch.Tensor, trainer_logp: torch.Tensor, mask: torch.Tensor, cap: float
) -> torch.Tensor:
    """Truncated importance weights min(pi_old_trainer / pi_rollout, cap) per token.

    ``trainer_logp`` is log pi_old as recomputed by the trainer, ``rollout_logp`` the sampler's
    log-prob of the same token. The weight multiplies the per-token loss (it corrects for sampling
    from pi_rollout) and is detached.

    Returns:
        [B, T] weights, 0 at masked positions, dtype of ``trainer_logp``.
    """
    _check_pair(rollout_logp, trainer_logp, mask)
    if isinstance(cap, bool) or not isinstance(cap, (int, float)) or not (math.isfinite(cap) and cap > 0):
        raise ValueError(f"cap must be a finite number > 0, got {cap!r}")
    valid = mask.bool()
    ratio = torch.exp(torch.where(valid, trainer_logp - rollout_logp, 0.0)).clamp(max=cap)
    return torch.where(valid, ratio, 0.0)
