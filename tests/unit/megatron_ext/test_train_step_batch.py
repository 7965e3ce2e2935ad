"""RolloutBatch validation / sharding and LossSettings <-> per_token_policy_loss (no Megatron process groups)."""

from __future__ import annotations

import dataclasses
import inspect

import pytest
import torch

from megatron_ext.losses import per_token_policy_loss
from megatron_ext.train_step import LossSettings, RolloutBatch


def batch(b: int = 4, s: int = 6) -> RolloutBatch:
    mask = torch.zeros(b, s)
    mask[:, 2:] = 1
    return RolloutBatch(
        input_ids=torch.arange(b * s).reshape(b, s),
        response_mask=mask,
        old_logp=-torch.rand(b, s) * mask,
        advantages=torch.arange(b, dtype=torch.float32),
    )


def test_shard_is_contiguous_and_covers_the_batch():
    full = batch()
    parts = [full.shard(r, 2) for r in range(2)]
    assert torch.equal(torch.cat([p.input_ids for p in parts]), full.input_ids)
    assert torch.equal(parts[1].advantages, torch.tensor([2.0, 3.0]))
    assert parts[0].ref_logp is None
    with pytest.raises(ValueError, match="not divisible by data_parallel=3"):
        full.shard(0, 3)


def test_shape_errors_name_the_field():
    good = batch()
    with pytest.raises(ValueError, match="old_logp must have the shape"):
        dataclasses.replace(good, old_logp=torch.zeros(4, 5))
    with pytest.raises(ValueError, match=r"advantages must be \[B\]"):
        dataclasses.replace(good, advantages=torch.zeros(4, 1))
    with pytest.raises(ValueError, match="input_ids must be"):
        dataclasses.replace(good, input_ids=torch.zeros(4))
    bad_mask = good.response_mask.clone()
    bad_mask[0, 0] = 1
    with pytest.raises(ValueError, match=r"response_mask\[:, 0\] must be 0"):
        dataclasses.replace(good, response_mask=bad_mask)


SETTINGS = dict(
    variant="epsilon-trace",
    style="both",
    gamma=0.95,
    lam=0.9,
    eps_low=0.1,
    eps_high=0.3,
    dual_clip=3.0,
    adv_clamp_min=-0.1,
    weight_norm="mean",
    kl_coef=0.01,
    kl_estimator="k1",
    aggregation="seq-mean-token-sum",
    temperature=0.7,
    tis_cap=2.0,
    recompute_old_logp=False,
)


def test_loss_settings_forward_exactly_the_policy_loss_keywords():
    params = inspect.signature(per_token_policy_loss).parameters
    keyword_only = {n for n, p in params.items() if p.kind is inspect.Parameter.KEYWORD_ONLY}
    kwargs = LossSettings(**SETTINGS).policy_loss_kwargs()
    assert set(kwargs) == keyword_only - {"ref_logp"}
    assert kwargs == {k: SETTINGS[k] for k in kwargs}


def test_loss_settings_have_no_defaults():
    # Defaults live in pipeline.config.AlgorithmConfig only; a missing field is an error here.
    with pytest.raises(TypeError, match="recompute_old_logp"):
        LossSettings(**{k: v for k, v in SETTINGS.items() if k != "recompute_old_logp"})
    with pytest.raises(TypeError):
        LossSettings(*SETTINGS.values())  # keyword-only
