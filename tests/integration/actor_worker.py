"""Worker processes of the actor integration tests (run by tests/integration/test_actor*.py).

    python  actor_worker.py reference  <workdir>     # one process: TP1 PP1 DP1 reference runs (+ 2 steps)
    torchrun --nproc_per_node 2 actor_worker.py dist <workdir>   # TP2 / PP2 / DP2 runs, reshard
    python  actor_worker.py kill_after_save <workdir> / resume <workdir>   # save -> SIGKILL -> resume

Each scenario writes <workdir>/<scenario>[_rank<r>].json with measured numbers; the tests assert on
them. References are independent: HF transformers (float64 log-softmax) for log-probs, the TP1 PP1
DP1 single-microbatch run for the invariance of one update.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import sys
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from megatron_ext.logprobs import token_logprobs
from megatron_ext.model import build_gpt_model
from megatron_ext.parallel import initialize_model_parallel
from megatron_ext.train_step import (
    LossSettings,
    RolloutBatch,
    build_optimizer,
    compute_logprobs,
    train_step,
    wrap_ddp,
)
from pipeline.config import AlgorithmConfig
from tests.integration.actor_weights import (
    expected_shards,
    load_hf_into_megatron,
    megatron_tp1_to_hf,
    random_hf_model,
)

B, S, VOCAB = 8, 24, 131
# tests/gpu runs the same scenarios in bf16 (Transformer Engine spec when installed).
DTYPE = getattr(torch, os.environ.get("ACTOR_PARAMS_DTYPE", "float32"))
USE_TE = None if os.environ.get("ACTOR_USE_TE", "0") == "auto" else False
DEV = "cuda" if torch.cuda.is_available() else "cpu"
# The algorithm's defaults come from the one place they live (pipeline.config.AlgorithmConfig).
_ALGORITHM = AlgorithmConfig(variant="epsilon-trace", style="recent", lam=0.9, recompute_old_logp=False)
LOSS = LossSettings(
    **{
        f.name: getattr(_ALGORITHM, f.name)
        for f in dataclasses.fields(LossSettings)
        if hasattr(_ALGORITHM, f.name)
    },
    temperature=0.9,
    tis_cap=None,
)
OPTIM = dict(
    lr=1e-3,
    weight_decay=0.01,
    betas=(0.9, 0.999),
    eps=1e-6,
    clip_grad=1.0,
    lr_schedule="constant",
    warmup_iters=0,
    total_iters=10,
    min_lr=0.0,
)


def hf_model(arch: str, tied: bool):
    """A random tiny HF model, identical in every process (seeded)."""
    return random_hf_model(arch, tied=tied, vocab_size=VOCAB)


def hf_logprobs(model, ids: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Float64 reference log-probs aligned to ids (0 at position 0)."""
    with torch.no_grad():
        logits = model(ids).logits.double() / temperature
    lp = torch.log_softmax(logits, -1)[:, :-1].gather(-1, ids[:, 1:].unsqueeze(-1)).squeeze(-1)
    return torch.nn.functional.pad(lp, (1, 0))


def rollout_batch(model) -> RolloutBatch:
    """B right-padded sequences: random prompt/response lengths; old_logp = HF log-probs + noise."""
    g = torch.Generator().manual_seed(7)
    ids = torch.randint(4, VOCAB, (B, S), generator=g)
    mask = torch.zeros(B, S)
    for b in range(B):
        p = int(torch.randint(3, 8, (1,), generator=g))
        r = int(torch.randint(4, S - p + 1, (1,), generator=g))
        mask[b, p : p + r] = 1
        ids[b, p + r :] = 0
    old = (hf_logprobs(model, ids, LOSS.temperature).float() + 0.05 * torch.randn(B, S, generator=g)) * mask
    adv = torch.randn(B, generator=g)
    return RolloutBatch(input_ids=ids, response_mask=mask, old_logp=old, advantages=adv)


def setup(arch, tied, tp, pp, seed=0):
    groups = initialize_model_parallel(tp, pp, seed=seed)
    hf, cfg = hf_model(arch, tied)
    chunks = build_gpt_model(cfg, tp=tp, pp=pp, params_dtype=DTYPE, use_te=USE_TE)
    load_hf_into_megatron(chunks, hf.state_dict(), cfg, tp_rank=groups.tp_rank, tp_size=tp)
    return groups, hf, cfg, chunks


def one_step(tp, pp, mbs, *, dist_opt, arch="qwen2", tied=True, steps=1):
    groups, hf, cfg, chunks = setup(arch, tied, tp, pp)
    batch = rollout_batch(hf)
    ddp = wrap_ddp(chunks, use_distributed_optimizer=dist_opt)
    opt, sched = build_optimizer(ddp, use_distributed_optimizer=dist_opt, **OPTIM)
    local = batch.shard(groups.dp_rank, groups.dp_size)
    metrics = [
        train_step(ddp, opt, sched, local, LOSS, micro_batch_size=mbs, groups=groups) for _ in range(steps)
    ]
    return groups, cfg, chunks, ddp, opt, sched, metrics


