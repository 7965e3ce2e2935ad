#!/usr/bin/env bash
# Submit a whole run as dependent SLURM jobs:
#   convert (prepare: data, model, HF->Megatron)  --afterok-->  train (slurm/grpo_lambda_7b.sbatch, which
#   continues itself as chained jobs with --dependency=singleton)  --afterok-->  export (Megatron->HF)
#   --afterok-->  evaluate + report.
# Submitting again on the same RUN_DIR resumes: every stage starts from manifest.json.
#
#   CONFIG=configs/experiments/grpo_lambda_qwen2.5_7b.yaml RUN_DIR=/shared/runs/q7b slurm/submit_chain.sh
#
# Environment: CONFIG, RUN_DIR (required), OVERRIDES, PYTHON, JOB_NAME (default: the config's name),
# SBATCH_EXTRA_ARGS (options for every job, e.g. "--partition=h100 --account=rl"), TRAIN_SBATCH_ARGS
# (options for the train jobs only; on a CPU-only cluster e.g. "--gpus-per-node=0 --ntasks-per-node=1
# --cpus-per-task=2 --mem=8G"), ITERATION_RESERVE_S, MAX_ITERATIONS_PER_JOB. Prints the job ids.
set -euo pipefail
: "${CONFIG:?set CONFIG to the experiment YAML}"
: "${RUN_DIR:?set RUN_DIR to the run directory}"
REPO_DIR="${REPO_DIR:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}"
export CONFIG RUN_DIR REPO_DIR
mkdir -p "$RUN_DIR/slurm"
if [[ -z "${PYTHON:-}" ]]; then
  if [[ -x "$REPO_DIR/.venv/bin/python" ]]; then PYTHON="$REPO_DIR/.venv/bin/python"; else PYTHON=python3; fi
fi
export PYTHON
read -r -a OVERRIDE_ARGS <<< "${OVERRIDES:-}"
NAME="${JOB_NAME:-$(cd "$REPO_DIR" && "$PYTHON" -m pipeline status --config "$CONFIG" --run-dir "$RUN_DIR" \
  "${OVERRIDE_ARGS[@]}" --field name)}"
LOG="$RUN_DIR/slurm/%x-%j.out"
read -r -a COMMON <<< "${SBATCH_EXTRA_ARGS:-}"
read -r -a TRAIN_ARGS <<< "${TRAIN_SBATCH_ARGS:-}"

submit() { sbatch --parsable --chdir="$REPO_DIR" --output="$LOG" "$@" | cut -d';' -f1; }

convert=$(STAGES=prepare submit "${COMMON[@]}" --job-name="$NAME-convert" "$REPO_DIR/slurm/stage.sbatch")
echo "[submit_chain] convert job $convert"
# The export job is submitted held back on the first train job; each continuation re-points it.
train=$(SBATCH_EXTRA_ARGS="${SBATCH_EXTRA_ARGS:-} ${TRAIN_SBATCH_ARGS:-} --chdir=$REPO_DIR --output=$LOG" \
  submit "${COMMON[@]}" "${TRAIN_ARGS[@]}" --job-name="$NAME-train" \
  --dependency="afterok:$convert" --hold "$REPO_DIR/slurm/grpo_lambda_7b.sbatch")
echo "[submit_chain] train job $train"
export_job=$(STAGES=export submit "${COMMON[@]}" --job-name="$NAME-export" --dependency="afterok:$train" \
  "$REPO_DIR/slurm/stage.sbatch")
echo "[submit_chain] export job $export_job"
evaluate=$(STAGES="evaluate report" submit "${COMMON[@]}" --job-name="$NAME-evaluate" \
  --dependency="afterok:$export_job" "$REPO_DIR/slurm/stage.sbatch")
echo "[submit_chain] evaluate job $evaluate"
# The train job learns its downstream job only now (its continuations re-point it); release it.
scontrol update JobId="$train" Comment="downstream=$export_job"
scontrol release "$train"
echo "$convert $train $export_job $evaluate"
