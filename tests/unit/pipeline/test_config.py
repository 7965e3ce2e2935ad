"""pipeline.config: every shipped config loads; inheritance, overrides and every error path."""

import ast
import dataclasses
import textwrap
from pathlib import Path
from typing import Literal

import pytest
import yaml

from pipeline.config import (
    ConfigError,
    ExperimentConfig,
    config_from_dict,
    config_hash,
    config_to_dict,
    dataclass_from_dict,
    load_config,
    parse_override,
    read_yaml_mapping,
    save_resolved_config,
    validate_paths,
)

REPO = Path(__file__).resolve().parents[3]
CONFIGS = REPO / "configs"
MODEL_PARTIALS = sorted((CONFIGS / "models").glob("*.yaml"))
NIGHTLY = sorted((CONFIGS / "nightly").glob("*.yaml"))  # their own schema (pipeline.compare.nightly_config)
# Everything else under configs/ is a complete experiment config.
EXPERIMENTS = sorted(set(CONFIGS.rglob("*.y*ml")) - set(MODEL_PARTIALS) - set(NIGHTLY))

TINY = CONFIGS / "experiments" / "tiny_cpu.yaml"


def _raw(path: Path) -> dict:
    return read_yaml_mapping(path)


def _write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


MINIMAL = """
name: minimal
model: {bootstrap: true, params_dtype: float32}
rollout: {prompts_per_iteration: 2, samples_per_prompt: 2, max_new_tokens: 8, max_model_len: 64}
algorithm: {variant: grpo}
data: {train: arithmetic, max_prompt_tokens: 32}
run: {iterations: 1}
"""


def _minimal(tmp_path: Path) -> Path:
    return _write(tmp_path, "minimal.yaml", MINIMAL)


# ------------------------------------------------------------------------------------ shipped configs


def test_only_yaml_files_under_configs():
    """Everything under configs/ is a YAML config, or a nightly recipe's golden values beside it."""
    golden = {(p.parent / p.name.replace(".golden.json", ".yaml")) for p in CONFIGS.rglob("*.golden.json")}
    assert all(y.is_file() for y in golden), f"golden values without their recipe: {golden}"
    other = [
        p
        for p in CONFIGS.rglob("*")
        if p.is_file() and p.suffix != ".yaml" and not p.name.endswith(".golden.json")
    ]
    assert not other, f"not loaded by any test (use .yaml): {other}"


def test_shipped_configs_exist():
    assert EXPERIMENTS, "no experiment configs found"
    assert MODEL_PARTIALS, "no model partials found"


@pytest.mark.parametrize("path", EXPERIMENTS, ids=lambda p: str(p.relative_to(CONFIGS)))
def test_every_experiment_config_loads(path):
    cfg = load_config(path)
    assert isinstance(cfg, ExperimentConfig)
    # every key written in the file (and in its defaults file) reached the config unchanged
    raw = _raw(path)
    parent = raw.pop("defaults", None)
    layers = ([_raw(path.parent / parent)] if parent else []) + [raw]
    resolved = config_to_dict(cfg)
    for layer in layers:
        for section, values in layer.items():
            if section == "name":
                continue
            for key in values:
                expected = {k: v for layer2 in layers for k, v in layer2.get(section, {}).items()}[key]
                assert resolved[section][key] == expected, f"{path}: {section}.{key}"


@pytest.mark.parametrize("path", MODEL_PARTIALS, ids=lambda p: p.name)
def test_every_model_partial_is_inherited_and_inherits_nothing(path):
    assert "defaults" not in _raw(path), f"{path} must not inherit (one level only)"
    users = [e for e in EXPERIMENTS if (e.parent / _raw(e).get("defaults", "")).resolve() == path.resolve()]
    assert users, f"{path} is not inherited by any experiment config"


def test_recipes_pair_grpo_lambda_with_identical_grpo_baseline():
    for lam_path in sorted((CONFIGS / "experiments").glob("grpo_lambda_*.yaml")):
        base_path = lam_path.with_name(lam_path.name.replace("grpo_lambda_", "grpo_"))
        lam, base = config_to_dict(load_config(lam_path)), config_to_dict(load_config(base_path))
        assert lam["algorithm"]["variant"] == "epsilon-trace" and base["algorithm"]["variant"] == "grpo"
        assert lam["algorithm"]["lam"] == 0.99 and lam["rollout"]["samples_per_prompt"] == 8
        for d in (lam, base):
            d["algorithm"].pop("variant")
            d.pop("name")
        assert lam == base, f"{base_path} differs from {lam_path} beyond variant and name"


