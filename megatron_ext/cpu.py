"""The single place that lets Megatron-Core 0.16 run without CUDA (CPU tests, laptops, CI on gloo).

Megatron-Core assumes a GPU: it calls `torch.cuda.current_device()` in ~175 places, keeps its RNG
tracker in CUDA RNG states, builds the causal mask and small bookkeeping tensors with
`device="cuda"`, and moves a few tensors with `.cuda()`. `enable_cpu_fallback()` routes each of those
to the CPU, once, and only when `torch.cuda.is_available()` is False; with a GPU it does nothing, so the
cluster path is untouched.

What it patches (all reversible with `disable_cpu_fallback()`, used by tests):
- `torch.cuda.current_device` -> "cpu" (Megatron passes it as `device=`), `torch.cuda.synchronize`,
  `torch.cuda.empty_cache` -> no-ops;
- CUDA RNG (`torch.cuda.{get,set}_rng_state`, `manual_seed[_all]`, and Megatron's
  `tensor_parallel.random._get/_set_cuda_rng_state`) -> the CPU generator, so the RNG tracker's
  `fork()` swaps CPU generator states exactly as it swaps CUDA ones;
- the causal / sliding-window masks of `FusedScaleMaskSoftmax` -> built on the CPU;
- `device="cuda"` literals in the schedules, optimizer, grad clipping, DDP buffers and TP data helpers
  -> "cpu", by giving those modules a `torch` proxy whose factory functions rewrite the device;
- `clip_grad_by_total_norm_fp32` -> the same scaling without its CUDA-tensor assertion;
- the optimizers' constructors see CPU tensors' `type()` named as CUDA ones (they sort params by it);
- `Tensor.cuda()` -> identity on the CPU (CPU-only builds raise there otherwise).
"""

from __future__ import annotations

import importlib
import types
from collections.abc import Callable
from functools import lru_cache
from typing import Any

import torch

# Megatron modules whose `device="cuda"` literals run on the CPU path (schedules, optimizer, DDP, ...).
_MODULES_WITH_CUDA_LITERALS = (
    "megatron.core.pipeline_parallel.schedules",
    "megatron.core.optimizer.clip_grads",
    "megatron.core.optimizer.optimizer",
    "megatron.core.optimizer.grad_scaler",
    "megatron.core.optimizer.distrib_optimizer",
    "megatron.core.distributed.param_and_grad_buffer",
    "megatron.core.distributed.distributed_data_parallel",
    "megatron.core.tensor_parallel.data",
    "megatron.core.utils",
)
_FACTORIES = (
    "tensor",
    "zeros",
    "ones",
    "empty",
    "full",
    "arange",
    "randn",
    "rand",
    "zeros_like",
    "empty_like",
)

_saved: dict[tuple[Any, str], Any] = {}
_active = False


def _cpu_device(device: Any) -> Any:
    """Map any CUDA device spec (str, int, torch.device) to "cpu"; leave others alone."""
    if device is None:
        return None
    if isinstance(device, int):
        return "cpu"
    if isinstance(device, str) and device.startswith("cuda"):
        return "cpu"
    if isinstance(device, torch.device) and device.type == "cuda":
        return "cpu"
    return device


def _device_rewriting(fn: Callable) -> Callable:
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        if "device" in kwargs:
            kwargs["device"] = _cpu_device(kwargs["device"])
        return fn(*args, **kwargs)

    wrapped.__name__ = getattr(fn, "__name__", "factory")
    return wrapped


class _CpuTorchProxy(types.ModuleType):
    """Stands in for `torch` inside a Megatron module: factories get device="cpu", the rest is torch."""

    def __init__(self) -> None:
        super().__init__("torch")
        for name in _FACTORIES:
            setattr(self, name, _device_rewriting(getattr(torch, name)))

    def __getattr__(self, name: str) -> Any:
        return getattr(torch, name)


@lru_cache(maxsize=32)
def _cpu_causal_mask(sq: int) -> torch.Tensor:
    """[sq, sq] bool, True above the diagonal (masked), as Megatron's get_default_causal_mask."""
    return torch.triu(torch.ones(sq, sq), diagonal=1).bool()


def _cpu_sliding_window_mask(sq: int, skv: int, window_size: tuple[int, int]) -> torch.Tensor:
    m = torch.ones(sq, skv, dtype=torch.bool)
    mu = torch.triu(m, diagonal=skv - sq - window_size[0])
    return ~torch.tril(mu, diagonal=skv - sq + window_size[1])


def _get_rng_state(*args: Any, **kwargs: Any) -> torch.Tensor:
    return torch.get_rng_state()


def _set_rng_state(new_state: torch.Tensor, *args: Any, **kwargs: Any) -> None:
    torch.set_rng_state(new_state)


