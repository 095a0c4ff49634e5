#!/bin/bash
# Multi-node training under SLURM: one task per GPU, Lightning reads the ranks from SLURM's variables
# (SLURMEnvironment), so `srun` starts every process and Lightning starts none. Submit with
#   sbatch scripts/slurm_train.sh RUN_DIR recipe=whisper_librispeech model.pretrained=models/whisper-small [key=value]
# RUN_DIR is the run's own folder on a shared file system (checkpoints, logs, hpc_ckpt_N.ckpt). Preemption and the
# time limit: 120 s before the end SLURM sends SIGUSR1 (--signal), Lightning saves RUN_DIR/hpc_ckpt_N.ckpt and
# requeues the job (--requeue); the requeued job runs this same script and `ckpt_path=last` resumes from the newest
# checkpoint of RUN_DIR, whichever wrote it (hpc_ckpt_N.ckpt, checkpoints/last.ckpt, checkpoints/on_exception.ckpt).
# Submitting the same line again after a crash or a cancel resumes the same way.
#SBATCH --job-name=speechtrain
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=8
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=8
#SBATCH --time=24:00:00
#SBATCH --signal=USR1@120
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --output=slurm-%x-%j.out
set -euo pipefail

if [[ $# -lt 1 || "$1" == *=* ]]; then
    echo "usage: sbatch scripts/slurm_train.sh RUN_DIR recipe=NAME [key=value ...]" >&2
    exit 2
fi
RUN_DIR=$1
shift
mkdir -p "${RUN_DIR}"
echo "$(date -u +%FT%TZ) job ${SLURM_JOB_ID} (restart ${SLURM_RESTART_COUNT:-0}) on ${SLURM_JOB_NODELIST} -> ${RUN_DIR}"

# --kill-on-bad-exit: one rank that dies ends the others instead of leaving them blocked in a collective.
srun --kill-on-bad-exit=1 python train.py trainer=ddp trainer.num_nodes="${SLURM_NNODES}" \
    trainer.devices="${SLURM_NTASKS_PER_NODE}" ckpt_path=last hydra.run.dir="${RUN_DIR}" "$@"