def test_tiny_cpu_is_a_cpu_run():
    cfg = load_config(TINY)
    assert cfg.model.bootstrap and cfg.model.hf_dir is None and cfg.model.params_dtype == "float32"
    assert cfg.cluster.gpus_per_node == 0 and cfg.cluster.executor == "local"
    assert cfg.data.train == "arithmetic" and cfg.data.eval_benchmarks == ["arithmetic"]
    assert cfg.model.fp8 is None and cfg.parallelism.tensor_parallel == cfg.parallelism.pipeline_parallel == 1


@pytest.mark.parametrize("path", NIGHTLY, ids=lambda p: p.name)
def test_every_nightly_config_loads(path):
    nightly_config = pytest.importorskip("pipeline.compare.nightly_config")
    nightly_config.load_nightly_config(path)


# ------------------------------------------------------------------------------ overrides, inheritance


@pytest.mark.parametrize(
    ("text", "keys", "value"),
    [
        ("algorithm.lam=0.95", ["algorithm", "lam"], 0.95),
        ("optimizer.lr=1e-5", ["optimizer", "lr"], 1e-5),
        ("run.iterations=3", ["run", "iterations"], 3),
        ("model.bootstrap=false", ["model", "bootstrap"], False),
        ("model.hf_dir=null", ["model", "hf_dir"], None),
        ("cluster.time_limit=04:00:00", ["cluster", "time_limit"], "04:00:00"),
        ("data.eval_benchmarks=[math500,aime24]", ["data", "eval_benchmarks"], ["math500", "aime24"]),
        ("rollout.stop=['</s>', 'a=b']", ["rollout", "stop"], ["</s>", "a=b"]),
        ("name=x=y", ["name"], "x=y"),
        ("data.train=no", ["data", "train"], "no"),  # YAML 1.2: `no` is a string, not False
    ],
)
def test_parse_override(text, keys, value):
    assert parse_override(text) == (keys, value)


@pytest.mark.parametrize("text", ["algorithm.lam", "=3", "algorithm..lam=1", "data.x=[1,"])
def test_bad_override_syntax(text):
    with pytest.raises(ConfigError, match="override"):
        parse_override(text)


def test_overrides_apply_and_keep_other_fields():
    base = load_config(TINY)
    cfg = load_config(
        TINY, ["algorithm.lam=0.95", "data.eval_benchmarks=[arithmetic,math500]", "optimizer.lr=1"]
    )
    assert cfg.algorithm.lam == 0.95
    assert cfg.data.eval_benchmarks == ["arithmetic", "math500"]
    assert cfg.optimizer.lr == 1.0 and isinstance(cfg.optimizer.lr, float)  # int accepted for float
    assert dataclasses.replace(cfg.rollout) == base.rollout
    assert cfg.algorithm.variant == base.algorithm.variant


def test_override_error_names_override_and_key():
    with pytest.raises(
        ConfigError, match=r"algorithm\.lam: .*\[0, 1\].* set by override 'algorithm.lam=1.2'"
    ):
        load_config(TINY, ["algorithm.lam=1.2"])
    with pytest.raises(ConfigError, match=r"algorithm\.lamda: unknown key"):
        load_config(TINY, ["algorithm.lamda=0.9"])


def test_one_level_inheritance_deep_merges(tmp_path):
    _write(
        tmp_path, "models/m.yaml", "model: {bootstrap: true, params_dtype: float32}\nrun: {iterations: 7}\n"
    )
    exp = _write(
        tmp_path,
        "exp/e.yaml",
        MINIMAL.replace(
            "model: {bootstrap: true, params_dtype: float32}", "defaults: ../models/m.yaml"
        ).replace("run: {iterations: 1}", "run: {seed: 3}"),
    )
    cfg = load_config(exp)
    assert cfg.model.bootstrap and cfg.model.params_dtype == "float32"
    assert cfg.run.iterations == 7 and cfg.run.seed == 3  # section merged key by key