def _manual_seed(seed: int) -> None:
    torch.default_generator.manual_seed(int(seed))


def _noop(*args: Any, **kwargs: Any) -> None:
    return None


def _tensor_cuda(self: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
    return self


def _clip_grad_by_total_norm_cpu(parameters, max_norm, total_norm, use_decoupled_grad: bool = False) -> None:
    """Megatron's clip_grad_by_total_norm_fp32 without its `torch.cuda.FloatTensor` assertion."""
    if isinstance(parameters, torch.Tensor):
        parameters = [parameters]
    clip_coeff = max_norm / (total_norm + 1.0e-6)
    if clip_coeff >= 1.0:
        return
    for param in parameters:
        grad = getattr(param, "decoupled_grad", None) if use_decoupled_grad else param.grad
        if grad is not None:
            grad.detach().mul_(clip_coeff)


_original_tensor_type = torch.Tensor.type


def _cuda_named_type(self: torch.Tensor, dtype: Any = None, non_blocking: bool = False, **kwargs: Any) -> Any:
    """`Tensor.type()` that names CPU tensors as their CUDA twins (only while an optimizer is built)."""
    if dtype is None and not kwargs:
        name = _original_tensor_type(self)
        return name.replace("torch.", "torch.cuda.", 1) if "cuda" not in name else name
    return _original_tensor_type(self, dtype, non_blocking, **kwargs)


def _with_cuda_type_names(init: Callable) -> Callable:
    """Megatron's optimizers sort params by `param.type() == 'torch.cuda.FloatTensor'` at construction."""

    def wrapped(*args: Any, **kwargs: Any) -> None:
        torch.Tensor.type = _cuda_named_type
        try:
            init(*args, **kwargs)
        finally:
            torch.Tensor.type = _original_tensor_type

    return wrapped


def _patch(owner: Any, name: str, value: Any) -> None:
    key = (owner, name)
    if key not in _saved:
        _saved[key] = getattr(owner, name)
    setattr(owner, name, value)


def enable_cpu_fallback() -> bool:
    """Route Megatron-Core's CUDA calls to the CPU when no GPU is present.

    Idempotent; a no-op when `torch.cuda.is_available()` is True. Returns True only on the call that
    actually patched.
    """
    global _active
    if _active or torch.cuda.is_available():
        return False
    from megatron.core.fusions import fused_softmax
    from megatron.core.optimizer import clip_grads
    from megatron.core.optimizer import optimizer as megatron_optimizer
    from megatron.core.tensor_parallel import random as tp_random
    from megatron.core.transformer import utils as transformer_utils

    _patch(torch.cuda, "current_device", lambda: "cpu")
    _patch(torch.cuda, "synchronize", _noop)
    _patch(torch.cuda, "empty_cache", _noop)
    _patch(torch.cuda, "get_rng_state", _get_rng_state)
    _patch(torch.cuda, "set_rng_state", _set_rng_state)
    _patch(torch.cuda, "manual_seed", _manual_seed)
    _patch(torch.cuda, "manual_seed_all", _manual_seed)
    _patch(torch.cuda.random, "get_rng_state", _get_rng_state)
    _patch(torch.cuda.random, "set_rng_state", _set_rng_state)
    _patch(tp_random, "_get_cuda_rng_state", _get_rng_state)
    _patch(tp_random, "_set_cuda_rng_state", _set_rng_state)
    for module in (fused_softmax, transformer_utils):
        _patch(module, "get_default_causal_mask", _cpu_causal_mask)
        _patch(module, "get_sliding_window_causal_mask", _cpu_sliding_window_mask)
    from megatron.core.optimizer.distrib_optimizer import DistributedOptimizer

    for module in (clip_grads, megatron_optimizer):
        _patch(module, "clip_grad_by_total_norm_fp32", _clip_grad_by_total_norm_cpu)
    for cls in (DistributedOptimizer, megatron_optimizer.Float16OptimizerWithFloat16Params):
        _patch(cls, "__init__", _with_cuda_type_names(cls.__init__))
    proxy = _CpuTorchProxy()
    for module_name in _MODULES_WITH_CUDA_LITERALS:
        _patch(importlib.import_module(module_name), "torch", proxy)
    _patch(torch.Tensor, "cuda", _tensor_cuda)
    _active = True
    return True


def disable_cpu_fallback() -> None:
    """Undo every patch of `enable_cpu_fallback()` (tests use it to check inertness and reversibility)."""
    global _active
    for (owner, name), original in reversed(list(_saved.items())):
        setattr(owner, name, original)
    _saved.clear()
    _active = False


def cpu_fallback_active() -> bool:
    """True while the CPU routing of `enable_cpu_fallback()` is in place."""
    return _active
