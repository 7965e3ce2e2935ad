"""Math reward: a table of tricky (response, ground truth) pairs graded by hand, extraction, batch scoring.

Every expected value is what a careful human grader would give; where math-verify disagrees and no
meaning-preserving normalisation fixes it, the case is an `xfail(strict=True)` with the reason.
"""

from __future__ import annotations

import time

import pytest

from pipeline.rewards import format_reward, last_boxed, math_reward, score_batch, shutdown_pool


def _limitation(response: str, truth: str, expected: float, reason: str):
    return pytest.param(response, truth, expected, marks=pytest.mark.xfail(strict=True, reason=reason))


# (response, ground truth, human grade)
CASES = [
    # --- extraction: which box, nested braces, no answer
    ("The answer is \\boxed{42}.", "42", 1.0),
    ("First \\boxed{41}; wait, recheck: \\boxed{42}", "42", 1.0),
    ("So \\boxed{42}. Hmm, no: \\boxed{41}", "42", 0.0),
    ("The answer is 42.", "42", 0.0),
    ("", "42", 0.0),
    ("x = 3", "3", 0.0),
    ("\\fbox{7}", "7", 1.0),
    ("$\\boxed{5}$", "5", 1.0),
    ("so the answer is \\boxed 5", "5", 1.0),
    ("\\boxed{}", "0", 0.0),
    ("truncated \\boxed{12", "12", 0.0),
    ("\\boxed{\\frac{\\sqrt{3}}{2}}", "\\frac{\\sqrt3}{2}", 1.0),
    ("\\boxed{5} apples and \\boxed{6} pears", "6", 1.0),
    # --- fractions
    ("\\boxed{\\dfrac{3}{4}}", "\\frac34", 1.0),
    ("\\boxed{\\tfrac{2}{3}}", "\\frac{2}{3}", 1.0),
    ("\\boxed{0.75}", "\\frac{3}{4}", 1.0),
    ("\\boxed{3/4}", "\\frac{3}{4}", 1.0),
    ("\\boxed{\\frac{4}{8}}", "\\frac{1}{2}", 1.0),
    ("\\boxed{0.67}", "\\frac{2}{3}", 0.0),
    ("\\boxed{\\frac{1}{2}}", "0.5", 1.0),
    ("\\boxed{\\frac{2}{3}}", "\\frac{3}{2}", 0.0),
    ("\\boxed{2\\frac{1}{2}}", "\\frac{5}{2}", 1.0),
    # --- \left( \right), tuples, order
    ("\\boxed{\\left( 1, 2 \\right)}", "(1,2)", 1.0),
    ("\\boxed{(2, 1)}", "(1,2)", 0.0),
    ("\\boxed{a=2, b=3}", "a=2,b=3", 1.0),
    # --- units, currency, degrees
    ("\\boxed{5\\text{ cm}}", "5", 1.0),
    ("\\boxed{12 \\text{ meters}}", "12", 1.0),
    ("\\boxed{50 \\text{ cm}^2}", "50", 1.0),
    ("\\boxed{90^\\circ}", "90", 1.0),
    ("\\boxed{30^{\\circ}}", "30", 1.0),
    ("\\boxed{\\$18}", "18", 1.0),
    ("\\boxed{18 \\text{ dollars}}", "18", 1.0),
    ("\\boxed{\\$1,000}", "1000", 1.0),
    ("\\boxed{7 \\text{ cm}}", "5", 0.0),
    # --- thousands separators
    ("\\boxed{1,000}", "1000", 1.0),
    ("\\boxed{1000}", "1,000", 1.0),
    ("\\boxed{1{,}000{,}000}", "1000000", 1.0),
    ("\\boxed{1\\,000}", "1000", 1.0),
    ("\\boxed{10,000}", "1000", 0.0),
    ("\\boxed{12,345.5}", "12345.5", 1.0),
    # --- x = 3 vs 3, equations
    ("\\boxed{x = 3}", "3", 1.0),
    ("\\boxed{3}", "x=3", 1.0),
    ("\\boxed{k=-2}", "-2", 1.0),
    ("\\boxed{x = 4}", "3", 0.0),
    ("\\boxed{y = 2x + 1}", "y=2x+1", 1.0),
    # --- percent
    ("\\boxed{50\\%}", "50", 1.0),
    ("\\boxed{50}", "50\\%", 1.0),
    ("\\boxed{25\\%}", "0.25", 1.0),
    ("\\boxed{40\\%}", "50\\%", 0.0),
    # --- intervals
    ("\\boxed{[1, 3)}", "[1,3)", 1.0),
    ("\\boxed{(1, 3)}", "[1,3)", 0.0),
    ("\\boxed{(-\\infty, 2]}", "(-\\infty,2]", 1.0),
    ("\\boxed{[2, \\infty)}", "[2,\\infty)", 1.0),
    ("\\boxed{(-\\infty, 0) \\cup (1, \\infty)}", "(-\\infty,0)\\cup(1,\\infty)", 1.0),
    ("\\boxed{(-\\infty, 0) \\cup (2, \\infty)}", "(-\\infty,0)\\cup(1,\\infty)", 0.0),
    ("\\boxed{x \\le 2}", "(-\\infty, 2]", 1.0),
    ("\\boxed{x < 2}", "(-\\infty, 2]", 0.0),
    ("\\boxed{1 < x < 3}", "(1, 3)", 1.0),
    # --- text answers
    ("\\boxed{\\text{Monday}}", "Monday", 1.0),
    ("\\boxed{monday}", "\\text{Monday}", 1.0),
    ("\\boxed{\\text{Tuesday}}", "Monday", 0.0),
    ("\\boxed{\\text{(B)}}", "B", 1.0),
    ("\\boxed{\\text{(C)}}", "B", 0.0),
    ("\\boxed{\\text{yes}}", "\\text{no}", 0.0),
    ("\\boxed{\\text{even}}", "\\text{odd}", 0.0),
    ("\\boxed{\\text{no solution}}", "\\text{No solution}", 1.0),
    # --- symbolic and numeric forms
    ("\\boxed{2\\sqrt{2}}", "\\sqrt{8}", 1.0),
    ("\\boxed{(x+1)^2}", "x^2+2x+1", 1.0),
    ("\\boxed{3.14}", "\\pi", 0.0),
    ("\\boxed{\\frac{\\pi}{2}}", "\\pi/2", 1.0),
    ("\\boxed{e^{2}}", "e^2", 1.0),
    ("\\boxed{\\sqrt{2}/2}", "\\frac{\\sqrt{2}}{2}", 1.0),
    ("\\boxed{\\frac{1}{\\sqrt{2}}}", "\\frac{\\sqrt{2}}{2}", 1.0),
    ("\\boxed{10.0}", "10", 1.0),
    ("\\boxed{5.}", "5", 1.0),
    ("\\boxed{-5}", "5", 0.0),
    ("\\boxed{2^{10}}", "1024", 1.0),
    ("\\boxed{1.5 \\times 10^{3}}", "1500", 1.0),
    ("\\boxed{\\infty}", "\\infty", 1.0),
    ("\\boxed{3+4i}", "3+4i", 1.0),
    ("\\boxed{4i+3}", "3+4i", 1.0),
    ("\\boxed{3-4i}", "3+4i", 0.0),
    # --- sets, lists, matrices
    ("\\boxed{\\{1,2,3\\}}", "\\{3,2,1\\}", 1.0),
    ("\\boxed{1, 2}", "2, 1", 1.0),
    ("\\boxed{1, 2}", "1, 2, 3", 0.0),
    (
        "\\boxed{\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}}",
        "\\begin{pmatrix}1\\\\2\\end{pmatrix}",
        1.0,
    ),
    (
        "\\boxed{\\begin{pmatrix} 2 \\\\ 1 \\end{pmatrix}}",
        "\\begin{pmatrix}1\\\\2\\end{pmatrix}",
        0.0,
    ),
    # --- known limitations of math-verify (no safe normalisation here)
    _limitation("\\boxed{five}", "5", 1.0, "numbers written in words are parsed as products of symbols"),
    _limitation(
        "\\boxed{0.\\overline{3}}", "\\frac{1}{3}", 1.0, "repeating decimals (\\overline) are not parsed"
    ),
    _limitation(
        "\\boxed{30 \\text{ minutes}}",
        "\\frac{1}{2} \\text{ hour}",
        1.0,
        "units are dropped, not converted: 30 minutes becomes 30",
    ),
    # --- ground truths as datasets store them
    ("\\boxed{18}", "$18$", 1.0),
    ("\\boxed{\\frac{1}{4}}", "\\boxed{\\frac14}", 1.0),
]


