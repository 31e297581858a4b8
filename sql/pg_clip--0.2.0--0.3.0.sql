-- pg_clip 0.2.0 -> 0.3.0. Run by ALTER EXTENSION pg_clip UPDATE; the upgrade test
-- (tests/clients/test_lifecycle.py) compares the result with a fresh CREATE EXTENSION, object by object.
--
-- Security (issue 17): every statement on a user's table now runs as its owner in a security-restricted
-- operation (the new functions of src/backfill/as_owner.rs); the SQL functions do bookkeeping only, each with
-- search_path = pg_catalog, pg_temp; row-level security keeps each owner's records to itself; a failure
-- record names the SHA-256 of the URL that failed, so that the URL trigger no longer needs to delete it (as
-- the bootstrap superuser, which it did). Existing records keep a NULL there and adopt the row's URL.
\echo Use "ALTER EXTENSION pg_clip UPDATE" to load this file. \quit

-- The engine's step 2 moves to Rust (it acts as the table's owner); its SQL form and the old record step,
-- which read the user's table as the caller, go.
DROP FUNCTION @extschema@.clip_backfill_apply(regclass, name, name, name, text, boolean, text[], text[], text[], integer,
                                              text, boolean[], boolean);
DROP FUNCTION @extschema@.clip_backfill_record(regclass, name, name, text, text[], text[], text[], text[], text[],
                                               integer[], boolean[]);

CREATE  FUNCTION "clip_backfill_apply"(
	"target" regclass, /* PgRelation */
	"url_column" TEXT, /* & str */
	"vector_column" TEXT, /* & str */
	"key_column" TEXT, /* & str */
	"keys" TEXT[], /* Vec < Option < String > > */
	"urls" TEXT[], /* Vec < Option < String > > */
	"prefetch" TEXT[] DEFAULT NULL, /* :: std :: option :: Option < Vec < Option < String > > > */
	"concurrency" INT DEFAULT NULL, /* Option < i32 > */
	"version" TEXT DEFAULT NULL, /* Option < & str > */
	"replace" bool[] DEFAULT NULL, /* :: std :: option :: Option < Vec < Option < bool > > > */
	"skip_locked" bool DEFAULT false /* bool */
) RETURNS TABLE (
	"row_key" TEXT,  /* String */
	"url" TEXT,  /* Option < String > */
	"outcome" TEXT,  /* String */
	"sqlstate" TEXT,  /* Option < String > */
	"error" TEXT,  /* Option < String > */
	"http_status" INT,  /* Option < i32 > */
	"transient" bool  /* Option < bool > */
)
VOLATILE PARALLEL UNSAFE COST 100
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'clip_backfill_apply_wrapper';


CREATE  FUNCTION "clip_backfill_count_pending"(
	"target" regclass, /* PgRelation */
	"url_column" TEXT, /* & str */
	"vector_column" TEXT, /* & str */
	"key_column" TEXT /* & str */
) RETURNS bigint /* i64 */
STRICT VOLATILE PARALLEL UNSAFE COST 100
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'clip_backfill_count_pending_wrapper';


CREATE  FUNCTION "clip_backfill_outdated_rows"(
	"target" regclass, /* PgRelation */
	"url_column" TEXT, /* & str */
	"vector_column" TEXT, /* & str */
	"key_column" TEXT, /* & str */
	"version" TEXT, /* & str */
	"keep_versions" TEXT[], /* Vec < Option < String > > */
	"after_key" TEXT, /* Option < & str > */
	"max_rows" bigint /* i64 */
) RETURNS TABLE (
	"row_key" TEXT,  /* String */
	"url" TEXT  /* String */
)
VOLATILE PARALLEL UNSAFE COST 100
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'clip_backfill_outdated_rows_wrapper';


CREATE  FUNCTION "clip_backfill_pending_rows"(
	"target" regclass, /* PgRelation */
	"url_column" TEXT, /* & str */
	"vector_column" TEXT, /* & str */
	"key_column" TEXT, /* & str */
	"after_key" TEXT, /* Option < & str > */
	"max_rows" bigint /* i64 */
) RETURNS TABLE (
	"row_key" TEXT,  /* String */
	"url" TEXT  /* String */
)
VOLATILE PARALLEL UNSAFE COST 100
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'clip_backfill_pending_rows_wrapper';


CREATE  FUNCTION "clip_backfill_row_states"(
	"target" regclass, /* PgRelation */
	"url_column" TEXT, /* & str */
	"vector_column" TEXT, /* & str */
	"key_column" TEXT, /* & str */
	"keys" TEXT[], /* Vec < Option < String > > */
	"version" TEXT /* Option < & str > */
) RETURNS TABLE (
	"row_key" TEXT,  /* String */
	"url" TEXT,  /* Option < String > */
	"has_vector" bool,  /* bool */
	"other_version" bool  /* bool */
)
VOLATILE PARALLEL UNSAFE COST 100
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'clip_backfill_row_states_wrapper';

-- >>> 0.3.0: automatic embedding per vector column
-- A table moving to another model keeps two vector columns fresh, each its own registration and queue.
ALTER TABLE @extschema@.clip_auto_embed_tables DROP CONSTRAINT clip_auto_embed_tables_pkey;
ALTER TABLE @extschema@.clip_auto_embed_tables ALTER COLUMN relation SET NOT NULL;
ALTER TABLE @extschema@.clip_auto_embed_tables ADD PRIMARY KEY (relation, vector_column);
ALTER TABLE @extschema@.clip_auto_embed_queue ADD COLUMN vector_column pg_catalog.name;
UPDATE @extschema@.clip_auto_embed_queue q SET vector_column = t.vector_column
  FROM @extschema@.clip_auto_embed_tables t WHERE t.relation = q.relation;
DELETE FROM @extschema@.clip_auto_embed_queue q WHERE q.vector_column IS NULL;
ALTER TABLE @extschema@.clip_auto_embed_queue ALTER COLUMN vector_column SET NOT NULL;
ALTER TABLE @extschema@.clip_auto_embed_queue DROP CONSTRAINT clip_auto_embed_queue_pkey;
ALTER TABLE @extschema@.clip_auto_embed_queue ADD PRIMARY KEY (relation, vector_column, row_key);
DROP INDEX @extschema@.clip_auto_embed_queue_order;
CREATE INDEX clip_auto_embed_queue_order ON @extschema@.clip_auto_embed_queue (relation, vector_column, replace, change_id);
ALTER TABLE @extschema@.clip_auto_embed_log ADD COLUMN vector_column pg_catalog.name;
DROP FUNCTION @extschema@.clip_auto_embed_pick(regclass, text[], integer, text, text[]);

CREATE FUNCTION @extschema@.clip_auto_embed_sweep(target regclass, vector_column name) RETURNS bigint
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $function$
DECLARE
    c            @extschema@.clip_auto_embed_tables;
    max_attempts integer := pg_catalog.current_setting('pg_clip.auto_embed_max_attempts')::integer;
    chunk_size   constant integer := 10000;
    after        text;
    keys         text[];
    urls         text[];
    n            bigint;
    queued       bigint := 0;
BEGIN
    PERFORM @extschema@.clip_backfill_authorize(target);
    SELECT * INTO c FROM @extschema@.clip_auto_embed_tables t WHERE t.relation = target AND t.vector_column = $2;
    IF NOT FOUND THEN
        RETURN 0;
    END IF;
    PERFORM @extschema@.clip_backfill_forget_stale(target, c.url_column, c.vector_column, c.key_column);
    LOOP
        SELECT pg_catalog.array_agg(p.row_key ORDER BY p.ord), pg_catalog.array_agg(p.url ORDER BY p.ord)
          INTO keys, urls
          FROM @extschema@.clip_backfill_pending_rows(target, c.url_column, c.vector_column, c.key_column, after,
                                                      chunk_size) WITH ORDINALITY AS p(row_key, url, ord);
        EXIT WHEN keys IS NULL;
        after := keys[pg_catalog.cardinality(keys)];
        WITH q AS (
            INSERT INTO @extschema@.clip_auto_embed_queue (relation, vector_column, row_key)
            SELECT target, c.vector_column, o.k FROM ROWS FROM (pg_catalog.unnest(keys), pg_catalog.unnest(urls)) WITH ORDINALITY AS o(k, u, n)
            WHERE NOT EXISTS (SELECT 1 FROM @extschema@.clip_backfill_failures f
                              WHERE f.relation = target AND f.row_key = o.k
                                AND (f.url_sha256 IS NULL OR f.url_sha256 = @extschema@.clip_backfill_url_sha256(o.u))
                                AND (f.permanent OR f.attempts >= max_attempts))
            ORDER BY o.n  -- change ids in key order, whatever the plan
            ON CONFLICT ON CONSTRAINT clip_auto_embed_queue_pkey DO NOTHING
            RETURNING 1)
        SELECT count(*) INTO n FROM q;
        queued := queued + n;
        EXIT WHEN pg_catalog.cardinality(keys) < chunk_size;
    END LOOP;
    -- Entries waiting for a retry (after a transient failure: up to retry_delay x 4^(attempts - 1)) whose row
    -- is gone or wants nothing any more leave now, not when they come due: the status view counts them.
    SELECT pg_catalog.array_agg(q.row_key) INTO keys
      FROM (SELECT q.row_key FROM @extschema@.clip_auto_embed_queue q
             WHERE q.relation = target AND q.vector_column = c.vector_column
               AND q.not_before > pg_catalog.clock_timestamp()
             ORDER BY q.not_before LIMIT 1000) q;
    IF keys IS NOT NULL THEN
        WITH s AS MATERIALIZED (
            SELECT * FROM @extschema@.clip_backfill_row_states(target, c.url_column, c.vector_column, c.key_column,
                                                               keys, @extschema@.clip_backfill_model_version()))
        DELETE FROM @extschema@.clip_auto_embed_queue q
         WHERE q.relation = target AND q.vector_column = c.vector_column AND q.row_key = ANY (keys)
           AND NOT EXISTS (SELECT 1 FROM s WHERE s.row_key = q.row_key AND s.url IS NOT NULL
                             AND (NOT s.has_vector OR (q.replace AND s.other_version)));
    END IF;
    UPDATE @extschema@.clip_auto_embed_tables t SET last_sweep_at = pg_catalog.clock_timestamp()
     WHERE t.relation = target AND t.vector_column = c.vector_column;
    RETURN queued;
END
$function$;

CREATE FUNCTION @extschema@.clip_auto_embed_drop_url_trigger(target regclass, vector_column name) RETURNS boolean
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $function$
DECLARE
    trigger name;
