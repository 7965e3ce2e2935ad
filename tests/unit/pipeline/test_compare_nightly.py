"""The nightly comparison on fake run directories: config, planning, golden checks, exit codes, report.

The runs here are synthetic metrics.jsonl / manifest.json / eval files written by the test: the unit
under test is the comparison, not the pipeline (tests/integration/test_nightly_cpu.py runs the real one).
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from pipeline.compare.cli import EXIT_CHECK_FAILED, EXIT_OK, EXIT_USAGE, main
from pipeline.compare.collect import load_run, run_is_complete
from pipeline.compare.nightly_config import load_nightly_config
from pipeline.compare.runner import plan_runs, run_local, submit_slurm
from pipeline.compare.stats import area_under_curve
from pipeline.config import ConfigError, config_to_dict, load_config
from pipeline.manifest import Manifest, RunLayout, save_manifest

REPO = Path(__file__).resolve().parents[3]
EXPERIMENT = REPO / "configs" / "experiments" / "tiny_cpu.yaml"
ITERATIONS = 6
SEEDS = [0, 1, 2, 3]
METRIC = "reward/accuracy"


def write_nightly(tmp: Path, **changes: str) -> Path:
    """A nightly YAML in `tmp` comparing grpo and eps-trace-recent on the tiny experiment."""
    fields = {
        "name": "fake",
        "experiment": str(EXPERIMENT),
        "iterations": str(ITERATIONS),
        "seeds": str(SEEDS),
        "baseline": "grpo",
        "variants": "\n  - {name: grpo, variant: grpo}\n  - {name: eps-trace-recent, variant: epsilon-trace, style: recent}",
        "metric": METRIC,
        "threshold": "0.45",
        "bootstrap_resamples": "2000",
        "plot_metrics": "[rollout/response_length_mean, train/kl]",
        "table_metrics": "[rollout/response_length_mean, train/kl]",
        "golden": "fake.golden.json",
        "tolerances": "{auc: 0.02, final_eval: 0.05, below_baseline: 0.01}",
    }
    fields.update(changes)
    path = tmp / "nightly.yaml"
    path.write_text("".join(f"{k}: {v}\n" for k, v in fields.items() if v is not None))
    return path


def accuracy_curve(seed: int, gain: float) -> np.ndarray:
    """A rising curve with a per-seed level (shared by the arms of a seed) plus a per-arm gain."""
    x = np.arange(ITERATIONS, dtype=float)
    return 0.2 + 0.02 * seed + 0.08 * x + gain * x / (ITERATIONS - 1)


def write_fake_run(
    run_dir: Path, curve: np.ndarray, *, eval_acc: float, completed: int | None = None, eval_file: bool = True
) -> None:
    """What `python -m pipeline run` leaves behind, for the keys the comparison reads."""
    layout = RunLayout(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    done = len(curve) if completed is None else completed
    rows = [
        {
            "iteration": i,
            METRIC: float(y),
            "reward/mean": float(y),
            "rollout/response_length_mean": 10.0 + i,
            "train/kl": 0.001 * i,
        }
        for i, y in enumerate(curve[:done])
    ]
    layout.metrics.write_text("".join(json.dumps(r) + "\n" for r in rows))
    manifest = Manifest(completed_iterations=done)
    if eval_file:
        layout.eval_dir.mkdir(parents=True, exist_ok=True)
        doc = {
            "benchmarks": {
                "arithmetic": {"pass@1": eval_acc, "greedy_accuracy": eval_acc, "num_problems": 64}
            }
        }
        (layout.eval_dir / "results.json").write_text(json.dumps(doc))
        manifest.set_stage("evaluate", "done", json="eval/results.json", markdown="eval/results.md")
    if done == len(curve):
        manifest.set_stage("report", "done")
    save_manifest(run_dir, manifest)


GAINS = {"grpo": 0.0, "eps-trace-recent": 0.1}


def populate(out: Path, gains: dict[str, float] = GAINS, skip: tuple[str, int] | None = None) -> None:
    for arm, gain in gains.items():
        for seed in SEEDS:
            if (arm, seed) == skip:
                continue
            curve = accuracy_curve(seed, gain)
            write_fake_run(out / "runs" / arm / f"seed{seed}", curve, eval_acc=0.5 + gain + 0.01 * seed)


def run_cli(nightly: Path, out: Path, *extra: str) -> int:
    return main(["--config", str(nightly), "--out", str(out), "--report-only", *extra])


# ------------------------------------------------------------------------------------------ config


def test_nightly_configs_in_repo_load_and_plan(tmp_path):
    for path in sorted((REPO / "configs" / "nightly").glob("*.yaml")):
        cfg = load_nightly_config(path)
        runs = plan_runs(cfg, tmp_path)
        assert len(runs) == len(cfg.variants) * len(cfg.seeds), path


def test_unknown_key_names_the_dotted_path(tmp_path):
    nightly = write_nightly(tmp_path, tolerances="{auc: 0.02, finl_eval: 0.1}")
    with pytest.raises(ConfigError, match=r"tolerances\.finl_eval: unknown key"):
        load_nightly_config(nightly)
    nightly = write_nightly(tmp_path, variants="\n  - {name: grpo, variant: grpo, stlye: recent}")
    with pytest.raises(ConfigError, match=r"variants\[0\]\.stlye"):
        load_nightly_config(nightly)
    assert run_cli(nightly, tmp_path / "out") == EXIT_USAGE


def test_invalid_values_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="baseline: 'ppo' is not a variant name"):
        load_nightly_config(write_nightly(tmp_path, baseline="ppo"))
    with pytest.raises(ConfigError, match="seeds: has duplicates"):
        load_nightly_config(write_nightly(tmp_path, seeds="[1, 1]"))
    with pytest.raises(ConfigError, match="experiment config not found"):
        load_nightly_config(write_nightly(tmp_path, experiment="nope.yaml"))
    bad_variant = "\n  - {name: grpo, variant: grpo}\n  - {name: x, variant: epsilon-trcae}"
    cfg = load_nightly_config(write_nightly(tmp_path, variants=bad_variant))
    with pytest.raises(ConfigError, match=r"variants\[1\] \(x\).*algorithm\.variant"):
        plan_runs(cfg, tmp_path)


def test_arms_may_not_break_the_pairing(tmp_path):
    variants = (
        "\n  - {name: grpo, variant: grpo}\n  - {name: x, variant: epsilon-trace, overrides: [run.seed=3]}"
    )
    cfg = load_nightly_config(write_nightly(tmp_path, variants=variants))
    with pytest.raises(ConfigError, match="break the pairing"):
        plan_runs(cfg, tmp_path)
    variants = "\n  - {name: grpo, variant: grpo}\n  - {name: x, variant: epsilon-trace, overrides: [data.shuffle_seed=1]}"
    cfg = load_nightly_config(write_nightly(tmp_path, variants=variants))
    with pytest.raises(ConfigError, match="break the pairing"):
        plan_runs(cfg, tmp_path)


def test_plan_pairs_seeds_and_prompts_across_arms(tmp_path):
    cfg = load_nightly_config(write_nightly(tmp_path, shuffle_seed="17"))
    runs = plan_runs(cfg, tmp_path / "out")
    assert [(r.arm, r.seed) for r in runs] == [(a, s) for a in ("grpo", "eps-trace-recent") for s in SEEDS]
    for seed in SEEDS:
        resolved = [config_to_dict(load_config(cfg.experiment, r.overrides)) for r in runs if r.seed == seed]
        assert resolved[0]["algorithm"]["variant"] == "grpo"
        assert resolved[1]["algorithm"]["variant"] == "epsilon-trace"
        for section in resolved[0]:
            if section != "algorithm":  # the arms of one seed differ in the algorithm only
                assert resolved[0][section] == resolved[1][section], section
        assert resolved[0]["run"]["seed"] == resolved[0]["rollout"]["seed"] == seed
        assert resolved[0]["data"]["shuffle_seed"] == 17
    cfg = load_nightly_config(write_nightly(tmp_path, model_seed="5"))
    for run in plan_runs(cfg, tmp_path / "out"):
        exp = load_config(cfg.experiment, run.overrides)
        assert (exp.run.seed, exp.rollout.seed, exp.data.shuffle_seed) == (5, run.seed, run.seed)
        assert resolved[0]["run"]["iterations"] == ITERATIONS


# ------------------------------------------------------------------------------ golden + exit codes


def test_missing_golden_is_a_usage_error(tmp_path, capsys):
    populate(tmp_path / "out")
    assert run_cli(write_nightly(tmp_path), tmp_path / "out") == EXIT_USAGE
    assert "--update-golden" in capsys.readouterr().err


def test_update_golden_then_pass(tmp_path):
    out = tmp_path / "out"
    populate(out)
    nightly = write_nightly(tmp_path)
    assert run_cli(nightly, out, "--update-golden") == EXIT_OK
    golden = json.loads((tmp_path / "fake.golden.json").read_text())
    x = np.arange(ITERATIONS)
    for arm, gain in GAINS.items():
        expected_auc = np.mean([area_under_curve(x, accuracy_curve(s, gain)) for s in SEEDS])
        assert golden["arms"][arm]["auc"] == pytest.approx(expected_auc, abs=1e-12)
        expected_eval = np.mean([0.5 + gain + 0.01 * s for s in SEEDS])
        assert golden["arms"][arm]["final_eval"]["arithmetic"] == pytest.approx(expected_eval, abs=1e-12)
    assert golden["recipe"]["seeds"] == SEEDS and golden["recipe"]["metric"] == METRIC
    assert run_cli(nightly, out) == EXIT_OK
    report = (out / "report.md").read_text()
    assert "**Verdict: PASS**" in report


def test_regression_against_golden_fails_and_is_named(tmp_path, capsys):
    out = tmp_path / "out"
    populate(out)
    nightly = write_nightly(tmp_path)
    assert run_cli(nightly, out, "--update-golden") == EXIT_OK
    # the variant loses its ramp of +0.1: AUC drops by 0.05 > tolerance 0.02, eval by 0.1 > 0.05
    populate(out, {"eps-trace-recent": 0.0})
    assert run_cli(nightly, out) == EXIT_CHECK_FAILED
    err = capsys.readouterr().err
    assert "FAILED golden auc eps-trace-recent" in err
    assert "golden auc grpo" not in err
    summary = json.loads((out / "summary.json").read_text())
    failed = {c["name"] for c in summary["checks"] if not c["passed"]}
    assert "golden auc eps-trace-recent" in failed and "golden eval eps-trace-recent/arithmetic" in failed
    assert "| golden auc eps-trace-recent | **FAIL** |" in (out / "report.md").read_text()


def test_variant_below_baseline_fails(tmp_path, capsys):
    out = tmp_path / "out"
    populate(out, {"grpo": 0.0, "eps-trace-recent": -0.1})
    nightly = write_nightly(tmp_path)
    assert run_cli(nightly, out, "--update-golden") == EXIT_CHECK_FAILED  # golden recorded, but it is below
    assert (tmp_path / "fake.golden.json").exists()
    assert "FAILED vs baseline eps-trace-recent: below baseline" in capsys.readouterr().err


def test_changed_recipe_invalidates_golden(tmp_path, capsys):
    out = tmp_path / "out"
    populate(out)
    assert run_cli(write_nightly(tmp_path), out, "--update-golden") == EXIT_OK
    nightly = write_nightly(tmp_path, overrides="[optimizer.lr=1.0e-3]")
    assert run_cli(nightly, out) == EXIT_CHECK_FAILED
    assert "FAILED golden recipe" in capsys.readouterr().err


def test_incomplete_or_missing_run_fails_with_its_name(tmp_path, capsys):
    out = tmp_path / "out"
    populate(out)
    nightly = write_nightly(tmp_path)
    assert run_cli(nightly, out, "--update-golden") == EXIT_OK
    populate(out, skip=("grpo", 2))
    write_fake_run(out / "runs/grpo/seed2", accuracy_curve(2, 0.0), eval_acc=0.5, completed=3)
    assert run_cli(nightly, out) == EXIT_CHECK_FAILED
    err = capsys.readouterr().err
    assert "FAILED run grpo/seed2: incomplete: 3/6 iterations complete" in err
    # the comparison still runs on the 3 seeds complete in both arms
    summary = json.loads((out / "summary.json").read_text())
    assert summary["arms"]["eps-trace-recent"]["gain"]["seeds"] == [0, 1, 3]


def test_unknown_metric_is_a_usage_error(tmp_path, capsys):
    out = tmp_path / "out"
    populate(out)
    assert run_cli(write_nightly(tmp_path, metric="reward/acc"), out, "--update-golden") == EXIT_USAGE
    assert "logged keys" in capsys.readouterr().err


# -------------------------------------------------------------------------------------------- report


def test_report_contents(tmp_path):
    out = tmp_path / "out"
    populate(out)
    nightly = write_nightly(tmp_path)
    assert run_cli(nightly, out, "--update-golden") == EXIT_OK
    report = (out / "report.md").read_text()
    summary = json.loads((out / "summary.json").read_text())
    gain = summary["arms"]["eps-trace-recent"]["gain"]
    # every seed gains exactly 0.05 in AUC (a linear ramp to 0.1): the interval collapses onto it
    assert gain["mean"] == pytest.approx(0.05) and gain["low"] == pytest.approx(0.05)
    assert "| eps-trace-recent | 4 |" in report and "+0.0500 [+0.0500, +0.0500]" in report
    assert "| **grpo** (baseline) | 4 |" in report
    # iterations to 0.45: 0.2 + 0.02 s + 0.08 x >= 0.45  ->  x = 4, 3, 3, 3 for seeds 0..3 (grpo)
    assert summary["arms"]["grpo"]["iterations_to_threshold"] == [4.0, 3.0, 3.0, 3.0]
    assert "## Final evaluation" in report and "arithmetic" in report
    assert "rollout/response_length_mean" in report and "train/kl" in report
    for name in ("reward_accuracy.png", "rollout_response_length_mean.png", "train_kl.png"):
        assert (out / "plots" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"(plots/{name})" in report


# ------------------------------------------------------------------------------------------ executors

FAKE_PIPELINE = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path
    sys.path[:0] = [{tests_dir!r}, {repo!r}]
    from test_compare_nightly import accuracy_curve, write_fake_run
    args = sys.argv[1:]
    assert args[:4] == ["-m", "pipeline", "run", "--config"], args
    run_dir = Path(args[args.index("--run-dir") + 1])
    seed = int(next(a for a in args if a.startswith("run.seed=")).split("=")[1])
    gain = 0.1 if "algorithm.variant=epsilon-trace" in args else 0.0
    with open({calls!r}, "a") as f:
        f.write(str(run_dir) + "\\n")
    if "fail" in {fail!r} and seed == 1 and gain:
        sys.exit(7)
    write_fake_run(run_dir, accuracy_curve(seed, gain), eval_acc=0.5 + gain)
    """
)


