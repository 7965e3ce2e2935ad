"""traced_log_ratio and trace_weights against float64 loops, finite differences and a dense reference."""

from __future__ import annotations

import pytest
import torch

from megatron_ext.losses import trace_weights, traced_log_ratio
from megatron_ext.losses.traces import CHUNK
from tests.unit.megatron_ext.losses.reference import trace_loop, weights_loop

STYLES = ["recent", "both"]
DECAYS = [0.0, 0.5, 0.95, 1.0]
LENGTHS = [1, CHUNK - 1, CHUNK, CHUNK + 1, 2 * CHUNK + 3]


def random_mask(batch: int, length: int, seed: int) -> torch.Tensor:
    """Rows with prompt-like left padding, holes, right padding; one empty row and one full row."""
    gen = torch.Generator().manual_seed(seed)
    mask = (torch.rand(batch, length, generator=gen) > 0.25).to(torch.float64)
    mask[0, : length // 3] = 0  # prompt in front
    mask[1] = 1  # no holes
    if batch > 3:
        mask[3] = 0  # no response token at all
    return mask


@pytest.mark.parametrize("length", LENGTHS)
@pytest.mark.parametrize("style", STYLES)
@pytest.mark.parametrize("decay", DECAYS)
def test_trace_and_weights_match_loop(length: int, style: str, decay: float) -> None:
    gen = torch.Generator().manual_seed(length)
    x = torch.randn(4, length, generator=gen, dtype=torch.float64)
    mask = random_mask(4, length, seed=length + 1)
    z = traced_log_ratio(x, mask, decay, style)
    torch.testing.assert_close(z, trace_loop(x, mask, decay, style), rtol=1e-10, atol=1e-10)
    w = trace_weights(mask, decay, style)
    torch.testing.assert_close(w, weights_loop(mask, decay, style), rtol=1e-12, atol=1e-12)


def block_mask(length: int, blocks: list[tuple[int, int]]) -> torch.Tensor:
    """One contiguous response block [start, end) per row (prompt in front, padding behind)."""
    mask = torch.zeros(len(blocks), length, dtype=torch.float64)
    for row, (start, end) in enumerate(blocks):
        mask[row, start:end] = 1
    return mask


LAYOUTS = {
    "left-aligned": lambda n: [(0, n), (0, n // 2), (0, 1), (0, 0)],
    "offset": lambda n: [(n // 3, n), (1, n - 2), (0, n // 2), (n - 1, n), (0, 0)],
    "one-offset": lambda n: [(0, n), (2, n)],
}


@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("length", [CHUNK - 1, 2 * CHUNK + 3])
@pytest.mark.parametrize("style", STYLES)
def test_contiguous_layouts_match_loop(layout: str, length: int, style: str) -> None:
    """Masks without holes take the no-compaction and rotation paths."""
    mask = block_mask(length, LAYOUTS[layout](length))
    x = torch.randn(mask.shape, dtype=torch.float64, requires_grad=True)
    z = traced_log_ratio(x, mask, 0.9, style)
    torch.testing.assert_close(z, trace_loop(x.detach(), mask, 0.9, style), rtol=1e-10, atol=1e-10)
    z.sum().backward()
    torch.testing.assert_close(x.grad, weights_loop(mask, 0.9, style), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("style", STYLES)
def test_bool_and_int_masks_give_the_same_trace(style: str) -> None:
    x = torch.randn(4, 70, dtype=torch.float64)
    mask = random_mask(4, 70, seed=3)
    ref = traced_log_ratio(x, mask, 0.9, style)
    torch.testing.assert_close(traced_log_ratio(x, mask.bool(), 0.9, style), ref, rtol=0, atol=0)
    torch.testing.assert_close(traced_log_ratio(x, mask.long(), 0.9, style), ref, rtol=0, atol=0)
    assert trace_weights(mask.bool(), 0.9, style).dtype == torch.get_default_dtype()


def test_masked_positions_do_not_leak() -> None:
    x = torch.randn(2, 100, dtype=torch.float64)
    mask = random_mask(2, 100, seed=5)
    for style in STYLES:
        z = traced_log_ratio(x, mask, 0.9, style)
        x2 = torch.where(mask.bool(), x, torch.full_like(x, 1e6))
        assert torch.equal(traced_log_ratio(x2, mask, 0.9, style), z)
        assert torch.all(z[mask == 0] == 0)


def test_decay_zero_recent_is_the_log_ratio_exactly() -> None:
    x = torch.randn(3, 150)
    mask = random_mask(3, 150, seed=7).float()
    assert torch.equal(traced_log_ratio(x, mask, 0.0, "recent"), x * mask)


@pytest.mark.parametrize("style", STYLES)
def test_gradient_matches_finite_differences(style: str) -> None:
    x = torch.randn(2, CHUNK + 7, dtype=torch.float64, requires_grad=True)
    mask = random_mask(2, CHUNK + 7, seed=11)
    assert torch.autograd.gradcheck(lambda v: traced_log_ratio(v, mask, 0.9, style), (x,))


def dense_reference(x: torch.Tensor, mask: torch.Tensor, decay: float, style: str) -> torch.Tensor:
    """Float64 block-dense z = M x per row (M[t, k] = w(t, k)), for lengths the Python loop cannot reach."""
    out = torch.zeros(x.shape, dtype=torch.float64)
    d = torch.tensor(decay, dtype=torch.float64)
    for b in range(x.shape[0]):
        pos = torch.nonzero(mask[b]).flatten()
        xv = x[b, pos].double()
        n = len(pos)
        k = torch.arange(n, dtype=torch.float64)
        for start in range(0, n, 512):
            t = torch.arange(start, min(n, start + 512), dtype=torch.float64)[:, None]
            w = d ** (t - k).clamp(min=0)
            if style == "both":
                w = torch.maximum(w, d**k)
            w = torch.where(k <= t, w, 0.0)
            out[b, pos[start : start + len(t)]] = w @ xv
    return out


@pytest.mark.parametrize("style", STYLES)
def test_three_level_scan_matches_dense_reference(style: str) -> None:
    length = CHUNK * CHUNK + 2 * CHUNK + 5  # needs three scan levels
    x = torch.randn(2, length, dtype=torch.float64)
    mask = random_mask(2, length, seed=13)
    z = traced_log_ratio(x, mask, 0.997, style)
    torch.testing.assert_close(z, dense_reference(x, mask, 0.997, style), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("style", STYLES)
@pytest.mark.parametrize("decay", [0.999, 0.9, 1.0])
def test_float32_is_accurate_at_32k(style: str, decay: float) -> None:
    length = 32768
    gen = torch.Generator().manual_seed(17)
    # log-ratios of a slightly-off policy: small, with a bias so sums grow large
    x = 0.01 + 0.05 * torch.randn(2, length, generator=gen, dtype=torch.float64)
    mask = torch.ones(2, length, dtype=torch.float64)
    mask[1, :1000] = 0
    mask[1, 5000:5100] = 0
    z64 = traced_log_ratio(x, mask, decay, style)
    z32 = traced_log_ratio(x.float(), mask.float(), decay, style)
    assert torch.isfinite(z32).all()
    rel = (z32.double() - z64).abs().max() / z64.abs().max()
    assert rel <= 1e-4, f"relative error {rel:.2e}"
    w64 = trace_weights(mask, decay, style)
    w32 = trace_weights(mask.float(), decay, style)
    assert ((w32.double() - w64).abs() / w64.clamp(min=1e-300)).max() <= 1e-5


@pytest.mark.parametrize("style", STYLES)
def test_closed_form_weights_equal_trace_of_ones(style: str) -> None:
    """sum_t z_t with x = e_k is W_k, checked via autograd of sum(z) (the transposed trace)."""
    x = torch.zeros(3, 200, dtype=torch.float64, requires_grad=True)
    mask = random_mask(3, 200, seed=19)
    traced_log_ratio(x, mask, 0.97, style).sum().backward()
    torch.testing.assert_close(x.grad, trace_weights(mask, 0.97, style), rtol=1e-10, atol=1e-10)
