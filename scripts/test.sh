#!/usr/bin/env bash
# Every test, on a fresh machine or an old one (idempotent). PG_MAJOR (make test PG=17) picks the PostgreSQL
# major; scripts/setup.sh installs it (15 from Debian, 17 and 18 built once into cached packages).
#   1. Rust unit tests and the preprocessing fidelity test (plain cargo test, no server);
#   2. the model tool: export the seeded random-weight model, graph fidelity ONNX vs PyTorch; the same for every
#      other architecture (ViT-B/16, L/14, L/14-336, SigLIP, SigLIP 2 base and so400m), one at a time;
#   3. SQL tests (pg_regress) against a real PostgreSQL with real pgvector and the installed extension, a
#      cluster without pg_clip preloaded for the placeholder case, and the client tests against the same
#      server: the example application (and, on the default major, its page in headless Chromium), the
#      backfill, automatic embedding; then clusters of their own: backups and failover, and Citus (a
#      coordinator and 2 workers, scripts/test_citus.sh).
# Steps 1 and 2 do not depend on the server: they run with the default major (15) only.
source "$(dirname "$0")/common.sh"
"$ROOT/scripts/setup.sh"
cd "$ROOT"

if [ "$PG_MAJOR" = "$DEFAULT_PG_MAJOR" ]; then
  log "1/3 preprocessing fixtures from the reference (transformers CLIPImageProcessor + Pillow)"
  "$PY" tests/fixtures/make_fixtures.py --out-real target/fixtures-real
  log "1/3 cargo test (unit tests, preprocessing fidelity)"
  PG_CLIP_REAL_FIXTURES=$ROOT/target/fixtures-real cargo test --no-fail-fast -- --nocapture 2>&1 | tee target/cargo-test.log \
    | grep -E '^(test |running|test result|fixture|  )|FAILED|panicked' || true
  grep -q 'test result: FAILED\|error\[' target/cargo-test.log && { echo "cargo test failed" >&2; exit 1; }
  grep -q '^test result: ok' target/cargo-test.log || { echo "cargo test did not run" >&2; exit 1; }

  log "2/3 model export (random weights, seed $MODEL_SEED) and graph fidelity"
  make_model
  "$PY" model/check_graph_fidelity.py --model "$MODEL_DIR"
  "$PY" model/check_graph_fidelity.py --self-test-checkpoint
  log "2/3 every other architecture (random weights, real shapes): export, ONNX Runtime vs PyTorch, one by one"
  # so400m's text tower (4.6 GB in all, half this step's time) is left to the benchmark: its image tower is
  # checked, and its text tower is SigLIP 2 base's architecture at another width.
  "$PY" model/check_architectures.py --work "$MODELS_DIR" --keep "${TEST_MODELS[@]}" \
    --image-only siglip2-so400m-patch14-384
  make_test_models
else
  log "PostgreSQL $PG_MAJOR: the server-side tests only (cargo test and the model tool run with PG=$DEFAULT_PG_MAJOR)"
  make_model >/dev/null
  make_test_models
fi

log "3/3 SQL tests (pg_regress) on a local PostgreSQL $PG_MAJOR cluster"
install_extension
work=$ROOT/target/pg_clip/regress-inputs
"$PY" tests/pg_regress/make_inputs.py "$work" "$MODEL_DIR" >/dev/null
chmod -R a+rX "$ROOT/target/pg_clip"
cluster_restart regress "${REGRESS_PORT:-28833}"
# The image host of the URL tests (10_url, 11_backfill, test_backfill.py): the test inputs under /img/ and
# every way a host misbehaves, on two loopback addresses (one of them is opened alone by the tests).
# The port is fixed because the expected outputs show URLs.
# Its HTTPS port has a self-signed certificate made here, which pg_clip must refuse (it verifies certificates).
http_port=28836
tls=$ROOT/target/pg_clip/tls && mkdir -p "$tls"
openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=127.0.0.1 -addext subjectAltName=IP:127.0.0.1 \
  -keyout "$tls/key.pem" -out "$tls/cert.pem" 2>/dev/null
