"""megatron_ext.model: HF config -> TransformerConfig mapping, vocab padding, FP8 and architecture errors."""

from __future__ import annotations

import pytest
import torch

from megatron_ext.model import (
    Fp8Recipe,
    hf_architecture,
    padded_vocab_size,
    rope_parameters,
    transformer_config_from_hf,
)
from pipeline.data.tiny_model import tiny_hf_config


@pytest.mark.parametrize(
    ("vocab", "tp", "expected"),
    [(131, 1, 256), (131, 2, 256), (256, 1, 256), (257, 2, 512), (151936, 4, 152064)],
)
def test_padded_vocab_size(vocab, tp, expected):
    assert padded_vocab_size(vocab, tp) == expected
    assert expected % (128 * tp) == 0 and expected >= vocab


def test_qwen2_mapping():
    cfg = tiny_hf_config("qwen2", num_layers=4)
    tc = transformer_config_from_hf(cfg, tp=2, pp=2, params_dtype=torch.float32, use_te=False)
    assert (tc.num_layers, tc.hidden_size, tc.ffn_hidden_size) == (4, 128, 200)
    assert (tc.num_attention_heads, tc.num_query_groups, tc.kv_channels) == (4, 2, 32)
    assert tc.add_qkv_bias and not tc.add_bias_linear and tc.gated_linear_unit
    assert tc.normalization == "RMSNorm" and tc.layernorm_epsilon == 1e-6
    assert tc.activation_func is torch.nn.functional.silu
    assert (tc.tensor_model_parallel_size, tc.pipeline_model_parallel_size) == (2, 2)
    assert tc.fp8 is None


def test_llama_mapping_and_rope_parameters():
    cfg = tiny_hf_config("llama", tie_word_embeddings=False)
    tc = transformer_config_from_hf(cfg.to_dict(), tp=1, pp=1, params_dtype=torch.float32, use_te=False)
    assert not tc.add_qkv_bias
    rope = rope_parameters(cfg)
    assert rope["rope_type"] == "llama3" and rope["original_max_position_embeddings"] == 64
    assert rope["rope_theta"] == 500_000.0


def test_rope_parameters_of_transformers4_config_json():
    old = {"rope_theta": 10000.0, "rope_scaling": {"type": "llama3", "factor": 8.0}}
    assert rope_parameters(old) == {"rope_type": "llama3", "factor": 8.0, "rope_theta": 10000.0}
    assert rope_parameters({"rope_theta": 1e6, "rope_scaling": None})["rope_type"] == "default"
    with pytest.raises(ValueError, match="unsupported rope_type 'yarn'"):
        rope_parameters({"rope_theta": 1e6, "rope_scaling": {"rope_type": "yarn"}})


def test_architecture_from_config_json_and_errors():
    assert hf_architecture({"architectures": ["Qwen2ForCausalLM"]}) == "Qwen2ForCausalLM"
    assert hf_architecture(tiny_hf_config("llama")) == "LlamaForCausalLM"
    with pytest.raises(ValueError, match="unsupported architecture 'MistralForCausalLM'.*LlamaForCausalLM"):
        hf_architecture({"architectures": ["MistralForCausalLM"]})


def test_tp_must_divide_heads():
    with pytest.raises(ValueError, match="tensor_parallel=4"):
        transformer_config_from_hf(
            tiny_hf_config("qwen2"), tp=4, pp=1, params_dtype=torch.float32, use_te=False
        )
    with pytest.raises(ValueError, match="pipeline_parallel=3"):
        transformer_config_from_hf(
            tiny_hf_config("qwen2"), tp=1, pp=3, params_dtype=torch.float32, use_te=False
        )


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error raised on a machine without a GPU")
def test_fp8_without_gpu_fails_clearly():
    with pytest.raises(ValueError, match="fp8='hybrid' needs a CUDA GPU"):
        transformer_config_from_hf(
            tiny_hf_config("qwen2"),
            tp=1,
            pp=1,
            params_dtype=torch.bfloat16,
            fp8="hybrid",
            fp8_recipe=Fp8Recipe(),
        )
    with pytest.raises(ValueError, match="unknown fp8 format 'e5m2'"):
        transformer_config_from_hf(
            tiny_hf_config("qwen2"), tp=1, pp=1, params_dtype=torch.bfloat16, fp8="e5m2"
        )


def test_fp8_without_transformer_engine_fails_clearly(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    with pytest.raises(ValueError, match="needs Transformer Engine"):
        transformer_config_from_hf(
            tiny_hf_config("qwen2"), tp=1, pp=1, params_dtype=torch.bfloat16, fp8="e4m3", use_te=False
        )