def test_child_overrides_parent_and_parent_errors_name_parent(tmp_path):
    parent = _write(
        tmp_path, "p.yaml", "model: {bootstrap: true, params_dtype: float32}\nrun: {iterations: 0}\n"
    )
    exp = _write(tmp_path, "e.yaml", "defaults: p.yaml\n" + MINIMAL.replace("run: {iterations: 1}", ""))
    with pytest.raises(
        ConfigError,
        match=rf"^{exp}: run\.iterations: must be in \[1, inf\), got 0 \[run\.iterations set by {parent}\]",
    ):
        load_config(exp)
    assert load_config(exp, ["run.iterations=2"]).run.iterations == 2


def test_inheritance_deeper_than_one_level_is_an_error(tmp_path):
    _write(tmp_path, "a.yaml", "model: {bootstrap: true}\n")
    _write(tmp_path, "b.yaml", "defaults: a.yaml\nmodel: {params_dtype: float32}\n")
    exp = _write(tmp_path, "e.yaml", "defaults: b.yaml\n" + MINIMAL)
    with pytest.raises(ConfigError, match="only one level of inheritance"):
        load_config(exp)


def test_missing_files_are_named(tmp_path):
    with pytest.raises(ConfigError, match="not found.*nope.yaml"):
        load_config(tmp_path / "nope.yaml")
    exp = _write(tmp_path, "e.yaml", "defaults: missing.yaml\n" + MINIMAL)
    with pytest.raises(ConfigError, match="not found.*missing.yaml"):
        load_config(exp)


# ------------------------------------------------------------------------------------- error paths


@pytest.mark.parametrize(
    ("override", "pattern"),
    [
        ("typo=1", r"typo: unknown key; valid keys of top level"),
        ("algorithm.lamda=0.9", r"algorithm\.lamda: unknown key; valid keys of algorithm"),
        ("data.eval_files={arithmetic: [a.jsonl], x: 1}", r"data\.eval_files\.x: expected a list"),
        ("cluster.partition=3", r"cluster\.partition: expected str \| None, got int"),
        ("data.train=5", r"data\.train: expected str, got int"),
        ("optimizer.lr=fast", r"optimizer\.lr: expected float, got str"),
        ("run.iterations=true", r"run\.iterations: expected int, got bool"),
        ("run.iterations=2.5", r"run\.iterations: expected int, got float"),
        ("run.progress=1", r"run\.progress: expected bool, got int"),
        ("data.eval_benchmarks=[arithmetic, 3]", r"data\.eval_benchmarks\[1\]: expected str, got int"),
        ("data.eval_benchmarks=arithmetic", r"data\.eval_benchmarks: expected a list"),
        ("algorithm=3", r"algorithm: expected a mapping"),
        ("rollout.max_new_tokens=null", r"rollout\.max_new_tokens: expected int, got NoneType"),
        ("algorithm.variant=ppo", r"algorithm\.variant: must be one of \['grpo', 'epsilon-trace'"),
        ("model.fp8=true", r"model\.fp8: expected"),
        ("run.mode=async", r"run\.mode: must be one of"),
        ("algorithm.eps_high=1.5", r"algorithm\.eps_high: must be in \[0, 1\)"),
        ("algorithm.lam=1.2", r"algorithm\.lam: must be in \[0, 1\]"),
        ("algorithm.gamma=-0.1", r"algorithm\.gamma: must be in \[0, 1\]"),
        ("rollout.samples_per_prompt=1", r"rollout\.samples_per_prompt: must be in \[2, inf\)"),
        ("rollout.temperature=0", r"rollout\.temperature: must be in \(0, inf\)"),
        ("rollout.max_model_len=100", r"rollout\.max_model_len: 100 < data\.max_prompt_tokens"),
        ("model.fp8=hybrid", r"model\.fp8: 'hybrid' needs params_dtype bfloat16"),
        (
            "cluster.gpus_per_node=2",
            r"parallelism: .* = 1 must equal cluster\.nodes\*cluster\.gpus_per_node = 2",
        ),
        ("model.hf_dir=/some/dir", r"model\.hf_dir: must be null with model\.bootstrap true"),
        ("model.bootstrap=false", r"model\.hf_dir: required unless model\.bootstrap"),
        (
            "algorithm.weight_norm=mean",
            r"algorithm\.weight_norm: 'mean' only applies to variant epsilon-weight",
        ),
        ("parallelism.micro_batch_size=3", r"parallelism\.micro_batch_size: the minibatch of \d+ sequences"),
        ("algorithm.updates_per_iteration=3", r"algorithm\.updates_per_iteration: must divide"),
        (
            "data.eval_files={math500: [a.jsonl]}",
            r"data\.eval_files\.math500: is not in data\.eval_benchmarks",
        ),
        ("cluster.nodes=2", r"cluster\.nodes: 2 nodes need executor slurm"),
        ("cluster.time_limit=4h", r"cluster\.time_limit: not \[D-\]HH:MM:SS"),
        ("rollout.enable_sleep=true", r"rollout\.enable_sleep: needs GPUs"),
        ("optimizer.warmup_iterations=100000", r"optimizer\.warmup_iterations: exceeds the \d+ steps"),
    ],
)
def test_bad_values_name_file_and_key(override, pattern):
    with pytest.raises(ConfigError, match=pattern) as info:
        load_config(TINY, [override])
    assert f"override {override!r}" in str(info.value) or str(TINY) in str(info.value)


