"""The slurm/ scripts on a real one-node SLURM cluster (scripts/slurm_local.sh: Debian slurm-wlm + munge).

Submits the tiny CPU recipe in staged mode (2 iterations, one iteration per train job so the
--dependency=singleton continuation and the re-pointed afterok downstream are exercised) through
slurm/submit_chain.sh, cancels the train chain mid-run, resubmits the chain and checks that it resumes
from the manifest and finishes convert -> train -> export -> evaluate. Skips when the daemons cannot
start here (no root, no apt, no munge).
"""

import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from pipeline.manifest import load_manifest
from pipeline.metrics import read_metrics

pytestmark = [pytest.mark.slurm, pytest.mark.integration, pytest.mark.slow]
REPO = Path(__file__).resolve().parents[2]
SMALL = (
    "run.iterations=2 run.mode=staged run.progress=false run.eval_every=0 rollout.prompts_per_iteration=2 "
    "rollout.samples_per_prompt=4 rollout.max_new_tokens=12 rollout.max_model_len=160 data.eval_limit=8 "
    "parallelism.micro_batch_size=4"
)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    state = tmp_path_factory.mktemp("slurm")
    env = {**os.environ, "SLURM_LOCAL_DIR": str(state), "SLURM_LOCAL_PORT": "17817"}
    script = REPO / "scripts" / "slurm_local.sh"
    res = subprocess.run([str(script), "start"], env=env, capture_output=True, text=True, timeout=300)
    if res.returncode != 0:
        subprocess.run([str(script), "stop"], env=env, capture_output=True, timeout=120)
        pytest.skip(f"local SLURM daemons cannot start here (exit {res.returncode}): {res.stderr[-800:]}")
    env["SLURM_CONF"] = str(state / "slurm.conf")
    try:
        yield env
    finally:
        subprocess.run([str(script), "stop"], env=env, capture_output=True, timeout=180)


def _squeue(env, *args) -> list[str]:
    out = subprocess.run(["squeue", "-h", *args], env=env, capture_output=True, text=True, check=True).stdout
    return [line for line in out.splitlines() if line.strip()]


def _submit_chain(env) -> list[str]:
    res = subprocess.run(
        [str(REPO / "slurm" / "submit_chain.sh")],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    return res.stdout.strip().splitlines()[-1].split()


def _wait(predicate, timeout: float, what: str, env) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(2)
    raise AssertionError(f"timed out waiting for {what}; queue: {_squeue(env, '-o', '%i %j %T %r')}")


def _logs(run_dir: Path) -> str:
    return "\n".join(p.read_text(errors="replace") for p in sorted((run_dir / "slurm").glob("*.out")))


def _completed(run_dir: Path) -> int:
    return load_manifest(run_dir).completed_iterations if (run_dir / "manifest.json").exists() else 0


def test_chain_runs_cancels_and_resumes(cluster, tmp_path):
    run_dir = tmp_path / "run"
    env = {
        **cluster,
        "CONFIG": "configs/experiments/tiny_cpu.yaml",
        "RUN_DIR": str(run_dir),
        "OVERRIDES": SMALL,
        "OMP_NUM_THREADS": "1",
        "TRAIN_SBATCH_ARGS": "--gpus-per-node=0 --ntasks-per-node=1 --cpus-per-task=1",
        "MAX_ITERATIONS_PER_JOB": "1",
        "JOB_NAME": f"grpo-test-{os.getpid()}",
    }
    convert, train, export_job, evaluate = _submit_chain(env)
    # Cancel the train chain while its continuation job runs iteration 1 (iteration 0 is committed).
    _wait(lambda: "] rollout iteration=1" in _logs(run_dir), 900, "the continuation's iteration 1", env)
    time.sleep(3)
    subprocess.run(["scancel", f"--name={env['JOB_NAME']}-train"], env=env, check=True)
    _wait(lambda: not _squeue(env, f"--name={env['JOB_NAME']}-train", "-t", "R,CG"), 120, "train cancel", env)
    subprocess.run(["scancel", export_job, evaluate], env=env, check=True)  # never satisfiable now
    assert _completed(run_dir) == 1
    rows_before = read_metrics(run_dir / "metrics.jsonl")

    _submit_chain(env)
    _wait(
        lambda: not _squeue(env, "-u", os.environ.get("USER", "root"), f"--name={env['JOB_NAME']}-evaluate"),
        1500,
        "the resubmitted chain",
        env,
    )
    manifest = load_manifest(run_dir)
    assert manifest.completed_iterations == 2
    rows = read_metrics(run_dir / "metrics.jsonl")
    assert [r["iteration"] for r in rows] == [0, 1]
    assert rows[0] == rows_before[0]  # iteration 0 was not redone
    assert manifest.stage("export").state == "done" and (run_dir / "export" / "hf" / "config.json").is_file()
    assert (run_dir / "report" / "curves.png").is_file()
    assert json.loads(next((run_dir / "eval").glob("*.json")).read_text())
    logs = _logs(run_dir)
    for marker in (
        "GRPO-PHASE",
        "] prepare",
        "] rollout iteration=1",
        "] train iteration=1",
        "continuation submitted",
        "] export",
        "] evaluate",
        "] report",
    ):
        assert marker in logs, marker
