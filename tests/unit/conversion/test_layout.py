"""The pure layout transforms and the per-architecture mapping, against loop references and transformers."""

from __future__ import annotations

import pytest
import torch

from conversion import layout
from conversion.arch.base import hf_tensor_shapes, to_hf, to_megatron
from conversion.registry import MAPPINGS, get_mapping
from pipeline.data.tiny_model import tiny_hf_config


def qkv_reference(q, k, v, n_q, n_kv):
    """Megatron's grouped QKV row by row: for each KV group g, its q heads, then k_g, then v_g."""
    d = q.shape[0] // n_q
    rows = []
    for g in range(n_kv):
        for j in range(n_q // n_kv):
            head = g * (n_q // n_kv) + j
            rows += [q[head * d + i] for i in range(d)]
        rows += [k[g * d + i] for i in range(d)]
        rows += [v[g * d + i] for i in range(d)]
    return torch.stack(rows)


@pytest.mark.parametrize("n_q,n_kv,d", [(6, 2, 4), (4, 4, 3), (8, 1, 2)])
@pytest.mark.parametrize("bias", [False, True])
def test_fuse_qkv_matches_loop_reference_and_splits_back(n_q, n_kv, d, bias):
    h = 5
    shape = () if bias else (h,)
    q, k, v = (torch.randn(n * d, *shape, dtype=torch.float64) for n in (n_q, n_kv, n_kv))
    fused = layout.fuse_qkv(q, k, v, n_q, n_kv)
    assert torch.equal(fused, qkv_reference(q, k, v, n_q, n_kv))
    q2, k2, v2 = layout.split_qkv(fused, n_q, n_kv)
    assert torch.equal(q2, q) and torch.equal(k2, k) and torch.equal(v2, v)


def test_qkv_tp_shards_are_contiguous_kv_groups():
    """TP rank t's block of the global fused QKV = the fused QKV of its own KV groups."""
    n_q, n_kv, d, h, tp = 6, 2, 4, 3, 2
    q, k, v = torch.randn(n_q * d, h), torch.randn(n_kv * d, h), torch.randn(n_kv * d, h)
    fused = layout.fuse_qkv(q, k, v, n_q, n_kv)
    for t in range(tp):
        qs, ks, vs = (torch.chunk(x, tp)[t] for x in (q, k, v))
        assert torch.equal(torch.chunk(fused, tp)[t], layout.fuse_qkv(qs, ks, vs, n_q // tp, n_kv // tp))


def test_qkv_errors_name_the_problem():
    with pytest.raises(ValueError, match="not a multiple of num_key_value_heads"):
        layout.fuse_qkv(torch.zeros(6, 2), torch.zeros(4, 2), torch.zeros(4, 2), 3, 2)
    with pytest.raises(ValueError, match="not a multiple"):
        layout.split_qkv(torch.zeros(7, 2), 4, 2)


@pytest.mark.parametrize("tp", [1, 2, 4])
def test_fc1_tp_shards_round_trip(tp):
    f, h = 8, 3
    gate, up = torch.randn(f, h), torch.randn(f, h)
    fc1 = layout.fuse_gate_up(gate, up)
    assert torch.equal(fc1[:f], gate) and torch.equal(fc1[f:], up)
    shards = [layout.fc1_tp_shard(fc1, tp, r) for r in range(tp)]
    for r, s in enumerate(shards):  # rank r holds [gate rows of block r; up rows of block r]
        b = f // tp
        assert torch.equal(s, torch.cat([gate[r * b : (r + 1) * b], up[r * b : (r + 1) * b]]))
    assert torch.equal(layout.fc1_from_tp_shards(shards), fc1)


def test_pad_and_unpad_vocab():
    w = torch.randn(131, 4)
    p = layout.pad_vocab(w, 256)
    assert p.shape == (256, 4) and torch.equal(p[:131], w) and not p[131:].any()
    assert torch.equal(layout.unpad_vocab(p, 131), w)
    with pytest.raises(ValueError, match="smaller than the vocab"):
        layout.pad_vocab(w, 100)


def test_registry_is_keyed_by_exact_architecture():
    assert sorted(MAPPINGS) == ["LlamaForCausalLM", "Qwen2ForCausalLM"]
    assert get_mapping({"architectures": ["Qwen2ForCausalLM"]}).architecture == "Qwen2ForCausalLM"
    for bad in (["MistralForCausalLM"], ["qwen2forcausallm"]):
        with pytest.raises(ValueError, match=r"supported: \['LlamaForCausalLM', 'Qwen2ForCausalLM'\]"):
            get_mapping({"architectures": bad})
    with pytest.raises(ValueError, match="no 'architectures'"):
        get_mapping({"model_type": "qwen2"})


@pytest.mark.parametrize("arch,tied", [("qwen2", True), ("qwen2", False), ("llama", False), ("llama", True)])
def test_specs_cover_exactly_the_transformers_parameters(arch, tied):
    """The mapping's HF names and shapes are exactly transformers' own parameters (lm_head when untied)."""
    from transformers import AutoModelForCausalLM

    cfg = tiny_hf_config(arch, tie_word_embeddings=tied, vocab_size=137, intermediate_size=136)
    model = AutoModelForCausalLM.from_config(cfg)
    want = {n: tuple(p.shape) for n, p in model.named_parameters()}  # tied lm_head appears once
    cfg_dict = {**cfg.to_dict(), "architectures": [type(model).__name__]}
    mapping = get_mapping(cfg_dict)
    dims = mapping.dims(cfg_dict)
    got = dict(item for s in mapping.param_specs(dims, 256) for item in hf_tensor_shapes(s, dims))
    assert got == want


def test_to_megatron_and_back_is_identity_for_every_spec():
    cfg = {
        **tiny_hf_config("qwen2", tie_word_embeddings=False).to_dict(),
        "architectures": ["Qwen2ForCausalLM"],
    }
    mapping = get_mapping(cfg)
    dims = mapping.dims(cfg)
    for spec in mapping.param_specs(dims, 256):
        hf = [(n, torch.randn(s)) for n, s in hf_tensor_shapes(spec, dims)]
        meg = to_megatron(spec, dims, [t for _, t in hf])
        assert tuple(meg.shape) == spec.shape
        back = to_hf(spec, dims, meg)
        assert [n for n, _ in back] == [n for n, _ in hf]
        assert all(torch.equal(a, b) for (_, a), (_, b) in zip(back, hf))


def test_unsupported_settings_fail_clearly():
    cfg = {**tiny_hf_config("llama").to_dict(), "architectures": ["LlamaForCausalLM"], "mlp_bias": True}
    with pytest.raises(ValueError, match="mlp_bias"):
        get_mapping(cfg).dims(cfg)
    cfg = {**tiny_hf_config("qwen2").to_dict(), "architectures": ["Qwen2ForCausalLM"], "hidden_act": "gelu"}
    with pytest.raises(ValueError, match="hidden_act"):
        get_mapping(cfg).dims(cfg)
