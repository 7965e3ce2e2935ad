"""Logits parity between an HF directory (transformers, fp32) and a Megatron checkpoint (megatron_ext, fp32).

Runs in the calling process on one rank (TP=PP=1): it initialises torch.distributed (a world of one)
and Megatron's parallel state, so call it from a fresh process (the CLI does).
"""

from __future__ import annotations

from pathlib import Path

import torch

DEFAULT_PROMPTS = (
    "What is 12 + 30? Answer: 42",
    "Solve for x: 3x - 7 = 11.",
    "The quick brown fox jumps over the lazy dog.",
)


class LogitsMismatchError(RuntimeError):
    """Megatron and transformers logits differ by more than the tolerance."""

    def __init__(self, max_abs_diff: float, tol: float):
        super().__init__(f"max abs logits diff {max_abs_diff:.3e} exceeds tolerance {tol:.1e}")
        self.max_abs_diff = max_abs_diff


def _megatron_logits(megatron_dir: Path, cfg: dict, token_ids: list[torch.Tensor]) -> list[torch.Tensor]:
    from megatron_ext.checkpoint import load_checkpoint
    from megatron_ext.model import build_gpt_model
    from megatron_ext.parallel import destroy_model_parallel, initialize_model_parallel

    initialize_model_parallel(1, 1, seed=0)
    try:
        (model,) = build_gpt_model(cfg, tp=1, pp=1, params_dtype=torch.float32, use_te=False)
        load_checkpoint(megatron_dir, [model])
        model.eval()
        out = []
        with torch.no_grad():
            for ids in token_ids:
                pos = torch.arange(ids.shape[1]).unsqueeze(0)
                logits = model(input_ids=ids, position_ids=pos, attention_mask=None)
                out.append(logits.float().reshape(ids.shape[1], -1)[:, : cfg["vocab_size"]])
        return out
    finally:
        destroy_model_parallel()


def verify_logits(
    hf_dir: str | Path, megatron_dir: str | Path, *, prompts: list[str] | None = None, tol: float = 1e-4
) -> float:
    """Max |logits_megatron - logits_transformers| over the prompts (fp32, vocab without padding).

    Raises LogitsMismatchError (carrying the difference) when it exceeds `tol`.
    """
    import json

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from conversion.convert import open_megatron_checkpoint
    from megatron_ext.model import padded_vocab_size

    hf_dir, megatron_dir = Path(hf_dir), Path(megatron_dir)
    cfg = json.loads((hf_dir / "config.json").read_text())
    stored = open_megatron_checkpoint(megatron_dir).tensor_meta("embedding.word_embeddings.weight").size[0]
    if stored != padded_vocab_size(cfg["vocab_size"], 1):
        raise ValueError(
            f"verify runs at TP=1 but {megatron_dir} pads the vocab to {stored} (a larger TP's padding); "
            "convert the HF model with --tp 1 to verify it"
        )
    tok = AutoTokenizer.from_pretrained(hf_dir)
    token_ids = [torch.tensor([tok(p)["input_ids"]]) for p in (prompts or DEFAULT_PROMPTS)]
    hf_model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        ref = [hf_model(input_ids=ids).logits[0].float() for ids in token_ids]
    del hf_model
    got = _megatron_logits(megatron_dir, cfg, token_ids)
    diff = max(float((a - b).abs().max()) for a, b in zip(got, ref))
    if diff > tol:
        raise LogitsMismatchError(diff, tol)
    return diff
