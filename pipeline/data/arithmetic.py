"""A synthetic arithmetic task for CPU runs: seeded problems with exact integer answers.

Difficulty levels (operands drawn uniformly, answers always integers):

| level | form                    | operands        |
|-------|-------------------------|-----------------|
| 1     | a + b                   | 0..9            |
| 2     | a + b or a - b          | 0..20           |
| 3     | a + b or a - b          | 0..99           |
| 4     | a op b op c, op in +-   | 0..99           |
| 5     | a * b + c or a * b - c  | 2..20, 0..99    |

`make_arithmetic_problems(n, seed=s, difficulty=d)` is a pure function of (n, s, d). The registered
dataset `arithmetic` draws its `train` split from seed 1000 + shuffle seed and its `eval` split from
seed 2_000_000 + shuffle seed, so the two never share a random stream.
"""

from __future__ import annotations

import random

DIFFICULTIES = (1, 2, 3, 4, 5)
TRAIN_SEED_BASE = 1000
EVAL_SEED_BASE = 2_000_000


def _expression(rng: random.Random, difficulty: int) -> str:
    if difficulty == 1:
        return f"{rng.randint(0, 9)} + {rng.randint(0, 9)}"
    if difficulty in (2, 3):
        top = 20 if difficulty == 2 else 99
        return f"{rng.randint(0, top)} {rng.choice('+-')} {rng.randint(0, top)}"
    if difficulty == 4:
        a, b, c = (rng.randint(0, 99) for _ in range(3))
        return f"{a} {rng.choice('+-')} {b} {rng.choice('+-')} {c}"
    return f"{rng.randint(2, 20)} * {rng.randint(2, 20)} {rng.choice('+-')} {rng.randint(0, 99)}"


def evaluate_expression(expr: str) -> int:
    """Exact value of an expression made of non-negative integers, `+`, `-`, `*` (usual precedence)."""
    tokens = expr.split()
    if len(tokens) % 2 == 0 or any(t not in "+-*" for t in tokens[1::2]):
        raise ValueError(f"not an arithmetic expression of the synthetic task: {expr!r}")
    terms: list[int] = [int(tokens[0])]
    signs: list[int] = [1]
    for op, num in zip(tokens[1::2], tokens[2::2]):
        if op == "*":
            terms[-1] *= int(num)
        else:
            terms.append(int(num))
            signs.append(1 if op == "+" else -1)
    return sum(s * t for s, t in zip(signs, terms))


def make_arithmetic_problems(n: int, *, seed: int, difficulty: int) -> list[dict]:
    """`n` problems {id, problem, answer} of one difficulty level, a deterministic function of `seed`."""
    if difficulty not in DIFFICULTIES:
        raise ValueError(f"unknown arithmetic difficulty {difficulty!r}; valid: {list(DIFFICULTIES)}")
    if n < 0:
        raise ValueError(f"number of arithmetic problems must be >= 0, got {n}")
    rng = random.Random(f"arithmetic-{difficulty}-{seed}")
    problems = []
    for i in range(n):
        expr = _expression(rng, difficulty)
        problems.append(
            {
                "id": f"arithmetic-d{difficulty}-s{seed}-{i}",
                "problem": f"What is {expr}?",
                "answer": str(evaluate_expression(expr)),
            }
        )
    return problems


def arithmetic_split(split: str, *, n: int, difficulty: int, shuffle_seed: int = 0) -> list[dict]:
    """The `train` or `eval` split of the registered `arithmetic` dataset (disjoint seeds)."""
    bases = {"train": TRAIN_SEED_BASE, "eval": EVAL_SEED_BASE, "test": EVAL_SEED_BASE}
    if split not in bases:
        raise ValueError(f"unknown split {split!r} of dataset 'arithmetic'; valid: {sorted(bases)}")
    return make_arithmetic_problems(n, seed=bases[split] + shuffle_seed, difficulty=difficulty)
