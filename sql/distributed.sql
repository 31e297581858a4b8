-- pg_clip on Citus (README, "Scaling out with Citus"). Nothing here needs Citus to create the extension: the
-- functions look for Citus's catalog when they run and say so when it is absent.
--
-- Security, as in sql/backfill.sql: every function pins search_path = pg_catalog, pg_temp and names pg_clip's
-- objects with @extschema@; the commands sent to the nodes are built with format('%L'), and run there as the
-- calling user (Citus connects as the current user), who is checked on each node as on a single server.

-- Whether target is a Citus table whose rows are spread over shards on several nodes (hash- or
-- range-distributed). Reference tables and Citus local tables are not: pg_clip treats them as local tables
-- (a statement on them reaches every copy, and runs where it is issued).
CREATE FUNCTION @extschema@.clip_is_distributed(target regclass) RETURNS boolean
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $function$
DECLARE
    distributed boolean;
BEGIN
    IF pg_catalog.to_regclass('pg_catalog.pg_dist_partition') IS NULL THEN
        RETURN false;  -- Citus is not installed in this database
    END IF;
    EXECUTE 'SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_dist_partition p
                             WHERE p.logicalrelid OPERATOR(pg_catalog.=) $1
                               AND p.partmethod OPERATOR(pg_catalog.<>) ''n'')'
       INTO distributed USING target;
    RETURN distributed;
END
$function$;

-- The Citus nodes this coordinator reaches (the active primaries; the coordinator itself when it is not in the
-- metadata), as Citus's run_command_on_all_nodes finds them.
CREATE FUNCTION @extschema@.clip_citus_nodes(OUT node_name text, OUT node_port integer, OUT group_id integer)
RETURNS SETOF record
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $function$
BEGIN
    IF pg_catalog.to_regclass('pg_catalog.pg_dist_node') IS NULL THEN
        RAISE EXCEPTION 'pg_clip: Citus is not installed in this database' USING ERRCODE = '0A000';
    END IF;
    RETURN QUERY EXECUTE
        'SELECT n.nodename::text, n.nodeport, n.groupid FROM pg_catalog.pg_dist_node n
          WHERE n.isactive AND n.noderole OPERATOR(pg_catalog.=) ''primary''
         UNION ALL
         SELECT pg_catalog.current_setting(''citus.local_hostname''), pg_catalog.current_setting(''port'')::integer, 0
          WHERE NOT EXISTS (SELECT 1 FROM pg_catalog.pg_dist_node n, pg_catalog.pg_dist_local_group g
                             WHERE n.groupid OPERATOR(pg_catalog.=) g.groupid AND n.isactive)
         ORDER BY 1, 2';
END
$function$;

-- clip_model_info() of every node of the Citus cluster, and what each has inferred since it started: the one
-- place to see that every node has pg_clip, the same model and the same version. A node that cannot answer
-- (down, no pg_clip, no model) has ok = false and its error; nothing hangs longer than Citus's connection
-- timeout (citus.node_connection_timeout).
CREATE FUNCTION @extschema@.clip_cluster_model_info(
    OUT node text, OUT ok boolean, OUT error text, OUT pg_clip_version text, OUT model_name text,
    OUT model_version text, OUT dimensions integer, OUT random_weights boolean, OUT node_inferences bigint)
RETURNS SETOF record
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $function$
DECLARE
    names   text[];
    ports   integer[];
    answer  record;
    info    jsonb;
    command text := pg_catalog.format(
        'SELECT pg_catalog.row_to_json(x) FROM (SELECT e.extversion AS pg_clip_version, m.model_name, '
        'm.model_version, m.dimensions, m.random_weights, %1$I.clip_node_inferences() AS node_inferences '
        'FROM pg_catalog.pg_extension e, %1$I.clip_model_info() m WHERE e.extname = ''pg_clip'') x',
        '@extschema@');
BEGIN
    SELECT pg_catalog.array_agg(c.node_name), pg_catalog.array_agg(c.node_port) INTO names, ports
      FROM @extschema@.clip_citus_nodes() c;
    FOR answer IN EXECUTE
        'SELECT r.node_name, r.node_port, r.success, r.result
           FROM pg_catalog.master_run_on_worker($1, $2, pg_catalog.array_fill($3, ARRAY[pg_catalog.cardinality($1)]), true) r
          ORDER BY 1, 2' USING names, ports, command
    LOOP
        node := answer.node_name || ':' || answer.node_port;
        ok := answer.success AND answer.result <> '';
        error := CASE WHEN NOT answer.success THEN answer.result
                      WHEN answer.result = '' THEN 'pg_clip is not installed in this database on the node' END;
        info := CASE WHEN ok THEN answer.result::jsonb END;
        pg_clip_version := info->>'pg_clip_version';
        model_name := info->>'model_name';
        model_version := info->>'model_version';
        dimensions := (info->>'dimensions')::integer;
        random_weights := (info->>'random_weights')::boolean;
        node_inferences := (info->>'node_inferences')::bigint;
        RETURN NEXT;
    END LOOP;
