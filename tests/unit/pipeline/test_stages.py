"""Pipeline stage helpers that need no model: prompt order, batch layout, state commits, validation,
config resolution on resume, the report and the CLI's errors."""

from dataclasses import dataclass, field

import pytest
import torch

from pipeline.config import ConfigError, load_config
from pipeline.manifest import Manifest, RunLayout, load_manifest
from pipeline.stages.batch import (
    NonFiniteError,
    check_finite,
    collate_rollouts,
    iteration_problem_indices,
    rollout_statistics,
)
from pipeline.stages.cli import resolve_config
from pipeline.stages.state import commit_iteration, discard_uncommitted, should_save
from pipeline.validation import ValidationError, validate_model, validate_resources

TINY = "configs/experiments/tiny_cpu.yaml"


@dataclass
class FakeSample:
    prompt_ids: list
    response_ids: list
    response_logprobs: list
    finish_reason: str = "stop"
    prompt_index: int = 0
    sample_index: int = 0
    text: str = ""
    stop_reason: object = None
    extra: dict = field(default_factory=dict)


def test_prompt_order_is_epochwise_permutation_and_history_free():
    n, per_it = 10, 4
    seen = [i for it in range(5) for i in iteration_problem_indices(n, it, per_it, seed=3)]
    assert sorted(seen[:10]) == list(range(10))  # epoch 0 visits every problem once
    assert sorted(seen[10:20]) == list(range(10))  # and so does epoch 1
    assert seen[:10] != seen[10:20]  # with a new order
    assert iteration_problem_indices(n, 3, per_it, seed=3) == seen[12:16]  # no dependence on history
    assert iteration_problem_indices(n, 0, per_it, seed=4) != seen[:4]
    with pytest.raises(ValueError, match="empty"):
        iteration_problem_indices(0, 0, 1, seed=0)


def test_collate_matches_a_per_token_loop():
    samples = [
        FakeSample([5, 6, 7], [8, 9], [-0.5, -0.25], "stop"),
        FakeSample([5], [1, 2, 3, 4], [-1.0, -2.0, -3.0, -4.0], "length"),
    ]
    adv = torch.tensor([0.5, -1.5], dtype=torch.float64)
    out = collate_rollouts(samples, adv, pad_id=0)
    assert out["input_ids"].shape == (2, 5)
    for b, s in enumerate(samples):
        seq = s.prompt_ids + s.response_ids
        for t in range(5):
            in_resp = len(s.prompt_ids) <= t < len(seq)
            assert out["input_ids"][b, t].item() == (seq[t] if t < len(seq) else 0)
            assert out["response_mask"][b, t].item() == float(in_resp)
            want = s.response_logprobs[t - len(s.prompt_ids)] if in_resp else 0.0
            assert out["old_logp"][b, t].item() == want
    assert out["advantages"].dtype == torch.float32 and out["advantages"].tolist() == [0.5, -1.5]
    with pytest.raises(ValueError, match="2 response tokens but 1 log-probs"):
        collate_rollouts([FakeSample([1], [2, 3], [-1.0])], torch.zeros(1), pad_id=0)


def test_rollout_statistics_against_hand_counts():
    samples = [FakeSample([1], [2] * k, [0.0] * k, "length" if k == 4 else "stop") for k in (1, 2, 3, 4)]
    stats = rollout_statistics(samples, [1.0, 0.0, 0.0, 0.0], [True, False, False, False], group_size=2)
    assert stats["reward/mean"] == 0.25 and stats["reward/accuracy"] == 0.25
    assert stats["rollout/response_length_mean"] == 2.5 and stats["rollout/truncation_rate"] == 0.25
    assert stats["reward/solved_groups"] == 0.5 and stats["reward/zero_variance_groups"] == 0.5
    with pytest.raises(NonFiniteError, match="train/loss"):
        check_finite(
            {"train/loss": float("nan"), "train/grad_norm": 1.0},
            ["train/loss", "train/grad_norm"],
            where="it 3",
        )


def test_commit_and_discard_uncommitted(tmp_path):
    layout = RunLayout(tmp_path)
    manifest = Manifest(checkpoint="checkpoints/init")
    (tmp_path / "checkpoints" / "init").mkdir(parents=True)
    for it in range(3):
        layout.checkpoint(it).mkdir(parents=True)
        commit_iteration(layout, manifest, it, checkpoint=layout.checkpoint(it))
    assert load_manifest(tmp_path).completed_iterations == 3
    assert load_manifest(tmp_path).checkpoint == "checkpoints/iter_0002"
    # Superseded checkpoints are pruned; the converted initial model is kept.
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["init", "iter_0002"]
    # A killed attempt left iteration 3's checkpoint (not committed) and a temp dir: both go on resume.
    layout.checkpoint(3).mkdir()
    (tmp_path / "checkpoints" / ".iter_0004.tmp").mkdir()
    removed = discard_uncommitted(layout, load_manifest(tmp_path))
    assert layout.checkpoint(3) in removed
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["init", "iter_0002"]