def test_errors_in_file_name_the_file(tmp_path):
    path = _write(
        tmp_path,
        "e.yaml",
        MINIMAL.replace("algorithm: {variant: grpo}", "algorithm: {variant: grpo, eps_low: 2}"),
    )
    with pytest.raises(ConfigError, match=rf"^{path}: algorithm\.eps_low: must be in \[0, 1\)"):
        load_config(path)
    path = _write(tmp_path, "f.yaml", MINIMAL + "optimiser: {lr: 1.0e-5}\n")
    with pytest.raises(ConfigError, match=rf"^{path}: optimiser: unknown key"):
        load_config(path)
    path = _write(tmp_path, "g.yaml", MINIMAL.replace("run: {iterations: 1}", ""))
    with pytest.raises(ConfigError, match=rf"^{path}: run: required key is missing"):
        load_config(path)
    path = _write(tmp_path, "h.yaml", MINIMAL.replace("max_new_tokens: 8, ", ""))
    with pytest.raises(ConfigError, match=rf"^{path}: rollout\.max_new_tokens: required key is missing"):
        load_config(path)


def test_fp8_on_cpu_is_an_error():
    with pytest.raises(ConfigError, match=r"model\.fp8: 'e4m3' needs GPUs"):
        load_config(TINY, ["model.fp8=e4m3", "model.params_dtype=bfloat16"])
    path = CONFIGS / "experiments" / "grpo_lambda_qwen2.5_7b.yaml"
    with pytest.raises(ConfigError, match=r"model\.fp8: 'hybrid' needs GPUs"):
        load_config(path, ["cluster.gpus_per_node=0"])


def test_tp_pp_dp_must_match_gpus():
    path = CONFIGS / "experiments" / "grpo_lambda_qwen2.5_7b.yaml"
    with pytest.raises(ConfigError, match=r"parallelism: .*2\*1\*2 = 4 must equal .* = 8"):
        load_config(path, ["parallelism.data_parallel=2"])
    cfg = load_config(path, ["parallelism.data_parallel=2", "parallelism.pipeline_parallel=2"])
    assert cfg.parallelism.pipeline_parallel == 2


def test_overrides_must_be_a_list():
    with pytest.raises(ConfigError, match="list of `key=value` strings"):
        load_config(TINY, "algorithm.lam=0.9")


def test_config_from_dict_names_source():
    raw = yaml.safe_load(MINIMAL)
    raw["rollout"]["samples_per_prompt"] = 1
    with pytest.raises(ConfigError, match=r"^my-source: rollout\.samples_per_prompt"):
        config_from_dict(raw, source="my-source")


# ------------------------------------------------------------------------ round trip, frozen, hashing


@pytest.mark.parametrize("path", EXPERIMENTS, ids=lambda p: p.name)
def test_save_load_round_trip(tmp_path, path):
    cfg = load_config(path)
    out = save_resolved_config(cfg, tmp_path / "run" / "config.yaml")
    assert load_config(out) == cfg
    assert config_from_dict(config_to_dict(cfg)) == cfg
    assert config_hash(load_config(out)) == config_hash(cfg)
    assert [p.name for p in out.parent.iterdir()] == ["config.yaml"]  # no temp file left behind


