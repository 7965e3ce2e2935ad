"""Evaluation through the real vLLM engine on a bootstrapped tiny model.

Reference: greedy accuracy recomputed with transformers' greedy decoding of the same prompts, graded by
`math_reward` (vLLM and transformers greedy agree token for token on this fp32 model, up to rare ties).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import torch

from pipeline.data import build_prompt, load_dataset_split
from pipeline.data.bootstrap import BootstrapSettings, bootstrap_tiny_model
from pipeline.evaluation import evaluate_model, write_eval_report
from pipeline.rewards import math_reward, shutdown_pool

pytestmark = [pytest.mark.integration, pytest.mark.slow]

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


@pytest.fixture(scope="module")
def model_dir() -> Path:
    """The real bootstrap, exactly as the CPU pipeline's `prepare` builds and caches it (1-3 minutes on
    2 cores the first time; the cache is keyed by the settings hash, so a stale entry is rebuilt)."""
    from pipeline.stages.prepare import bootstrap_cache_dir

    yield bootstrap_tiny_model(
        bootstrap_cache_dir() / "qwen2-seed0-difficulty1", seed=0, settings=BootstrapSettings(difficulty=1)
    )
    shutdown_pool()


@torch.no_grad()
def _hf_greedy_accuracy(model_dir: Path, rows: list[dict], max_new_tokens: int) -> float:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    tok = AutoTokenizer.from_pretrained(model_dir)
    correct = 0
    for r in rows:
        enc = tok(build_prompt(r["problem"], tok, "plain"), return_tensors="pt")
        out = model.generate(**enc, do_sample=False, max_new_tokens=max_new_tokens)
        text = tok.decode(out[0, enc["input_ids"].shape[1] :], skip_special_tokens=True)
        correct += math_reward(text, r["answer"]) == 1.0
    return correct / len(rows)


def test_evaluate_model_on_vllm(model_dir: Path, tmp_path: Path):
    results = evaluate_model(
        model_dir,
        ["arithmetic", "gsm8k"],
        samples=3,
        limit=24,
        local_files={"gsm8k": [str(FIXTURES / "gsm8k.jsonl")]},
        template="plain",
        max_new_tokens=16,
        temperature=1.0,
        seed=0,
        max_model_len=512,
        dtype="float32",
        difficulty=1,
    )
    arith, gsm = results["benchmarks"]["arithmetic"], results["benchmarks"]["gsm8k"]
    assert arith["problems"] == 24 and arith["samples"] == 3 and gsm["problems"] == 5
    for m in (arith, gsm):
        assert 0.0 <= m["pass@1"] <= 1.0 and 0.0 <= m["truncation_rate"] <= 1.0
        assert 0 < m["mean_response_tokens"] <= 16
    rows = load_dataset_split("arithmetic", split="eval", limit=24, arithmetic_difficulty=1)
    reference = _hf_greedy_accuracy(model_dir, rows, 16)
    assert abs(arith["greedy_accuracy"] - reference) <= 1 / 24 + 1e-9
    assert arith["greedy_accuracy"] > 0.0  # the warmed-up model answers some sums

    paths = write_eval_report(results, tmp_path / "eval")
    assert json.loads(paths["json"].read_text())["benchmarks"]["gsm8k"]["problems"] == 5
    assert "| arithmetic | 24 | 3 |" in paths["markdown"].read_text()


def test_evaluate_cli(model_dir: Path, tmp_path: Path, capsys):
    from pipeline.stages.evaluate import add_evaluate_arguments, evaluate_cli

    parser = argparse.ArgumentParser()
    parser.add_argument("--config")
    parser.add_argument("overrides", nargs="*")
    add_evaluate_arguments(parser)
    args = parser.parse_args(
        [
            "--model-dir",
            str(model_dir),
            "--benchmarks",
            "arithmetic",
            "--samples",
            "2",
            "--limit",
            "8",
            "--max-new-tokens",
            "16",
            "--out",
            str(tmp_path / "out"),
        ]
    )
    results = evaluate_cli(args)
    assert results["benchmarks"]["arithmetic"]["problems"] == 8
    assert (tmp_path / "out" / "results.json").is_file() and (tmp_path / "out" / "results.md").is_file()
    assert "| arithmetic | 8 | 2 |" in capsys.readouterr().out
