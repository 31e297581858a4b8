#!/usr/bin/env bash
# Memory benchmark (issue: one model in memory for all backends). BACKENDS=8 backends embed the same photos with
# shared weights, then with private sessions, then with the int8 tower; prints memory per backend from
# /proc/PID/smaps_rollup and warm latency, side by side from one run.
# usage: scripts/bench_memory.sh [image_dir]   (default: the photos scikit-image ships)
source "$(dirname "$0")/common.sh"
"$ROOT/scripts/setup.sh" >/dev/null
BACKENDS=${BACKENDS:-8}
ROUNDS=${ROUNDS:-2}
dir=${1:-${IMAGES:-}}
site=$(ls -d "$ROOT"/.venv/lib/python3*/site-packages)
if [ -n "$dir" ]; then
  mapfile -t images < <(find "$dir" -maxdepth 1 -type f \( -iname '*.jpg' -o -iname '*.png' \) | sort | head -n 12)
else
  images=("$site"/skimage/data/{astronaut.png,chelsea.png,coffee.png,rocket.jpg,motorcycle_left.png,hubble_deep_field.jpg})
fi
make_model >/dev/null
install_extension
cluster_start bench "${BENCH_PORT:-28834}"
trap 'cluster_stop bench' EXIT
psql -X -q -c "DROP DATABASE IF EXISTS pg_clip_bench" -c "CREATE DATABASE pg_clip_bench" postgres 2>/dev/null
psql -X -q -c "SET client_min_messages = error" -c "CREATE EXTENSION pg_clip CASCADE" pg_clip_bench
"$PY" "$ROOT/scripts/bench_memory.py" "host=$PGHOST port=$PGPORT user=postgres dbname=pg_clip_bench" "$BACKENDS" "$ROUNDS" "${images[@]}"
