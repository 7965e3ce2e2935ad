"""`python -m pipeline` errors that must be clear before any work starts: the run-dir lock and
validation messages naming the config key."""

import os
import signal
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.integration
TINY = "configs/experiments/tiny_cpu.yaml"


def _pipeline(*args, env=None):
    return subprocess.run(
        [sys.executable, "-m", "pipeline", *args], capture_output=True, text=True, timeout=300, env=env
    )


def test_second_run_on_a_locked_run_dir_names_the_holder(tmp_path):
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(
                """
            import sys, time
            from pipeline.manifest import RunDirLock
            RunDirLock(sys.argv[1]).acquire()
            print("locked", flush=True)
            time.sleep(120)
            """
            ),
            str(tmp_path),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        res = _pipeline("run", "--config", TINY, "--run-dir", str(tmp_path))
        assert res.returncode == 2, res.stderr
        assert (
            f"pid {holder.pid} holds" in res.stderr and "Two runs never write into one run dir" in res.stderr
        )
        assert not (tmp_path / "manifest.json").exists()  # nothing was written by the refused run
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (
            ["parallelism.tensor_parallel=2"],
            "parallelism: tensor_parallel*pipeline_parallel*data_parallel = 2*1*1",
        ),
        (["model.bootstrap=false", "model.hf_dir=/nonexistent/model"], "model.hf_dir: /nonexistent/model"),
        (["data.train_files=[/nonexistent.jsonl]"], "data.train_files[0]: /nonexistent.jsonl does not exist"),
        (
            ["cluster.gpus_per_node=8", "parallelism.data_parallel=8", "run.mode=staged"],
            "cluster.gpus_per_node",
        ),
        (["rollout.samples_per_prompt=1"], "rollout.samples_per_prompt"),
    ],
)
def test_validation_errors_name_the_key(tmp_path, overrides, expected):
    if "cluster.gpus_per_node=8" in overrides and os.environ.get("CUDA_VISIBLE_DEVICES"):
        pytest.skip("needs a machine without 8 GPUs")
    res = _pipeline("run", "--config", TINY, "--run-dir", str(tmp_path / "run"), *overrides)
    assert res.returncode == 2, res.stdout + res.stderr
    assert expected in res.stderr, res.stderr
    assert "Traceback" not in res.stderr
    assert not (tmp_path / "run" / "manifest.json").exists()
