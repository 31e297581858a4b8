#!/usr/bin/env bash
# scripts/test_package.sh [N]  (default 15), or `make test-package PG=N`
#
# The package of pg_clip for PostgreSQL N, installed where no build output is present:
#   1. installs what is missing (scripts/setup.sh: PostgreSQL N and postgresql-N-pgvector as packages, the venv),
#      builds target/packages/postgresql-N-pg-clip_<version>_amd64.deb if it is missing or older than its sources;
#   2. removes what `make install` / `cargo pgrx install` put in place for N (pg_clip.so, pg_clip.control,
#      pg_clip--*.sql, $pkglibdir/pg_clip/, $sharedir/pg_clip/ with the model), and an installed package of N, so
#      that only the package provides pg_clip;
#   3. dpkg -i (dependencies checked, nothing forced); installs a model with the package's own pg_clip_model
#      (--random --seed 42 with the multilingual text encoder too, from the packaged tool and vocabulary, with
#      PYTHON = the project's venv so that nothing is downloaded);
#   4. a throwaway cluster of N with shared_preload_libraries = pg_clip: CREATE EXTENSION pg_clip CASCADE, photos
#      embedded with clip_embed_bytes into a table with an HNSW index, each photo's search finds its own row first
#      at distance < 1e-6 through the index;
#   5. dpkg -r: every file the package listed is gone, the model (not a package file) is left, and CREATE
#      EXTENSION pg_clip fails in a new cluster; dpkg --purge then removes the model and the tool's venv cache.
# Afterwards pg_clip is not installed for N: `make install` (PG_MAJOR=N) or the package puts it back.
# Clusters: `package` and `package-removed` (common.sh's cluster_dir: target/clusters/package[-pgN]), ports
# $PACKAGE_TEST_PORT (28960) and the next one.
set -euo pipefail
export PG_MAJOR=${1:-${PG_MAJOR:-15}}
case $PG_MAJOR in 15|17|18) ;; *) echo "usage: $0 15|17|18" >&2; exit 2 ;; esac
source "$(dirname "$0")/common.sh"
N=$PG_MAJOR
port=${PACKAGE_TEST_PORT:-28960}
t0=$(date +%s)
cd "$ROOT"

failures=0
ok() { printf 'ok    %s\n' "$*"; }
fail() { printf 'FAIL  %s\n' "$*"; failures=$((failures + 1)); }
check() {  # DESCRIPTION COMMAND...: ok when the command succeeds
  local what=$1; shift
  if "$@"; then ok "$what"; else fail "$what"; fi
}
fatal() { fail "$*"; printf 'test_package %s: stopped at the first failure that leaves nothing to test\n' "$N"; exit 1; }

pkg=postgresql-$N-pg-clip
pkglibdir=$("$PG_CONFIG" --pkglibdir)
sharedir=$("$PG_CONFIG" --sharedir)
bindir=$("$PG_CONFIG" --bindir)
model_dir=$sharedir/pg_clip/model
venv_cache=/var/cache/$pkg
cluster=$(cluster_dir package)
removed_cluster=$(cluster_dir package-removed)
trap 'cluster_stop package; cluster_stop package-removed' EXIT

# 1. What the package depends on (postgresql-N, postgresql-N-pgvector: dpkg -i installs no dependency) and the
#    project's venv; then the package, built when missing or older than what goes into it.
"$ROOT/scripts/setup.sh"
version=$(cargo metadata --no-deps --format-version 1 --offline | "$PY" -c \
  'import json, sys; print(next(p["version"] for p in json.load(sys.stdin)["packages"] if p["name"] == "pg_clip"))')
deb=$ROOT/target/packages/${pkg}_${version}_$(dpkg --print-architecture).deb
if [ ! -f "$deb" ] || [ -n "$(find src sql model packaging Cargo.toml Cargo.lock pg_clip.control scripts/package.sh \
      -type f -newer "$deb" -print -quit)" ]; then
  log "building $deb"
  "$ROOT/scripts/package.sh" "$N"
else
  log "using $deb (newer than its sources)"
fi
[ -f "$deb" ] || fatal "no package $deb"

# 2. Only the package may provide pg_clip for N: remove an installed package and whatever a build installed.
if dpkg-query -W -f='${db:Status-Status}' "$pkg" 2>/dev/null | grep -qv '^not-installed$'; then
  log "purging the installed $pkg first"
  dpkg --purge "$pkg" > "$ROOT/target/packages/dpkg-purge-$N.log" 2>&1
fi
leftovers=("$pkglibdir/pg_clip.so" "$sharedir/extension/pg_clip.control" "$sharedir"/extension/pg_clip--*.sql
           "$pkglibdir/pg_clip" "$sharedir/pg_clip")
