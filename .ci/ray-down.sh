#!/usr/bin/env bash
# Stop the Ray cluster of .ci/ray-up.sh: its `ray start --block` session (and only that).
set -uo pipefail
DIR=${HQRS_RAY_DIR:-/tmp/hqrs-ray}
if [ -s "$DIR/ray.pid" ]; then
  pid=$(cat "$DIR/ray.pid")
  kill -TERM -- "-$pid" 2>/dev/null
  for _ in $(seq 1 30); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
  kill -KILL -- "-$pid" 2>/dev/null
  rm -f "$DIR/ray.pid"
  # Ray's record of "the cluster on this machine" (read by ray.init / RAY_ADDRESS=auto) now points nowhere
  rec=$(python3 -c 'import tempfile; print(tempfile.gettempdir())')/ray/ray_current_cluster
  if [ -f "$rec" ] && grep -q ":${HQRS_RAY_PORT:-6390}\$" "$rec"; then rm -f "$rec"; fi
fi
echo "ray-down: stopped"
