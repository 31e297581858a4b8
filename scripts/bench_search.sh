#!/usr/bin/env bash
# Search benchmark (the design's query through psycopg): ROWS=13400 (the catalogue's size) by default; ROWS=1000000
# for the large case (loading and indexing take minutes on 2 cores). HNSW=1 also builds and measures HNSW.
# Options (environment): HNSW_M, HNSW_EFC (build m / ef_construction; default 16 / 64), EF_SEARCH (comma-separated
# hnsw.ef_search values tried in order until recall@50 >= 0.98), MWM (maintenance_work_mem for the builds; default
# 2GB), ITERATIVE_SCAN (off|relaxed_order|strict_order), DATASET (clustered, the default, or varied: see
# bench_search.py), IVFFLAT=0 (skip ivfflat), SWEEP=1 (print every ef_search tried), NO_E2E=1 (skip everything
# that calls pg_clip: no extension install, no model, pgvector only), REUSE_HNSW=1 (keep an HNSW index an earlier
# run built with the same m and ef_construction).
# The recommended HNSW build at 1M rows (issue 4):
#   ROWS=1000000 HNSW=1 HNSW_M=16 HNSW_EFC=200 MWM=8GB EF_SEARCH=64,100,200,400 scripts/bench_search.sh
# usage: scripts/bench_search.sh [image_dir]
source "$(dirname "$0")/common.sh"
"$ROOT/scripts/setup.sh" >/dev/null
ROWS=${ROWS:-13400}
opts=(${HNSW:+--hnsw} ${HNSW_M:+--hnsw-m "$HNSW_M"} ${HNSW_EFC:+--hnsw-ef-construction "$HNSW_EFC"}
      ${EF_SEARCH:+--ef-search "$EF_SEARCH"} ${MWM:+--maintenance-work-mem "$MWM"}
      ${ITERATIVE_SCAN:+--iterative-scan "$ITERATIVE_SCAN"} ${DATASET:+--dataset "$DATASET"})
[ "${IVFFLAT:-1}" = 0 ] && opts+=(--no-ivfflat)
[ "${SWEEP:-0}" = 1 ] && opts+=(--sweep)
[ "${REUSE_HNSW:-0}" = 1 ] && opts+=(--reuse-hnsw)
if [ "${NO_E2E:-0}" = 1 ]; then
  opts+=(--no-e2e)
  images=()
  cluster_restart bench "${BENCH_PORT:-28834}"
  trap 'cluster_stop bench' EXIT
  psql -X -q -c "CREATE DATABASE pg_clip_bench_search" postgres 2>/dev/null || true
  psql -X -q -c "SET client_min_messages = error" -c "CREATE EXTENSION IF NOT EXISTS vector" pg_clip_bench_search
else
  bench_images "${1:-${IMAGES:-}}" 8 astronaut.png chelsea.png coffee.png rocket.jpg motorcycle_left.png hubble_deep_field.jpg
  bench_cluster pg_clip_bench_search
fi
"$PY" "$ROOT/scripts/bench_search.py" "host=$PGHOST port=$PGPORT user=postgres dbname=pg_clip_bench_search" "$ROWS" \
  "${opts[@]}" "${images[@]}"
