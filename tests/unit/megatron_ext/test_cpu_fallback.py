"""megatron_ext.cpu: inert with CUDA present, idempotent and reversible without it."""

from __future__ import annotations

from unittest import mock

import pytest
import torch

from megatron_ext import cpu


@pytest.fixture
def clean_fallback():
    """Run with the fallback off; restore whatever state the process had before."""
    was_active = cpu.cpu_fallback_active()
    cpu.disable_cpu_fallback()
    yield
    cpu.disable_cpu_fallback()
    if was_active:
        cpu.enable_cpu_fallback()


def test_inert_when_cuda_is_available(clean_fallback):
    from megatron.core.tensor_parallel import random as tp_random

    originals = (
        torch.cuda.current_device,
        torch.cuda.synchronize,
        tp_random._get_cuda_rng_state,
        torch.Tensor.cuda,
    )
    with mock.patch.object(torch.cuda, "is_available", return_value=True):
        assert cpu.enable_cpu_fallback() is False
    assert not cpu.cpu_fallback_active()
    now = (
        torch.cuda.current_device,
        torch.cuda.synchronize,
        tp_random._get_cuda_rng_state,
        torch.Tensor.cuda,
    )
    assert all(a is b for a, b in zip(originals, now))


@pytest.mark.skipif(
    torch.cuda.is_available(), reason="checks the CPU routing; a GPU machine leaves CUDA alone"
)
def test_routes_cuda_calls_to_cpu_and_is_idempotent(clean_fallback):
    from megatron.core.fusions import fused_softmax
    from megatron.core.tensor_parallel import random as tp_random

    original_current_device = torch.cuda.current_device
    assert cpu.enable_cpu_fallback() is True
    assert cpu.enable_cpu_fallback() is False  # idempotent
    assert torch.cuda.current_device() == "cpu"
    torch.cuda.synchronize()
    torch.manual_seed(5)
    state = tp_random._get_cuda_rng_state()
    assert torch.equal(state, torch.get_rng_state())
    a = torch.rand(3)
    tp_random._set_cuda_rng_state(state)
    assert torch.equal(torch.rand(3), a)  # set restores the CPU generator
    mask = fused_softmax.get_default_causal_mask(4)
    assert mask.device.type == "cpu" and torch.equal(mask, torch.triu(torch.ones(4, 4), 1).bool())
    assert torch.ones(2).cuda().device.type == "cpu"
    cpu.disable_cpu_fallback()
    assert torch.cuda.current_device is original_current_device
    assert not cpu.cpu_fallback_active()


@pytest.mark.skipif(torch.cuda.is_available(), reason="CPU-only check")
def test_rng_tracker_fork_swaps_cpu_generator(clean_fallback):
    """Megatron's RNG tracker keeps its own stream on the CPU generator and restores the default one."""
    from megatron.core.tensor_parallel.random import CudaRNGStatesTracker

    cpu.enable_cpu_fallback()
    tracker = CudaRNGStatesTracker()
    torch.manual_seed(0)
    tracker.add("model-parallel-rng", 1234)
    before = torch.get_rng_state()
    with tracker.fork("model-parallel-rng"):
        inside = torch.rand(4)
    assert torch.equal(torch.get_rng_state(), before)
    torch.manual_seed(1234)
    assert torch.equal(torch.rand(4), inside)
