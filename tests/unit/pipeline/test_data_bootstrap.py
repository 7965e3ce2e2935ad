"""Bootstrap of the tiny model: training format, caching, and (slow) the RL starting-accuracy window.

The accuracy window is checked independently of the bootstrap's own measurement: the saved model is
reloaded with transformers, sampled at temperature 1.0 on fresh arithmetic problems with a plain
sampling loop written here, and graded with `math_reward`.
"""

from __future__ import annotations

import json
import time

import pytest
import torch

from pipeline.data.arithmetic import make_arithmetic_problems
from pipeline.data.bootstrap import (
    BootstrapSettings,
    _encode_example,
    bootstrap_tiny_model,
    read_bootstrap_metadata,
)
from pipeline.data.prompts import PLAIN_TEMPLATE
from pipeline.rewards import math_reward, shutdown_pool

TINY = BootstrapSettings(max_steps=4, probe_every=2, target_accuracy=1.01, probe_problems=4, final_problems=8)


@pytest.fixture(scope="module", autouse=True)
def _pool():
    yield
    shutdown_pool()


def test_training_example_format(tmp_path):
    from pipeline.data.tiny_model import build_char_tokenizer

    tok = build_char_tokenizer(tmp_path)
    ids, labels = _encode_example(tok, {"problem": "What is 2 + 3?", "answer": "5"})
    prompt = PLAIN_TEMPLATE.replace("{problem}", "What is 2 + 3?")
    n_prompt = len(prompt)  # one token per character
    assert tok.decode(ids[:n_prompt]) == prompt
    assert labels[:n_prompt] == [-100] * n_prompt
    assert tok.decode(labels[n_prompt:-1]) == " \\boxed{5}"
    assert labels[-1] == tok.eos_token_id and ids[n_prompt:] == labels[n_prompt:]


def test_bootstrap_writes_a_loadable_model_and_caches(tmp_path):
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    out = bootstrap_tiny_model(tmp_path / "m", seed=0, settings=TINY)
    meta = read_bootstrap_metadata(out)
    assert meta["steps"] == 4 and len(meta["history"]) == 2
    assert 0.0 <= meta["accuracy"] <= 1.0
    cfg = AutoConfig.from_pretrained(out)
    assert cfg.architectures == ["Qwen2ForCausalLM"]
    assert cfg.hidden_size // cfg.num_attention_heads >= 32
    tok = AutoTokenizer.from_pretrained(out)
    assert (out / "tokenizer.json").is_file() and (out / "generation_config.json").is_file()
    assert tok.decode(tok("\\boxed{12}")["input_ids"]) == "\\boxed{12}"
    AutoModelForCausalLM.from_pretrained(out)

    stamp = (out / "model.safetensors").stat().st_mtime_ns
    t0 = time.perf_counter()
    assert bootstrap_tiny_model(tmp_path / "m", seed=0, settings=TINY) == out
    assert time.perf_counter() - t0 < 1.0
    assert (out / "model.safetensors").stat().st_mtime_ns == stamp  # not rebuilt

    bootstrap_tiny_model(tmp_path / "m", seed=1, settings=TINY)  # other settings: rebuilt in place
    assert read_bootstrap_metadata(out)["settings"]["seed"] == 1
    assert read_bootstrap_metadata(out)["config_hash"] != meta["config_hash"]
    assert not list(tmp_path.glob(".m.tmp-*"))


def test_bootstrap_rejects_small_heads(tmp_path):
    with pytest.raises(ValueError, match="head_dim"):
        bootstrap_tiny_model(tmp_path / "m", settings=BootstrapSettings(hidden_size=64, num_heads=4))
    with pytest.raises(FileNotFoundError, match="bootstrap.json"):
        read_bootstrap_metadata(tmp_path)


@torch.no_grad()
def _reference_accuracy(model_dir, n: int, seed: int) -> float:
    """Temperature-1 sampling with an explicit loop (no KV cache, no generate()), graded by math_reward."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    tok = AutoTokenizer.from_pretrained(model_dir)
    meta = read_bootstrap_metadata(model_dir)
    problems = make_arithmetic_problems(n, seed=777_000 + seed, difficulty=meta["settings"]["difficulty"])
    gen = torch.Generator().manual_seed(seed)
    correct = 0
    for p in problems:
        ids = tok(PLAIN_TEMPLATE.replace("{problem}", p["problem"]))["input_ids"]
        out: list[int] = []
        for _ in range(16):
            logits = model(torch.tensor([ids + out])).logits[0, -1].double()
            nxt = int(torch.multinomial(torch.softmax(logits, -1), 1, generator=gen))
            if nxt == tok.eos_token_id:
                break
            out.append(nxt)
        correct += math_reward(tok.decode(out), p["answer"]) == 1.0
    return correct / n


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_bootstrap_accuracy_window(tmp_path, seed: int):
    t0 = time.perf_counter()
    out = bootstrap_tiny_model(tmp_path / "m", seed=seed)
    elapsed = time.perf_counter() - t0
    meta = read_bootstrap_metadata(out)
    reference = _reference_accuracy(out, 200, seed)
    print(
        json.dumps(
            {
                "seed": seed,
                "accuracy": meta["accuracy"],
                "reference": reference,
                "steps": meta["steps"],
                "s": elapsed,
            }
        )
    )
    assert 0.10 <= meta["accuracy"] <= 0.60
    assert 0.10 <= reference <= 0.60


def test_cached_pipeline_bootstrap_in_window():
    """Fast check of the model the CPU pipeline actually starts from, when `prepare` has cached it."""
    from pipeline.stages.prepare import bootstrap_cache_dir

    cached = bootstrap_cache_dir() / "qwen2-seed0-difficulty1"
    want = BootstrapSettings(seed=0, difficulty=1).config_hash()
    if not (cached / "bootstrap.json").is_file() or read_bootstrap_metadata(cached)["config_hash"] != want:
        pytest.skip(f"no up-to-date bootstrap cached in {cached} (the slow window test builds its own)")
    assert 0.10 <= read_bootstrap_metadata(cached)["accuracy"] <= 0.60
    assert 0.10 <= _reference_accuracy(cached, 100, 0) <= 0.60
