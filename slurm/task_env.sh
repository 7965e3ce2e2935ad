#!/usr/bin/env bash
# Run one task of a multi-process `srun` step as a torch.distributed rank: RANK, WORLD_SIZE,
# LOCAL_RANK and the rendezvous address come from SLURM's per-task variables; then exec the command.
set -euo pipefail
export RANK="${SLURM_PROCID:?task_env.sh runs under srun}"
export WORLD_SIZE="${SLURM_NTASKS:?}"
export LOCAL_RANK="${SLURM_LOCALID:?}"
export MASTER_ADDR="${MASTER_ADDR:-$(scontrol show hostnames "${SLURM_JOB_NODELIST:?}" | head -n 1)}"
# One port per job step, stable across the tasks of the step.
export MASTER_PORT="${MASTER_PORT:-$(( 20000 + (${SLURM_JOB_ID:-0} * 7 + ${SLURM_STEP_ID:-0}) % 20000 ))}"
exec "$@"