BEGIN
    PERFORM @extschema@.clip_backfill_authorize(target);
    SELECT t.tgname INTO trigger FROM pg_catalog.pg_trigger t
     WHERE t.tgrelid = target AND t.tgfoid = '@extschema@.clip_auto_embed_url_changed()'::pg_catalog.regprocedure
       AND pg_catalog.convert_from(pg_catalog.decode(
               pg_catalog.split_part(pg_catalog.encode(t.tgargs, 'escape'), '\000', 1), 'escape'), 'UTF8') = $2;
    IF trigger IS NOT NULL THEN
        EXECUTE pg_catalog.format('DROP TRIGGER %I ON %s', trigger, target);
    END IF;
    RETURN trigger IS NOT NULL;
END
$function$;

CREATE FUNCTION @extschema@.clip_auto_embed_stop(target regclass, vector_column name) RETURNS boolean
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $function$
DECLARE
    schema_name name;
    index_name  name;
BEGIN
    PERFORM @extschema@.clip_backfill_authorize(target);
    IF NOT EXISTS (SELECT 1 FROM @extschema@.clip_auto_embed_tables t
                   WHERE t.relation = target AND t.vector_column <> $2) THEN
        IF NOT EXISTS (SELECT 1 FROM @extschema@.clip_auto_embed_tables t
                       WHERE t.relation = target AND t.vector_column = $2) THEN
            RETURN false;
        END IF;
        RETURN @extschema@.clip_auto_embed_stop(target);
    END IF;
    SELECT n.nspname INTO schema_name
      FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = target;
    DELETE FROM @extschema@.clip_auto_embed_tables t WHERE t.relation = target AND t.vector_column = $2
    RETURNING t.pending_index INTO index_name;
    IF index_name IS NOT NULL THEN
        EXECUTE pg_catalog.format('DROP INDEX IF EXISTS %I.%I', schema_name, index_name);
    END IF;
    PERFORM @extschema@.clip_auto_embed_drop_url_trigger(target, vector_column);
    DELETE FROM @extschema@.clip_auto_embed_queue q WHERE q.relation = target AND q.vector_column = $2;
    DELETE FROM @extschema@.clip_auto_embed_log l WHERE l.relation = target AND l.vector_column = $2;
    PERFORM @extschema@.clip_auto_embed_wake(start_worker => false);
    RETURN true;
END
$function$;
-- <<< 0.3.0: automatic embedding per vector column

-- >>> 0.3.0: Citus (sql/distributed.sql)
CREATE  FUNCTION "clip_node_inferences"() RETURNS bigint /* Option < i64 > */
STRICT VOLATILE PARALLEL SAFE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'clip_node_inferences_wrapper';

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

-- <<< 0.3.0: Citus

-- >>> 0.3.0: models (sql/backfill.sql)
CREATE  FUNCTION "clip_embed_bytes"(
	"image" bytea, /* & [u8] */
	"model" TEXT /* & str */
) RETURNS vector /* Vector */
STRICT STABLE PARALLEL RESTRICTED COST 10000
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'clip_embed_bytes_with_model_wrapper';

CREATE  FUNCTION "clip_embed_text"(
	"query" TEXT, /* & str */
	"model" TEXT /* & str */
) RETURNS vector /* Vector */
STRICT STABLE PARALLEL RESTRICTED COST 2000
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'clip_embed_text_with_model_wrapper';

CREATE  FUNCTION "clip_text_tokens"(
	"query" TEXT, /* & str */
	"model" TEXT /* & str */
) RETURNS INT[] /* Vec < i32 > */
STRICT STABLE PARALLEL SAFE COST 100
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'clip_text_tokens_with_model_wrapper';

CREATE  FUNCTION "clip_embed_url"(
	"url" TEXT, /* & str */
	"model" TEXT /* & str */
) RETURNS vector /* Vector */
STRICT VOLATILE PARALLEL RESTRICTED COST 100000
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'clip_embed_url_with_model_wrapper';

CREATE  FUNCTION "clip_models"() RETURNS TABLE (
	"name" TEXT,  /* String */
	"model_name" TEXT,  /* Option < String > */
	"model_version" TEXT,  /* Option < String > */
	"family" TEXT,  /* Option < String > */
	"dimensions" INT,  /* Option < i32 > */
	"towers" TEXT[],  /* Option < Vec < String > > */
	"random_weights" bool,  /* Option < bool > */
	"bytes" bigint,  /* Option < i64 > */
	"path" TEXT,  /* String */
	"in_use" bool,  /* bool */
	"problem" TEXT  /* Option < String > */
)
STRICT VOLATILE PARALLEL SAFE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'clip_models_wrapper';

-- Which model fills which vector column. Two models may give vectors of the same dimensions (ViT-B/16 and
-- ViT-B/32 both give 512) that mean nothing to each other: a column searched or filled with another model than
-- its own returns plausible nonsense. clip_backfill and clip_auto_embed record the model of the session (or
-- check it against the record), and a search comparing the column with clip_embed_bytes/clip_embed_text of
-- another model is refused when it is planned (src/model/column_check.rs).
CREATE TABLE @extschema@.clip_vector_columns (
    relation      pg_catalog.regclass    NOT NULL,
    vector_column pg_catalog.name        NOT NULL,
    model         pg_catalog.text        NOT NULL,   -- its name, as clip_models() lists it
    model_version pg_catalog.text        NOT NULL,   -- that model's version: what is compared
    dimensions    pg_catalog.int4        NOT NULL,
    recorded_at   pg_catalog.timestamptz NOT NULL DEFAULT pg_catalog.now(),
    recorded_by   pg_catalog.name        NOT NULL DEFAULT CURRENT_USER,
    PRIMARY KEY (relation, vector_column)
);
COMMENT ON TABLE @extschema@.clip_vector_columns IS 'pg_clip: the model whose vectors each vector column holds';
SELECT pg_catalog.pg_extension_config_dump('@extschema@.clip_vector_columns', '');
-- Whoever may read the column may read its record (a search checks it as the searching role); only the table's
-- owner (or a member of its role) writes it.
ALTER TABLE @extschema@.clip_vector_columns ENABLE ROW LEVEL SECURITY;
CREATE POLICY clip_reader ON @extschema@.clip_vector_columns FOR SELECT
    USING (pg_catalog.has_column_privilege(relation, vector_column, 'SELECT'));
CREATE POLICY clip_owner ON @extschema@.clip_vector_columns
    USING (pg_catalog.pg_has_role((SELECT c.relowner FROM pg_catalog.pg_class c
                                   WHERE c.oid OPERATOR(pg_catalog.=) relation), 'USAGE'));
GRANT SELECT, INSERT, DELETE ON @extschema@.clip_vector_columns TO PUBLIC;

-- Raises 42804 before any work when the model in force (pg_clip.model) would put its vectors where they do not
-- belong: its dimensions are not the column's vector(N), or the column is recorded as another model's. With
-- `record`, a column without a record is recorded as this model's. Returns the model's name.
CREATE FUNCTION @extschema@.clip_check_vector_column(target regclass, vector_column name,
                                                     record boolean DEFAULT false)
RETURNS text
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $function$
DECLARE
    model_name text := COALESCE(NULLIF(pg_catalog.btrim(pg_catalog.current_setting('pg_clip.model', true)), ''),
                                'default');
    info       record;
    recorded   record;
    typmod     integer;
BEGIN
    SELECT i.model_version, i.dimensions INTO info FROM @extschema@.clip_model_info() i;
    SELECT a.atttypmod INTO typmod FROM pg_catalog.pg_attribute a
     WHERE a.attrelid OPERATOR(pg_catalog.=) target AND a.attname OPERATOR(pg_catalog.=) vector_column
       AND NOT a.attisdropped;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'pg_clip: column % of table % does not exist', vector_column, target USING ERRCODE = '42703';
    END IF;
    IF typmod > 0 AND typmod OPERATOR(pg_catalog.<>) info.dimensions THEN
        RAISE EXCEPTION 'pg_clip: column %.% is vector(%), model "%" (%) makes % dimensions', target, vector_column,
            typmod, model_name, info.model_version, info.dimensions
            USING ERRCODE = '42804',
                  HINT = 'Give this model a column of its own (ALTER TABLE ... ADD COLUMN ... vector(N)), or SET '
                         'pg_clip.model to the model the column is for (SELECT name, dimensions FROM clip_models()).';
    END IF;
    SELECT c.model, c.model_version INTO recorded FROM @extschema@.clip_vector_columns c
     WHERE c.relation OPERATOR(pg_catalog.=) target AND c.vector_column OPERATOR(pg_catalog.=) $2;
    IF FOUND AND recorded.model_version OPERATOR(pg_catalog.<>) info.model_version THEN
        RAISE EXCEPTION 'pg_clip: column %.% holds vectors of model "%" (%), not of model "%" (%)', target,
            vector_column, recorded.model, recorded.model_version, model_name, info.model_version
            USING ERRCODE = '42804',
                  HINT = pg_catalog.format('SET pg_clip.model = %L for this column, or give model %L a column of '
                         'its own. To refill this column with %L: SELECT clip_forget_vector_column(%L, %L), then '
                         'requeue every row.', recorded.model, model_name, model_name, target::text, vector_column);
    END IF;
    IF record AND NOT FOUND THEN
        INSERT INTO @extschema@.clip_vector_columns (relation, vector_column, model, model_version, dimensions)
        VALUES (target, vector_column, model_name, info.model_version, info.dimensions);
    END IF;
    RETURN model_name;
END
$function$;

-- Records that a column holds the vectors of the model in force (pg_clip.model), e.g. one filled before pg_clip
-- or by an UPDATE with clip_embed_url. Checks it first, like clip_backfill.
CREATE FUNCTION @extschema@.clip_record_vector_column(target regclass, vector_column name) RETURNS text
LANGUAGE sql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $function$ SELECT @extschema@.clip_check_vector_column(target, vector_column, record => true) $function$;

-- Forgets a column's record (the owner only): before refilling the column with another model.
CREATE FUNCTION @extschema@.clip_forget_vector_column(target regclass, vector_column name) RETURNS boolean
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $function$
BEGIN
    PERFORM @extschema@.clip_backfill_authorize(target);
    DELETE FROM @extschema@.clip_vector_columns c
     WHERE c.relation OPERATOR(pg_catalog.=) target AND c.vector_column OPERATOR(pg_catalog.=) $2;
    RETURN FOUND;
END
$function$;

-- For the auto-embed worker, per batch: the model recorded for the column becomes pg_clip.model for the rest of
-- the transaction, so each column is filled by its own model whatever the worker's settings say.
CREATE FUNCTION @extschema@.clip_use_vector_column_model(target regclass, vector_column name) RETURNS text
LANGUAGE sql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $function$
    SELECT pg_catalog.set_config('pg_clip.model', c.model, true) FROM @extschema@.clip_vector_columns c
     WHERE c.relation OPERATOR(pg_catalog.=) target AND c.vector_column OPERATOR(pg_catalog.=) $2
