"""HF <-> Megatron-Core checkpoint conversion (files and in-memory export for refit).

- `hf_to_megatron(hf_dir, out_dir, tp=, pp=, dtype=, force=)`: HF safetensors -> model-only
  dist_checkpointing checkpoint (megatron_ext.checkpoint layout) + `hf/` side files.
- `megatron_to_hf(megatron_dir, out_dir, dtype=, force=, max_shard_size=)`: any TP/PP -> HF dir.
- `export_hf_weights(model_chunks, hf_config, bucket_size_mb=, groups=)`: (hf_name, tensor) from a
  live TP/PP model, collective over the model-parallel group.
- `verify_logits(hf_dir, megatron_dir, prompts=, tol=)`: logits parity with transformers.
- `get_mapping(hf_config)`: the per-architecture mapping (Qwen2ForCausalLM, LlamaForCausalLM).
CLI: `python -m conversion {hf-to-megatron,megatron-to-hf,verify}` (console script `grpo-convert`).
"""

from conversion.convert import hf_to_megatron, megatron_to_hf
from conversion.export import export_hf_weights
from conversion.registry import get_mapping
from conversion.verify import verify_logits

__all__ = ["export_hf_weights", "get_mapping", "hf_to_megatron", "megatron_to_hf", "verify_logits"]
