"""A reward worker process: JSON lines in on stdin ({response, answer, format_weight}), scores out.

Started by `pipeline.rewards.pool`; prints `"ready"` once sympy and math-verify are imported and warmed
up, so that start-up time never counts against a check's time limit.
"""

from __future__ import annotations

import json
import os
import sys

from pipeline.rewards.math_reward import format_reward, math_reward


def main() -> None:
    # The protocol owns the real stdout; anything a library prints goes to stderr instead.
    out = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    # The first check builds math-verify's LaTeX parser and regexes (~1 s): do it before "ready".
    math_reward("\\boxed{\\frac{1}{2}}", "0.5")
    out.write(json.dumps("ready") + "\n")
    out.flush()
    for line in sys.stdin:
        task = json.loads(line)
        score = math_reward(task["response"], task["answer"])
        if task["format_weight"]:
            score += task["format_weight"] * format_reward(task["response"])
        out.write(json.dumps(score) + "\n")
        out.flush()


if __name__ == "__main__":
    main()
