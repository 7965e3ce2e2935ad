"""Megatron DDP wrapping, optimizer and LR schedule for the actor (re-exported by `train_step`).

Megatron's `DistributedDataParallel` and `DistributedOptimizer` run on CPU (gloo) as on GPU, with
`overlap_grad_reduce=False` / `overlap_param_gather=False` (overlap needs CUDA streams); the grad buffers,
bucketed all-reduce / reduce-scatter and the sharded Adam state are the same code as on GPU.
"""

from __future__ import annotations

import torch

LR_SCHEDULES = ("constant", "cosine")


def wrap_ddp(
    model_chunks: list, *, use_distributed_optimizer: bool, grad_reduce_in_fp32: bool = True
) -> list:
    """Wrap GPTModel chunks in Megatron's DistributedDataParallel (contiguous grad buffers, DP reduce).

    Must happen before `build_optimizer`. Gradients are reduced after the last microbatch (no overlap
    with backward yet; with DP=1 there is nothing to overlap).
    """
    from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig

    ddp_config = DistributedDataParallelConfig(
        grad_reduce_in_fp32=grad_reduce_in_fp32,
        overlap_grad_reduce=False,  # overlap needs the schedule's no_sync/grad_sync hooks: not wired yet
        overlap_param_gather=False,
        use_distributed_optimizer=use_distributed_optimizer,
        check_for_nan_in_grad=False,
    )
    wrapped = []
    for i, chunk in enumerate(model_chunks):
        if isinstance(chunk, DistributedDataParallel):
            raise ValueError(f"model chunk {i} is already wrapped in DistributedDataParallel")
        wrapped.append(
            DistributedDataParallel(
                config=chunk.config,
                ddp_config=ddp_config,
                module=chunk,
                disable_bucketing=i > 0,
            )
        )
    return wrapped


def unwrap_model(model_chunks: list) -> list:
    """The bare GPTModel of each chunk (strips DDP and similar `.module` wrappers)."""
    out = []
    for chunk in model_chunks:
        while hasattr(chunk, "module"):
            chunk = chunk.module
        out.append(chunk)
    return out


def _check_ddp(model_chunks: list) -> None:
    from megatron.core.distributed import DistributedDataParallel

    for i, chunk in enumerate(model_chunks):
        if not isinstance(chunk, DistributedDataParallel):
            raise TypeError(
                f"model chunk {i} is a {type(chunk).__name__}; wrap the chunks with "
                "megatron_ext.train_step.wrap_ddp(...) before building the optimizer / training"
            )


def build_optimizer(
    model_chunks: list,
    *,
    lr: float,
    weight_decay: float,
    betas: tuple[float, float],
    eps: float,
    clip_grad: float,
    use_distributed_optimizer: bool,
    lr_schedule: str,
    warmup_iters: int,
    total_iters: int,
    min_lr: float,
):
    """Megatron Adam (mixed precision when the params are bf16) and an `OptimizerParamScheduler`.

    lr_schedule: "constant" (after a linear warmup) or "cosine" decay to `min_lr` over `total_iters`.
    Returns (optimizer, scheduler); one scheduler step per `train_step`.
    """
    from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer
    from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler

    _check_ddp(model_chunks)
    if lr_schedule not in LR_SCHEDULES:
        raise ValueError(f"unknown lr_schedule {lr_schedule!r}; valid: {list(LR_SCHEDULES)}")
    if any(c.ddp_config.use_distributed_optimizer != use_distributed_optimizer for c in model_chunks):
        raise ValueError("use_distributed_optimizer must match the one given to wrap_ddp")
    params_dtype = model_chunks[0].config.params_dtype
    config = OptimizerConfig(
        optimizer="adam",
        lr=lr,
        min_lr=min_lr,
        weight_decay=weight_decay,
        adam_beta1=betas[0],
        adam_beta2=betas[1],
        adam_eps=eps,
        clip_grad=clip_grad,
        bf16=params_dtype == torch.bfloat16,
        fp16=params_dtype == torch.float16,
        params_dtype=params_dtype,
        use_distributed_optimizer=use_distributed_optimizer,
    )
    optimizer = get_megatron_optimizer(config, model_chunks)
    decay_iters = max(total_iters - warmup_iters, 1)
    scheduler = OptimizerParamScheduler(
        optimizer,
        init_lr=0.0 if warmup_iters > 0 else lr,
        max_lr=lr,
        min_lr=min_lr if lr_schedule == "cosine" else lr,
        lr_warmup_steps=warmup_iters,
        lr_decay_steps=warmup_iters + decay_iters,
        lr_decay_style="cosine" if lr_schedule == "cosine" else "constant",
        start_wd=weight_decay,
        end_wd=weight_decay,
        wd_incr_steps=max(total_iters, 1),
        wd_incr_style="constant",
    )
    return optimizer, scheduler
