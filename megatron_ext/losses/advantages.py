"""Group-relative (critic-free) advantages for GRPO-style training."""

from __future__ import annotations

import torch

from megatron_ext.losses.registry import check_finite, check_tensor


def group_advantages(
    rewards: torch.Tensor,
    group_size: int,
    *,
    normalize_std: bool = True,
    leave_one_out: bool = False,
    eps: float = 1e-6,
) -> torch.Tensor:
    """Advantage of each sample relative to the other samples of its prompt.

    ``rewards`` [N] holds N = num_prompts * group_size scalars, the G = group_size samples of a prompt
    being consecutive. For sample i of a group with rewards r_1..r_G:

        baseline_i = mean_j r_j                      (leave_one_out=False)
        baseline_i = (sum_j r_j - r_i) / (G - 1)     (leave_one_out=True, needs G >= 2)
        A_i = r_i - baseline_i,   then  A_i / (std_j r_j + eps)  if normalize_std

    (std is the unbiased sample std of the group). A group whose rewards are all equal gets exactly 0.

    Returns:
        [N] advantages, float (the rewards' dtype if floating, else torch's default dtype).
    """
    check_tensor("rewards", rewards)
    if rewards.dim() != 1:
        raise ValueError(f"rewards must have shape [N], got {tuple(rewards.shape)}")
    if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 1:
        raise ValueError(f"group_size must be a positive int, got {group_size!r}")
    if rewards.numel() % group_size != 0:
        raise ValueError(f"rewards has {rewards.numel()} entries, not a multiple of group_size={group_size}")
    if leave_one_out and group_size < 2:
        raise ValueError("leave_one_out=True needs group_size >= 2")
    if not eps > 0:
        raise ValueError(f"eps must be > 0, got {eps}")
    if not rewards.is_floating_point():
        rewards = rewards.to(torch.get_default_dtype())
    check_finite("rewards", rewards)

    groups = rewards.view(-1, group_size)
    total = groups.sum(-1, keepdim=True)
    if leave_one_out:
        baseline = (total - groups) / (group_size - 1)
    else:
        baseline = total / group_size
    adv = groups - baseline
    if normalize_std:
        std = groups.std(-1, keepdim=True) if group_size > 1 else torch.zeros_like(total)
        adv = adv / (std + eps)
    constant = groups.amax(-1, keepdim=True) == groups.amin(-1, keepdim=True)
    adv = torch.where(constant, torch.zeros_like(adv), adv)
    return adv.reshape(-1)
