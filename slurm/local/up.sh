#!/usr/bin/env bash
# Start a one-node Slurm cluster on this machine, all of it under DIR (config, state, logs, a
# private munged with its own key and socket), and wait until its node is idle:
#
#   bash slurm/local/up.sh /tmp/slurm-local        # prints: export SLURM_CONF=/tmp/slurm-local/slurm.conf
#   export SLURM_CONF=/tmp/slurm-local/slurm.conf   # sbatch, srun, squeue ... now talk to it
#   bash slurm/local/down.sh /tmp/slurm-local       # stops what up.sh started (by its pid files)
#
# Needs slurm-wlm and munge (apt-get install slurm-wlm munge); runs as the calling user.
# CPUS (default: this machine's), MEMORY_MB (default: 4096) and GPUS (default: nvidia-smi's count)
# declare the node; PORT (default: a
# free one from 20000-29999) is slurmctld's port, PORT+1 slurmd's. See slurm/local/slurm.conf.
set -euo pipefail
[ $# -eq 1 ] || { sed -n '2,11p' "$0" >&2; exit 2; }
HERE=$(cd "$(dirname "$0")" && pwd)
DIR=$(realpath -m "$1")
CPUS=${CPUS:-$(nproc)}
MEMORY_MB=${MEMORY_MB:-4096}
GPUS=${GPUS:-$( (nvidia-smi -L 2>/dev/null || true) | grep -c ^GPU)}
for cmd in munged slurmctld slurmd sinfo; do
    command -v "$cmd" >/dev/null || PATH=$PATH:/usr/sbin:/sbin
    command -v "$cmd" >/dev/null || { echo "up.sh: $cmd not found (apt-get install slurm-wlm munge)" >&2; exit 3; }
done

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
if [ -z "${PORT:-}" ]; then
    for _ in $(seq 50); do
        PORT=$((20000 + RANDOM % 9999))
        if port_free "$PORT" && port_free $((PORT + 1)); then break; fi
    done
fi

mkdir -p "$DIR"/{munge,state,slurmd}
chmod 700 "$DIR/munge"
CONF=$DIR/slurm.conf
sed -e "s|@DIR@|$DIR|g" -e "s|@CTLD_PORT@|$PORT|g" -e "s|@SLURMD_PORT@|$((PORT + 1))|g" \
    -e "s|@USER@|$(id -un)|g" -e "s|@CPUS@|$CPUS|g" -e "s|@MEMORY_MB@|$MEMORY_MB|g" -e "s|@GPUS@|$GPUS|g" "$HERE/slurm.conf" > "$CONF"
# GPUs: the real devices where nvidia-smi lists them, else empty files standing in for them (Slurm
# schedules GPUs by their files; a job gets CUDA_VISIBLE_DEVICES indices, nothing is bound).
: > "$DIR/gres.conf"
for ((i = 0; i < GPUS; i++)); do
    dev=/dev/nvidia$i
    [ -e "$dev" ] || { dev=$DIR/gpu$i; : > "$dev"; }
    echo "Name=gpu File=$dev" >> "$DIR/gres.conf"
done
export SLURM_CONF=$CONF

# munged: a fresh key, its own socket. --force: a temporary DIR sits under a world-writable /tmp.
head -c 1024 /dev/urandom > "$DIR/munge/munge.key"
chmod 400 "$DIR/munge/munge.key"
munged --force --socket="$DIR/munge/munge.socket" --key-file="$DIR/munge/munge.key" \
    --pid-file="$DIR/munge/munged.pid" --log-file="$DIR/munge/munged.log" --seed-file="$DIR/munge/munged.seed"

# Both daemons fork into the background and write their pid files (down.sh stops them by those).
# -c: start with no jobs from an earlier cluster in DIR.
slurmctld -c -f "$CONF"
slurmd -N localhost -f "$CONF"

for _ in $(seq 120); do
    state=$(sinfo -h -n localhost -o %T 2>/dev/null || true)
    if [ "$state" = idle ]; then
        echo "export SLURM_CONF=$CONF"
        exit 0
    fi
    sleep 0.5
done
echo "up.sh: node not idle after 60 s (state: ${state:-none}); see $DIR/slurmctld.log, $DIR/slurmd.log" >&2
exit 1
