"""Every input check of the loss library raises a clear error naming the offending argument."""

from __future__ import annotations

import pytest
import torch

from megatron_ext.losses import (
    AGGREGATIONS,
    KL_ESTIMATORS,
    TRACE_STYLES,
    VARIANTS,
    WEIGHT_NORMS,
    aggregate,
    get_aggregation,
    get_kl_estimator,
    get_trace_style,
    get_variant,
    get_weight_norm,
    group_advantages,
    logprob_mismatch,
    per_token_policy_loss,
    trace_weights,
    traced_log_ratio,
    truncated_is_weights,
)


def batch():
    return torch.zeros(2, 5), torch.zeros(2, 5), torch.ones(2), torch.ones(2, 5)


@pytest.mark.parametrize(
    ("registry", "getter", "names"),
    [
        (VARIANTS, get_variant, ["grpo", "epsilon-trace", "epsilon-weight"]),
        (TRACE_STYLES, get_trace_style, ["recent", "both"]),
        (KL_ESTIMATORS, get_kl_estimator, ["k1", "k3"]),
        (AGGREGATIONS, get_aggregation, ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum"]),
        (WEIGHT_NORMS, get_weight_norm, ["none", "mean"]),
    ],
)
def test_registries_hold_exact_names_and_reject_others(registry, getter, names) -> None:
    assert list(registry) == names and len(registry) == len(names)
    for name in names:
        assert getter(name) == name and name in registry and isinstance(registry[name], str)
    for bad in [names[0].upper(), names[0] + " ", "nope"]:
        assert bad not in registry
        with pytest.raises(ValueError) as err:
            getter(bad)
        assert all(name in str(err.value) for name in names)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(variant="ppo"), "unknown loss variant 'ppo'.*grpo, epsilon-trace, epsilon-weight"),
        (dict(variant="grpo", style="oldest"), "unknown trace style.*recent, both"),
        (dict(variant="grpo", kl_estimator="k2"), "unknown KL estimator.*k1, k3"),
        (dict(variant="grpo", weight_norm="sum"), "unknown weight normalisation.*none, mean"),
        (dict(variant="epsilon-trace", lam=1.5), r"gamma\*lam must be in \[0, 1\]"),
        (dict(variant="epsilon-trace", lam=-0.1), r"lam must be in"),
        (dict(variant="epsilon-trace", gamma=float("nan")), r"gamma must be in"),
        (dict(variant="grpo", eps_low=1.5), "eps_low must be in"),
        (dict(variant="grpo", eps_high=-0.1), "eps_high must be in"),
        (dict(variant="grpo", dual_clip=1.0), "dual_clip must be > 1"),
        (dict(variant="grpo", dual_clip=0.5), "dual_clip must be in"),
        (dict(variant="grpo", kl_coef=0.1), "kl_coef > 0 needs ref_logp"),
        (dict(variant="grpo", kl_coef=-1.0), "kl_coef must be in"),
    ],
)
def test_policy_loss_rejects_bad_settings(kwargs, match) -> None:
    with pytest.raises(ValueError, match=match):
        per_token_policy_loss(*batch(), **kwargs)


def test_policy_loss_rejects_bad_shapes_and_values() -> None:
    logp, old, adv, mask = batch()
    cases = [
        ((logp[0], old, adv, mask), r"logp must have shape \[B, T\]"),
        ((logp, old[:, :4], adv, mask), r"old_logp must have shape \[B, T\] like logp = \(2, 5\)"),
        ((logp, old, adv[:, None], mask), r"advantages must have shape \[B\] = \(2,\)"),
        ((logp, old, torch.ones(3), mask), r"advantages must have shape \[B\]"),
        ((logp, old, adv, mask[:, :3]), r"mask must have shape"),
        ((logp, old, adv, mask * 2), "mask must contain only 0 and 1"),
        ((logp, old, adv, mask - 0.5), "mask must contain only 0 and 1"),
    ]
    for args, match in cases:
        with pytest.raises(ValueError, match=match):
            per_token_policy_loss(*args, variant="grpo")
    with pytest.raises(ValueError, match=r"ref_logp must have shape"):
        per_token_policy_loss(logp, old, adv, mask, variant="grpo", ref_logp=logp[:, :2])
    with pytest.raises(TypeError, match="logp must be a floating-point tensor"):
        per_token_policy_loss(logp.long(), old, adv, mask, variant="grpo")
    with pytest.raises(TypeError, match="old_logp must be a torch.Tensor"):
        per_token_policy_loss(logp, old.tolist(), adv, mask, variant="grpo")


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("which", ["logp", "old_logp", "advantages", "ref_logp"])
def test_non_finite_inputs_are_named(bad: float, which: str) -> None:
    logp, old, adv, mask = batch()
    tensors = dict(logp=logp, old_logp=old, advantages=adv, ref_logp=torch.zeros(2, 5))
    tensors[which] = tensors[which].clone()
    tensors[which].view(-1)[1] = bad
    with pytest.raises(ValueError, match=f"^{which} contains non-finite values"):
        per_token_policy_loss(
            tensors["logp"],
            tensors["old_logp"],
            tensors["advantages"],
            mask,
            variant="epsilon-trace",
            ref_logp=tensors["ref_logp"],
        )


