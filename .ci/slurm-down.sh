#!/usr/bin/env bash
# Stop the single-node cluster of .ci/slurm-up.sh (its jobs, slurmd, slurmctld; munged is left running
# only if it was not started for it: pass --munge to stop it too).
set -uo pipefail
DIR=${HQRS_SLURM_DIR:-/tmp/hqrs-slurm}
command -v scancel >/dev/null && scancel --user=root 2>/dev/null
for name in slurmd slurmctld; do
  pidfile="$DIR/$name.pid"
  if [ -s "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
    pid=$(cat "$pidfile")
    kill "$pid"
    for _ in $(seq 1 20); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
  fi
done
if [ "${1:-}" = "--munge" ] && [ -s /run/munge/munged.pid ]; then
  kill "$(cat /run/munge/munged.pid)" 2>/dev/null
fi
echo "slurm-down: stopped"
