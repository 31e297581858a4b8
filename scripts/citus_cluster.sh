# A Citus cluster on this machine for the Citus test and benchmark (sourced after common.sh): a coordinator
# and 2 workers, each its own PostgreSQL cluster under target/clusters on its own port, every node with
# shared_preload_libraries = 'citus,pg_clip' and the same model. Citus itself comes from scripts/citus.sh
# (built once from ../shared/vendor/citus into a cached package, or one already installed).
#   citus_cluster_start NAME PORT   - (re)creates NAME-coordinator on PORT, NAME-worker1/2 on PORT+1 and +2
#   citus_cluster_stop              - stops the three (the caller's trap)
#   citus_options PORT              - a node's server options (to restart one the same way)

# Every node as a Citus node is set up: Citus first in the preload list (it refuses to load after another
# library's planner hook), TCP on localhost (the nodes connect to each other), no SSL between them (the test
# cluster has no certificates), logical decoding for shard moves. The prepared model directory is shared by
# the three, as nodes on one machine would.
citus_options() {  # PORT
  echo "-p $1 -k $(cluster_dir citus) -c listen_addresses=localhost -c shared_preload_libraries=citus,pg_clip" \
       "-c pg_clip.prepared_model_dir=$(prepared_dir) -c citus.node_conninfo=sslmode=disable" \
       "-c wal_level=logical -c pg_clip.auto_embed_naptime=2 -c max_connections=100 -c max_worker_processes=32" \
       "-c max_prepared_transactions=50"
}

citus_cluster_start() {  # NAME PORT
  local name port dir n
  citus_nodes=("$1-coordinator:$2" "$1-worker1:$(($2 + 1))" "$1-worker2:$(($2 + 2))")
  mkdir -p "$(cluster_dir citus)" "$(prepared_dir)" && chown "$(pg_owner)" "$(cluster_dir citus)" "$(prepared_dir)"
  chmod a+rx "$ROOT/target" "$ROOT/target/clusters" "$ROOT/target/pg_clip"
  for n in "${citus_nodes[@]}"; do
    name=${n%%:*} port=${n##*:} dir=$(cluster_dir "$name")
    cluster_stop "$name"
    rm -rf "$dir" && mkdir -p "$dir" && chown "$(pg_owner)" "$dir"
    as_pg "$PG_BIN/initdb" -D "$dir/data" -U postgres --auth=trust --no-sync >/dev/null
    as_pg env -u RUST_BACKTRACE -u RUST_LIB_BACKTRACE "$PG_BIN/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w \
      -o "$(citus_options "$port")" start >/dev/null
  done
  log "Citus cluster: coordinator on $2, workers on $(($2 + 1)) and $(($2 + 2))"
}

citus_cluster_stop() {
  local n
  for n in "${citus_nodes[@]}"; do cluster_stop "${n%%:*}"; done
}

# The pg_ctl command that restarts worker 2 of cluster NAME (the fault tests stop and start it).
citus_worker2_pg_ctl() {  # NAME
  local command="$PG_BIN/pg_ctl -D $(cluster_dir "$1-worker2")/data -l $(cluster_dir "$1-worker2")/server.log"
  [ "$(id -u)" = 0 ] && command="runuser -u postgres -- env -u RUST_BACKTRACE -u RUST_LIB_BACKTRACE $command"
  echo "$command"
}
