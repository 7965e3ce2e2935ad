"""Checkpoints of the actor with Megatron's `dist_checkpointing`: model, optimizer, scheduler, RNG, position.

Layout of one checkpoint directory (written atomically: everything goes to a hidden temp directory
beside it, which is renamed once complete):

    <ckpt_dir>/                 dist_checkpointing files (sharded tensors, common.pt, metadata.json)
    <ckpt_dir>/grpo_meta.json   iteration, extra (data position ...), parallel layout, file sizes
    <ckpt_dir>/COMPLETE         written last; a directory without it is never loaded

Model tensors are saved with their global shapes, so a checkpoint written at TP=2 loads at TP=1 (and
any TP/PP). The distributed optimizer uses Megatron's `dp_reshardable` format (fully parallel; it
reshards across DP only: megatron-core 0.16.1's `fully_reshardable` loader fails with torch's Adam,
which is what runs without Apex/TE). RNG states are saved per rank and restored only when the
parallel layout is unchanged. Missing, truncated or corrupt
checkpoints raise `CheckpointError` naming the directory and the problem.
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from megatron_ext.optim import unwrap_model

COMPLETE_MARKER = "COMPLETE"
META_FILE = "grpo_meta.json"
_OPTIM_METADATA = {"distrib_optim_sharding_type": "dp_reshardable"}


class CheckpointError(RuntimeError):
    """A checkpoint is missing, incomplete, truncated or does not match the model."""


def _rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def _layout() -> dict[str, int]:
    from megatron.core import parallel_state as ps

    return {
        "tp": ps.get_tensor_model_parallel_world_size(),
        "pp": ps.get_pipeline_model_parallel_world_size(),
        "dp": ps.get_data_parallel_world_size(),
    }


def _model_key(i: int, n: int) -> str:
    return "model" if n == 1 else f"model{i}"


def _model_sharded_state_dict(model_chunks: list) -> dict[str, Any]:
    chunks = unwrap_model(model_chunks)
    return {_model_key(i, len(chunks)): c.sharded_state_dict() for i, c in enumerate(chunks)}


def _rng_state() -> dict[str, Any]:
    from megatron.core.tensor_parallel import get_cuda_rng_tracker

    return {
        "random": random.getstate(),
        "numpy": np.random.get_state(),
        "torch_cpu": torch.get_rng_state(),
        "torch_cuda": torch.cuda.get_rng_state() if torch.cuda.is_available() else None,
        "tracker": get_cuda_rng_tracker().get_states(),
    }


def _set_rng_state(state: dict[str, Any]) -> None:
    from megatron.core.tensor_parallel import get_cuda_rng_tracker

    random.setstate(state["random"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch_cpu"])
    if state["torch_cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["torch_cuda"])
    get_cuda_rng_tracker().set_states(state["tracker"])


def _rng_sharded_object(layout: dict[str, int], state: dict[str, Any] | None):
    from megatron.core import parallel_state as ps
    from megatron.core.dist_checkpointing.mapping import ShardedObject

    return ShardedObject(
        "rng_state",
        state,
        (layout["pp"], layout["tp"], layout["dp"]),
        (
            ps.get_pipeline_model_parallel_rank(),
            ps.get_tensor_model_parallel_rank(),
            ps.get_data_parallel_rank(),
        ),
        replica_id=0,
    )


def _file_sizes(root: Path) -> dict[str, int]:
    return {
        str(p.relative_to(root)): p.stat().st_size
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name not in (META_FILE, COMPLETE_MARKER)
    }


def write_checkpoint_meta(root: Path, meta: dict) -> None:
    """Seal a fully written checkpoint dir: `META_FILE` (`meta` plus the size of every file, which
    `read_checkpoint_meta` checks) and then the `COMPLETE_MARKER`. Shared with the converter."""
    meta = {**meta, "files": _file_sizes(root)}
    (root / META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True))
    (root / COMPLETE_MARKER).write_text("ok\n")


def save_checkpoint(
    ckpt_dir: str | Path,
    model_chunks: list,
    optimizer=None,
    scheduler=None,
    *,
    iteration: int,
    extra: dict,
) -> Path:
    """Save collectively (every rank calls it); atomic tmp dir + rename; returns the final path.

    `extra` must be JSON-serialisable (e.g. the data position: epoch, index, shuffle seed). An existing
    checkpoint at `ckpt_dir` is replaced only after the new one is complete.
    """
    from megatron.core import dist_checkpointing

    final = Path(ckpt_dir)
    tmp = final.parent / f".{final.name}.tmp"
    layout = _layout()
    if _rank() == 0:
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
    _barrier()
    state = _model_sharded_state_dict(model_chunks)
    if optimizer is not None:
        state["optimizer"] = optimizer.sharded_state_dict(state, metadata=_OPTIM_METADATA)
    if scheduler is not None:
        state["scheduler"] = scheduler.state_dict()
    state["rng_state"] = _rng_sharded_object(layout, _rng_state())
    dist_checkpointing.save(state, str(tmp))
    _barrier()
    if _rank() == 0:
        meta = {
            "iteration": int(iteration),
            "extra": extra,
            "layout": layout,
            "num_model_chunks": len(model_chunks),
            "has_optimizer": optimizer is not None,
            "has_scheduler": scheduler is not None,
            "has_rng": True,
        }
        write_checkpoint_meta(tmp, meta)
        old = final.parent / f".{final.name}.old"
        if final.exists():
            final.rename(old)
        tmp.rename(final)
        if old.exists():
            shutil.rmtree(old)
    _barrier()
    return final


def read_checkpoint_meta(ckpt_dir: str | Path) -> dict:
    """The metadata of a complete checkpoint; CheckpointError if it is missing, incomplete or truncated."""
    root = Path(ckpt_dir)
    if not root.is_dir():
        raise CheckpointError(f"checkpoint {root} does not exist")
    if not (root / COMPLETE_MARKER).is_file():
        raise CheckpointError(
            f"checkpoint {root} is incomplete (no {COMPLETE_MARKER} marker): a save was interrupted"
        )
    try:
        meta = json.loads((root / META_FILE).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise CheckpointError(f"checkpoint {root}: unreadable {META_FILE}: {err}") from err
    for name, size in meta["files"].items():
        path = root / name
        if not path.is_file():
            raise CheckpointError(f"checkpoint {root} is missing file {name}")
        if path.stat().st_size != size:
            raise CheckpointError(
                f"checkpoint {root} is truncated or corrupt: {name} has {path.stat().st_size} bytes, expected {size}"
            )
    return meta


def _init_optimizer_state_for_loading(optimizer) -> None:
    """Give a fresh DistributedOptimizer its Adam state tensors so the checkpoint can fill them in place.

    Without Apex/TE, Megatron's DistributedOptimizer.state_dict() asserts one Adam `step` over the
    (still empty) torch state. Megatron's own dummy step runs with lr = 0 here, so the weights (fp32
    shards are views of the model's parameters) are untouched even with weight decay.
    """
    from megatron.core.optimizer.distrib_optimizer import DistributedOptimizer

    for sub in getattr(optimizer, "chained_optimizers", [optimizer]):
        if not isinstance(sub, DistributedOptimizer) or len(sub.optimizer.state) > 0:
            continue
        lrs = [group["lr"] for group in sub.optimizer.param_groups]
        for group in sub.optimizer.param_groups:
            group["lr"] = 0.0
        sub._init_optimizer_states_with_dummy_values()
        for group, lr in zip(sub.optimizer.param_groups, lrs):
            group["lr"] = lr


def _unshare_adam_steps(optimizer) -> None:
    """Give every parameter its own Adam `step` tensor.

    Without Apex/TE, megatron-core 0.16.1's DistributedOptimizer.load_state_dict puts ONE step tensor
    into every parameter's torch-Adam state; torch increments it in place per parameter, so after a
    resume the bias correction would use step + n_params. Cloning restores per-parameter counters.
    """
    for sub in getattr(optimizer, "chained_optimizers", [optimizer]):
        inner = getattr(sub, "optimizer", None)
        for state in getattr(inner, "state", {}).values():
            if isinstance(state.get("step"), torch.Tensor):
                state["step"] = state["step"].clone()


def load_checkpoint(ckpt_dir: str | Path, model_chunks: list, optimizer=None, scheduler=None) -> dict:
    """Load collectively into the given chunks (any TP/PP); returns {"iteration", "extra"}.

    Optimizer and scheduler states are loaded when given (and then must be in the checkpoint);
    model-only checkpoints (the converter's) load with optimizer=None.
    """
    from megatron.core import dist_checkpointing

    root = Path(ckpt_dir)
    meta = read_checkpoint_meta(root)
    if optimizer is not None and not meta["has_optimizer"]:
        raise CheckpointError(
            f"checkpoint {root} has no optimizer state (model-only); load with optimizer=None"
        )
    if scheduler is not None and not meta["has_scheduler"]:
        raise CheckpointError(f"checkpoint {root} has no scheduler state; load with scheduler=None")
    if meta["num_model_chunks"] != len(model_chunks):
        raise CheckpointError(
            f"checkpoint {root} has {meta['num_model_chunks']} model chunks, model has {len(model_chunks)}"
        )
    layout = _layout()
    same_layout = meta["layout"] == layout and bool(meta["has_rng"])
    saved_mp = {k: meta["layout"][k] for k in ("tp", "pp")}
    if optimizer is not None and saved_mp != {k: layout[k] for k in ("tp", "pp")}:
        raise CheckpointError(
            f"checkpoint {root}: optimizer state was saved at {saved_mp} and reshards only across data "
            f"parallelism, not to tp={layout['tp']}, pp={layout['pp']}; load the model alone (optimizer=None)"
        )
    state = _model_sharded_state_dict(model_chunks)
    if optimizer is not None:
        _init_optimizer_state_for_loading(optimizer)
        state["optimizer"] = optimizer.sharded_state_dict(state, is_loading=True, metadata=_OPTIM_METADATA)
    if same_layout:
        state["rng_state"] = _rng_sharded_object(layout, None)
    try:
        loaded = dist_checkpointing.load(state, str(root))
    except Exception as err:  # dist_checkpointing raises many types for missing / corrupt shards
        raise CheckpointError(f"checkpoint {root} could not be loaded: {type(err).__name__}: {err}") from err
    chunks = unwrap_model(model_chunks)
    for i, chunk in enumerate(chunks):
        chunk.load_state_dict(loaded[_model_key(i, len(chunks))], strict=True)
    if optimizer is not None:
        with torch.no_grad():  # fp32 main params of the distributed optimizer are views of leaf params
            optimizer.load_state_dict(loaded["optimizer"])
        _unshare_adam_steps(optimizer)
    if scheduler is not None:
        scheduler.load_state_dict(loaded["scheduler"])
    if same_layout:
        _set_rng_state(loaded["rng_state"])
    return {"iteration": meta["iteration"], "extra": meta["extra"]}


def latest_checkpoint(root: str | Path) -> Path | None:
    """The complete checkpoint under `root` with the highest iteration (None if there is none)."""
    root = Path(root)
    if not root.is_dir():
        return None
    best: tuple[int, Path] | None = None
    for child in root.iterdir():
        if child.name.startswith(".") or not (child / COMPLETE_MARKER).is_file():
            continue
        try:
            it = int(json.loads((child / META_FILE).read_text())["iteration"])
        except (OSError, ValueError, KeyError):
            continue
        if best is None or it > best[0]:
            best = (it, child)
    return None if best is None else best[1]


def checkpoint_name(iteration: int) -> str:
    """Directory name of the checkpoint of an iteration: iter_0000012."""
    return f"iter_{iteration:07d}"


def remove_incomplete(root: str | Path) -> list[Path]:
    """Delete leftover temp directories of interrupted saves under `root`; returns what was removed."""
    removed = []
    for child in Path(root).glob(".*.tmp"):
        shutil.rmtree(child, ignore_errors=True)
        removed.append(child)
    return removed


__all__ = [
    "COMPLETE_MARKER",
    "CheckpointError",
    "checkpoint_name",
    "latest_checkpoint",
    "load_checkpoint",
    "read_checkpoint_meta",
    "remove_incomplete",
    "save_checkpoint",
    "write_checkpoint_meta",
]