def test_trace_functions_reject_bad_input() -> None:
    x, mask = torch.zeros(2, 5), torch.ones(2, 5)
    for decay in [-0.01, 1.01, float("nan"), float("inf")]:
        with pytest.raises(ValueError, match=r"decay must be in \[0, 1\]"):
            traced_log_ratio(x, mask, decay, "recent")
        with pytest.raises(ValueError, match=r"decay must be in \[0, 1\]"):
            trace_weights(mask, decay, "both")
    with pytest.raises(TypeError, match="decay must be a number"):
        traced_log_ratio(x, mask, "0.9", "recent")
    with pytest.raises(ValueError, match="unknown trace style 'Recent'"):
        traced_log_ratio(x, mask, 0.9, "Recent")
    with pytest.raises(ValueError, match="unknown trace style"):
        trace_weights(mask, 0.9, "all")
    with pytest.raises(ValueError, match=r"log_ratio must have shape \[B, T\]"):
        traced_log_ratio(x[0], mask, 0.9, "recent")
    with pytest.raises(ValueError, match=r"mask must have shape"):
        traced_log_ratio(x, mask.T, 0.9, "recent")
    with pytest.raises(ValueError, match="mask must contain only 0 and 1"):
        traced_log_ratio(x, mask * 3, 0.9, "recent")
    with pytest.raises(ValueError, match="mask must contain only 0 and 1"):
        trace_weights(-mask, 0.9, "recent")
    with pytest.raises(ValueError, match="log_ratio contains non-finite values"):
        traced_log_ratio(x / 0, mask, 0.9, "recent")
    with pytest.raises(TypeError, match="log_ratio must be a floating-point tensor"):
        traced_log_ratio(x.long(), mask, 0.9, "recent")


def test_group_advantages_reject_bad_input() -> None:
    with pytest.raises(ValueError, match=r"rewards must have shape \[N\]"):
        group_advantages(torch.zeros(2, 4), 4)
    with pytest.raises(ValueError, match="not a multiple of group_size=4"):
        group_advantages(torch.zeros(6), 4)
    for bad in [0, -2, 2.0, True]:
        with pytest.raises(ValueError, match="group_size must be a positive int"):
            group_advantages(torch.zeros(4), bad)
    with pytest.raises(ValueError, match="leave_one_out=True needs group_size >= 2"):
        group_advantages(torch.zeros(4), 1, leave_one_out=True)
    with pytest.raises(ValueError, match="eps must be > 0"):
        group_advantages(torch.zeros(4), 2, eps=0.0)
    with pytest.raises(ValueError, match="rewards contains non-finite values"):
        group_advantages(torch.tensor([1.0, float("nan")]), 2)
    with pytest.raises(TypeError, match="rewards must be a torch.Tensor"):
        group_advantages([1.0, 0.0], 2)


def test_aggregate_rejects_bad_input() -> None:
    loss, mask = torch.zeros(2, 5), torch.ones(2, 5)
    with pytest.raises(ValueError, match="unknown aggregation mode 'mean'.*token-mean"):
        aggregate(loss, mask, "mean")
    with pytest.raises(ValueError, match=r"mask must have shape"):
        aggregate(loss, mask[:1], "token-mean")
    with pytest.raises(ValueError, match="mask must contain only 0 and 1"):
        aggregate(loss, mask + 1, "token-mean")
    for bad in [0, -3, torch.tensor(0.0)]:
        with pytest.raises(ValueError, match="global_valid_tokens must be > 0"):
            aggregate(loss, mask, "token-mean", global_valid_tokens=bad)
    with pytest.raises(ValueError, match="global_valid_tokens must be a scalar"):
        aggregate(loss, mask, "token-mean", global_valid_tokens=torch.ones(2))
    with pytest.raises(ValueError, match="applies only to mode 'token-mean'"):
        aggregate(loss, mask, "seq-mean-token-sum", global_valid_tokens=10)


def test_importance_helpers_reject_bad_input() -> None:
    a, mask = torch.zeros(2, 5), torch.ones(2, 5)
    with pytest.raises(ValueError, match=r"trainer_logp must have shape"):
        logprob_mismatch(a, a[:, :2], mask)
    with pytest.raises(ValueError, match="rollout_logp contains non-finite values"):
        logprob_mismatch(a / 0, a, mask)
    with pytest.raises(ValueError, match="trainer_logp contains non-finite values"):
        truncated_is_weights(a, a - float("inf"), mask, 2.0)
    with pytest.raises(ValueError, match="mask must contain only 0 and 1"):
        truncated_is_weights(a, a, mask * 2, 2.0)
    for cap in [0.0, -1.0, float("inf"), float("nan")]:
        with pytest.raises(ValueError, match="cap must be a finite number > 0"):
            truncated_is_weights(a, a, mask, cap)
