#!/usr/bin/env bash
# Multilingual text benchmark (issue: search by words in Russian), every figure from one run:
#   warm clip_embed_text with pg_clip.text_model = multilingual at 1 thread (p50/p95, short Russian queries),
#   beside sentence-transformers' own SentenceTransformer.encode on the same texts and weights (interleaved rounds),
#   the int8 multilingual tower and CLIP's text tower for scale; then BACKENDS backends with the multilingual
#   encoder loaded: private memory per backend and total PSS (/proc/PID/smaps_rollup, as scripts/bench_memory.sh).
# usage: scripts/bench_text.sh   (BACKENDS=8, ROUNDS=5; PG=18 make bench-text picks the PostgreSQL major;
#        MULTILINGUAL_CHECKPOINT=DIR when the model's multilingual tower came from a checkpoint)
source "$(dirname "$0")/common.sh"
"$ROOT/scripts/setup.sh" >/dev/null
BACKENDS=${BACKENDS:-8}
ROUNDS=${ROUNDS:-5}
bench_cluster pg_clip_bench
# A library just installed sits in dirty page-cache pages until written back, and smaps counts a dirty file page
# mapped by one backend as its private memory: write it back first, so that private means heap.
sync
"$PY" "$ROOT/scripts/bench_text.py" "host=$PGHOST port=$PGPORT user=postgres dbname=pg_clip_bench" "$MODEL_DIR" \
  "$BACKENDS" "$ROUNDS" ${MULTILINGUAL_CHECKPOINT:+--multilingual-checkpoint "$MULTILINGUAL_CHECKPOINT"}
