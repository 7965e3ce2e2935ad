"""Eligibility-trace sums over response tokens in O(T) time and memory.

For one response with valid tokens indexed t = 0..n-1 in order (masked positions are skipped and get
output 0), log-ratios x_k and decay d = gamma * lam in [0, 1]:

    z_t = sum_{k <= t} w(t, k) * x_k,        W_k = sum_{k <= t < n} w(t, k)

with ``recent``: w(t, k) = d^(t-k) and ``both``: w(t, k) = max(d^(t-k), d^k).

How it stays O(T) without a T x T matrix:

* ``recent`` is the linear recurrence z_t = d * z_{t-1} + x_t. It is evaluated as a hierarchical
  chunked scan: inside chunks of ``CHUNK`` tokens one fixed [C, C] matrix L[i, j] = d^(i-j) is applied
  to all chunks in one batched matmul; the chunk-end states form a recurrence of the same kind with
  decay d^C, solved by the same function on a sequence C times shorter (log_C(T) levels, no Python loop
  over chunks or tokens). Every coefficient is a power d^m with m >= 0, so nothing overflows in float32
  (powers that underflow are genuinely negligible).
* ``both``: d^(t-k) >= d^k  <=>  k >= t/2. With m_t = ceil(t/2):
      z_t = sum_{k < m_t} d^k x_k  +  sum_{m_t <= k <= t} d^(t-k) x_k
          = P[m_t] + R_t - d^(t - m_t + 1) * R_{m_t - 1},
  P = prefix sums of d^k x_k, R = the ``recent`` trace (ties at k = t/2 take the common value).
* W_k has a closed form with G(m) = sum_{j<m} d^j = (1 - d^m) / (1 - d) (= m for d = 1):
  ``recent``: W_k = G(n - k);  ``both``: W_k = G(min(k, n-1-k) + 1) + max(0, n-1-2k) * d^k.

Masks with holes are handled by compacting each row (valid tokens first, in order) with a gather,
running the scan on the compact rows and gathering back.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F

from megatron_ext.losses.registry import (
    check_2d,
    check_decay,
    check_finite,
    check_float,
    check_mask,
    check_shape,
    get_trace_style,
)

#: Tokens per chunk of the scan. The within-chunk matmul costs O(T * CHUNK) flops, the carries O(T).
CHUNK = 64


def _table(values: torch.Tensor, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Cast a float64 table of decay powers, zeroing powers below sqrt(smallest normal) of ``dtype``.

    Such weights are far below the rounding error of any sum they enter, and keeping them would make
    products subnormal, which x86 CPUs process tens of times slower.
    """
    floor = math.sqrt(torch.finfo(dtype).tiny)
    return torch.where(values.abs() < floor, 0.0, values).to(dtype=dtype, device=device)


