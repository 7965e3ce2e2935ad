"""torchrun worker for tests/integration/test_conversion_parallel.py (one TP x PP world).

    torchrun --nproc-per-node=TP*PP tests/integration/conversion_worker.py \
        --hf-dir H --ckpt C --tp T --pp P --out RESULT_DIR [--save-ckpt S]

Builds the model with megatron_ext at TP/PP, loads the converter's checkpoint C, then writes to
RESULT_DIR/rank<k>.json:
- export_ok / export_mismatch: `export_hf_weights` vs the HF safetensors of H (bit equality, every rank);
- with PP=1, `logits.pt` from rank 0: the full-vocab logits (TP-gathered) on fixed token ids.
With --save-ckpt, also saves the loaded model as a trainer checkpoint at this TP/PP (model only) to S,
which the test then converts back with megatron_to_hf (reading a checkpoint written by Megatron itself).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import torch
import torch.distributed as dist


def load_model(hf_dir: Path, ckpt: Path, tp: int, pp: int):
    from megatron_ext.checkpoint import load_checkpoint
    from megatron_ext.model import build_gpt_model
    from megatron_ext.parallel import initialize_model_parallel

    groups = initialize_model_parallel(tp, pp, seed=1234)
    cfg = json.loads((hf_dir / "config.json").read_text())
    chunks = build_gpt_model(cfg, tp=tp, pp=pp, params_dtype=torch.float32)
    with torch.no_grad():  # garbage in every parameter: a parameter the load misses shows up
        for p in chunks[0].parameters():
            p.fill_(float("nan"))
    load_checkpoint(ckpt, chunks)
    return cfg, chunks, groups


def check_export(hf_dir: Path, cfg: dict, chunks, groups) -> dict:
    from conversion.export import export_hf_weights
    from conversion.safetensors_io import SafetensorsReader

    ref = SafetensorsReader(hf_dir)
    seen, bad = [], []
    for name, tensor in export_hf_weights(chunks, cfg, bucket_size_mb=1, groups=groups):
        seen.append(name)
        want = ref.get(name)
        if want.shape != tensor.shape or want.dtype != tensor.dtype or not torch.equal(want, tensor.cpu()):
            bad.append(name)
    expected = set(ref.names()) - ({"lm_head.weight"} if cfg["tie_word_embeddings"] else set())
    return {
        "export_names_match": sorted(seen) == sorted(expected) and len(seen) == len(set(seen)),
        "export_mismatch": bad,
        "n_exported": len(seen),
    }


def full_logits(chunks, groups, token_ids: torch.Tensor) -> torch.Tensor:
    """Forward on PP=1; gather the vocab-parallel logits over TP -> [B, T, V_padded]."""
    model = chunks[0]
    model.eval()
    pos = torch.arange(token_ids.shape[1]).unsqueeze(0).expand_as(token_ids)
    with torch.no_grad():
        out = model(input_ids=token_ids, position_ids=pos, attention_mask=None)
    logits = out.transpose(0, 1) if out.shape[0] != token_ids.shape[0] else out
    if groups.tp_size > 1:
        parts = [torch.empty_like(logits) for _ in range(groups.tp_size)]
        dist.all_gather(parts, logits.contiguous(), group=groups.tp)
        logits = torch.cat(parts, dim=-1)
    return logits


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--hf-dir", type=Path, required=True)
    ap.add_argument("--ckpt", type=Path, required=True)
    ap.add_argument("--tp", type=int, required=True)
    ap.add_argument("--pp", type=int, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--save-ckpt", type=Path)
    args = ap.parse_args()
    torch.set_num_threads(1)
    cfg, chunks, groups = load_model(args.hf_dir, args.ckpt, args.tp, args.pp)
    result = check_export(args.hf_dir, cfg, chunks, groups)
    if args.pp == 1:
        g = torch.Generator().manual_seed(0)
        ids = torch.randint(0, cfg["vocab_size"], (2, 11), generator=g)
        logits = full_logits(chunks, groups, ids)
        if dist.get_rank() == 0:
            torch.save({"ids": ids, "logits": logits}, args.out / "logits.pt")
    if args.save_ckpt is not None:
        from megatron_ext.checkpoint import save_checkpoint

        save_checkpoint(args.save_ckpt, chunks, None, None, iteration=7, extra={})
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"rank{dist.get_rank()}.json").write_text(json.dumps(result))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