@pytest.mark.parametrize(("response", "truth", "expected"), CASES)
def test_math_reward_table(response: str, truth: str, expected: float):
    assert math_reward(response, truth) == expected


def test_table_is_large_and_balanced():
    grades = [c.values[2] if hasattr(c, "values") else c[2] for c in CASES]
    assert len(grades) >= 60
    assert 0.25 < sum(grades) / len(grades) < 0.85


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("\\boxed{a{b{c}}d}", "a{b{c}}d"),
        ("\\boxed{1} \\fbox{2}", "2"),
        ("\\fbox{2} \\boxed{1}", "1"),
        ("\\boxed {3}", "3"),
        ("\\boxed{3", None),
        ("no box", None),
        ("\\boxed 7$", "7"),
    ],
)
def test_last_boxed(text: str, expected: str | None):
    assert last_boxed(text) == expected


def test_format_reward():
    assert format_reward("so 1 + 1 = 2, hence \\boxed{2}.") == 1.0
    assert format_reward("\\boxed{1} then \\boxed{2}") == 0.0  # two answers
    assert format_reward("no answer at all") == 0.0
    assert format_reward("\\boxed{2} and then a long ramble that keeps going") == 0.0


@pytest.fixture(scope="module")
def pool_cleanup():
    yield
    shutdown_pool()