END
$function$;

-- The nodes' part of CALL clip_backfill on a distributed table, run on each node by the coordinator (over a
-- connection of its own, as the calling user): the node's shards of the table, one after the other, each
-- with the single-server procedure (committed batches, failures recorded on the node), until max_rows rows
-- are done or failed. count_only: nothing is embedded; the answer is the rows still to do. The answer
-- (summary) is JSON: done, failed, pending, and the failure records this call made or updated (failures),
-- with the record's row_key as the coordinator's table has it.
CREATE PROCEDURE @extschema@.clip_backfill_node(
    shards        text[],
    url_column    name,
    vector_column name,
    key_column    name,
    batch_size    integer,
    concurrency   integer,
    retry_failed  boolean,
    max_rows      bigint,
    count_only    boolean,
    INOUT summary jsonb DEFAULT NULL)
LANGUAGE plpgsql
AS $procedure$
DECLARE
    shard     text;
    target    regclass;
    started   timestamptz;
    budget    bigint := max_rows;
    done      bigint := 0;
    failed    bigint := 0;
    pending   bigint := 0;
    run       record;
    failures  jsonb := '[]';
BEGIN
    PERFORM pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true);
    started := pg_catalog.clock_timestamp();
    FOREACH shard IN ARRAY shards LOOP
        target := pg_catalog.to_regclass(shard);
        IF target IS NULL THEN
            RAISE EXCEPTION 'pg_clip: shard % is not on node %:%', shard,
                pg_catalog.current_setting('citus.local_hostname', true), pg_catalog.current_setting('port')
                USING ERRCODE = '55000', HINT = 'The shard moved meanwhile: run the backfill again.';
        END IF;
        IF count_only THEN
            pending := pending + greatest(0,
                @extschema@.clip_backfill_count_pending(target, url_column, vector_column, key_column)
                - CASE WHEN retry_failed THEN 0 ELSE
                    (SELECT count(*) FROM @extschema@.clip_backfill_failures f
                      WHERE f.relation OPERATOR(pg_catalog.=) target AND f.permanent) END);
            CONTINUE;
        END IF;
        EXIT WHEN budget IS NOT NULL AND budget <= 0;
        CALL @extschema@.clip_backfill(target, url_column, vector_column, key_column, batch_size, concurrency,
                                       retry_failed, budget);
        PERFORM pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true);
        SELECT r.done, r.failed INTO run FROM @extschema@.clip_backfill_runs r
         WHERE r.relation OPERATOR(pg_catalog.=) target AND r.pid OPERATOR(pg_catalog.=) pg_catalog.pg_backend_pid()
         ORDER BY r.run_id DESC LIMIT 1;
        done := done + run.done;
        failed := failed + run.failed;
        budget := budget - run.done - run.failed;
    END LOOP;
    IF NOT count_only THEN
        SELECT coalesce(pg_catalog.jsonb_agg(pg_catalog.jsonb_build_object(
                   'row_key', f.row_key, 'sqlstate', f.sqlstate, 'error', f.error, 'http_status', f.http_status,
                   'permanent', f.permanent, 'attempts', f.attempts, 'url_sha256', pg_catalog.encode(f.url_sha256, 'hex'))),
               '[]')
          INTO failures
          FROM @extschema@.clip_backfill_failures f
         WHERE f.relation OPERATOR(pg_catalog.=) ANY (SELECT pg_catalog.to_regclass(s) FROM pg_catalog.unnest(shards) s)
           AND f.last_failed_at OPERATOR(pg_catalog.>=) started;
    END IF;
    summary := pg_catalog.jsonb_build_object('done', done, 'failed', failed, 'pending', pending, 'failures', failures);
END
$procedure$;

-- The coordinator's part of CALL clip_backfill on a distributed table (called by it, in its run): in steps,
-- each node embeds up to step_rows rows of its own shards, all nodes at once (master_run_on_worker, one
-- connection per node), and after each step the run's progress and the failures the nodes recorded are
-- committed here. The coordinator downloads nothing and runs no model. A node that fails (down, no pg_clip,
-- an error) is left out of the steps that follow; the others go on, and the call ends with an error naming
-- it: the rows it holds are still to do, and a new CALL does them.
CREATE PROCEDURE @extschema@.clip_backfill_distributed(
    target        regclass,
    url_column    name,
    vector_column name,
    key_name      name,
    batch_size    integer,
    concurrency   integer,
    retry_failed  boolean,
    max_rows      bigint,
    run           bigint)
