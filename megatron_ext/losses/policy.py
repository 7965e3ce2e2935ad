"""Per-token policy losses: GRPO and the two GRPO-lambda variants (epsilon-trace, epsilon-weight).

Notation per response (valid tokens only): x_t = logp_t - old_logp_t, r_t = exp(x_t), A = the
sequence's advantage (optionally clamped from below), d = gamma * lam, eps_l / eps_h the clip range.

    surrogate(u) = -min(u A, clip(u, 1 - eps_l, 1 + eps_h) A)
    dual clip (A < 0 only, c > 1, verl / NeMo-RL): surrogate(u) = min(surrogate(u), -c A)

    grpo:            loss_t = surrogate(r_t)
    epsilon-trace:   loss_t = surrogate(exp(z_t)),   z = traced_log_ratio(x, mask, d, style)
    epsilon-weight:  loss_k = W_k surrogate(r_k),    W = trace_weights(mask, d, style)
                     (weight_norm="mean": W_k / mean of W over the response)

plus kl_coef * KL_t(pi_theta || pi_ref) with the k1 (x_ref = logp - ref_logp) or k3 estimator
(exp(-x_ref) + x_ref - 1). At logp = old_logp both GRPO-lambda variants have the gradient
-sum_k W_k A grad logp_k; with lam = 0 and style "recent" both equal ``grpo`` bitwise.
"""

from __future__ import annotations

import math

import torch

from megatron_ext.losses.registry import (
    check_2d,
    check_decay,
    check_finite,
    check_float,
    check_mask,
    check_shape,
    check_unit_interval,
    get_kl_estimator,
    get_trace_style,
    get_variant,
    get_weight_norm,
)
from megatron_ext.losses.traces import _trace_weights, _traced_log_ratio


def _kl_k1(log_ratio_ref: torch.Tensor) -> torch.Tensor:
    return log_ratio_ref


def _kl_k3(log_ratio_ref: torch.Tensor) -> torch.Tensor:
    return torch.exp(-log_ratio_ref) + log_ratio_ref - 1.0


#: KL estimators of KL(pi_theta || pi_ref) from x_ref = logp - ref_logp, keyed like ``KL_ESTIMATORS``.
_KL_FUNCTIONS = {"k1": _kl_k1, "k3": _kl_k3}


def _check_number(name: str, value: float, low: float, high: float = math.inf) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    value = float(value)
    if not (math.isfinite(value) and low <= value <= high):
        raise ValueError(f"{name} must be in [{low}, {high}], got {value}")
    return value


def _validate(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    ref_logp: torch.Tensor | None,
) -> None:
    check_2d("logp", logp)
    check_float("logp", logp)
    shape = tuple(logp.shape)
    check_shape("old_logp", old_logp, shape, "[B, T] like logp")
    check_float("old_logp", old_logp)
    check_shape("advantages", advantages, shape[:1], "[B]")
    check_float("advantages", advantages)
    check_shape("mask", mask, shape, "[B, T] like logp")
    check_mask("mask", mask)
    named = [("logp", logp), ("old_logp", old_logp), ("advantages", advantages)]
    if ref_logp is not None:
        check_shape("ref_logp", ref_logp, shape, "[B, T] like logp")
        check_float("ref_logp", ref_logp)
        named.append(("ref_logp", ref_logp))
    for name, tensor in named:
        check_finite(name, tensor)


