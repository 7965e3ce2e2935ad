"""Math rewards: boxed-answer extraction, math-verify equivalence, and time-limited batch scoring."""

from pipeline.rewards.math_reward import (
    answers_equivalent,
    format_reward,
    last_boxed,
    math_reward,
    normalize_answer,
)
from pipeline.rewards.pool import score_batch, shutdown_pool

__all__ = [
    "answers_equivalent",
    "format_reward",
    "last_boxed",
    "math_reward",
    "normalize_answer",
    "score_batch",
    "shutdown_pool",
]