def test_score_batch_matches_math_reward(pool_cleanup):
    pairs = [(r, t) for r, t, _ in (c for c in CASES if not hasattr(c, "values"))][:20]
    scores, stats = score_batch([r for r, _ in pairs], [t for _, t in pairs], timeout_s=10.0, num_workers=2)
    assert scores == [math_reward(r, t) for r, t in pairs]
    assert stats["timeouts"] == 0
    assert stats["n"] == len(pairs)
    assert stats["no_answer"] == sum(last_boxed(r) is None for r, _ in pairs)


def test_score_batch_kills_hostile_checks(pool_cleanup):
    hostile = "\\boxed{9^{9^{9^{9}}}}"
    responses = ["\\boxed{3}", hostile, "\\boxed{4}", hostile, "\\boxed{x = 3}", "no answer"]
    t0 = time.perf_counter()
    scores, stats = score_batch(responses, ["3"] * len(responses), timeout_s=3.0, num_workers=2)
    elapsed = time.perf_counter() - t0
    assert scores == [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    assert stats["timeouts"] == 2
    assert stats["no_answer"] == 1
    # two hostile checks on two workers run side by side: ~3 s each plus a worker restart, not forever
    assert elapsed < 30
    # the replaced workers serve the next batch
    scores, stats = score_batch(["\\boxed{2}"], ["2"], timeout_s=5.0, num_workers=2)
    assert scores == [1.0] and stats["timeouts"] == 0


def test_score_batch_format_weight(pool_cleanup):
    scores, _ = score_batch(
        ["\\boxed{2}", "\\boxed{3}", "2"], ["2"] * 3, timeout_s=5.0, num_workers=1, format_weight=0.5
    )
    assert scores == [1.5, 0.5, 0.0]


def test_score_batch_bad_input():
    with pytest.raises(ValueError, match="pair up"):
        score_batch(["a"], [], timeout_s=1.0, num_workers=1)
    with pytest.raises(ValueError, match="timeout_s"):
        score_batch(["a"], ["b"], timeout_s=0.0, num_workers=1)
