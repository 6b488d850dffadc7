#!/bin/sh
# Start a one-node Slurm on this machine, for the `slurm`-marked tests (tests/test_slurm.py)
# and for trying dagflow's Slurm profile by hand: munged, slurmctld and slurmd on
# 127.0.0.1, one partition `debug` sized to the machine (`slurmd -C`), no cgroups
# (ProctrackType=proctrack/linuxproc, TaskPlugin=task/none), no accounting database.
# Finished jobs stay visible to `scontrol show job` for 5 minutes (MinJobAge), and are
# written with their state and exit code to /var/log/dagflow-slurm/jobcomp.log
# (JobCompType=jobcomp/filetxt). Accounts are checked when a job is submitted, by
# /etc/slurm/job_submit.lua (only `dagflow` is known), as a site's database would.
#
# As root with apt-get (CI, a developer's machine) it installs Debian's slurmctld,
# slurmd, slurm-client and munge when they are missing (about 10 s). Idempotent: a Slurm
# this script started, with the same configuration, that answers, is left as it is.
# Where it cannot start one it says why, writes the reason where the tests read it
# ($REASON), and exits 0: the slurm tests then skip with that reason.
# scripts/slurm-down.sh stops it.
#
# It writes /etc/slurm/slurm.conf (marked as its own) only where no other configuration
# is: a machine with a real Slurm is left alone.
set -u

REASON="${TMPDIR:-/tmp}/dagflow-slurm-unavailable"
STATE=/var/lib/dagflow-slurm
LOGS=/var/log/dagflow-slurm
RUN=/run/dagflow-slurm
CONF=/etc/slurm/slurm.conf
LUA=/etc/slurm/job_submit.lua
MARK="# one-node Slurm written by dagflow's scripts/slurm-up.sh"

unavailable() {
    echo "slurm-up: $*; the slurm tests will be skipped" >&2
    echo "$*" > "$REASON" 2>/dev/null
    exit 0
}

answers() {  # the controller answers and the node takes jobs
    state=$(timeout 5 sinfo -h -o %T 2>/dev/null | head -n 1)
    case "$state" in idle*|mix*|alloc*) return 0 ;; *) return 1 ;; esac
}

[ "$(id -u)" = "0" ] || unavailable "not root (starting slurmctld and slurmd needs root)"
if [ -f "$CONF" ] && ! grep -qF "$MARK" "$CONF"; then
    unavailable "$CONF was not written by scripts/slurm-up.sh (a real Slurm?): left alone"
fi

exec 9>"${TMPDIR:-/tmp}/dagflow-slurm.lock"
flock -w 120 9 2>/dev/null || true  # one start at a time (daemons get no copy: 9>&-)

missing=""
for cmd in munged slurmctld slurmd sbatch; do
    command -v "$cmd" >/dev/null 2>&1 || missing="$missing $cmd"
done
if [ -n "$missing" ]; then
    command -v apt-get >/dev/null 2>&1 || unavailable "no apt-get to install$missing"
    echo "slurm-up: installing Debian's slurmctld, slurmd, slurm-client and munge" >&2
    packages="slurmctld slurmd slurm-client munge"
    export DEBIAN_FRONTEND=noninteractive
    # shellcheck disable=SC2086
    apt-get install -y -qq --no-install-recommends $packages >/dev/null 2>&1 \
        || { apt-get update -qq >/dev/null 2>&1 \
             && apt-get install -y -qq --no-install-recommends $packages >/dev/null; } \
        || unavailable "apt-get could not install $packages"
fi

# munge: the key the package made; the daemon runs as its own user.
mkdir -p /run/munge /var/log/munge /var/lib/munge
chown munge:munge /run/munge /var/log/munge /var/lib/munge
if [ ! -s /etc/munge/munge.key ]; then
    mungekey --create --force 2>/dev/null \
        || dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 2>/dev/null
    chown munge:munge /etc/munge/munge.key
    chmod 0400 /etc/munge/munge.key
fi
if ! munge -n </dev/null >/dev/null 2>&1; then
    runuser -u munge -- munged 9>&- || unavailable "munged did not start"
fi