@functools.lru_cache(maxsize=64)
def _decay_matrix_t(n: int, decay: float, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """The transposed lower-triangular matrix L^T with L[i, j] = d^(i-j) for j <= i (0^0 = 1), [n, n]."""
    idx = torch.arange(n, dtype=torch.float64)
    diff = idx[:, None] - idx[None, :]
    mat = torch.where(diff >= 0, torch.pow(torch.tensor(decay, dtype=torch.float64), diff.clamp(min=0)), 0.0)
    return _table(mat.T.contiguous(), dtype, device)


@functools.lru_cache(maxsize=64)
def _powers(start: int, n: int, decay: float, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """The vector d^(start + i) for i = 0..n-1, computed in float64, shape [n]."""
    exps = torch.arange(start, start + n, dtype=torch.float64)
    return _table(torch.pow(torch.tensor(decay, dtype=torch.float64), exps), dtype, device)


def _decay_scan(x: torch.Tensor, decay: float) -> torch.Tensor:
    """z_t = sum_{k <= t} d^(t-k) x_k along the last axis of ``x`` [R, T] (no autograd), [R, T]."""
    rows, length = x.shape
    if length <= CHUNK:
        return x @ _decay_matrix_t(length, decay, x.dtype, x.device)
    n_chunks = -(-length // CHUNK)
    if n_chunks * CHUNK != length:
        x = F.pad(x, (0, n_chunks * CHUNK - length))
    local = x.view(rows, n_chunks, CHUNK) @ _decay_matrix_t(CHUNK, decay, x.dtype, x.device)
    # Full state at each chunk end: Z_c = s_c + d^C * Z_{c-1}, the same recurrence one level up.
    ends = _decay_scan(local[:, :, -1].contiguous(), decay**CHUNK)
    carry = F.pad(ends[:, :-1], (1, 0))
    local = local + carry[:, :, None] * _powers(1, CHUNK, decay, x.dtype, x.device)
    return local.view(rows, n_chunks * CHUNK)[:, :length]


def _scan(x: torch.Tensor, decay: float) -> torch.Tensor:
    """``_decay_scan`` in a precision that matmul settings cannot lower.

    On CUDA a float32 matmul may run in TF32 (10-bit mantissa) when the trainer enables it, so the
    scan runs in float64 there: it is memory-bound, and the matmul is T * CHUNK flops.
    """
    if x.is_cuda and x.dtype != torch.float64:
        return _decay_scan(x.double(), decay).to(x.dtype)
    return _decay_scan(x, decay)


class _RecentScan(torch.autograd.Function):
    """Autograd wrapper: the adjoint of a causal decay scan is the same scan run backwards in time."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, decay: float) -> torch.Tensor:  # type: ignore[override]
        ctx.decay = decay
        return _scan(x, decay)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # type: ignore[override]
        return _scan(grad.flip(-1).contiguous(), ctx.decay).flip(-1), None


def _compaction(valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row permutation putting valid tokens first (in order), and its inverse; both [B, T] int64.

    ``x.gather(1, perm)`` compacts a row; ``y.gather(1, dest)`` sends compact values back.
    """
    valid_i = valid.to(torch.int64)
    n_valid = valid_i.sum(-1, keepdim=True)
    rank_valid = valid_i.cumsum(-1) - 1
    rank_invalid = (1 - valid_i).cumsum(-1) - 1 + n_valid
    dest = torch.where(valid, rank_valid, rank_invalid)
    positions = torch.arange(valid.shape[1], device=valid.device).expand_as(dest)
    perm = torch.empty_like(dest).scatter_(1, dest, positions)
    return perm, dest


@functools.lru_cache(maxsize=64)
def _both_tables(
    length: int, decay: float, dtype: torch.dtype, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """m_t = ceil(t/2) as int64 [T], and d^(t - m_t + 1) = d^(floor(t/2) + 1) [T]."""
    t = torch.arange(length, dtype=torch.int64)
    half = torch.div(t + 1, 2, rounding_mode="floor")
    coef = torch.pow(torch.tensor(decay, dtype=torch.float64), (t - half + 1).to(torch.float64))
    return half.to(device), _table(coef, dtype, device)


def _both_compact(x: torch.Tensor, decay: float) -> torch.Tensor:
    """The ``both`` trace on compact rows [R, T]: P[m_t] + R_t - d^(t-m_t+1) R_{m_t-1}, m_t = ceil(t/2)."""
    length = x.shape[1]
    recent = _RecentScan.apply(x, decay)
    prefix = F.pad(torch.cumsum(x * _powers(0, length, decay, x.dtype, x.device), -1), (1, 0))
    half, coef = _both_tables(length, decay, x.dtype, x.device)
    recent_before = F.pad(recent, (1, 0)).index_select(1, half)
    return prefix.index_select(1, half) + recent - coef * recent_before


def _layout(valid: torch.Tensor) -> tuple[bool, bool, torch.Tensor]:
    """(has_holes, left_aligned, first): whether some row's valid tokens are not one contiguous
    block, whether every row's block starts at position 0, and each row's first valid index [B, 1].
    One device sync."""
    blocks = (valid[:, 1:] & ~valid[:, :-1]).sum(-1) + valid[:, 0]
    first = valid.to(torch.uint8).argmax(-1, keepdim=True)  # first maximum; 0 for an empty row
    has_holes, offset = torch.stack([(blocks > 1).any(), (first > 0).any()]).tolist()
    return has_holes, not offset, first


def _rotation(first: torch.Tensor, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Compaction of rows whose valid tokens form one block starting at ``first``: a per-row rotation."""
    positions = torch.arange(length, device=first.device)
    return (positions + first) % length, (positions - first) % length


def traced_log_ratio(log_ratio: torch.Tensor, mask: torch.Tensor, decay: float, style: str) -> torch.Tensor:
    """Traced log-ratio z_t = sum_{k <= t} w(t, k) x_k over the valid tokens of each row.

    Args:
        log_ratio: x, [B, T] floating (log pi_theta - log pi_old).
        mask: [B, T] of 0/1 (bool, int or float); 1 marks response tokens, holes are skipped.
        decay: d = gamma * lam in [0, 1].
        style: ``"recent"`` (w = d^(t-k)) or ``"both"`` (w = max(d^(t-k), d^k)).

    Returns:
        z, [B, T] in the dtype of ``log_ratio``; 0 at masked positions. Differentiable in ``log_ratio``.
    """
    get_trace_style(style)
    check_2d("log_ratio", log_ratio)
    check_float("log_ratio", log_ratio)
    check_shape("mask", mask, log_ratio.shape, "[B, T] like log_ratio")
    check_mask("mask", mask)
    check_finite("log_ratio", log_ratio)
    decay = check_decay(decay)
    return _traced_log_ratio(log_ratio, mask, decay, style)


def _traced_log_ratio(log_ratio: torch.Tensor, mask: torch.Tensor, decay: float, style: str) -> torch.Tensor:
    """``traced_log_ratio`` without input checks (the caller has validated)."""
    mask_f = mask.to(log_ratio.dtype)
    x = log_ratio * mask_f
    if style == "recent" and decay == 0.0:
        return x  # w(t, k) = [t == k]: exact, and bitwise the plain log-ratio
    valid = mask.bool()
    has_holes, left_aligned, first = _layout(valid)
    trace = _RecentScan.apply if style == "recent" else _both_compact
    # Zeros in front of one contiguous block add nothing to a causal recurrence (``recent``); both
    # styles need no compaction when blocks start at 0, and a rotation when they start elsewhere.
    if not has_holes and (left_aligned or style == "recent"):
        return trace(x, decay) * mask_f
    perm, dest = _rotation(first, x.shape[1]) if not has_holes else _compaction(valid)
    return trace(x.gather(1, perm), decay).gather(1, dest) * mask_f


def _decay_pow(exponent: torch.Tensor, decay: float) -> torch.Tensor:
    """d^e for a float tensor of exponents e >= 0 (0^0 = 1), as exp(e log d): one cheap pass."""
    if decay == 0.0:
        return (exponent == 0).to(exponent.dtype)
    if decay == 1.0:
        return torch.ones_like(exponent)
    # Clamped so the result stays a normal number (subnormals are slow); the error is < 1e-19.
    return torch.exp((exponent * math.log(decay)).clamp(min=_log_floor(exponent.dtype)))


def _geometric(count: torch.Tensor, decay: float) -> torch.Tensor:
    """G(m) = sum_{j < m} d^j = (1 - d^m) / (1 - d) for a float tensor of counts m >= 1.

    expm1 keeps 1 - d^m accurate when d^m is close to 1 (d near 1, small m).
    """
    if decay == 0.0:
        return torch.ones_like(count)
    if decay == 1.0:
        return count
    return torch.expm1((count * math.log(decay)).clamp(min=_log_floor(count.dtype))) / (decay - 1.0)


def _log_floor(dtype: torch.dtype) -> float:
    """log of sqrt(smallest normal): exp() of anything above stays a normal number."""
    return 0.5 * math.log(torch.finfo(dtype).tiny)


def trace_weights(
    mask: torch.Tensor, decay: float, style: str, *, dtype: torch.dtype | None = None
) -> torch.Tensor:
    """Per-token total trace weight W_k = sum_{t >= k, t valid} w(t, k), in closed form.

    Args:
        mask: [B, T] of 0/1; holes are skipped (k and t count valid tokens only).
        decay: d in [0, 1].
        style: ``"recent"`` or ``"both"``.
        dtype: output dtype; default the mask's dtype if floating, else torch's default dtype.

    Returns:
        W, [B, T] (no gradient; it depends on the mask only), 0 at masked positions.
        ``recent``: W_k = G(n-k); ``both``: W_k = G(min(k, n-1-k)+1) + max(0, n-1-2k) d^k,
        with n the number of valid tokens in the row and G(m) = (1-d^m)/(1-d) (m for d = 1).
    """
    get_trace_style(style)
    check_mask("mask", mask)
    decay = check_decay(decay)
    if dtype is None:
        dtype = mask.dtype if mask.is_floating_point() else torch.get_default_dtype()
    return _trace_weights(mask, decay, style, dtype)


def _trace_weights(mask: torch.Tensor, decay: float, style: str, dtype: torch.dtype) -> torch.Tensor:
    """``trace_weights`` without input checks, computed in ``dtype``."""
    valid = mask.bool()
    valid_f = valid.to(torch.promote_types(dtype, torch.float32))  # exact token counts
    n = valid_f.sum(-1, keepdim=True)
    k = (valid_f.cumsum(-1) - 1).clamp(min=0)
    if style == "recent":
        weights = _geometric((n - k).clamp(min=1), decay)
    else:
        weights = _geometric(torch.minimum(k, n - 1 - k).clamp(min=0) + 1, decay)
        weights = weights + (n - 1 - 2 * k).clamp(min=0) * _decay_pow(k, decay)
    return (weights * valid_f).to(dtype)