def weight_diff(chunks, ref_hf: dict, cfg: dict, groups) -> float:
    """Max |param − expected shard of the reference weights| over this rank's parameters."""
    worst = 0.0
    for chunk in chunks:
        for name, exp in expected_shards(
            chunk, ref_hf, cfg, tp_rank=groups.tp_rank, tp_size=groups.tp_size
        ).items():
            param = dict(chunk.named_parameters())[name]
            worst = max(worst, float((param.detach().double().cpu() - exp.double().cpu()).abs().max()))
    return worst


def scenario_reference(workdir: Path) -> None:
    out = {}
    for arch, tied in (("qwen2", True), ("llama", False)):
        groups, hf, cfg, chunks = setup(arch, tied, 1, 1)
        batch = rollout_batch(hf)
        ref = hf_logprobs(hf, batch.input_ids)
        got = compute_logprobs(chunks, batch, micro_batch_size=4, temperature=1.0, groups=groups)
        out[f"parity_tp1_{arch}"] = float((got.double().cpu() - ref).abs().max())
    results = {}
    for name, mbs in (("mb1", B), ("mb4", B // 4)):
        _, cfg, chunks, *_, metrics = one_step(1, 1, mbs, dist_opt=False)
        results[name] = {"metrics": metrics[0], "weights": megatron_tp1_to_hf(chunks[0], cfg)}
    torch.save(results["mb1"]["weights"], workdir / "ref_weights.pt")
    initial = hf_model("qwen2", True)[0].state_dict()
    out["mb1_weights_moved"] = max(
        float((v - initial[k]).abs().max()) for k, v in results["mb1"]["weights"].items()
    )
    out["mb1"] = results["mb1"]["metrics"]
    out["mb4"] = results["mb4"]["metrics"]
    out["mb4_weight_diff"] = max(
        float((results["mb4"]["weights"][k] - v).abs().max()) for k, v in results["mb1"]["weights"].items()
    )
    (workdir / "reference.json").write_text(json.dumps(out, indent=2))
    scenario_uninterrupted(workdir)


def logprobs_vs_float64(groups) -> dict:
    """TP-sharded token_logprobs (values, entropy, gradient) vs a float64 full-vocab reference."""
    g = torch.Generator().manual_seed(3)
    vocab, padded, temp = 250, 256, 0.7
    logits = (3 * torch.randn(2, 5, padded, generator=g, dtype=torch.float64)).to(DEV)
    ids = torch.randint(0, vocab, (2, 5), generator=g)
    w1, w2 = (
        torch.randn(2, 5, generator=g, dtype=torch.float64),
        torch.randn(2, 5, generator=g, dtype=torch.float64),
    )
    ref_in = logits[..., :vocab].clone().requires_grad_(True)
    logp_ref = torch.log_softmax(ref_in / temp, -1)
    ent_ref = -(logp_ref.exp() * logp_ref).sum(-1)
    lp_ref = logp_ref.gather(-1, ids.unsqueeze(-1)).squeeze(-1)
    ((lp_ref * w1).sum() + (ent_ref * w2).sum()).backward()
    shard = torch.chunk(logits.float(), groups.tp_size, -1)[groups.tp_rank].clone().requires_grad_(True)
    lp, ent = token_logprobs(
        shard, ids, temperature=temp, tp_group=groups.tp, with_entropy=True, vocab_size=vocab
    )
    ((lp * w1.float()).sum() + (ent * w2.float()).sum()).backward()
    grad_ref = torch.nn.functional.pad(ref_in.grad, (0, padded - vocab))
    grad_ref = torch.chunk(grad_ref, groups.tp_size, -1)[groups.tp_rank]
    return {
        "logp": float((lp.double() - lp_ref.detach()).abs().max()),
        "entropy": float((ent.double() - ent_ref.detach()).abs().max()),
        "grad": float((shard.grad.double() - grad_ref).abs().max()),
    }


def scenario_dist(workdir: Path) -> None:
    from megatron_ext.checkpoint import load_checkpoint, save_checkpoint

    rank = int(os.environ["RANK"])
    ref_weights = torch.load(workdir / "ref_weights.pt")
    out = {}
    groups = initialize_model_parallel(2, 1, seed=0)
    out["logprobs_tp2"] = logprobs_vs_float64(groups)
    for arch, tied in (("qwen2", True), ("llama", False)):
        for tp, pp in ((2, 1), (1, 2)):
            groups, hf, cfg, chunks = setup(arch, tied, tp, pp)
            batch = rollout_batch(hf)
            got = compute_logprobs(chunks, batch, micro_batch_size=4, temperature=1.0, groups=groups)
            out[f"parity_tp{tp}_pp{pp}_{arch}"] = float(
                (got.double() - hf_logprobs(hf, batch.input_ids)).abs().max()
            )
    for name, tp, pp, mbs, dist_opt in (
        ("tp2", 2, 1, 4, False),
        ("pp2", 1, 2, 2, False),
        ("dp2", 1, 1, 4, True),
    ):
        t = time.perf_counter()
        groups, cfg, chunks, ddp, opt, sched, metrics = one_step(tp, pp, mbs, dist_opt=dist_opt)
        out[name] = {
            "metrics": metrics[0],
            "weight_diff": weight_diff(chunks, ref_weights, cfg, groups),
            "seconds": time.perf_counter() - t,
        }
        if name == "tp2":  # reshard: save at TP=2 now, load at TP=1 below
            before = compute_logprobs(
                ddp,
                rollout_batch(hf_model("qwen2", True)[0]),
                micro_batch_size=4,
                temperature=1.0,
                groups=groups,
            )
            save_checkpoint(workdir / "ckpt_tp2", ddp, opt, sched, iteration=1, extra={"position": 8})
    groups, hf, cfg, _ = setup("qwen2", True, 1, 1)
    chunks = build_gpt_model(cfg, tp=1, pp=1, params_dtype=DTYPE, use_te=USE_TE)
    info = load_checkpoint(workdir / "ckpt_tp2", chunks)
    after = compute_logprobs(chunks, rollout_batch(hf), micro_batch_size=4, temperature=1.0, groups=groups)
    out["reshard"] = {"max_diff": float((after - before).abs().max()), "info": info}
    (workdir / f"dist_rank{rank}.json").write_text(json.dumps(out, indent=2))


def _resume_setup(workdir: Path):
    groups, cfg, chunks, ddp, opt, sched, metrics = one_step(1, 1, 4, dist_opt=True)
    return groups, ddp, opt, sched, metrics


def scenario_uninterrupted(workdir: Path) -> None:
    groups, ddp, opt, sched, _ = _resume_setup(workdir)
    hf, _ = hf_model("qwen2", True)
    m2 = train_step(ddp, opt, sched, rollout_batch(hf), LOSS, micro_batch_size=4, groups=groups)
    state = {
        k: v.detach().clone() for k, v in ddp[0].module.state_dict().items() if not k.endswith("_extra_state")
    }
    torch.save(state, workdir / "uninterrupted.pt")
    (workdir / "uninterrupted.json").write_text(json.dumps(m2))


def scenario_kill_after_save(workdir: Path) -> None:
    from megatron_ext.checkpoint import save_checkpoint

    groups, ddp, opt, sched, _ = _resume_setup(workdir)
    save_checkpoint(workdir / "ckpt_resume", ddp, opt, sched, iteration=1, extra={"position": 8})
    os.kill(os.getpid(), signal.SIGKILL)


def _truncated_copy(src: Path, dst: Path) -> Path:
    """A copy of checkpoint `src` whose largest file is cut in half (a save killed mid-write)."""
    import shutil

    shutil.copytree(src, dst)
    biggest = max((p for p in dst.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    with open(biggest, "r+b") as f:
        f.truncate(biggest.stat().st_size // 2)
    return dst


def scenario_resume(workdir: Path) -> None:
    from megatron_ext.checkpoint import CheckpointError, load_checkpoint

    groups = initialize_model_parallel(1, 1, seed=99)  # a different seed: the checkpoint must restore state
    hf, cfg = hf_model("qwen2", True)
    chunks = build_gpt_model(cfg, tp=1, pp=1, params_dtype=DTYPE, use_te=USE_TE)
    ddp = wrap_ddp(chunks, use_distributed_optimizer=True)
    opt, sched = build_optimizer(ddp, use_distributed_optimizer=True, **OPTIM)
    info = load_checkpoint(workdir / "ckpt_resume", ddp, opt, sched)
    m2 = train_step(ddp, opt, sched, rollout_batch(hf), LOSS, micro_batch_size=4, groups=groups)
    state = {
        k: v.detach().clone() for k, v in ddp[0].module.state_dict().items() if not k.endswith("_extra_state")
    }
    ref = torch.load(workdir / "uninterrupted.pt")
    truncated = _truncated_copy(workdir / "ckpt_resume", workdir / "ckpt_truncated")
    try:
        load_checkpoint(truncated, ddp, opt, sched)
        error = None
    except CheckpointError as err:
        error = str(err)
    ref_metrics = json.loads((workdir / "uninterrupted.json").read_text())
    out = {
        "info": info,
        "truncated_error": error,
        "bitwise_equal": all(torch.equal(state[k], ref[k]) for k in ref),
        "max_diff": max(float((state[k] - ref[k]).abs().max()) for k in ref),
        "loss": [m2["loss"], ref_metrics["loss"]],
        "grad_norm": [m2["grad_norm"], ref_metrics["grad_norm"]],
    }
    (workdir / "resume.json").write_text(json.dumps(out, indent=2))


SCENARIOS = {
    "reference": scenario_reference,
    "dist": scenario_dist,
    "kill_after_save": scenario_kill_after_save,
    "resume": scenario_resume,
}

if __name__ == "__main__":
    warnings.filterwarnings("ignore")
    name, workdir = sys.argv[1], Path(sys.argv[2])
    if name not in SCENARIOS:
        raise SystemExit(f"unknown scenario {name!r}; valid: {sorted(SCENARIOS)}")
    SCENARIOS[name](workdir)
