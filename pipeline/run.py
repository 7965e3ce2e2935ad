"""The RL loop: prepare, then iterations of rollout → reward → advantages → train → checkpoint → refit
→ metrics → manifest, then evaluate, export and report.

`colocated` mode keeps the Megatron actor and the vLLM engine in this process and refits in memory
(`conversion.export_hf_weights` streamed into `RolloutEngine.refit_from_iterator`). `staged` mode runs
`python -m pipeline rollout` and `python -m pipeline train` as separate processes per iteration; they
exchange weights through the converter's HF export and rollouts through files in the run dir.
Either way a killed run restarts from the manifest's last complete iteration with identical results.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from pipeline.__main__ import EXIT_NONFINITE
from pipeline.config import ExperimentConfig
from pipeline.manifest import Manifest, RunDirLock, RunLayout, resolve_in_run_dir
from pipeline.metrics import MetricsLogger
from pipeline.stages.actor import Actor
from pipeline.stages.eval_hooks import evaluate_before_training, evaluate_during_run, evaluate_final
from pipeline.stages.export import export_stage
from pipeline.stages.prepare import prepare
from pipeline.stages.report import report_stage
from pipeline.stages.rollout import generate_and_score, load_problems, make_engine
from pipeline.stages.state import NonFiniteError, commit_iteration, discard_uncommitted, should_save
from pipeline.stages.train import train_on_rollouts


def run_colocated(cfg: ExperimentConfig, layout: RunLayout, manifest: Manifest) -> None:
    """All remaining iterations in this process, then export and the final evaluation (see the module
    docstring); the evaluation reuses the engine, which holds exactly the exported weights."""
    start, base_hf = manifest.completed_iterations, resolve_in_run_dir(layout.root, manifest.base_hf_dir)
    problems = load_problems(layout.data)
    actor = Actor.build(cfg, base_hf)
    actor.load(resolve_in_run_dir(layout.root, manifest.checkpoint), with_optimizer=start > 0)
    if cfg.algorithm.kl_coef > 0:
        actor.load_reference(layout.init_checkpoint)
    engine = make_engine(cfg, base_hf)
    if start > 0:  # the engine starts from the base model: bring it to the resumed weights
        engine.refit_from_iterator(actor.hf_weights())
    initial_eval = evaluate_before_training(cfg, engine=engine) if start == 0 else {}
    with MetricsLogger(layout.metrics, layout.tensorboard, completed_iterations=start) as metrics:
        for it in range(start, cfg.run.iterations):
            t_iter = time.perf_counter()
            rollouts = generate_and_score(engine, cfg, problems, it)  # rollout + reward
            row = {**rollouts.metrics, **train_on_rollouts(actor, rollouts, cfg)}  # advantages + update
            row.update(initial_eval if it == 0 else {})
            t0 = time.perf_counter()
            if should_save(cfg, it):
                actor.save(layout.checkpoint(it), iteration=it + 1, extra={"iteration": it})
            row["time/save"] = time.perf_counter() - t0
            row["time/refit"] = engine.refit_from_iterator(actor.hf_weights())
            row.update(evaluate_during_run(cfg, layout, it, engine=engine))
            row["time/iteration"] = time.perf_counter() - t_iter
            metrics.log(it, row)
            print_progress(it, row)
            if should_save(cfg, it):
                commit_iteration(layout, manifest, it, checkpoint=layout.checkpoint(it))
    export_stage(cfg, layout)
    evaluate_final(cfg, layout, engine=engine)
    engine.close()


def run_staged(cfg: ExperimentConfig, layout: RunLayout, manifest: Manifest, lock: RunDirLock) -> None:
    """Each remaining iteration as a `rollout` process then a `train` process (torchrun when TP*PP*DP > 1)."""
    world = (
        cfg.parallelism.tensor_parallel * cfg.parallelism.pipeline_parallel * cfg.parallelism.data_parallel
    )
    env = {**os.environ, **lock.child_env()}
    for it in range(manifest.completed_iterations, cfg.run.iterations):
        _stage_process(["rollout"], layout, env, world=1)
        _stage_process(["train"], layout, env, world=world)
        print(f"[pipeline] iteration {it} done ({cfg.run.mode} mode)", flush=True)
    export_stage(cfg, layout)
    evaluate_final(cfg, layout, engine=None)


def _stage_process(args: list[str], layout: RunLayout, env: dict[str, str], *, world: int) -> None:
    launcher = [sys.executable]
    if world > 1:
        launcher += ["-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={world}"]
    cmd = [*launcher, "-m", "pipeline", *args, "--run-dir", str(layout.root)]
    # The child writes under this process's lock: it must not outlive a killed parent.
    proc = subprocess.run(cmd, env=env, check=False, preexec_fn=_die_with_parent)
    if proc.returncode == EXIT_NONFINITE:
        raise NonFiniteError(
            f"stage `{' '.join(args)}` stopped on a non-finite update (see its output above)"
        )
    if proc.returncode != 0:
        raise RuntimeError(
            f"stage `{' '.join(args)}` failed with exit code {proc.returncode}: {' '.join(cmd)}"
        )


def _die_with_parent() -> None:
    """In the child before exec: SIGKILL it when the parent dies (Linux prctl PR_SET_PDEATHSIG)."""
    import ctypes

    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)


def print_progress(it: int, row: dict[str, float]) -> None:
    print(
        f"[pipeline] iteration {it}: reward {row['reward/mean']:.3f} accuracy {row['reward/accuracy']:.3f} "
        f"length {row['rollout/response_length_mean']:.1f} loss {row['train/loss']:.4f} "
        f"grad_norm {row['train/grad_norm']:.3f} time {row['time/iteration']:.1f}s",
        flush=True,
    )


def run(cfg: ExperimentConfig, layout: RunLayout, lock: RunDirLock) -> None:
    """`python -m pipeline run`: prepare, the iterations, export, evaluate, report."""
    manifest = prepare(cfg, layout)
    discard_uncommitted(layout, manifest)
    if manifest.completed_iterations > 0:
        print(
            f"[pipeline] resuming {layout.root} after iteration {manifest.completed_iterations - 1}",
            flush=True,
        )
    if cfg.run.mode == "colocated":
        run_colocated(cfg, layout, manifest)
    else:
        run_staged(cfg, layout, manifest, lock)
    report_stage(cfg, layout)
