#!/usr/bin/env bash
# A single-node Slurm (Debian's slurm-wlm 22.05) for bench/launch.py and bench/start_rate.py:
# slurmctld + slurmd on this machine, the node declaring 2 GPUs as GRES with no devices behind
# them, as dlapp's embedded cluster declares them with --gpus 2.
#
#   bench/peers/slurm.sh          # install if missing, configure, start, wait until idle
#   SLURM_GPUS=16 SLURM_CPUS=20 bench/peers/slurm.sh   # a bigger node (bench/start_rate.py)
#   bench/peers/slurm.sh stop     # stop the daemons this script started (by their pid files)
#
# Needs root (apt-get, munge key, slurmd). Idempotent: a second run finds the packages, keeps
# the munge key, rewrites the same configuration and restarts nothing that is already up; a
# run that changes the node (its CPUs, GPUs or memory) restarts slurmctld and slurmd, which
# read a node's shape only when they start.
# Knobs (environment): SLURM_CPUS (default: nproc; more than the machine has is declared with
# SlurmdParameters=config_overrides), SLURM_GPUS (2), SLURM_MEMORY_MB (4096), SLURM_STATE
# (/var/lib/dlapp-bench-slurm: logs, spool, pid files).
set -euo pipefail

CPUS="${SLURM_CPUS:-$(nproc)}"
GPUS="${SLURM_GPUS:-2}"
MEMORY_MB="${SLURM_MEMORY_MB:-4096}"
STATE="${SLURM_STATE:-/var/lib/dlapp-bench-slurm}"
CONF_DIR=/etc/slurm
NODE="$(hostname -s)"

die() { echo "slurm.sh: $*" >&2; exit 1; }

stop() {
    for name in slurmd slurmctld; do
        pidfile="$STATE/$name.pid"
        if [[ -f "$pidfile" ]] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
            pid="$(cat "$pidfile")"
            kill "$pid"
            for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
            kill -0 "$pid" 2>/dev/null && die "$name (pid $pid) did not stop"
            echo "stopped $name"
        fi
        rm -f "$pidfile"
    done
    # munged is left running: other software on the machine may rely on it
}

if [[ "${1:-}" == "stop" ]]; then
    stop
    exit 0
fi
[[ $EUID -eq 0 ]] || die "run as root (it installs packages and starts slurmd)"

# 1. packages
if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null \
    || ! command -v sbatch >/dev/null || ! command -v munged >/dev/null; then
    echo "installing slurm-wlm and munge (apt)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        slurm-wlm munge >/dev/null
fi

# 2. munge: a key (kept across runs) and the daemon
if [[ ! -s /etc/munge/munge.key ]]; then
    mkdir -p /etc/munge
    dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key status=none
fi
chown munge:munge /etc/munge/munge.key
chmod 0400 /etc/munge/munge.key
mkdir -p /run/munge /var/log/munge /var/lib/munge
chown munge:munge /run/munge /var/log/munge /var/lib/munge
if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
    rm -f /run/munge/munge.socket.2 /run/munge/munged.pid
    runuser -u munge -- /usr/sbin/munged
    for _ in $(seq 50); do munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && break; sleep 0.1; done
    munge -n | unmunge >/dev/null || die "munged does not answer"
fi

