#!/bin/bash
# Training on SLURM: one torchrun per node, a c10d rendezvous on the allocation's first node. Every start
# passes --resume auto (resume when the run has a checkpoint, else start), so the same script serves the
# first run and each requeue: on a preemption notice (USR1) or a failed step the job requeues itself, up to
# QR_DS_MAX_REQUEUES times (default 3), and continues from the latest checkpoint.
#   qr-ds train --dry-run --config CONFIG --nnodes 2 --num-procs 8      # on the login node, first
#   sbatch launch/slurm_train.sh CONFIG [key=value ...]
# The run folder (output_dir) must be on a filesystem every node sees. QR_DS_PROCS_PER_NODE sets the ranks
# a node (default: its GPUs); QR_DS_RDZV_PORT the rendezvous port (default 29500).
#SBATCH --job-name=qr-distill
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --exclusive
#SBATCH --requeue
#SBATCH --signal=B:USR1@300
#SBATCH --open-mode=append
#SBATCH --output=slurm-%x-%j.out
set -u
config=${1:?usage: sbatch launch/slurm_train.sh CONFIG [key=value ...]}
shift
nodes=($(scontrol show hostnames "$SLURM_JOB_NODELIST"))
head=${nodes[0]}
per_node=${QR_DS_PROCS_PER_NODE:-${SLURM_GPUS_ON_NODE:-${SLURM_GPUS_PER_NODE##*:}}}

requeue() {
    if [ "${SLURM_RESTART_COUNT:-0}" -ge "${QR_DS_MAX_REQUEUES:-3}" ]; then
        echo "[qr_ds] not requeued: restarted ${SLURM_RESTART_COUNT:-0} times already (QR_DS_MAX_REQUEUES)" >&2
        return
    fi
    echo "[qr_ds] requeueing job $SLURM_JOB_ID: the next start resumes from the latest checkpoint" >&2
    scontrol requeue "$SLURM_JOB_ID"
}
trap 'requeued=1; requeue; kill -TERM "$step" 2>/dev/null' USR1
requeued=0

# \$SLURM_NODEID is escaped so that each node's task reads its own; with c10d torchrun numbers the nodes itself.
srun --kill-on-bad-exit=1 bash -c "exec python -m torch.distributed.run \
    --nnodes $SLURM_NNODES --node_rank \$SLURM_NODEID --nproc_per_node $per_node \
    --rdzv_backend c10d --rdzv_endpoint $head:${QR_DS_RDZV_PORT:-29500} --rdzv_id $SLURM_JOB_ID \
    launch/train.py --config $config --resume auto $*" &
step=$!
wait "$step"
status=$?
while kill -0 "$step" 2>/dev/null; do wait "$step"; status=$?; done  # a trap cut the first wait short
if [ "$status" -ne 0 ] && [ "$requeued" -eq 0 ]; then
    requeue
fi
exit "$status"
