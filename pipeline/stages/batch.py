"""From problems to prompts, and from sampled responses to the trainer's batch.

Pure functions of their inputs (no engine, no model), so the prompt order and the batch layout are
the same in colocated and staged mode, and in a resumed run.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from pipeline.stages.state import NonFiniteError


def iteration_problem_indices(
    num_problems: int, iteration: int, prompts_per_iteration: int, *, seed: int
) -> list[int]:
    """Indices of the problems used at `iteration` (0-based).

    The training set is walked in epochs; each epoch is a fresh permutation drawn from
    `seed` and the epoch number, so the order depends only on (seed, iteration), never on history.
    """
    if num_problems < 1:
        raise ValueError("the training set is empty")
    indices = []
    for pos in range(iteration * prompts_per_iteration, (iteration + 1) * prompts_per_iteration):
        epoch, offset = divmod(pos, num_problems)
        gen = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
        indices.append(int(torch.randperm(num_problems, generator=gen)[offset]))
    return indices


def sampling_seed(base_seed: int, iteration: int) -> int:
    """The engine's sampling seed at `iteration` (distinct per iteration, reproducible on resume)."""
    return base_seed * 1_000_003 + iteration


def collate_rollouts(
    samples: Sequence[Any], advantages: torch.Tensor, *, pad_id: int
) -> dict[str, torch.Tensor]:
    """Right-padded prompt+response tensors for the trainer (the fields of `RolloutBatch`).

    Args:
        samples: N engine samples with `prompt_ids`, `response_ids`, `response_logprobs` (one per
            response token).
        advantages: [N] advantage of each sample.
        pad_id: token id written in padding positions.

    Returns:
        input_ids [N, S] (long), response_mask [N, S] (float, 1 on response tokens), old_logp [N, S]
        (float32, the sampling log-prob of input_ids[:, s] at response positions, 0 elsewhere),
        advantages [N] (float32). S = the longest prompt+response.
    """
    if len(samples) != advantages.numel():
        raise ValueError(f"{len(samples)} samples but {advantages.numel()} advantages")
    if not samples:
        raise ValueError("no samples to collate")
    seq_len = max(len(s.prompt_ids) + len(s.response_ids) for s in samples)
    n = len(samples)
    input_ids = torch.full((n, seq_len), pad_id, dtype=torch.long)
    response_mask = torch.zeros(n, seq_len, dtype=torch.float32)
    old_logp = torch.zeros(n, seq_len, dtype=torch.float32)
    for i, s in enumerate(samples):
        p, r = len(s.prompt_ids), len(s.response_ids)
        if len(s.response_logprobs) != r:
            raise ValueError(f"sample {i}: {r} response tokens but {len(s.response_logprobs)} log-probs")
        input_ids[i, :p] = torch.as_tensor(list(s.prompt_ids), dtype=torch.long)
        input_ids[i, p : p + r] = torch.as_tensor(list(s.response_ids), dtype=torch.long)
        response_mask[i, p : p + r] = 1.0
        old_logp[i, p : p + r] = torch.as_tensor(list(s.response_logprobs), dtype=torch.float32)
    return {
        "input_ids": input_ids,
        "response_mask": response_mask,
        "old_logp": old_logp,
        "advantages": advantages.to(torch.float32).reshape(n),
    }


def rollout_statistics(
    samples: Sequence[Any], scores: Sequence[float], correct: Sequence[bool], group_size: int
) -> dict[str, float]:
    """Reward, accuracy, length and truncation statistics of one iteration's samples."""
    n = len(samples)
    lengths = torch.tensor([len(s.response_ids) for s in samples], dtype=torch.float64)
    rewards = torch.tensor(list(scores), dtype=torch.float64)
    groups = rewards.reshape(-1, group_size)
    return {
        "reward/mean": float(rewards.mean()),
        "reward/std": float(rewards.std(unbiased=False)) if n > 1 else 0.0,
        "reward/accuracy": float(sum(bool(c) for c in correct) / n),
        "reward/solved_groups": float((groups.max(dim=1).values > 0).double().mean()),
        "reward/zero_variance_groups": float((groups.std(dim=1, unbiased=False) == 0).double().mean()),
        "rollout/response_length_mean": float(lengths.mean()),
        "rollout/response_length_max": float(lengths.max()),
        "rollout/truncation_rate": sum(s.finish_reason == "length" for s in samples) / n,
        "rollout/response_tokens": float(lengths.sum()),
    }


def check_finite(metrics: dict[str, float], keys: Sequence[str], *, where: str) -> None:
    """Raise NonFiniteError when any of `keys` in `metrics` is NaN or infinite."""
    bad = {k: metrics[k] for k in keys if k in metrics and not math.isfinite(float(metrics[k]))}
    if bad:
        raise NonFiniteError(f"{where}: non-finite training metrics {bad}")


def training_batch(
    samples: Sequence[Any],
    scores: Sequence[float],
    *,
    group_size: int,
    normalize_std: bool,
    leave_one_out: bool,
    pad_id: int,
) -> dict[str, torch.Tensor]:
    """Group-relative advantages of the scores, collated with the samples (see `collate_rollouts`)."""
    from megatron_ext.losses import group_advantages

    rewards = torch.tensor(list(scores), dtype=torch.float32)
    advantages = group_advantages(
        rewards, group_size, normalize_std=normalize_std, leave_one_out=leave_one_out
    )
    return collate_rollouts(samples, advantages, pad_id=pad_id)
