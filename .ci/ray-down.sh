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
fi
echo "ray-down: stopped"
