"""HF architecture -> mapping, keyed by the exact `architectures[0]` string of config.json."""

from __future__ import annotations

from typing import Any

from conversion.arch.base import ArchMapping
from conversion.arch.llama import LLAMA
from conversion.arch.qwen2 import QWEN2

MAPPINGS: dict[str, ArchMapping] = {m.architecture: m for m in (QWEN2, LLAMA)}


def config_dict(hf_config: Any) -> dict[str, Any]:
    """A plain dict from a transformers PretrainedConfig or an already-loaded config.json dict."""
    if isinstance(hf_config, dict):
        return hf_config
    if hasattr(hf_config, "to_dict"):
        return hf_config.to_dict()
    raise TypeError(
        f"hf_config must be a dict or a transformers PretrainedConfig, got {type(hf_config).__name__}"
    )


def get_mapping(hf_config: Any) -> ArchMapping:
    """The mapping of `architectures[0]`; unknown or missing architectures fail with the supported list."""
    cfg = config_dict(hf_config)
    archs = cfg.get("architectures")
    if not archs:
        raise ValueError(f"HF config has no 'architectures' entry; supported: {sorted(MAPPINGS)}")
    if archs[0] not in MAPPINGS:
        raise ValueError(f"unsupported architecture {archs[0]!r}; supported: {sorted(MAPPINGS)}")
    return MAPPINGS[archs[0]]
