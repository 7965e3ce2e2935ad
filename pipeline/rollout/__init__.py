"""Rollouts with vLLM: sampled responses with per-token log-probs, and weight refit.

The only package that imports vLLM, and it does so lazily inside `RolloutEngine`: importing this
package costs no vLLM import. The log-prob mismatch metrics live in `megatron_ext.losses.importance`
(`logprob_mismatch`, `truncated_is_weights`).
"""

from pipeline.rollout.engine import RefitError, RolloutEngine, checkpoint_tensor_names
from pipeline.rollout.sampling import Sample, SamplingSettings, sample_seed

__all__ = [
    "RefitError",
    "RolloutEngine",
    "Sample",
    "SamplingSettings",
    "checkpoint_tensor_names",
    "sample_seed",
]
