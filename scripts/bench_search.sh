#!/usr/bin/env bash
# Search benchmark (the design's query through psycopg): ROWS=13400 (the catalogue's size) by default; ROWS=1000000
# for the large case (loading and indexing take minutes on 2 cores). HNSW=1 also builds and measures HNSW.
# usage: scripts/bench_search.sh [image_dir]
source "$(dirname "$0")/common.sh"
"$ROOT/scripts/setup.sh" >/dev/null
ROWS=${ROWS:-13400}
bench_images "${1:-${IMAGES:-}}" 8 astronaut.png chelsea.png coffee.png rocket.jpg motorcycle_left.png hubble_deep_field.jpg
bench_cluster pg_clip_bench_search
"$PY" "$ROOT/scripts/bench_search.py" "host=$PGHOST port=$PGPORT user=postgres dbname=pg_clip_bench_search" "$ROWS" \
  ${HNSW:+--hnsw} "${images[@]}"
