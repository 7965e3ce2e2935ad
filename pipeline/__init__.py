"""grpo-lambda pipeline: stages, rollout, rewards, data and orchestration (imports megatron_ext and conversion)."""
