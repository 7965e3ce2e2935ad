"""Time and peak memory of forward+backward of the GRPO / GRPO-lambda losses against a dense T x T trace.

Usage: ``.venv/bin/python benchmarks/loss_bench.py [--threads 1] [--reps 40]``

  * time: per size, one subprocess runs every case interleaved rep by rep (so all cases see the same
    load from other jobs), ``--reps`` times after warm-up: per_token_policy_loss (input checks and
    metrics included) + token-mean aggregation + backward, on CPU with ``--threads`` intra-op threads.
    Targets use the median process CPU time (time.process_time), which other jobs on a shared machine
    disturb far less than wall time; the minimum and the median wall time are printed beside it.
  * memory: one subprocess per case; the peak resident set size (VmHWM, reset through
    /proc/self/clear_refs) during one forward+backward, minus the resident size (VmRSS) just before
    it. In these memory runs only, glibc's dynamic mmap threshold is pinned (MALLOC_MMAP_THRESHOLD_) so freed tensors leave RSS
    at once. Inputs, warm-up and imports are outside the window; the gradient of logp is inside.

The dense baseline builds the [T, T] weight matrix w(t, k) (as other GRPO-lambda code does, one matrix
shared by the batch: contiguous masks only) and computes z = x @ M^T; it is skipped where one matrix
would exceed ``--dense-limit-gb``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

SIZES = [(8, 4096), (1, 32768)]
CASES = [
    ("grpo", "-"),
    ("epsilon-trace", "recent"),
    ("epsilon-trace", "both"),
    ("epsilon-weight", "recent"),
    ("epsilon-weight", "both"),
    ("dense-trace", "recent"),
    ("dense-trace", "both"),
]
DECAY = 0.99


def _dense_trace_loss(logp, old_logp, adv, mask, style: str):
    """epsilon-trace with an explicit [T, T] weight matrix: the O(T^2) way."""
    import torch

    length = logp.shape[1]
    t = torch.arange(length, dtype=logp.dtype)
    diff = t[:, None] - t[None, :]
    weights = torch.pow(torch.tensor(DECAY, dtype=logp.dtype), diff.clamp(min=0))
    if style == "both":
        weights = torch.maximum(weights, torch.pow(torch.tensor(DECAY, dtype=logp.dtype), t)[None, :])
    weights = torch.tril(weights)
    x = (logp - old_logp) * mask
    ratio = torch.exp(x @ weights.T)
    a = adv[:, None]
    loss = torch.maximum(-a * ratio, -a * torch.clamp(ratio, 0.8, 1.2)) * mask
    return loss.sum() / mask.sum()


def _read_status(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def _make_step(variant: str, style: str, batch: int, length: int):
    """Inputs for one case and a closure running forward+backward once."""
    import torch

    from megatron_ext.losses import aggregate, per_token_policy_loss

    gen = torch.Generator().manual_seed(0)
    old = -torch.rand(batch, length, generator=gen) * 3
    logp = (old + 0.01 * torch.randn(batch, length, generator=gen)).requires_grad_()
    adv = torch.randn(batch, generator=gen)
    mask = torch.ones(batch, length)
    kwargs = (
        dict(variant=variant, lam=DECAY)
        if variant == "grpo"
        else dict(variant=variant, style=style, lam=DECAY)
    )

    def step() -> None:
        logp.grad = None
        if variant == "dense-trace":
            total = _dense_trace_loss(logp, old, adv, mask, style)
        else:
            loss, _ = per_token_policy_loss(logp, old, adv, mask, **kwargs)
            total = aggregate(loss, mask, "token-mean")
        total.backward()

    return step


def measure_memory(variant: str, style: str, batch: int, length: int) -> float:
    """Child body: peak RSS increase (MB) over one forward+backward after warm-up."""
    step = _make_step(variant, style, batch, length)
    for _ in range(3):
        step()
    before = _read_status("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")
    step()
    return (_read_status("VmHWM") - before) / 2**20


def measure_times(cases: list[tuple[str, str]], batch: int, length: int, reps: int) -> list[dict]:
    """Child body: CPU and wall time per case, cases interleaved rep by rep so they share the load."""
    steps = [_make_step(variant, style, batch, length) for variant, style in cases]
    for step in steps:
        for _ in range(3):
            step()
    cpu: list[list[float]] = [[] for _ in cases]
    wall: list[list[float]] = [[] for _ in cases]
    for rep in range(reps):
        for i, ((variant, _), step) in enumerate(zip(cases, steps)):
            if variant == "dense-trace" and rep >= max(3, reps // 10):
                continue
            start_cpu, start_wall = time.process_time(), time.perf_counter()
            step()
            cpu[i].append(time.process_time() - start_cpu)
            wall[i].append(time.perf_counter() - start_wall)
    return [
        {
            "time_ms": 1e3 * statistics.median(c),
            "min_ms": 1e3 * min(c),
            "wall_ms": 1e3 * statistics.median(w),
            "reps": len(c),
        }
        for c, w in zip(cpu, wall)
    ]


def _child(args: argparse.Namespace, *job: str, memory: bool = False):
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    if memory:
        # Large blocks from mmap so that RSS shows what one step needs; timing runs keep glibc's default
        # (with this threshold every >64 KB tensor would be a fresh mmap + page faults, a cost that falls
        # on the many mid-sized tensors of the scan and hardly on the dense baseline's one big matrix).
        env["MALLOC_MMAP_THRESHOLD_"] = "65536"
    repo = Path(__file__).resolve().parent.parent
    env["PYTHONPATH"] = f"{repo}{os.pathsep}{env['PYTHONPATH']}" if env.get("PYTHONPATH") else str(repo)
    cmd = [sys.executable, __file__, "--reps", str(args.reps), "--threads", str(args.threads), *job]
    out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--reps", type=int, default=40)
    parser.add_argument("--dense-limit-gb", type=float, default=2.0)
    parser.add_argument("--memory-case", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--time-size", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_case or args.time_size:
        import torch

        torch.set_num_threads(args.threads)
    if args.memory_case:
        variant, style, batch, length = args.memory_case.split(",")
        print(json.dumps(measure_memory(variant, style, int(batch), int(length))))
        return
    if args.time_size:
        batch, length = (int(v) for v in args.time_size.split(","))
        print(json.dumps(measure_times(_cases(batch, length, args), batch, length, args.reps)))
        return

    results: dict[tuple, dict | None] = {}
    for batch, length in SIZES:
        cases = _cases(batch, length, args)
        times = _child(args, "--time-size", f"{batch},{length}")
        for (variant, style), timing in zip(cases, times):
            peak = _child(args, "--memory-case", f"{variant},{style},{batch},{length}", memory=True)
            results[(variant, style, batch, length)] = dict(timing, peak_mb=peak)
    report(results, args)


def _cases(batch: int, length: int, args: argparse.Namespace) -> list[tuple[str, str]]:
    """The cases that fit: the dense baseline only where one T x T float32 matrix is small enough."""
    dense_gb = 4 * length * length / 2**30
    return [(v, s) for v, s in CASES if v != "dense-trace" or dense_gb <= args.dense_limit_gb]


def report(results: dict, args: argparse.Namespace) -> None:
    load = os.getloadavg()[0]
    print(f"# loss benchmark: forward+backward, float32, CPU, {args.threads} thread(s), decay {DECAY}")
    print(f"(load average at the end: {load:.1f} on {os.cpu_count()} cores; other jobs share the CPU)\n")
    print(
        "| B | T | loss | style | CPU time (ms) | x grpo | min CPU (ms) | wall (ms) | peak mem (MB) "
        "| extra vs grpo (MB) |"
    )
    print("|---|---|---|---|---:|---:|---:|---:|---:|---:|")
    checks = []
    for batch, length in SIZES:
        base = results[("grpo", "-", batch, length)]
        for variant, style in CASES:
            r = results.get((variant, style, batch, length))
            if r is None:
                print(
                    f"| {batch} | {length} | {variant} | {style} | skipped (T x T > {args.dense_limit_gb} GB) | | | |"
                )
                continue
            slow = r["time_ms"] / base["time_ms"]
            extra = r["peak_mb"] - base["peak_mb"]
            print(
                f"| {batch} | {length} | {variant} | {style} | {r['time_ms']:.2f} | {slow:.2f} "
                f"| {r['min_ms']:.2f} | {r['wall_ms']:.2f} | {r['peak_mb']:.1f} | {extra:+.1f} |"
            )
            if variant.startswith("epsilon"):
                checks.append(
                    (f"{variant}/{style} ({batch},{length}) time <= 3x grpo", slow <= 3.0, f"{slow:.2f}x")
                )
                if length == 32768:
                    checks.append(
                        (f"{variant}/{style} (1,32768) extra peak < 50 MB", extra < 50, f"{extra:+.1f} MB")
                    )
                dense = results.get(("dense-trace", style, batch, length))
                if variant == "epsilon-trace" and dense is not None:
                    speedup = dense["time_ms"] / r["time_ms"]
                    checks.append(
                        (
                            f"epsilon-trace/{style} ({batch},{length}) >= 50x faster than dense",
                            speedup >= 50,
                            f"{speedup:.0f}x",
                        )
                    )
    print("\n| target | result | measured |\n|---|---|---|")
    for name, ok, value in checks:
        print(f"| {name} | {'PASS' if ok else 'FAIL'} | {value} |")
    print(
        "\nTime: median (and min) process CPU time, wall-time median beside it, of forward+backward "
        "incl. input checks and metrics; all cases of a size run interleaved in one process so they "
        "share the machine's load; the dense baseline builds its T x T matrix in every call."
    )
    print(
        "Memory method: per-case subprocess; peak RSS (VmHWM after /proc/self/clear_refs) minus RSS "
        "before one forward+backward, MALLOC_MMAP_THRESHOLD_=65536."
    )


if __name__ == "__main__":
    main()