LANGUAGE plpgsql
AS $procedure$
DECLARE
    all_names   text[];
    all_ports   integer[];
    all_shards  text[];
    node_count  integer;
    names       text[];
    ports       integer[];
    commands    text[];
    answer      record;
    result      jsonb;
    run_total   bigint := 0;
    run_done    bigint := 0;
    run_failed  bigint := 0;
    step_done   bigint;
    step_failed bigint;
    step_rows   bigint := greatest(batch_size, 1)::bigint * 4;
    step_no     integer := 0;
    node_budget bigint;
    active      text[];
    broken      text[] := '{}';
    node        text;
    started     timestamptz := pg_catalog.clock_timestamp();
BEGIN
    PERFORM pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true);
    -- As CALL clip_backfill checked (this procedure is its part, but anyone may call it).
    PERFORM @extschema@.clip_backfill_authorize(target, with_urls => true);
    -- Each node ('host:port') and the shards of target it holds (their primary placements).
    EXECUTE 'SELECT pg_catalog.array_agg(x.nodename ORDER BY x.nodename, x.nodeport),
                    pg_catalog.array_agg(x.nodeport ORDER BY x.nodename, x.nodeport),
                    pg_catalog.array_agg(x.shards ORDER BY x.nodename, x.nodeport)
               FROM (SELECT n.nodename::text, n.nodeport,
                            pg_catalog.array_agg(pg_catalog.shard_name(s.logicalrelid, s.shardid, false) ORDER BY s.shardid)::text AS shards
                       FROM pg_catalog.pg_dist_shard s
                       JOIN pg_catalog.pg_dist_placement p ON p.shardid OPERATOR(pg_catalog.=) s.shardid
                       JOIN pg_catalog.pg_dist_node n ON n.groupid OPERATOR(pg_catalog.=) p.groupid
                      WHERE s.logicalrelid OPERATOR(pg_catalog.=) $1 AND n.isactive
                        AND n.noderole OPERATOR(pg_catalog.=) ''primary''
                      GROUP BY 1, 2) x'
       INTO all_names, all_ports, all_shards USING target;
    SELECT pg_catalog.array_agg(nm || ':' || all_ports[o] ORDER BY o) INTO active
      FROM pg_catalog.unnest(all_names) WITH ORDINALITY AS u(nm, o);
    node_count := coalesce(pg_catalog.cardinality(all_names), 0);

    -- Step 0: what each node has to do, and the run's total.
    SELECT pg_catalog.array_agg(pg_catalog.format(
               'CALL %I.clip_backfill_node(%L::text[], %L, %L, %L, %s, %s, %L, NULL, true, NULL)', '@extschema@',
               l, url_column, vector_column, key_name, batch_size, coalesce(concurrency::text, 'NULL'), retry_failed)
               ORDER BY o)
      INTO commands FROM pg_catalog.unnest(all_shards) WITH ORDINALITY AS u(l, o);
    IF node_count > 0 THEN
        FOR answer IN EXECUTE 'SELECT * FROM pg_catalog.master_run_on_worker($1, $2, $3, true)'
                      USING all_names, all_ports, commands LOOP
            node := answer.node_name || ':' || answer.node_port;
            IF answer.success THEN
                run_total := run_total + (answer.result::jsonb->>'pending')::bigint;
            ELSE
                broken := broken || (node || ': ' || answer.result);
                active := pg_catalog.array_remove(active, node);
            END IF;
        END LOOP;
    END IF;
    IF max_rows IS NOT NULL THEN
        run_total := least(run_total, greatest(max_rows, 0));
    END IF;
    UPDATE @extschema@.clip_backfill_runs r SET total = run_total, updated_at = pg_catalog.clock_timestamp()
     WHERE r.run_id OPERATOR(pg_catalog.=) run;
    RAISE NOTICE 'clip_backfill: run % on % (distributed, % nodes): % rows to embed, on the nodes that hold them',
        run, target, node_count, run_total;
    COMMIT;
    PERFORM pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true);

    WHILE coalesce(pg_catalog.cardinality(active), 0) > 0 LOOP
        -- Each node still working embeds up to step_rows rows (fewer when max_rows leaves less).
        node_budget := step_rows;
        IF max_rows IS NOT NULL THEN
            node_budget := least(step_rows, (max_rows - run_done - run_failed) / pg_catalog.cardinality(active));
        END IF;
        EXIT WHEN node_budget <= 0;
        SELECT pg_catalog.array_agg(nm ORDER BY o), pg_catalog.array_agg(all_ports[o] ORDER BY o),
               pg_catalog.array_agg(pg_catalog.format(
                   'CALL %I.clip_backfill_node(%L::text[], %L, %L, %L, %s, %s, %L, %s, false, NULL)', '@extschema@',
                   all_shards[o], url_column, vector_column, key_name, batch_size,
                   coalesce(concurrency::text, 'NULL'), retry_failed, node_budget) ORDER BY o)
          INTO names, ports, commands
          FROM pg_catalog.unnest(all_names) WITH ORDINALITY AS u(nm, o)
         WHERE (nm || ':' || all_ports[o]) = ANY (active);
        step_done := 0;
        step_failed := 0;
        FOR answer IN EXECUTE 'SELECT * FROM pg_catalog.master_run_on_worker($1, $2, $3, true)'
                      USING names, ports, commands LOOP
            node := answer.node_name || ':' || answer.node_port;
            IF NOT answer.success THEN
                broken := broken || (node || ': ' || answer.result);
                active := pg_catalog.array_remove(active, node);
                CONTINUE;
            END IF;
            result := answer.result::jsonb;
            step_done := step_done + (result->>'done')::bigint;
            step_failed := step_failed + (result->>'failed')::bigint;
            IF (result->>'done')::bigint + (result->>'failed')::bigint < node_budget THEN
                active := pg_catalog.array_remove(active, node);  -- nothing left there
            END IF;
            -- The failures, readable here under the distributed table's name.
            INSERT INTO @extschema@.clip_backfill_failures AS f
                   (relation, row_key, sqlstate, error, http_status, permanent, attempts, url_sha256)
            SELECT target, e->>'row_key', e->>'sqlstate', e->>'error', (e->>'http_status')::integer,
                   (e->>'permanent')::boolean, (e->>'attempts')::integer, pg_catalog.decode(e->>'url_sha256', 'hex')
              FROM pg_catalog.jsonb_array_elements(result->'failures') e
            ON CONFLICT (relation, row_key) DO UPDATE
               SET sqlstate = excluded.sqlstate, error = excluded.error, http_status = excluded.http_status,
                   permanent = excluded.permanent, attempts = excluded.attempts, url_sha256 = excluded.url_sha256,
                   last_failed_at = pg_catalog.now();
        END LOOP;
        run_done := run_done + step_done;
        run_failed := run_failed + step_failed;
        step_no := step_no + 1;
        UPDATE @extschema@.clip_backfill_runs r
           SET done = r.done + step_done, failed = r.failed + step_failed, batches = step_no,
               updated_at = pg_catalog.clock_timestamp()
         WHERE r.run_id OPERATOR(pg_catalog.=) run;
        COMMIT;
        PERFORM pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true);
        RAISE NOTICE 'clip_backfill: % done, % failed, % remaining, % nodes working', run_done, run_failed,
            greatest(run_total - run_done - run_failed, 0), coalesce(pg_catalog.cardinality(active), 0);
    END LOOP;

    UPDATE @extschema@.clip_backfill_runs r
       SET state = CASE WHEN pg_catalog.cardinality(broken) = 0 THEN 'finished' ELSE 'interrupted' END,
           finished_at = pg_catalog.clock_timestamp(), updated_at = pg_catalog.clock_timestamp()
     WHERE r.run_id OPERATOR(pg_catalog.=) run;
    COMMIT;
    PERFORM pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true);
    IF pg_catalog.cardinality(broken) > 0 THEN
        RAISE EXCEPTION 'pg_clip: the backfill of % did not reach every node: %', target,
            pg_catalog.array_to_string(broken, '; ')
            USING ERRCODE = '08006',
                  DETAIL = pg_catalog.format('The other nodes finished: %s embedded, %s failed.', run_done, run_failed),
                  HINT = 'Bring the node back and CALL clip_backfill again: it does only the rows still to do.';
    END IF;
    RAISE NOTICE 'clip_backfill: run % finished: % embedded, % failed on % nodes in %', run, run_done, run_failed,
        node_count, date_trunc('second', pg_catalog.clock_timestamp() - started);
