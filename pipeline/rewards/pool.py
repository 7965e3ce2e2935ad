"""Score batches of responses in worker processes, each check under a hard wall-clock limit.

Why processes and not math-verify's own timeouts: those use `signal.alarm`, which raises in any thread
but the main one and cannot interrupt sympy while it sits in C code (`9^{9^{9^{9}}}` is one C-level
integer power). A worker that overruns `timeout_s` is killed with SIGKILL and replaced; its check
scores 0 and is counted in `stats["timeouts"]`.

Workers are plain subprocesses (`python -m pipeline.rewards.worker`) speaking JSON lines on
stdin/stdout: unlike multiprocessing's `spawn`, this never re-imports the caller's `__main__`, and
unlike `fork` it does not copy the trainer's threads or CUDA state. They stay alive between batches in
a module-level pool and are shut down at exit.
"""

from __future__ import annotations

import atexit
import json
import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from multiprocessing.connection import wait
from pathlib import Path

from pipeline.rewards.math_reward import last_boxed

_REPO_ROOT = Path(__file__).resolve().parents[2]
_MAX_FAILED_STARTS = 3


@dataclass
class _Worker:
    proc: subprocess.Popen
    ready: bool = False
    task: int | None = None  # index of the check in flight
    started_at: float = 0.0


def _start_worker() -> _Worker:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join([str(_REPO_ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipeline.rewards.worker"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env=env,
        text=True,
        bufsize=1,
    )
    return _Worker(proc=proc)


@dataclass
class RewardPool:
    """`num_workers` scoring processes; `score` is synchronous and never waits past the time limit."""

    num_workers: int
    workers: list[_Worker] = field(default_factory=list)
    restarts: int = 0
    failed_starts: int = 0

    def __post_init__(self) -> None:
        if self.num_workers < 1:
            raise ValueError(f"reward num_workers must be >= 1, got {self.num_workers}")
        self.workers = [_start_worker() for _ in range(self.num_workers)]

    def _replace(self, i: int) -> None:
        w = self.workers[i]
        if w.proc.poll() is None:
            w.proc.kill()
        w.proc.wait()
        for stream in (w.proc.stdin, w.proc.stdout):
            stream.close()
        self.workers[i] = _start_worker()
        self.restarts += 1

    def _dispatch(self, tasks: list[dict], pending: list[int]) -> None:
        for w in self.workers:
            if w.ready and w.task is None and pending:
                w.task = pending.pop()
                w.proc.stdin.write(json.dumps(tasks[w.task]) + "\n")
                w.proc.stdin.flush()
                w.started_at = time.monotonic()

    def score(self, tasks: list[dict], *, timeout_s: float) -> tuple[list[float], int, int]:
        """Scores of `tasks` ({response, answer, format_weight}) plus (time-outs, worker crashes)."""
        scores = [0.0] * len(tasks)
        pending = list(range(len(tasks)))[::-1]
        timeouts = crashes = 0
        while pending or any(w.task is not None for w in self.workers):
            self._dispatch(tasks, pending)
            now = time.monotonic()
            left = [w.started_at + timeout_s - now for w in self.workers if w.task is not None]
            by_fd = {w.proc.stdout: i for i, w in enumerate(self.workers)}
            for stream in wait(list(by_fd), timeout=max(0.0, min(left)) if left else 1.0):
                i = by_fd[stream]
                w = self.workers[i]
                line = stream.readline()
                if not line:  # the worker died: out of memory, a segfault in a C extension, ...
                    crashes += w.task is not None
                    self.failed_starts += not w.ready
                    if self.failed_starts > _MAX_FAILED_STARTS * self.num_workers:
                        raise RuntimeError(
                            "reward workers keep dying at start-up; run "
                            "`python -m pipeline.rewards.worker` by hand to see why"
                        )
                    self._replace(i)
                    continue
                msg = json.loads(line)
                if msg == "ready":
                    w.ready = True
                else:
                    scores[w.task] = float(msg)
                    w.task = None
            now = time.monotonic()
            for i, w in enumerate(self.workers):
                if w.task is not None and now - w.started_at > timeout_s:
                    timeouts += 1
                    self._replace(i)
        return scores, timeouts, crashes

    def close(self) -> None:
        for w in self.workers:
            try:
                w.proc.stdin.close()  # EOF: the worker exits its loop
            except OSError:
                pass
        for w in self.workers:
            try:
                w.proc.wait(timeout=2)
            except subprocess.TimeoutExpired:
                w.proc.kill()
                w.proc.wait()
            w.proc.stdout.close()
        self.workers = []


_POOL: RewardPool | None = None
_POOL_LOCK = threading.Lock()  # one batch at a time through the shared pool


def _get_pool(num_workers: int) -> RewardPool:
    global _POOL
    if _POOL is None or _POOL.num_workers != num_workers or not _POOL.workers:
        shutdown_pool()
        _POOL = RewardPool(num_workers)
    return _POOL


def shutdown_pool() -> None:
    """Stop the shared worker processes (also done at interpreter exit)."""
    global _POOL
    if _POOL is not None:
        _POOL.close()
        _POOL = None


atexit.register(shutdown_pool)


def score_batch(
    responses: list[str],
    answers: list[str],
    *,
    timeout_s: float,
    num_workers: int,
    format_weight: float = 0.0,
) -> tuple[list[float], dict[str, float]]:
    """Score `responses[i]` against `answers[i]` in a process pool, each check limited to `timeout_s`.

    Returns (scores, stats) with score_i = math_reward + format_weight * format_reward; a time-out or a
    crashed worker scores 0. stats: n, mean_score, accuracy (fraction of scores >= 1), no_answer,
    timeouts, worker_crashes, worker_restarts (cumulative over the shared pool's life), time_s.
    """
    if len(responses) != len(answers):
        raise ValueError(
            f"score_batch: {len(responses)} responses but {len(answers)} answers; they must pair up"
        )
    if timeout_s <= 0:
        raise ValueError(f"reward timeout_s must be > 0, got {timeout_s}")
    if format_weight < 0:
        raise ValueError(f"reward format_weight must be >= 0, got {format_weight}")
    t0 = time.perf_counter()
    tasks = [
        {"response": r, "answer": str(a), "format_weight": format_weight} for r, a in zip(responses, answers)
    ]
    with _POOL_LOCK:
        pool = _get_pool(num_workers)
        scores, timeouts, crashes = pool.score(tasks, timeout_s=timeout_s) if tasks else ([], 0, 0)
    n = len(scores)
    stats = {
        "n": float(n),
        "mean_score": sum(scores) / n if n else 0.0,
        "accuracy": sum(1.0 for s in scores if s >= 1.0) / n if n else 0.0,
        "no_answer": float(sum(1 for r in responses if last_boxed(r) is None)),
        "timeouts": float(timeouts),
        "worker_crashes": float(crashes),
        "worker_restarts": float(pool.restarts),
        "time_s": time.perf_counter() - t0,
    }
    return scores, stats
