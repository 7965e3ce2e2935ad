"""`OUT/report.md`, `OUT/summary.json` and PNG plots (`OUT/plots/*.png`) of a nightly comparison.

The markdown has the verdict and failed checks first, then: the AUC of the compared metric per arm
(mean and t interval across seeds), each variant's paired AUC gain over the baseline (bootstrap
percentile CI, relative gain, paired t CI), iterations to the threshold per seed, the final evaluation
per benchmark, final training metrics (response length, KL, ...), all checks, and the plots: mean
curves over seeds with confidence bands, one PNG per metric.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.compare.analysis import Comparison, mean_interval
from pipeline.compare.golden import Check
from pipeline.manifest import atomic_write_json, atomic_write_text

__all__ = ["plot_file_name", "render_markdown", "summary_dict", "write_plots", "write_report"]

LINE_STYLES = ("-", "--", ":", "-.")
FEW_SEEDS = 10  # below this the percentile bootstrap under-covers noticeably (see stats.py)


def plot_file_name(metric: str) -> str:
    """`reward/accuracy` -> `reward_accuracy.png`."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", metric).strip("_") + ".png"


def _fmt(x: float | None, digits: int = 4, sign: bool = False) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    return f"{x:+.{digits}f}" if sign else f"{x:.{digits}f}"


def _pct(x: float) -> str:
    return "n/a" if math.isnan(x) else f"{100 * x:+.1f}%"


def _interval(mean: float, low: float, high: float, sign: bool = False) -> str:
    if math.isnan(mean):
        return "n/a"
    if low == high:
        return _fmt(mean, sign=sign)
    return f"{_fmt(mean, sign=sign)} [{_fmt(low, sign=sign)}, {_fmt(high, sign=sign)}]"