$function$;

-- <<< 0.3.0: models

-- The failure records name the URL that failed.
ALTER TABLE @extschema@.clip_backfill_failures ADD COLUMN url_sha256 pg_catalog.bytea;

-- Defaults and checks bound with schema-qualified names (as a fresh install binds them).
ALTER TABLE @extschema@.clip_backfill_failures
    ALTER COLUMN first_failed_at SET DEFAULT pg_catalog.now(),
    ALTER COLUMN last_failed_at SET DEFAULT pg_catalog.now();
ALTER TABLE @extschema@.clip_backfill_runs
    ALTER COLUMN pid SET DEFAULT pg_catalog.pg_backend_pid(),
    ALTER COLUMN started_at SET DEFAULT pg_catalog.clock_timestamp(),
    ALTER COLUMN updated_at SET DEFAULT pg_catalog.clock_timestamp(),
    DROP CONSTRAINT clip_backfill_runs_state_check,
    ADD CONSTRAINT clip_backfill_runs_state_check
        CHECK (state OPERATOR(pg_catalog.=) ANY (ARRAY['running', 'finished', 'interrupted']::pg_catalog.text[]));
ALTER TABLE @extschema@.clip_auto_embed_tables
    ALTER COLUMN enabled_at SET DEFAULT pg_catalog.now();
ALTER TABLE @extschema@.clip_auto_embed_queue
    ALTER COLUMN change_id SET DEFAULT pg_catalog.nextval('@extschema@.clip_auto_embed_change_seq'::pg_catalog.regclass),
    ALTER COLUMN queued_at SET DEFAULT pg_catalog.clock_timestamp();
ALTER TABLE @extschema@.clip_auto_embed_log
    ALTER COLUMN finished_at SET DEFAULT pg_catalog.clock_timestamp();

-- Each role sees and changes the records of the tables it owns, and no others.
ALTER TABLE @extschema@.clip_backfill_failures ENABLE ROW LEVEL SECURITY;
CREATE POLICY clip_owner ON @extschema@.clip_backfill_failures
    USING (pg_catalog.pg_has_role((SELECT c.relowner FROM pg_catalog.pg_class c
                                   WHERE c.oid OPERATOR(pg_catalog.=) relation), 'USAGE'));
ALTER TABLE @extschema@.clip_backfill_runs ENABLE ROW LEVEL SECURITY;
CREATE POLICY clip_owner ON @extschema@.clip_backfill_runs
    USING (pg_catalog.pg_has_role((SELECT c.relowner FROM pg_catalog.pg_class c
                                   WHERE c.oid OPERATOR(pg_catalog.=) relation), 'USAGE'));
ALTER TABLE @extschema@.clip_auto_embed_tables ENABLE ROW LEVEL SECURITY;
CREATE POLICY clip_owner ON @extschema@.clip_auto_embed_tables
    USING (pg_catalog.pg_has_role((SELECT c.relowner FROM pg_catalog.pg_class c
                                   WHERE c.oid OPERATOR(pg_catalog.=) relation), 'USAGE'));
ALTER TABLE @extschema@.clip_auto_embed_queue ENABLE ROW LEVEL SECURITY;
CREATE POLICY clip_owner ON @extschema@.clip_auto_embed_queue
    USING (pg_catalog.pg_has_role((SELECT c.relowner FROM pg_catalog.pg_class c
                                   WHERE c.oid OPERATOR(pg_catalog.=) relation), 'USAGE'));
ALTER TABLE @extschema@.clip_auto_embed_log ENABLE ROW LEVEL SECURITY;
CREATE POLICY clip_owner ON @extschema@.clip_auto_embed_log
    USING (pg_catalog.pg_has_role((SELECT c.relowner FROM pg_catalog.pg_class c
                                   WHERE c.oid OPERATOR(pg_catalog.=) relation), 'USAGE'));


-- The views read with the rights (and row-level security) of whoever queries them.
CREATE OR REPLACE VIEW @extschema@.clip_backfill_progress WITH (security_invoker = true) AS
SELECT r.run_id,
       r.relation,
       r.pid,
       CASE WHEN r.state OPERATOR(pg_catalog.=) 'running'
                 AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_stat_activity a
                                 WHERE a.pid OPERATOR(pg_catalog.=) r.pid
                                   AND (a.backend_start IS NULL OR a.backend_start OPERATOR(pg_catalog.<=) r.started_at)
                                   AND (a.state IS NULL OR a.state OPERATOR(pg_catalog.<>) 'idle'))
            THEN 'interrupted' ELSE r.state END AS state,
       r.started_at,
       r.updated_at,
       r.finished_at,
       r.batches,
       r.done,
       r.failed,
       GREATEST(r.total OPERATOR(pg_catalog.-) r.done OPERATOR(pg_catalog.-) r.failed, 0) AS remaining,
       CASE WHEN r.updated_at OPERATOR(pg_catalog.>) r.started_at
            THEN pg_catalog.round((r.done OPERATOR(pg_catalog.+) r.failed)::pg_catalog.numeric
                                  OPERATOR(pg_catalog./)
                                  EXTRACT(epoch FROM r.updated_at OPERATOR(pg_catalog.-) r.started_at), 2)
       END AS images_per_second,
       CASE WHEN r.state OPERATOR(pg_catalog.=) 'running' AND r.done OPERATOR(pg_catalog.+) r.failed OPERATOR(pg_catalog.>) 0
            THEN pg_catalog.date_trunc('second', (r.updated_at OPERATOR(pg_catalog.-) r.started_at)
                      OPERATOR(pg_catalog.*)
                      (GREATEST(r.total OPERATOR(pg_catalog.-) r.done OPERATOR(pg_catalog.-) r.failed, 0)::pg_catalog.float8
                       OPERATOR(pg_catalog./) (r.done OPERATOR(pg_catalog.+) r.failed)::pg_catalog.float8))
       END AS eta,
       r.model_version
FROM @extschema@.clip_backfill_runs r;
CREATE OR REPLACE VIEW @extschema@.clip_auto_embed_status WITH (security_invoker = true) AS
SELECT c.relation,
       c.url_column,
       c.vector_column,
       c.key_column,
       c.paused,
       COALESCE(ds.pending, q.pending, 0) AS pending,     -- changed rows waiting for a vector
       COALESCE(ds.lag_seconds,
                pg_catalog.round(EXTRACT(epoch FROM pg_catalog.clock_timestamp() OPERATOR(pg_catalog.-) q.oldest), 1))
           AS lag_seconds,                                -- how long the oldest of them has waited
       COALESCE(ds.retrying, q.retrying, 0) AS retrying,  -- of those, waiting to retry a transient failure
       COALESCE(ds.reembed_pending, q.reembed, 0) AS reembed_pending,  -- queued for a new model (clip_auto_embed_requeue)
       COALESCE(ds.embedded_last_minute, l.embedded, 0) AS embedded_last_minute,
       COALESCE(ds.failed, (SELECT pg_catalog.count(*) FROM @extschema@.clip_backfill_failures f
                             WHERE f.relation OPERATOR(pg_catalog.=) c.relation)) AS failed,
       CASE WHEN NOT d.distributed THEN w.pid END AS worker_pid,
       CASE WHEN d.distributed THEN ds.worker_state ELSE w.state END AS worker_state,  -- on Citus: each node's
       COALESCE(ds.last_error, c.last_error) AS last_error,
       c.last_error_at
FROM @extschema@.clip_auto_embed_tables c
CROSS JOIN LATERAL (SELECT @extschema@.clip_is_distributed(c.relation) AS distributed) d
LEFT JOIN LATERAL (SELECT pg_catalog.count(*) FILTER (WHERE NOT q.replace) AS pending,
                          pg_catalog.min(q.queued_at) FILTER (WHERE NOT q.replace) AS oldest,
                          pg_catalog.count(*) FILTER (WHERE q.not_before OPERATOR(pg_catalog.>) pg_catalog.clock_timestamp())
                              AS retrying,
                          pg_catalog.count(*) FILTER (WHERE q.replace) AS reembed
                   FROM @extschema@.clip_auto_embed_queue q
                   WHERE q.relation OPERATOR(pg_catalog.=) c.relation
                     AND q.vector_column OPERATOR(pg_catalog.=) c.vector_column) q ON true
LEFT JOIN LATERAL (SELECT pg_catalog.sum(l.embedded) AS embedded FROM @extschema@.clip_auto_embed_log l
                   WHERE l.relation OPERATOR(pg_catalog.=) c.relation
                     AND l.finished_at OPERATOR(pg_catalog.>)
                         (pg_catalog.clock_timestamp() OPERATOR(pg_catalog.-) '1 minute'::pg_catalog.interval)) l ON true
-- A distributed table's figures come from its nodes (asked only for such a table: a one-time filter).
LEFT JOIN LATERAL (SELECT s.* FROM @extschema@.clip_auto_embed_cluster_status(c.relation) s
                   WHERE d.distributed) ds ON true
CROSS JOIN @extschema@.clip_auto_embed_worker() w;
-- The table's key column (default: its single-column primary key) and whether it has a model_version
-- column; every check on the caller's names, with a SQLSTATE each. Reads the catalogs only.
CREATE OR REPLACE FUNCTION @extschema@.clip_backfill_target(
    target        regclass,
    url_column    name,
    vector_column name,
    key_column    name DEFAULT NULL,
    OUT key_name    name,
    OUT key_type    text,
    OUT has_version boolean)
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $function$
DECLARE
    columns      name[];
    vector_type  name;
    version_type text;
    wanted       name;
