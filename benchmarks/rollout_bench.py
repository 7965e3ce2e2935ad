"""Rollout throughput: `RolloutEngine` (vLLM) vs `transformers.generate`, and refit time.

Both generate the same number of tokens from the same random Qwen2 model and prompts: P prompts x
n samples x T new tokens (EOS ignored / suppressed so every sample has exactly T tokens), sampling at
temperature 1 over the full vocabulary. transformers runs the P*n sequences as one left-padded batch
with its KV cache; vLLM gets the same requests at once. Refit: in memory from an iterator of HF-named
tensors, and from an HF directory on disk.

The two engines take turns (`--repeats` rounds) and each reports its best round, so a burst of load
from other processes hits both alike; tokens per CPU-second (process time) is reported too, since it
barely moves with the load of a shared machine.

    .venv/bin/python benchmarks/rollout_bench.py                    # hidden 256, 4 layers
    .venv/bin/python benchmarks/rollout_bench.py --hidden 128 --layers 2   # the test-suite tiny model
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def make_prompts(count: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [f"Q: {rng.randint(1, 999)}+{rng.randint(1, 999)}*{rng.randint(1, 99)}=? A:" for _ in range(count)]


def build_model(out: Path, hidden: int, layers: int, seed: int) -> None:
    from pipeline.data.tiny_model import save_random_hf_model, tiny_hf_config

    heads = hidden // 32  # head_dim 32 (vLLM's CPU attention needs >= 32)
    config = tiny_hf_config(
        "qwen2",
        hidden_size=hidden,
        intermediate_size=hidden * 3,
        num_layers=layers,
        num_heads=heads,
        num_kv_heads=max(1, heads // 2),
    )
    save_random_hf_model(out, config, seed=seed)


def transformers_runner(
    model_dir: Path, prompts: list[str], n: int, max_tokens: int, eos: bool
) -> Callable[[], int]:
    """A function that runs one `transformers.generate` round and returns the tokens generated.

    With `eos`, a row's tokens count up to and including its first EOS (the padding transformers
    keeps generating for finished rows is not counted).
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    tok.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    batch = tok(prompts, return_tensors="pt", padding=True)
    kwargs = dict(
        do_sample=True,
        temperature=1.0,
        top_k=0,
        top_p=1.0,
        max_new_tokens=max_tokens,
        min_new_tokens=0 if eos else max_tokens,  # max_tokens suppresses EOS: equal work per row
        num_return_sequences=n,
        pad_token_id=tok.pad_token_id,
    )

    @torch.no_grad()
    def run() -> int:
        out = model.generate(**batch, **kwargs)[:, batch["input_ids"].shape[1] :]
        if not eos:
            return out.numel()
        is_eos = out == tok.eos_token_id
        first = torch.where(is_eos.any(1), is_eos.int().argmax(1) + 1, out.shape[1])
        return int(first.sum())

    return run


def vllm_runner(engine, prompts: list[str], n: int, max_tokens: int, eos: bool) -> Callable[[], int]:
    from pipeline.rollout import SamplingSettings

    settings = SamplingSettings(max_tokens=max_tokens, temperature=1.0, seed=0, ignore_eos=not eos)

    def run() -> int:
        return sum(len(s.response_ids) for s in engine.generate(prompts, n, settings))

    return run


def timed(run: Callable[[], int]) -> tuple[float, float, int]:
    """(wall seconds, process CPU seconds, tokens) of one round."""
    wall, cpu = time.perf_counter(), time.process_time()
    tokens = run()
    return time.perf_counter() - wall, time.process_time() - cpu, tokens


def bench_refit(engine, model_dir: Path, repeats: int) -> tuple[float, float]:
    from safetensors.torch import load_file

    tensors = {}
    for f in sorted(model_dir.glob("*.safetensors")):
        tensors.update(load_file(f))
    it = min(engine.refit_from_iterator(tensors.items()) for _ in range(repeats))
    disk = min(engine.refit_from_dir(model_dir) for _ in range(repeats))
    return it, disk


