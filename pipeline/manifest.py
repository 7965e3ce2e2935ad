"""Run-directory state: `manifest.json`, atomic writes and the single-writer lock.

A run directory holds everything one experiment produces. `manifest.json` records how many
iterations are complete, the checkpoint of the last complete one and the state of each stage; it is
only ever replaced atomically (temp file + fsync + rename), so a process killed at any moment leaves
either the old or the new manifest, never a torn one. Resume = continue after `completed_iterations`.

Two processes never write into one run dir at once: `RunDirLock` holds `fcntl.flock` on
`run_dir/.lock` for the process lifetime (the kernel drops it when the process dies, even on SIGKILL)
and names the pid holding it when a second process tries. A child process started by the holder
(staged mode) inherits the right to write through `LOCK_OWNER_ENV`.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MANIFEST_NAME = "manifest.json"
LOCK_NAME = ".lock"
MANIFEST_VERSION = 1
# "<abs run dir>:<pid>" set by a lock holder for the child processes it starts (staged mode).
LOCK_OWNER_ENV = "GRPO_LAMBDA_RUN_DIR_LOCK_OWNER"
STAGE_STATES = ("pending", "running", "done", "failed")


class ManifestError(RuntimeError):
    """The run directory's manifest is missing, corrupt or inconsistent."""


class RunDirLockedError(RuntimeError):
    """Another live process holds the run directory's lock."""


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write `data` to `path` atomically: temp file in the same directory, fsync, rename, fsync dir."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        # mkstemp creates 0600; give the file the mode a plain open() would (0666 minus the umask), so
        # manifests, configs and eval results stay readable by the team on a shared cluster.
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: str | Path, text: str) -> None:
    """`atomic_write_bytes` for UTF-8 text."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any) -> None:
    """`atomic_write_bytes` for a JSON document (indented, keys in insertion order)."""
    atomic_write_text(path, json.dumps(obj, indent=2) + "\n")


def fsync_dir(path: str | Path) -> None:
    """fsync a directory so a rename inside it survives a crash."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass
class StageState:
    """State of one stage (`prepare`, `rollout`, `train`, `evaluate`, `export`, `report`)."""

    state: str = "pending"
    iteration: int | None = None  # the iteration the stage last worked on (per-iteration stages)
    outputs: dict[str, str] = field(default_factory=dict)  # paths relative to the run dir
    updated: float = 0.0  # unix time

    def __post_init__(self) -> None:
        if self.state not in STAGE_STATES:
            raise ManifestError(f"unknown stage state {self.state!r}; valid: {list(STAGE_STATES)}")


@dataclass
class Manifest:
    """What `manifest.json` holds.

    `completed_iterations` counts complete iterations: iteration `i` (0-based) is complete once its
    checkpoint, metrics row and this manifest are written, in that order. `checkpoint` is the
    checkpoint of the last complete iteration (relative to the run dir; the converted initial model
    before any iteration). `base_hf_dir` is the HF model the run started from (absolute or relative).
    """

    completed_iterations: int = 0
    checkpoint: str | None = None
    base_hf_dir: str | None = None
    stages: dict[str, StageState] = field(default_factory=dict)
    version: int = MANIFEST_VERSION

    def stage(self, name: str) -> StageState:
        """The state of stage `name` (created as pending on first use)."""
        if name not in self.stages:
            self.stages[name] = StageState()
        return self.stages[name]

    def set_stage(self, name: str, state: str, *, iteration: int | None = None, **outputs: str) -> None:
        """Record that stage `name` is now `state` (optionally for `iteration`, with output paths)."""
        st = self.stage(name)
        if state not in STAGE_STATES:
            raise ManifestError(f"unknown stage state {state!r}; valid: {list(STAGE_STATES)}")
        st.state, st.iteration, st.updated = state, iteration, time.time()
        st.outputs.update({k: str(v) for k, v in outputs.items()})

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "completed_iterations": self.completed_iterations,
            "checkpoint": self.checkpoint,
            "base_hf_dir": self.base_hf_dir,
            "stages": {k: vars(v) for k, v in self.stages.items()},
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any], *, source: str = "manifest") -> Manifest:
        expected = {"version", "completed_iterations", "checkpoint", "base_hf_dir", "stages"}
        if set(d) != expected:
            raise ManifestError(
                f"{source}: keys {sorted(d)} differ from the expected {sorted(expected)} (corrupt manifest?)"
            )
        if d["version"] != MANIFEST_VERSION:
            raise ManifestError(f"{source}: version {d['version']} is not {MANIFEST_VERSION}")
        if not isinstance(d["completed_iterations"], int) or d["completed_iterations"] < 0:
            raise ManifestError(f"{source}: completed_iterations must be an int >= 0")
        stages = {k: StageState(**v) for k, v in d["stages"].items()}
        return cls(d["completed_iterations"], d["checkpoint"], d["base_hf_dir"], stages, d["version"])


