#!/usr/bin/env bash
# Search benchmark (the design's query through psycopg): ROWS=13400 (the catalogue's size) by default; ROWS=1000000
# for the large case (loading and indexing take minutes on 2 cores). HNSW=1 also builds and measures HNSW.
# usage: scripts/bench_search.sh [image_dir]
source "$(dirname "$0")/common.sh"
"$ROOT/scripts/setup.sh" >/dev/null
ROWS=${ROWS:-13400}
dir=${1:-${IMAGES:-}}
site=$(ls -d "$ROOT"/.venv/lib/python3*/site-packages)
if [ -n "$dir" ]; then
  mapfile -t images < <(find "$dir" -maxdepth 1 -type f \( -iname '*.jpg' -o -iname '*.png' \) | sort | head -n 8)
else
  images=("$site"/skimage/data/{astronaut.png,chelsea.png,coffee.png,rocket.jpg,motorcycle_left.png,hubble_deep_field.jpg})
fi
make_model >/dev/null
install_extension
cluster_start bench "${BENCH_PORT:-28834}"
trap 'cluster_stop bench' EXIT
psql -X -q -c "CREATE DATABASE pg_clip_bench_search" postgres 2>/dev/null || true
psql -X -q -c "SET client_min_messages = error" -c "CREATE EXTENSION IF NOT EXISTS pg_clip CASCADE" pg_clip_bench_search
"$PY" "$ROOT/scripts/bench_search.py" "host=$PGHOST port=$PGPORT user=postgres dbname=pg_clip_bench_search" "$ROWS" \
  ${HNSW:+--hnsw} "${images[@]}"