BEGIN
    IF target IS NULL OR url_column IS NULL OR vector_column IS NULL THEN
        RAISE EXCEPTION 'pg_clip: the table, its URL column and its vector column must be named'
            USING ERRCODE = '22004';
    END IF;
    key_name := key_column;
    IF key_name IS NULL THEN
        SELECT a.attname INTO key_name
        FROM pg_catalog.pg_index i
        JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0]
        WHERE i.indrelid = target AND i.indisprimary AND i.indnkeyatts = 1;
        IF key_name IS NULL THEN
            RAISE EXCEPTION 'pg_clip: table % has no single-column primary key', target
                USING ERRCODE = '22023',
                      HINT = 'Name a unique, non-null column with key_column => ''...''.';
        END IF;
    END IF;

    -- The columns: present, and of sensible types (read from the catalogue once). key_type is for
    -- messages: the statements on the table name the type by its OID (src/backfill/as_owner.rs).
    SELECT pg_catalog.array_agg(a.attname),
           max(t.typname) FILTER (WHERE a.attname = vector_column),
           max(pg_catalog.format_type(a.atttypid, NULL)) FILTER (WHERE a.attname = key_name),
           max(pg_catalog.format_type(a.atttypid, NULL)) FILTER (WHERE a.attname = 'model_version')
      INTO columns, vector_type, key_type, version_type
      FROM pg_catalog.pg_attribute a JOIN pg_catalog.pg_type t ON t.oid = a.atttypid
     WHERE a.attrelid = target AND a.attnum > 0 AND NOT a.attisdropped;
    FOREACH wanted IN ARRAY ARRAY[url_column, vector_column, key_name] LOOP
        IF NOT wanted = ANY (columns) THEN
            RAISE EXCEPTION 'pg_clip: column % of table % does not exist', pg_catalog.quote_ident(wanted), target
                USING ERRCODE = '42703';
        END IF;
    END LOOP;
    IF vector_type <> 'vector' THEN
        RAISE EXCEPTION 'pg_clip: column % of table % is of type %, not vector',
            pg_catalog.quote_ident(vector_column), target, vector_type USING ERRCODE = '42804';
    END IF;
    -- model_version says which model made the vectors of one column: the table's first vector column pg_clip
    -- recorded (clip_vector_columns). A column added for a move to another model leaves it alone.
    has_version := version_type IS NOT NULL
        AND NOT EXISTS (SELECT 1 FROM @extschema@.clip_vector_columns v
                         WHERE v.relation OPERATOR(pg_catalog.=) target
                           AND v.vector_column OPERATOR(pg_catalog.<>) $3
                           AND (v.recorded_at, v.vector_column::pg_catalog.text) OPERATOR(pg_catalog.<) ALL (
                               SELECT w.recorded_at, w.vector_column::pg_catalog.text
                                 FROM @extschema@.clip_vector_columns w
                                WHERE w.relation OPERATOR(pg_catalog.=) target
                                  AND w.vector_column OPERATOR(pg_catalog.=) $3));
    IF version_type IS NOT NULL AND version_type NOT IN ('text', 'character varying') THEN
        RAISE EXCEPTION 'pg_clip: column model_version of table % is not text or varchar', target
            USING ERRCODE = '42804', HINT = 'pg_clip writes the model that made each vector there.';
    END IF;
END
$function$;

-- Whether the current user may act on target as its owner (is a member of the owner's role; a superuser
-- is), and, for the work that downloads (with_urls), whether the owner may run clip_embed_urls, as
-- clip_backfill_apply will as the owner. Raises 42501 with a HINT otherwise; nothing else is done first.
CREATE OR REPLACE FUNCTION @extschema@.clip_backfill_authorize(target regclass, with_urls boolean DEFAULT false)
RETURNS void
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $function$
DECLARE
    owner oid;
BEGIN
    SELECT c.relowner INTO owner FROM pg_catalog.pg_class c WHERE c.oid = target;
    IF owner IS NULL THEN
        RAISE EXCEPTION 'pg_clip: relation % does not exist', target USING ERRCODE = '42P01';
    END IF;
    IF NOT pg_catalog.pg_has_role(owner, 'USAGE') THEN
        RAISE EXCEPTION 'pg_clip: must be owner of table %', target USING ERRCODE = '42501',
            HINT = 'pg_clip acts on a table as its owner: run this as the owner, or as a member of its role.';
    END IF;
    IF with_urls AND NOT pg_catalog.has_function_privilege(
            owner, '@extschema@.clip_embed_urls(pg_catalog.text[], pg_catalog.int4, pg_catalog.text[])', 'EXECUTE') THEN
        RAISE EXCEPTION 'pg_clip: the owner of table % (%) may not run clip_embed_urls', target, owner::regrole
            USING ERRCODE = '42501',
                  HINT = pg_catalog.format('GRANT EXECUTE ON FUNCTION clip_embed_urls(text[], integer, text[]) TO %I;',
                                           owner::regrole);
    END IF;
END
$function$;

-- What made the vectors, as written to a model_version column: the model, the precision, and the start of
-- the ONNX file's SHA-256 (two checkpoints exported under one name differ there).
CREATE OR REPLACE FUNCTION @extschema@.clip_backfill_model_version() RETURNS text
LANGUAGE sql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $function$
    SELECT i.model_version || ' ' || i.precision || ' ' || left(i.image_model_sha256, 12)
      FROM @extschema@.clip_model_info() i
$function$;

-- The SHA-256 of a URL, as clip_backfill_failures.url_sha256 keeps it.
CREATE OR REPLACE FUNCTION @extschema@.clip_backfill_url_sha256(url text) RETURNS bytea
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $function$ SELECT pg_catalog.sha256(pg_catalog.textsend(url)) $function$;

-- Step 1 for CALL clip_backfill: the next rows to do after after_key (a URL, no vector, no permanent
-- failure of their current URL on record unless retry_failed), in key order, at most batch_size; each
-- claimed (a row the auto-embed worker holds is left to it). The rows are read as the table's owner
-- (clip_backfill_pending_rows); keys and URLs come back as text. Returns the claimed keys and URLs, and
-- the last key looked at (NULL: nothing left).
CREATE OR REPLACE FUNCTION @extschema@.clip_backfill_pick(
    target        regclass,
    url_column    name,
    vector_column name,
    key_column    name,
    after_key     text,
    retry_failed  boolean,
    batch_size    bigint,
    OUT keys      text[],
    OUT urls      text[],
    OUT last_key  text)
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $function$
BEGIN
    WITH p AS MATERIALIZED (
        SELECT p.row_key, p.url, p.ord
        FROM @extschema@.clip_backfill_pending_rows(target, url_column, vector_column, key_column, after_key,
                                                    batch_size) WITH ORDINALITY AS p(row_key, url, ord)),
    -- (CASE, not AND: a row left out is never claimed.)
    c AS (SELECT p.row_key, p.url, p.ord,
                 CASE WHEN retry_failed OR NOT EXISTS (
                          SELECT 1 FROM @extschema@.clip_backfill_failures f
                           WHERE f.relation = target AND f.row_key = p.row_key AND f.permanent
                             AND (f.url_sha256 IS NULL OR f.url_sha256 = @extschema@.clip_backfill_url_sha256(p.url)))
                      THEN pg_catalog.pg_try_advisory_xact_lock(target::oid::int4, pg_catalog.hashtext(p.row_key))
                      ELSE false END AS claimed
          FROM p)
    SELECT coalesce(pg_catalog.array_agg(c.row_key ORDER BY c.ord) FILTER (WHERE c.claimed), '{}'),
           coalesce(pg_catalog.array_agg(c.url ORDER BY c.ord) FILTER (WHERE c.claimed), '{}'),
           (pg_catalog.array_agg(c.row_key ORDER BY c.ord DESC))[1]
      INTO keys, urls, last_key
      FROM c;
END
$function$;

-- Step 3: the failure records of a batch that clip_backfill_apply reported (the arrays are its output
-- columns). An embedded row leaves clip_backfill_failures; a failed one enters it with the SHA-256 of the
-- URL that failed, or counts one more attempt of that URL (a record of another URL starts over). Returns the
-- failures recorded, with their attempt counts. Bookkeeping only: the user's table is not read.
CREATE OR REPLACE FUNCTION @extschema@.clip_backfill_record(
    target      regclass,
    keys        text[],
    urls        text[],
    outcomes    text[],
    sqlstates   text[],
    errors      text[],
    statuses    integer[],
    transients  boolean[])
RETURNS TABLE (row_key text, attempts integer)
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $function$
BEGIN
    DELETE FROM @extschema@.clip_backfill_failures f
     USING ROWS FROM (pg_catalog.unnest(keys), pg_catalog.unnest(outcomes)) AS o(k, oc)
     WHERE f.relation = target AND f.row_key = o.k AND o.oc = 'embedded';
    RETURN QUERY
    INSERT INTO @extschema@.clip_backfill_failures AS f
           (relation, row_key, sqlstate, error, http_status, permanent, url_sha256)
    SELECT target, o.k, o.s, o.e, o.h, NOT coalesce(o.tr, false), @extschema@.clip_backfill_url_sha256(o.u)
    FROM ROWS FROM (pg_catalog.unnest(keys), pg_catalog.unnest(urls), pg_catalog.unnest(outcomes),
                    pg_catalog.unnest(sqlstates), pg_catalog.unnest(errors), pg_catalog.unnest(statuses),
                    pg_catalog.unnest(transients)) AS o(k, u, oc, s, e, h, tr)
    WHERE o.oc = 'failed' AND o.k IS NOT NULL
    ON CONFLICT ON CONSTRAINT clip_backfill_failures_pkey DO UPDATE
        SET sqlstate = excluded.sqlstate, error = excluded.error, http_status = excluded.http_status,
            permanent = excluded.permanent,
            attempts = CASE WHEN f.url_sha256 IS NULL OR f.url_sha256 = excluded.url_sha256
                            THEN f.attempts + 1 ELSE 1 END,
            first_failed_at = CASE WHEN f.url_sha256 IS NULL OR f.url_sha256 = excluded.url_sha256
                                   THEN f.first_failed_at ELSE now() END,
            last_failed_at = now(), url_sha256 = excluded.url_sha256
    RETURNING f.row_key, f.attempts;
END
$function$;

