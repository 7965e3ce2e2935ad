"""Bootstrap a tiny Qwen2 model that RL on CPU can improve: a short supervised warm-up on arithmetic.

A random model never produces `\\boxed{N}`, so every reward is 0 and GRPO has no signal. This trains
the tiny model (`pipeline.data.tiny_model`: char tokenizer, head_dim 32 for vLLM's CPU attention) on
arithmetic problems in the exact text the pipeline uses (`build_prompt(..., template="plain")` then
`" \\boxed{N}"` then EOS), with the loss on response tokens only, and stops as soon as its accuracy
sampled at temperature 1.0 (scored by `score_batch`, the RL reward) reaches `target_accuracy`. RL then
starts from a model that answers some problems and misses others: accuracy between 10% and 60%.

The result is cached: `out_dir/bootstrap.json` records the hash of the settings; a second call with
the same settings returns at once. The directory is written atomically (temp dir + rename).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from pipeline.data.arithmetic import arithmetic_split, make_arithmetic_problems
from pipeline.data.prompts import PLAIN_TEMPLATE, build_prompt
from pipeline.data.tiny_model import (
    build_char_tokenizer,
    tiny_hf_config,
    write_generation_config,
)

BOOTSTRAP_VERSION = 1  # bump when the training recipe changes, to invalidate caches
META_FILE = "bootstrap.json"
logger = logging.getLogger(__name__)
_SFT_SEED_BASE = 5_000_000  # warm-up problems come from their own stream, apart from RL train/eval


@dataclass(frozen=True)
class BootstrapSettings:
    """Everything that determines the bootstrapped model (its hash names the cache entry)."""

    seed: int = 0
    """Seeds the weights, the warm-up problems and the accuracy probes."""
    difficulty: int = 1
    """Arithmetic difficulty of the warm-up and of the accuracy measurement."""
    hidden_size: int = 128
    num_layers: int = 2
    num_heads: int = 4
    """head_dim = hidden_size / num_heads must stay >= 32 for vLLM's CPU attention."""
    num_kv_heads: int = 2
    intermediate_size: int = 200
    max_steps: int = 1000
    """Upper bound on optimizer steps; training normally stops earlier at `target_accuracy`."""
    batch_size: int = 32
    lr: float = 3e-3
    warmup_steps: int = 20
    target_accuracy: float = 0.3
    """Stop once the sampled accuracy on the probe set reaches this."""
    probe_every: int = 20
    """Steps between accuracy probes (a quarter of that once accuracy passes target / 2)."""
    probe_problems: int = 64
    final_problems: int = 256
    """Size of the final measurement on the arithmetic `eval` split (reported, not used to stop)."""
    temperature: float = 1.0
    num_threads: int = 1
    """Torch threads for the warm-up; 1 is the most CPU-efficient on a shared 2-core machine."""

    def config_hash(self) -> str:
        recipe = {"version": BOOTSTRAP_VERSION, "template": PLAIN_TEMPLATE, **asdict(self)}
        blob = json.dumps(recipe, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _encode_example(tok, problem: dict) -> tuple[list[int], list[int]]:
    """(input ids, labels) with labels -100 on the prompt: the loss covers ` \\boxed{N}` and EOS."""
    prompt_ids = tok(build_prompt(problem["problem"], tok, "plain"), add_special_tokens=False)["input_ids"]
    response_ids = tok(f" \\boxed{{{problem['answer']}}}", add_special_tokens=False)["input_ids"]
    response_ids = response_ids + [tok.eos_token_id]
    return prompt_ids + response_ids, [-100] * len(prompt_ids) + response_ids


def _collate(tok, problems: list[dict]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    pairs = [_encode_example(tok, p) for p in problems]
    width = max(len(ids) for ids, _ in pairs)
    ids = torch.full((len(pairs), width), tok.pad_token_id, dtype=torch.long)
    labels = torch.full((len(pairs), width), -100, dtype=torch.long)
    mask = torch.zeros((len(pairs), width), dtype=torch.long)
    for i, (x, y) in enumerate(pairs):
        ids[i, : len(x)], labels[i, : len(y)], mask[i, : len(x)] = torch.tensor(x), torch.tensor(y), 1
    return ids, labels, mask


@torch.no_grad()
def sampled_accuracy(
    model, tok, problems: list[dict], *, temperature: float, seed: int, max_new_tokens: int = 16
) -> tuple[float, list[str]]:
    """Accuracy of one sample per problem (plain prompts, pure temperature sampling), scored by the
    RL reward (`score_batch`); also returns the sampled texts."""
    from pipeline.rewards import score_batch

    tok.padding_side = "left"
    prompts = [build_prompt(p["problem"], tok, "plain") for p in problems]
    enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    was_training = model.training
    model.eval()
    with torch.random.fork_rng(devices=[]):  # leave the caller's global RNG untouched
        torch.manual_seed(seed)
        out = model.generate(
            **enc,
            do_sample=True,
            temperature=temperature,
            top_k=0,
            top_p=1.0,
            max_new_tokens=max_new_tokens,
            pad_token_id=tok.pad_token_id,
            eos_token_id=tok.eos_token_id,
        )
    model.train(was_training)
    texts = tok.batch_decode(out[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
    scores, _ = score_batch(texts, [p["answer"] for p in problems], timeout_s=5.0, num_workers=1)
    return sum(scores) / len(scores), texts


def _lr_at(step: int, s: BootstrapSettings) -> float:
    if step < s.warmup_steps:
        return s.lr * (step + 1) / s.warmup_steps
    progress = (step - s.warmup_steps) / max(1, s.max_steps - s.warmup_steps)
    return s.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def _train(model, tok, s: BootstrapSettings) -> dict:
    """Warm-up loop; returns the probe history and the step it stopped at."""
    gen = torch.Generator().manual_seed(s.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=s.lr, weight_decay=0.0, betas=(0.9, 0.98))
    probe_set = make_arithmetic_problems(
        s.probe_problems, seed=_SFT_SEED_BASE + 10_000 + s.seed, difficulty=s.difficulty
    )
    history = []
    model.train()
    for step in range(s.max_steps):
        batch = make_arithmetic_problems(
            s.batch_size, seed=_SFT_SEED_BASE + s.seed * 100_000 + step, difficulty=s.difficulty
        )
        ids, labels, mask = _collate(tok, batch)
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        for group in opt.param_groups:
            group["lr"] = _lr_at(step, s)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        # Probe 4x as often once accuracy is half-way to the target, so the stop does not overshoot.
        every = (
            s.probe_every
            if not history or history[-1]["probe_accuracy"] < s.target_accuracy / 2
            else max(1, s.probe_every // 4)
        )
        if (step + 1) % every == 0:
            seed = int(torch.randint(0, 2**31 - 1, (1,), generator=gen))
            acc, _ = sampled_accuracy(model, tok, probe_set, temperature=s.temperature, seed=seed)
            history.append({"step": step + 1, "loss": loss.item(), "probe_accuracy": acc})
            logger.info("bootstrap step %d loss %.3f probe accuracy %.3f", step + 1, loss.item(), acc)
            if acc >= s.target_accuracy:
                break
    return {"steps": step + 1, "history": history}


def _is_cached(out: Path, config_hash: str) -> bool:
    meta = out / META_FILE
    if not meta.is_file():
        return False
    try:
        return json.loads(meta.read_text())["config_hash"] == config_hash
    except (json.JSONDecodeError, KeyError):
        return False


def bootstrap_tiny_model(
    out_dir: str | Path, *, seed: int = 0, settings: BootstrapSettings | None = None
) -> Path:
    """Build (or reuse) the warmed-up tiny Qwen2 model in `out_dir`; returns `out_dir`.

    `settings` overrides the defaults (its `seed` is replaced by `seed`). The directory holds an HF
    checkpoint (config.json, model.safetensors, tokenizer.json, generation_config.json) and
    `bootstrap.json` (config_hash, settings, final accuracy, probe history, time).
    """
    s = BootstrapSettings(**{**asdict(settings or BootstrapSettings()), "seed": seed})
    if s.hidden_size // s.num_heads < 32:
        raise ValueError(
            f"bootstrap head_dim = hidden_size / num_heads = {s.hidden_size // s.num_heads} < 32; "
            "vLLM's CPU attention needs head_dim >= 32"
        )
    out = Path(out_dir)
    config_hash = s.config_hash()
    if _is_cached(out, config_hash):
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    # Concurrent callers (parallel tests, several run dirs) build one at a time; the others then reuse it.
    with open(out.parent / f".{out.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not _is_cached(out, config_hash):
            _build(out, s, config_hash)
    return out


def _build(out: Path, s: BootstrapSettings, config_hash: str) -> None:
    """Train and save the model into a temp dir next to `out`, then swap it in."""
    from transformers import AutoModelForCausalLM

    t0 = time.perf_counter()
    threads = torch.get_num_threads()
    torch.set_num_threads(s.num_threads)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    try:
        shutil.rmtree(tmp, ignore_errors=True)
        tok = build_char_tokenizer(tmp)
        config = tiny_hf_config(
            "qwen2",
            hidden_size=s.hidden_size,
            intermediate_size=s.intermediate_size,
            num_layers=s.num_layers,
            num_heads=s.num_heads,
            num_kv_heads=s.num_kv_heads,
        )
        torch.manual_seed(s.seed)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        run = _train(model, tok, s)
        final_set = arithmetic_split("eval", n=s.final_problems, difficulty=s.difficulty)
        accuracy, samples = sampled_accuracy(
            model, tok, final_set, temperature=s.temperature, seed=s.seed + 7
        )
        model.save_pretrained(tmp, safe_serialization=True)
        write_generation_config(tmp)
        meta = {
            "config_hash": config_hash,
            "settings": asdict(s),
            "version": BOOTSTRAP_VERSION,
            "accuracy": accuracy,
            "accuracy_measured_on": f"arithmetic eval split, {s.final_problems} problems, "
            f"difficulty {s.difficulty}, 1 sample each at temperature {s.temperature}",
            "example_samples": samples[:8],
            "time_s": time.perf_counter() - t0,
            **run,
        }
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2))
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    finally:
        torch.set_num_threads(threads)
        shutil.rmtree(tmp, ignore_errors=True)


def read_bootstrap_metadata(model_dir: str | Path) -> dict:
    """The `bootstrap.json` of a bootstrapped model directory."""
    meta = Path(model_dir) / META_FILE
    if not meta.is_file():
        raise FileNotFoundError(f"{meta} not found: {model_dir} is not a bootstrapped model directory")
    return json.loads(meta.read_text())