def _surrogate(
    ratio: torch.Tensor, adv: torch.Tensor, eps_low: float, eps_high: float, dual_clip: float | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The clipped (and optionally dual-clipped) surrogate loss, and where the clip is active."""
    unclipped = -adv * ratio
    clipped = -adv * torch.clamp(ratio, 1.0 - eps_low, 1.0 + eps_high)
    loss = torch.maximum(unclipped, clipped)
    if dual_clip is not None:
        loss = torch.where(adv < 0, torch.minimum(loss, -adv * dual_clip), loss)
    return loss, clipped > unclipped


def _masked_mean(value: torch.Tensor, mask_f: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
    return (value * mask_f).sum() / count


def per_token_policy_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    variant: str,
    style: str = "recent",
    gamma: float = 1.0,
    lam: float = 0.99,
    eps_low: float = 0.2,
    eps_high: float = 0.2,
    dual_clip: float | None = None,
    adv_clamp_min: float | None = None,
    weight_norm: str = "none",
    ref_logp: torch.Tensor | None = None,
    kl_coef: float = 0.0,
    kl_estimator: str = "k3",
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Per-token policy loss [B, T] (0 at masked positions) and detached scalar metrics.

    Args:
        logp: log pi_theta of the sampled tokens, [B, T] (differentiable).
        old_logp: log pi_old of the same tokens, [B, T]. advantages: A per sequence, [B].
        mask: [B, T] 0/1, 1 on response tokens (holes allowed).
        variant: ``grpo`` | ``epsilon-trace`` | ``epsilon-weight`` (see the module docstring).
        style, gamma, lam: trace style and decay d = gamma * lam in [0, 1] (unused by ``grpo``).
        eps_low, eps_high: clip range [1 - eps_low, 1 + eps_high].
        dual_clip: c > 1 bounds the loss of negative-advantage tokens at -c A; None = off.
        adv_clamp_min: clamp A from below (e.g. -0.1); None = off.
        weight_norm: ``none`` | ``mean`` (``epsilon-weight`` only).
        ref_logp, kl_coef, kl_estimator: add kl_coef * KL_t(pi_theta || pi_ref) (``k1`` | ``k3``).

    Returns:
        (loss [B, T], metrics) with metrics means over valid tokens: ``clip_fraction``, ``ratio_mean``
        (of the ratio the surrogate uses), ``trace_abs_mean`` (mean |z|, z = x for the untraced
        variants), ``kl`` (0 without ``ref_logp``), ``weight_mean``/``weight_max`` (of the per-token
        weight; 1 for ``grpo``, W of ``style`` for the GRPO-lambda variants).
    """
    get_variant(variant)
    get_trace_style(style)
    get_weight_norm(weight_norm)
    get_kl_estimator(kl_estimator)
    _validate(logp, old_logp, advantages, mask, ref_logp)
    decay = check_decay(_check_number("gamma", gamma, 0.0) * _check_number("lam", lam, 0.0), "gamma*lam")
    eps_low = check_unit_interval("eps_low", eps_low)
    eps_high = _check_number("eps_high", eps_high, 0.0)
    if dual_clip is not None:
        dual_clip = _check_number("dual_clip", dual_clip, 1.0)
        if dual_clip == 1.0:
            raise ValueError("dual_clip must be > 1")
    kl_coef = _check_number("kl_coef", kl_coef, 0.0)
    if kl_coef > 0 and ref_logp is None:
        raise ValueError("kl_coef > 0 needs ref_logp")

    mask_f = mask.to(logp.dtype)
    adv = advantages.to(logp.dtype)
    if adv_clamp_min is not None:
        adv = adv.clamp(min=_check_number("adv_clamp_min", adv_clamp_min, -math.inf))
    adv = adv[:, None]
    # Zero the log-ratio off the response so padding can never overflow exp().
    log_ratio = (logp - old_logp) * mask_f

    if variant == "epsilon-trace":
        log_ratio = _traced_log_ratio(log_ratio, mask_f, decay, style)
    ratio = torch.exp(log_ratio)
    loss, is_clipped = _surrogate(ratio, adv, eps_low, eps_high, dual_clip)

    if variant == "grpo":
        weights = None
    else:
        weights = _trace_weights(mask, decay, style, logp.dtype)
        if variant == "epsilon-weight":
            if weight_norm == "mean":
                row_mean = weights.sum(-1, keepdim=True) / mask_f.sum(-1, keepdim=True).clamp(min=1)
                weights = weights / row_mean.clamp(min=torch.finfo(weights.dtype).tiny)
            loss = weights * loss

    kl = None
    if ref_logp is not None:
        kl = _KL_FUNCTIONS[kl_estimator]((logp - ref_logp) * mask_f)
        if kl_coef > 0:
            loss = loss + kl_coef * kl
    loss = loss * mask_f

    return loss, _metrics(is_clipped, ratio, log_ratio, kl, weights, mask_f)


@torch.no_grad()
def _metrics(
    is_clipped: torch.Tensor,
    ratio: torch.Tensor,
    log_ratio: torch.Tensor,
    kl: torch.Tensor | None,
    weights: torch.Tensor | None,
    mask_f: torch.Tensor,
) -> dict[str, torch.Tensor]:
    """The detached scalar metrics of `per_token_policy_loss` (means over valid tokens; see its docstring)."""
    count = mask_f.sum().clamp(min=1)
    zero = mask_f.new_zeros(())
    metrics = {
        "clip_fraction": _masked_mean(is_clipped.to(mask_f.dtype), mask_f, count),
        "ratio_mean": _masked_mean(ratio, mask_f, count),
        "trace_abs_mean": _masked_mean(log_ratio.abs(), mask_f, count),
        "kl": _masked_mean(kl, mask_f, count) if kl is not None else zero,
    }
    if weights is None:
        has_valid = (mask_f.sum() > 0).to(mask_f.dtype)
        metrics["weight_mean"] = has_valid
        metrics["weight_max"] = has_valid.clone()
    else:
        metrics["weight_mean"] = _masked_mean(weights, mask_f, count)
        metrics["weight_max"] = (weights * mask_f).max() if weights.numel() else zero.clone()
    return metrics
