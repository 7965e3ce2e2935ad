"""Conversion throughput and memory on a Qwen2.5-1.5B-shaped model with random bf16 weights (no download).

Builds the HF directory by streaming random tensors into planned safetensors shards, then times, each
in a fresh subprocess (peak RSS = that process's ru_maxrss):
  hf-to-megatron (TP=2), megatron-to-hf, and a plain copy of the same safetensors bytes (shutil).
Targets: each direction <= 3x the copy; peak RSS <= 1 GB above the largest tensor. Prints a markdown
table. Files go under --workdir (default: a temp dir, ~13 GB) and are deleted at the end.
Timings depend on the machine's load and page cache (files just written are usually cached).

    .venv/bin/python benchmarks/conversion_bench.py [--layers 28] [--workdir DIR] [--keep]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
QWEN25_15B = {
    "architectures": ["Qwen2ForCausalLM"],
    "model_type": "qwen2",
    "vocab_size": 151936,
    "hidden_size": 1536,
    "intermediate_size": 8960,
    "num_hidden_layers": 28,
    "num_attention_heads": 12,
    "num_key_value_heads": 2,
    "max_position_embeddings": 32768,
    "rms_norm_eps": 1e-6,
    "rope_theta": 1000000.0,
    "hidden_act": "silu",
    "tie_word_embeddings": True,
    "initializer_range": 0.02,
    "use_sliding_window": False,
    "dtype": "bfloat16",
    "bos_token_id": 1,
    "eos_token_id": 1,
}

# Each step runs in a fresh interpreter: imports first (not timed), then the timed call; peak RSS is
# the child's ru_maxrss (the parent stays small, so the forked child does not inherit a large RSS).
# Dirty pages are flushed before each step (os.sync, untimed) so one step's writeback does not
# throttle the next; "+ sync" also counts flushing the step's own output to disk.
CHILD = r"""
import resource, sys, time, json
{imports}
import os
os.sync()
t0 = time.perf_counter()
{body}
dt = time.perf_counter() - t0
os.sync()
synced = time.perf_counter() - t0
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({{"seconds": dt, "synced_seconds": synced, "peak_rss_mb": rss}}))
"""


def run_child(body: str, imports: str = "import torch") -> dict:
    code = CHILD.format(imports=imports, body=body)
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False, env=env)
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-4000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def build_random_hf(out: Path, cfg: dict) -> None:
    """Write random bf16 weights shard by shard (memory: one tensor), config and a tokenizer."""
    import torch

    from conversion.arch.base import hf_tensor_shapes
    from conversion.registry import get_mapping
    from conversion.safetensors_io import PlannedShardWriter
    from pipeline.data.tiny_model import build_char_tokenizer

    out.mkdir(parents=True)
    mapping = get_mapping(cfg)
    dims = mapping.dims(cfg)
    plan = [item for s in mapping.param_specs(dims, dims.vocab_size) for item in hf_tensor_shapes(s, dims)]
    writer = PlannedShardWriter(out, plan, torch.bfloat16, 2 * 10**9)
    gen = torch.Generator().manual_seed(0)
    for name, shape in plan:
        writer.write(name, (0.02 * torch.randn(shape, generator=gen)).to(torch.bfloat16))
    writer.finish()
    (out / "config.json").write_text(json.dumps(cfg, indent=2))
    (out / "generation_config.json").write_text(json.dumps({"bos_token_id": 1, "eos_token_id": 1}))
    build_char_tokenizer(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=28)
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="conv_bench_", dir=args.workdir))
    cfg = {**QWEN25_15B, "num_hidden_layers": args.layers}
    try:
        build = run_child(
            f"build_random_hf(pathlib.Path({str(work / 'hf')!r}), {cfg!r})",
            imports="import pathlib\nfrom benchmarks.conversion_bench import build_random_hf",
        )
        # The largest tensor: the bf16 embedding, padded to a multiple of 128*TP rows on the Megatron side.
        largest = 2 * cfg["hidden_size"] * (-(-cfg["vocab_size"] // 256) * 256)
        size = sum(f.stat().st_size for f in (work / "hf").glob("*.safetensors"))
        print(f"built random HF model: {size / 1e9:.2f} GB in {build['seconds']:.1f}s", file=sys.stderr)
        rows = {
            "plain copy (shutil.copyfile)": run_child(
                f"src, dst = pathlib.Path({str(work / 'hf')!r}), pathlib.Path({str(work / 'copy')!r})\n"
                "dst.mkdir()\n"
                "[shutil.copyfile(f, dst / f.name) for f in sorted(src.glob('*.safetensors'))]",
                imports="import shutil, pathlib, torch",
            ),
            "hf-to-megatron (TP=2)": run_child(
                f"hf_to_megatron({str(work / 'hf')!r}, {str(work / 'meg')!r}, tp=2, progress=False)",
                imports="from conversion.convert import hf_to_megatron",
            ),
            "megatron-to-hf": run_child(
                f"megatron_to_hf({str(work / 'meg')!r}, {str(work / 'back')!r}, progress=False)",
                imports="from conversion.convert import megatron_to_hf",
            ),
        }
        copy_s = rows["plain copy (shutil.copyfile)"]["seconds"]
        print(
            f"\nQwen2.5-1.5B shape, {args.layers} layers, bf16, {size / 1e9:.2f} GB of weights; "
            f"largest tensor {largest / 1e6:.0f} MB\n"
        )
        copy_synced = rows["plain copy (shutil.copyfile)"]["synced_seconds"]
        print(
            "| step | seconds | x copy | seconds + sync | x copy + sync | peak RSS (MB) | RSS - largest tensor (MB) |"
        )
        print("|---|---:|---:|---:|---:|---:|---:|")
        for name, r in rows.items():
            print(
                f"| {name} | {r['seconds']:.1f} | {r['seconds'] / copy_s:.2f} | {r['synced_seconds']:.1f} | "
                f"{r['synced_seconds'] / copy_synced:.2f} | {r['peak_rss_mb']:.0f} | "
                f"{r['peak_rss_mb'] - largest / 2**20:.0f} |"
            )
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
