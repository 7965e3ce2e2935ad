"""The actor on CUDA (skipped without a GPU): bf16 invariance of one update, TE spec and FP8 config.

Runs the workers of tests/integration/actor_worker.py with ACTOR_PARAMS_DTYPE=bfloat16 and
ACTOR_USE_TE=auto (Transformer Engine spec when TE is installed). bf16 tolerances: log-probs vs the HF
float64 reference ≤ 0.1 (bf16 weights and activations), loss ≤ 1e-2 and grad norm ≤ 2e-2 relative
between layouts (fp32 grad reduction and fp32 main params; only the forward is bf16).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

ROOT = Path(__file__).resolve().parents[2]
WORKER = ROOT / "tests" / "integration" / "actor_worker.py"


def _run(args: list[str], timeout: float = 900) -> None:
    env = dict(os.environ, PYTHONPATH=str(ROOT), ACTOR_PARAMS_DTYPE="bfloat16", ACTOR_USE_TE="auto")
    proc = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]


def rel(a: float, b: float) -> float:
    return abs(a - b) / max(abs(b), 1e-12)


@pytest.fixture(scope="module")
def bf16_reference(tmp_path_factory) -> tuple[Path, dict]:
    workdir = tmp_path_factory.mktemp("actor_gpu")
    _run([sys.executable, str(WORKER), "reference", str(workdir)])
    return workdir, json.loads((workdir / "reference.json").read_text())


def test_bf16_logprobs_close_to_hf(bf16_reference):
    _, ref = bf16_reference
    assert ref["parity_tp1_qwen2"] <= 0.1 and ref["parity_tp1_llama"] <= 0.1


def test_bf16_one_vs_four_microbatches(bf16_reference):
    _, ref = bf16_reference
    assert rel(ref["mb4"]["loss"], ref["mb1"]["loss"]) <= 1e-2
    assert rel(ref["mb4"]["grad_norm"], ref["mb1"]["grad_norm"]) <= 2e-2


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="TP2/PP2/DP2 need two GPUs")
def test_bf16_parallel_layouts(bf16_reference):
    workdir, ref = bf16_reference
    _run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            "2",
            str(WORKER),
            "dist",
            str(workdir),
        ]
    )
    for r in (0, 1):
        dist = json.loads((workdir / f"dist_rank{r}.json").read_text())
        for layout in ("tp2", "pp2", "dp2"):
            assert rel(dist[layout]["metrics"]["loss"], ref["mb1"]["loss"]) <= 1e-2
            assert rel(dist[layout]["metrics"]["grad_norm"], ref["mb1"]["grad_norm"]) <= 2e-2


def test_te_spec_builds_and_fp8_config():
    pytest.importorskip("transformer_engine")
    script = """
import torch
from megatron_ext.model import Fp8Recipe, build_gpt_model, transformer_config_from_hf
from megatron_ext.parallel import initialize_model_parallel
from pipeline.data.tiny_model import tiny_hf_config
initialize_model_parallel(1, 1, seed=0)
chunks = build_gpt_model(tiny_hf_config("qwen2"), tp=1, pp=1, params_dtype=torch.bfloat16, use_te=True)
names = [n for n, _ in chunks[0].named_parameters()]
assert any(n.endswith("linear_qkv.layer_norm_weight") for n in names), names
ids = torch.randint(0, 131, (2, 16), device="cuda")
out = chunks[0](ids, torch.arange(16, device="cuda").expand(2, 16), None)
assert out.shape == (2, 16, 256) and out.dtype == torch.bfloat16
cfg = transformer_config_from_hf(tiny_hf_config("qwen2"), tp=1, pp=1, params_dtype=torch.bfloat16,
                                 fp8="hybrid", fp8_recipe=Fp8Recipe(), use_te=True)
assert cfg.fp8 == "hybrid" and cfg.fp8_recipe == "delayed" and cfg.fp8_amax_history_len == 1024
"""
    _run([sys.executable, "-c", script], timeout=300)
