"""Names of every choice the loss library offers, and the input checks shared by its functions.

Each registry maps an exact name to a one-line description. Looking up an unknown name raises a
``ValueError`` that lists the valid names; dispatch on the name happens in the module that implements
the choice (``policy.py`` for variants and KL estimators, ``traces.py`` for trace styles,
``aggregation.py`` for aggregation modes).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence

import torch


class Registry(Mapping[str, str]):
    """A read-only mapping ``name -> description`` whose lookups fail with the list of valid names."""

    def __init__(self, kind: str, entries: dict[str, str]) -> None:
        self.kind = kind
        self._entries = dict(entries)

    def __getitem__(self, name: str) -> str:
        if not isinstance(name, str) or name not in self._entries:
            raise ValueError(f"unknown {self.kind} {name!r}; valid names: {', '.join(self._entries)}")
        return self._entries[name]

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def check(self, name: str) -> str:
        """Return ``name`` if it is registered, else raise ``ValueError`` listing the valid names."""
        self[name]
        return name


VARIANTS = Registry(
    "loss variant",
    {
        "grpo": "token-level clipped surrogate with r_t = exp(logp_t - old_logp_t)",
        "epsilon-trace": "clipped surrogate with rho_t = exp(z_t), z = traced log-ratio",
        "epsilon-weight": "grpo term at k weighted by W_k = sum_{t>=k} w(t, k)",
    },
)
TRACE_STYLES = Registry(
    "trace style",
    {
        "recent": "w(t, k) = d^(t-k)",
        "both": "w(t, k) = max(d^(t-k), d^k)",
    },
)
KL_ESTIMATORS = Registry(
    "KL estimator",
    {
        "k1": "log pi - log pi_ref",
        "k3": "exp(log pi_ref - log pi) - (log pi_ref - log pi) - 1",
    },
)
AGGREGATIONS = Registry(
    "aggregation mode",
    {
        "token-mean": "sum over valid tokens / number of valid tokens (of the global batch if given)",
        "seq-mean-token-mean": "mean over sequences of the per-sequence token mean",
        "seq-mean-token-sum": "mean over sequences of the per-sequence token sum",
    },
)
WEIGHT_NORMS = Registry(
    "weight normalisation",
    {
        "none": "use W_k as is",
        "mean": "divide W_k by its mean over the response",
    },
)


def get_variant(name: str) -> str:
    """Validate a loss variant name."""
    return VARIANTS.check(name)


def get_trace_style(name: str) -> str:
    """Validate a trace style name."""
    return TRACE_STYLES.check(name)


def get_kl_estimator(name: str) -> str:
    """Validate a KL estimator name."""
    return KL_ESTIMATORS.check(name)


def get_aggregation(name: str) -> str:
    """Validate an aggregation mode name."""
    return AGGREGATIONS.check(name)


def get_weight_norm(name: str) -> str:
    """Validate a weight normalisation name."""
    return WEIGHT_NORMS.check(name)


# ---------------------------------------------------------------------------------------------------
# Input checks. Each names the offending argument so the caller sees which tensor is wrong.


def check_tensor(name: str, value: object) -> torch.Tensor:
    """Raise ``TypeError`` unless ``value`` is a tensor."""
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    return value


def check_shape(name: str, tensor: torch.Tensor, shape: Sequence[int], what: str) -> None:
    """Raise ``ValueError`` unless ``tensor.shape == shape``; ``what`` names the layout, e.g. ``[B, T]``."""
    check_tensor(name, tensor)
    if tuple(tensor.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {what} = {tuple(shape)}, got {tuple(tensor.shape)}")


def check_2d(name: str, tensor: torch.Tensor) -> None:
    """Raise ``ValueError`` unless ``tensor`` is a ``[B, T]`` tensor."""
    check_tensor(name, tensor)
    if tensor.dim() != 2:
        raise ValueError(f"{name} must have shape [B, T], got {tuple(tensor.shape)}")


def check_float(name: str, tensor: torch.Tensor) -> None:
    """Raise ``TypeError`` unless ``tensor`` has a floating dtype."""
    if not tensor.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {tensor.dtype}")


def check_finite(name: str, tensor: torch.Tensor) -> None:
    """Raise ``ValueError`` if ``tensor`` holds NaN or inf (one device sync)."""
    if not tensor.is_floating_point() or bool(torch.isfinite(tensor.sum())):
        return  # a NaN or inf anywhere makes the sum non-finite; one reduction is cheap
    if not bool(torch.isfinite(tensor).all()):
        n_nan = int(torch.isnan(tensor).sum())
        n_inf = int(torch.isinf(tensor).sum())
        raise ValueError(f"{name} contains non-finite values ({n_nan} NaN, {n_inf} inf)")


def check_mask(name: str, mask: torch.Tensor) -> None:
    """Raise ``ValueError`` unless ``mask`` is ``[B, T]`` and holds only 0 and 1."""
    check_2d(name, mask)
    if mask.dtype == torch.bool:
        return
    if not torch.equal(mask, mask.bool().to(mask.dtype)):
        raise ValueError(f"{name} must contain only 0 and 1")


def check_unit_interval(name: str, value: float) -> float:
    """Raise ``ValueError`` unless ``value`` is a finite number in [0, 1]; return it as a float."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number in [0, 1], got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value) or not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {value}")
    return value


def check_decay(decay: float, name: str = "decay") -> float:
    """Validate the trace decay d = gamma * lam, which must lie in [0, 1]."""
    return check_unit_interval(name, decay)
