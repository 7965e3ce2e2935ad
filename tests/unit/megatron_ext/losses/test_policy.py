"""per_token_policy_loss against the float64 loop reference, exactness at lam = 0, and gradients."""

from __future__ import annotations

import itertools

import pytest
import torch

from megatron_ext.losses import per_token_policy_loss
from megatron_ext.losses.traces import CHUNK
from tests.unit.megatron_ext.losses.reference import policy_loss_loop, weights_loop

VARIANTS = ["grpo", "epsilon-trace", "epsilon-weight"]


def make_batch(batch: int, length: int, seed: int, scale: float = 0.3):
    gen = torch.Generator().manual_seed(seed)
    old = -torch.rand(batch, length, generator=gen, dtype=torch.float64) * 3
    logp = old + scale * torch.randn(batch, length, generator=gen, dtype=torch.float64)
    ref = old + 0.2 * torch.randn(batch, length, generator=gen, dtype=torch.float64)
    adv = torch.randn(batch, generator=gen, dtype=torch.float64)
    adv[0] = -abs(adv[0]) - 0.5  # a negative advantage (dual clip, clamp)
    mask = (torch.rand(batch, length, generator=gen) > 0.2).to(torch.float64)
    mask[0, : length // 4] = 0
    return logp, old, adv, mask, ref


CASES = [
    dict(),
    dict(style="both", lam=0.9),
    dict(dual_clip=3.0, eps_low=0.1, eps_high=0.28),
    dict(adv_clamp_min=-0.1, gamma=0.99, lam=0.95),
    dict(weight_norm="mean", style="both"),
    dict(weight_norm="mean", lam=0.5),
    dict(kl_coef=0.05, kl_estimator="k1"),
    dict(kl_coef=0.1, kl_estimator="k3", dual_clip=1.1, style="both"),
    dict(lam=1.0, gamma=1.0),
    dict(lam=0.0, style="both"),
]


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("case", range(len(CASES)))
@pytest.mark.parametrize("length", [CHUNK - 1, CHUNK + 1])
def test_loss_matches_loop(variant: str, case: int, length: int) -> None:
    kwargs = CASES[case]
    logp, old, adv, mask, ref = make_batch(3, length, seed=case + length, scale=0.15)
    loss, metrics = per_token_policy_loss(logp, old, adv, mask, variant=variant, ref_logp=ref, **kwargs)
    expected = policy_loss_loop(logp, old, adv, mask, variant=variant, ref_logp=ref, **kwargs)
    torch.testing.assert_close(loss, expected, rtol=1e-9, atol=1e-12)
    assert set(metrics) == {
        "clip_fraction",
        "ratio_mean",
        "trace_abs_mean",
        "kl",
        "weight_mean",
        "weight_max",
    }
    for name, value in metrics.items():
        assert value.dim() == 0 and not value.requires_grad, name


def test_metrics_match_direct_computation() -> None:
    logp, old, adv, mask, ref = make_batch(3, 90, seed=1, scale=0.5)
    _, metrics = per_token_policy_loss(
        logp, old, adv, mask, variant="epsilon-weight", style="both", lam=0.9, ref_logp=ref
    )
    valid = mask.bool()
    ratio = torch.exp(logp - old)[valid]
    clipped = (ratio < 0.8) & (adv[:, None].expand_as(mask)[valid] < 0) | (ratio > 1.2) & (
        adv[:, None].expand_as(mask)[valid] > 0
    )
    w = weights_loop(mask, 0.9, "both")[valid]
    d_ref = (logp - ref)[valid]
    expected = {
        "clip_fraction": clipped.double().mean(),
        "ratio_mean": ratio.mean(),
        "trace_abs_mean": (logp - old)[valid].abs().mean(),
        "kl": (torch.exp(-d_ref) + d_ref - 1).mean(),
        "weight_mean": w.mean(),
        "weight_max": w.max(),
    }
    for name, value in expected.items():
        torch.testing.assert_close(metrics[name], value, rtol=1e-10, atol=1e-12, msg=name)


def test_grpo_metrics_without_ref() -> None:
    logp, old, adv, mask, _ = make_batch(2, 40, seed=2)
    _, metrics = per_token_policy_loss(logp, old, adv, mask, variant="grpo")
    assert metrics["kl"] == 0 and metrics["weight_mean"] == 1 and metrics["weight_max"] == 1


@pytest.mark.parametrize("variant", ["epsilon-trace", "epsilon-weight"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_lambda_zero_recent_equals_grpo_bitwise(variant: str, dtype: torch.dtype) -> None:
    logp, old, adv, mask, ref = (t.to(dtype) for t in make_batch(4, 2 * CHUNK + 3, seed=3, scale=0.5))
    common = dict(dual_clip=3.0, adv_clamp_min=-0.5, ref_logp=ref, kl_coef=0.01, eps_high=0.28)
    lp1 = logp.clone().requires_grad_()
    lp2 = logp.clone().requires_grad_()
    grpo, m_grpo = per_token_policy_loss(lp1, old, adv, mask, variant="grpo", **common)
    traced, m_traced = per_token_policy_loss(
        lp2, old, adv, mask, variant=variant, style="recent", lam=0.0, **common
    )
    assert torch.equal(grpo, traced)
    for name in m_grpo:
        assert torch.equal(m_grpo[name], m_traced[name]), name
    grpo.sum().backward()
    traced.sum().backward()
    assert torch.equal(lp1.grad, lp2.grad)


@pytest.mark.parametrize("variant", ["epsilon-trace", "epsilon-weight"])
@pytest.mark.parametrize("style", ["recent", "both"])
@pytest.mark.parametrize("length", [CHUNK, 2 * CHUNK + 3])
def test_gradient_at_old_policy_is_weighted_policy_gradient(variant: str, style: str, length: int) -> None:
    """At logp = old_logp, d loss_sum / d logp_k = -W_k A (the forward view of an eligibility trace)."""
    _, old, adv, mask, _ = make_batch(3, length, seed=4)
    logp = old.clone().requires_grad_()
    loss, _ = per_token_policy_loss(logp, old, adv, mask, variant=variant, style=style, lam=0.9)
    loss.sum().backward()
    expected = -weights_loop(mask, 0.9, style) * adv[:, None]
    torch.testing.assert_close(logp.grad, expected, rtol=1e-10, atol=1e-12)


def test_gradient_through_trace_matches_finite_differences() -> None:
    logp, old, adv, mask, _ = make_batch(2, CHUNK + 5, seed=5, scale=0.05)
    logp, old, adv, mask = logp[:1], old[:1], adv[:1], mask[:1]  # row 0: prompt prefix, holes
    for style, dual in itertools.product(["recent", "both"], [None, 2.0]):

        def f(lp, style=style, dual=dual):
            return per_token_policy_loss(
                lp, old, adv, mask, variant="epsilon-trace", style=style, lam=0.8, dual_clip=dual
            )[0]

        assert torch.autograd.gradcheck(f, (logp.clone().requires_grad_(),))


def test_float32_loss_at_32k_matches_float64() -> None:
    logp, old, adv, mask, _ = make_batch(1, 32768, seed=6, scale=0.002)
    for variant, style in itertools.product(VARIANTS, ["recent", "both"]):
        kw = dict(variant=variant, style=style, lam=0.999)
        l64, _ = per_token_policy_loss(logp, old, adv, mask, **kw)
        l32, _ = per_token_policy_loss(logp.float(), old.float(), adv.float(), mask.float(), **kw)
        rel = (l32.double() - l64).abs().max() / l64.abs().max()
        assert rel <= 1e-4, (variant, style, rel)
