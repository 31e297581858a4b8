-- Automatic embedding: SELECT clip_auto_embed('products', 'image_url', 'image_embedding') keeps a table's
-- vectors fresh by itself. A background worker of pg_clip's own (src/backfill/worker.rs), woken at the COMMIT
-- of every change, embeds the table's pending rows with the engine clip_backfill uses (sql/backfill.sql:
-- claims, clip_backfill_apply, clip_backfill_record).
--
-- A row is pending when it has a URL and no vector: that state, kept in the row itself, is the truth, so
-- nothing is lost whatever happens to the worker. What counts as a change: an INSERT (with a URL and no
-- vector, the row is pending); an UPDATE that sets, changes or clears the URL without also writing the
-- vector, which clears the vector in the same statement, so the old photo's vector never outlives the
-- transaction that replaced the photo. Anything else (other columns, the same URL again) costs the UPDATE OF
-- trigger's WHEN test and nothing more.
--
-- Writers pay little: the INSERT trigger fires once per statement and only asks for the wake-up; a partial
-- index on the table's key (WHERE vector IS NULL AND url IS NOT NULL) lets the worker find the pending rows
-- at once. The worker copies them into its queue, which holds what the rows cannot: retry times after a
-- transient failure, re-embeds after a model change, and when each change was found (the status view's lag).
-- The same look finds rows written with the triggers off (COPY with session_replication_role = replica).
--
-- Security, as in sql/backfill.sql: the worker connects as the bootstrap superuser, but whatever reads or
-- writes a user's table runs in src/backfill/as_owner.rs as the table's owner, in a security-restricted
-- operation; the functions here do bookkeeping on pg_clip's own tables with built-in types only, each with
-- search_path = pg_catalog, pg_temp, and check that their caller owns the table it names. Row-level security
-- keeps each owner's settings, queue and log to itself.

-- Which tables are served, with which columns: one row per vector column kept fresh (a table moving to another
-- model has two, each filled by its own model, see clip_vector_columns). pg_dump keeps it with the extension.
CREATE TABLE @extschema@.clip_auto_embed_tables (
    relation      pg_catalog.regclass    NOT NULL,
    url_column    pg_catalog.name        NOT NULL,
    vector_column pg_catalog.name        NOT NULL,
    key_column    pg_catalog.name        NOT NULL,
    paused        pg_catalog.bool        NOT NULL DEFAULT false,  -- changes are queued, the worker leaves them
    enabled_at    pg_catalog.timestamptz NOT NULL DEFAULT pg_catalog.now(),
    enabled_by    pg_catalog.name        NOT NULL DEFAULT CURRENT_USER,
    pending_index pg_catalog.name,                                -- the partial index clip_auto_embed made
    last_sweep_at pg_catalog.timestamptz,                         -- the worker's last look for pending rows
    last_error    pg_catalog.text,                                -- the worker's last error on this table, and when
    last_error_at pg_catalog.timestamptz,
    PRIMARY KEY (relation, vector_column)
);
COMMENT ON TABLE @extschema@.clip_auto_embed_tables IS
    'pg_clip: tables whose vectors the auto-embed worker keeps fresh (clip_auto_embed)';

-- The rows waiting for a vector, as the worker found them. change_id orders the work and tells that an entry
-- was made again while the worker had it: the worker settles an entry only if its change_id is still the one
-- it picked.
CREATE SEQUENCE @extschema@.clip_auto_embed_change_seq;
CREATE TABLE @extschema@.clip_auto_embed_queue (
    relation   pg_catalog.regclass    NOT NULL,
    row_key    pg_catalog.text        NOT NULL,
    change_id  pg_catalog.int8        NOT NULL
        DEFAULT pg_catalog.nextval('@extschema@.clip_auto_embed_change_seq'::pg_catalog.regclass),
    queued_at  pg_catalog.timestamptz NOT NULL DEFAULT pg_catalog.clock_timestamp(),  -- when the worker found the change
    replace    pg_catalog.bool        NOT NULL DEFAULT false,  -- re-embed although the row has a vector (model changed)
    not_before pg_catalog.timestamptz,                         -- after a transient failure: retry from then on
    vector_column pg_catalog.name     NOT NULL,                -- the column the row waits for
    PRIMARY KEY (relation, vector_column, row_key)
);
-- Fresh changes before model re-embeds, each in change order.
CREATE INDEX clip_auto_embed_queue_order ON @extschema@.clip_auto_embed_queue (relation, vector_column, replace, change_id);
COMMENT ON TABLE @extschema@.clip_auto_embed_queue IS
    'pg_clip: rows the auto-embed worker has still to embed';

-- What the worker did, per batch, for the status view's "embedded in the last minute". An hour is kept.
CREATE TABLE @extschema@.clip_auto_embed_log (
    relation    pg_catalog.regclass    NOT NULL,
    finished_at pg_catalog.timestamptz NOT NULL DEFAULT pg_catalog.clock_timestamp(),
    embedded    pg_catalog.int4        NOT NULL,
    failed      pg_catalog.int4        NOT NULL,
    seconds     pg_catalog.float8      NOT NULL,
    vector_column pg_catalog.name                                  -- the column embedded
);
CREATE INDEX clip_auto_embed_log_recent ON @extschema@.clip_auto_embed_log (relation, finished_at);

-- Each role sees and changes the rows of the tables it owns, and no others (as clip_backfill_failures; the
-- worker and superusers see everything).
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

-- A restored dump brings its tables here (pg_restore loads this table's rows): their worker starts at that
-- COMMIT, so the queue it restored is worked off without waiting for the next change or server start.
CREATE FUNCTION @extschema@.clip_auto_embed_tables_changed() RETURNS trigger
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $function$
BEGIN
    PERFORM @extschema@.clip_auto_embed_wake(start_worker => false);
    RETURN NULL;
END
$function$;
CREATE TRIGGER wake_worker AFTER INSERT ON @extschema@.clip_auto_embed_tables
    FOR EACH STATEMENT EXECUTE FUNCTION @extschema@.clip_auto_embed_tables_changed();

SELECT pg_catalog.pg_extension_config_dump('@extschema@.clip_auto_embed_tables', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.clip_auto_embed_queue', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.clip_auto_embed_change_seq', '');

-- Queues the rows of target that are pending (a URL and no vector) and neither queued nor given up (a
-- permanent failure of their current URL, or a transient one retried pg_clip.auto_embed_max_attempts times);
-- returns how many. The worker runs it at every wake-up and at least every pg_clip.auto_embed_naptime: this
-- is how new and changed rows reach the queue. The rows are read as the table's owner
-- (clip_backfill_pending_rows, through the table's partial index of pending rows, in key order and in
-- chunks); their keys and URLs come back as text. On the way, failure records about other photos or rows
-- that are gone are forgotten, and so are queue entries waiting for a retry whose row wants nothing any more.
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

-- Every vector column of target kept fresh: the sum.
CREATE FUNCTION @extschema@.clip_auto_embed_sweep(target regclass) RETURNS bigint
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
CREATE FUNCTION @extschema@.clip_auto_embed_drop_triggers(target regclass) RETURNS void
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

-- The URL trigger that clears vector_column (its first argument), if target has one.
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

CREATE FUNCTION @extschema@.clip_auto_embed(
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

CREATE FUNCTION @extschema@.clip_auto_embed_stop(target regclass) RETURNS boolean
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

-- Stops keeping one vector column of target fresh (the end of a move to another model: the old column), the
-- others going on. Its index, URL trigger and queue go; its vectors and failure records stay. The last one is
-- clip_auto_embed_stop(target).
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

-- Pausing keeps the triggers (changes are still queued) and lets the worker leave the table alone, for a
-- bulk load or while the photo host is down.
CREATE FUNCTION @extschema@.clip_auto_embed_pause(target regclass, paused boolean DEFAULT true) RETURNS boolean
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
CREATE FUNCTION @extschema@.clip_auto_embed_retry(target regclass) RETURNS bigint
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
CREATE FUNCTION @extschema@.clip_auto_embed_requeue(target regclass, keep_versions text[] DEFAULT '{}')
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
CREATE FUNCTION @extschema@.clip_auto_embed_pick(
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
CREATE FUNCTION @extschema@.clip_auto_embed_settle(
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

-- One row per table (per vector column, for a table with two) that is embedded automatically. security_invoker: read with the rights (and row-level
-- security) of whoever queries it, so that an owner sees its own tables only. Bound here, schema-qualified.
CREATE VIEW @extschema@.clip_auto_embed_status WITH (security_invoker = true) AS
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
COMMENT ON VIEW @extschema@.clip_auto_embed_status IS
    'pg_clip: per table embedded automatically: pending rows, lag, rate, failures, the worker';

-- Lets a role embed the tables it owns from their URLs, by CALL clip_backfill and automatically: the URL
-- functions, the procedure, the auto-embed functions, and pg_clip's bookkeeping tables, where row-level
-- security shows it the records of the tables it owns and no others. For a superuser to run once per role
-- (e.g. the application's owner role); REVOKE the same privileges to undo it.
CREATE FUNCTION @extschema@.clip_grant_backfill(role regrole) RETURNS void
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

-- Not for every role, like the URL functions they drive (README, "Security"). The worker's own steps
-- (pick, settle) are for the worker, which connects as a superuser. The status view and the worker function
-- say nothing secret; the view is granted as the backfill's progress view is: not at all.
REVOKE EXECUTE ON FUNCTION @extschema@.clip_auto_embed(regclass, name, name, name) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION @extschema@.clip_auto_embed_stop(regclass) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION @extschema@.clip_auto_embed_stop(regclass, name) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION @extschema@.clip_auto_embed_pause(regclass, boolean) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION @extschema@.clip_auto_embed_retry(regclass) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION @extschema@.clip_auto_embed_requeue(regclass, text[]) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION @extschema@.clip_auto_embed_sweep(regclass) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION @extschema@.clip_auto_embed_sweep(regclass, name) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION @extschema@.clip_auto_embed_drop_url_trigger(regclass, name) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION @extschema@.clip_auto_embed_drop_triggers(regclass) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION @extschema@.clip_auto_embed_pick(regclass, text[], integer, text, text[], name) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION @extschema@.clip_auto_embed_settle(regclass, text[], bigint[], text[], text[], text[],
                                                              text[], integer[], boolean[], integer, interval, float8)
    FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION @extschema@.clip_auto_embed_wake(boolean) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION @extschema@.clip_grant_backfill(regrole) FROM PUBLIC;
