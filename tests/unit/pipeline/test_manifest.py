"""Run-dir manifest, atomic writes and the single-writer lock."""

import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest

from pipeline.manifest import (
    LOCK_OWNER_ENV,
    Manifest,
    ManifestError,
    RunDirLock,
    RunDirLockedError,
    RunLayout,
    atomic_write_json,
    load_manifest,
    save_manifest,
)


def test_manifest_roundtrip(tmp_path):
    assert load_manifest(tmp_path) is None
    m = Manifest(completed_iterations=3, checkpoint="checkpoints/iter_0002", base_hf_dir="/models/x")
    m.set_stage("train", "done", iteration=2, checkpoint="checkpoints/iter_0002")
    m.set_stage("rollout", "running", iteration=3)
    save_manifest(tmp_path, m)
    back = load_manifest(tmp_path)
    assert back.to_dict() == m.to_dict()
    raw = json.loads((tmp_path / "manifest.json").read_text())
    assert raw["completed_iterations"] == 3
    assert raw["stages"]["train"]["outputs"] == {"checkpoint": "checkpoints/iter_0002"}
    assert raw["stages"]["rollout"]["state"] == "running"


def test_manifest_rejects_corrupt_and_unknown(tmp_path):
    (tmp_path / "manifest.json").write_text('{"completed_iterations": 1')
    with pytest.raises(ManifestError, match="not valid JSON"):
        load_manifest(tmp_path)
    atomic_write_json(tmp_path / "manifest.json", {"completed_iterations": 1, "typo": 2})
    with pytest.raises(ManifestError, match="expected"):
        load_manifest(tmp_path)
    with pytest.raises(ManifestError, match="valid"):
        Manifest().set_stage("train", "finished")


def test_atomic_write_leaves_old_file_when_interrupted(tmp_path, monkeypatch):
    target = tmp_path / "manifest.json"
    atomic_write_json(target, {"a": 1})

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        atomic_write_json(target, {"a": 2})
    assert json.loads(target.read_text()) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["manifest.json"]  # temp file cleaned up


HOLD_LOCK = textwrap.dedent(
    """
    import sys, time
    from pipeline.manifest import RunDirLock
    RunDirLock(sys.argv[1]).acquire()
    print("locked", flush=True)
    time.sleep(60)
    """
)


def _start_holder(run_dir):
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(run_dir)], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_lock_names_holder_pid_and_is_released_by_sigkill(tmp_path):
    proc = _start_holder(tmp_path)
    try:
        with pytest.raises(RunDirLockedError, match=rf"pid {proc.pid} holds"):
            RunDirLock(tmp_path).acquire()
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    # The kernel released the flock with the process: no stale lock.
    lock = RunDirLock(tmp_path).acquire()
    assert lock.holder_pid() == os.getpid()
    lock.release()


def test_lock_inherited_by_child_of_holder(tmp_path, monkeypatch):
    with RunDirLock(tmp_path) as lock:
        env = lock.child_env()
        assert env[LOCK_OWNER_ENV].endswith(f":{os.getpid()}")
        monkeypatch.setenv(LOCK_OWNER_ENV, env[LOCK_OWNER_ENV])
        child = RunDirLock(tmp_path).acquire()
        assert child.inherited
        # A forged owner (wrong pid) does not get in.
        monkeypatch.setenv(LOCK_OWNER_ENV, f"{tmp_path.resolve()}:1")
        with pytest.raises(RunDirLockedError):
            RunDirLock(tmp_path).acquire()


def test_layout_paths(tmp_path):
    layout = RunLayout(tmp_path)
    assert layout.checkpoint(7).name == "iter_0007"
    assert layout.rollouts(12).name == "iter_0012.pt"
    assert layout.rel(layout.checkpoint(1)) == os.path.join("checkpoints", "iter_0001")


def test_atomic_write_gives_the_umask_mode(tmp_path):
    """Atomic writes must not leave files private (mkstemp's 0600) on a shared cluster."""
    import os

    from pipeline.manifest import atomic_write_text

    old = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "a.json", "{}")
    finally:
        os.umask(old)
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == 0o644
