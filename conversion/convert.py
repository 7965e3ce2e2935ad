"""HF safetensors <-> Megatron-Core dist checkpoint, streamed tensor by tensor.

Checkpoint layout: the one of `megatron_ext.checkpoint` (model only), plus the HF side files:
    <ckpt>/                  torch_dist dist_checkpointing files, keys of GPTModel.sharded_state_dict()
    <ckpt>/grpo_meta.json    iteration, extra, layout, has_optimizer, ..., file sizes
    <ckpt>/hf/               config.json, generation_config.json, tokenizer files (converter only)
    <ckpt>/COMPLETE          written last
The model tensors are stored in the global TP/PP-agnostic layout (layers stacked on a prepended axis),
so any TP/PP loads them; only the vocab padding depends on TP (a multiple of 128*TP), which is why
`hf_to_megatron` takes `tp`. Peak memory: one bucket of converted tensors plus the HF tensors of one
parameter (hf_to_megatron), or one layer's tensor (megatron_to_hf) - never the model.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from conversion.arch.base import (
    KIND_VOCAB,
    LAYER_LINEARS,
    ArchMapping,
    ModelDims,
    ParamSpec,
    hf_tensor_shapes,
    to_hf,
    to_megatron,
)
from conversion.dist_io import CheckpointFormatError, DcpChunkReader, DcpStreamWriter
from conversion.io_utils import (
    atomic_output_dir,
    cast_checked,
    copy_hf_side_files,
    dtype_name,
    load_json,
    parse_dtype,
)
from conversion.registry import get_mapping
from conversion.safetensors_io import PlannedShardWriter, SafetensorsReader, parse_size
from megatron_ext.model import padded_vocab_size

HF_SUBDIR = "hf"
# Modules whose `_extra_state` Megatron checkpoints as ShardedObjects (empty on the local spec; the
# TE spec also has core_attention's). Extra keys in a checkpoint are ignored on load, missing ones fail.
EXTRA_STATE_MODULES = (*LAYER_LINEARS, "self_attention.core_attention")


def check_parallel_sizes(dims: ModelDims, tp: int, pp: int) -> None:
    """Fail clearly when TP/PP cannot split this model (Megatron would fail obscurely later)."""
    if tp < 1 or pp < 1:
        raise ValueError(f"tp and pp must be >= 1, got tp={tp}, pp={pp}")
    for what, n in (
        ("num_key_value_heads", dims.num_kv_heads),
        ("num_attention_heads", dims.num_heads),
        ("intermediate_size", dims.ffn_hidden_size),
    ):
        if n % tp:
            raise ValueError(f"TP={tp} does not divide {what}={n}")
    if dims.num_layers % pp:
        raise ValueError(f"PP={pp} does not divide num_hidden_layers={dims.num_layers}")


def _expected_hf_names(specs: list[ParamSpec]) -> set[str]:
    return {n for s in specs for n in s.hf_names}


def _check_hf_names(reader: SafetensorsReader, specs: list[ParamSpec], dims: ModelDims) -> None:
    expected, present = _expected_hf_names(specs), set(reader.names())
    missing = sorted(expected - present)
    if missing:
        raise ValueError(f"HF checkpoint {reader.dir} lacks {len(missing)} tensors, e.g. {missing[:4]}")
    extra = present - expected
    if dims.tied:  # some tied checkpoints still store lm_head.weight (a copy of the embedding)
        extra.discard("lm_head.weight")
    if extra:
        raise ValueError(
            f"HF checkpoint {reader.dir} has tensors the mapping does not know: {sorted(extra)[:4]}"
        )


def write_layer_chunk(
    writer: DcpStreamWriter, spec: ParamSpec, tensor: torch.Tensor, num_layers: int
) -> None:
    """Add one parameter (a layer slice of a layer-stacked key, or a whole non-layer key)."""
    if spec.layer is None:
        writer.add_tensor(spec.key, tensor, (0,) * tensor.dim(), tensor.shape)
    else:
        writer.add_tensor(
            spec.key, tensor.unsqueeze(0), (spec.layer,) + (0,) * tensor.dim(), (num_layers, *tensor.shape)
        )


def write_vocab_chunks(
    writer: DcpStreamWriter, spec: ParamSpec, dims: ModelDims, weight: torch.Tensor
) -> None:
    """The padded [V_pad, h] embedding / output weight as two chunks: the HF rows, then zero rows.

    Same tensor as `to_megatron` (which pads with `layout.pad_vocab`), without copying the largest
    tensor of the model into a padded buffer.
    """
    if weight.shape[0] != dims.vocab_size:
        raise ValueError(
            f"{spec.hf_names[0]} has {weight.shape[0]} rows but config vocab_size is {dims.vocab_size}"
        )
    writer.add_tensor(spec.key, weight, (0, 0), spec.shape)
    if spec.shape[0] > dims.vocab_size:
        pad = weight.new_zeros((spec.shape[0] - dims.vocab_size, weight.shape[1]))
        writer.add_tensor(spec.key, pad, (dims.vocab_size, 0), spec.shape)


def write_extra_states(writer: DcpStreamWriter, num_layers: int) -> None:
    for module in EXTRA_STATE_MODULES:
        for layer in range(num_layers):
            writer.add_object(f"decoder.layers.{module}._extra_state/shard_{layer}_{num_layers}", None)


def hf_to_megatron(
    hf_dir: str | Path,
    out_dir: str | Path,
    *,
    tp: int = 1,
    pp: int = 1,
    dtype: str | torch.dtype | None = None,
    force: bool = False,
    bucket_size_mb: int = 256,
    progress: bool = True,
) -> Path:
    """Convert an HF directory to a model-only Megatron checkpoint loadable at TP=`tp`, PP=`pp`.

    dtype: None keeps each tensor's HF dtype; otherwise every tensor is cast (with an overflow check).
    """
    hf_dir = Path(hf_dir)
    cfg = load_json(hf_dir / "config.json", "HF config")
    mapping = get_mapping(cfg)
    dims = mapping.dims(cfg)
    check_parallel_sizes(dims, tp, pp)
    out_dtype = parse_dtype(dtype)
    specs = mapping.param_specs(dims, padded_vocab_size(dims.vocab_size, tp))
    reader = SafetensorsReader(hf_dir)
    _check_hf_names(reader, specs, dims)
    with atomic_output_dir(out_dir, force=force) as tmp:
        writer = DcpStreamWriter(tmp, bucket_bytes=bucket_size_mb << 20)
        for spec in tqdm(specs, desc="hf-to-megatron", unit="tensor", disable=not progress):
            hf_tensors = [reader.get(n) for n in spec.hf_names]
            if spec.kind == KIND_VOCAB:
                write_vocab_chunks(
                    writer, spec, dims, cast_checked(spec.hf_names[0], hf_tensors[0], out_dtype)
                )
                continue
            tensor = cast_checked(",".join(spec.hf_names), to_megatron(spec, dims, hf_tensors), out_dtype)
            del hf_tensors
            write_layer_chunk(writer, spec, tensor, dims.num_layers)
        write_extra_states(writer, dims.num_layers)
        writer.finish(common_state={})
        copy_hf_side_files(hf_dir, tmp / HF_SUBDIR)
        _write_checkpoint_meta(tmp, tp=tp, pp=pp, source=hf_dir)
    return Path(out_dir)


def _write_checkpoint_meta(root: Path, *, tp: int, pp: int, source: Path) -> None:
    """megatron_ext.checkpoint's grpo_meta.json + COMPLETE marker for a model-only checkpoint.

    layout.dp is None: a converted checkpoint has no per-rank state (RNG), so it never counts as the
    "same layout" whose RNG states megatron_ext.checkpoint would restore.
    """
    from megatron_ext.checkpoint import write_checkpoint_meta

    meta = {
        "iteration": 0,
        "extra": {"converted_from": str(source.resolve())},
        "layout": {"tp": tp, "pp": pp, "dp": None},
        "num_model_chunks": 1,
        "has_optimizer": False,
        "has_scheduler": False,
        "has_rng": False,
    }
    write_checkpoint_meta(root, meta)


def open_megatron_checkpoint(megatron_dir: str | Path) -> DcpChunkReader:
    """The model reader of a complete checkpoint dir (a trainer's or the converter's).

    megatron_ext.checkpoint.read_checkpoint_meta fails on a missing COMPLETE marker and on missing or
    truncated files (CheckpointError).
    """
    from megatron_ext.checkpoint import read_checkpoint_meta

    read_checkpoint_meta(megatron_dir)
    return DcpChunkReader(megatron_dir)


def checkpoint_specs(reader: DcpChunkReader, mapping: ArchMapping, dims: ModelDims) -> list[ParamSpec]:
    """The ParamSpecs of a stored checkpoint (padded vocab read from it), checked against its shapes."""
    stored_vocab = reader.tensor_meta("embedding.word_embeddings.weight").size[0]
    specs = mapping.param_specs(dims, stored_vocab)
    for spec in specs:
        want = spec.shape if spec.layer is None else (dims.num_layers, *spec.shape)
        got = tuple(reader.tensor_meta(spec.key).size)
        if got != want:
            raise CheckpointFormatError(
                f"{spec.key}: checkpoint shape {got} does not match the HF config's {want}"
            )
    return specs


def read_param(reader: DcpChunkReader, spec: ParamSpec) -> torch.Tensor:
    """One parameter's global tensor (one layer slice for layer keys)."""
    if spec.layer is None:
        return reader.read(spec.key)
    md = reader.tensor_meta(spec.key)
    return reader.read(spec.key, (spec.layer,) + (0,) * len(spec.shape), (1, *md.size[1:]))[0]


