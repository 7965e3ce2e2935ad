"""group_advantages, aggregate and the importance-sampling helpers against loop references."""

from __future__ import annotations

import math

import pytest
import torch

from megatron_ext.losses import (
    aggregate,
    group_advantages,
    logprob_mismatch,
    truncated_is_weights,
)
from tests.unit.megatron_ext.losses.reference import aggregate_loop, group_advantages_loop


@pytest.mark.parametrize("normalize_std", [True, False])
@pytest.mark.parametrize("leave_one_out", [True, False])
@pytest.mark.parametrize("group_size", [2, 4, 8])
def test_group_advantages_match_loop(normalize_std: bool, leave_one_out: bool, group_size: int) -> None:
    gen = torch.Generator().manual_seed(group_size)
    rewards = (torch.rand(6 * group_size, generator=gen) > 0.5).double() + 0.1 * torch.rand(
        6 * group_size, generator=gen, dtype=torch.float64
    )
    rewards[:group_size] = 0.7  # one constant group
    adv = group_advantages(
        rewards, group_size, normalize_std=normalize_std, leave_one_out=leave_one_out, eps=1e-6
    )
    expected = group_advantages_loop(
        rewards.tolist(), group_size, normalize_std=normalize_std, leave_one_out=leave_one_out, eps=1e-6
    )
    torch.testing.assert_close(adv, torch.tensor(expected, dtype=torch.float64), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("value", [0.1, 1.0, 0.3, 1e-7, 12345.678])
@pytest.mark.parametrize("leave_one_out", [True, False])
def test_equal_rewards_give_exactly_zero(value: float, leave_one_out: bool) -> None:
    rewards = torch.full((12,), value, dtype=torch.float32)
    adv = group_advantages(rewards, 3, leave_one_out=leave_one_out)
    assert torch.equal(adv, torch.zeros(12))
    assert torch.equal(group_advantages(rewards, 3, normalize_std=False), torch.zeros(12))


def test_integer_rewards_and_group_size_one() -> None:
    adv = group_advantages(torch.tensor([1, 0, 0, 1]), 2)
    assert adv.dtype == torch.get_default_dtype()
    torch.testing.assert_close(adv, torch.tensor([0.5, -0.5, -0.5, 0.5]) / (math.sqrt(0.5) + 1e-6))
    assert torch.equal(group_advantages(torch.tensor([1.0, 0.0]), 1), torch.zeros(2))


def loss_and_mask(seed: int):
    gen = torch.Generator().manual_seed(seed)
    loss = torch.randn(4, 37, generator=gen, dtype=torch.float64)
    mask = (torch.rand(4, 37, generator=gen) > 0.3).double()
    mask[2] = 0
    return loss, mask


@pytest.mark.parametrize("mode", ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum"])
def test_aggregate_matches_loop(mode: str) -> None:
    loss, mask = loss_and_mask(1)
    expected = aggregate_loop(loss, mask, mode)
    assert math.isclose(float(aggregate(loss, mask, mode)), expected, rel_tol=1e-12)
    assert math.isclose(float(aggregate(loss, mask.bool(), mode)), expected, rel_tol=1e-12)


def test_token_mean_over_microbatches_equals_full_batch() -> None:
    loss, mask = loss_and_mask(2)
    total_tokens = int(mask.sum())
    full = aggregate(loss, mask, "token-mean")
    parts = sum(
        aggregate(loss[i : i + 1], mask[i : i + 1], "token-mean", global_valid_tokens=total_tokens)
        for i in range(4)
    )
    torch.testing.assert_close(parts, full, rtol=1e-12, atol=0)
    with_tensor = aggregate(loss, mask, "token-mean", global_valid_tokens=torch.tensor(float(total_tokens)))
    torch.testing.assert_close(with_tensor, full, rtol=1e-12, atol=0)
    assert math.isclose(
        float(aggregate(loss, mask, "token-mean", global_valid_tokens=1000)),
        aggregate_loop(loss, mask, "token-mean", global_valid_tokens=1000),
        rel_tol=1e-12,
    )


def test_aggregate_of_empty_mask_is_zero() -> None:
    loss = torch.randn(2, 5)
    for mode in ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum"]:
        assert float(aggregate(loss, torch.zeros(2, 5), mode)) == 0.0


def test_logprob_mismatch_and_tis_weights() -> None:
    gen = torch.Generator().manual_seed(3)
    rollout = -torch.rand(3, 20, generator=gen, dtype=torch.float64)
    trainer = rollout + 0.3 * torch.randn(3, 20, generator=gen, dtype=torch.float64)
    mask = (torch.rand(3, 20, generator=gen) > 0.3).double()
    trainer[0, 0] = 50.0  # huge difference at a masked position must not count
    mask[0, 0] = 0
    out = logprob_mismatch(rollout, trainer, mask)
    deltas = [
        abs(float(trainer[b, t]) - float(rollout[b, t])) for b in range(3) for t in range(20) if mask[b, t]
    ]
    assert math.isclose(float(out["mean_abs"]), sum(deltas) / len(deltas), rel_tol=1e-12)
    assert math.isclose(float(out["max_ratio"]), math.exp(max(deltas)), rel_tol=1e-12)

    cap = 1.2
    w = truncated_is_weights(rollout, trainer, mask, cap)
    for b in range(3):
        for t in range(20):
            exp = min(math.exp(float(trainer[b, t]) - float(rollout[b, t])), cap) if mask[b, t] else 0.0
            assert math.isclose(float(w[b, t]), exp, rel_tol=1e-12, abs_tol=0), (b, t)
    assert not truncated_is_weights(rollout, trainer.requires_grad_(), mask, cap).requires_grad


def test_logprob_mismatch_without_valid_tokens() -> None:
    out = logprob_mismatch(torch.zeros(2, 3), torch.ones(2, 3), torch.zeros(2, 3))
    assert float(out["mean_abs"]) == 0.0 and float(out["max_ratio"]) == 1.0