# The node as slurmd sees it (CPUs, sockets, memory), less 512 MB for the system.
node=$(slurmd -C 2>/dev/null | head -n 1)
[ -n "$node" ] || unavailable "slurmd -C could not describe this machine"
name=$(echo "$node" | sed 's/^NodeName=\([^ ]*\).*/\1/')
cpus=$(echo "$node" | sed 's/.*CPUs=\([0-9]*\).*/\1/')
memory=$(echo "$node" | sed 's/.*RealMemory=\([0-9]*\).*/\1/')
memory=$((memory > 1024 ? memory - 512 : memory))
node=$(echo "$node" | sed "s/RealMemory=[0-9]*/RealMemory=$memory/")

mkdir -p "$STATE/ctld" "$STATE/d" "$LOGS" "$RUN" /etc/slurm
cat > "$CONF.new" <<EOF
$MARK
ClusterName=dagflow
SlurmctldHost=$name(127.0.0.1)
SlurmUser=root
AuthType=auth/munge
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/d
SlurmctldPidFile=$RUN/slurmctld.pid
SlurmdPidFile=$RUN/slurmd.pid
SlurmctldLogFile=$LOGS/slurmctld.log
SlurmdLogFile=$LOGS/slurmd.log
# no cgroups: processes tracked through /proc, no binding of tasks to CPUs
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
# CPUs and memory are what jobs ask for; a job that names no memory gets its CPUs' share
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU_Memory
SchedulerType=sched/backfill
# no accounting database: finished jobs, their state and exit code, go to a text file
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/filetxt
JobCompLoc=$LOGS/jobcomp.log
MinJobAge=300
# accounts are checked when a job is submitted ($LUA)
JobSubmitPlugins=lua
# a cancelled or timed-out job gets SIGTERM, then SIGKILL 5 s later
KillWait=5
ReturnToService=2
InactiveLimit=0
Waittime=0
$node State=UNKNOWN NodeAddr=127.0.0.1
PartitionName=debug Nodes=$name Default=YES MaxTime=INFINITE State=UP DefMemPerCPU=$((memory / cpus))
EOF
cat > "$LUA.new" <<'EOF'
-- one-node Slurm written by dagflow's scripts/slurm-up.sh: the accounts a job may name
-- (a site checks them in its accounting database; this Slurm has none)
local accounts = { dagflow = true }

function slurm_job_submit(job_desc, part_list, submit_uid)
    if job_desc.account ~= nil and not accounts[job_desc.account] then
        slurm.log_user("invalid account: %s", job_desc.account)
        return slurm.ESLURM_INVALID_ACCOUNT
    end
    return slurm.SUCCESS
end

function slurm_job_modify(job_desc, job_rec, part_list, modify_uid)
    return slurm.SUCCESS
end
EOF
if cmp -s "$CONF.new" "$CONF" && cmp -s "$LUA.new" "$LUA" && answers; then
    rm -f "$CONF.new" "$LUA.new" "$REASON"
    exit 0
fi
mv "$LUA.new" "$LUA"
mv "$CONF.new" "$CONF"

stop() {  # the daemon this script started before, by its pid file
    if [ -s "$RUN/$1.pid" ]; then
        pid=$(cat "$RUN/$1.pid")
        kill "$pid" 2>/dev/null
        i=0
        while kill -0 "$pid" 2>/dev/null && [ $i -lt 50 ]; do i=$((i + 1)); sleep 0.1; done
    fi
    rm -f "$RUN/$1.pid"
}
stop slurmd
stop slurmctld
slurmctld 9>&- || unavailable "slurmctld did not start (see $LOGS/slurmctld.log)"
slurmd -N "$name" 9>&- || unavailable "slurmd did not start (see $LOGS/slurmd.log)"

i=0
until answers; do
    i=$((i + 1))
    [ $i -le 60 ] || unavailable "the node did not become idle within 30 s (see $LOGS/)"
    [ $i -eq 10 ] && scontrol update nodename="$name" state=resume >/dev/null 2>&1
    sleep 0.5
done
rm -f "$REASON"
echo "slurm-up: one-node Slurm running: $(sinfo -h -o '%P %c CPUs %m MB' | head -n 1)" >&2