-- Failure records that no longer say anything about their row go: the row is gone, has no URL, has a vector
-- now, or has another URL than the one that failed (records made before 0.3.0, without the URL's SHA-256,
-- adopt the row's current URL). The rows are read as the table's owner (clip_backfill_row_states), in
-- chunks. Returns how many records went. Run by CALL clip_backfill at its start and by the auto-embed
-- worker's look for pending rows.
CREATE OR REPLACE FUNCTION @extschema@.clip_backfill_forget_stale(
    target        regclass,
    url_column    name,
    vector_column name,
    key_column    name)
RETURNS bigint
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $function$
DECLARE
    chunk     text[];
    after     text := '';
    forgotten bigint := 0;
    n         bigint;
BEGIN
    PERFORM @extschema@.clip_backfill_authorize(target);
    LOOP
        SELECT pg_catalog.array_agg(f.row_key ORDER BY f.row_key COLLATE "C") INTO chunk
          FROM (SELECT f.row_key FROM @extschema@.clip_backfill_failures f
                 WHERE f.relation = target AND f.row_key COLLATE "C" > after
                 ORDER BY f.row_key COLLATE "C" LIMIT 1000) f;
        EXIT WHEN chunk IS NULL;
        after := chunk[pg_catalog.cardinality(chunk)];
        WITH s AS MATERIALIZED (
            SELECT * FROM @extschema@.clip_backfill_row_states(target, url_column, vector_column, key_column, chunk, NULL)),
        adopted AS (
            UPDATE @extschema@.clip_backfill_failures f
               SET url_sha256 = @extschema@.clip_backfill_url_sha256(s.url)
              FROM s
             WHERE f.relation = target AND f.row_key = s.row_key AND f.url_sha256 IS NULL
               AND s.url IS NOT NULL AND NOT s.has_vector),
        gone AS (
            DELETE FROM @extschema@.clip_backfill_failures f
             WHERE f.relation = target AND f.row_key = ANY (chunk)
               AND NOT EXISTS (SELECT 1 FROM s WHERE s.row_key = f.row_key AND s.url IS NOT NULL AND NOT s.has_vector
                                 AND (f.url_sha256 IS NULL
                                      OR f.url_sha256 = @extschema@.clip_backfill_url_sha256(s.url)))
            RETURNING 1)
        SELECT count(*) INTO n FROM gone;
        forgotten := forgotten + n;
    END LOOP;
    RETURN forgotten;
END
$function$;


CREATE OR REPLACE PROCEDURE @extschema@.clip_backfill(
    target        regclass,
    url_column    name,
    vector_column name,
    key_column    name    DEFAULT NULL,   -- default: the table's single-column primary key
    batch_size    integer DEFAULT 64,     -- rows per committed batch
    concurrency   integer DEFAULT NULL,   -- downloads in flight; default and ceiling pg_clip.fetch_concurrency
    retry_failed  boolean DEFAULT false,  -- also retry rows recorded as permanent failures
    max_rows      bigint  DEFAULT NULL)   -- stop after this many rows (done + failed)
LANGUAGE plpgsql
AS $procedure$
DECLARE
    key_name      name;
    version       text;
    run           bigint;
    total         bigint;
    done          bigint := 0;
    failed        bigint := 0;
    skipped       bigint := 0;
    batch_no      integer := 0;
    started       timestamptz;
    cur_keys      text[];
    cur_urls      text[];
    next_keys     text[];
    next_urls     text[];
    last_key      text;
    o_keys        text[];
    o_urls        text[];
    o_outcomes    text[];
    o_sqlstates   text[];
    o_errors      text[];
    o_statuses    integer[];
    o_transients  boolean[];
    batch_done    bigint;
    batch_failed  bigint;
    elapsed       float8;
    rate          float8;
    remaining     bigint;
    other_pid     integer;
BEGIN
    -- No SET clause (it would forbid COMMIT): this transaction's search_path is pinned here, and each later
    -- one's right after its COMMIT, so that nothing below resolves through the caller's search_path.
    PERFORM pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true);
    started := pg_catalog.clock_timestamp();
    IF batch_size IS NULL OR batch_size < 1 THEN
        RAISE EXCEPTION 'pg_clip: batch_size must be at least 1' USING ERRCODE = '22023';
    END IF;
    IF concurrency IS NOT NULL AND concurrency < 1 THEN
        RAISE EXCEPTION 'pg_clip: concurrency must be at least 1' USING ERRCODE = '22023';
    END IF;
    SELECT d.key_name INTO key_name
      FROM @extschema@.clip_backfill_target(target, url_column, vector_column, key_column) d;
    -- The table is read and written as its owner (clip_backfill_apply), who must be allowed to fetch; the
    -- caller must be the owner, a member of its role, or a superuser.
    PERFORM @extschema@.clip_backfill_authorize(target, with_urls => true);
    -- The model in force must be the column's (and its dimensions the column's); a first run records it. A Citus
    -- table's nodes embed with their own default model: another one would fill the column with mixed vectors.
    IF @extschema@.clip_check_vector_column(target, vector_column, record => true) <> 'default'
       AND @extschema@.clip_is_distributed(target) THEN
        RAISE EXCEPTION 'pg_clip: % is distributed: its nodes embed with their default model only', target
            USING ERRCODE = '0A000',
                  HINT = 'RESET pg_clip.model, or install the model as every node''s default (pg_clip.model_path).';
    END IF;
    version := @extschema@.clip_backfill_model_version();

    -- One run per table at a time: two would walk the same rows. The transaction-level lock makes the check
    -- and the insert atomic; the run row itself marks the table busy afterwards. (The auto-embed worker is no
    -- run: the two share a table through the row claims.)
    PERFORM pg_catalog.pg_advisory_xact_lock((709402716::bigint << 32) | target::oid::bigint);
    UPDATE @extschema@.clip_backfill_runs r SET state = 'interrupted', finished_at = r.updated_at
    WHERE r.relation = target AND r.state = 'running'
      AND (r.pid = pg_catalog.pg_backend_pid()
           OR NOT EXISTS (SELECT 1 FROM pg_catalog.pg_stat_activity a
                          WHERE a.pid = r.pid
                            AND (a.backend_start IS NULL OR a.backend_start <= r.started_at)));
    SELECT r.pid INTO other_pid FROM @extschema@.clip_backfill_runs r
    WHERE r.relation = target AND r.state = 'running' LIMIT 1;
    -- A run whose backend was just terminated can linger in pg_stat_activity for a moment while it exits:
    -- give it up to 5 s to go before calling the table busy.
    FOR i IN 1..50 LOOP
        EXIT WHEN other_pid IS NULL;
        PERFORM pg_catalog.pg_stat_clear_snapshot();
        EXIT WHEN NOT EXISTS (SELECT 1 FROM pg_catalog.pg_stat_activity a WHERE a.pid = other_pid);
        PERFORM pg_catalog.pg_sleep(0.1);
    END LOOP;
    PERFORM pg_catalog.pg_stat_clear_snapshot();
    IF other_pid IS NOT NULL AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_stat_activity a WHERE a.pid = other_pid) THEN
        UPDATE @extschema@.clip_backfill_runs r SET state = 'interrupted', finished_at = r.updated_at
        WHERE r.relation = target AND r.state = 'running' AND r.pid = other_pid;
        other_pid := NULL;
    END IF;
    IF other_pid IS NOT NULL THEN
        RAISE EXCEPTION 'pg_clip: a backfill of % is already running (pid %)', target, other_pid
            USING ERRCODE = '55006', HINT = 'Wait for it, or stop it with pg_cancel_backend(' || other_pid || ').';
    END IF;

    -- A Citus table spread over nodes: the nodes that hold its shards embed them (sql/distributed.sql).
    IF @extschema@.clip_is_distributed(target) THEN
        INSERT INTO @extschema@.clip_backfill_runs (relation, total, model_version)
        VALUES (target, 0, version) RETURNING run_id INTO run;
        COMMIT;
        CALL @extschema@.clip_backfill_distributed(target, url_column, vector_column, key_name, batch_size,
                                                   concurrency, retry_failed, max_rows, run);
        RETURN;
    END IF;

    -- Failure records of rows that are gone or have another photo now say nothing: they go first, so that the
    -- permanent ones left are those of rows still waiting (the total below), each with its current URL.
    PERFORM @extschema@.clip_backfill_forget_stale(target, url_column, vector_column, key_name);
    total := @extschema@.clip_backfill_count_pending(target, url_column, vector_column, key_name);
    IF NOT retry_failed THEN
        total := total - (SELECT count(*) FROM @extschema@.clip_backfill_failures f
                           WHERE f.relation = target AND f.permanent);
    END IF;
    total := greatest(total, 0);
    IF max_rows IS NOT NULL THEN
        total := least(total, greatest(max_rows, 0));
    END IF;

    INSERT INTO @extschema@.clip_backfill_runs (relation, total, model_version)
    VALUES (target, total, version) RETURNING run_id INTO run;
    RAISE NOTICE 'clip_backfill: run % on %: % rows to embed, batches of %', run, target, total, batch_size;
    COMMIT;
    PERFORM pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true);

    SELECT p.keys, p.urls, p.last_key INTO cur_keys, cur_urls, last_key
      FROM @extschema@.clip_backfill_pick(target, url_column, vector_column, key_name, NULL, retry_failed,
                                          least(batch_size::bigint, total)) p;
    WHILE last_key IS NOT NULL LOOP
        -- The next batch is chosen now so that its downloads overlap this batch's (prefetch).
        remaining := total - done - failed - skipped - pg_catalog.cardinality(cur_keys);
        next_keys := '{}';
        next_urls := '{}';
        IF remaining > 0 THEN
            SELECT p.keys, p.urls, p.last_key INTO next_keys, next_urls, last_key
              FROM @extschema@.clip_backfill_pick(target, url_column, vector_column, key_name, last_key,
                                                  retry_failed, least(batch_size::bigint, remaining)) p;
        ELSE
            last_key := NULL;
        END IF;

        SELECT pg_catalog.array_agg(a.row_key), pg_catalog.array_agg(a.url), pg_catalog.array_agg(a.outcome),
               pg_catalog.array_agg(a.sqlstate), pg_catalog.array_agg(a.error), pg_catalog.array_agg(a.http_status),
               pg_catalog.array_agg(a.transient)
          INTO o_keys, o_urls, o_outcomes, o_sqlstates, o_errors, o_statuses, o_transients
          FROM @extschema@.clip_backfill_apply(target, url_column, vector_column, key_name, cur_keys, cur_urls,
                                               next_urls, concurrency, version) a;
        SELECT count(*) INTO batch_failed
          FROM @extschema@.clip_backfill_record(target, o_keys, o_urls, o_outcomes, o_sqlstates, o_errors,
                                                o_statuses, o_transients);
        batch_done := coalesce(pg_catalog.cardinality(pg_catalog.array_positions(o_outcomes, 'embedded')), 0);
        done := done + batch_done;
        failed := failed + batch_failed;
        skipped := skipped + coalesce(pg_catalog.cardinality(o_keys), 0) - batch_done - batch_failed;
        batch_no := batch_no + 1;
        UPDATE @extschema@.clip_backfill_runs r
        SET done = r.done + batch_done, failed = r.failed + batch_failed, batches = batch_no,
            updated_at = pg_catalog.clock_timestamp()
        WHERE r.run_id = run;
        COMMIT;
        PERFORM pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true);

        IF coalesce(pg_catalog.cardinality(o_keys), 0) > 0 THEN
            elapsed := extract(epoch FROM pg_catalog.clock_timestamp() - started);
            rate := (done + failed) / greatest(elapsed, 0.001);
            remaining := greatest(total - done - failed - skipped, 0);
            RAISE NOTICE 'clip_backfill: % done, % failed, % remaining, % images/s, ETA %',
                done, failed, remaining, round(rate::numeric, 1),
                CASE WHEN rate > 0 THEN date_trunc('second', remaining / rate * interval '1 second')::text ELSE '?' END;
        END IF;

        cur_keys := next_keys;
        cur_urls := next_urls;
    END LOOP;

    UPDATE @extschema@.clip_backfill_runs r
    SET state = 'finished', finished_at = pg_catalog.clock_timestamp(), updated_at = pg_catalog.clock_timestamp()
    WHERE r.run_id = run;
    COMMIT;
    PERFORM pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true);
    RAISE NOTICE 'clip_backfill: run % finished: % embedded, % failed% in %', run, done, failed,
        CASE WHEN skipped > 0 THEN pg_catalog.format(', %s left to the auto-embed worker or changed meanwhile', skipped)
             ELSE '' END,
        date_trunc('second', pg_catalog.clock_timestamp() - started);
