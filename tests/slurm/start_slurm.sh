#!/usr/bin/env bash
# Start a private single-node Slurm on 127.0.0.1 for tests/test_slurm.py (and for trying the Slurm
# profile by hand). Root only; Debian/Ubuntu with apt; no systemd needed.
#
#   export CMT_SLURM_DIR=/tmp/cmt-slurm   # state, spool, logs and pid files
#   bash tests/slurm/start_slurm.sh       # install if missing, write config, start, wait for the node
#   bash tests/slurm/stop_slurm.sh        # cancel jobs, stop the daemons by their pid files
#
# The cluster: one node (this machine, CPUs from nproc) in two partitions, `cpu` (default) and `gpu`,
# with one fake GPU (gres gpu:1 backed by /dev/null) so that `--gpus=1` jobs really take the gpu path.
# The config goes to /etc/slurm (slurm.conf, gres.conf, cgroup.conf), where every Slurm command finds
# it: SLURM_CONF pointing elsewhere is not enough, because the Snakemake jobstep plugin removes SLURM_*
# variables before its nested srun. An /etc/slurm/slurm.conf that this script did not write is never
# overwritten. munge uses the system key (/etc/munge/munge.key), created if missing.
#
# Knobs (environment):
#   CMT_SLURM_DIR     state directory (default /tmp/cmt-slurm)
#   CMT_SLURM_MEM_MB  memory the node advertises (default: the larger of 85% of RAM and 65536, so that
#                     the profile's GPU-rule requests fit; memory is not enforced on this cluster)
set -euo pipefail

D=${CMT_SLURM_DIR:-/tmp/cmt-slurm}
D=$(mkdir -p "$D" && cd "$D" && pwd)
ETC=/etc/slurm
CONF=$ETC/slurm.conf
MARK="# Single-node test cluster written by tests/slurm/start_slurm.sh; all traffic on 127.0.0.1."
export PATH=/usr/sbin:/sbin:$PATH
H=$(hostname -s)
CPUS=$(nproc)
PHYS_MEM=$(awk '/^MemTotal/ {print int($2 / 1024 * 0.85)}' /proc/meminfo)
MEM=${CMT_SLURM_MEM_MB:-$((PHYS_MEM > 65536 ? PHYS_MEM : 65536))}

log() { echo "[start_slurm $(date +%T)] $*"; }
die() {
    echo "[start_slurm] ERROR: $*" >&2
    exit 1
}
alive() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

[ "$(id -u)" = 0 ] || die "must run as root (the daemons run as root)"

# ------------------------------------------------------------------ 1. packages
# slurmctld + slurmd + slurm-client are the parts of the slurm-wlm metapackage this cluster needs
# (slurm-wlm itself pulls about 40 more packages).
if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null \
    || ! command -v sbatch >/dev/null || ! command -v munged >/dev/null; then
    command -v apt-get >/dev/null || die "Slurm is not installed and apt-get is not available"
    log "installing slurmctld slurmd slurm-client munge with apt"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends slurmctld slurmd slurm-client munge >"$D/apt.log" 2>&1 \
        || { tail -20 "$D/apt.log" >&2; die "apt-get install failed (log: $D/apt.log)"; }
fi

# Another Slurm is configured or running here: refuse rather than clobber it.
if [ -e "$CONF" ] && [ "$(head -1 "$CONF")" != "$MARK" ]; then
    die "$CONF exists and was not written by this script; not touching it"
fi
if ! alive "$D/slurmctld.pid" && port_open 6817; then
    other=$(cat "$ETC/.cmt-test-cluster" 2>/dev/null || true)
    if [ -n "$other" ] && [ "$other" != "$D" ]; then
        die "the test cluster of $other is running; stop it with CMT_SLURM_DIR=$other bash $(dirname "$0")/stop_slurm.sh"
    fi
    die "port 6817 is in use by a slurmctld that this script did not start"
fi

# ------------------------------------------------------------------ 2. munge
mkdir -p /run/munge /var/lib/munge /var/log/munge
chown munge:munge /run/munge /var/lib/munge /var/log/munge
chmod 755 /run/munge
if [ ! -s /etc/munge/munge.key ]; then
    log "creating the munge key"
    mkdir -p /etc/munge
    chown munge:munge /etc/munge
    mungekey --create --keyfile=/etc/munge/munge.key