def _fake_python(tmp_path: Path, fail: str = "") -> tuple[str, Path]:
    tmp_path.mkdir(parents=True, exist_ok=True)
    calls = tmp_path / "calls.txt"
    script = tmp_path / "fake_pipeline.py"
    script.write_text(
        FAKE_PIPELINE.format(
            tests_dir=str(Path(__file__).parent), repo=str(REPO), calls=str(calls), fail=fail
        )
    )
    launcher = tmp_path / "fake_python"
    launcher.write_text(f'#!/bin/sh\nexec {sys.executable} {script} "$@"\n')
    launcher.chmod(0o755)
    return str(launcher), calls


def test_run_local_runs_each_run_once_and_resumes(tmp_path):
    cfg = load_nightly_config(write_nightly(tmp_path))
    out = tmp_path / "out"
    runs = plan_runs(cfg, out)
    python, calls = _fake_python(tmp_path, fail="fail")
    outcomes = run_local(cfg, runs, out, python=python, echo=lambda s: None)
    assert [o.state for o in outcomes].count("failed") == 1
    failed = next(o for o in outcomes if o.state == "failed")
    assert (failed.run.arm, failed.run.seed, failed.returncode) == ("eps-trace-recent", 1, 7)
    assert "$ " in failed.log.read_text()  # the command line is logged
    assert len(calls.read_text().split()) == len(runs)
    # second invocation: only the failed run is started again
    python, calls2 = _fake_python(tmp_path / "second")
    outcomes = run_local(cfg, runs, out, python=python, echo=lambda s: None)
    assert [o.state for o in outcomes].count("skipped") == len(runs) - 1
    assert calls2.read_text().split() == [str(failed.run.run_dir)]
    assert all(run_is_complete(r.run_dir, ITERATIONS) for r in runs)
    result = load_run(runs[0].run_dir, arm="grpo", seed=0, iterations=ITERATIONS, eval_metric="pass@1")
    assert result.status == "complete" and result.final_eval == {"arithmetic": 0.5}


