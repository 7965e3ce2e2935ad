"""`export_hf_weights`: HF-named full tensors from a live Megatron model under TP/PP (the refit path).

Collective over the model-parallel group: every TP x PP rank must iterate the generator in step; every
rank receives every tensor. Per bucket of parameters (at most `bucket_size_mb` of full Megatron
tensors, or one larger parameter): the owning pipeline stage all-gathers each parameter's TP shards
over the TP group and reassembles the global tensor (rows / columns / [gate; up]), then the bucket
is broadcast over the PP group as one flat buffer per owning stage, and each parameter goes through
the same `to_hf` mapping as the files path.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
import torch.distributed as dist

from conversion import layout
from conversion.arch.base import TP_COLS, TP_GATE_UP, TP_REPLICATED, TP_ROWS, ParamSpec, to_hf
from conversion.registry import config_dict, get_mapping
from megatron_ext.model import padded_vocab_size
from megatron_ext.optim import unwrap_model


def _local_params(model_chunks: list[torch.nn.Module], specs: list[ParamSpec]) -> dict[int, torch.Tensor]:
    """Spec index -> this rank's TP shard, for the parameters held by this pipeline stage."""
    layers: dict[int, torch.nn.Module] = {}
    first = last = None
    for chunk in unwrap_model(model_chunks):  # strip DDP / Float16Module wrappers
        for layer in chunk.decoder.layers:
            layers[layer.layer_number - 1] = layer
        first = chunk if chunk.pre_process else first
        last = chunk if chunk.post_process else last
    out = {}
    for i, spec in enumerate(specs):
        if spec.layer is not None:
            if spec.layer in layers:
                out[i] = _get_param(layers[spec.layer], spec)
        elif spec.key == "embedding.word_embeddings.weight":
            if first is not None:
                out[i] = first.embedding.word_embeddings.weight
        elif last is not None:  # final norm, untied output layer
            out[i] = _get_param(last, spec)
    return out


def _get_param(module: torch.nn.Module, spec: ParamSpec) -> torch.Tensor:
    for name in spec.module_names:
        try:
            return module.get_parameter(name)
        except AttributeError:
            continue
    raise KeyError(f"none of {spec.module_names} found in {type(module).__name__} for {spec.key}")


def _gather_tp(
    shard: torch.Tensor, spec: ParamSpec, group: dist.ProcessGroup | None, tp_size: int
) -> torch.Tensor:
    """The global tensor of `spec` from the TP shards of the group."""
    shard = shard.detach()
    if tp_size == 1 or spec.tp == TP_REPLICATED:
        return shard.clone()
    parts = [torch.empty_like(shard) for _ in range(tp_size)]
    dist.all_gather(parts, shard.contiguous(), group=group)
    if spec.tp == TP_ROWS:
        return torch.cat(parts, dim=0)
    if spec.tp == TP_COLS:
        return torch.cat(parts, dim=1)
    if spec.tp == TP_GATE_UP:
        return layout.fc1_from_tp_shards(parts)
    raise ValueError(f"unknown TP split {spec.tp!r} of {spec.key}")


def _buckets(specs: list[ParamSpec], nbytes: list[int], limit: int) -> Iterator[list[int]]:
    bucket: list[int] = []
    size = 0
    for i in range(len(specs)):
        if bucket and size + nbytes[i] > limit:
            yield bucket
            bucket, size = [], 0
        bucket.append(i)
        size += nbytes[i]
    if bucket:
        yield bucket


def export_hf_weights(
    model_chunks: list[torch.nn.Module], hf_config: Any, *, bucket_size_mb: int = 256, groups: Any = None
) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield (hf_name, full tensor) for every HF weight, in checkpoint order, on every MP rank.

    groups: a `megatron_ext.parallel.ParallelGroups` (default: the current Megatron parallel state).
    Tensors keep the model's parameter dtype and device.
    """
    if groups is None:
        from megatron_ext.parallel import current_groups

        groups = current_groups()
    cfg = config_dict(hf_config)
    mapping = get_mapping(cfg)
    dims = mapping.dims(cfg)
    specs = mapping.param_specs(dims, padded_vocab_size(dims.vocab_size, groups.tp_size))
    local = _local_params(model_chunks, specs)
    if not local:
        raise ValueError("model_chunks hold none of the expected parameters")
    some = next(iter(local.values()))
    dtype, device = some.dtype, some.device
    owners = _owners(local, groups)
    missing = [specs[i].key for i in range(len(specs)) if i not in owners]
    if missing:
        raise KeyError(f"no pipeline stage holds {missing[:3]} (layer numbering?)")
    elem = torch.empty((), dtype=dtype).element_size()
    nbytes = [int(torch.Size(s.shape).numel()) * elem for s in specs]
    for bucket in _buckets(specs, nbytes, bucket_size_mb << 20):
        full: dict[int, torch.Tensor] = {}
        for i in bucket:
            if owners[i] == groups.pp_rank:
                full[i] = _gather_tp(local[i], specs[i], groups.tp, groups.tp_size)
        if groups.pp_size > 1:
            _broadcast_bucket(full, bucket, specs, owners, groups, dtype, device)
        for i in bucket:
            yield from to_hf(specs[i], dims, full.pop(i))


def _owners(local: dict[int, torch.Tensor], groups: Any) -> dict[int, int]:
    """Spec index -> the lowest PP rank that holds it."""
    if groups.pp_size == 1:
        return dict.fromkeys(local, 0)
    held: list[Any] = [None] * groups.pp_size
    dist.all_gather_object(held, sorted(local), group=groups.pp)
    owners: dict[int, int] = {}
    for stage in reversed(range(groups.pp_size)):
        owners.update(dict.fromkeys(held[stage], stage))
    return owners


def _broadcast_bucket(
    full: dict[int, torch.Tensor],
    bucket: list[int],
    specs: list[ParamSpec],
    owners: dict[int, int],
    groups: Any,
    dtype: torch.dtype,
    device: torch.device,
) -> None:
    """Send each stage's part of the bucket to all stages as one flat buffer."""
    for stage in range(groups.pp_size):
        ids = [i for i in bucket if owners[i] == stage]
        if not ids:
            continue
        sizes = [int(torch.Size(specs[i].shape).numel()) for i in ids]
        if stage == groups.pp_rank:
            flat = torch.cat([full[i].reshape(-1).to(dtype) for i in ids])
        else:
            flat = torch.empty(sum(sizes), dtype=dtype, device=device)
        dist.broadcast(flat, src=dist.get_global_rank(groups.pp, stage), group=groups.pp)
        for i, part in zip(ids, torch.split(flat, sizes)):
            full[i] = part.view(specs[i].shape)
