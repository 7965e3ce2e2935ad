"""HF -> Megatron checkpoint -> Megatron model under TP x PP (torchrun, gloo) -> HF, verified to the bit.

Each case converts a tiny random HF model, loads it with megatron_ext at TP/PP (parameters pre-filled
with NaN so anything the load misses shows), and checks in `conversion_worker.py`:
`export_hf_weights` yields exactly the HF tensors on every rank; with PP=1 the TP-gathered logits
match transformers' fp32 logits; the model saved by megatron_ext.checkpoint at that TP/PP converts
back to HF bit-identically (the trainer -> HF direction).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conversion.convert import hf_to_megatron, megatron_to_hf
from tests.unit.conversion.conftest import build_hf, load_all

pytestmark = pytest.mark.integration

WORKER = Path(__file__).with_name("conversion_worker.py")
LOGITS_TOL = 1e-4


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_worker(hf: Path, ckpt: Path, tp: int, pp: int, out: Path, save: Path | None) -> list[dict]:
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        f"--nproc-per-node={tp * pp}",
        f"--master-port={_free_port()}",
        str(WORKER),
        "--hf-dir",
        str(hf),
        "--ckpt",
        str(ckpt),
        "--tp",
        str(tp),
        "--pp",
        str(pp),
        "--out",
        str(out),
    ]
    if save is not None:
        cmd += ["--save-ckpt", str(save)]
    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parents[2])}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(tp * pp)]


def transformers_logits(hf: Path, ids: torch.Tensor) -> torch.Tensor:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(hf, dtype=torch.float32).eval()
    with torch.no_grad():
        return model(input_ids=ids).logits


def check_case(tmp: Path, arch: str, tied: bool, tp: int, pp: int) -> None:
    hf = build_hf(tmp / "hf", arch, tied)
    ckpt = hf_to_megatron(hf, tmp / "meg", tp=tp, pp=pp, progress=False)
    results = run_worker(hf, ckpt, tp, pp, tmp / "res", tmp / "trainer_ckpt")
    for r, res in enumerate(results):
        assert res["export_names_match"] and res["export_mismatch"] == [], (r, res)
    if pp == 1:
        saved = torch.load(tmp / "res" / "logits.pt")
        vocab = json.loads((hf / "config.json").read_text())["vocab_size"]
        ref = transformers_logits(hf, saved["ids"])
        diff = (saved["logits"][..., :vocab] - ref).abs().max().item()
        assert diff <= LOGITS_TOL, diff
    megatron_to_hf(tmp / "trainer_ckpt", tmp / "back", hf_config_dir=hf, progress=False)
    src, back = load_all(hf), load_all(tmp / "back")
    if tied:
        src.pop("lm_head.weight", None)
    assert sorted(back) == sorted(src)
    assert all(back[n].dtype == t.dtype and torch.equal(back[n], t) for n, t in src.items())


def test_tp2_pp2_qwen2_tied(tmp_path):
    check_case(tmp_path, "qwen2", True, 2, 2)


def test_tp2_llama_untied_logits(tmp_path):
    check_case(tmp_path, "llama", False, 2, 1)


@pytest.mark.slow
@pytest.mark.parametrize("tp,pp", [(1, 1), (2, 1), (1, 2), (2, 2)])
@pytest.mark.parametrize("arch,tied", [("qwen2", True), ("llama", False), ("qwen2", False), ("llama", True)])
def test_matrix(tmp_path, arch, tied, tp, pp):
    check_case(tmp_path, arch, tied, tp, pp)


def _verify_cli(hf: Path, meg: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "conversion", "verify", "--hf-dir", str(hf), "--megatron-dir", str(meg)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_verify_cli_passes(tmp_path):
    hf = build_hf(tmp_path / "hf", "llama", False)
    hf_to_megatron(hf, tmp_path / "meg", progress=False)
    proc = _verify_cli(hf, tmp_path / "meg")
    assert proc.returncode == 0, proc.stderr[-3000:]
    diff = float(proc.stdout.split("max abs logits diff:")[1].split()[0])
    assert diff <= LOGITS_TOL


@pytest.mark.slow
def test_verify_cli_fails_on_other_weights(tmp_path):
    hf = build_hf(tmp_path / "hf", "qwen2", True)
    other = build_hf(tmp_path / "other", "qwen2", False)  # same shapes (+ lm_head), other weights
    cfg = json.loads((other / "config.json").read_text())
    (other / "config.json").write_text(json.dumps({**cfg, "tie_word_embeddings": True}))
    (tmp_path / "other_tied").mkdir()
    for f in other.iterdir():
        (tmp_path / "other_tied" / f.name).write_bytes(f.read_bytes())
    hf_to_megatron(tmp_path / "other_tied", tmp_path / "meg", progress=False)
    proc = _verify_cli(hf, tmp_path / "meg")
    assert proc.returncode == 1, proc.stdout + proc.stderr[-3000:]
    assert "FAIL" in proc.stdout