def test_submit_slurm_chains_runs_and_a_dependent_report(tmp_path):
    nightly = write_nightly(tmp_path, slurm="{chain: 2, sbatch_args: [--gpus-per-node=8]}")
    cfg = load_nightly_config(nightly)
    out = tmp_path / "out"
    runs = plan_runs(cfg, out)
    write_fake_run(runs[0].run_dir, accuracy_curve(0, 0.0), eval_acc=0.5)  # complete: not submitted
    submitted: list[list[str]] = []

    def fake_sbatch(cmd, **kwargs):
        submitted.append(cmd)
        return subprocess.CompletedProcess(cmd, 0, stdout=f"{100 + len(submitted)};cluster\n", stderr="")

    ids = submit_slurm(cfg, runs, out, nightly_config_path=nightly, runner=fake_sbatch, echo=lambda s: None)
    assert len(ids) == 2 * (len(runs) - 1) + 1
    run_jobs, report_job = submitted[:-1], submitted[-1]
    assert all(c[:2] == ["sbatch", "--parsable"] and "--gpus-per-node=8" in c for c in run_jobs)
    assert sum("--dependency=singleton" in c for c in run_jobs) == len(runs) - 1
    first = run_jobs[0]
    script_at = first.index("slurm/nightly.sbatch")
    assert first[script_at + 1 : script_at + 3] == ["run", str(ITERATIONS)]
    assert first[first.index("--run-dir") + 1] == str(runs[1].run_dir)
    assert "run.seed=1" in first and "algorithm.variant=grpo" in first
    assert f"--dependency=afterany:{':'.join(ids[:-1])}" in report_job
    assert report_job[report_job.index("slurm/nightly.sbatch") + 1] == "report"