def read_hf_tensors(
    reader: DcpChunkReader, spec: ParamSpec, dims: ModelDims
) -> list[tuple[str, torch.Tensor]]:
    """The HF tensors of one parameter; for the vocab, only the unpadded rows are read (= to_hf's unpad)."""
    if spec.kind == KIND_VOCAB:
        return [(spec.hf_names[0], reader.read(spec.key, (0, 0), (dims.vocab_size, spec.shape[1])))]
    return to_hf(spec, dims, read_param(reader, spec))


def hf_config_for(megatron_dir: Path, hf_config_dir: str | Path | None) -> tuple[Path, dict[str, Any]]:
    src = Path(hf_config_dir) if hf_config_dir is not None else megatron_dir / HF_SUBDIR
    return src, load_json(src / "config.json", "HF config (pass hf_config_dir / --hf-config-dir)")


def megatron_to_hf(
    megatron_dir: str | Path,
    out_dir: str | Path,
    *,
    dtype: str | torch.dtype | None = None,
    force: bool = False,
    max_shard_size: str | int = "2GB",
    hf_config_dir: str | Path | None = None,
    progress: bool = True,
) -> Path:
    """Convert a Megatron checkpoint (any TP/PP it was saved at) to an HF directory.

    The HF config, generation config and tokenizer come from `<megatron_dir>/hf` (written by
    `hf_to_megatron`) or `hf_config_dir`. dtype None keeps the checkpoint's dtype.
    """
    megatron_dir = Path(megatron_dir)
    reader = open_megatron_checkpoint(megatron_dir)
    src, cfg = hf_config_for(megatron_dir, hf_config_dir)
    mapping = get_mapping(cfg)
    dims = mapping.dims(cfg)
    specs = checkpoint_specs(reader, mapping, dims)
    out_dtype = parse_dtype(dtype) or reader.tensor_meta(specs[0].key).properties.dtype
    plan = [item for spec in specs for item in hf_tensor_shapes(spec, dims)]
    with atomic_output_dir(out_dir, force=force) as tmp:
        copy_hf_side_files(src, tmp)
        writer = PlannedShardWriter(tmp, plan, out_dtype, parse_size(max_shard_size))
        for spec in tqdm(specs, desc="megatron-to-hf", unit="tensor", disable=not progress):
            for name, tensor in read_hf_tensors(reader, spec, dims):
                writer.write(name, cast_checked(name, tensor, out_dtype))
        writer.finish()
        if not (tmp / "generation_config.json").is_file():
            _write_generation_config(tmp, cfg)
        cfg = dict(cfg)
        cfg["dtype"] = dtype_name(out_dtype)
        if "torch_dtype" in cfg:
            cfg["torch_dtype"] = dtype_name(out_dtype)
        (tmp / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    return Path(out_dir)


def _write_generation_config(out: Path, cfg: dict[str, Any]) -> None:
    """A minimal generation_config.json from the config's special token ids (when the source had none)."""
    keys = ("bos_token_id", "eos_token_id", "pad_token_id")
    gen = {k: cfg[k] for k in keys if k in cfg and cfg[k] is not None}
    (out / "generation_config.json").write_text(json.dumps(gen, indent=2) + "\n")
