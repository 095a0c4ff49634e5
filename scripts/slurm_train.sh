#!/bin/bash
# Multi-node training under SLURM: one task per GPU, Lightning reads the ranks from SLURM's variables
# (SLURMEnvironment), so `srun` starts every process and Lightning starts none. Submit with
#   sbatch scripts/slurm_train.sh recipe=whisper_librispeech model.pretrained=models/whisper-small
# and resubmit the same line to resume from checkpoints/last.ckpt (ckpt_path=last below).
#SBATCH --job-name=speechtrain
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=8
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=8
#SBATCH --time=24:00:00
#SBATCH --signal=SIGUSR1@120
#SBATCH --output=slurm-%j.out
set -euo pipefail

RUN_DIR=${RUN_DIR:-outputs/slurm/${SLURM_JOB_NAME}}
srun python train.py trainer=ddp trainer.num_nodes="${SLURM_NNODES}" trainer.devices="${SLURM_NTASKS_PER_NODE}" \
    ckpt_path=last hydra.run.dir="${RUN_DIR}" "$@"