"$PY" tests/http/server.py --host 127.0.0.1 --host 127.0.0.2 --port $http_port --root "$work" \
  --tls-port 28839 --tls-cert "$tls/cert.pem" --tls-key "$tls/key.pem" > target/http-server.log 2>&1 &
http_pid=$!
trap 'kill $http_pid 2>/dev/null; cluster_stop regress' EXIT
for _ in $(seq 100); do grep -q '^listening' target/http-server.log && break; sleep 0.1; done
grep -q '^listening' target/http-server.log || { cat target/http-server.log >&2; echo "test HTTP server did not start" >&2; exit 1; }
# WITH (FORCE): an auto-embed worker left connected by an interrupted run would block a plain DROP.
psql -X -q -c "DROP DATABASE IF EXISTS pg_clip_regress WITH (FORCE)" -c "CREATE DATABASE pg_clip_regress" postgres
# Where the tests find their inputs: a setting outside the reserved pg_clip prefix.
psql -X -q -c "ALTER DATABASE pg_clip_regress SET pg_clip_test.inputs = '$work'" postgres
mapfile -t schedule < <(ls tests/pg_regress/sql/*.sql | xargs -n1 basename | sed 's/\.sql$//' | sort)
mkdir -p target/pg_regress
if ! "$("$PG_CONFIG" --pkglibdir)/pgxs/src/test/regress/pg_regress" --use-existing --dbname=pg_clip_regress \
      --inputdir=tests/pg_regress --outputdir=target/pg_regress --bindir="$PG_BIN" "${schedule[@]}"; then
  cat target/pg_regress/regression.diffs >&2 || true
  exit 1
fi
n=${#schedule[@]}
echo "pg_regress: $n passed, 0 failed"

# The placeholder case needs a server that does not preload pg_clip: a non-superuser's SET of a
# superuser-only pg_clip setting, made before the library is loaded in the session, must not take effect.
log "3/3 a cluster without pg_clip preloaded: settings set before the library loads"
PG_CLIP_PRELOAD=0 cluster_restart plain "${PLAIN_PORT:-28835}"
trap 'kill $http_pid 2>/dev/null; cluster_stop regress; cluster_stop plain' EXIT
psql -X -q -c "DROP DATABASE IF EXISTS pg_clip_plain WITH (FORCE)" -c "CREATE DATABASE pg_clip_plain" postgres
if ! "$("$PG_CONFIG" --pkglibdir)/pgxs/src/test/regress/pg_regress" --use-existing --dbname=pg_clip_plain \
      --inputdir=tests/pg_regress/plain --outputdir=target/pg_regress_plain --bindir="$PG_BIN" placeholder; then
  cat target/pg_regress_plain/regression.diffs >&2 || true
  exit 1
fi
cluster_stop plain
cluster_start regress "${REGRESS_PORT:-28833}"  # for the client tests below: PGHOST/PGPORT are the regress cluster's

log "3/3 the example application (psycopg + pgvector adapter) against the same server"
"$PY" tests/clients/test_search_service.py "host=$PGHOST port=$PGPORT user=postgres dbname=pg_clip_regress" "$work"

log "3/3 URL backfill: killed mid-run, resumed; cancel of stalled downloads (psycopg)"
PG_CLIP_TEST_HTTP=http://127.0.0.1:$http_port \
  "$PY" tests/clients/test_backfill.py "host=$PGHOST port=$PGPORT user=postgres dbname=pg_clip_regress"

if [ "$PG_MAJOR" = "$DEFAULT_PG_MAJOR" ]; then
  log "3/3 the 'By photo' page in headless Chromium (selenium), screenshots in target/page-screenshots/"
  PG_CLIP_TEST_HTTP=http://127.0.0.1:$http_port \
    "$PY" tests/clients/test_page.py "host=$PGHOST port=$PGPORT user=postgres dbname=pg_clip_regress" "$work"
fi

log "3/3 upgrade from 0.1.0, dump and restore, a streaming standby (psycopg, pg_dump, pg_basebackup)"
lifecycle=$ROOT/target/clusters/lifecycle-pg$PG_MAJOR
mkdir -p "$lifecycle" && chown "$(pg_owner)" "$lifecycle"
as_postgres=""; [ "$(id -u)" = 0 ] && as_postgres="runuser -u postgres -- env -u RUST_BACKTRACE -u RUST_LIB_BACKTRACE"
PG_CLIP_TEST_HTTP=http://127.0.0.1:$http_port \
  "$PY" tests/clients/test_lifecycle.py "host=$PGHOST port=$PGPORT user=postgres" "$PG_BIN" "$as_postgres" \
  "$lifecycle/replica" "${REPLICA_PORT:-28830}" \
  "-p ${REPLICA_PORT:-28830} -k $lifecycle -c listen_addresses='' -c shared_preload_libraries=pg_clip -c pg_clip.prepared_model_dir=$(prepared_dir)" "$work"

# Kills one preparing backend with SIGKILL on purpose (the cluster goes through crash recovery).
log "3/3 cold start: 8 first calls at once, one backend prepares the shared model, the others wait and map it"
"$PY" tests/clients/test_cold_start.py "host=$PGHOST port=$PGPORT user=postgres dbname=pg_clip_regress"

log "3/3 security: an owner's code never runs with more rights; each owner's bookkeeping its own (psycopg)"
PG_CLIP_TEST_HTTP=http://127.0.0.1:$http_port \
  "$PY" tests/clients/test_security.py "host=$PGHOST port=$PGPORT user=postgres"

log "3/3 several models side by side: ViT-B/16, SigLIP 2 and the default in one database (psycopg)"
PG_CLIP_TEST_HTTP=http://127.0.0.1:$http_port PG_CLIP_TEST_MODELS_PATH=$MODELS_DIR \
  "$PY" tests/clients/test_models.py "host=$PGHOST port=$PGPORT user=postgres" "$work" \
  "${TEST_MODELS[@]}" b32-other

log "3/3 the move to another model with no downtime: a column for SigLIP 2 filled while ViT-B/32's serves (psycopg)"
PG_CLIP_TEST_HTTP=http://127.0.0.1:$http_port PG_CLIP_TEST_INPUTS=$work \
  "$PY" tests/clients/test_model_move.py "host=$PGHOST port=$PGPORT user=postgres" siglip2-base-patch16-224

# Clusters of its own: a primary with every tower prepared, tar base backups, pgBackRest, failover and pg_rewind.
log "3/3 backups and failover: pg_basebackup -Ft, pgBackRest, pg_ctl promote, pg_rewind"
PG_CLIP_TEST_HTTP=http://127.0.0.1:$http_port PG_CLIP_TEST_INPUTS=$work \
  "$PY" tests/clients/test_backup.py "$PG_BIN" "$as_postgres" "$ROOT/target/clusters/backup-pg$PG_MAJOR" "${BACKUP_PORT:-28840}"

# Last: it restarts the cluster and kills its postmaster on purpose.
log "3/3 automatic embedding: the background worker through restarts, faults, two databases (psycopg)"
pg_ctl_command="$PG_BIN/pg_ctl -D $(cluster_dir regress)/data -l $(cluster_dir regress)/server.log"
[ "$(id -u)" = 0 ] && pg_ctl_command="runuser -u postgres -- env -u RUST_BACKTRACE -u RUST_LIB_BACKTRACE $pg_ctl_command"
PG_CLIP_TEST_HTTP=http://127.0.0.1:$http_port \
  "$PY" tests/clients/test_auto_embed.py "host=$PGHOST port=$PGPORT user=postgres" "$pg_ctl_command" \
  "$(cluster_options regress "$PGPORT")"

# Clusters of their own: a Citus coordinator and 2 workers (Citus built once from ../shared/vendor/citus).
log "3/3 Citus: search, backfill and automatic embedding of distributed tables, on the nodes that hold them"
"$ROOT/scripts/test_citus.sh"
