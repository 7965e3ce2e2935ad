"""Dataset loaders: training sets and benchmarks mapped to one schema `{id, problem, answer}`.

Each entry of `DATASETS` names the source's real hub id, config and column layout. Rows load through
`datasets.load_dataset(hub_name, config, split=...)`, or, offline, from local json/jsonl/parquet files
with the same columns (`load_dataset("json" | "parquet", data_files=...)`). `arithmetic` is synthetic.

| name          | hub id                                   | columns used                                   |
|---------------|------------------------------------------|------------------------------------------------|
| gsm8k         | openai/gsm8k (config main)               | question, answer ("... #### 72")               |
| math          | DigitalLearningGmbH/MATH-lighteval       | problem, solution (answer = its last \\boxed)  |
| deepscaler    | agentica-org/DeepScaleR-Preview-Dataset  | problem, answer                                |
| dapo17k       | BytedTsinghua-SIA/DAPO-Math-17k          | prompt (chat list), reward_model.ground_truth, extra_info.index |
| aime24        | HuggingFaceH4/aime_2024                  | id, problem, answer                            |
| math500       | HuggingFaceH4/MATH-500                   | unique_id, problem, answer                     |
| olympiadbench | Hothan/OlympiadBench (OE_TO_maths_en_COMP: open-ended, text-only, maths, English) | id, question, context, final_answer (list) |
| minerva       | math-ai/minervamath                      | question, answer                               |
| amc23         | math-ai/amc23                            | question, answer (a float)                     |
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pipeline.data.arithmetic import arithmetic_split
from pipeline.rewards.math_reward import last_boxed

Row = dict
Converter = Callable[[Row, int, str], "dict | None"]

# DAPO-Math-17k wraps every problem in this instruction (its own "Answer:" format, not \boxed{}).
_DAPO_WRAPPER = re.compile(
    r"^Solve the following math problem step by step\..*?\n\n(?P<problem>.*?)\n\n"
    r"Remember to put your answer on its own line after \"Answer:\"\.?\s*$",
    re.DOTALL,
)
ARITHMETIC_DEFAULT_SIZES = {"train": 4096, "eval": 256, "test": 256}


def _strip_dollars(s: str) -> str:
    s = s.strip()
    while len(s) >= 2 and s.startswith("$") and s.endswith("$"):
        s = s[1:-1].strip()
    return s


def _number_text(x) -> str:
    """27.0 -> "27", 2.5 -> "2.5", "27" -> "27" (some benchmarks store integer answers as floats)."""
    if isinstance(x, float) and x.is_integer():
        return str(int(x))
    return str(x).strip()


def _gsm8k(row: Row, i: int, split: str) -> dict:
    answer = row["answer"].split("####")[-1].strip().replace(",", "")
    return {"id": f"gsm8k-{split}-{i}", "problem": row["question"], "answer": answer}


def _math(row: Row, i: int, split: str) -> dict | None:
    answer = last_boxed(row["solution"])
    if answer is None:
        return None
    return {"id": f"math-{split}-{i}", "problem": row["problem"], "answer": answer.strip()}


def _deepscaler(row: Row, i: int, split: str) -> dict:
    return {"id": f"deepscaler-{i}", "problem": row["problem"], "answer": _strip_dollars(row["answer"])}


def _dapo(row: Row, i: int, split: str) -> dict:
    content = row["prompt"][0]["content"]
    m = _DAPO_WRAPPER.match(content)
    problem = m.group("problem").strip() if m else content.strip()
    index = row["extra_info"]["index"]
    return {"id": f"dapo17k-{index}", "problem": problem, "answer": row["reward_model"]["ground_truth"]}


def _aime24(row: Row, i: int, split: str) -> dict:
    return {"id": f"aime24-{row['id']}", "problem": row["problem"], "answer": _number_text(row["answer"])}


def _math500(row: Row, i: int, split: str) -> dict:
    return {"id": f"math500-{row['unique_id']}", "problem": row["problem"], "answer": row["answer"]}


def _olympiadbench(row: Row, i: int, split: str) -> dict:
    context = (row.get("context") or "").strip()
    problem = f"{context}\n\n{row['question']}" if context else row["question"]
    answer = ", ".join(_strip_dollars(a) for a in row["final_answer"])
    return {"id": f"olympiadbench-{row['id']}", "problem": problem, "answer": answer}


def _minerva(row: Row, i: int, split: str) -> dict:
    return {"id": f"minerva-{i}", "problem": row["question"], "answer": _strip_dollars(row["answer"])}


def _amc23(row: Row, i: int, split: str) -> dict:
    return {"id": f"amc23-{i}", "problem": row["question"], "answer": _number_text(row["answer"])}


@dataclass(frozen=True)
class DatasetSpec:
    """Where a dataset lives on the hub and how its rows map to {id, problem, answer}."""

    hub_name: str
    hub_config: str | None
    splits: tuple[str, ...]
    columns: tuple[str, ...]
    """Source columns the converter reads (checked on load, for a clear error on a wrong file)."""
    convert: Converter
    dedupe: bool = False
    """Drop rows whose problem text repeats (DAPO-Math-17k ships each problem many times)."""


DATASETS: dict[str, DatasetSpec] = {
    "gsm8k": DatasetSpec("openai/gsm8k", "main", ("train", "test"), ("question", "answer"), _gsm8k),
    "math": DatasetSpec(
        "DigitalLearningGmbH/MATH-lighteval", "default", ("train", "test"), ("problem", "solution"), _math
    ),
    "deepscaler": DatasetSpec(
        "agentica-org/DeepScaleR-Preview-Dataset", None, ("train",), ("problem", "answer"), _deepscaler
    ),
    "dapo17k": DatasetSpec(
        "BytedTsinghua-SIA/DAPO-Math-17k",
        None,
        ("train",),
        ("prompt", "reward_model", "extra_info"),
        _dapo,
        dedupe=True,
    ),
    "aime24": DatasetSpec("HuggingFaceH4/aime_2024", None, ("train",), ("id", "problem", "answer"), _aime24),
    "math500": DatasetSpec(
        "HuggingFaceH4/MATH-500", None, ("test",), ("unique_id", "problem", "answer"), _math500
    ),
    "olympiadbench": DatasetSpec(
        "Hothan/OlympiadBench",
        "OE_TO_maths_en_COMP",
        ("train",),
        ("id", "question", "final_answer"),
        _olympiadbench,
    ),
    "minerva": DatasetSpec("math-ai/minervamath", None, ("test",), ("question", "answer"), _minerva),
    "amc23": DatasetSpec("math-ai/amc23", None, ("test",), ("question", "answer"), _amc23),
}
VALID_NAMES = sorted([*DATASETS, "arithmetic"])


def get_dataset_spec(name: str) -> DatasetSpec:
    """The spec of a hub dataset by exact name (ValueError listing the valid names otherwise)."""
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; valid: {VALID_NAMES}")
    return DATASETS[name]


def _local_format(files: list[str]) -> str:
    suffixes = {Path(f).suffix.lower() for f in files}
    formats = {".json": "json", ".jsonl": "json", ".parquet": "parquet"}
    if len(suffixes) != 1 or next(iter(suffixes)) not in formats:
        raise ValueError(f"local dataset files must all be one of {sorted(formats)}; got {sorted(suffixes)}")
    return formats[next(iter(suffixes))]


def _load_rows(name: str, spec: DatasetSpec, split: str, local_files: list[str] | None):
    import datasets

    if local_files:
        files = [str(f) for f in local_files]
        missing = [f for f in files if not Path(f).is_file()]
        if missing:
            raise FileNotFoundError(f"dataset {name!r}: local files not found: {missing}")
        return datasets.load_dataset(_local_format(files), data_files=files, split="train")
    if split not in spec.splits:
        raise ValueError(
            f"dataset {name!r} ({spec.hub_name}) has no split {split!r}; valid: {list(spec.splits)}"
        )
    return datasets.load_dataset(spec.hub_name, spec.hub_config, split=split)


def load_dataset_split(
    name: str,
    *,
    split: str,
    local_files: list[str] | None = None,
    limit: int | None = None,
    arithmetic_difficulty: int = 1,
    shuffle_seed: int = 0,
) -> list[dict]:
    """Rows {id, problem, answer} of one split of dataset `name` (exact name, see `VALID_NAMES`).

    local_files: json/jsonl/parquet files with the source's own columns (all rows are used; `split`
    only names them in ids). limit: keep the first `limit` rows. `arithmetic` takes its size from
    `limit` (default `ARITHMETIC_DEFAULT_SIZES[split]`), its level from `arithmetic_difficulty`, and
    its seed from `shuffle_seed`; other datasets ignore those two.
    """
    if limit is not None and limit < 0:
        raise ValueError(f"dataset limit must be >= 0 or None, got {limit}")
    if name == "arithmetic":
        if local_files:
            raise ValueError("dataset 'arithmetic' is synthetic; it takes no local files")
        if split not in ARITHMETIC_DEFAULT_SIZES:
            raise ValueError(
                f"unknown split {split!r} of dataset 'arithmetic'; valid: {sorted(ARITHMETIC_DEFAULT_SIZES)}"
            )
        n = ARITHMETIC_DEFAULT_SIZES[split] if limit is None else limit
        return arithmetic_split(split, n=n, difficulty=arithmetic_difficulty, shuffle_seed=shuffle_seed)
    spec = get_dataset_spec(name)
    table = _load_rows(name, spec, split, local_files)
    missing = [c for c in spec.columns if c not in table.column_names]
    if missing:
        raise ValueError(
            f"dataset {name!r}: columns {missing} missing (found {table.column_names}); "
            f"expected the layout of {spec.hub_name}"
        )
    rows, seen = [], set()
    for i, row in enumerate(table):
        item = spec.convert(row, i, split)
        if item is None or (spec.dedupe and item["problem"] in seen):
            continue
        seen.add(item["problem"])
        rows.append(item)
        if limit is not None and len(rows) >= limit:
            break
    return rows
