#!/usr/bin/env bash
# Stop the cluster slurm/local/up.sh started under DIR: cancel its jobs, then stop slurmd,
# slurmctld and munged by the pid files in DIR, and any job step (slurmstepd) that outlived its
# slurmd. Only processes started for this DIR are signalled.
#
#   bash slurm/local/down.sh /tmp/slurm-local
set -uo pipefail
[ $# -eq 1 ] || { sed -n '2,6p' "$0" >&2; exit 2; }
DIR=$(realpath -m "$1")
export SLURM_CONF=$DIR/slurm.conf
PATH=$PATH:/usr/sbin:/sbin

alive() { [ -n "$1" ] && kill -0 "$1" 2>/dev/null; }
stop() {   # SIGTERM, then SIGKILL after 10 s
    local pid=$1
    alive "$pid" || return 0
    kill -TERM "$pid" 2>/dev/null
    for _ in $(seq 100); do alive "$pid" || return 0; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null
}
pid_of() { cat "$1" 2>/dev/null || true; }
# the job steps our slurmd started carry our SLURM_CONF in their environment
our_steps() {
    local p
    for p in $(pgrep -x slurmstepd); do
        tr '\0' '\n' < "/proc/$p/environ" 2>/dev/null | grep -qx "SLURM_CONF=$SLURM_CONF" && echo "$p"
    done
}

if [ -f "$SLURM_CONF" ] && alive "$(pid_of "$DIR/slurmctld.pid")"; then
    scancel --user="$(id -un)" 2>/dev/null
    for _ in $(seq 100); do
        [ -z "$(squeue -h -t running,completing,configuring -o %i 2>/dev/null)" ] && break
        sleep 0.2
    done
fi
# both daemons at once (slurmctld takes a second or two to save its state), munged after them
stop "$(pid_of "$DIR/slurmctld.pid")" &
stop "$(pid_of "$DIR/slurmd.pid")"
for p in $(our_steps); do stop "$p"; done
wait
stop "$(pid_of "$DIR/munge/munged.pid")"
exit 0