def test_should_save():
    cfg = load_config(TINY, ["run.iterations=7", "run.save_every=3"])
    assert [it for it in range(7) if should_save(cfg, it)] == [2, 5, 6]
    staged = load_config(TINY, ["run.iterations=7", "run.save_every=3", "run.mode=staged"])
    assert all(should_save(staged, it) for it in range(7))


HF = {
    "architectures": ["Qwen2ForCausalLM"],
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "num_hidden_layers": 2,
    "max_position_embeddings": 512,
    "hidden_size": 128,
    "vocab_size": 131,
    "intermediate_size": 200,
    "tie_word_embeddings": True,
    "rms_norm_eps": 1e-6,
    "rope_theta": 1e6,
}


@pytest.mark.parametrize(
    ("overrides", "hf", "key"),
    [
        (["parallelism.tensor_parallel=4"], HF, "parallelism.tensor_parallel"),
        (["rollout.tensor_parallel=3"], HF, "rollout.tensor_parallel"),
        (["parallelism.pipeline_parallel=4"], HF, "parallelism.pipeline_parallel"),
        (["rollout.max_model_len=1024"], HF, "rollout.max_model_len"),
        ([], {**HF, "architectures": ["GPTNeoXForCausalLM"]}, "model.hf_dir"),
    ],
)
def test_model_validation_names_the_key(overrides, hf, key):
    cfg = load_config(TINY, overrides)
    with pytest.raises(ValidationError, match=key.replace(".", r"\.")):
        validate_model(cfg, hf, hf_dir="/m")


def test_resource_validation_names_the_key():
    cfg = load_config(TINY, ["parallelism.tensor_parallel=2"])
    with pytest.raises(ValidationError, match=r"^parallelism: .* = 2 must equal the 1 process"):
        validate_resources(cfg, world_size=1)
    gpu = load_config(TINY, ["cluster.gpus_per_node=1", "run.mode=staged"])
    if torch.cuda.device_count() < 1:
        with pytest.raises(ValidationError, match=r"cluster\.gpus_per_node"):
            validate_resources(gpu, world_size=1)
    staged_world2 = load_config(TINY, ["parallelism.data_parallel=2"])
    with pytest.raises(ValidationError, match=r"run\.mode"):
        validate_resources(staged_world2, world_size=2)


def test_resume_refuses_a_different_experiment(tmp_path):
    layout = RunLayout(tmp_path)
    cfg = resolve_config(TINY, ["run.iterations=3"], layout)
    assert (tmp_path / "config.yaml").is_file() and cfg.run.iterations == 3
    assert resolve_config(None, [], layout).run.iterations == 3  # --config may be omitted later
    assert resolve_config(TINY, ["run.iterations=5"], layout).run.iterations == 5  # allowed change
    with pytest.raises(ConfigError, match=r"optimizer\.lr: .* -> 0\.5"):
        resolve_config(TINY, ["optimizer.lr=0.5"], layout)
    with pytest.raises(ConfigError, match="--config is required"):
        resolve_config(None, [], RunLayout(tmp_path / "new"))


def test_report_draws_curves(tmp_path):
    from pipeline.metrics import MetricsLogger
    from pipeline.stages.report import report

    with MetricsLogger(tmp_path / "metrics.jsonl") as m:
        for it in range(3):
            m.log(
                it,
                {
                    "reward/mean": 0.1 * it,
                    "reward/accuracy": 0.2 * it,
                    "train/kl": 0.01,
                    "time/iteration": 2.0,
                },
            )
    paths = report(tmp_path / "metrics.jsonl", tmp_path / "report", name="t")
    assert paths["curves"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = paths["summary"].read_text()
    assert "| reward/accuracy | 0 | 0.4 |" in md


def test_cli_errors_are_clear(tmp_path, capsys):
    from pipeline.__main__ import main

    code = main(["run", "--config", TINY, "--run-dir", str(tmp_path / "r"), "parallelism.tensor_parallel=2"])
    err = capsys.readouterr().err
    assert code == 2 and "parallelism:" in err and "must equal the 1 process" in err
    code = main(["prepare", "--config", TINY, "--run-dir", str(tmp_path / "r2"), "optimizer.nope=1"])
    assert code == 2 and "optimizer.nope" in capsys.readouterr().err
    code = main(["status", "--config", TINY, "--run-dir", str(tmp_path / "r3"), "--field", "done"])
    assert code == 0 and capsys.readouterr().out.strip() == "false"
