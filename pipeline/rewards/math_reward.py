"""Rule-based math reward: the last `\\boxed{...}` of a response, judged equal to the ground truth by math-verify.

`math_reward(response, ground_truth)` is a pure function with no time limit of its own: math-verify's
built-in limits use `signal.alarm`, which fails outside the main thread and cannot interrupt sympy while
it is inside C code (an integer power such as `9^{9^{9^{9}}}` never returns). Untrusted batches are
therefore scored through `pipeline.rewards.pool.score_batch`, which runs this function in worker
processes and kills any that exceed the per-check time limit.

Pipeline of one check:
1. `last_boxed(response)`: content of the last `\\boxed{...}` / `\\fbox{...}` (nested braces) or
   `\\boxed 5`; none -> reward 0.
2. `normalize_answer` on both sides: strips `$`, `\\left`/`\\right`, `\\!`/`\\,` spacing, thousands
   separators (`1,000` / `1{,}000` / `1\\,000` -> `1000`), a trailing period, `\\dfrac`/`\\tfrac`.
3. Exact match of a canonical text form (catches text answers such as `\\text{Monday}` vs `Monday`).
4. Otherwise math-verify: both sides parsed as LaTeX (boxed priority first, then a plain expression),
   `verify(gold, pred)` (numeric tolerance, symbolic equality, sets, intervals, `x = 3` vs `3`,
   percentages, units removed by math-verify's normalisation, an inequality for an interval).
"""

from __future__ import annotations

import logging
import re

_BOX_COMMANDS = ("\\boxed", "\\fbox")
_THOUSANDS = re.compile(r"^[+-]?\d{1,3}(,\d{3})+(\.\d+)?$")
_TEXT_WRAPPERS = re.compile(r"\\(?:text|textbf|textit|mathrm|mathbf|mbox|operatorname)\s*\{([^{}]*)\}")

# math-verify logs a warning the first time timeouts are disabled; we handle time limits ourselves.
logging.getLogger("math_verify").setLevel(logging.ERROR)


def last_boxed(text: str) -> str | None:
    """Content of the last `\\boxed{...}` or `\\fbox{...}` in `text` (braces matched), or None.

    Also accepts the brace-less form `\\boxed 42` (content up to the next whitespace or `$`).
    An unbalanced last box (the response was truncated inside it) counts as no answer.
    """
    start = max(text.rfind(cmd) for cmd in _BOX_COMMANDS)
    if start < 0:
        return None
    cmd = next(c for c in _BOX_COMMANDS if text.startswith(c, start))
    i = start + len(cmd)
    if i < len(text) and text[i] == " " and (i + 1 >= len(text) or text[i + 1] != "{"):
        m = re.match(r"\s*([^\s$]+)", text[i:])
        return m.group(1) if m else None
    while i < len(text) and text[i].isspace():
        i += 1
    if i >= len(text) or text[i] != "{":
        return None
    depth = 0
    for j in range(i, len(text)):
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                return text[i + 1 : j]
    return None


def normalize_answer(answer: str) -> str:
    """Light, meaning-preserving clean-up applied to both sides before math-verify (see module doc)."""
    s = answer.strip()
    if len(s) >= 2 and s[0] == "$" and s[-1] == "$":
        s = s.strip("$").strip()
    inner = last_boxed(s) if s.startswith(_BOX_COMMANDS) else None
    if inner is not None:
        s = inner.strip()
    s = s.replace("\\left", "").replace("\\right", "")
    s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    s = re.sub(r"(\d)\{,\}(\d)", r"\1,\2", s)
    s = re.sub(r"(\d)\\[,!;: ](\d)", r"\1\2", s)  # 1\,000 / 1\!000 thin spaces inside numbers
    s = re.sub(r"(?<!\\)\\[!,;: ]", " ", s).strip()
    s = s.rstrip(".").strip()
    if _THOUSANDS.match(s):
        s = s.replace(",", "")
    return s


def _canonical_text(s: str) -> str:
    """Case-folded text form with LaTeX text wrappers, spaces and a leading `x =`-style label removed."""
    prev = None
    while prev != s:
        prev, s = s, _TEXT_WRAPPERS.sub(r"\1", s)
    s = s.replace("\\%", "%").replace("{", "").replace("}", "")
    s = re.sub(r"\s+", "", s).lower()
    return s


def _parse(latex: str):
    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse

    config = [LatexExtractionConfig(boxed_match_priority=0), ExprExtractionConfig()]
    return parse("\\boxed{" + latex + "}", extraction_config=config, parsing_timeout=None)


def answers_equivalent(pred: str, gold: str) -> bool:
    """Whether the extracted answer `pred` equals the reference `gold` (both LaTeX snippets)."""
    from math_verify import verify

    p, g = normalize_answer(pred), normalize_answer(gold)
    if not p:
        return False
    if _canonical_text(p) == _canonical_text(g):
        return True
    gold_parsed, pred_parsed = _parse(g), _parse(p)
    if not gold_parsed or not pred_parsed:
        return False
    # allow_set_relation_comp: `x \\le 2` answers `(-\\infty, 2]` (an inequality for an interval).
    return bool(verify(gold_parsed, pred_parsed, timeout_seconds=None, allow_set_relation_comp=True))


def math_reward(response: str, ground_truth: str) -> float:
    """1.0 if the last boxed answer of `response` equals `ground_truth`, else 0.0 (no answer -> 0.0).

    No time limit here (see the module docstring): call it directly only on trusted text, and use
    `score_batch` for model outputs.
    """
    pred = last_boxed(response)
    if pred is None:
        return 0.0
    try:
        return 1.0 if answers_equivalent(pred, ground_truth) else 0.0
    except Exception:  # sympy/latex2sympy raise many types on malformed input: an unparsable answer is wrong
        return 0.0


def format_reward(response: str) -> float:
    """1.0 when the response ends with exactly one non-empty boxed answer and nothing after its sentence.

    Off by default (`reward.format_weight = 0`); when on, the batch score is
    `math_reward + format_weight * format_reward`.
    """
    boxes = sum(response.count(cmd + "{") for cmd in _BOX_COMMANDS)
    pred = last_boxed(response)
    if boxes != 1 or not pred or not pred.strip():
        return 0.0
    tail = response[response.rfind(pred) + len(pred) + 1 :]
    return 1.0 if len(tail.strip().strip("$.").strip()) <= 8 else 0.0
