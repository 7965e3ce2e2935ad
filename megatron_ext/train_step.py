"""One GRPO-λ update of the Megatron actor on Megatron's forward-backward schedules.

Shapes: a `RolloutBatch` holds this DP rank's B sequences of length S (prompt + response, right
padded). Log-probs are aligned to `input_ids`: logp[b, s] = log π(ids[b, s] | ids[b, <s]) for s ≥ 1
(the logits at s−1), and 0 at s = 0; `response_mask` selects the loss positions.

Normalisation. Megatron's schedule divides each microbatch loss by the number of microbatches M and
DDP averages gradients over the D data-parallel ranks. Each microbatch loss here is

    L_mb = A_mb / N_global · M · D,

where A_mb is the un-normalised sum (token sum for `token-mean`, sum of per-sequence values for the
`seq-mean-*` modes) and N_global the valid-token (resp. sequence) count of the whole global batch
(all-reduced over DP once per step). The gradient is then exactly ∇ Σ_dp Σ_mb A_mb / N_global,
independent of how the batch is split into microbatches and DP ranks.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, fields
from functools import partial

import torch
import torch.distributed as dist

from megatron_ext.logprobs import token_logprobs
from megatron_ext.optim import build_optimizer, unwrap_model, wrap_ddp
from megatron_ext.parallel import ParallelGroups, current_groups

__all__ = [
    "LossSettings",
    "RolloutBatch",
    "build_optimizer",
    "compute_logprobs",
    "train_step",
    "unwrap_model",
    "wrap_ddp",
]

# Loss metrics averaged over valid tokens (token-weighted across microbatches and DP) or maxed.
_MEAN_METRICS = ("clip_fraction", "ratio_mean", "trace_abs_mean", "kl", "weight_mean", "entropy")
_MAX_METRICS = ("weight_max", "logprob_mismatch_max_ratio")


@dataclass
class RolloutBatch:
    """This DP rank's share of the rollouts. input_ids [B,S] long; response_mask [B,S] 0/1;
    old_logp [B,S] sampling log-probs (0 outside the response); advantages [B]; ref_logp [B,S] or None.
    """

    input_ids: torch.Tensor
    response_mask: torch.Tensor
    old_logp: torch.Tensor
    advantages: torch.Tensor
    ref_logp: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if self.input_ids.dim() != 2:
            raise ValueError(f"input_ids must be [B, S], got {tuple(self.input_ids.shape)}")
        shape = tuple(self.input_ids.shape)
        for name in ("response_mask", "old_logp", "ref_logp"):
            t = getattr(self, name)
            if t is not None and tuple(t.shape) != shape:
                raise ValueError(f"{name} must have the shape of input_ids {shape}, got {tuple(t.shape)}")
        if tuple(self.advantages.shape) != shape[:1]:
            raise ValueError(f"advantages must be [B]={shape[:1]}, got {tuple(self.advantages.shape)}")
        if bool(self.response_mask[:, 0].any()):
            raise ValueError("response_mask[:, 0] must be 0: position 0 has no logits to predict it")

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    def _map(self, fn) -> RolloutBatch:
        """A new batch with `fn` applied to every tensor field (None stays None)."""
        return RolloutBatch(
            **{
                f.name: None if getattr(self, f.name) is None else fn(getattr(self, f.name))
                for f in fields(self)
            }
        )

    def rows(self, start: int, stop: int) -> RolloutBatch:
        """Sequences [start, stop) as a new batch (views)."""
        return self._map(lambda t: t[start:stop])

    def shard(self, rank: int, size: int) -> RolloutBatch:
        """The contiguous share of DP rank `rank` of `size` (B must be divisible by size)."""
        if len(self) % size:
            raise ValueError(f"batch of {len(self)} sequences is not divisible by data_parallel={size}")
        n = len(self) // size
        return self.rows(rank * n, (rank + 1) * n)

    def to(self, device) -> RolloutBatch:
        return self._map(lambda t: t.to(device))


# LossSettings fields that the step uses itself; the others are `per_token_policy_loss` keywords.
_STEP_FIELDS = ("aggregation", "temperature", "tis_cap", "recompute_old_logp")


@dataclass(frozen=True, kw_only=True)
class LossSettings:
    """Keyword arguments of `megatron_ext.losses.per_token_policy_loss` plus how the step uses them.

    Every field is required: the defaults live in `pipeline.config.AlgorithmConfig`.
    aggregation: a name in `megatron_ext.losses.AGGREGATIONS`; temperature: the rollout's sampling
    temperature (logits are divided by it); tis_cap: truncated importance-sampling cap on
    π_old/π_rollout (None = off); recompute_old_logp: recompute π_old with the trainer before the
    update instead of trusting the rollout engine's log-probs.
    """

    variant: str
    style: str
    gamma: float
    lam: float
    eps_low: float
    eps_high: float
    dual_clip: float | None
    adv_clamp_min: float | None
    weight_norm: str
    kl_coef: float
    kl_estimator: str
    aggregation: str
    temperature: float
    tis_cap: float | None
    recompute_old_logp: bool

    def policy_loss_kwargs(self) -> dict:
        """The keyword arguments of `per_token_policy_loss` (all fields but the step's own)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name not in _STEP_FIELDS}


def _device() -> torch.device:
    return (
        torch.device("cuda", torch.cuda.current_device())
        if torch.cuda.is_available()
        else torch.device("cpu")
    )


def _sync_time() -> float:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter()


def _microbatches(batch: RolloutBatch, micro_batch_size: int, extra: dict | None = None) -> list[dict]:
    if micro_batch_size < 1 or len(batch) % micro_batch_size:
        raise ValueError(
            f"micro_batch_size={micro_batch_size} must divide this rank's batch of {len(batch)} sequences"
        )
    seq = batch.input_ids.shape[1]
    out = []
    for start in range(0, len(batch), micro_batch_size):
        mb = batch.rows(start, start + micro_batch_size)
        item = {
            "batch": mb,
            "position_ids": torch.arange(seq, device=mb.input_ids.device).expand(len(mb), seq),
        }
        for name, t in (extra or {}).items():
            item[name] = t[start : start + micro_batch_size]
        out.append(item)
    return out


def _logp_aligned(
    logits: torch.Tensor,
    input_ids: torch.Tensor,
    *,
    temperature: float,
    tp_group,
    vocab_size: int,
    with_entropy: bool,
):
    """[B,S] log-probs (and entropy) aligned to input_ids, position 0 set to 0."""
    res = token_logprobs(
        logits[:, :-1],
        input_ids[:, 1:],
        temperature=temperature,
        tp_group=tp_group,
        with_entropy=with_entropy,
        vocab_size=vocab_size,
    )
    pad = partial(torch.nn.functional.pad, pad=(1, 0))
    return tuple(pad(r) for r in res) if with_entropy else pad(res)


def _tp_group(groups: ParallelGroups):
    return None if groups.tp_size == 1 else groups.tp


def _run_schedule(model_chunks, microbatches, forward_step, *, seq_length, micro_batch_size, forward_only):
    from megatron.core.pipeline_parallel import get_forward_backward_func

    return get_forward_backward_func()(
        forward_step_func=forward_step,
        data_iterator=iter(microbatches),
        model=model_chunks,
        num_microbatches=len(microbatches),
        seq_length=seq_length,
        micro_batch_size=micro_batch_size,
        forward_only=forward_only,
    )


def _broadcast_from_last_stage(tensor: torch.Tensor, groups: ParallelGroups) -> torch.Tensor:
    if groups.pp_size == 1:
        return tensor
    src = dist.get_global_rank(groups.pp, groups.pp_size - 1)
    dist.broadcast(tensor, src=src, group=groups.pp)
    return tensor


@torch.no_grad()
def compute_logprobs(
    model_chunks: list,
    batch: RolloutBatch,
    *,
    micro_batch_size: int,
    temperature: float,
    groups: ParallelGroups | None = None,
) -> torch.Tensor:
    """Token log-probs [B,S] (aligned to input_ids, 0 at s=0) of this rank's batch, on every PP stage.

    `groups` defaults to the groups of Megatron's initialised parallel state.
    """
    groups = groups or current_groups()
    vocab = unwrap_model(model_chunks)[-1].hf_vocab_size
    tp_group = _tp_group(groups)
    batch = batch.to(_device())
    mbs = _microbatches(batch, micro_batch_size)

    def loss_func(item, logits):
        logp = _logp_aligned(
            logits,
            item["batch"].input_ids,
            temperature=temperature,
            tp_group=tp_group,
            vocab_size=vocab,
            with_entropy=False,
        )
        return logits.new_zeros(()), {"logp": logp}

    def forward_step(data_iterator, model):
        item = next(data_iterator)
        return model(item["batch"].input_ids, item["position_ids"], None), partial(loss_func, item)

    for chunk in model_chunks:
        chunk.eval()
    out = _run_schedule(
        model_chunks,
        mbs,
        forward_step,
        seq_length=batch.input_ids.shape[1],
        micro_batch_size=micro_batch_size,
        forward_only=True,
    )
    for chunk in model_chunks:
        chunk.train()
    empty = torch.empty(batch.input_ids.shape, dtype=torch.float32, device=batch.input_ids.device)
    logp = torch.cat([o["logp"] for o in out]) if out else empty
    return _broadcast_from_last_stage(logp.float().contiguous(), groups)


def _global_counts(batch: RolloutBatch, groups: ParallelGroups) -> tuple[float, float]:
    counts = torch.tensor([float(batch.response_mask.sum()), float(len(batch))], dtype=torch.float64)
    if groups.dp_size > 1:
        dist.all_reduce(counts, group=groups.dp)
    return float(counts[0]), float(counts[1])


def _loss_and_metrics(item, logits, *, loss: LossSettings, tp_group, vocab_size, scale: float, norm: float):
    """Per-microbatch loss scaled per the module docstring, and token-weighted metric sums."""
    from megatron_ext.losses import aggregate, per_token_policy_loss
    from megatron_ext.losses.importance import logprob_mismatch, truncated_is_weights

    mb: RolloutBatch = item["batch"]
    mask = mb.response_mask
    logp, entropy = _logp_aligned(
        logits,
        mb.input_ids,
        temperature=loss.temperature,
        tp_group=tp_group,
        vocab_size=vocab_size,
        with_entropy=True,
    )
    old_logp = item.get("old_logp", mb.old_logp)  # trainer-recomputed π_old when asked for
    per_token, metrics = per_token_policy_loss(
        logp, old_logp, mb.advantages, mask, ref_logp=mb.ref_logp, **loss.policy_loss_kwargs()
    )
    if loss.tis_cap is not None:
        per_token = per_token * truncated_is_weights(mb.old_logp, old_logp, mask, loss.tis_cap)
    if loss.aggregation == "token-mean":
        total = aggregate(per_token, mask, "token-mean", global_valid_tokens=1.0)
    else:  # the mean over this microbatch's sequences, turned back into a sum
        total = aggregate(per_token, mask, loss.aggregation) * len(mb)
    ntok = mask.sum().to(torch.float64)
    mismatch = logprob_mismatch(mb.old_logp.float(), logp.detach(), mask)
    sums = {k: metrics[k].detach().double() * ntok for k in _MEAN_METRICS if k in metrics}
    sums["entropy"] = (entropy.detach() * mask).sum().double()
    sums["logprob_mismatch_mean_abs"] = mismatch["mean_abs"].double() * ntok
    maxes = {"logprob_mismatch_max_ratio": mismatch["max_ratio"].double()}
    if "weight_max" in metrics:
        maxes["weight_max"] = metrics["weight_max"].detach().double()
    reduced = {"loss": total.detach().double() / norm, "tokens": ntok, "sums": sums, "maxes": maxes}
    return total / norm * scale, reduced


def _reduce_metrics(outputs: list[dict], groups: ParallelGroups) -> dict[str, float]:
    """Sum / max the per-microbatch metrics over microbatches and DP; broadcast from the last PP stage."""
    names_sum = ["loss", "tokens", *_MEAN_METRICS, "logprob_mismatch_mean_abs"]
    names_max = list(_MAX_METRICS)
    s = torch.zeros(len(names_sum), dtype=torch.float64)
    m = torch.full((len(names_max),), float("-inf"), dtype=torch.float64)
    present = torch.zeros(len(names_sum), dtype=torch.float64)
    if groups.is_last_stage:
        for o in outputs:
            s[0] += o["loss"]
            s[1] += o["tokens"]
            for i, k in enumerate(names_sum[2:], start=2):
                if k in o["sums"]:
                    s[i] += o["sums"][k]
                    present[i] = 1.0
            for i, k in enumerate(names_max):
                if k in o["maxes"]:
                    m[i] = torch.maximum(m[i], o["maxes"][k])
    if groups.dp_size > 1:
        dist.all_reduce(s, group=groups.dp)
        dist.all_reduce(m, op=dist.ReduceOp.MAX, group=groups.dp)
    packed = torch.cat([s, m, present])
    packed = _broadcast_from_last_stage(packed, groups)
    s, m, present = packed[: len(s)], packed[len(s) : len(s) + len(m)], packed[len(s) + len(m) :]
    tokens = max(float(s[1]), 1.0)
    out = {"loss": float(s[0]), "valid_tokens": float(s[1])}
    for i, k in enumerate(names_sum[2:], start=2):
        if present[i] > 0 or k == "entropy":
            out[k] = float(s[i]) / tokens
    for i, k in enumerate(names_max):
        if torch.isfinite(m[i]):
            out[k] = float(m[i])
    return out


def _timed_forward_step(loss_fn, timing: dict[str, float]):
    """Megatron forward_step that adds the forward and loss times of each microbatch to `timing`."""

    def timed_loss(item, logits):
        t = _sync_time()
        out = loss_fn(item, logits)
        timing["loss"] += _sync_time() - t
        return out

    def forward_step(data_iterator, model):
        item = next(data_iterator)
        t = _sync_time()
        out = model(item["batch"].input_ids, item["position_ids"], None)
        timing["forward"] += _sync_time() - t
        return out, partial(timed_loss, item)

    return forward_step


def _zero_grads(model_chunks: list, optimizer) -> None:
    """Hook the optimizer's loss scaling and Megatron's grad finalisation into the model config; zero grads."""
    from megatron.core.distributed import finalize_model_grads
    from megatron.core.utils import get_model_config

    config = get_model_config(model_chunks[0])
    config.grad_scale_func = optimizer.scale_loss
    config.finalize_model_grads_func = finalize_model_grads
    for chunk in model_chunks:
        chunk.zero_grad_buffer()
    optimizer.zero_grad()


def train_step(
    model_chunks: list,
    optimizer,
    scheduler,
    batch: RolloutBatch,
    loss: LossSettings,
    *,
    micro_batch_size: int,
    groups: ParallelGroups | None = None,
) -> dict[str, float]:
    """One optimizer update on this DP rank's `batch` (chunks wrapped by `wrap_ddp`).

    `groups` defaults to the groups of Megatron's initialised parallel state.

    Returns (same on every rank): loss, grad_norm, valid_tokens, clip_fraction, ratio_mean,
    trace_abs_mean, kl, weight_mean, weight_max, entropy, logprob_mismatch_{mean_abs,max_ratio}, lr,
    tokens_per_s, and time_{logprob_recompute,forward,loss,backward,optimizer,total}_s.
    """
    groups = groups or current_groups()
    if loss.kl_coef > 0 and batch.ref_logp is None:
        raise ValueError("loss.kl_coef > 0 needs batch.ref_logp (log-probs of the reference policy)")
    t0 = _sync_time()
    batch = batch.to(_device())
    seq = batch.input_ids.shape[1]
    extra = {}
    if loss.recompute_old_logp:
        extra["old_logp"] = compute_logprobs(
            model_chunks,
            batch,
            micro_batch_size=micro_batch_size,
            temperature=loss.temperature,
            groups=groups,
        )
    t_recompute = _sync_time() - t0
    mbs = _microbatches(batch, micro_batch_size, extra)
    norm_tokens, norm_seqs = _global_counts(batch, groups)
    loss_fn = partial(
        _loss_and_metrics,
        loss=loss,
        tp_group=_tp_group(groups),
        vocab_size=unwrap_model(model_chunks)[-1].hf_vocab_size,
        scale=float(len(mbs) * groups.dp_size),
        norm=max(norm_tokens if loss.aggregation == "token-mean" else norm_seqs, 1.0),
    )
    timing = {"forward": 0.0, "loss": 0.0}
    _zero_grads(model_chunks, optimizer)
    t1 = _sync_time()
    outputs = _run_schedule(
        model_chunks,
        mbs,
        _timed_forward_step(loss_fn, timing),
        seq_length=seq,
        micro_batch_size=micro_batch_size,
        forward_only=False,
    )
    t2 = _sync_time()
    _, grad_norm, _ = optimizer.step()
    scheduler.step(increment=1)
    t3 = _sync_time()
    metrics = _reduce_metrics(outputs, groups)
    total = t3 - t0
    metrics.update(
        grad_norm=float(grad_norm) if grad_norm is not None else float("nan"),
        lr=float(optimizer.param_groups[0]["lr"]),
        tokens_per_s=len(batch) * seq * groups.dp_size / max(total, 1e-9),
        time_logprob_recompute_s=t_recompute,
        time_forward_s=timing["forward"],
        time_loss_s=timing["loss"],
        time_backward_s=max((t2 - t1) - timing["forward"] - timing["loss"], 0.0),
        time_optimizer_s=t3 - t2,
        time_total_s=total,
    )
    return metrics
