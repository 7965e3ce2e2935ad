"""Megatron-Core extensions for GRPO-λ: the loss library, TP-aware log-probs, model provider, train step, checkpoints."""