fi
chown munge:munge /etc/munge/munge.key
chmod 400 /etc/munge/munge.key
if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
    log "starting munged"
    rm -f /run/munge/munged.pid
    runuser -u munge -- /usr/sbin/munged
    touch "$D/munged.ours" # stop_slurm.sh stops munged only if this script started it
fi
for _ in $(seq 50); do
    munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && break
    sleep 0.1
done
munge -n | unmunge >/dev/null || die "munge does not work (see /var/log/munge/munged.log)"

# ------------------------------------------------------------------ 3. config
mkdir -p "$ETC" "$D/state" "$D/spool" "$D/log"
echo "$D" >"$ETC/.cmt-test-cluster" # stop_slurm.sh removes the config only if it belongs to its state dir
OVERRIDES=""
# Advertising more memory than the machine has needs config_overrides (slurmd would mark the node
# INVAL otherwise). Nothing enforces memory here: no cgroups.
if [ "$MEM" -gt "$PHYS_MEM" ]; then OVERRIDES="SlurmdParameters=config_overrides"; fi
NEWCONF=$(
    cat <<EOF
${MARK}
ClusterName=cmt-test
SlurmctldHost=${H}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
MailProg=/bin/true
MpiDefault=none
# No cgroups needed: track processes by /proc, no task affinity.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=1000
# No slurmdbd: sacct does not work, so Snakemake's profile must poll with squeue ...
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
# ... and squeue must keep finished jobs for at least 3x the plugin's first status-check delay. An hour, so that
# the tests' end-of-run checks still see a slow run's first jobs (slurmctld purged them after the default 300 s).
MinJobAge=3600
ReturnToService=2
SchedulerType=sched/backfill
GresTypes=gpu
${OVERRIDES}
StateSaveLocation=${D}/state
SlurmdSpoolDir=${D}/spool
SlurmctldPidFile=${D}/slurmctld.pid
SlurmdPidFile=${D}/slurmd.pid
SlurmctldLogFile=${D}/log/slurmctld.log
SlurmdLogFile=${D}/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
NodeName=${H} NodeAddr=127.0.0.1 CPUs=${CPUS} RealMemory=${MEM} Gres=gpu:1 State=UNKNOWN
PartitionName=cpu Nodes=ALL Default=YES MaxTime=INFINITE State=UP
PartitionName=gpu Nodes=ALL Default=NO MaxTime=INFINITE State=UP
EOF
)
# A GPU gres needs a device file (without one slurmd drops it and the node goes INVAL): /dev/null.
NEWGRES="NodeName=${H} Name=gpu File=/dev/null"
# Both daemons parse cgroup.conf if one exists and die on a bad key; write a valid one.
NEWCGROUP="CgroupPlugin=autodetect"

changed=0
write_if_changed() { # FILE CONTENT
    if [ ! -f "$1" ] || [ "$(cat "$1")" != "$2" ]; then
        printf '%s\n' "$2" >"$1"
        changed=1
    fi
}
write_if_changed "$CONF" "$NEWCONF"
write_if_changed "$ETC/gres.conf" "$NEWGRES"
write_if_changed "$ETC/cgroup.conf" "$NEWCGROUP"
if [ "$changed" = 1 ] && { alive "$D/slurmctld.pid" || alive "$D/slurmd.pid"; }; then
    log "config changed: restarting the Slurm daemons"
    CMT_SLURM_DIR=$D bash "$(dirname "$0")/stop_slurm.sh" --restart
fi

# ------------------------------------------------------------------ 4. daemons
if ! alive "$D/slurmctld.pid"; then
    log "starting slurmctld (clean state)"
    rm -rf "${D:?}/state/"*
    slurmctld -f "$CONF" -c
fi
for _ in $(seq 100); do
    scontrol ping 2>/dev/null | grep -q UP && break
    sleep 0.1
done
scontrol ping | grep -q UP || die "slurmctld does not answer (log: $D/log/slurmctld.log)"
if ! alive "$D/slurmd.pid"; then
    log "starting slurmd"
    slurmd -f "$CONF" -N "$H"
fi

state=""
for _ in $(seq 150); do
    state=$(sinfo -h -N -n "$H" -o %T 2>/dev/null | head -1)
    case "$state" in idle | mixed | allocated) break ;; esac
    sleep 0.2
done
sinfo -N -o '%N %P %T %c %m %G' | sed 's/^/    /'
case "$state" in
    idle | mixed | allocated) log "READY (state in $D)" ;;
    *) die "node $H is '$state', not idle (logs: $D/log/)" ;;
esac