END
$procedure$;

-- Automatic embedding of a distributed table: clip_auto_embed on the coordinator puts pg_clip's triggers and
-- partial index on the table, and Citus puts them on every shard (and on every shard it makes later: a move,
-- a rebalance, a split). Each node's worker serves the shards of its node that carry pg_clip's URL trigger:
-- it finds them by their trigger (clip_auto_embed_discover, at each of its rounds; the trigger's creation
-- wakes it), and embeds a shard only while Citus's metadata places that shard on its node, holding the
-- shard's metadata lock during each batch (clip_shard_served_here), so that a move's cutover waits for the
-- batch and carries its writes over, and a shard that has moved away is left alone. The coordinator keeps the
-- table's row in clip_auto_embed_tables (its settings, for status and stop) and embeds nothing itself.

-- Whether this node serves target, a Citus shard, now: NULL if target is no shard (or Citus is absent); true
-- if Citus's metadata places it on this node; false if not (a move in progress to here, or done from here).
-- lock_shard: first take the shard's metadata lock in share mode until the transaction ends (a move or a
-- split takes it exclusively before its cutover).
CREATE FUNCTION @extschema@.clip_shard_served_here(target regclass, lock_shard boolean DEFAULT false)
RETURNS boolean
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $function$
DECLARE
    candidate text;
    shard     bigint;
    here      boolean;
