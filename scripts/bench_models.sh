#!/usr/bin/env bash
# Models side by side (issue: choosing a model), every figure from one run: per model, warm clip_embed_bytes and
# clip_embed_text (p50/p90) beside PyTorch (transformers, 1 thread) on the same model and inputs; memory of BACKENDS
# backends that each embedded one photo (scripts/bench_memory.py's measurement) beside as many PyTorch processes
# (scripts/bench_torch_process.py: imports, from_pretrained, one photo); cold start with the prepared model present
# and, once, removed, beside a PyTorch process's start; each model's warm image time over the default model's
# (ViT-B/32) beside the ratio of their FLOPs. All models have RANDOM weights (model/export.py --random): the real
# compute and memory.
# usage: scripts/bench_models.sh
#   MODELS=a,b    the exported models besides the default (default: all five below)
#   IMAGES=N      distinct photos and as many texts per model (default 8; up to 11 built-in photos), or a directory
#                 of photos (its first 8)
#   ROUNDS=2 BACKENDS=8 COLD=3 (fresh backends for the cold start); BENCH_PORT=28880; PG=N picks the major
# The exports go to target/pg_clip/models (pg_clip.models_path of this benchmark's own cluster, bench-models);
# export.py skips the up-to-date ones. The prepared models go to target/bench-models/, one directory per model,
# removed once it is measured (siglip2-so400m-patch14-384's take several GB).
source "$(dirname "$0")/common.sh"
"$ROOT/scripts/setup.sh" >/dev/null
ALL_MODELS=(clip-vit-base-patch16 clip-vit-large-patch14 clip-vit-large-patch14-336 siglip2-base-patch16-224
  siglip2-so400m-patch14-384)
MODELS=${MODELS:-$(IFS=,; echo "${ALL_MODELS[*]}")}
IMAGES=${IMAGES:-8}
ROUNDS=${ROUNDS:-2}
BACKENDS=${BACKENDS:-8}
COLD=${COLD:-3}
BENCH_CLUSTER=${BENCH_CLUSTER:-bench-models}
BENCH_PORT=${BENCH_PORT:-28880}
started=$SECONDS

if [ -d "$IMAGES" ]; then
  bench_images "$IMAGES" 8
  texts=${#images[@]}
else
  bench_images "" 0 astronaut.png chelsea.png coffee.png rocket.jpg motorcycle_left.png hubble_deep_field.jpg \
    retina.jpg ihc.png camera.png brick.png franz-kafka.jpg
  images=("${images[@]:0:$IMAGES}")
  texts=$IMAGES
fi
[ ${#images[@]} -gt 0 ] || { echo "no photos: IMAGES=$IMAGES" >&2; exit 1; }

IFS=, read -r -a models <<< "$MODELS"
for arch in "${models[@]}"; do
  [ "$arch" = default ] && continue
  log "export $arch (random weights, seed $MODEL_SEED) to $MODELS_DIR/$arch, unless up to date"
  "$PY" "$ROOT/model/export.py" --random --seed "$MODEL_SEED" --arch "$arch" --out "$MODELS_DIR/$arch" >/dev/null
done
chmod -R a+rX "$MODELS_DIR"

bench_cluster pg_clip_bench
psql -X -q -c "ALTER SYSTEM SET pg_clip.models_path = '$MODELS_DIR'" -c "SELECT pg_reload_conf()" postgres >/dev/null
out=$ROOT/target/bench-models
prepared=$out/prepared-pg$PG_MAJOR
mkdir -p "$prepared"
chmod a+rx "$out"
chown "$(pg_owner)" "$prepared"
# A library just installed sits in dirty page-cache pages until written back, and smaps counts a dirty file page
# mapped by one backend as its private memory: write it back first, so that private means heap.
sync
# The command line that repeats this run, every setting spelled out.
command="MODELS=$MODELS IMAGES=$IMAGES ROUNDS=$ROUNDS BACKENDS=$BACKENDS COLD=$COLD PG_MAJOR=$PG_MAJOR"
command+=" scripts/bench_models.sh"
"$PY" "$ROOT/scripts/bench_models.py" "host=$PGHOST port=$PGPORT user=postgres dbname=pg_clip_bench" \
  --prepared "$prepared" --models "default,$MODELS" --rounds "$ROUNDS" --backends "$BACKENDS" --texts "$texts" \
  --cold "$COLD" --command "$command" "${images[@]}"
log "wall time $((SECONDS - started)) s (exports, build and install included)"
