"""Dataset loaders on fixture files with each source's real column layout; prompts; arithmetic task."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline.data import DATASETS, VALID_NAMES, build_prompt, load_dataset_split
from pipeline.data.arithmetic import evaluate_expression, make_arithmetic_problems
from pipeline.data.prompts import PLAIN_TEMPLATE

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures"

# name -> (fixture file, split, expected number of rows, {row index: (expected answer, problem snippet)})
EXPECTED = {
    "gsm8k": ("gsm8k.jsonl", "train", 5, {0: ("72", "Natalia sold clips"), 2: ("1350", "1,200 employees")}),
    "math": (
        "math.jsonl",
        "train",
        5,
        {2: ("20\\sqrt3", "foci"), 3: ("\\frac{7}{12}", "84"), 4: ("[1,5]", "|x - 3|")},
    ),
    "deepscaler": ("deepscaler.jsonl", "train", 5, {0: ("-\\frac{2}{3}", "otimes"), 4: ("-2, 2", "x^2 = 4")}),
    "dapo17k": ("dapo17k.jsonl", "train", 3, {0: ("34", "In triangle $ABC$"), 2: ("8", "15n")}),
    "aime24": ("aime24.jsonl", "train", 5, {0: ("204", "Aya"), 3: ("45", "2x3 grid")}),
    "math500": (
        "math500.parquet",
        "test",
        5,
        {0: ("\\left( 3, \\frac{\\pi}{2} \\right)", "polar"), 4: ("\\text{Evelyn}", "cross-country")},
    ),
    "olympiadbench": (
        "olympiadbench.jsonl",
        "train",
        5,
        {1: ("10^{100}, 10^{1 / 100}", "log _{10}"), 3: ("\\frac{3}{4}", "Let $x$ satisfy")},
    ),
    "minerva": (
        "minerva.jsonl",
        "test",
        5,
        {1: ("4.5e33", "white dwarf"), 4: ("c x^{-2}-\\frac{\\cos (2 x)}{2 x^{2}}", "general solution")},
    ),
    "amc23": (
        "amc23.jsonl",
        "test",
        5,
        {0: ("27", "45$ miles"), 3: ("3159", "2^3 - 1^3"), 4: ("2.5", "non-integer")},
    ),
}


def test_every_registered_dataset_has_a_fixture():
    assert set(EXPECTED) == set(DATASETS)
    assert VALID_NAMES == sorted([*DATASETS, "arithmetic"])


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_loader_on_fixture(name: str):
    fname, split, n_rows, checks = EXPECTED[name]
    rows = load_dataset_split(name, split=split, local_files=[str(FIXTURES / fname)])
    assert len(rows) == n_rows
    for row in rows:
        assert set(row) == {"id", "problem", "answer"}
        assert all(isinstance(v, str) and v for v in row.values())
    assert len({r["id"] for r in rows}) == len(rows)
    for i, (answer, snippet) in checks.items():
        assert rows[i]["answer"] == answer
        assert snippet in rows[i]["problem"]


def test_dapo_strips_its_instruction_and_dedupes():
    rows = load_dataset_split("dapo17k", split="train", local_files=[str(FIXTURES / "dapo17k.jsonl")])
    raw = [json.loads(line) for line in (FIXTURES / "dapo17k.jsonl").read_text().splitlines()]
    assert len(raw) == 5 and len(rows) == 3
    for row in rows:
        assert "Solve the following" not in row["problem"]
        assert "Remember to put" not in row["problem"]
    assert rows[0]["id"] == "dapo17k-" + raw[0]["extra_info"]["index"]


def test_math_drops_rows_without_a_boxed_answer():
    rows = load_dataset_split("math", split="train", local_files=[str(FIXTURES / "math.jsonl")])
    assert all("forgot its box" not in r["problem"] for r in rows)


def test_olympiadbench_prepends_context():
    rows = load_dataset_split(
        "olympiadbench", split="train", local_files=[str(FIXTURES / "olympiadbench.jsonl")]
    )
    assert rows[3]["problem"].startswith("Let $x$ satisfy $4x = 3$.\n\nWhat is the value")


def test_limit():
    rows = load_dataset_split("gsm8k", split="train", local_files=[str(FIXTURES / "gsm8k.jsonl")], limit=2)
    assert [r["answer"] for r in rows] == ["72", "10"]


def test_loader_errors():
    with pytest.raises(ValueError, match="valid:.*'gsm8k'"):
        load_dataset_split("gsm8K", split="train")
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        load_dataset_split("gsm8k", split="train", local_files=["/nope.jsonl"])
    with pytest.raises(ValueError, match="no split 'validation'"):
        load_dataset_split("math500", split="validation")
    with pytest.raises(ValueError, match=r"columns \['question'\] missing"):
        load_dataset_split("gsm8k", split="train", local_files=[str(FIXTURES / "math500.parquet")])
    with pytest.raises(ValueError, match="one of"):
        load_dataset_split("gsm8k", split="train", local_files=[__file__])


# --- prompts


class _ChatTokenizer:
    chat_template = "{% for m in messages %}<|im_start|>{{ m.content }}<|im_end|>{% endfor %}"

    def apply_chat_template(self, messages, tokenize, add_generation_prompt):
        assert tokenize is False and add_generation_prompt is True
        return (
            "".join(f"<|im_start|>user\n{m['content']}<|im_end|>\n" for m in messages)
            + "<|im_start|>assistant\n"
        )


class _PlainTokenizer:
    chat_template = None


def test_build_prompt_templates():
    plain = build_prompt("What is 1 + 2?", _PlainTokenizer(), "auto")
    assert plain == PLAIN_TEMPLATE.replace("{problem}", "What is 1 + 2?")
    assert "\\boxed{}" in plain and plain.startswith("Question: What is 1 + 2?\n")
    chat = build_prompt("What is 1 + 2?", _ChatTokenizer(), "auto")
    assert chat.startswith("<|im_start|>user\nWhat is 1 + 2?\n") and "step by step" in chat
    assert chat.endswith("<|im_start|>assistant\n") and "\\boxed{}" in chat
    assert build_prompt("x", _ChatTokenizer(), "plain") == PLAIN_TEMPLATE.replace("{problem}", "x")
    assert build_prompt("x", None, "auto") == PLAIN_TEMPLATE.replace("{problem}", "x")
    with pytest.raises(ValueError, match="no chat_template"):
        build_prompt("x", _PlainTokenizer(), "chat")
    with pytest.raises(ValueError, match="valid: \\['auto', 'chat', 'plain'\\]"):
        build_prompt("x", None, "fancy")


def test_build_prompt_with_real_char_tokenizer(tmp_path):
    from pipeline.data.tiny_model import build_char_tokenizer

    tok = build_char_tokenizer(tmp_path)
    prompt = build_prompt("What is 3 + 4?", tok, "auto")
    assert prompt == PLAIN_TEMPLATE.replace("{problem}", "What is 3 + 4?")
    assert tok.decode(tok(prompt, add_special_tokens=False)["input_ids"]) == prompt


# --- arithmetic


@pytest.mark.parametrize("difficulty", [1, 2, 3, 4, 5])
def test_arithmetic_is_deterministic_and_exact(difficulty: int):
    a = make_arithmetic_problems(50, seed=3, difficulty=difficulty)
    assert a == make_arithmetic_problems(50, seed=3, difficulty=difficulty)
    assert a != make_arithmetic_problems(50, seed=4, difficulty=difficulty)
    for p in a:
        expr = p["problem"].removeprefix("What is ").removesuffix("?")
        # independent reference: Python's own integer arithmetic on the same expression
        assert p["answer"] == str(eval(expr, {"__builtins__": {}}))
        assert int(p["answer"]) == evaluate_expression(expr)


def test_arithmetic_levels_and_splits():
    level1 = make_arithmetic_problems(200, seed=0, difficulty=1)
    assert all(0 <= int(p["answer"]) <= 18 for p in level1)
    assert len({p["problem"] for p in level1}) > 50
    train = load_dataset_split("arithmetic", split="train", limit=300, arithmetic_difficulty=2)
    evals = load_dataset_split("arithmetic", split="eval", limit=300, arithmetic_difficulty=2)
    assert len(train) == len(evals) == 300
    assert {r["id"] for r in train}.isdisjoint({r["id"] for r in evals})
    assert [r["problem"] for r in train] != [r["problem"] for r in evals]
    with pytest.raises(ValueError, match="valid: \\[1, 2, 3, 4, 5\\]"):
        make_arithmetic_problems(3, seed=0, difficulty=9)
    with pytest.raises(ValueError, match="valid:"):
        load_dataset_split("arithmetic", split="dev")
