"""Evaluation metrics and report on a scripted engine (the real vLLM engine: tests/integration)."""

from __future__ import annotations

import argparse
import json

import pytest

from pipeline.evaluation import evaluate_benchmark, format_eval_table, write_eval_report
from pipeline.rewards import shutdown_pool
from pipeline.rollout import Sample


class _Tok:
    """One token per character; no chat template (so prompts use the plain template)."""

    chat_template = None

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [ord(c) for c in text]}


class _ScriptedEngine:
    """Answers prompt i, sample j with script[(problem of i, temperature > 0)][j]."""

    def __init__(self, script: dict, length_of: dict):
        self.tokenizer = _Tok()
        self.script, self.length_of, self.calls = script, length_of, []

    def generate(self, prompts, n, sampling):
        self.calls.append((len(prompts), n, sampling.temperature))
        out = []
        for i, p in enumerate(prompts):
            problem = p.split("\n")[0].removeprefix("Question: ")
            for j in range(n):
                text = self.script[(problem, sampling.temperature > 0)][j]
                finish = "length" if self.length_of.get(text) else "stop"
                ids = list(range(len(text)))
                out.append(Sample(i, [1], ids, [0.0] * len(ids), text, finish, sample_index=j))
        return out[::-1]  # order must not matter


@pytest.fixture(scope="module", autouse=True)
def _pool():
    yield
    shutdown_pool()


def _rows():
    return [
        {"id": "a", "problem": "What is 1 + 1?", "answer": "2"},
        {"id": "b", "problem": "What is 2 + 2?", "answer": "4"},
        {"id": "c", "problem": "What is 3 + 3?", "answer": "6"},
    ]


def test_evaluate_benchmark_metrics():
    script = {
        ("What is 1 + 1?", True): ["\\boxed{2}", "\\boxed{2}", "\\boxed{3}", "\\boxed{2}"],
        ("What is 2 + 2?", True): ["\\boxed{5}", "no idea", "\\boxed{4}", "\\boxed{5}"],
        ("What is 3 + 3?", True): ["\\boxed{6}"] * 4,
        ("What is 1 + 1?", False): ["\\boxed{2}"],
        ("What is 2 + 2?", False): ["\\boxed{5}"],
        ("What is 3 + 3?", False): ["\\boxed{6}"],
    }
    engine = _ScriptedEngine(script, {"no idea": True})
    m = evaluate_benchmark(
        engine,
        _rows(),
        samples=4,
        template="plain",
        max_new_tokens=8,
        temperature=1.0,
        seed=0,
        max_model_len=512,
    )
    per_problem = [3 / 4, 1 / 4, 1.0]
    assert m["pass@1"] == pytest.approx(sum(per_problem) / 3)
    assert m["greedy_accuracy"] == pytest.approx(2 / 3)
    all_texts = [t for (_, hot), ts in script.items() if hot for t in ts]
    assert m["mean_response_tokens"] == pytest.approx(sum(map(len, all_texts)) / 12)
    assert m["truncation_rate"] == pytest.approx(1 / 12)
    assert m["no_answer_rate"] == pytest.approx(1 / 12)
    assert m["problems"] == 3 and m["samples"] == 4 and m["prompts_too_long"] == 0
    assert engine.calls == [(3, 4, 1.0), (3, 1, 0.0)]


def test_greedy_is_reused_at_temperature_zero_and_long_prompts_score_zero():
    rows = _rows() + [{"id": "d", "problem": "x" * 600, "answer": "1"}]
    script = {(r["problem"], False): ["\\boxed{" + r["answer"] + "}"] * 2 for r in rows}
    engine = _ScriptedEngine(script, {})
    m = evaluate_benchmark(
        engine,
        rows,
        samples=2,
        template="plain",
        max_new_tokens=8,
        temperature=0.0,
        seed=0,
        max_model_len=512,
    )
    assert engine.calls == [(3, 2, 0.0)]  # one generate call, the too-long prompt left out
    assert m["prompts_too_long"] == 1
    assert m["pass@1"] == pytest.approx(3 / 4) and m["greedy_accuracy"] == pytest.approx(3 / 4)


def test_write_eval_report(tmp_path):
    results = {
        "model_dir": "/m",
        "settings": {
            "samples": 4,
            "temperature": 1.0,
            "max_new_tokens": 8,
            "template": "plain",
            "seed": 0,
            "limit": None,
        },
        "benchmarks": {
            "arithmetic": {
                "problems": 3.0,
                "samples": 4.0,
                "pass@1": 0.6667,
                "pass@1_stderr": 0.2,
                "greedy_accuracy": 0.5,
                "mean_response_tokens": 9.25,
                "truncation_rate": 0.0833,
                "no_answer_rate": 0.0833,
            }
        },
    }
    paths = write_eval_report(results, tmp_path / "eval")
    assert json.loads(paths["json"].read_text()) == results
    md = paths["markdown"].read_text()
    assert "| arithmetic | 3 | 4 | 0.667 | 0.200 | 0.500 | 9.2 | 0.083 | 0.083 |" in md
    assert format_eval_table(results) in md
    assert not list((tmp_path / "eval").glob(".*tmp*"))


def test_evaluate_cli_settings(tmp_path):
    from pipeline.stages.evaluate import add_evaluate_arguments, resolve_eval_settings

    (tmp_path / "config.json").write_text(json.dumps({"max_position_embeddings": 512}))
    parser = argparse.ArgumentParser()
    parser.add_argument("--config")
    parser.add_argument("overrides", nargs="*")
    add_evaluate_arguments(parser)
    args = parser.parse_args(
        [
            "--model-dir",
            str(tmp_path),
            "--benchmarks",
            "math500,aime24",
            "--samples",
            "3",
            "--eval-file",
            "math500=/d/m.parquet",
        ]
    )
    settings, benchmarks, files = resolve_eval_settings(args)
    assert benchmarks == ["math500", "aime24"] and settings.samples == 3
    assert settings.max_model_len == 512 and files == {"math500": ["/d/m.parquet"]}
    with pytest.raises(ValueError, match="no benchmarks"):
        resolve_eval_settings(parser.parse_args(["--model-dir", str(tmp_path)]))
    with pytest.raises(FileNotFoundError, match="config.json"):
        resolve_eval_settings(
            parser.parse_args(["--model-dir", str(tmp_path / "x"), "--benchmarks", "aime24"])
        )


def test_generate_calls_stay_within_one_prefill_step():
    from pipeline.evaluation import MAX_PROMPT_TOKENS_PER_CALL, MAX_SEQUENCES_PER_CALL, _chunks

    assert _chunks([1000, 1000, 100], 2) == [[0], [1], [2]]
    chunks = _chunks([5] * 200, 1)
    assert [len(c) for c in chunks] == [MAX_SEQUENCES_PER_CALL, 200 - MAX_SEQUENCES_PER_CALL]
    lengths = [37, 80, 12, 300, 5, 64] * 20
    for n in (1, 3, 8):
        chunks = _chunks(lengths, n)
        assert sorted(i for c in chunks for i in c) == list(range(len(lengths)))
        for c in chunks:
            assert len(c) * n <= MAX_SEQUENCES_PER_CALL
            assert sum(lengths[i] for i in c) * n <= MAX_PROMPT_TOKENS_PER_CALL or len(c) == 1