BEGIN
    IF target IS NULL OR pg_catalog.to_regclass('pg_catalog.pg_dist_shard') IS NULL THEN
        RETURN NULL;
    END IF;
    -- A shard is named <table>_<shard id>: the id is checked against Citus's own name for it.
    candidate := pg_catalog.substring(target::text, '_([0-9]+)"?$');
    IF candidate IS NULL THEN
        RETURN NULL;
    END IF;
    EXECUTE 'SELECT s.shardid FROM pg_catalog.pg_dist_shard s
              WHERE s.shardid OPERATOR(pg_catalog.=) $1
                AND pg_catalog.to_regclass(pg_catalog.shard_name(s.logicalrelid, s.shardid, false)) OPERATOR(pg_catalog.=) $2'
       INTO shard USING candidate::bigint, target;
    IF shard IS NULL THEN
        RETURN NULL;
    END IF;
    IF lock_shard THEN
        EXECUTE 'SELECT pg_catalog.lock_shard_metadata(5, ARRAY[$1])' USING shard;  -- 5: ShareLock
    END IF;
    EXECUTE 'SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_dist_placement p, pg_catalog.pg_dist_local_group g
                             WHERE p.shardid OPERATOR(pg_catalog.=) $1 AND p.groupid OPERATOR(pg_catalog.=) g.groupid)'
       INTO here USING shard;
    RETURN here;
END
$function$;

-- This node's shards that carry pg_clip's URL trigger, registered in clip_auto_embed_tables (with the columns
-- the trigger names), and the registered shards whose trigger is gone (stopped on the coordinator) forgotten
-- with their queue, log and failure records. Only the shards of tables the caller may act on as owner (the
-- worker: all). Returns how many were added. Reads the catalogs only; run by the worker at each round and by
-- clip_auto_embed / clip_auto_embed_stop on the coordinator, on every node.
CREATE FUNCTION @extschema@.clip_auto_embed_discover() RETURNS integer
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $function$
DECLARE
    added integer;
BEGIN
    IF pg_catalog.to_regclass('pg_catalog.pg_dist_shard') IS NULL THEN
        RETURN 0;
    END IF;
    -- Citus hides shards from pg_class in ordinary sessions; this function reads their owners there.
    PERFORM pg_catalog.set_config('citus.override_table_visibility', 'off', true);
    EXECUTE $q$
        WITH gone AS (
            DELETE FROM @extschema@.clip_auto_embed_tables c
             WHERE pg_catalog.relation_is_a_known_shard(c.relation::oid)
               AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_trigger t
                                WHERE t.tgrelid OPERATOR(pg_catalog.=) c.relation::oid
                                  AND t.tgname OPERATOR(pg_catalog.~) '^zz_clip_auto_embed_url_[0-9]+$')
            RETURNING c.relation),
        q AS (DELETE FROM @extschema@.clip_auto_embed_queue q USING gone WHERE q.relation OPERATOR(pg_catalog.=) gone.relation),
        f AS (DELETE FROM @extschema@.clip_backfill_failures f USING gone WHERE f.relation OPERATOR(pg_catalog.=) gone.relation)
        DELETE FROM @extschema@.clip_auto_embed_log l USING gone WHERE l.relation OPERATOR(pg_catalog.=) gone.relation
    $q$;
    EXECUTE $q$
        INSERT INTO @extschema@.clip_auto_embed_tables (relation, url_column, vector_column, key_column, enabled_by)
        SELECT t.tgrelid::pg_catalog.regclass, a.attname, x.args[1], x.args[2], pg_catalog.pg_get_userbyid(c.relowner)
          FROM pg_catalog.pg_trigger t
          JOIN pg_catalog.pg_class c ON c.oid OPERATOR(pg_catalog.=) t.tgrelid
          JOIN pg_catalog.pg_attribute a ON a.attrelid OPERATOR(pg_catalog.=) t.tgrelid
                                        AND a.attnum OPERATOR(pg_catalog.=) t.tgattr[0]
          CROSS JOIN LATERAL (
              SELECT pg_catalog.array_agg(pg_catalog.convert_from(pg_catalog.decode(u.part, 'escape'), 'UTF8')
                                          ORDER BY u.o) AS args
                FROM pg_catalog.unnest(pg_catalog.regexp_split_to_array(
                         pg_catalog.encode(t.tgargs, 'escape'), '\\000')) WITH ORDINALITY AS u(part, o)) x
         WHERE t.tgname OPERATOR(pg_catalog.~) '^zz_clip_auto_embed_url_[0-9]+$'  -- Citus: <name>_<shard id>
           AND t.tgfoid OPERATOR(pg_catalog.=) '@extschema@.clip_auto_embed_url_changed()'::pg_catalog.regprocedure
           AND pg_catalog.relation_is_a_known_shard(t.tgrelid)
           AND pg_catalog.pg_has_role(c.relowner, 'USAGE')
           AND NOT EXISTS (SELECT 1 FROM @extschema@.clip_auto_embed_tables e
                            WHERE e.relation OPERATOR(pg_catalog.=) t.tgrelid::pg_catalog.regclass)
        ON CONFLICT ON CONSTRAINT clip_auto_embed_tables_pkey DO NOTHING
    $q$;
    GET DIAGNOSTICS added = ROW_COUNT;
    IF added > 0 THEN
        PERFORM @extschema@.clip_auto_embed_wake(start_worker => true);
    END IF;
    RETURN added;
