"""`report` stage: PNG curves and a markdown summary from metrics.jsonl."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline.manifest import ManifestError, atomic_write_text
from pipeline.metrics import read_metrics

# Panels of the main figure: (title, metric keys drawn on it). Keys absent from the run are skipped.
PANELS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("reward", ("reward/mean", "reward/accuracy")),
    ("response length", ("rollout/response_length_mean",)),
    ("truncation rate", ("rollout/truncation_rate",)),
    ("loss", ("train/loss",)),
    ("clip fraction", ("train/clip_fraction",)),
    ("KL to reference", ("train/kl",)),
    ("entropy", ("train/entropy",)),
    ("grad norm", ("train/grad_norm",)),
    ("trace |z|", ("train/trace_abs_mean",)),
    ("log-prob mismatch", ("train/logprob_mismatch_mean_abs",)),
    ("time per stage (s)", ("time/rollout", "time/reward", "time/train", "time/save", "time/refit")),
    ("tokens/s", ("rollout/tokens_per_s", "train/tokens_per_s")),
)


def _series(rows: list[dict[str, Any]], key: str) -> tuple[list[int], list[float]]:
    pts = [(r["iteration"], r[key]) for r in rows if isinstance(r.get(key), int | float)]
    return [p[0] for p in pts], [float(p[1]) for p in pts]


def draw_curves(rows: list[dict[str, Any]], out_png: Path) -> list[str]:
    """Draw the panels that have data into `out_png`; returns the keys drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    eval_keys = sorted(
        {k for r in rows for k in r if k.startswith("eval/") and k.endswith(("pass@1", "greedy_accuracy"))}
    )
    panels = [
        (t, [k for k in keys if _series(rows, k)[0]]) for t, keys in (*PANELS, ("evaluation", eval_keys))
    ]
    panels = [(t, keys) for t, keys in panels if keys]
    cols = 3
    nrows = max(1, -(-len(panels) // cols))
    fig, axes = plt.subplots(nrows, cols, figsize=(4.2 * cols, 3.0 * nrows), squeeze=False)
    drawn = []
    for ax, (title, keys) in zip(axes.flat, panels):
        short = [k.split("/", 1)[-1] for k in keys]
        for key, label in zip(keys, short if len(set(short)) == len(short) else keys):
            xs, ys = _series(rows, key)
            initial = (
                _series(rows, key.replace("eval/", "eval_initial/", 1))
                if key.startswith("eval/")
                else ([], [])
            )
            if initial[1]:  # the evaluation before training, drawn at iteration -1
                xs, ys = [-1, *xs], [initial[1][0], *ys]
            ax.plot(xs, ys, marker="o", markersize=3, label=label)
            drawn.append(key)
            if title == "reward" and len(ys) >= 10:  # the per-iteration accuracy is noisy: add a moving mean
                w = max(5, len(ys) // 10)
                smooth = [
                    sum(ys[max(0, i - w + 1) : i + 1]) / len(ys[max(0, i - w + 1) : i + 1])
                    for i in range(len(ys))
                ]
                ax.plot(xs, smooth, linewidth=2, label=f"{label} ({w}-it. mean)")
        ax.set_title(title)
        ax.set_xlabel("iteration")
        ax.grid(alpha=0.3)
        if len(keys) > 1:
            ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    fig.tight_layout()
    tmp = out_png.with_name(f".{out_png.name}.tmp.png")
    fig.savefig(tmp, dpi=90)
    plt.close(fig)
    tmp.replace(out_png)
    return drawn


def summary_markdown(rows: list[dict[str, Any]], name: str) -> str:
    """First vs last iteration of the headline metrics, as a markdown table."""
    keys = [k for _, ks in PANELS[:3] for k in ks] + ["train/kl", "train/grad_norm", "time/iteration"]
    first, last = rows[0], rows[-1]
    lines = [
        f"# {name}: {len(rows)} iterations",
        "",
        f"| metric | iteration {first['iteration']} | iteration {last['iteration']} |",
        "|---|---|---|",
    ]
    for k in keys:
        if k in first or k in last:
            a, b = first.get(k), last.get(k)
            fmt = lambda v: "—" if v is None else f"{v:.4g}"  # noqa: E731
            lines.append(f"| {k} | {fmt(a)} | {fmt(b)} |")
    return "\n".join(lines) + "\n"


def report(metrics_path: Path, out_dir: Path, *, name: str) -> dict[str, Path]:
    """Write `curves.png` and `summary.md` into `out_dir`; returns their paths."""
    rows = read_metrics(metrics_path)
    if not rows:
        raise ManifestError(f"no metrics to report in {metrics_path} (has an iteration completed?)")
    out_dir.mkdir(parents=True, exist_ok=True)
    png, md = out_dir / "curves.png", out_dir / "summary.md"
    draw_curves(rows, png)
    atomic_write_text(md, summary_markdown(rows, name))
    return {"curves": png, "summary": md}


def report_stage(cfg, layout) -> dict[str, Path]:
    """`python -m pipeline report`: curves and summary of the run dir into run_dir/report/."""
    from pipeline.manifest import load_manifest, save_manifest

    paths = report(layout.metrics, layout.report_dir, name=cfg.name)
    manifest = load_manifest(layout.root)
    if manifest is not None:
        manifest.set_stage("report", "done", **{k: layout.rel(v) for k, v in paths.items()})
        save_manifest(layout.root, manifest)
    print(f"[pipeline] report: {paths['curves']} and {paths['summary']}", flush=True)
    rows = read_metrics(layout.metrics)
    first, last = rows[0], rows[-1]
    print(
        f"[pipeline] accuracy (reward/accuracy of the rollouts): iteration {first['iteration']}: "
        f"{first['reward/accuracy']:.3f} -> iteration {last['iteration']}: {last['reward/accuracy']:.3f} "
        f"(mean reward {first['reward/mean']:.3f} -> {last['reward/mean']:.3f})",
        flush=True,
    )
    window = max(1, min(10, len(rows) // 4))
    head = sum(r["reward/accuracy"] for r in rows[:window]) / window
    tail = sum(r["reward/accuracy"] for r in rows[-window:]) / window
    print(
        f"[pipeline] accuracy, mean of the first {window} vs last {window} iterations: {head:.3f} -> {tail:.3f}",
        flush=True,
    )
    for line in _eval_progress(rows):
        print(f"[pipeline] {line}", flush=True)
    return paths


def _eval_progress(rows: list[dict[str, Any]]) -> list[str]:
    """One line per benchmark: greedy accuracy before training and at each evaluation."""
    points: dict[str, list[str]] = {}
    for r in rows:
        for key, value in r.items():
            parts = key.split("/")
            if len(parts) == 3 and parts[2] == "greedy_accuracy" and isinstance(value, float):
                when = "start" if parts[0] == "eval_initial" else f"it {r['iteration']}"
                points.setdefault(parts[1], []).append(f"{when}: {value:.3f}")
    return [f"greedy accuracy on {bench}: " + ", ".join(p) for bench, p in sorted(points.items())]
