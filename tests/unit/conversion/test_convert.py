"""HF -> Megatron checkpoint -> HF through the files path, and every error path of the CLI."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from conversion.__main__ import main
from conversion.convert import hf_to_megatron, megatron_to_hf
from conversion.dist_io import DcpChunkReader
from tests.unit.conversion.conftest import build_hf, load_all
from tests.unit.conversion.test_layout import qkv_reference


def _tmp_leftovers(root):
    return [p.name for p in root.iterdir() if ".tmp-" in p.name or ".old-" in p.name]


@pytest.mark.parametrize("tp,pp", [(1, 1), (2, 1), (1, 2), (2, 2)])
def test_round_trip_is_bit_identical(hf_dir, tmp_path, tp, pp):
    meg, back = tmp_path / "meg", tmp_path / "back"
    hf_to_megatron(hf_dir, meg, tp=tp, pp=pp, bucket_size_mb=1, progress=False)
    megatron_to_hf(meg, back, max_shard_size="100KB", progress=False)
    src, out = load_all(hf_dir), load_all(back)
    cfg = json.loads((hf_dir / "config.json").read_text())
    if cfg["tie_word_embeddings"]:
        src.pop("lm_head.weight", None)
    assert sorted(out) == sorted(src)
    for name, t in src.items():
        assert out[name].dtype == t.dtype and torch.equal(out[name], t), name
    for f in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        assert (back / f).read_bytes() == (hf_dir / f).read_bytes()
    meta = json.loads((meg / "grpo_meta.json").read_text())
    assert meta["layout"]["tp"] == tp and meta["layout"]["pp"] == pp and not meta["has_optimizer"]
    assert (meg / "COMPLETE").is_file() and not _tmp_leftovers(tmp_path)


def test_megatron_side_layout_against_independent_reference(tmp_path):
    """Stored tensors: layer-stacked, fused QKV per KV group, [gate; up], vocab padded with zeros."""
    hf = build_hf(tmp_path / "hf", "qwen2", False, shard=None)
    hf_to_megatron(hf, tmp_path / "meg", tp=2, progress=False)
    src, cfg = load_all(hf), json.loads((hf / "config.json").read_text())
    reader = DcpChunkReader(tmp_path / "meg")
    emb = reader.read("embedding.word_embeddings.weight")
    assert emb.shape[0] % 256 == 0 and emb.shape[0] - 256 < cfg["vocab_size"]  # multiple of 128*TP, minimal
    assert (
        torch.equal(emb[: cfg["vocab_size"]], src["model.embed_tokens.weight"])
        and not emb[cfg["vocab_size"] :].any()
    )
    qkv = reader.read("decoder.layers.self_attention.linear_qkv.weight")
    bias = reader.read("decoder.layers.self_attention.linear_qkv.bias")
    fc1 = reader.read("decoder.layers.mlp.linear_fc1.weight")
    norm = reader.read("decoder.layers.mlp.linear_fc1.layer_norm_weight")
    n_q, n_kv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    assert qkv.shape[0] == cfg["num_hidden_layers"]
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        a = [src[p + f"self_attn.{x}_proj.weight"] for x in "qkv"]
        b = [src[p + f"self_attn.{x}_proj.bias"] for x in "qkv"]
        assert torch.equal(qkv[i], qkv_reference(*a, n_q, n_kv))
        assert torch.equal(bias[i], qkv_reference(*b, n_q, n_kv))
        assert torch.equal(
            fc1[i], torch.cat([src[p + "mlp.gate_proj.weight"], src[p + "mlp.up_proj.weight"]])
        )
        assert torch.equal(norm[i], src[p + "post_attention_layernorm.weight"])
    assert torch.equal(reader.read("output_layer.weight")[: cfg["vocab_size"]], src["lm_head.weight"])


def test_dtype_conversion_matches_torch_cast(qwen_dir, tmp_path):
    hf_to_megatron(qwen_dir, tmp_path / "meg", dtype="bf16", progress=False)
    megatron_to_hf(tmp_path / "meg", tmp_path / "back", progress=False)
    src, out = load_all(qwen_dir), load_all(tmp_path / "back")
    assert all(out[n].dtype == torch.bfloat16 and torch.equal(out[n], src[n].to(torch.bfloat16)) for n in out)
    assert json.loads((tmp_path / "back" / "config.json").read_text())["dtype"] == "bfloat16"
    megatron_to_hf(tmp_path / "meg", tmp_path / "back32", dtype="fp32", progress=False)
    out32 = load_all(tmp_path / "back32")
    assert all(out32[n].dtype == torch.float32 and torch.equal(out32[n], out[n].float()) for n in out)


def _run_cli(capsys, *argv) -> tuple[int, str]:
    code = main([str(a) for a in argv])
    return code, capsys.readouterr().err


def test_cli_round_trip_and_force(qwen_dir, tmp_path, capsys):
    to_megatron = ("hf-to-megatron", "--hf-dir", qwen_dir, "--out", tmp_path / "m", "--no-progress")
    assert _run_cli(capsys, *to_megatron, "--tp", 2)[0] == 0
    code, err = _run_cli(capsys, *to_megatron)
    assert code == 2 and "not empty" in err and "--force" in err
    assert _run_cli(capsys, *to_megatron, "--force")[0] == 0
    to_hf = ("megatron-to-hf", "--megatron-dir", tmp_path / "m", "--out", tmp_path / "h", "--no-progress")
    assert _run_cli(capsys, *to_hf)[0] == 0
    assert set(load_all(tmp_path / "h")) <= set(load_all(qwen_dir))


def _expect_error(capsys, root, pattern, *argv):
    before = sorted(p.name for p in root.iterdir())
    code, err = _run_cli(capsys, *argv)
    assert code == 2, err
    assert pattern in err, err
    assert sorted(p.name for p in root.iterdir()) == before  # nothing half-written left behind


def test_cli_error_paths(tmp_path, capsys):
    hf = build_hf(tmp_path / "hf", "llama", False)
    out = tmp_path / "out"
    base = ("hf-to-megatron", "--hf-dir", hf, "--out", out, "--no-progress")
    _expect_error(capsys, tmp_path, "TP=4 does not divide num_key_value_heads=2", *base, "--tp", 4)
    _expect_error(capsys, tmp_path, "PP=3 does not divide num_hidden_layers=4", *base, "--pp", 3)
    _expect_error(capsys, tmp_path, "unknown dtype 'fp8'", *base, "--dtype", "fp8")
    _expect_error(
        capsys, tmp_path, "HF config not found", "hf-to-megatron", "--hf-dir", tmp_path / "nope", "--out", out
    )
    # a weight beyond fp16's range
    shard = sorted(hf.glob("model-*.safetensors"))[0]
    tensors = load_file(shard)
    name = next(iter(tensors))
    big = dict(tensors)
    big[name] = tensors[name].clone()
    big[name].view(-1)[0] = 1e6
    save_file(big, shard, metadata={"format": "pt"})
    _expect_error(capsys, tmp_path, f"float16 cannot hold {name}", *base, "--dtype", "fp16")
    save_file(tensors, shard, metadata={"format": "pt"})
    # unsupported architecture
    cfg_path = hf / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg_path.write_text(json.dumps({**cfg, "architectures": ["GPT2LMHeadModel"]}))
    _expect_error(capsys, tmp_path, "unsupported architecture 'GPT2LMHeadModel'", *base)
    cfg_path.write_text(json.dumps(cfg))
    # corrupt shard, then missing shard
    data = shard.read_bytes()
    shard.write_bytes(b"\x00\x01" * 40)
    _expect_error(capsys, tmp_path, "corrupt", *base)
    shard.unlink()
    _expect_error(capsys, tmp_path, "missing shard", *base)
    shard.write_bytes(data)
    assert _run_cli(capsys, *base)[0] == 0


def test_cli_megatron_side_errors(qwen_dir, tmp_path, capsys):
    meg = tmp_path / "meg"
    hf_to_megatron(qwen_dir, meg, progress=False)
    back = ("megatron-to-hf", "--megatron-dir", meg, "--out", tmp_path / "back", "--no-progress")
    data_file = sorted(meg.glob("*.distcp"))[0]
    data = data_file.read_bytes()
    data_file.write_bytes(data[: len(data) // 2])
    _expect_error(capsys, tmp_path, "truncated or corrupt", *back)
    data_file.write_bytes(data)
    (meg / "COMPLETE").unlink()
    _expect_error(capsys, tmp_path, "incomplete", *back)
    (meg / "COMPLETE").write_text("ok\n")
    (meg / "hf" / "config.json").rename(tmp_path / "config.json")
    _expect_error(capsys, tmp_path, "missing file hf/config.json", *back)
    (tmp_path / "config.json").rename(meg / "hf" / "config.json")
    (tmp_path / "empty").mkdir()
    _expect_error(capsys, tmp_path, "HF config", *back, "--hf-config-dir", tmp_path / "empty")
    _expect_error(
        capsys,
        tmp_path,
        "nope does not exist",
        "megatron-to-hf",
        "--megatron-dir",
        tmp_path / "nope",
        "--out",
        tmp_path / "back",
    )
    assert _run_cli(capsys, *back)[0] == 0


def test_generation_config_written_when_source_has_none(qwen_dir, tmp_path):
    hf_to_megatron(qwen_dir, tmp_path / "meg", progress=False)
    side = tmp_path / "side"
    side.mkdir()
    for f in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        (side / f).write_bytes((qwen_dir / f).read_bytes())
    megatron_to_hf(tmp_path / "meg", tmp_path / "back", hf_config_dir=side, progress=False)
    cfg = json.loads((side / "config.json").read_text())
    gen = json.loads((tmp_path / "back" / "generation_config.json").read_text())
    assert gen == {k: cfg[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id")}
    from transformers import GenerationConfig

    assert GenerationConfig.from_pretrained(tmp_path / "back").eos_token_id == cfg["eos_token_id"]