END
$function$;

-- What clip_auto_embed_status shows of a distributed table: its shards' rows on every node, added up, and each
-- node's worker. A node that does not answer is named in worker_state.
CREATE FUNCTION @extschema@.clip_auto_embed_cluster_status(
    target regclass,
    OUT pending bigint, OUT lag_seconds numeric, OUT retrying bigint, OUT reembed_pending bigint,
    OUT embedded_last_minute bigint, OUT failed bigint, OUT worker_state text, OUT last_error text)
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $function$
DECLARE
    names   text[];
    ports   integer[];
    command text;
    answer  record;
    s       jsonb;
    workers text[] := '{}';
    errors  text[] := '{}';
BEGIN
    -- The view calls this for every row and filters afterwards: a table that is not distributed (or no Citus
    -- at all) costs one catalog lookup here.
    IF NOT @extschema@.clip_is_distributed(target) THEN
        RETURN;
    END IF;
    pending := 0; retrying := 0; reembed_pending := 0; embedded_last_minute := 0; failed := 0;
    -- Each node: the rows of this table's shards it holds and serves (Citus's shard names), added up there
    -- from pg_clip's tables (not from the status view: on a node that also has the distributed table
    -- registered, the coordinator, the view would ask the nodes again).
    command := pg_catalog.format($c$
        WITH served AS (
            SELECT c.relation, c.last_error FROM %1$I.clip_auto_embed_tables c
             WHERE c.relation OPERATOR(pg_catalog.=) ANY (
                       SELECT pg_catalog.to_regclass(pg_catalog.shard_name(s.logicalrelid, s.shardid, false))
                         FROM pg_catalog.pg_dist_shard s
                        WHERE s.logicalrelid OPERATOR(pg_catalog.=) %2$L::pg_catalog.regclass)),
        queued AS (
            SELECT q.* FROM %1$I.clip_auto_embed_queue q
             WHERE q.relation OPERATOR(pg_catalog.=) ANY (SELECT served.relation FROM served))
        SELECT pg_catalog.json_build_object(
                 'pending', (SELECT pg_catalog.count(*) FROM queued WHERE NOT queued.replace),
                 'lag', (SELECT pg_catalog.round(EXTRACT(epoch FROM pg_catalog.clock_timestamp()
                                    OPERATOR(pg_catalog.-) pg_catalog.min(queued.queued_at)), 1)
                           FROM queued WHERE NOT queued.replace),
                 'retrying', (SELECT pg_catalog.count(*) FROM queued
                               WHERE queued.not_before OPERATOR(pg_catalog.>) pg_catalog.clock_timestamp()),
                 'reembed', (SELECT pg_catalog.count(*) FROM queued WHERE queued.replace),
                 'embedded', (SELECT coalesce(pg_catalog.sum(l.embedded), 0) FROM %1$I.clip_auto_embed_log l
                               WHERE l.relation OPERATOR(pg_catalog.=) ANY (SELECT served.relation FROM served)
                                 AND l.finished_at OPERATOR(pg_catalog.>)
                                     (pg_catalog.clock_timestamp() OPERATOR(pg_catalog.-) '1 minute'::pg_catalog.interval)),
                 'failed', (SELECT pg_catalog.count(*) FROM %1$I.clip_backfill_failures f
                             WHERE f.relation OPERATOR(pg_catalog.=) ANY (SELECT served.relation FROM served)),
                 'shards', (SELECT pg_catalog.count(*) FROM served),
                 'worker_pid', (SELECT w.pid FROM %1$I.clip_auto_embed_worker() w),
                 'worker_state', (SELECT w.state FROM %1$I.clip_auto_embed_worker() w),
                 'last_error', (SELECT pg_catalog.max(served.last_error) FROM served))$c$,
        '@extschema@', target::text);
    SELECT pg_catalog.array_agg(c.node_name), pg_catalog.array_agg(c.node_port) INTO names, ports
      FROM @extschema@.clip_citus_nodes() c;
    FOR answer IN EXECUTE
        'SELECT r.node_name, r.node_port, r.success, r.result
           FROM pg_catalog.master_run_on_worker($1, $2, pg_catalog.array_fill($3, ARRAY[pg_catalog.cardinality($1)]), true) r
          ORDER BY 1, 2' USING names, ports, command
    LOOP
        IF NOT answer.success THEN
            workers := workers || pg_catalog.format('%s:%s unreachable (%s)', answer.node_name, answer.node_port,
                                                    pg_catalog.rtrim(answer.result, E'\n'));
            CONTINUE;
        END IF;
        s := answer.result::jsonb;
        CONTINUE WHEN (s->>'shards')::integer = 0;
        pending := pending + (s->>'pending')::bigint;
        lag_seconds := greatest(lag_seconds, (s->>'lag')::numeric);
        retrying := retrying + (s->>'retrying')::bigint;
        reembed_pending := reembed_pending + (s->>'reembed')::bigint;
        embedded_last_minute := embedded_last_minute + (s->>'embedded')::bigint;
        failed := failed + (s->>'failed')::bigint;
        workers := workers || pg_catalog.format('%s:%s %s %s, worker %s', answer.node_name, answer.node_port,
            s->>'shards', CASE WHEN (s->>'shards')::integer = 1 THEN 'shard' ELSE 'shards' END, coalesce((s->>'worker_state') || ' (pid ' || (s->>'worker_pid') || ')', 'not running'));
        IF s->>'last_error' IS NOT NULL THEN
            errors := errors || pg_catalog.format('%s:%s: %s', answer.node_name, answer.node_port, s->>'last_error');
        END IF;
    END LOOP;
    worker_state := pg_catalog.array_to_string(workers, '; ');
    last_error := nullif(pg_catalog.array_to_string(errors, '; '), '');
