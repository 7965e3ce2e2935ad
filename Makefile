# The few targets a newcomer needs. Every target sets up .venv first (idempotent).
PY := .venv/bin/python
export PYTHONHASHSEED := 0
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: setup test test-slurm test-slow test-all lint format main nightly bench clean

setup:
	bash scripts/setup_cpu.sh

lint: setup
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .

format: setup
	.venv/bin/ruff format .
	.venv/bin/ruff check --fix .

# The README's test command (and CI's): lint, the default suite (< 20 min on 2 cores), then the SLURM
# chain on a local one-node cluster (skips with a message where the daemons cannot start).
test: lint
	$(PY) -m pytest -q -m "not slow and not gpu"
	$(MAKE) --no-print-directory test-slurm

test-slurm: setup
	$(PY) -m pytest -q -m slurm tests/integration/test_slurm.py

# Slower tests (long CPU runs, the full nightly, SLURM chains); see README.
test-slow: setup
	$(PY) -m pytest -q -m "slow and not gpu"

test-all: setup
	$(PY) -m pytest -q

# The README's main job: the tiny CPU run of the real pipeline, end to end.
main: setup
	$(PY) -m pipeline run --config configs/experiments/tiny_cpu.yaml --run-dir runs/tiny_cpu

# The CPU nightly: GRPO against GRPO-λ on paired seeds, report + plots in runs/nightly/tiny_cpu (~21 min).
nightly: setup
	$(PY) -m pipeline compare --config configs/nightly/tiny_cpu.yaml --out runs/nightly/tiny_cpu

bench: setup
	$(PY) benchmarks/loss_bench.py
	$(PY) benchmarks/train_step_bench.py
	$(PY) benchmarks/conversion_bench.py
	$(PY) benchmarks/rollout_bench.py
	$(PY) benchmarks/reward_bench.py

clean:
	rm -rf runs .pytest_cache .ruff_cache