def test_round_trip_of_yaml_lookalike_strings(tmp_path):
    cfg = load_config(TINY, ["name='1e5'", "rollout.stop=['no', '010', 'null', '1:30']"])
    assert cfg.name == "1e5" and cfg.rollout.stop == ["no", "010", "null", "1:30"]
    assert load_config(save_resolved_config(cfg, tmp_path / "c.yaml")) == cfg


def test_configs_are_frozen():
    cfg = load_config(TINY)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.algorithm.lam = 0.5  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.run = cfg.run  # type: ignore[misc]


def test_config_hash_is_stable_and_sensitive():
    a, b = load_config(TINY), load_config(TINY)
    assert config_hash(a) == config_hash(b) and len(config_hash(a)) == 16
    c = load_config(TINY, ["algorithm.lam=0.9"])
    assert config_hash(c) != config_hash(a)
    assert config_hash(c, sections=["model"]) == config_hash(a, sections=["model"])
    with pytest.raises(ConfigError, match="unknown sections"):
        config_hash(a, sections=["modle"])


def test_validate_paths(tmp_path):
    validate_paths(load_config(TINY))  # bootstrap: nothing to check
    model_dir = tmp_path / "hf"
    model_dir.mkdir()
    overrides = [
        "model.bootstrap=false",
        f"model.hf_dir={model_dir}",
        f"data.train_files=[{tmp_path}/t.jsonl]",
    ]
    cfg = load_config(TINY, overrides)
    with pytest.raises(ConfigError, match=r"model\.hf_dir: .*no config\.json") as info:
        validate_paths(cfg)
    assert "data.train_files[0]" in str(info.value)
    (model_dir / "config.json").write_text("{}")
    (tmp_path / "t.jsonl").write_text("")
    validate_paths(cfg)


def test_every_field_has_a_docstring():
    """Megatron-Core style: a string literal right under every dataclass field of pipeline/config.py."""
    tree = ast.parse((REPO / "pipeline" / "config.py").read_text())
    classes = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name.endswith("Config")]
    assert len(classes) == 10
    for cls in classes:
        body = cls.body
        for i, node in enumerate(body):
            if isinstance(node, ast.AnnAssign):
                nxt = body[i + 1] if i + 1 < len(body) else None
                ok = (
                    isinstance(nxt, ast.Expr)
                    and isinstance(nxt.value, ast.Constant)
                    and isinstance(nxt.value.value, str)
                )
                assert ok, f"{cls.name}.{node.target.id} has no docstring"


@dataclasses.dataclass(frozen=True, kw_only=True)
class _Inner:
    xs: list[int] = dataclasses.field(default_factory=list)
    mode: Literal["a", "b"] = "a"


@dataclasses.dataclass(frozen=True, kw_only=True)
class _Outer:
    inner: _Inner
    label: str | None = None


def test_dataclass_from_dict_and_read_yaml_mapping(tmp_path):
    assert dataclass_from_dict(_Outer, {"inner": {"xs": [1, 2]}}, source="s") == _Outer(
        inner=_Inner(xs=[1, 2])
    )
    with pytest.raises(ConfigError, match=r"^s: top\.inner\.mode: must be one of \['a', 'b'\]"):
        dataclass_from_dict(_Outer, {"inner": {"mode": "c"}}, source="s", key="top")
    with pytest.raises(ConfigError, match=r"^s: inner\.xs\[1\]: expected int, got str"):
        dataclass_from_dict(_Outer, {"inner": {"xs": [1, "2"]}}, source="s")
    with pytest.raises(ConfigError, match=r"^s: inner: required key is missing"):
        dataclass_from_dict(_Outer, {"label": None}, source="s")
    path = _write(tmp_path, "x.yaml", "a: 1e-3\nb: 04:00:00\nc: no\n")
    assert read_yaml_mapping(path) == {"a": 1e-3, "b": "04:00:00", "c": "no"}
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        read_yaml_mapping(_write(tmp_path, "y.yaml", "- 1\n"))
