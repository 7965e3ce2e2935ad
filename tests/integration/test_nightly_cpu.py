"""The nightly end to end on CPU: `configs/nightly/tiny_cpu_short.yaml` through `python -m pipeline compare`.

Real runs of the pipeline (bootstrap model, vLLM rollouts, Megatron updates, evaluation) for GRPO and
GRPO-λ on one seed, then golden values recorded, a passing rerun that skips the finished runs, and a
failing check when a golden value is out of reach. Takes a few minutes on 2 cores.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
NIGHTLY = REPO / "configs" / "nightly" / "tiny_cpu_short.yaml"

# The short nightly (`configs/nightly/tiny_cpu_short.yaml`, ~2 min) runs in the default suite, as issue 7 asks.
pytestmark = [pytest.mark.integration]


def _compare(nightly: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "pipeline", "compare", "--config", str(nightly), "--out", str(out), *extra]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900, check=False)


def _local_copy(tmp_path: Path) -> Path:
    """The short nightly with its experiment path made absolute and its golden file in tmp_path."""
    text = NIGHTLY.read_text()
    text = text.replace("experiment: ../experiments/", f"experiment: {REPO}/configs/experiments/")
    path = tmp_path / "tiny_cpu_short.yaml"
    path.write_text(text)
    return path


def test_short_nightly_end_to_end(tmp_path):
    nightly, out = _local_copy(tmp_path), tmp_path / "out"
    first = _compare(nightly, out, "--update-golden")
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert {r["status"] for r in summary["runs"]} == {"complete"}
    assert set(summary["arms"]) == {"grpo", "eps-trace-recent"}
    for arm in summary["arms"].values():
        assert len(arm["auc"]) == 1 and 0.0 <= arm["auc"][0] <= 1.0
        assert set(arm["final_eval"]) == {"arithmetic"}
    golden = json.loads((tmp_path / "tiny_cpu_short.golden.json").read_text())
    assert golden["arms"]["grpo"]["auc"] == pytest.approx(summary["arms"]["grpo"]["auc"][0])
    report = (out / "report.md").read_text()
    assert "## AUC of `reward/accuracy`" in report and "| eps-trace-recent | 1 |" in report
    assert (out / "plots" / "reward_accuracy.png").stat().st_size > 1000

    # pairing: both arms of the seed trained on the same frozen prompts and sampled the same first batch
    runs = out / "runs"
    assert (runs / "grpo/seed0/data/train.jsonl").read_bytes() == (
        runs / "eps-trace-recent/seed0/data/train.jsonl"
    ).read_bytes()
    first_rows = [
        json.loads((runs / arm / "seed0/metrics.jsonl").read_text().splitlines()[0])
        for arm in summary["arms"]
    ]
    for key in ("rollout/response_tokens", "reward/accuracy"):
        assert first_rows[0][key] == first_rows[1][key], key

    # a second invocation finds every run complete, starts nothing and passes against the golden values
    second = _compare(nightly, out)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert second.stdout.count("complete, skipped") == 2

    # an unreachable golden AUC is a regression: exit 1 and the report names the check
    golden["arms"]["grpo"]["auc"] += 1.0
    (tmp_path / "tiny_cpu_short.golden.json").write_text(json.dumps(golden))
    third = _compare(nightly, out, "--report-only")
    assert third.returncode == 1
    assert "FAILED golden auc grpo" in third.stderr
    assert "| golden auc grpo | **FAIL** |" in (out / "report.md").read_text()
