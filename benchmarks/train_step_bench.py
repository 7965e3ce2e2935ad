"""Time split of one GRPO-λ update of the Megatron actor on the tiny CPU model: grpo vs epsilon-trace.

    .venv/bin/python benchmarks/train_step_bench.py [--batch 8 --seq 256 --micro-batch 4 --reps 5]

One process (a world of one, gloo). Each rep runs one `train_step` per variant, alternating, from the
same weights and batch (the optimizer state is rebuilt per rep so every step is a first step); the
table reports medians. Target: the λ-loss (epsilon-trace's traced ratio) adds ≤ 2% to the whole step,
measured as (fwd+bwd time of the epsilon-trace policy loss − that of grpo, each the minimum of 30
repetitions, which a shared CPU disturbs least) / median step time of grpo.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import warnings
from dataclasses import fields
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SPLITS = (
    "time_logprob_recompute_s",
    "time_forward_s",
    "time_loss_s",
    "time_backward_s",
    "time_optimizer_s",
    "time_total_s",
)


def make_batch(batch: int, seq: int, vocab: int, seed: int = 0):
    from megatron_ext.train_step import RolloutBatch

    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(4, vocab, (batch, seq), generator=g)
    mask = torch.zeros(batch, seq)
    prompt = seq // 8
    for b in range(batch):
        length = int(torch.randint(seq // 2, seq - prompt + 1, (1,), generator=g))
        mask[b, prompt : prompt + length] = 1
        ids[b, prompt + length :] = 0
    old = -2.0 * torch.rand(batch, seq, generator=g) * mask
    return RolloutBatch(
        input_ids=ids, response_mask=mask, old_logp=old, advantages=torch.randn(batch, generator=g)
    )


def loss_kernel_seconds(variant: str, batch, reps: int = 30) -> float:
    """Min over reps of forward+backward of per_token_policy_loss alone at the batch's [B, S] (load-robust)."""
    import time

    from megatron_ext.losses import aggregate, per_token_policy_loss

    mask = batch.response_mask
    best = float("inf")
    for _ in range(reps):
        logp = (batch.old_logp + 0.01 * torch.randn_like(batch.old_logp)).requires_grad_(True)
        t = time.perf_counter()
        loss, _ = per_token_policy_loss(
            logp, batch.old_logp, batch.advantages, mask, variant=variant, lam=0.99
        )
        aggregate(loss, mask, "token-mean").backward()
        best = min(best, time.perf_counter() - t)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--micro-batch", type=int, default=4)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--verbose", action="store_true", help="print every step's time")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    torch.set_num_threads(args.threads)

    from megatron_ext.model import build_gpt_model
    from megatron_ext.parallel import destroy_model_parallel, initialize_model_parallel
    from megatron_ext.train_step import LossSettings, build_optimizer, train_step, wrap_ddp
    from pipeline.config import AlgorithmConfig
    from pipeline.data.tiny_model import tiny_hf_config

    groups = initialize_model_parallel(1, 1, seed=0)
    cfg = tiny_hf_config("qwen2", max_position_embeddings=max(512, args.seq))
    chunks = wrap_ddp(
        build_gpt_model(cfg, tp=1, pp=1, params_dtype=torch.float32, use_te=False),
        use_distributed_optimizer=False,
    )
    initial = {
        k: v.clone() for k, v in chunks[0].module.state_dict().items() if not k.endswith("_extra_state")
    }
    batch = make_batch(args.batch, args.seq, cfg.vocab_size)
    variants = {}
    for name in ("grpo", "epsilon-trace"):  # the algorithm's defaults (AlgorithmConfig), lam = 0.99
        algo = AlgorithmConfig(variant=name, lam=0.99, recompute_old_logp=True)
        shared = {f.name: getattr(algo, f.name) for f in fields(LossSettings) if hasattr(algo, f.name)}
        variants[name] = LossSettings(**shared, temperature=1.0, tis_cap=None)
    results: dict[str, list[dict]] = {name: [] for name in variants}
    for rep in range(args.reps + 1):  # rep 0 warms up
        order = list(variants.items()) if rep % 2 == 0 else list(variants.items())[::-1]  # no order bias
        for name, loss in order:
            chunks[0].module.load_state_dict(initial, strict=False)
            opt, sched = build_optimizer(
                chunks, lr=1e-5, weight_decay=0.0, betas=(0.9, 0.999), eps=1e-8, clip_grad=1.0,
                use_distributed_optimizer=False, lr_schedule="constant", warmup_iters=0, total_iters=10, min_lr=0.0,
            )  # fmt: skip
            m = train_step(chunks, opt, sched, batch, loss, micro_batch_size=args.micro_batch, groups=groups)
            if rep > 0:
                results[name].append(m)
            if args.verbose:
                print(f"rep {rep} {name}: step {1e3 * m['time_total_s']:.1f} ms")
    med = {
        name: {k: statistics.median(r[k] for r in runs) for k in (*SPLITS, "tokens_per_s")}
        for name, runs in results.items()
    }
    print(f"Tiny Qwen2 (hidden 128, 2 layers, vocab 131→256), batch {args.batch}×{args.seq}, micro-batch "
          f"{args.micro_batch}, {args.threads} thread(s), median of {args.reps}; CPU shared with other jobs.\n")  # fmt: skip
    header = (
        "| variant | recompute ms | forward ms | loss ms | backward ms | optimizer ms | step ms | tokens/s |"
    )
    print(header + "\n|" + "---|" * 8)
    for name, m in med.items():
        cells = " | ".join(f"{1e3 * m[k]:.1f}" for k in SPLITS)
        print(f"| {name} | {cells} | {m['tokens_per_s']:.0f} |")
    kernel = {name: loss_kernel_seconds(name, batch) for name in variants}
    extra = kernel["epsilon-trace"] - kernel["grpo"]
    share = extra / med["grpo"]["time_total_s"]
    print(
        "\n| policy loss alone (fwd+bwd, min of 30) | grpo ms | epsilon-trace ms | extra ms | share of grpo step |"
    )
    print("|---|---|---|---|---|")
    print(f"| [{args.batch}, {args.seq}] | {1e3 * kernel['grpo']:.2f} | {1e3 * kernel['epsilon-trace']:.2f} | "
          f"{1e3 * extra:.2f} | {100 * share:.2f}% (target ≤ 2%) |")  # fmt: skip
    destroy_model_parallel()


if __name__ == "__main__":
    main()
