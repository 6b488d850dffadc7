#!/usr/bin/env bash
# A Slurm batch job that runs a dagflow workflow on its own allocation, with nothing
# left running on the login node: the scheduler and the run's driver on the job's first
# node, one `dask worker` (WORKERS_PER_NODE processes) on every node.
#
#   sbatch --export=ALL,INPUT=/shared/photos,OUTPUT=/shared/out slurm-batch.sh
#   dagflow status /shared/out            # from anywhere on the file system (its latest run)
#
# The workers are sized from the allocation: the node's CPUs (--cpus-per-task) and
# memory (--mem) shared among WORKERS_PER_NODE processes (each advertises 80% of its
# memory limit as dagflow's MEMORY). Change the #SBATCH lines, or give the options to
# sbatch, which wins over them: sbatch --nodes=1 --cpus-per-task=2 --mem=4G ...
# `dask` and `dagflow` must be on the job's PATH: activate the environment below, or
# submit from a shell where it is active (sbatch passes the environment on).
#
# Exit code of the job (Slurm's ExitCode, `scontrol show job`, `sacct`): dagflow's (0 all
# done, 1 some items failed, 2 invalid, 3 breaker open); Slurm's state is COMPLETED for
# 0 and FAILED otherwise. Resubmitting the same job resumes: finished items are skipped.
#
# Exposed: the scheduler listens on the first node's network (the workers must reach
# it) for the job's lifetime; anyone on that network who can reach the port can run code
# as you: on a shared network add --tls-ca-file/--tls-cert/--tls-key to both commands
# (see README.md). The dashboard listens on that node's loopback only:
#   ssh -L 8787:localhost:8787 <first node of the job>
#
#SBATCH --job-name=dagflow
#SBATCH --nodes=4
#SBATCH --ntasks-per-node=1
#SBATCH --cpus-per-task=16
#SBATCH --mem=64G
#SBATCH --time=04:00:00
#SBATCH --output=dagflow-%j.log
set -euo pipefail

WORKFLOW=${WORKFLOW:-examples/thumbnails.yaml}
INPUT=${INPUT:?set INPUT to the input directory, glob or manifest}
OUTPUT=${OUTPUT:?set OUTPUT to the output directory}
WORKERS_PER_NODE=${WORKERS_PER_NODE:-4}
# source /shared/envs/dagflow/bin/activate

# Each worker process: its share of the node's CPUs and memory (MB).
CPUS=${SLURM_CPUS_PER_TASK:-${SLURM_CPUS_ON_NODE:-$WORKERS_PER_NODE}}
THREADS=$(( CPUS / WORKERS_PER_NODE > 0 ? CPUS / WORKERS_PER_NODE : 1 ))
MEMORY_MB=$(( ${SLURM_MEM_PER_NODE:-16384} / WORKERS_PER_NODE ))

export MALLOC_MMAP_THRESHOLD_=33554432 MALLOC_TRIM_THRESHOLD_=134217728
SCHEDULER_FILE="$OUTPUT/_dagflow/scheduler-${SLURM_JOB_ID}.json"
mkdir -p "$(dirname "$SCHEDULER_FILE")"
rm -f "$SCHEDULER_FILE"

# The scheduler, with dagflow's monitor (dashboard page, metrics) preloaded, on a free
# port (another job may share the node): the workers and the run find it by its file.
dask scheduler --scheduler-file "$SCHEDULER_FILE" --port 0 --preload dagflow.monitor.preload \
    --dashboard-address 127.0.0.1:8787 &
SCHEDULER_PID=$!

# One `dask worker` per node, WORKERS_PER_NODE processes.
srun --ntasks-per-node=1 dask worker --scheduler-file "$SCHEDULER_FILE" \
    --nworkers "$WORKERS_PER_NODE" --nthreads "$THREADS" --memory-limit "${MEMORY_MB}MB" \
    --local-directory "${TMPDIR:-/tmp}" &
WORKERS_PID=$!
trap 'kill "$WORKERS_PID" "$SCHEDULER_PID" 2>/dev/null || true' EXIT

# Wait for the scheduler and the workers, so that chunk sizes are chosen for all of them.
python - "$SCHEDULER_FILE" "$((SLURM_JOB_NUM_NODES * WORKERS_PER_NODE))" <<'PY'
import os, sys, time
from distributed import Client
path, n = sys.argv[1], int(sys.argv[2])
while not os.path.exists(path):
    time.sleep(0.2)
with Client(scheduler_file=path, timeout=120) as client:
    client.wait_for_workers(n, timeout=1800)
PY

# The run; its driver is this job: it ends when the run ends, with the run's exit code.
dagflow run "$WORKFLOW" --input "$INPUT" --output "$OUTPUT" --scheduler-file "$SCHEDULER_FILE"
