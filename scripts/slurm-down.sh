#!/bin/sh
# Stop the one-node Slurm that scripts/slurm-up.sh started: its jobs are cancelled, then
# slurmd and slurmctld stopped by their pid files. munged is left running (other
# programs may use it). Its configuration stays in /etc/slurm for the next start;
# nothing else is touched. Idempotent.
set -u

RUN=/run/dagflow-slurm
MARK="# one-node Slurm written by dagflow's scripts/slurm-up.sh"

grep -qF "$MARK" /etc/slurm/slurm.conf 2>/dev/null || exit 0
timeout 10 scancel --full --user="$(id -un)" >/dev/null 2>&1
for daemon in slurmd slurmctld; do
    if [ -s "$RUN/$daemon.pid" ]; then
        pid=$(cat "$RUN/$daemon.pid")
        kill "$pid" 2>/dev/null
        i=0
        while kill -0 "$pid" 2>/dev/null && [ $i -lt 100 ]; do i=$((i + 1)); sleep 0.1; done
    fi
    rm -f "$RUN/$daemon.pid"
done
echo "slurm-down: stopped" >&2