# 3. configuration: one node, GPUs as GRES. slurmd drops a GPU without a File= ("Removing
# file-less GPU"), and then slurmctld sets the node INVAL ("gres/gpu count reported lower than
# configured"), so each declared GPU gets a placeholder file standing in for /dev/nvidiaN:
# with TaskPlugin=task/none nothing constrains devices, and the job sees CUDA_VISIBLE_DEVICES.
[[ "$GPUS" =~ ^[1-9][0-9]*$ ]] || die "SLURM_GPUS must be a positive integer, not '$GPUS'"
[[ "$CPUS" =~ ^[1-9][0-9]*$ ]] || die "SLURM_CPUS must be a positive integer, not '$CPUS'"
mkdir -p "$CONF_DIR" "$STATE/ctld" "$STATE/d" "$STATE/dev"
for ((i = 0; i < GPUS; i++)); do touch "$STATE/dev/gpu$i"; done
# more CPUs than the machine has: slurmd reports the configured count instead of its own (else
# the controller drains the node: "Low socket*core*thread count"), as for GPUs, declared only
overrides=""
if ((CPUS > $(nproc))); then overrides="SlurmdParameters=config_overrides"; fi
old_node="$(grep -h '^NodeName=' "$CONF_DIR/slurm.conf" "$CONF_DIR/gres.conf" 2>/dev/null || true)"
cat >"$CONF_DIR/slurm.conf" <<EOF
# written by dlapp bench/peers/slurm.sh
ClusterName=dlappbench
SlurmctldHost=$NODE
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/d
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmctldLogFile=$STATE/slurmctld.log
SlurmdLogFile=$STATE/slurmd.log
SlurmctldPort=6817
SlurmdPort=6818
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SwitchType=switch/none
MpiDefault=none
ReturnToService=2
SchedulerType=sched/backfill
# tuned for latency as an admin of a small cluster would: schedule a batch job at its submission
# (the default batch_sched_delay of 3 s lets the controller hold batch jobs to batch them)
SchedulerParameters=batch_sched_delay=0
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
GresTypes=gpu
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MinJobAge=300
$overrides
NodeName=$NODE CPUs=$CPUS RealMemory=$MEMORY_MB Gres=gpu:$GPUS State=UNKNOWN
PartitionName=bench Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
EOF
cat >"$CONF_DIR/gres.conf" <<EOF
# written by dlapp bench/peers/slurm.sh: declared GPUs, no devices behind them
AutoDetect=off
NodeName=$NODE Name=gpu File=$STATE/dev/gpu[0-$((GPUS - 1))]
EOF
# slurm 22.05 has no CgroupPlugin=disabled; slurmd loads a cgroup plugin even with
# proctrack/linuxproc and task/none, so name the hierarchy this machine mounts
if [[ -f /sys/fs/cgroup/cgroup.controllers ]]; then cgroup=cgroup/v2; else cgroup=cgroup/v1; fi
cat >"$CONF_DIR/cgroup.conf" <<EOF
CgroupPlugin=$cgroup
EOF

# 4. daemons
running() { [[ -f "$STATE/$1.pid" ]] && kill -0 "$(cat "$STATE/$1.pid")" 2>/dev/null; }
new_node="$(grep -h '^NodeName=' "$CONF_DIR/slurm.conf" "$CONF_DIR/gres.conf")"
if [[ -n "$old_node" && "$old_node" != "$new_node" ]] && (running slurmctld || running slurmd); then
    echo "the node's shape changed: restarting slurmctld and slurmd"
    stop
fi
if running slurmctld; then
    scontrol reconfigure  # a running controller reads the configuration written above
else
    slurmctld || die "slurmctld did not start; see $STATE/slurmctld.log"
fi
for _ in $(seq 100); do scontrol ping >/dev/null 2>&1 && break; sleep 0.1; done
scontrol ping | grep -q UP || die "slurmctld does not answer; see $STATE/slurmctld.log"
running slurmd || slurmd || die "slurmd did not start; see $STATE/slurmd.log"

# 5. wait until the node is idle
for _ in $(seq 300); do
    state="$(sinfo -h -n "$NODE" -o %t 2>/dev/null || true)"
    [[ "$state" == "idle" ]] && break
    if [[ "$state" == down* || "$state" == drain* ]]; then
        scontrol update NodeName="$NODE" State=RESUME >/dev/null 2>&1 || true
    fi
    sleep 0.2
done
[[ "$(sinfo -h -n "$NODE" -o %t)" == "idle" ]] \
    || die "node $NODE is '$(sinfo -h -n "$NODE" -o %t)', not idle; see $STATE/slurmd.log"
echo "slurm: node $NODE idle, $CPUS CPUs, gres $(sinfo -h -n "$NODE" -o %G)"