def test_nightly_sbatch_is_valid_bash():
    subprocess.run(["bash", "-n", str(REPO / "slurm" / "nightly.sbatch")], check=True)


# -------------------------------------------------------------------------------------------- collect


def test_load_run_uses_committed_iterations_and_the_manifest_eval(tmp_path):
    run_dir = tmp_path / "run"
    curve = accuracy_curve(0, 0.0)
    write_fake_run(run_dir, curve, eval_acc=0.25, completed=4)  # killed after iteration 3 was committed
    with open(RunLayout(run_dir).metrics, "a") as f:  # a row of the uncommitted iteration 4 was written
        f.write(json.dumps({"iteration": 4, METRIC: 9.0}) + "\n")
    result = load_run(run_dir, arm="grpo", seed=0, iterations=ITERATIONS, eval_metric="pass@1")
    assert result.status == "incomplete" and result.message == "4/6 iterations complete"
    x, y = result.curve(METRIC)
    np.testing.assert_array_equal(x, [0, 1, 2, 3])
    np.testing.assert_allclose(y, curve[:4])
    assert result.final_eval == {"arithmetic": 0.25}
    with pytest.raises(KeyError, match="logged keys"):
        result.curve("reward/acc")
    (RunLayout(run_dir).eval_dir / "results.json").write_text("{not json")
    broken = load_run(run_dir, arm="grpo", seed=0, iterations=ITERATIONS, eval_metric="pass@1")
    assert broken.status == "incomplete" and "unreadable" in broken.message
    missing = load_run(tmp_path / "nope", arm="grpo", seed=0, iterations=ITERATIONS, eval_metric="pass@1")
    assert missing.status == "missing"
