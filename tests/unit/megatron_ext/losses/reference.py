"""Plain-Python float64 loop references for the loss library, written from the equations only.

Each function walks tokens one by one (t and k count the valid tokens of a row, in order) and uses
Python floats, so it shares no code path with the vectorised implementation under test.
"""

from __future__ import annotations

import math

import torch


def valid_positions(mask_row: torch.Tensor) -> list[int]:
    return [i for i, m in enumerate(mask_row.tolist()) if m]


def weight(t: int, k: int, decay: float, style: str) -> float:
    if style == "recent":
        return decay ** (t - k)
    if style == "both":
        return max(decay ** (t - k), decay**k)
    raise AssertionError(style)


def trace_loop(x: torch.Tensor, mask: torch.Tensor, decay: float, style: str) -> torch.Tensor:
    """z_t = sum_{k<=t} w(t,k) x_k over valid tokens; 0 elsewhere. [B, T] float64."""
    out = torch.zeros(x.shape, dtype=torch.float64)
    for b in range(x.shape[0]):
        pos = valid_positions(mask[b])
        for t_rank, t in enumerate(pos):
            acc = 0.0
            for k_rank in range(t_rank + 1):
                acc += weight(t_rank, k_rank, decay, style) * float(x[b, pos[k_rank]])
            out[b, t] = acc
    return out


def weights_loop(mask: torch.Tensor, decay: float, style: str) -> torch.Tensor:
    """W_k = sum_{t>=k, t valid} w(t,k); 0 at masked positions. [B, T] float64."""
    out = torch.zeros(mask.shape, dtype=torch.float64)
    for b in range(mask.shape[0]):
        pos = valid_positions(mask[b])
        n = len(pos)
        for k_rank, k in enumerate(pos):
            out[b, k] = sum(weight(t_rank, k_rank, decay, style) for t_rank in range(k_rank, n))
    return out


def surrogate(ratio: float, adv: float, eps_low: float, eps_high: float, dual_clip: float | None) -> float:
    clipped_ratio = min(max(ratio, 1.0 - eps_low), 1.0 + eps_high)
    loss = -min(ratio * adv, clipped_ratio * adv)
    if dual_clip is not None and adv < 0:
        loss = min(loss, -dual_clip * adv)
    return loss


def policy_loss_loop(
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
) -> torch.Tensor:
    """Per-token loss of every variant, token by token. [B, T] float64."""
    decay = gamma * lam
    out = torch.zeros(logp.shape, dtype=torch.float64)
    for b in range(logp.shape[0]):
        pos = valid_positions(mask[b])
        n = len(pos)
        adv = float(advantages[b])
        if adv_clamp_min is not None:
            adv = max(adv, adv_clamp_min)
        x = [float(logp[b, p]) - float(old_logp[b, p]) for p in pos]
        w_tot = [sum(weight(t, k, decay, style) for t in range(k, n)) for k in range(n)]
        if weight_norm == "mean" and n:
            mean_w = sum(w_tot) / n
            w_tot = [w / mean_w for w in w_tot]
        for t in range(n):
            if variant == "grpo":
                loss = surrogate(math.exp(x[t]), adv, eps_low, eps_high, dual_clip)
            elif variant == "epsilon-trace":
                z = sum(weight(t, k, decay, style) * x[k] for k in range(t + 1))
                loss = surrogate(math.exp(z), adv, eps_low, eps_high, dual_clip)
            elif variant == "epsilon-weight":
                loss = w_tot[t] * surrogate(math.exp(x[t]), adv, eps_low, eps_high, dual_clip)
            else:
                raise AssertionError(variant)
            if ref_logp is not None and kl_coef > 0:
                d = float(logp[b, pos[t]]) - float(ref_logp[b, pos[t]])
                kl = d if kl_estimator == "k1" else math.exp(-d) + d - 1.0
                loss += kl_coef * kl
            out[b, pos[t]] = loss
    return out


def aggregate_loop(loss: torch.Tensor, mask: torch.Tensor, mode: str, global_valid_tokens=None) -> float:
    rows = [[float(loss[b, t]) for t in range(loss.shape[1]) if mask[b, t]] for b in range(loss.shape[0])]
    if mode == "token-mean":
        total = sum(sum(r) for r in rows)
        count = global_valid_tokens if global_valid_tokens is not None else sum(len(r) for r in rows)
        return total / max(count, 1)
    if mode == "seq-mean-token-mean":
        return sum(sum(r) / max(len(r), 1) for r in rows) / len(rows)
    if mode == "seq-mean-token-sum":
        return sum(sum(r) for r in rows) / len(rows)
    raise AssertionError(mode)


def group_advantages_loop(
    rewards: list[float], group_size: int, *, normalize_std: bool, leave_one_out: bool, eps: float
) -> list[float]:
    out = []
    for start in range(0, len(rewards), group_size):
        group = rewards[start : start + group_size]
        g = len(group)
        mean = sum(group) / g
        std = math.sqrt(sum((r - mean) ** 2 for r in group) / (g - 1)) if g > 1 else 0.0
        for r in group:
            if max(group) == min(group):
                out.append(0.0)
                continue
            baseline = (sum(group) - r) / (g - 1) if leave_one_out else mean
            a = r - baseline
            out.append(a / (std + eps) if normalize_std else a)
    return out
