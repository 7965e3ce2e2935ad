"""The GRPO-λ loss library: traces, advantages, per-token policy losses, aggregation (torch only).

See the module docstrings for the equations; ``registry`` lists every named choice.
"""

from megatron_ext.losses.advantages import group_advantages
from megatron_ext.losses.aggregation import aggregate
from megatron_ext.losses.importance import logprob_mismatch, truncated_is_weights
from megatron_ext.losses.policy import per_token_policy_loss
from megatron_ext.losses.registry import (
    AGGREGATIONS,
    KL_ESTIMATORS,
    TRACE_STYLES,
    VARIANTS,
    WEIGHT_NORMS,
    Registry,
    get_aggregation,
    get_kl_estimator,
    get_trace_style,
    get_variant,
    get_weight_norm,
)
from megatron_ext.losses.traces import trace_weights, traced_log_ratio

__all__ = [
    "AGGREGATIONS",
    "KL_ESTIMATORS",
    "TRACE_STYLES",
    "VARIANTS",
    "WEIGHT_NORMS",
    "Registry",
    "aggregate",
    "get_aggregation",
    "get_kl_estimator",
    "get_trace_style",
    "get_variant",
    "get_weight_norm",
    "group_advantages",
    "logprob_mismatch",
    "per_token_policy_loss",
    "trace_weights",
    "traced_log_ratio",
    "truncated_is_weights",
]
