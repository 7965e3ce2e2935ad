"""Reward scoring throughput: `math_reward` in-process vs `score_batch` (process pool, hard time limit).

Prints a markdown table of checks per second on distinct typical model answers (integers, fractions,
intervals, text, wrong and missing answers), plus a batch with hostile answers that must be killed.

    python benchmarks/reward_bench.py [--n 400] [--workers 1,2]
"""

from __future__ import annotations

import argparse
import time

from pipeline.rewards import math_reward, score_batch, shutdown_pool


def make_pairs(n: int) -> list[tuple[str, str]]:
    """n distinct (response, answer) pairs of typical shapes (distinct so math-verify's caches miss)."""
    shapes = [
        lambda k: (f"so the total is \\boxed{{{k}}}.", f"{k}"),
        lambda k: (f"\\boxed{{\\dfrac{{{k}}}{{{k + 5}}}}}", f"\\frac{{{k}}}{{{k + 5}}}"),
        lambda k: (f"\\boxed{{[1, {k}]}}", f"[1,{k}]"),
        lambda k: (f"\\boxed{{\\text{{name{k}}}}}", f"\\text{{name{k}}}"),
        lambda k: (f"\\boxed{{x = {k}}}", f"{k + 1}"),
        lambda k: (f"\\boxed{{{k}\\sqrt{{3}}}}", f"{k}\\sqrt3"),
        lambda k: (f"I think it is {k}", f"{k}"),
        lambda k: (f"\\boxed{{{k},350}}", f"{k}350"),
    ]
    return [shapes[i % len(shapes)](i + 2) for i in range(n)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=400, help="checks per measurement")
    parser.add_argument("--workers", default="1,2", help="comma-separated pool sizes")
    args = parser.parse_args()
    pairs = make_pairs(2 * args.n)
    rows = []
    math_reward("\\boxed{1}", "1")  # build math-verify's parser first, as the workers do
    t0 = time.perf_counter()
    for r, a in pairs[args.n :]:
        math_reward(r, a)
    rows.append(("math_reward, in-process (no time limit)", args.n / (time.perf_counter() - t0), 0))
    for w in (int(x) for x in args.workers.split(",")):
        score_batch(["\\boxed{1}"], ["1"], timeout_s=10.0, num_workers=w)  # start the workers
        t0 = time.perf_counter()
        part = pairs[: args.n]
        _, stats = score_batch([r for r, _ in part], [a for _, a in part], timeout_s=5.0, num_workers=w)
        rows.append((f"score_batch, {w} worker(s)", args.n / (time.perf_counter() - t0), stats["timeouts"]))
        hostile = ["\\boxed{9^{9^{9^{9}}}}"] * 2 + [r for r, _ in pairs[:20]]
        t0 = time.perf_counter()
        _, stats = score_batch(hostile, ["3"] * 2 + [a for _, a in pairs[:20]], timeout_s=1.0, num_workers=w)
        rows.append(
            (
                f"score_batch, {w} worker(s), 2 hostile + 20 normal, 1 s limit",
                22 / (time.perf_counter() - t0),
                stats["timeouts"],
            )
        )
        shutdown_pool()
    print("| scoring | checks/s | time-outs |\n|---|---|---|")
    for name, rate, timeouts in rows:
        print(f"| {name} | {rate:.1f} | {timeouts:.0f} |")


if __name__ == "__main__":
    main()
