# Shared by the slurm/ job scripts (sourced, not executed). Everything a job needs comes from the
# environment, so the same scripts run any recipe:
#   CONFIG     experiment YAML (required)
#   RUN_DIR    run directory on a shared filesystem (required)
#   OVERRIDES  extra `section.key=value` overrides, space separated (optional)
#   PYTHON     interpreter with the project installed (default: python3 in PATH, .venv/bin/python if present)
#   REPO_DIR   checkout to run from (default: the directory above slurm/, or SLURM_SUBMIT_DIR)
set -euo pipefail

: "${CONFIG:?set CONFIG to the experiment YAML (e.g. configs/experiments/grpo_lambda_qwen2.5_7b.yaml)}"
: "${RUN_DIR:?set RUN_DIR to the run directory (on a filesystem every node sees)}"
OVERRIDES="${OVERRIDES:-}"
if [[ -z "${REPO_DIR:-}" ]]; then
  # sbatch copies the script to a spool dir: BASH_SOURCE is not the checkout then.
  REPO_DIR="${SLURM_SUBMIT_DIR:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}"
fi
cd "$REPO_DIR"
if [[ -z "${PYTHON:-}" ]]; then
  if [[ -x .venv/bin/python ]]; then PYTHON="$REPO_DIR/.venv/bin/python"; else PYTHON=python3; fi
fi
export PYTHONHASHSEED=0 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
read -r -a OVERRIDE_ARGS <<< "$OVERRIDES"

# One log line per phase, greppable: `grep GRPO-PHASE job.out`.
phase() { echo "[GRPO-PHASE $(date -u +%Y-%m-%dT%H:%M:%SZ) job=${SLURM_JOB_ID:-local}] $*"; }

# `python -m pipeline <stage>` on this run dir with the config and overrides.
pipeline() {
  local stage="$1"; shift
  "$PYTHON" -m pipeline "$stage" --config "$CONFIG" --run-dir "$RUN_DIR" "$@" "${OVERRIDE_ARGS[@]}"
}

# One field of `python -m pipeline status` (read-only, takes no lock).
status_field() { pipeline status --field "$1"; }

# Seconds left in this job (a large number outside SLURM or for an unlimited job).
seconds_left() {
  local left
  left="$(squeue -h -j "${SLURM_JOB_ID:-0}" -o %L 2>/dev/null || true)"
  if [[ -z "$left" || "$left" == "UNLIMITED" || "$left" == "INVALID" || "$left" == "NOT_SET" ]]; then
    echo 1000000000; return
  fi
  local days=0 h=0 m=0 s=0 rest="$left"
  if [[ "$rest" == *-* ]]; then days="${rest%%-*}"; rest="${rest#*-}"; fi
  IFS=: read -r -a parts <<< "$rest"
  case "${#parts[@]}" in
    3) h="${parts[0]}"; m="${parts[1]}"; s="${parts[2]}" ;;
    2) m="${parts[0]}"; s="${parts[1]}" ;;
    1) s="${parts[0]}" ;;
  esac
  echo $(( 10#$days * 86400 + 10#$h * 3600 + 10#$m * 60 + 10#$s ))
}