END
$procedure$;

-- A restored dump brings its tables here (pg_restore loads this table's rows): their worker starts at that
-- COMMIT, so the queue it restored is worked off without waiting for the next change or server start.
CREATE OR REPLACE FUNCTION @extschema@.clip_auto_embed_tables_changed() RETURNS trigger
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $function$
BEGIN
    PERFORM @extschema@.clip_auto_embed_wake(start_worker => false);
    RETURN NULL;
END
$function$;

-- Queues the rows of target that are pending (a URL and no vector) and neither queued nor given up (a
-- permanent failure of their current URL, or a transient one retried pg_clip.auto_embed_max_attempts times);
-- returns how many. The worker runs it at every wake-up and at least every pg_clip.auto_embed_naptime: this
-- is how new and changed rows reach the queue. The rows are read as the table's owner
-- (clip_backfill_pending_rows, through the table's partial index of pending rows, in key order and in
-- chunks); their keys and URLs come back as text. On the way, failure records about other photos or rows
-- that are gone are forgotten, and so are queue entries waiting for a retry whose row wants nothing any more.
CREATE OR REPLACE FUNCTION @extschema@.clip_auto_embed_sweep(target regclass) RETURNS bigint
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $function$
DECLARE
    queued bigint := 0;
    col    name;
BEGIN
    PERFORM @extschema@.clip_backfill_authorize(target);
    FOR col IN SELECT t.vector_column FROM @extschema@.clip_auto_embed_tables t WHERE t.relation = target
               ORDER BY t.vector_column LOOP
        queued := queued + @extschema@.clip_auto_embed_sweep(target, col);
    END LOOP;
    RETURN queued;
END
$function$;

-- The triggers clip_auto_embed installs (quietly: DROP TRIGGER IF EXISTS would NOTICE each one missing).
CREATE OR REPLACE FUNCTION @extschema@.clip_auto_embed_drop_triggers(target regclass) RETURNS void
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $function$
DECLARE
    trigger name;
BEGIN
    PERFORM @extschema@.clip_backfill_authorize(target);
    FOR trigger IN SELECT t.tgname FROM pg_catalog.pg_trigger t
                   WHERE t.tgrelid = target
                     AND (t.tgname IN ('zz_clip_auto_embed_insert', 'zz_clip_auto_embed_url')
                          OR t.tgfoid = '@extschema@.clip_auto_embed_url_changed()'::pg_catalog.regprocedure) LOOP
        EXECUTE pg_catalog.format('DROP TRIGGER %I ON %s', trigger, target);
    END LOOP;
END
$function$;


CREATE OR REPLACE FUNCTION @extschema@.clip_auto_embed(
    target        regclass,
    url_column    name,
    vector_column name,
    key_column    name DEFAULT NULL)  -- default: the table's single-column primary key
RETURNS bigint                        -- rows queued now: those with a URL and no vector yet
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $function$
DECLARE
    d           record;
    kind        "char";
    relname     name;
    schema_name name;
    index_name  name;
    previous    @extschema@.clip_auto_embed_tables;
    queued      bigint;
    distributed boolean;
    others      boolean;
    trigger_name name;
    model_name  text;
BEGIN
    IF target IS NULL THEN
        RAISE EXCEPTION 'pg_clip: the table must be named' USING ERRCODE = '22004';
    END IF;
    -- Refuses (55000) unless the library is preloaded, which the worker needs; at COMMIT, starts this
    -- database's worker if it is not running.
    PERFORM @extschema@.clip_auto_embed_wake(start_worker => true);
    SELECT c.relkind, c.relname, n.nspname INTO kind, relname, schema_name
      FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = target;
    IF kind = 'p' THEN
        RAISE EXCEPTION 'pg_clip: % is a partitioned table', target USING ERRCODE = '0A000',
            HINT = 'Turn automatic embedding on for each partition.';
    ELSIF kind IS DISTINCT FROM 'r' THEN
        RAISE EXCEPTION 'pg_clip: % is not a table', target USING ERRCODE = '42809';
    END IF;
    IF NOT pg_catalog.pg_has_role((SELECT c.relowner FROM pg_catalog.pg_class c WHERE c.oid = target), 'USAGE') THEN
        RAISE EXCEPTION 'pg_clip: must be owner of table % to embed it automatically', target
            USING ERRCODE = '42501';
    END IF;
    SELECT * INTO d FROM @extschema@.clip_backfill_target(target, url_column, vector_column, key_column);
    -- The queue names a row by its key: it must be unique.
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_index i
                   JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0]
                   WHERE i.indrelid = target AND i.indisunique AND i.indnkeyatts = 1 AND i.indpred IS NULL
                     AND a.attname = d.key_name) THEN
        RAISE EXCEPTION 'pg_clip: key column % of table % is not unique', pg_catalog.quote_ident(d.key_name), target
            USING ERRCODE = '42P10', HINT = 'Name a column with a unique index, e.g. the primary key.';
    END IF;
    -- The worker reads and writes the table as its owner (src/backfill/as_owner.rs), as a CALL clip_backfill
    -- by the owner would: the owner needs the URL functions.
    PERFORM @extschema@.clip_backfill_authorize(target, with_urls => true);
    model_name := @extschema@.clip_check_vector_column(target, vector_column, record => true);

    -- A Citus table spread over nodes (sql/distributed.sql): the index and the triggers made here reach every
    -- shard, and each node's worker serves the shards it holds. Citus refuses triggers on such a table unless
    -- told they are safe there: pg_clip's are (the URL trigger changes its own row only, the INSERT trigger
    -- only wakes the worker of the node it fires on).
    distributed := @extschema@.clip_is_distributed(target);
    -- A Citus table's shards are embedded by each node's worker, with the node's default model.
    IF distributed AND model_name <> 'default' THEN
        RAISE EXCEPTION 'pg_clip: % is distributed: its nodes embed with their default model only', target
            USING ERRCODE = '0A000',
                  HINT = 'RESET pg_clip.model, or install the model as every node''s default (pg_clip.model_path).';
    END IF;
    IF distributed THEN
        PERFORM pg_catalog.set_config('citus.enable_unsafe_triggers', 'on', true);
    END IF;

    -- The partial index of pending rows, (re)made when the columns change: the worker's look for work reads
    -- it, so that the writers' INSERTs need to do nothing but wake the worker. (CREATE INDEX evaluates
    -- the predicate as the table's owner, in a security-restricted operation, as PostgreSQL always does.)
    SELECT * INTO previous FROM @extschema@.clip_auto_embed_tables t WHERE t.relation = target AND t.vector_column = $3;
    -- Another vector column of the table kept fresh already (a move to another model): this one is a second
    -- registration, with an index and a URL trigger of its own. Not on Citus in this version.
    others := EXISTS (SELECT 1 FROM @extschema@.clip_auto_embed_tables t WHERE t.relation = target AND t.vector_column <> $3);
    IF others AND distributed THEN
        RAISE EXCEPTION 'pg_clip: % (distributed) already has a vector column embedded automatically', target
            USING ERRCODE = '0A000',
                  HINT = 'On Citus, automatic embedding keeps one vector column per table fresh: fill the other one '
                         'with CALL clip_backfill.';
    END IF;
    index_name := CASE WHEN others THEN left(relname, 20) || '_' || left(vector_column, 20) || '_clip_pending'
                       ELSE left(relname, 30) || '_clip_auto_embed_pending' END;
    IF previous.pending_index IS NOT NULL AND (previous.pending_index <> index_name
            OR (previous.url_column, previous.vector_column, previous.key_column) <> (url_column, vector_column, d.key_name)) THEN
        EXECUTE pg_catalog.format('DROP INDEX IF EXISTS %I.%I', schema_name, previous.pending_index);
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_index i JOIN pg_catalog.pg_class c ON c.oid = i.indexrelid
                   WHERE i.indrelid = target AND c.relname = index_name) THEN
        EXECUTE pg_catalog.format('CREATE INDEX %I ON %s (%I) WHERE %I IS NULL AND %I IS NOT NULL',
                                  index_name, target, d.key_name, vector_column, url_column);
    END IF;

    INSERT INTO @extschema@.clip_auto_embed_tables AS t (relation, url_column, vector_column, key_column, pending_index)
    VALUES (target, url_column, vector_column, d.key_name, index_name)
    ON CONFLICT ON CONSTRAINT clip_auto_embed_tables_pkey DO UPDATE
        SET url_column = excluded.url_column, vector_column = excluded.vector_column,
            key_column = excluded.key_column, pending_index = excluded.pending_index,
            last_error = NULL, last_error_at = NULL;

    -- The triggers, (re)made with these columns. Named to fire after the table's other BEFORE triggers, so
    -- that they see the URL a normalising trigger may have rewritten. One INSERT trigger per table; one URL
    -- trigger per vector column kept fresh (told apart by the column it clears, its first argument).
    PERFORM @extschema@.clip_auto_embed_drop_url_trigger(target, vector_column);
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_trigger t
                   WHERE t.tgrelid = target AND t.tgname = 'zz_clip_auto_embed_insert') THEN
        EXECUTE pg_catalog.format(
            'CREATE TRIGGER zz_clip_auto_embed_insert AFTER INSERT ON %s FOR EACH STATEMENT '
            'EXECUTE FUNCTION @extschema@.clip_auto_embed_inserted()',
            target);
    END IF;
    trigger_name := CASE WHEN EXISTS (SELECT 1 FROM pg_catalog.pg_trigger t
                                      WHERE t.tgrelid = target AND t.tgname = 'zz_clip_auto_embed_url')
                         THEN left('zz_clip_auto_embed_url_for_' || vector_column, 63)
                         ELSE 'zz_clip_auto_embed_url' END;
    -- (The WHEN compares URLs only, text with text, with pg_catalog's operator; whether the vector was
    -- written too is for the function to tell: a comparison of vectors here would need pgvector's = operator,
    -- which pg_dump cannot qualify in a trigger's WHEN.)
    EXECUTE pg_catalog.format(
        'CREATE TRIGGER %6$I BEFORE UPDATE OF %2$I ON %1$s FOR EACH ROW '
        'WHEN (OLD.%2$I::pg_catalog.text IS DISTINCT FROM NEW.%2$I::pg_catalog.text) '
        'EXECUTE FUNCTION @extschema@.clip_auto_embed_url_changed(%3$L, %4$L, %5$L)',
        target, url_column, vector_column, d.key_name,
        CASE WHEN d.has_version THEN 'model_version' ELSE '' END, trigger_name);

    IF distributed THEN
        -- The nodes' workers find the shards' triggers once this transaction commits; the rows they will
        -- queue are those pending now.
        queued := @extschema@.clip_distributed_pending(target, url_column, vector_column, d.key_name);
        RAISE NOTICE 'clip_auto_embed: % (distributed) is embedded automatically from now on, by the worker of '
                     'each node that holds its shards; % rows pending', target, queued;
        RETURN queued;
    END IF;
    queued := @extschema@.clip_auto_embed_sweep(target, vector_column);
    RAISE NOTICE 'clip_auto_embed: %.% is embedded automatically from now on; % rows queued', target,
        pg_catalog.quote_ident(vector_column), queued;
    RETURN queued;
END
$function$;


CREATE OR REPLACE FUNCTION @extschema@.clip_auto_embed_stop(target regclass) RETURNS boolean
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $function$
DECLARE
    schema_name name;
    index_name  name;
    was_on      boolean;
BEGIN
    PERFORM @extschema@.clip_backfill_authorize(target);
    -- A distributed table: the triggers and the index go from every shard with them; each node's worker
    -- forgets its shards (their queue and records) when it sees their trigger gone, within a naptime.
    IF @extschema@.clip_is_distributed(target) THEN
        PERFORM pg_catalog.set_config('citus.enable_unsafe_triggers', 'on', true);
    END IF;
    SELECT n.nspname INTO schema_name
      FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = target;
    was_on := false;
    FOR index_name IN DELETE FROM @extschema@.clip_auto_embed_tables t WHERE t.relation = target
                      RETURNING t.pending_index LOOP
        was_on := true;
        IF index_name IS NOT NULL THEN
            EXECUTE pg_catalog.format('DROP INDEX IF EXISTS %I.%I', schema_name, index_name);
        END IF;
    END LOOP;
    PERFORM @extschema@.clip_auto_embed_drop_triggers(target);
    DELETE FROM @extschema@.clip_auto_embed_queue q WHERE q.relation = target;
    DELETE FROM @extschema@.clip_auto_embed_log l WHERE l.relation = target;
    -- The worker looks again at COMMIT, and goes when no table is left.
    PERFORM @extschema@.clip_auto_embed_wake(start_worker => false);
    RETURN was_on;
END
$function$;

-- Pausing keeps the triggers (changes are still queued) and lets the worker leave the table alone, for a
-- bulk load or while the photo host is down.
CREATE OR REPLACE FUNCTION @extschema@.clip_auto_embed_pause(target regclass, paused boolean DEFAULT true) RETURNS boolean
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $function$
BEGIN
    PERFORM @extschema@.clip_backfill_authorize(target);
    UPDATE @extschema@.clip_auto_embed_tables t SET paused = clip_auto_embed_pause.paused
     WHERE t.relation = target;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'pg_clip: % is not embedded automatically', target USING ERRCODE = '55000',
            HINT = 'Turn it on with clip_auto_embed().';
    END IF;
    -- A distributed table: its shards are served by the nodes' workers (sql/distributed.sql).
    IF @extschema@.clip_is_distributed(target) THEN
        PERFORM @extschema@.clip_auto_embed_on_nodes(target, 'pause', paused);
        RETURN paused;
    END IF;
    PERFORM @extschema@.clip_auto_embed_wake(start_worker => false);
    RETURN paused;
END
$function$;

-- The rows that failed (recorded in clip_backfill_failures, permanent or retried until given up) go back in
-- the queue, with their attempts counted from zero. Returns how many.
CREATE OR REPLACE FUNCTION @extschema@.clip_auto_embed_retry(target regclass) RETURNS bigint
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $function$
DECLARE
    queued bigint;
BEGIN
    PERFORM @extschema@.clip_backfill_authorize(target);
    IF NOT EXISTS (SELECT 1 FROM @extschema@.clip_auto_embed_tables t WHERE t.relation = target) THEN
        RAISE EXCEPTION 'pg_clip: % is not embedded automatically', target USING ERRCODE = '55000',
            HINT = 'Turn it on with clip_auto_embed(), or run CALL clip_backfill(..., retry_failed => true).';
    END IF;
    IF @extschema@.clip_is_distributed(target) THEN
        -- The nodes queue their records' rows; the coordinator's copies of the records go.
        DELETE FROM @extschema@.clip_backfill_failures f WHERE f.relation = target;
        RETURN @extschema@.clip_auto_embed_on_nodes(target, 'retry');
    END IF;
    WITH f AS (DELETE FROM @extschema@.clip_backfill_failures f WHERE f.relation = target RETURNING f.row_key),
         q AS (INSERT INTO @extschema@.clip_auto_embed_queue (relation, vector_column, row_key)
               SELECT target, t.vector_column, f.row_key FROM f
               CROSS JOIN @extschema@.clip_auto_embed_tables t WHERE t.relation = target
               ON CONFLICT ON CONSTRAINT clip_auto_embed_queue_pkey DO UPDATE SET not_before = NULL
               RETURNING 1)
    SELECT count(*) INTO queued FROM q;
    PERFORM @extschema@.clip_auto_embed_wake(start_worker => false);
    RETURN queued;
END
$function$;

-- After a model change: queues the rows whose model_version is not the model in force (nor one of
-- keep_versions), to be re-embedded in the background. Their old vectors keep serving search until each is
-- replaced; fresh changes go first. The rows are read as the table's owner (clip_backfill_outdated_rows),
-- in chunks. Returns how many.
CREATE OR REPLACE FUNCTION @extschema@.clip_auto_embed_requeue(target regclass, keep_versions text[] DEFAULT '{}')
RETURNS bigint
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $function$
DECLARE
    c          @extschema@.clip_auto_embed_tables;
    d          record;
    version    text;
    chunk_size constant integer := 10000;
    after      text;
    keys       text[];
    n          bigint;
    queued     bigint := 0;
    found_one  boolean := false;
BEGIN
    PERFORM @extschema@.clip_backfill_authorize(target);
    IF NOT EXISTS (SELECT 1 FROM @extschema@.clip_auto_embed_tables t WHERE t.relation = target) THEN
        RAISE EXCEPTION 'pg_clip: % is not embedded automatically', target USING ERRCODE = '55000',
            HINT = 'Turn it on with clip_auto_embed().';
    END IF;
    IF @extschema@.clip_is_distributed(target) THEN
        RETURN @extschema@.clip_auto_embed_on_nodes(target, 'requeue', keep_versions => keep_versions);
    END IF;
    -- The column model_version describes (clip_backfill_target), with the model recorded for it: that model's
    -- files may have been replaced (a new checkpoint under the same name), which is what a requeue is for.
    FOR c IN SELECT * FROM @extschema@.clip_auto_embed_tables t WHERE t.relation = target ORDER BY t.vector_column LOOP
        SELECT * INTO d FROM @extschema@.clip_backfill_target(target, c.url_column, c.vector_column, c.key_column);
        CONTINUE WHEN NOT d.has_version;
        found_one := true;
        PERFORM @extschema@.clip_use_vector_column_model(target, c.vector_column);
        version := @extschema@.clip_backfill_model_version();
        -- The column is being refilled with the model's current version: searches with it are right again.
        UPDATE @extschema@.clip_vector_columns v SET model_version = i.model_version, dimensions = i.dimensions
          FROM @extschema@.clip_model_info() i
         WHERE v.relation = target AND v.vector_column = c.vector_column;
        LOOP
            SELECT pg_catalog.array_agg(p.row_key ORDER BY p.ord) INTO keys
              FROM @extschema@.clip_backfill_outdated_rows(target, c.url_column, c.vector_column, c.key_column, version,
                                                           coalesce(keep_versions, '{}'), after, chunk_size)
                   WITH ORDINALITY AS p(row_key, url, ord);
            EXIT WHEN keys IS NULL;
            after := keys[pg_catalog.cardinality(keys)];
            WITH q AS (INSERT INTO @extschema@.clip_auto_embed_queue (relation, vector_column, row_key, replace)
                       SELECT target, c.vector_column, k, true
                         FROM pg_catalog.unnest(keys) WITH ORDINALITY AS u(k, n) ORDER BY u.n
                       ON CONFLICT ON CONSTRAINT clip_auto_embed_queue_pkey DO NOTHING RETURNING 1)
            SELECT count(*) INTO n FROM q;
            queued := queued + n;
            EXIT WHEN pg_catalog.cardinality(keys) < chunk_size;
        END LOOP;
    END LOOP;
    IF NOT found_one THEN
        RAISE EXCEPTION 'pg_clip: table % has no model_version column', target USING ERRCODE = '42703',
            HINT = 'Without it pg_clip cannot tell which model made a vector.';
    END IF;
    PERFORM @extschema@.clip_auto_embed_wake(start_worker => false);
    RETURN queued;
END
$function$;

-- The worker's step 1: up to batch_size due entries of target, fresh changes first, oldest first, skipping
-- the keys of the batch the worker has in hand; each claimed (a row CALL clip_backfill holds is left for
-- now). Entries with nothing left to do (the row is gone, has no URL, or already has a vector, unless it is
-- a re-embed for a model change) are settled on the way. The rows are read as the table's owner
-- (clip_backfill_row_states).
CREATE OR REPLACE FUNCTION @extschema@.clip_auto_embed_pick(
    target     regclass,
    exclude    text[],
    batch_size integer,
    version    text,               -- the model in force (clip_backfill_model_version()), for re-embeds
    only_keys  text[] DEFAULT NULL, -- just these keys (the worker retrying a failed batch row by row)
    vector_column name DEFAULT NULL) -- which of the table's columns kept fresh (NULL: its only one)
RETURNS TABLE (row_key text, change_id bigint, url text, replace boolean)
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $function$
DECLARE
    c            @extschema@.clip_auto_embed_tables;
    cand_keys    text[];
    cand_changes bigint[];
    cand_replace boolean[];
BEGIN
    SELECT * INTO STRICT c FROM @extschema@.clip_auto_embed_tables t
     WHERE t.relation = target AND (clip_auto_embed_pick.vector_column IS NULL
                                    OR t.vector_column = clip_auto_embed_pick.vector_column);
    SELECT pg_catalog.array_agg(q.row_key ORDER BY q.replace, q.change_id),
           pg_catalog.array_agg(q.change_id ORDER BY q.replace, q.change_id),
           pg_catalog.array_agg(q.replace ORDER BY q.replace, q.change_id)
      INTO cand_keys, cand_changes, cand_replace
      FROM (SELECT q.row_key, q.change_id, q.replace FROM @extschema@.clip_auto_embed_queue q
             WHERE q.relation = target AND q.vector_column = c.vector_column
               AND (q.not_before IS NULL OR q.not_before <= pg_catalog.clock_timestamp())
               AND NOT q.row_key = ANY (coalesce(exclude, '{}')) AND (only_keys IS NULL OR q.row_key = ANY (only_keys))
             ORDER BY q.replace, q.change_id LIMIT batch_size) q;
    IF cand_keys IS NULL THEN
        RETURN;
    END IF;
    RETURN QUERY
    WITH s AS MATERIALIZED (
        SELECT * FROM @extschema@.clip_backfill_row_states(target, c.url_column, c.vector_column, c.key_column,
                                                           cand_keys, version)),
    st AS MATERIALIZED (
        SELECT o.k, o.ch, o.r, o.ord, s.url,
               coalesce(s.url IS NOT NULL AND (NOT s.has_vector OR (o.r AND s.other_version)), false) AS pending
        FROM ROWS FROM (pg_catalog.unnest(cand_keys), pg_catalog.unnest(cand_changes), pg_catalog.unnest(cand_replace))
             WITH ORDINALITY AS o(k, ch, r, ord)
        LEFT JOIN s ON s.row_key = o.k),
    settled AS (DELETE FROM @extschema@.clip_auto_embed_queue q USING st
                WHERE NOT st.pending AND q.relation = target AND q.vector_column = c.vector_column
                  AND q.row_key = st.k AND q.change_id = st.ch)
    SELECT st.k, st.ch, st.url, st.r FROM st
    WHERE CASE WHEN st.pending
               THEN pg_catalog.pg_try_advisory_xact_lock(target::oid::int4, pg_catalog.hashtext(st.k))
               ELSE false END
    ORDER BY st.ord;
END
$function$;

-- The worker's step 3, after clip_backfill_apply: failures recorded (clip_backfill_record), and each
-- entry settled unless its row changed again meanwhile (another change_id): embedded rows and permanent
-- failures leave the queue; a transient failure waits retry_delay x 4^(attempts - 1) and is given up after
-- max_attempts (it stays in clip_backfill_failures for a person: clip_auto_embed_retry); a skipped row
-- (claimed elsewhere, locked by a user's transaction) is looked at again a second later. Bookkeeping only.
CREATE OR REPLACE FUNCTION @extschema@.clip_auto_embed_settle(
    target       regclass,
    keys         text[],
    change_ids   bigint[],
    urls         text[],
    outcomes     text[],
    sqlstates    text[],
    errors       text[],
    statuses     integer[],
    transients   boolean[],
    max_attempts integer,
    retry_delay  interval,
    seconds      float8)
RETURNS TABLE (embedded integer, failed integer, retrying integer)
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $function$
BEGIN
    -- One statement: the failure records (with their attempt counts), then the queue. The DELETE and the
    -- UPDATE touch disjoint entries, so that they may share the statement.
    RETURN QUERY
    WITH r AS MATERIALIZED (
        SELECT * FROM @extschema@.clip_backfill_record(target, keys, urls, outcomes, sqlstates, errors, statuses,
                                                       transients)),
    o AS MATERIALIZED (
        SELECT o.k, o.c, o.oc, coalesce(o.tr, false) AS transient, r.attempts,
               o.oc = 'embedded'
               OR (o.oc = 'failed' AND (NOT coalesce(o.tr, false) OR coalesce(r.attempts, max_attempts) >= max_attempts))
                   AS done
        FROM ROWS FROM (pg_catalog.unnest(keys), pg_catalog.unnest(change_ids), pg_catalog.unnest(outcomes),
                        pg_catalog.unnest(transients)) AS o(k, c, oc, tr)
        LEFT JOIN r ON r.row_key = o.k),
    done AS (
        DELETE FROM @extschema@.clip_auto_embed_queue q USING o
        WHERE q.relation = target AND q.row_key = o.k AND q.change_id = o.c AND o.done),
    later AS (
        UPDATE @extschema@.clip_auto_embed_queue q
           SET not_before = pg_catalog.clock_timestamp()
                            + CASE WHEN o.oc = 'failed' THEN retry_delay * 4 ^ least(o.attempts - 1, 8)
                                   ELSE interval '1 second' END
          FROM o
         WHERE q.relation = target AND q.row_key = o.k AND q.change_id = o.c AND NOT o.done),
    logged AS (
        INSERT INTO @extschema@.clip_auto_embed_log (relation, embedded, failed, seconds)
        SELECT target, count(*) FILTER (WHERE o.oc = 'embedded'), count(*) FILTER (WHERE o.oc = 'failed'), seconds
        FROM o)
    SELECT (count(*) FILTER (WHERE o.oc = 'embedded'))::integer,
           (count(*) FILTER (WHERE o.oc = 'failed' AND o.attempts IS NOT NULL))::integer,
           (count(*) FILTER (WHERE o.oc = 'failed' AND NOT o.done))::integer
    FROM o;
    DELETE FROM @extschema@.clip_auto_embed_log l
     WHERE l.relation = target AND l.finished_at < pg_catalog.clock_timestamp() - interval '1 hour';
END
$function$;

-- Lets a role embed the tables it owns from their URLs, by CALL clip_backfill and automatically: the URL
-- functions, the procedure, the auto-embed functions, and pg_clip's bookkeeping tables, where row-level
-- security shows it the records of the tables it owns and no others. For a superuser to run once per role
-- (e.g. the application's owner role); REVOKE the same privileges to undo it.
CREATE OR REPLACE FUNCTION @extschema@.clip_grant_backfill(role regrole) RETURNS void
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $function$
DECLARE
    object      text;
    coordinator boolean;
    names       text[];
    ports       integer[];
    answer      record;
BEGIN
    FOREACH object IN ARRAY ARRAY[
        'FUNCTION @extschema@.clip_embed_url(text)',
        'FUNCTION @extschema@.clip_try_embed_url(text)',
        'FUNCTION @extschema@.clip_embed_urls(text[], integer, text[])',
        'PROCEDURE @extschema@.clip_backfill(regclass, name, name, name, integer, integer, boolean, bigint)',
        'FUNCTION @extschema@.clip_auto_embed(regclass, name, name, name)',
        'FUNCTION @extschema@.clip_auto_embed_stop(regclass)',
        'FUNCTION @extschema@.clip_auto_embed_stop(regclass, name)',
        'FUNCTION @extschema@.clip_auto_embed_pause(regclass, boolean)',
        'FUNCTION @extschema@.clip_auto_embed_retry(regclass)',
        'FUNCTION @extschema@.clip_auto_embed_requeue(regclass, text[])',
        'FUNCTION @extschema@.clip_auto_embed_sweep(regclass)',
        'FUNCTION @extschema@.clip_auto_embed_sweep(regclass, name)',
        'FUNCTION @extschema@.clip_auto_embed_drop_url_trigger(regclass, name)',
        'FUNCTION @extschema@.clip_auto_embed_drop_triggers(regclass)',
        'FUNCTION @extschema@.clip_auto_embed_wake(boolean)',
        -- Citus (sql/distributed.sql): the steps of a distributed table's backfill and automatic embedding.
        'PROCEDURE @extschema@.clip_backfill_node(text[], name, name, name, integer, integer, boolean, bigint, boolean, jsonb)',
        'PROCEDURE @extschema@.clip_backfill_distributed(regclass, name, name, name, integer, integer, boolean, bigint, bigint)',
        'FUNCTION @extschema@.clip_distributed_pending(regclass, name, name, name)',
        'FUNCTION @extschema@.clip_auto_embed_discover()',
        'FUNCTION @extschema@.clip_auto_embed_on_nodes(regclass, text, boolean, text[])',
        'FUNCTION @extschema@.clip_auto_embed_shard_action(text[], text, boolean, text[])'] LOOP
        EXECUTE pg_catalog.format('GRANT EXECUTE ON %s TO %s', object, role);
    END LOOP;
    EXECUTE pg_catalog.format(
        'GRANT SELECT, INSERT, UPDATE, DELETE ON @extschema@.clip_backfill_failures, @extschema@.clip_backfill_runs, '
        '@extschema@.clip_auto_embed_tables, @extschema@.clip_auto_embed_queue, @extschema@.clip_auto_embed_log TO %s', role);
    EXECUTE pg_catalog.format(
        'GRANT USAGE ON SEQUENCE @extschema@.clip_backfill_runs_run_id_seq, @extschema@.clip_auto_embed_change_seq TO %s', role);
    EXECUTE pg_catalog.format(
        'GRANT SELECT ON @extschema@.clip_backfill_progress, @extschema@.clip_auto_embed_status TO %s', role);
    -- On a Citus coordinator, the same on every other node: the role is there (Citus makes roles on every
    -- node), but Citus does not carry GRANTs on an extension's objects. The nodes' own calls end here.
    IF pg_catalog.to_regclass('pg_catalog.pg_dist_local_group') IS NOT NULL THEN
        EXECUTE 'SELECT g.groupid OPERATOR(pg_catalog.=) 0 FROM pg_catalog.pg_dist_local_group g' INTO coordinator;
        IF coordinator THEN
            SELECT pg_catalog.array_agg(c.node_name), pg_catalog.array_agg(c.node_port) INTO names, ports
              FROM @extschema@.clip_citus_nodes() c WHERE c.group_id OPERATOR(pg_catalog.<>) 0;
            IF names IS NOT NULL THEN
                FOR answer IN EXECUTE
                    'SELECT r.node_name, r.node_port, r.success, r.result
                       FROM pg_catalog.master_run_on_worker($1, $2, pg_catalog.array_fill($3, ARRAY[pg_catalog.cardinality($1)]), true) r'
                    USING names, ports,
                          pg_catalog.format('SELECT %I.clip_grant_backfill(%L::pg_catalog.regrole)', '@extschema@', role::text)
                LOOP
                    IF NOT answer.success THEN
                        RAISE EXCEPTION 'pg_clip: could not grant the backfill to % on node %:%: %', role,
                            answer.node_name, answer.node_port, answer.result
                            USING ERRCODE = '08006', HINT = 'Bring the node back and run clip_grant_backfill again.';
                    END IF;
                END LOOP;
            END IF;
        END IF;
    END IF;
END
$function$;

-- >>> 0.3.0: privileges of the functions above
REVOKE EXECUTE ON FUNCTION @extschema@.clip_auto_embed_stop(regclass, name) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION @extschema@.clip_auto_embed_sweep(regclass, name) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION @extschema@.clip_auto_embed_drop_url_trigger(regclass, name) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION @extschema@.clip_auto_embed_pick(regclass, text[], integer, text, text[], name) FROM PUBLIC;
-- <<< 0.3.0: privileges