END
$function$;

-- The rows of a distributed table still to embed (a URL, no vector, no permanent failure on record), counted
-- by the nodes that hold them (clip_backfill_node), as the caller. A node that does not answer is left out
-- with a WARNING naming it.
CREATE FUNCTION @extschema@.clip_distributed_pending(target regclass, url_column name, vector_column name, key_name name)
RETURNS bigint
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $function$
DECLARE
    names    text[];
    ports    integer[];
    commands text[];
    answer   record;
    total    bigint := 0;
BEGIN
    EXECUTE 'SELECT pg_catalog.array_agg(x.nodename), pg_catalog.array_agg(x.nodeport), pg_catalog.array_agg(x.shards)
               FROM (SELECT n.nodename::text, n.nodeport,
                            pg_catalog.array_agg(pg_catalog.shard_name(s.logicalrelid, s.shardid, false))::text AS shards
                       FROM pg_catalog.pg_dist_shard s
                       JOIN pg_catalog.pg_dist_placement p ON p.shardid OPERATOR(pg_catalog.=) s.shardid
                       JOIN pg_catalog.pg_dist_node n ON n.groupid OPERATOR(pg_catalog.=) p.groupid
                      WHERE s.logicalrelid OPERATOR(pg_catalog.=) $1 AND n.isactive
                        AND n.noderole OPERATOR(pg_catalog.=) ''primary''
                      GROUP BY 1, 2) x'
       INTO names, ports, commands USING target;
    IF names IS NULL THEN
        RETURN 0;
    END IF;
    SELECT pg_catalog.array_agg(pg_catalog.format(
               'CALL %I.clip_backfill_node(%L::text[], %L, %L, %L, 1, NULL, false, NULL, true, NULL)', '@extschema@',
               l, url_column, vector_column, key_name) ORDER BY o)
      INTO commands FROM pg_catalog.unnest(commands) WITH ORDINALITY AS u(l, o);
    FOR answer IN EXECUTE 'SELECT * FROM pg_catalog.master_run_on_worker($1, $2, $3, true)' USING names, ports, commands LOOP
        IF answer.success THEN
            total := total + (answer.result::jsonb->>'pending')::bigint;
        ELSE
            RAISE WARNING 'pg_clip: node %:% did not count its rows of %: %', answer.node_name, answer.node_port,
                target, answer.result;
        END IF;
    END LOOP;
    RETURN total;
END
$function$;

-- clip_auto_embed_pause, _retry and _requeue of a distributed table, on the nodes: each node runs the action
-- on the shards of the table it holds (clip_auto_embed_shard_action), as the caller, all nodes at once.
-- Returns the sum of the nodes' answers; a node that does not answer is an error naming it.
CREATE FUNCTION @extschema@.clip_auto_embed_on_nodes(target regclass, action text, paused boolean DEFAULT NULL,
                                                     keep_versions text[] DEFAULT NULL)