def print_tables(args, threads: int, results: dict[str, list[tuple[float, float, int]]], refit) -> None:
    print()
    print(
        f"model: random Qwen2, hidden {args.hidden}, {args.layers} layers, head_dim 32, vocab 131, fp32; "
        f"{args.prompts} prompts x {args.samples} samples x {args.max_tokens} new tokens; "
        f"{threads} torch thread(s); {os.cpu_count()} CPU cores shared with other jobs; "
        f"best of {args.repeats} alternating rounds; "
        + ("stop at EOS, tokens = tokens kept" if args.eos else "EOS off, equal tokens")
    )
    print()
    print(
        "| engine | tokens | wall s | tokens/s | tokens per CPU-s | speed-up (tokens/s) | speed-up (per CPU-s) |"
    )
    print("|---|---|---|---|---|---|---|")
    base = None
    for name, rounds in results.items():
        wall = min(rounds, key=lambda r: r[0] / r[2])[0]  # of the fastest round
        tokens = sum(r[2] for r in rounds) / len(rounds)  # varies between rounds only with --eos
        rate = max(r[2] / r[0] for r in rounds)
        per_cpu = max(r[2] / r[1] for r in rounds)
        base = base or (rate, per_cpu)
        print(
            f"| {name} | {tokens:.0f} | {wall:.2f} | {rate:.0f} | {per_cpu:.0f} "
            f"| {rate / base[0]:.1f}x | {per_cpu / base[1]:.1f}x |"
        )
    print()
    print(f"| refit | seconds (best of {args.repeats}) |")
    print("|---|---|")
    print(f"| in memory (refit_from_iterator) | {refit[0]:.3f} |")
    print(f"| from HF dir (refit_from_dir) | {refit[1]:.3f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--samples", type=int, default=4, help="samples per prompt (group size)")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3, help="alternating rounds; best of each")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--eos",
        action="store_true",
        help="stop at EOS (the RL workload: ragged lengths; transformers pads finished rows, vLLM frees "
        "them) and count only the tokens each sample keeps; default: exactly max-tokens per sample",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="OMP/torch threads for both engines (1 on a shared box: spinning OMP workers of a "
        "multi-threaded op wait for descheduled threads, ~10x slower under load)",
    )
    args = parser.parse_args()
    # Before torch/vLLM start their thread pools; vLLM keeps an externally set OMP_NUM_THREADS.
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    import torch

    torch.set_num_threads(args.threads)
    from pipeline.rollout import RolloutEngine, SamplingSettings

    prompts = make_prompts(args.prompts, args.seed)
    with tempfile.TemporaryDirectory(prefix="rollout_bench_") as tmp:
        model_dir = Path(tmp) / "model"
        build_model(model_dir, args.hidden, args.layers, args.seed)
        hf_run = transformers_runner(model_dir, prompts, args.samples, args.max_tokens, args.eos)
        max_len = 64 + args.max_tokens
        engine = RolloutEngine(
            model_dir, dtype="float32", seed=args.seed, max_model_len=max_len, kv_cache_gb=1
        )
        try:
            vllm_run = vllm_runner(engine, prompts, args.samples, args.max_tokens, args.eos)
            engine.generate(prompts[:2], 1, SamplingSettings(max_tokens=4, seed=1))  # compiles a kernel
            results: dict[str, list[tuple[float, float, int]]] = {
                "transformers.generate": [],
                "vLLM (RolloutEngine)": [],
            }
            for _ in range(args.repeats):
                results["transformers.generate"].append(timed(hf_run))
                results["vLLM (RolloutEngine)"].append(timed(vllm_run))
            refit = bench_refit(engine, model_dir, args.repeats)
        finally:
            engine.close()
    print_tables(args, torch.get_num_threads(), results, refit)


if __name__ == "__main__":
    main()
