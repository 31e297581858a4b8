#!/usr/bin/env bash
# make test-citus PG=N: pg_clip on a Citus cluster on this machine, a coordinator and 2 workers on their own
# ports (28850-28852, scripts/citus_cluster.sh), then tests/clients/test_citus.py against it: search, backfill,
# automatic embedding with a shard move, every node's model, a node stopped mid-backfill.
# Citus comes from scripts/citus.sh (built once from ../shared/vendor/citus into a cached package, or one
# already installed); without it the target says so and fails.
source "$(dirname "$0")/common.sh"
source "$ROOT/scripts/citus_cluster.sh"
"$ROOT/scripts/setup.sh"
"$ROOT/scripts/citus.sh" "$PG_MAJOR"
cd "$ROOT"
make_model >/dev/null
install_extension
work=$ROOT/target/pg_clip/regress-inputs
"$PY" tests/pg_regress/make_inputs.py "$work" "$MODEL_DIR" >/dev/null
chmod -R a+rX "$ROOT/target/pg_clip"

port=${CITUS_PORT:-28850}
trap 'kill $http_pid 2>/dev/null; citus_cluster_stop' EXIT
citus_cluster_start citus "$port"

http_port=${CITUS_HTTP_PORT:-28856}
"$PY" tests/http/server.py --host 127.0.0.1 --port $http_port --root "$work" > target/http-server-citus.log 2>&1 &
http_pid=$!
for _ in $(seq 100); do grep -q '^listening' target/http-server-citus.log && break; sleep 0.1; done
grep -q '^listening' target/http-server-citus.log || { cat target/http-server-citus.log >&2; exit 1; }

PG_CLIP_TEST_HTTP=http://127.0.0.1:$http_port \
  "$PY" tests/clients/test_citus.py "$port" "$work" "$(citus_worker2_pg_ctl citus)" "$(citus_options $((port + 2)))"
