#!/usr/bin/env bash
# One GRPO-λ update of a Qwen2.5-1.5B-shaped actor (random weights, bf16) at sequence length 4096 on
# one GPU: prints tokens/s and MFU. Prepared for a lent H100/H200 (15 minutes of device time in all);
# the device image has torch 2.11 (cu130), numpy, packaging and transformers, but no megatron-core and
# no Transformer Engine, so megatron-core travels as a wheel and the local layer spec is used
# (unfused attention with selective recompute; a TE/flash-attention build will be faster).
#
# Here, once (in the repo root):
#   bash benchmarks/gpu_step.sh prepare      # downloads the megatron-core 0.16.1 cp312 wheel to .whl/
# Then on the device (device tool `run`, carry [".whl"], timeout_s ~420):
#   bash benchmarks/gpu_step.sh
# Environment knobs: GPU_STEP_BATCH (sequences per step, default 8), GPU_STEP_SEQ (4096),
# GPU_STEP_MBS (micro-batch, 1), GPU_STEP_VARIANT (epsilon-trace | grpo), GPU_STEP_REPS (3).
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ "${1:-}" == "prepare" ]]; then
    grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
    python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 \
        -d .whl megatron-core==0.16.1
    exit 0
fi

python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH="/tmp/site:${PWD}" PYTHONUNBUFFERED=1 PYTHONWARNINGS=ignore
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true

python3 - <<'EOF'
import os, time, warnings
warnings.filterwarnings("ignore")
import torch
from megatron_ext.model import build_gpt_model
from megatron_ext.parallel import initialize_model_parallel
from megatron_ext.train_step import LossSettings, RolloutBatch, build_optimizer, train_step, wrap_ddp

B, S = int(os.environ.get("GPU_STEP_BATCH", 8)), int(os.environ.get("GPU_STEP_SEQ", 4096))
MBS, REPS = int(os.environ.get("GPU_STEP_MBS", 1)), int(os.environ.get("GPU_STEP_REPS", 3))
VARIANT = os.environ.get("GPU_STEP_VARIANT", "epsilon-trace")
QWEN25_15B = {  # config.json of Qwen/Qwen2.5-1.5B-Instruct (shape only; weights are random)
    "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "vocab_size": 151936, "hidden_size": 1536,
    "intermediate_size": 8960, "num_hidden_layers": 28, "num_attention_heads": 12, "num_key_value_heads": 2,
    "max_position_embeddings": 32768, "rms_norm_eps": 1e-6, "rope_theta": 1000000.0, "rope_scaling": None,
    "tie_word_embeddings": True, "hidden_act": "silu", "initializer_range": 0.02,
}
groups = initialize_model_parallel(1, 1, seed=0)
chunks = build_gpt_model(QWEN25_15B, tp=1, pp=1, params_dtype=torch.bfloat16, use_te=False,
                         recompute_granularity="selective")
chunks = wrap_ddp(chunks, use_distributed_optimizer=True)
opt, sched = build_optimizer(chunks, lr=1e-6, weight_decay=0.0, betas=(0.9, 0.999), eps=1e-8, clip_grad=1.0,
                             use_distributed_optimizer=True, lr_schedule="constant", warmup_iters=0,
                             total_iters=100, min_lr=0.0)
n_params = sum(p.numel() for p in chunks[0].parameters())
g = torch.Generator().manual_seed(0)
ids = torch.randint(0, 151936, (B, S), generator=g)
mask = torch.zeros(B, S); mask[:, 512:] = 1  # 512 prompt tokens, 3584 response tokens
batch = RolloutBatch(input_ids=ids, response_mask=mask, old_logp=-torch.rand(B, S, generator=g) * mask,
                     advantages=torch.randn(B, generator=g))
loss = LossSettings(variant=VARIANT, style="recent", lam=0.99, recompute_old_logp=True)
runs = []
for rep in range(REPS + 1):
    m = train_step(chunks, opt, sched, batch, loss, micro_batch_size=MBS, groups=groups)
    if rep:
        runs.append(m)
    print(f"rep {rep}: step {m['time_total_s']:.2f} s, loss {m['loss']:.4f}, grad_norm {m['grad_norm']:.3f}")
step = sorted(r["time_total_s"] for r in runs)[len(runs) // 2]
tokens = B * S
L, h = QWEN25_15B["num_hidden_layers"], QWEN25_15B["hidden_size"]
n_body = n_params - QWEN25_15B["vocab_size"] * h  # tied: count the output GEMM once, as 2·V·h per token
per_token_fwd = 2 * (n_body + QWEN25_15B["vocab_size"] * h) + 2 * L * S * h  # causal attention ≈ half of 4·L·s·h
flops = tokens * per_token_fwd * (3 + 1)  # forward+backward (3×) + the old-logp recompute forward (1×)
name = torch.cuda.get_device_name()
peak = 989e12  # dense bf16 of H100 SXM / H200
split = {k: sorted(r[k] for r in runs)[len(runs) // 2] for k in runs[0] if k.startswith("time_")}
print(f"\n{name}; Qwen2.5-1.5B shape ({n_params / 1e9:.2f}B params), bf16, local spec + selective recompute, "
      f"{VARIANT}, batch {B}×{S}, micro-batch {MBS}, median of {REPS}")
print("| step s | tokens/s | model TFLOP/s | MFU | peak mem GiB |\n|---|---|---|---|---|")
print(f"| {step:.2f} | {tokens / step:,.0f} | {flops / step / 1e12:.0f} | {100 * flops / step / peak:.1f}% | "
      f"{torch.cuda.max_memory_allocated() / 2**30:.1f} |")
print("\n| " + " | ".join(k[5:-2] for k in split) + " |\n|" + "---|" * len(split))
print("| " + " | ".join(f"{v:.3f}" for v in split.values()) + " |")
EOF
