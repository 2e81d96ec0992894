#!/usr/bin/env bash
# Start a local Ray cluster on 127.0.0.1 (`ray start --head --block`, in its own session) and wait until
# it answers; prints the `export RAY_ADDRESS=...` line to use. Stop it with .ci/ray-down.sh.
# RAY: the `ray` command of the environment hqrs runs in (default .venv/bin/ray).
set -euo pipefail
RAY=${RAY:-.venv/bin/ray}
DIR=${HQRS_RAY_DIR:-/tmp/hqrs-ray}
PORT=${HQRS_RAY_PORT:-6390}
[ -x "$RAY" ] || { echo "ray-up: $RAY not found: pip install -e '.[ray]' (or set RAY=/path/to/ray)" >&2; exit 1; }
mkdir -p "$DIR"
if [ -s "$DIR/ray.pid" ] && kill -0 "$(cat "$DIR/ray.pid")" 2>/dev/null; then
  echo "ray-up: already running (pid $(cat "$DIR/ray.pid"))"
else
  setsid "$RAY" start --head --block --node-ip-address 127.0.0.1 --port "$PORT" --num-cpus "$(getconf _NPROCESSORS_ONLN)" \
    --include-dashboard false --disable-usage-stats >"$DIR/ray.log" 2>&1 &
  echo $! >"$DIR/ray.pid"
fi
for _ in $(seq 1 120); do
  # ready when found the way hqrs finds it (the local cluster record, "auto"), not only by its port
  if env -u RAY_ADDRESS RAY_AUTH_MODE=token "$RAY" status >/dev/null 2>&1; then
    echo "export RAY_ADDRESS=127.0.0.1:$PORT"
    exit 0
  fi
  kill -0 "$(cat "$DIR/ray.pid")" 2>/dev/null || { echo "ray-up: ray start exited; see $DIR/ray.log" >&2; exit 1; }
  sleep 1
done
echo "ray-up: the cluster did not answer in 120 s; see $DIR/ray.log" >&2
exit 1
