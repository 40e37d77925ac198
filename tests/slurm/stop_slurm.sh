#!/usr/bin/env bash
# Stop the test cluster that tests/slurm/start_slurm.sh started: cancel its jobs, stop slurmd,
# slurmctld and (if start_slurm.sh started it) munged, each by the pid in its pid file, and remove
# the config it wrote to /etc/slurm.
#
#   CMT_SLURM_DIR=/tmp/cmt-slurm bash tests/slurm/stop_slurm.sh
# (--restart, used by start_slurm.sh when the config changed, keeps munged and the config.)
set -uo pipefail

D=${CMT_SLURM_DIR:-/tmp/cmt-slurm}
D=$(cd "$D" 2>/dev/null && pwd || echo "$D") # absolute, as start_slurm.sh records it
export PATH=/usr/sbin:/sbin:$PATH

log() { echo "[stop_slurm $(date +%T)] $*"; }

stop_pidfile() { # PIDFILE NAME
    local pid
    [ -s "$1" ] || return 0
    pid=$(cat "$1")
    if kill -0 "$pid" 2>/dev/null; then
        log "stopping $2 (pid $pid)"
        kill "$pid"
        for _ in $(seq 100); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        if kill -0 "$pid" 2>/dev/null; then
            log "$2 (pid $pid) still alive after 10 s: SIGKILL"
            kill -9 "$pid"
        fi
    fi
    rm -f "$1"
}

if [ -s "$D/slurmctld.pid" ] && kill -0 "$(cat "$D/slurmctld.pid")" 2>/dev/null; then
    jobs=$(squeue -h -o %i 2>/dev/null | tr '\n' ' ')
    if [ -n "${jobs// /}" ]; then
        log "cancelling jobs $jobs"
        # shellcheck disable=SC2086
        scancel $jobs 2>/dev/null || true
        sleep 1
    fi
fi
stop_pidfile "$D/slurmd.pid" slurmd
stop_pidfile "$D/slurmctld.pid" slurmctld
if [ "${1:-}" != --restart ] && [ -e "$D/munged.ours" ]; then
    stop_pidfile /run/munge/munged.pid munged
    rm -f "$D/munged.ours"
fi
if [ "${1:-}" != --restart ] && [ "$(cat /etc/slurm/.cmt-test-cluster 2>/dev/null)" = "$D" ]; then
    rm -f /etc/slurm/slurm.conf /etc/slurm/gres.conf /etc/slurm/cgroup.conf /etc/slurm/.cmt-test-cluster
fi
exit 0
