"""slurm/nightly.sbatch on a real one-node SLURM cluster (scripts/slurm_local.sh), pipeline runs faked.

The driver job submits one job per arm × seed (chained by --dependency=singleton) and a report job
(--dependency=afterany) whose exit code is the verdict. What a run job executes is replaced by a fake
`python -m pipeline run` that writes a finished run dir (the same writer as the unit tests): the unit
under test is the nightly's SLURM orchestration, not the pipeline. Everything else (sbatch, the
script's modes, the completion check, `python -m pipeline.compare`) is real.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
UNIT_TESTS = REPO / "tests" / "unit" / "pipeline"

pytestmark = [pytest.mark.integration, pytest.mark.slurm]

FAKE_RUN = """
import sys
from pathlib import Path
sys.path[:0] = [{unit!r}, {repo!r}]
from test_compare_nightly import accuracy_curve, write_fake_run
args = sys.argv[1:]
run_dir = Path(args[args.index("--run-dir") + 1])
seed = int(next(a for a in args if a.startswith("run.seed=")).split("=")[1])
gain = 0.1 if "algorithm.variant=epsilon-trace" in args else 0.0
write_fake_run(run_dir, accuracy_curve(seed, gain), eval_acc=0.5 + gain)
print("fake run written", run_dir)
"""


@pytest.fixture(scope="module")
def slurm_env(tmp_path_factory):
    """SLURM_CONF of a running local cluster: the one already up, or one started (and stopped) here."""
    if shutil.which("sbatch") is None:
        pytest.skip("sbatch is not installed (scripts/slurm_local.sh start installs slurm-wlm)")
    if (
        os.environ.get("SLURM_CONF")
        and subprocess.run(["scontrol", "ping"], capture_output=True).returncode == 0
    ):
        yield dict(os.environ)
        return
    state = tmp_path_factory.mktemp("slurm")
    env = {**os.environ, "SLURM_LOCAL_DIR": str(state), "SLURM_LOCAL_PORT": "16917"}
    script = REPO / "scripts" / "slurm_local.sh"
    started = subprocess.run(["bash", str(script), "start"], env=env, capture_output=True, text=True)
    if started.returncode != 0:
        subprocess.run(["bash", str(script), "stop"], env=env, capture_output=True)
        pytest.skip(f"cannot start a local SLURM cluster here: {started.stderr.strip()[-500:]}")
    try:
        yield {**env, "SLURM_CONF": str(state / "slurm.conf")}
    finally:
        subprocess.run(["bash", str(script), "stop"], env=env, capture_output=True)


def _wait_for_jobs(env: dict[str, str], name_prefix: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        q = subprocess.run(["squeue", "-h", "-o", "%j"], env=env, capture_output=True, text=True)
        if q.returncode == 0 and not any(n.startswith(name_prefix) for n in q.stdout.split()):
            return
        time.sleep(1.0)
    raise TimeoutError(f"jobs {name_prefix}* still queued after {timeout}s")


def test_nightly_sbatch_driver_runs_and_report(tmp_path, slurm_env):
    fake_run = tmp_path / "fake_run.py"
    fake_run.write_text(FAKE_RUN.format(unit=str(UNIT_TESTS), repo=str(REPO)))
    fake_python = tmp_path / "python"
    fake_python.write_text(
        "#!/bin/bash\n"
        'if [[ "${1:-} ${2:-} ${3:-}" == "-m pipeline run" ]]; then shift 3; '
        f'exec "{sys.executable}" "{fake_run}" "$@"; fi\n'
        f'exec "{sys.executable}" "$@"\n'
    )
    fake_python.chmod(0o755)
    sys.path.insert(0, str(UNIT_TESTS))
    from test_compare_nightly import write_nightly

    nightly = write_nightly(tmp_path, name="slurmfake", slurm="{chain: 2}")
    out = tmp_path / "out"
    env = {
        **slurm_env,
        "PYTHON": str(fake_python),
        "NIGHTLY_CONFIG": str(nightly),
        "NIGHTLY_OUT": str(out),
        "NIGHTLY_UPDATE_GOLDEN": "1",
    }
    sub = subprocess.run(
        ["sbatch", "--parsable", f"--output={tmp_path}/driver-%j.log", "--job-name=slurmfake-driver",
         "slurm/nightly.sbatch"],
        cwd=REPO, env=env, capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert sub.stdout.strip()
    _wait_for_jobs(env, "slurmfake-driver", 120)
    _wait_for_jobs(env, "nightly-slurmfake", 300)
    driver_log = next(tmp_path.glob("driver-*.log")).read_text()
    assert "phase=submitted" in driver_log, driver_log
    logs = out / "logs"
    report_log = next(logs.glob("report-*.log")).read_text()
    assert "phase=report-done exit=0" in report_log, report_log
    # each run ran once; the second job of each chain found it complete and skipped it
    run_logs = sorted(logs.glob("grpo-seed0-*.log"))
    assert len(run_logs) == 2
    texts = [p.read_text() for p in run_logs]
    assert sum("fake run written" in t for t in texts) == 1
    assert sum("phase=skip" in t for t in texts) == 1
    summary = json.loads((out / "summary.json").read_text())
    assert summary["passed"] and {r["status"] for r in summary["runs"]} == {"complete"}
    assert (tmp_path / "fake.golden.json").exists()