def manifest_path(run_dir: str | Path) -> Path:
    return Path(run_dir) / MANIFEST_NAME


def load_manifest(run_dir: str | Path) -> Manifest | None:
    """The run dir's manifest, or None when the run has not started (no manifest.json)."""
    path = manifest_path(run_dir)
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ManifestError(f"{path}: not valid JSON ({e})") from e
    return Manifest.from_dict(data, source=str(path))


def save_manifest(run_dir: str | Path, manifest: Manifest) -> None:
    """Replace the run dir's manifest atomically."""
    atomic_write_json(manifest_path(run_dir), manifest.to_dict())


def resolve_in_run_dir(run_dir: str | Path, rel: str | None) -> Path | None:
    """A manifest path (relative to the run dir, or absolute) as an absolute Path."""
    if rel is None:
        return None
    p = Path(rel)
    return p if p.is_absolute() else Path(run_dir) / p


class RunDirLock:
    """Exclusive lock on a run directory, held until `release()` or process exit.

    Uses `fcntl.flock` on `run_dir/.lock` (released by the kernel when the holder dies, so a SIGKILLed
    run never leaves a stale lock) and writes the holder's pid into the file for the error message.
    A process whose environment names the current holder in `LOCK_OWNER_ENV` (a child the holder
    started) is allowed in without taking the lock.
    """

    def __init__(self, run_dir: str | Path) -> None:
        self.run_dir = Path(run_dir).resolve()
        self.path = self.run_dir / LOCK_NAME
        self._fd: int | None = None
        self.inherited = False

    def acquire(self) -> RunDirLock:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if self._inherited_from_parent():
            self.inherited = True
            return self
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            holder = self.holder_pid()
            who = f"pid {holder}" if holder is not None else "another process"
            raise RunDirLockedError(
                f"run dir {self.run_dir} is in use: {who} holds {self.path}. Two runs never write into "
                f"one run dir at once; wait for it to finish, stop it, or choose another --run-dir."
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        os.fsync(fd)
        self._fd = fd
        return self

    def _inherited_from_parent(self) -> bool:
        owner = os.environ.get(LOCK_OWNER_ENV)
        if not owner:
            return False
        run_dir, _, pid = owner.rpartition(":")
        return Path(run_dir) == self.run_dir and pid.isdigit() and int(pid) == self.holder_pid()

    def child_env(self) -> dict[str, str]:
        """Environment entries that let a child process write into the run dir under this lock."""
        if self.inherited:
            return {LOCK_OWNER_ENV: os.environ[LOCK_OWNER_ENV]}
        if self._fd is None:
            raise RuntimeError("child_env() needs the lock held")
        return {LOCK_OWNER_ENV: f"{self.run_dir}:{os.getpid()}"}

    def holder_pid(self) -> int | None:
        """The pid written by the last holder (None if the file is empty or unreadable)."""
        try:
            text = self.path.read_text().strip()
        except FileNotFoundError:
            return None
        return int(text) if text.isdigit() else None

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> RunDirLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


@dataclass(frozen=True)
class RunLayout:
    """Where each artefact lives inside a run directory (one place, so stages agree)."""

    root: Path

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def base_hf(self) -> Path:  # bootstrapped tiny model (when model.bootstrap)
        return self.root / "base_hf"

    @property
    def init_checkpoint(self) -> Path:  # the converted initial model (model-only)
        return self.root / "checkpoints" / "init"

    def checkpoint(self, iteration: int) -> Path:  # after iteration `iteration` (0-based) completes
        return self.root / "checkpoints" / f"iter_{iteration:04d}"

    def rollouts(self, iteration: int) -> Path:
        return self.root / "rollouts" / f"iter_{iteration:04d}.pt"

    def weights(self, iteration: int) -> Path:  # HF export handed to the rollout stage (staged mode)
        return self.root / "weights" / f"iter_{iteration:04d}"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.jsonl"

    @property
    def tensorboard(self) -> Path:
        return self.root / "tensorboard"

    @property
    def data(self) -> Path:  # the training prompts, frozen at prepare
        return self.root / "data" / "train.jsonl"

    @property
    def eval_dir(self) -> Path:
        return self.root / "eval"

    @property
    def export_hf(self) -> Path:
        return self.root / "export" / "hf"

    @property
    def report_dir(self) -> Path:
        return self.root / "report"

    def rel(self, path: Path) -> str:
        """`path` relative to the run dir (what the manifest stores)."""
        return str(Path(path).resolve().relative_to(self.root.resolve()))
