#!/usr/bin/env bash
# Cold-start benchmark (issue: one backend prepares the shared model, the others wait for it and map it). In the
# same run, on fresh prepared-model directories: CALLS=12 connections making their first clip_embed_bytes at the
# same moment, beside one connection preparing first and the CALLS-1 others then at the same moment. Prints wall
# time until all are answered and the backends' peak private memory for both, and the goals.
# usage: scripts/bench_cold_start.sh [image_dir]   (default: chelsea.png, which scikit-image ships)
#        RUNS=3 for medians over repeated pairs; PG_MAJOR=17 BENCH_PORT=... for another server
source "$(dirname "$0")/common.sh"
"$ROOT/scripts/setup.sh" >/dev/null
CALLS=${CALLS:-12}
RUNS=${RUNS:-1}
bench_images "${1:-${IMAGES:-}}" 1 chelsea.png
bench_cluster pg_clip_bench
"$PY" "$ROOT/scripts/bench_cold_start.py" "host=$PGHOST port=$PGPORT user=postgres dbname=pg_clip_bench" "$CALLS" \
  "${images[0]}" "$RUNS"
