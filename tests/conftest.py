"""Settings every test shares. Package-specific fixtures live in the conftest.py of each test folder."""

import os

# No hub access here or in CI: everything a test needs is built locally or shipped in tests/fixtures.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# vLLM on CPU: in-process engine (needed for in-memory refit) and a small KV cache.
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
