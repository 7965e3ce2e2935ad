"""metrics.jsonl append/resume truncation and TensorBoard mirroring."""

import json

import pytest

from pipeline.metrics import MetricsLogger, read_metrics


def _tb_scalars(tb_dir, tag):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tb_dir))
    acc.Reload()
    return [(e.step, e.value) for e in acc.Scalars(tag)]


def test_log_rows_and_tensorboard(tmp_path):
    import torch

    with MetricsLogger(tmp_path / "metrics.jsonl", tmp_path / "tb") as m:
        m.log(0, {"reward/mean": 0.25, "train/grad_norm": torch.tensor(1.5), "x/nan": float("nan")})
        m.log(1, {"reward/mean": 0.5, "train/grad_norm": 2.0, "x/nan": 1.0})
    rows = read_metrics(tmp_path / "metrics.jsonl")
    assert rows == [
        {"iteration": 0, "reward/mean": 0.25, "train/grad_norm": 1.5, "x/nan": None},
        {"iteration": 1, "reward/mean": 0.5, "train/grad_norm": 2.0, "x/nan": 1.0},
    ]
    for line in (tmp_path / "metrics.jsonl").read_text().splitlines():
        json.loads(line)  # strict JSON, no NaN literal
    assert _tb_scalars(tmp_path / "tb", "reward/mean") == [(0, 0.25), (1, 0.5)]


def test_resume_truncates_rows_of_incomplete_iterations(tmp_path):
    path = tmp_path / "metrics.jsonl"
    with MetricsLogger(path, tmp_path / "tb") as m:
        for i in range(3):
            m.log(i, {"v": float(i)})
    with open(path, "a") as f:
        f.write('{"iteration": 3, "v": 3.')  # torn write of a killed process
    assert [r["iteration"] for r in read_metrics(path)] == [0, 1, 2]

    # Resume after 2 complete iterations: rows 2 and the torn row go; iteration 2 is logged again.
    with MetricsLogger(path, tmp_path / "tb", completed_iterations=2) as m:
        assert [r["iteration"] for r in read_metrics(path)] == [0, 1]
        m.log(2, {"v": 20.0})
    assert read_metrics(path) == [
        {"iteration": 0, "v": 0.0},
        {"iteration": 1, "v": 1.0},
        {"iteration": 2, "v": 20.0},
    ]
    steps = dict(_tb_scalars(tmp_path / "tb", "v"))
    assert steps == {0: 0.0, 1: 1.0, 2: 20.0}


def test_bad_values_are_errors(tmp_path):
    m = MetricsLogger(tmp_path / "metrics.jsonl", None)
    with pytest.raises(TypeError, match="'a/list'"):
        m.log(0, {"a/list": [1, 2]})
    with pytest.raises(ValueError, match="reserved"):
        m.log(0, {"iteration": 3})
    (tmp_path / "bad.jsonl").write_text('{"iteration": 0}\nnot json\n{"iteration": 1}\n')
    with pytest.raises(ValueError, match="bad.jsonl:2"):
        read_metrics(tmp_path / "bad.jsonl")
