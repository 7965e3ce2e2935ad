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


def test_loss_settings_forward_exactly_the_policy_loss_keywords():
    params = inspect.signature(per_token_policy_loss).parameters
    keyword_only = {n for n, p in params.items() if p.kind is inspect.Parameter.KEYWORD_ONLY}
    kwargs = LossSettings(variant="epsilon-trace").policy_loss_kwargs()
    assert set(kwargs) == keyword_only - {"ref_logp"}
    for name, value in kwargs.items():  # the defaults agree with the loss library's
        if params[name].default is not inspect.Parameter.empty:
            assert value == params[name].default, name