RETURNS bigint
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $function$
DECLARE
    names    text[];
    ports    integer[];
    shards   text[];
    commands text[];
    answer   record;
    total    bigint := 0;
BEGIN
    EXECUTE 'SELECT pg_catalog.array_agg(x.nodename), pg_catalog.array_agg(x.nodeport), pg_catalog.array_agg(x.shards)
               FROM (SELECT n.nodename::text, n.nodeport,
                            pg_catalog.array_agg(pg_catalog.shard_name(s.logicalrelid, s.shardid, false))::text AS shards
                       FROM pg_catalog.pg_dist_shard s
                       JOIN pg_catalog.pg_dist_placement p ON p.shardid OPERATOR(pg_catalog.=) s.shardid
                       JOIN pg_catalog.pg_dist_node n ON n.groupid OPERATOR(pg_catalog.=) p.groupid
                      WHERE s.logicalrelid OPERATOR(pg_catalog.=) $1 AND n.isactive
                        AND n.noderole OPERATOR(pg_catalog.=) ''primary''
                      GROUP BY 1, 2) x'
       INTO names, ports, shards USING target;
    IF names IS NULL THEN
        RETURN 0;
    END IF;
    SELECT pg_catalog.array_agg(pg_catalog.format(
               'SELECT %I.clip_auto_embed_shard_action(%L::text[], %L, %L::boolean, %L::text[])', '@extschema@',
               l, action, paused, keep_versions) ORDER BY o)
      INTO commands FROM pg_catalog.unnest(shards) WITH ORDINALITY AS u(l, o);
    FOR answer IN EXECUTE 'SELECT * FROM pg_catalog.master_run_on_worker($1, $2, $3, true)' USING names, ports, commands LOOP
        IF NOT answer.success THEN
            RAISE EXCEPTION 'pg_clip: node %:% could not % its shards of %: %', answer.node_name, answer.node_port,
                action, target, answer.result
                USING ERRCODE = CASE WHEN answer.result LIKE '%permission denied%' OR answer.result LIKE '%must be owner%'
                                     THEN '42501' ELSE '08006' END;
        END IF;
        total := total + answer.result::bigint;
    END LOOP;
    RETURN total;
END
$function$;

-- The node's side of clip_auto_embed_on_nodes: the shards registered first (clip_auto_embed_discover: the
-- worker may not have found a new one yet), then action on each of them: 'pause' (paused true or false;
-- answers how many shards), 'retry' or 'requeue' (keep_versions; answer how many rows were queued).
CREATE FUNCTION @extschema@.clip_auto_embed_shard_action(shards text[], action text, paused boolean,
                                                         keep_versions text[])
RETURNS bigint
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $function$
DECLARE
    shard  regclass;
    total  bigint := 0;
BEGIN
    PERFORM @extschema@.clip_auto_embed_discover();
    FOR shard IN SELECT c.relation FROM @extschema@.clip_auto_embed_tables c
                  WHERE c.relation OPERATOR(pg_catalog.=) ANY (SELECT pg_catalog.to_regclass(s) FROM pg_catalog.unnest(shards) s)
    LOOP
        total := total + CASE action
            WHEN 'pause' THEN (@extschema@.clip_auto_embed_pause(shard, paused) IS NOT NULL)::integer
            WHEN 'retry' THEN @extschema@.clip_auto_embed_retry(shard)
            WHEN 'requeue' THEN @extschema@.clip_auto_embed_requeue(shard, keep_versions)
        END;
    END LOOP;
    RETURN total;
END
$function$;

-- The steps of the backfill and of automatic embedding are for the roles clip_grant_backfill names (it grants
-- them), like the procedure and the functions they serve; clip_shard_served_here takes a shard's lock and is
-- the worker's. What every node runs (clip_cluster_model_info) and the status view's helper say nothing secret.
REVOKE EXECUTE ON PROCEDURE @extschema@.clip_backfill_node(text[], name, name, name, integer, integer, boolean, bigint,
                                                            boolean, jsonb) FROM PUBLIC;
REVOKE EXECUTE ON PROCEDURE @extschema@.clip_backfill_distributed(regclass, name, name, name, integer, integer, boolean,
                                                                   bigint, bigint) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION @extschema@.clip_distributed_pending(regclass, name, name, name) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION @extschema@.clip_auto_embed_discover() FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION @extschema@.clip_auto_embed_on_nodes(regclass, text, boolean, text[]) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION @extschema@.clip_auto_embed_shard_action(text[], text, boolean, text[]) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION @extschema@.clip_shard_served_here(regclass, boolean) FROM PUBLIC;
