"""What a rollout asks for (`SamplingSettings`) and what it returns (`Sample`); no vLLM import here.

Seeds. Sample j of prompt i in one `generate` call is drawn with its own seed
`sample_seed(settings.seed, i, j)`, so a sample depends on (seed, i, j) and the weights only, never on
which other prompts share the batch (up to the float rounding of different batch shapes). The caller
varies `settings.seed` between iterations (e.g. run seed + iteration); the same seed and prompts give
the same samples.
"""

from __future__ import annotations

from dataclasses import dataclass, field

_MASK64 = (1 << 64) - 1
# vLLM seeds a torch.Generator per request; a non-negative int31 is valid everywhere.
_SEED_RANGE = 1 << 31


@dataclass(frozen=True)
class SamplingSettings:
    """How responses are sampled; mirrors the `rollout` section of the experiment config."""

    max_tokens: int
    """Most response tokens per sample (the config's `rollout.max_new_tokens`)."""
    temperature: float = 1.0
    """Softmax temperature T; 0 means greedy decoding."""
    top_p: float = 1.0
    """Nucleus sampling mass in (0, 1]; 1 keeps the whole vocabulary."""
    top_k: int = -1
    """Keep the k most likely tokens; -1 (or 0) keeps all."""
    stop: tuple[str, ...] = ()
    """Stop strings; the stop string is kept at the end of `Sample.text` and of the token ids."""
    seed: int = 0
    """Base seed of the per-sample seeds (see the module docstring)."""
    ignore_eos: bool = False
    """Keep sampling past EOS up to max_tokens (benchmarks: equal work per sample); not for training."""

    def __post_init__(self) -> None:
        if isinstance(self.stop, str):
            raise TypeError(
                f"SamplingSettings.stop must be a sequence of strings, got the string {self.stop!r}"
            )
        object.__setattr__(self, "stop", tuple(self.stop))
        if self.max_tokens < 1:
            raise ValueError(f"SamplingSettings.max_tokens must be >= 1, got {self.max_tokens}")
        if self.temperature < 0:
            raise ValueError(f"SamplingSettings.temperature must be >= 0, got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"SamplingSettings.top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < -1:
            raise ValueError(f"SamplingSettings.top_k must be -1 (off), 0 (off) or >= 1, got {self.top_k}")
        if any(not isinstance(s, str) or not s for s in self.stop):
            raise ValueError(f"SamplingSettings.stop must hold non-empty strings, got {list(self.stop)!r}")

    @property
    def truncates_support(self) -> bool:
        """True when top-p/top-k remove tokens from the sampling distribution (see `RolloutEngine`)."""
        return self.temperature > 0 and (self.top_p < 1.0 or self.top_k > 0)


@dataclass
class Sample:
    """One sampled response.

    `response_logprobs[t]` is log mu(response_ids[t] | prompt, response[:t]) under the distribution
    the token was drawn from (see `RolloutEngine` for the exact definition); it has the length of
    `response_ids`.
    """

    prompt_index: int
    prompt_ids: list[int]
    response_ids: list[int]
    response_logprobs: list[float]
    text: str
    finish_reason: str
    """"stop" (EOS, a stop token or a stop string) or "length" (hit max_tokens or max_model_len)."""
    sample_index: int = 0
    """j in 0..n-1 among the samples of the same prompt."""
    stop_reason: int | str | None = field(default=None)
    """The stop string or stop token id that ended the response; None for EOS or length."""


def _splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def sample_seed(seed: int, prompt_index: int, sample_index: int) -> int:
    """Seed of sample `sample_index` of prompt `prompt_index`: a SplitMix64 hash into [0, 2^31).

    Hashing (rather than `seed + index`) keeps the streams of neighbouring base seeds apart: with
    `seed + i`, base seed 1 prompt 0 would reuse base seed 0 prompt 1's samples.
    """
    if min(prompt_index, sample_index) < 0:
        raise ValueError(f"indices must be >= 0, got prompt {prompt_index}, sample {sample_index}")
    h = _splitmix64(seed & _MASK64)
    h = _splitmix64(h ^ prompt_index)
    h = _splitmix64(h ^ (sample_index * 0x632BE59BD9B4E019 & _MASK64))
    return h % _SEED_RANGE
