#!/usr/bin/env bash
# Memory benchmark (issue: one model in memory for all backends). BACKENDS=8 backends embed the same photos with
# shared weights, then with private sessions, then with the int8 tower; prints memory per backend from
# /proc/PID/smaps_rollup and warm latency, side by side from one run.
# usage: scripts/bench_memory.sh [image_dir]   (default: the photos scikit-image ships)
source "$(dirname "$0")/common.sh"
"$ROOT/scripts/setup.sh" >/dev/null
BACKENDS=${BACKENDS:-8}
ROUNDS=${ROUNDS:-2}
bench_images "${1:-${IMAGES:-}}" 12 astronaut.png chelsea.png coffee.png rocket.jpg motorcycle_left.png hubble_deep_field.jpg
bench_cluster pg_clip_bench
"$PY" "$ROOT/scripts/bench_memory.py" "host=$PGHOST port=$PGPORT user=postgres dbname=pg_clip_bench" "$BACKENDS" "$ROUNDS" "${images[@]}"