removed=()
for f in "${leftovers[@]}"; do
  [ -e "$f" ] || continue
  if dpkg -S "$f" >/dev/null 2>&1; then fatal "$f belongs to a package: $(dpkg -S "$f" 2>/dev/null | head -n1)"; fi
  rm -rf "$f" && removed+=("$f")
done
[ ${#removed[@]} -eq 0 ] || log "removed what a build had installed: ${removed[*]}"
check "no pg_clip file left for PostgreSQL $N before dpkg -i" \
  test -z "$(find "$pkglibdir" "$sharedir" -name 'pg_clip*' -print -quit)"

# 3. Install, dependencies checked; then the model, with the package's own tool.
dpkg-deb -f "$deb" Depends | sed 's/^/      Depends: /'
if dpkg -i "$deb" > "$ROOT/target/packages/dpkg-i-$N.log" 2>&1; then ok "dpkg -i $(basename "$deb")"
else cat "$ROOT/target/packages/dpkg-i-$N.log"; fatal "dpkg -i $(basename "$deb")"; fi
mapfile -t listed < <(dpkg -L "$pkg")
check "package files present (pg_clip.so, control, install script, libonnxruntime.so, pg_clip_model)" \
  test -f "$pkglibdir/pg_clip.so" -a -f "$sharedir/extension/pg_clip.control" \
    -a -f "$sharedir/extension/pg_clip--$version.sql" -a -f "$pkglibdir/pg_clip/libonnxruntime.so" \
    -a -x "$bindir/pg_clip_model"
check "no model in the package" test ! -e "$model_dir"
# The hand-written scripts (upgrade scripts, base scripts of earlier versions) ship next to the generated one.
for f in sql/pg_clip--*.sql; do
  [ -e "$f" ] || continue
  check "package ships $f" cmp -s "$f" "$sharedir/extension/$(basename "$f")"
done
model_args=(--random --seed 42 --towers image,text,multilingual)
log "installing a model with $bindir/pg_clip_model ${model_args[*]} (PYTHON=$PY)"
t_model=$(date +%s)
if PYTHON=$PY "$bindir/pg_clip_model" "${model_args[@]}" > "$ROOT/target/packages/pg_clip_model-$N.log" 2>&1; then
  ok "pg_clip_model ${model_args[*]} wrote $model_dir ($(du -sh "$model_dir" | cut -f1)) in $(( $(date +%s) - t_model ))s"
else
  tail -n 20 "$ROOT/target/packages/pg_clip_model-$N.log"; fatal "pg_clip_model ${model_args[*]}"
fi
check "model readable by the server's user" as_pg test -r "$model_dir/manifest.json" -a -r "$model_dir/image.onnx.data"

# 4. A throwaway cluster, library preloaded, photo search.
rm -rf "${cluster:?}" "${removed_cluster:?}"
if cluster_start package "$port"; then ok "cluster of PostgreSQL $N started with shared_preload_libraries = pg_clip"
else tail -n 20 "$cluster/server.log" 2>/dev/null; fatal "cluster start"; fi
photos=$cluster/photos
mkdir -p "$photos"
bench_images "" 0 astronaut.png chelsea.png coffee.png rocket.jpg motorcycle_left.png hubble_deep_field.jpg \
  retina.jpg franz-kafka.jpg
for p in "${images[@]}"; do cp "$p" "$photos/"; done
chmod -R a+rX "$photos"
q() { psql -X -q -v ON_ERROR_STOP=1 -At "$@" postgres; }
if out=$(q -c "SET client_min_messages = warning" -c "CREATE EXTENSION pg_clip CASCADE" \
        -c "SELECT extversion FROM pg_extension WHERE extname = 'pg_clip'" 2>&1); then
  check "CREATE EXTENSION pg_clip CASCADE: version $out" test "$out" = "$version"
else
  echo "$out"; fatal "CREATE EXTENSION pg_clip CASCADE"
fi
q -c "CREATE TABLE photo (id serial PRIMARY KEY, name text, embedding vector(512))"
for p in "$photos"/*; do
  q -c "INSERT INTO photo (name, embedding) VALUES ('$(basename "$p")', clip_embed_bytes(pg_read_binary_file('$p')))" \
    2>&1 | grep -v 'has RANDOM weights' || true   # (the random model's warning, once per session)
done
q -c "CREATE INDEX ON photo USING hnsw (embedding vector_cosine_ops)"
check "${#images[@]} photos embedded" test "$(q -c "SELECT count(embedding) FROM photo")" = "${#images[@]}"
# (in a session that has loaded the model: the runtime's version is known once it is loaded)
info=$(q -c "SELECT clip_embed_text('a photo') IS NOT NULL" \
         -c "SELECT random_weights, model_path, onnxruntime_path, onnxruntime_version FROM clip_model_info()" \
         2>/dev/null | tail -n1)
check "model and runtime from the package's paths: $info" \
  test "$info" = "t|$model_dir|$pkglibdir/pg_clip/libonnxruntime.so|$(basename "$(ort_lib)" | sed 's/libonnxruntime.so.//')"
# The search as an application sends it: the photo's bytes as a parameter ($1), so that the HNSW index can order
# by the distance to clip_embed_bytes($1). (Written inline, pg_read_binary_file is VOLATILE and the planner could
# not use the index.)
search="PREPARE search(bytea) AS SELECT name, (embedding <=> clip_embed_bytes(\$1)) < 1e-6 FROM photo
        ORDER BY embedding <=> clip_embed_bytes(\$1) LIMIT 3"
for p in "$photos"/*; do
  name=$(basename "$p")
  first=$(q -c "SET enable_seqscan = off" -c "$search" -c "EXECUTE search(pg_read_binary_file('$p'))" 2>/dev/null \
    | head -n1)
  check "search by $name: its own row first at distance < 1e-6 ($first)" test "$first" = "$name|t"
done
plan=$(q -c "SET enable_seqscan = off" -c "$search" \
         -c "EXPLAIN (COSTS OFF) EXECUTE search(pg_read_binary_file('$photos/$(basename "${images[0]}")'))")
check "the search runs on the HNSW index" grep -q 'Index Scan using photo_embedding_idx' <<< "$plan"
# Words in Russian, with the multilingual encoder the packaged tool made (its vocabulary shipped in the package).
words=$(q -c "SET pg_clip.text_model = multilingual" \
          -c "SELECT (clip_text_tokens('красный рюкзак'))[1], vector_dims(clip_embed_text('красный рюкзак')),
                     (SELECT text_model FROM clip_model_info())" 2>/dev/null | tail -n1)
check "words in Russian through the multilingual encoder: [CLS] id, dimensions, encoder ($words)" \
  test "$words" = "101|512|multilingual"
check "the auto-embed launcher runs (library preloaded)" \
  test "$(q -c "SELECT count(*) FROM pg_stat_activity WHERE backend_type LIKE '%pg_clip%'")" -ge 1
cluster_stop package

# 5. Removal.
if dpkg -r "$pkg" > "$ROOT/target/packages/dpkg-r-$N.log" 2>&1; then ok "dpkg -r $pkg"
else cat "$ROOT/target/packages/dpkg-r-$N.log"; fatal "dpkg -r $pkg"; fi
left=()
for f in "${listed[@]}"; do
  # Directories other packages also own (/usr/lib/postgresql/N/lib, ...) stay; files and our own directories go.
  [ "$f" != /. ] || continue
  [ -e "$f" ] || [ -L "$f" ] || continue
  if [ -d "$f" ] && { dpkg -S "$f" >/dev/null 2>&1 || [ "$f" = "$sharedir/pg_clip" ]; }; then continue; fi
  left+=("$f")
done
check "all ${#listed[@]} paths dpkg -L listed are gone (but shared directories${left:+; left: ${left[*]}})" \
  test ${#left[@]} -eq 0
if [ -f "$model_dir/manifest.json" ]; then
  ok "dpkg -r leaves the model (not a package file): $model_dir"
else
  fail "dpkg -r removed the model $model_dir"
fi
# (not preloading pg_clip: a server does not start when a library it preloads is missing)
PG_CLIP_PRELOAD=0 cluster_start package-removed $((port + 1))
err=$(psql -X -q -At -c "CREATE EXTENSION pg_clip CASCADE" postgres 2>&1 || true)
err=${err%%$'\n'*}
check "CREATE EXTENSION pg_clip fails in a new cluster: ${err#ERROR:  }" grep -q 'is not available' <<< "$err"
check "CREATE EXTENSION vector still works there" \
  psql -X -q -c "CREATE EXTENSION vector" postgres
cluster_stop package-removed
if dpkg --purge "$pkg" > "$ROOT/target/packages/dpkg-purge-$N.log" 2>&1; then ok "dpkg --purge $pkg"
else cat "$ROOT/target/packages/dpkg-purge-$N.log"; fail "dpkg --purge $pkg"; fi
check "dpkg --purge removes the model and the tool's venv cache ($sharedir/pg_clip, $venv_cache)" \
  test ! -e "$sharedir/pg_clip" -a ! -e "$venv_cache"
check "nothing named pg_clip left for PostgreSQL $N" test -z "$(find "$pkglibdir" "$sharedir" "$bindir" -name 'pg_clip*')"

t=$(( $(date +%s) - t0 ))
if [ $failures -eq 0 ]; then
  printf 'test_package %s: all checks passed in %dm%02ds (%s, %s)\n' "$N" $((t / 60)) $((t % 60)) "$(basename "$deb")" \
    "$(du -h "$deb" | cut -f1)"
else
  printf 'test_package %s: %d check(s) FAILED (%dm%02ds)\n' "$N" "$failures" $((t / 60)) $((t % 60))
  exit 1
fi