def _auc_table(cmp: Comparison) -> list[str]:
    cfg = cmp.config
    conf = f"{cfg.confidence:.0%}"
    lines = [
        f"| arm | seeds | AUC {conf} CI | gain over {cfg.baseline} ({conf} bootstrap CI) | relative gain "
        f"({conf} bootstrap CI) | paired t {conf} CI | significant | iterations to {cfg.metric} ≥ {cfg.threshold:g} |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for spec in cfg.variants:
        arm = cmp.arms[spec.name]
        auc = _interval(*arm.auc_interval(cfg.confidence)) if arm.auc.size else "n/a"
        reached = ", ".join("never" if r is None else f"{r:g}" for r in arm.iters_to_threshold) or "n/a"
        if spec.name == cfg.baseline:
            lines.append(
                f"| **{spec.name}** (baseline) | {len(arm.seeds)} | {auc} | — | — | — | — | {reached} |"
            )
            continue
        gain = cmp.gains[spec.name]
        if gain is None:
            cells = ["n/a"] * 4
        elif gain.bootstrap is None:
            cells = [_fmt(gain.gain, sign=True) + " (1 seed, no CI)", _pct(gain.relative), "n/a", "n/a"]
        else:
            b, (tm, tl, th) = gain.bootstrap, gain.t_interval
            cells = [
                _interval(b.gain, b.low, b.high, sign=True),
                f"{_pct(b.relative)} [{_pct(b.relative_low)}, {_pct(b.relative_high)}]",
                _interval(tm, tl, th, sign=True),
                "yes" if gain.significant else "no",
            ]
        lines.append(f"| {spec.name} | {len(arm.seeds)} | {auc} | " + " | ".join(cells) + f" | {reached} |")
    return lines


def _final_table(cmp: Comparison, attr: str, title: str) -> list[str]:
    keys = sorted({k for arm in cmp.arms.values() for k in getattr(arm, attr)})
    if not keys:
        return [f"_No {title} recorded._"]
    lines = ["| arm | " + " | ".join(keys) + " |", "|---|" + "---|" * len(keys)]
    for name, arm in cmp.arms.items():
        values = getattr(arm, attr)
        cells = []
        for k in keys:
            if k not in values:
                cells.append("n/a")
                continue
            cells.append(_interval(*mean_interval(values[k], cmp.config.confidence)))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def _checks_table(checks: list[Check]) -> list[str]:
    lines = ["| check | result | details |", "|---|---|---|"]
    for c in checks:
        lines.append(f"| {c.name} | {'PASS' if c.passed else '**FAIL**'} | {c.message.replace('|', '/')} |")
    return lines


def render_markdown(cmp: Comparison, checks: list[Check], plots: dict[str, Path], *, extra: str = "") -> str:
    """The report's markdown (plots referenced relative to the report's directory)."""
    cfg = cmp.config
    failed = [c for c in checks if not c.passed]
    verdict = "PASS" if not failed else f"FAIL ({len(failed)} check{'s' if len(failed) > 1 else ''} failed)"
    out = [f"# Nightly `{cfg.name}`: {', '.join(v.name for v in cfg.compared)} vs {cfg.baseline}", ""]
    out += [f"**Verdict: {verdict}**", ""]
    out += [f"- failed: `{c.name}`: {c.message}" for c in failed] + ([""] if failed else [])
    seeds_done = min((len(a.seeds) for a in cmp.arms.values()), default=0)
    out += [
        f"Experiment `{Path(cfg.experiment).name}`, {cfg.iterations} iterations, seeds {cfg.seeds} "
        f"(paired: same model init, prompts and sampling seed per seed across arms). Compared metric "
        f"`{cfg.metric}`: AUC = trapezoid area over iterations / span (the curve's mean level); "
        f"bands and intervals at {cfg.confidence:.0%}; bootstrap over seeds with {cfg.bootstrap_resamples} resamples.",
    ]
    if seeds_done == 1:
        out += ["", "> One seed per arm: no confidence intervals; the gain is a single paired difference."]
    elif seeds_done < FEW_SEEDS:
        out += [
            "",
            f"> With {seeds_done} seed(s) per arm the percentile bootstrap interval is too narrow (at 3 seeds "
            "a null gain is declared significant about 25% of the time instead of 5%); read the paired t "
            "interval beside it: `significant` needs both intervals to exclude 0.",
        ]
    if extra:
        out += ["", extra]
    out += ["", f"## AUC of `{cfg.metric}` and gain over `{cfg.baseline}`", "", *_auc_table(cmp)]
    out += [
        "",
        f"## Final evaluation (`{cfg.eval_metric}`, mean over seeds with t CI)",
        "",
        *_final_table(cmp, "final_eval", "final evaluation"),
    ]
    out += ["", "## Final training metrics (last iteration, mean over seeds with t CI)", ""]
    out += _final_table(cmp, "final", "training metrics")
    out += ["", "## Checks", "", *_checks_table(checks), "", "## Plots", ""]
    out += [f"![{key}]({path.as_posix()})" for key, path in plots.items()]
    return "\n".join(out) + "\n"


def write_plots(cmp: Comparison, out_dir: str | Path) -> dict[str, Path]:
    """One PNG per banded metric (mean over seeds, shaded band per arm); returns key -> path relative to out_dir."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    (out_dir / "plots").mkdir(parents=True, exist_ok=True)
    cfg = cmp.config
    keys = list(dict.fromkeys([cfg.metric, *cfg.plot_metrics]))
    paths = {}
    for key in keys:
        arms = [(name, arm.bands[key], len(arm.seeds)) for name, arm in cmp.arms.items() if key in arm.bands]
        if not arms:
            continue
        fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=110)
        for i, (name, band, n) in enumerate(arms):  # line styles keep coinciding arms visible
            style = LINE_STYLES[i % len(LINE_STYLES)]
            (line,) = ax.plot(band.iterations, band.mean, style, label=f"{name} (n={n})", lw=1.8)
            ax.fill_between(band.iterations, band.low, band.high, color=line.get_color(), alpha=0.2, lw=0)
        if key == cfg.metric:
            ax.axhline(cfg.threshold, color="grey", ls="--", lw=1, label=f"threshold {cfg.threshold:g}")
        ax.set_xlabel("iteration")
        ax.set_ylabel(key)
        ax.set_title(f"{cfg.name}: {key} (mean, {cfg.confidence:.0%} {cfg.band} band)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        rel = Path("plots") / plot_file_name(key)
        fig.savefig(out_dir / rel)
        plt.close(fig)
        paths[key] = rel
    return paths


def _floats(a: np.ndarray) -> list[float]:
    return [float(x) for x in a]


def summary_dict(cmp: Comparison, checks: list[Check]) -> dict[str, Any]:
    """Machine-readable numbers of the report."""
    arms = {}
    for name, arm in cmp.arms.items():
        gain = cmp.gains[name] if name in cmp.gains else None
        entry: dict[str, Any] = {
            "seeds": arm.seeds,
            "auc": _floats(arm.auc),
            "iterations_to_threshold": arm.iters_to_threshold,
            "final_eval": {k: _floats(v) for k, v in arm.final_eval.items()},
            "final": {k: _floats(v) for k, v in arm.final.items()},
        }
        if gain is not None:
            entry["gain"] = {"mean": gain.gain, "relative": gain.relative, "seeds": gain.seeds}
            if gain.bootstrap is not None:
                b = gain.bootstrap
                entry["gain"].update(
                    low=b.low,
                    high=b.high,
                    relative_low=b.relative_low,
                    relative_high=b.relative_high,
                    significant=gain.significant,
                    t_low=gain.t_interval[1],
                    t_high=gain.t_interval[2],
                )
        arms[name] = entry
    return {
        "nightly": cmp.config.name,
        "metric": cmp.config.metric,
        "baseline": cmp.config.baseline,
        "passed": all(c.passed for c in checks),
        "checks": [{"name": c.name, "passed": c.passed, "message": c.message} for c in checks],
        "runs": [{"arm": r.arm, "seed": r.seed, "status": r.status, "message": r.message} for r in cmp.runs],
        "arms": arms,
    }


def write_report(cmp: Comparison, checks: list[Check], out_dir: str | Path, *, extra: str = "") -> Path:
    """Write plots, report.md and summary.json into out_dir; returns the report path."""
    out_dir = Path(out_dir)
    plots = write_plots(cmp, out_dir)
    path = out_dir / "report.md"
    atomic_write_text(path, render_markdown(cmp, checks, plots, extra=extra))
    atomic_write_json(out_dir / "summary.json", summary_dict(cmp, checks))
    return path
