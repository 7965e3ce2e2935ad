"""Tiny HF checkpoints built locally: a character-level tokenizer and random-weight Qwen2 / Llama models.

Nothing is downloaded. Used by the CPU demo's bootstrap and by tests of every package (the converter,
the Megatron actor and the vLLM engine all load the same directories). vLLM's CPU attention needs
head_dim >= 32, so the defaults keep it there.
"""

from __future__ import annotations

import json
import string
from pathlib import Path

import torch

SPECIAL_TOKENS = ["<|pad|>", "<|endoftext|>", "<|im_start|>", "<|im_end|>"]
PAD_TOKEN, EOS_TOKEN = SPECIAL_TOKENS[0], SPECIAL_TOKENS[1]
# Every printable ASCII character is one token, so any math text round-trips exactly.
CHARACTERS = [c for c in string.printable if c not in "\x0b\x0c\r"]


def _byte_level_symbol(ch: str) -> str:
    """GPT-2's byte-to-unicode map for one ASCII character (space -> 'Ġ', newline -> 'Ċ')."""
    b = ord(ch)
    printable = list(range(ord("!"), ord("~") + 1))
    if b in printable:
        return ch
    # Bytes outside the printable ranges map to 256 + their rank among such bytes (GPT-2's scheme).
    rank = sum(1 for x in range(b) if x not in printable and not (161 <= x <= 172 or 174 <= x <= 255))
    return chr(256 + rank)


def build_char_tokenizer(out_dir: str | Path):
    """Write a character-level tokenizer to `out_dir` and return it.

    It is a byte-level BPE with one token per printable ASCII character and no merges: the exact
    pipeline of Qwen2's tokenizer (which `AutoTokenizer` and vLLM rebuild from `tokenizer.json` for a
    `qwen2` model), so transformers, vLLM and our code all tokenize identically.
    """
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    for ch in CHARACTERS:
        vocab[_byte_level_symbol(ch)] = len(vocab)
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[], fuse_unk=False, byte_fallback=False))
    backend.normalizer = normalizers.NFC()
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    backend.decoder = decoders.ByteLevel()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token=PAD_TOKEN,
        eos_token=EOS_TOKEN,
        unk_token=EOS_TOKEN,
        additional_special_tokens=SPECIAL_TOKENS[2:],
        clean_up_tokenization_spaces=False,
    )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok.save_pretrained(out)
    return tok


def tiny_hf_config(
    arch: str = "qwen2",
    *,
    vocab_size: int = 131,
    hidden_size: int = 128,
    intermediate_size: int = 200,
    num_layers: int = 2,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    tie_word_embeddings: bool = True,
    max_position_embeddings: int = 512,
):
    """A transformers config of a tiny Qwen2 (`arch="qwen2"`) or Llama 3.x (`arch="llama"`) model.

    Odd vocab and MLP sizes on purpose (vocab padding, no accidental divisibility); GQA by default.
    """
    from transformers import LlamaConfig, Qwen2Config

    common = dict(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        max_position_embeddings=max_position_embeddings,
        rms_norm_eps=1e-6,
        tie_word_embeddings=tie_word_embeddings,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=1,
        dtype="float32",
    )
    if arch == "qwen2":
        cfg = Qwen2Config(rope_theta=1_000_000.0, **common)
    elif arch == "llama":
        cfg = LlamaConfig(
            rope_theta=500_000.0,
            rope_scaling={
                "rope_type": "llama3",
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 64,
            },
            attention_bias=False,
            mlp_bias=False,
            **common,
        )
    else:
        raise ValueError(f"unknown tiny architecture {arch!r}; valid: ['llama', 'qwen2']")
    return cfg


def save_random_hf_model(
    out_dir: str | Path, config=None, *, seed: int = 0, max_shard_size: str | None = None
):
    """Save a random-weight causal LM (safetensors) plus the char tokenizer to `out_dir`; return the model.

    Weights are drawn with a larger std than HF's init so logits are not all near zero (parity tests
    then compare something). `max_shard_size` (e.g. "200KB") forces a sharded checkpoint with an index.
    """
    from transformers import AutoModelForCausalLM

    config = config or tiny_hf_config()
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
            else:
                p.copy_(0.05 * torch.randn_like(p))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    kwargs = {"max_shard_size": max_shard_size} if max_shard_size else {}
    model.save_pretrained(out, safe_serialization=True, **kwargs)
    build_char_tokenizer(out)
    write_generation_config(out)
    return model


def write_generation_config(out_dir: str | Path) -> Path:
    """Write the tiny models' generation_config.json (EOS = `<|endoftext|>`, pad 0, greedy default)."""
    gen = {"bos_token_id": 1, "eos_token_id": 1, "pad_token_id": 0, "do_sample": False}
    path = Path(out_dir) / "generation_config.json"
    path.write_text(json.dumps(gen, indent=2))
    return path
