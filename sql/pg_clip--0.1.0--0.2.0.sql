-- pg_clip 0.1.0 -> 0.2.0: automatic embedding (a background worker, its triggers, queue and status), the
-- backfill's batch as shared engine steps, and what the other 0.2.0 changes add. Run by
-- ALTER EXTENSION pg_clip UPDATE; the upgrade test (tests/clients/test_lifecycle.py) compares the result
-- with a fresh CREATE EXTENSION, object by object.
\echo Use "ALTER EXTENSION pg_clip UPDATE" to load this file. \quit

CREATE FUNCTION "clip_auto_embed_wake"(
	"start_worker" bool /* bool */
) RETURNS void
STRICT VOLATILE PARALLEL UNSAFE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'clip_auto_embed_wake_wrapper';

CREATE FUNCTION "clip_auto_embed_worker"() RETURNS TABLE (
	"pid" INT,  /* Option < i32 > */
	"state" TEXT,  /* Option < String > */
	"started_at" timestamp with time zone  /* Option < pgrx :: datum :: TimestampWithTimeZone > */
)
STRICT VOLATILE PARALLEL SAFE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'clip_auto_embed_worker_wrapper';

-- clip_model_info: its result changed; DROP and CREATE (OUT columns cannot be replaced).
DROP FUNCTION @extschema@."clip_model_info"();
CREATE FUNCTION "clip_model_info"() RETURNS TABLE (
	"model_name" TEXT,  /* String */
	"model_version" TEXT,  /* String */
	"dimensions" INT,  /* i32 */
	"random_weights" bool,  /* bool */
	"model_path" TEXT,  /* String */
	"image_model_file" TEXT,  /* String */
	"image_model_sha256" TEXT,  /* String */
	"loaded" bool,  /* bool */
	"load_ms" double precision,  /* Option < f64 > */
	"onnxruntime_path" TEXT,  /* String */
	"onnxruntime_version" TEXT,  /* Option < String > */
	"intra_op_threads" INT,  /* i32 */
	"inferences" bigint,  /* i64 */
	"cache_hits" bigint,  /* i64 */
	"preprocess_ms_total" double precision,  /* f64 */
	"inference_ms_total" double precision,  /* f64 */
	"text_loaded" bool,  /* bool */
	"precision" TEXT,  /* String */
	"load_mode" TEXT,  /* Option < String > */
	"load_note" TEXT,  /* Option < String > */
	"prepared_path" TEXT,  /* Option < String > */
	"prepared_bytes" bigint,  /* Option < i64 > */
	"model_private_mb" double precision,  /* Option < f64 > */
	"load_waited_ms" double precision,  /* Option < f64 > */
	"load_waited_for_pid" INT,  /* Option < i32 > */
	"text_load_mode" TEXT,  /* Option < String > */
	"text_load_waited_ms" double precision,  /* Option < f64 > */
	"text_load_waited_for_pid" INT,  /* Option < i32 > */
	"text_model" TEXT,  /* String */
	"text_random_weights" bool,  /* Option < bool > */
	"text_precision" TEXT,  /* String */
	"text_model_loaded" bool  /* bool */
)
STRICT VOLATILE PARALLEL RESTRICTED
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'clip_model_info_wrapper';

CREATE FUNCTION "clip_text_tokens"(
	"query" TEXT /* & str */
) RETURNS INT[] /* Vec < i32 > */
STRICT STABLE PARALLEL SAFE COST 100
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'clip_text_tokens_wrapper';

CREATE FUNCTION "clip_auto_embed_inserted"()
	RETURNS TRIGGER
	LANGUAGE c
	AS 'MODULE_PATHNAME', 'clip_auto_embed_inserted_wrapper';

CREATE FUNCTION "clip_auto_embed_url_changed"()
	RETURNS TRIGGER
	LANGUAGE c
	AS 'MODULE_PATHNAME', 'clip_auto_embed_url_changed_wrapper';

-- sql/backfill.sql from its engine on: the new engine functions, the procedure rewritten on them, the grants.
-- The engine. Two callers share it: CALL clip_backfill below, and the auto-embed worker
-- (sql/auto_embed.sql, src/backfill/worker.rs). A batch is three steps, each a function here:
--   1. pick rows and claim them (each caller picks from its own source: the table's NULL vectors in key
--      order, or the auto-embed queue);
--   2. clip_backfill_apply: download and embed the batch's photos (while the next batch downloads) and write
--      the vectors, only where the row still has the URL that was fetched and no vector yet;
--   3. clip_backfill_record: failures in, fixed rows out of clip_backfill_failures.
-- All three run in the caller's transaction; the caller commits per batch.
--
-- Claims keep the two callers from embedding a row twice: a transaction-level advisory lock per row
-- (relation OID, hash of the key). A row another transaction holds is skipped, and every claim goes at
-- COMMIT or on any error, so nothing stays claimed by a session that went away or a batch that failed.

-- The table's key column (default: its single-column primary key) and whether it has a model_version
-- column; every check on the caller's names, with a SQLSTATE each.
CREATE FUNCTION @extschema@.clip_backfill_target(
    target        regclass,
    url_column    name,
    vector_column name,
    key_column    name DEFAULT NULL,
    OUT key_name    name,
    OUT key_type    text,
    OUT has_version boolean)
LANGUAGE plpgsql STABLE
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

    -- The columns: present, and of sensible types (read from the catalogue once).
    SELECT pg_catalog.array_agg(a.attname),
           max(t.typname) FILTER (WHERE a.attname = vector_column),
           max(a.atttypid::regtype::text) FILTER (WHERE a.attname = key_name),
           max(a.atttypid::regtype::text) FILTER (WHERE a.attname = 'model_version')
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
    has_version := version_type IS NOT NULL;
    IF has_version AND version_type NOT IN ('text', 'character varying') THEN
        RAISE EXCEPTION 'pg_clip: column model_version of table % is not text or varchar', target
            USING ERRCODE = '42804', HINT = 'pg_clip writes the model that made each vector there.';
    END IF;
END
$function$;

-- What made the vectors, as written to a model_version column: the model, the precision, and the start of
-- the ONNX file's SHA-256 (two checkpoints exported under one name differ there).
CREATE FUNCTION @extschema@.clip_backfill_model_version() RETURNS text
LANGUAGE sql VOLATILE
AS $function$
    SELECT i.model_version || ' ' || i.precision || ' ' || left(i.image_model_sha256, 12)
      FROM @extschema@.clip_model_info() i
$function$;

-- Step 2: embed the batch and write the vectors. keys/urls: the batch; replace: per row, whether a row that
-- has a vector made by another model may be overwritten (the auto-embed re-queue after a model change);
-- prefetch: the next batch's URLs, whose downloads start now. One row out per claimed key:
--   embedded  the vector was written;
--   failed    the photo could not be embedded (sqlstate, error, http_status, transient say why);
--   skipped   nothing written: the row changed meanwhile (another URL, a vector, or gone), or, with
--             skip_locked, another transaction holds it (the auto-embed worker never waits for a user's
--             transaction). Keys another caller had claimed come out as skipped too.
-- Runs with the privileges of its caller, who must be allowed to run clip_embed_urls and to UPDATE target.
CREATE FUNCTION @extschema@.clip_backfill_apply(
    target        regclass,
    url_column    name,
    vector_column name,
    key_name      name,
    key_type      text,
    has_version   boolean,
    keys          text[],
    urls          text[],
    prefetch      text[],
    concurrency   integer,
    version       text,
    replace       boolean[] DEFAULT NULL,
    skip_locked   boolean DEFAULT false)
RETURNS TABLE (row_key text, url text, outcome text, sqlstate text, error text, http_status integer,
               transient boolean)
LANGUAGE plpgsql VOLATILE
AS $function$
DECLARE
    claimed_keys    text[];
    claimed_urls    text[];
    claimed_replace boolean[];
BEGIN
    SELECT coalesce(pg_catalog.array_agg(b.k ORDER BY b.o), '{}'),
           coalesce(pg_catalog.array_agg(b.u ORDER BY b.o), '{}'),
           coalesce(pg_catalog.array_agg(coalesce(b.r, false) ORDER BY b.o), '{}')
      INTO claimed_keys, claimed_urls, claimed_replace
      FROM ROWS FROM (pg_catalog.unnest(keys), pg_catalog.unnest(urls), pg_catalog.unnest(replace)) WITH ORDINALITY AS b(k, u, r, o)
     WHERE b.k IS NOT NULL
       AND pg_catalog.pg_try_advisory_xact_lock(target::oid::int4, pg_catalog.hashtext(b.k));

    RETURN QUERY
    SELECT k, NULL::text, 'skipped', NULL::text, NULL::text, NULL::integer, NULL::boolean
      FROM pg_catalog.unnest(keys) AS k
     WHERE k IS NOT NULL AND NOT k = ANY (claimed_keys);

    -- One statement: the embeddings (materialized once), the rows that may take them, locked in key order
    -- (conditions checked again on the newest row version by the lock), the UPDATE, and each key's outcome.
    RETURN QUERY EXECUTE pg_catalog.format(
        'WITH e AS MATERIALIZED ('
        '    SELECT ($1::text[])[x.ord] AS k, ($2::text[])[x.ord] AS u, ($3::boolean[])[x.ord] AS r, '
        '           x.embedding, x.sqlstate, x.error, x.http_status, x.transient '
        '    FROM @extschema@.clip_embed_urls($2, $4, $5) x), '
        'w AS (SELECT t.%1$I AS key FROM %2$s t JOIN e ON t.%1$I = e.k::%3$s '
        '      WHERE e.embedding IS NOT NULL AND t.%4$I::text = e.u AND (t.%5$I IS NULL OR (e.r AND %6$s)) '
        '      ORDER BY t.%1$I FOR NO KEY UPDATE OF t %7$s), '
        'ok AS (UPDATE %2$s t SET %5$I = e.embedding %8$s FROM e JOIN w ON w.key = e.k::%3$s '
        '       WHERE t.%1$I = w.key AND t.%4$I::text = e.u AND (t.%5$I IS NULL OR (e.r AND %6$s)) '
        '       RETURNING e.k) '
        'SELECT e.k, e.u, CASE WHEN e.embedding IS NULL THEN ''failed'' '
        '                      WHEN ok.k IS NULL THEN ''skipped'' ELSE ''embedded'' END, '
        '       e.sqlstate, e.error, e.http_status, e.transient '
        'FROM e LEFT JOIN ok ON ok.k = e.k',
        key_name, target, key_type, url_column, vector_column,
        CASE WHEN has_version THEN 't.model_version IS DISTINCT FROM $6' ELSE 'false' END,
        CASE WHEN skip_locked THEN 'SKIP LOCKED' ELSE '' END,
        CASE WHEN has_version THEN ', model_version = $6' ELSE '' END)
    USING claimed_keys, claimed_urls, claimed_replace, concurrency, prefetch, version;
END
$function$;

-- Step 3: the failure records of a batch that clip_backfill_apply reported (the arrays are its output
-- columns). An embedded row leaves clip_backfill_failures; a failed one enters it, or counts one more
-- attempt, unless its URL changed meanwhile (the failure was the old photo's). Returns the failures
-- recorded, with their attempt counts.
CREATE FUNCTION @extschema@.clip_backfill_record(
    target      regclass,
    url_column  name,
    key_name    name,
    key_type    text,
    keys        text[],
    urls        text[],
    outcomes    text[],
    sqlstates   text[],
    errors      text[],
    statuses    integer[],
    transients  boolean[])
RETURNS TABLE (row_key text, attempts integer)
LANGUAGE plpgsql VOLATILE
AS $function$
BEGIN
    DELETE FROM @extschema@.clip_backfill_failures f
     USING ROWS FROM (pg_catalog.unnest(keys), pg_catalog.unnest(outcomes)) AS o(k, oc)
     WHERE f.relation = target AND f.row_key = o.k AND o.oc = 'embedded';
    RETURN QUERY EXECUTE pg_catalog.format(
        'INSERT INTO @extschema@.clip_backfill_failures AS f '
        '       (relation, row_key, sqlstate, error, http_status, permanent) '
        'SELECT $1, o.k, o.s, o.e, o.h, NOT coalesce(o.tr, false) '
        'FROM ROWS FROM (pg_catalog.unnest($2::text[]), pg_catalog.unnest($3::text[]), pg_catalog.unnest($4::text[]), '
        '                pg_catalog.unnest($5::text[]), pg_catalog.unnest($6::text[]), pg_catalog.unnest($7::integer[]), '
        '                pg_catalog.unnest($8::boolean[])) AS o(k, u, oc, s, e, h, tr) '
        'JOIN %1$s t ON t.%2$I = o.k::%3$s AND t.%4$I::text = o.u '
        'WHERE o.oc = ''failed'' '
        'ON CONFLICT (relation, row_key) DO UPDATE SET sqlstate = excluded.sqlstate, error = excluded.error, '
        '    http_status = excluded.http_status, permanent = excluded.permanent, attempts = f.attempts + 1, '
        '    last_failed_at = now() '
        'RETURNING f.row_key, f.attempts',
        target, key_name, key_type, url_column)
    USING target, keys, urls, outcomes, sqlstates, errors, statuses, transients;
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
    key_type      text;
    has_version   boolean;
    version       text;
    run           bigint;
    total         bigint;
    done          bigint := 0;
    failed        bigint := 0;
    skipped       bigint := 0;
    batch_no      integer := 0;
    started       timestamptz := clock_timestamp();
    pick_sql      text;
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
    IF batch_size IS NULL OR batch_size < 1 THEN
        RAISE EXCEPTION 'pg_clip: batch_size must be at least 1' USING ERRCODE = '22023';
    END IF;
    IF concurrency IS NOT NULL AND concurrency < 1 THEN
        RAISE EXCEPTION 'pg_clip: concurrency must be at least 1' USING ERRCODE = '22023';
    END IF;
    SELECT d.key_name, d.key_type, d.has_version INTO key_name, key_type, has_version
      FROM @extschema@.clip_backfill_target(target, url_column, vector_column, key_column) d;
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

    -- Step 1 for this caller: the rows still to do (a URL, no vector, no permanent failure on record unless
    -- retry_failed), walked in key order from the last key picked, so a row is tried once per run; each is
    -- claimed, and a row the auto-embed worker holds is left to it. Returns the claimed keys and URLs and
    -- the last key looked at.
    pick_sql := pg_catalog.format(
        'SELECT coalesce(pg_catalog.array_agg(c.k::text ORDER BY c.k) FILTER (WHERE c.claimed), ''{}''), '
        '       coalesce(pg_catalog.array_agg(c.u ORDER BY c.k) FILTER (WHERE c.claimed), ''{}''), '
        '       (pg_catalog.array_agg(c.k::text ORDER BY c.k DESC))[1] '
        'FROM (SELECT s.k, s.u, pg_catalog.pg_try_advisory_xact_lock($3::oid::int4, '
        '                                                             pg_catalog.hashtext(s.k::text)) AS claimed '
        '      FROM (SELECT t.%1$I AS k, t.%2$I::text AS u FROM %3$s t '
        '            WHERE t.%4$I IS NULL AND t.%2$I IS NOT NULL '
        '              AND ($1::text IS NULL OR t.%1$I > $1::%5$s) '
        '              AND ($2 OR NOT EXISTS (SELECT 1 FROM @extschema@.clip_backfill_failures f '
        '                                     WHERE f.relation = $3 AND f.row_key = t.%1$I::text AND f.permanent)) '
        '            ORDER BY t.%1$I LIMIT $4) s) c',
        key_name, url_column, target, vector_column, key_type);

    EXECUTE pg_catalog.format(
        'SELECT count(*) FROM %1$s t WHERE t.%2$I IS NULL AND t.%3$I IS NOT NULL '
        '  AND ($1 OR NOT EXISTS (SELECT 1 FROM @extschema@.clip_backfill_failures f '
        '                         WHERE f.relation = $2 AND f.row_key = t.%4$I::text AND f.permanent))',
        target, vector_column, url_column, key_name)
        INTO total USING retry_failed, target;
    IF max_rows IS NOT NULL THEN
        total := least(total, greatest(max_rows, 0));
    END IF;

    INSERT INTO @extschema@.clip_backfill_runs (relation, total, model_version)
    VALUES (target, total, version) RETURNING run_id INTO run;
    RAISE NOTICE 'clip_backfill: run % on %: % rows to embed, batches of %', run, target, total, batch_size;
    COMMIT;

    EXECUTE pick_sql INTO cur_keys, cur_urls, last_key
        USING NULL::text, retry_failed, target, least(batch_size::bigint, total);
    WHILE last_key IS NOT NULL LOOP
        -- The next batch is chosen now so that its downloads overlap this batch's (prefetch).
        remaining := total - done - failed - skipped - pg_catalog.cardinality(cur_keys);
        next_keys := '{}';
        next_urls := '{}';
        IF remaining > 0 THEN
            EXECUTE pick_sql INTO next_keys, next_urls, last_key
                USING last_key, retry_failed, target, least(batch_size::bigint, remaining);
        ELSE
            last_key := NULL;
        END IF;

        SELECT pg_catalog.array_agg(a.row_key), pg_catalog.array_agg(a.url), pg_catalog.array_agg(a.outcome),
               pg_catalog.array_agg(a.sqlstate), pg_catalog.array_agg(a.error), pg_catalog.array_agg(a.http_status),
               pg_catalog.array_agg(a.transient)
          INTO o_keys, o_urls, o_outcomes, o_sqlstates, o_errors, o_statuses, o_transients
          FROM @extschema@.clip_backfill_apply(target, url_column, vector_column, key_name, key_type, has_version,
                                               cur_keys, cur_urls, next_urls, concurrency, version) a;
        SELECT count(*) INTO batch_failed
          FROM @extschema@.clip_backfill_record(target, url_column, key_name, key_type, o_keys, o_urls, o_outcomes,
                                                o_sqlstates, o_errors, o_statuses, o_transients);
        batch_done := coalesce(pg_catalog.cardinality(pg_catalog.array_positions(o_outcomes, 'embedded')), 0);
        done := done + batch_done;
        failed := failed + batch_failed;
        skipped := skipped + coalesce(pg_catalog.cardinality(o_keys), 0) - batch_done - batch_failed;
        batch_no := batch_no + 1;
        UPDATE @extschema@.clip_backfill_runs r
        SET done = r.done + batch_done, failed = r.failed + batch_failed, batches = batch_no,
            updated_at = clock_timestamp()
        WHERE r.run_id = run;
        COMMIT;

        IF coalesce(pg_catalog.cardinality(o_keys), 0) > 0 THEN
            elapsed := extract(epoch FROM clock_timestamp() - started);
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
    SET state = 'finished', finished_at = clock_timestamp(), updated_at = clock_timestamp()
    WHERE r.run_id = run;
    COMMIT;
    RAISE NOTICE 'clip_backfill: run % finished: % embedded, % failed% in %', run, done, failed,
        CASE WHEN skipped > 0 THEN pg_catalog.format(', %s left to the auto-embed worker or changed meanwhile', skipped)
             ELSE '' END,
        date_trunc('second', clock_timestamp() - started);
END
$procedure$;

COMMENT ON PROCEDURE @extschema@.clip_backfill(regclass, name, name, name, integer, integer, boolean, bigint) IS
    'pg_clip: embeds the photos of rows with a URL and no vector, in committed batches; resumable';

-- Functions that reach the network, and the procedure built on them, are not for every role: an
-- administrator grants them (README, "Security").
REVOKE EXECUTE ON FUNCTION @extschema@.clip_embed_url(text) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION @extschema@.clip_try_embed_url(text) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION @extschema@.clip_embed_urls(text[], integer, text[]) FROM PUBLIC;
REVOKE EXECUTE ON PROCEDURE @extschema@.clip_backfill(regclass, name, name, name, integer, integer, boolean, bigint)
    FROM PUBLIC;

-- sql/auto_embed.sql: automatic embedding, all new.
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

-- Which tables are served, with which columns. pg_dump keeps it with the extension.
CREATE TABLE @extschema@.clip_auto_embed_tables (
    relation      regclass    PRIMARY KEY,
    url_column    name        NOT NULL,
    vector_column name        NOT NULL,
    key_column    name        NOT NULL,
    paused        boolean     NOT NULL DEFAULT false,  -- changes are queued, the worker leaves them
    enabled_at    timestamptz NOT NULL DEFAULT now(),
    enabled_by    name        NOT NULL DEFAULT current_user,
    pending_index name,                                -- the partial index clip_auto_embed made
    last_sweep_at timestamptz,                         -- the worker's last look for pending rows
    last_error    text,                                -- the worker's last error on this table, and when
    last_error_at timestamptz
);
COMMENT ON TABLE @extschema@.clip_auto_embed_tables IS
    'pg_clip: tables whose vectors the auto-embed worker keeps fresh (clip_auto_embed)';

-- The rows waiting for a vector, as the worker found them. change_id orders the work and tells that an entry
-- was made again while the worker had it: the worker settles an entry only if its change_id is still the one
-- it picked.
CREATE SEQUENCE @extschema@.clip_auto_embed_change_seq;
CREATE TABLE @extschema@.clip_auto_embed_queue (
    relation   regclass    NOT NULL,
    row_key    text        NOT NULL,
    change_id  bigint      NOT NULL DEFAULT nextval('@extschema@.clip_auto_embed_change_seq'),
    queued_at  timestamptz NOT NULL DEFAULT clock_timestamp(),  -- when the worker found the change
    replace    boolean     NOT NULL DEFAULT false,  -- re-embed although the row has a vector (model changed)
    not_before timestamptz,                         -- after a transient failure: retry from then on
    PRIMARY KEY (relation, row_key)
);
-- Fresh changes before model re-embeds, each in change order.
CREATE INDEX clip_auto_embed_queue_order ON @extschema@.clip_auto_embed_queue (relation, replace, change_id);
COMMENT ON TABLE @extschema@.clip_auto_embed_queue IS
    'pg_clip: rows the auto-embed worker has still to embed';

-- What the worker did, per batch, for the status view's "embedded in the last minute". An hour is kept.
CREATE TABLE @extschema@.clip_auto_embed_log (
    relation    regclass    NOT NULL,
    finished_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    embedded    integer     NOT NULL,
    failed      integer     NOT NULL,
    seconds     float8      NOT NULL
);
CREATE INDEX clip_auto_embed_log_recent ON @extschema@.clip_auto_embed_log (relation, finished_at);

-- A restored dump brings its tables here (pg_restore loads this table's rows): their worker starts at that
-- COMMIT, so the queue it restored is worked off without waiting for the next change or server start.
CREATE FUNCTION @extschema@.clip_auto_embed_tables_changed() RETURNS trigger
LANGUAGE plpgsql VOLATILE
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
-- permanent failure, or a transient one retried pg_clip.auto_embed_max_attempts times); returns how many. The
-- worker runs it at every wake-up and at least every pg_clip.auto_embed_naptime: this is how new and changed
-- rows reach the queue. Its WHERE is the partial index's predicate, so it reads only pending rows.
CREATE FUNCTION @extschema@.clip_auto_embed_sweep(target regclass) RETURNS bigint
LANGUAGE plpgsql VOLATILE
AS $function$
DECLARE
    c      @extschema@.clip_auto_embed_tables;
    queued bigint;
BEGIN
    SELECT * INTO c FROM @extschema@.clip_auto_embed_tables t WHERE t.relation = target;
    IF NOT FOUND THEN
        RETURN 0;
    END IF;
    EXECUTE pg_catalog.format(
        'WITH q AS (INSERT INTO @extschema@.clip_auto_embed_queue (relation, row_key) '
        '           SELECT $1, t.%1$I::text FROM %2$s t '
        '           WHERE t.%3$I IS NOT NULL AND t.%4$I IS NULL '
        '             AND NOT EXISTS (SELECT 1 FROM @extschema@.clip_backfill_failures f '
        '                             WHERE f.relation = $1 AND f.row_key = t.%1$I::text '
        '                               AND (f.permanent OR f.attempts >= $2)) '
        '           ON CONFLICT (relation, row_key) DO NOTHING RETURNING 1) '
        'SELECT count(*) FROM q',
        c.key_column, target, c.url_column, c.vector_column)
        INTO queued USING target, pg_catalog.current_setting('pg_clip.auto_embed_max_attempts')::integer;
    UPDATE @extschema@.clip_auto_embed_tables t SET last_sweep_at = clock_timestamp() WHERE t.relation = target;
    RETURN queued;
END
$function$;

-- The triggers clip_auto_embed installs (quietly: DROP TRIGGER IF EXISTS would NOTICE each one missing).
CREATE FUNCTION @extschema@.clip_auto_embed_drop_triggers(target regclass) RETURNS void
LANGUAGE plpgsql VOLATILE
AS $function$
DECLARE
    trigger name;
BEGIN
    FOR trigger IN SELECT t.tgname FROM pg_catalog.pg_trigger t
                   WHERE t.tgrelid = target AND t.tgname IN ('zz_clip_auto_embed_insert', 'zz_clip_auto_embed_url') LOOP
        EXECUTE pg_catalog.format('DROP TRIGGER %I ON %s', trigger, target);
    END LOOP;
END
$function$;

CREATE FUNCTION @extschema@.clip_auto_embed(
    target        regclass,
    url_column    name,
    vector_column name,
    key_column    name DEFAULT NULL)  -- default: the table's single-column primary key
RETURNS bigint                        -- rows queued now: those with a URL and no vector yet
LANGUAGE plpgsql VOLATILE
AS $function$
DECLARE
    d           record;
    owner       oid;
    kind        "char";
    relname     name;
    schema_name name;
    index_name  name;
    previous    @extschema@.clip_auto_embed_tables;
    queued      bigint;
BEGIN
    IF target IS NULL THEN
        RAISE EXCEPTION 'pg_clip: the table must be named' USING ERRCODE = '22004';
    END IF;
    -- Refuses (55000) unless the library is preloaded, which the worker needs; at COMMIT, starts this
    -- database's worker if it is not running.
    PERFORM @extschema@.clip_auto_embed_wake(start_worker => true);
    SELECT c.relowner, c.relkind, c.relname, n.nspname INTO owner, kind, relname, schema_name
      FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = target;
    IF kind = 'p' THEN
        RAISE EXCEPTION 'pg_clip: % is a partitioned table', target USING ERRCODE = '0A000',
            HINT = 'Turn automatic embedding on for each partition.';
    ELSIF kind IS DISTINCT FROM 'r' THEN
        RAISE EXCEPTION 'pg_clip: % is not a table', target USING ERRCODE = '42809';
    END IF;
    IF NOT pg_catalog.pg_has_role(owner, 'USAGE') THEN
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
    -- The worker writes the vectors with the table owner's privileges, as a CALL clip_backfill by the owner
    -- would: the owner needs the URL functions.
    IF NOT pg_catalog.has_function_privilege(owner, '@extschema@.clip_embed_urls(text[], integer, text[])', 'EXECUTE') THEN
        RAISE EXCEPTION 'pg_clip: the owner of table % (%) may not run clip_embed_urls', target, owner::regrole
            USING ERRCODE = '42501',
                  HINT = pg_catalog.format('GRANT EXECUTE ON FUNCTION clip_embed_urls(text[], integer, text[]) TO %I;',
                                           owner::regrole);
    END IF;

    -- The partial index of pending rows, (re)made when the columns change: the worker's look for work reads
    -- it, so that the writers' INSERTs need to do nothing but wake the worker.
    SELECT * INTO previous FROM @extschema@.clip_auto_embed_tables t WHERE t.relation = target;
    index_name := left(relname, 30) || '_clip_auto_embed_pending';
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
    ON CONFLICT (relation) DO UPDATE
        SET url_column = excluded.url_column, vector_column = excluded.vector_column,
            key_column = excluded.key_column, pending_index = excluded.pending_index,
            last_error = NULL, last_error_at = NULL;

    -- The triggers, (re)made with these columns. Named to fire after the table's other BEFORE triggers, so
    -- that they see the URL a normalising trigger may have rewritten.
    PERFORM @extschema@.clip_auto_embed_drop_triggers(target);
    EXECUTE pg_catalog.format(
        'CREATE TRIGGER zz_clip_auto_embed_insert AFTER INSERT ON %s FOR EACH STATEMENT '
        'EXECUTE FUNCTION @extschema@.clip_auto_embed_inserted()',
        target);
    -- (The WHEN compares URLs only, text with text; whether the vector was written too is for the function to
    -- tell: a comparison of vectors here would need pgvector's = operator, which pg_dump cannot qualify in a
    -- trigger's WHEN.)
    EXECUTE pg_catalog.format(
        'CREATE TRIGGER zz_clip_auto_embed_url BEFORE UPDATE OF %2$I ON %1$s FOR EACH ROW '
        'WHEN (OLD.%2$I::text IS DISTINCT FROM NEW.%2$I::text) '
        'EXECUTE FUNCTION @extschema@.clip_auto_embed_url_changed(%3$L, %4$L, %5$L)',
        target, url_column, vector_column, d.key_name,
        CASE WHEN d.has_version THEN 'model_version' ELSE '' END);

    queued := @extschema@.clip_auto_embed_sweep(target);
    RAISE NOTICE 'clip_auto_embed: % is embedded automatically from now on; % rows queued', target, queued;
    RETURN queued;
END
$function$;

CREATE FUNCTION @extschema@.clip_auto_embed_stop(target regclass) RETURNS boolean
LANGUAGE plpgsql VOLATILE
AS $function$
DECLARE
    owner       oid;
    schema_name name;
    index_name  name;
    was_on      boolean;
BEGIN
    SELECT c.relowner, n.nspname INTO owner, schema_name
      FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = target;
    IF NOT pg_catalog.pg_has_role(owner, 'USAGE') THEN
        RAISE EXCEPTION 'pg_clip: must be owner of table %', target USING ERRCODE = '42501';
    END IF;
    DELETE FROM @extschema@.clip_auto_embed_tables t WHERE t.relation = target RETURNING t.pending_index INTO index_name;
    was_on := FOUND;
    IF index_name IS NOT NULL THEN
        EXECUTE pg_catalog.format('DROP INDEX IF EXISTS %I.%I', schema_name, index_name);
    END IF;
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
CREATE FUNCTION @extschema@.clip_auto_embed_pause(target regclass, paused boolean DEFAULT true) RETURNS boolean
LANGUAGE plpgsql VOLATILE
AS $function$
BEGIN
    UPDATE @extschema@.clip_auto_embed_tables t SET paused = clip_auto_embed_pause.paused
     WHERE t.relation = target;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'pg_clip: % is not embedded automatically', target USING ERRCODE = '55000',
            HINT = 'Turn it on with clip_auto_embed().';
    END IF;
    PERFORM @extschema@.clip_auto_embed_wake(start_worker => false);
    RETURN paused;
END
$function$;

-- The rows that failed (recorded in clip_backfill_failures, permanent or retried until given up) go back in
-- the queue, with their attempts counted from zero. Returns how many.
CREATE FUNCTION @extschema@.clip_auto_embed_retry(target regclass) RETURNS bigint
LANGUAGE plpgsql VOLATILE
AS $function$
DECLARE
    queued bigint;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM @extschema@.clip_auto_embed_tables t WHERE t.relation = target) THEN
        RAISE EXCEPTION 'pg_clip: % is not embedded automatically', target USING ERRCODE = '55000',
            HINT = 'Turn it on with clip_auto_embed(), or run CALL clip_backfill(..., retry_failed => true).';
    END IF;
    WITH f AS (DELETE FROM @extschema@.clip_backfill_failures f WHERE f.relation = target RETURNING f.row_key),
         q AS (INSERT INTO @extschema@.clip_auto_embed_queue (relation, row_key)
               SELECT target, f.row_key FROM f
               ON CONFLICT (relation, row_key) DO UPDATE SET not_before = NULL
               RETURNING 1)
    SELECT count(*) INTO queued FROM q;
    PERFORM @extschema@.clip_auto_embed_wake(start_worker => false);
    RETURN queued;
END
$function$;

-- After a model change: queues the rows whose model_version is not the model in force (nor one of
-- keep_versions), to be re-embedded in the background. Their old vectors keep serving search until each is
-- replaced; fresh changes go first. Returns how many.
CREATE FUNCTION @extschema@.clip_auto_embed_requeue(target regclass, keep_versions text[] DEFAULT '{}')
RETURNS bigint
LANGUAGE plpgsql VOLATILE
AS $function$
DECLARE
    c       @extschema@.clip_auto_embed_tables;
    d       record;
    version text := @extschema@.clip_backfill_model_version();
    queued  bigint;
BEGIN
    SELECT * INTO c FROM @extschema@.clip_auto_embed_tables t WHERE t.relation = target;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'pg_clip: % is not embedded automatically', target USING ERRCODE = '55000',
            HINT = 'Turn it on with clip_auto_embed().';
    END IF;
    SELECT * INTO d FROM @extschema@.clip_backfill_target(target, c.url_column, c.vector_column, c.key_column);
    IF NOT d.has_version THEN
        RAISE EXCEPTION 'pg_clip: table % has no model_version column', target USING ERRCODE = '42703',
            HINT = 'Without it pg_clip cannot tell which model made a vector.';
    END IF;
    EXECUTE pg_catalog.format(
        'WITH q AS (INSERT INTO @extschema@.clip_auto_embed_queue (relation, row_key, replace) '
        '           SELECT $1, t.%1$I::text, true FROM %2$s t '
        '           WHERE t.%3$I IS NOT NULL AND t.%4$I IS NOT NULL '
        '             AND t.model_version IS DISTINCT FROM $2 '
        '             AND NOT coalesce(t.model_version = ANY ($3), false) '
        '           ON CONFLICT (relation, row_key) DO NOTHING RETURNING 1) '
        'SELECT count(*) FROM q',
        c.key_column, target, c.url_column, c.vector_column)
        INTO queued USING target, version, coalesce(keep_versions, '{}');
    PERFORM @extschema@.clip_auto_embed_wake(start_worker => false);
    RETURN queued;
END
$function$;

-- The worker's step 1: up to batch_size due entries of target, fresh changes first, oldest first, skipping
-- the keys of the batch the worker has in hand; each claimed (a row CALL clip_backfill holds is left for
-- now). Entries with nothing left to do (the row is gone, has no URL, or already has a vector, unless it is
-- a re-embed for a model change) are settled on the way.
CREATE FUNCTION @extschema@.clip_auto_embed_pick(
    target     regclass,
    exclude    text[],
    batch_size integer,
    version    text,               -- the model in force (clip_backfill_model_version()), for re-embeds
    only_keys  text[] DEFAULT NULL) -- just these keys (the worker retrying a failed batch row by row)
RETURNS TABLE (row_key text, change_id bigint, url text, replace boolean)
LANGUAGE plpgsql VOLATILE
AS $function$
DECLARE
    c @extschema@.clip_auto_embed_tables;
    d record;
BEGIN
    SELECT * INTO STRICT c FROM @extschema@.clip_auto_embed_tables t WHERE t.relation = target;
    SELECT * INTO d FROM @extschema@.clip_backfill_target(target, c.url_column, c.vector_column, c.key_column);
    RETURN QUERY EXECUTE pg_catalog.format(
        'WITH cand AS (SELECT q.row_key, q.change_id, q.replace FROM @extschema@.clip_auto_embed_queue q '
        '              WHERE q.relation = $1 AND (q.not_before IS NULL OR q.not_before <= clock_timestamp()) '
        '                AND NOT q.row_key = ANY ($2) AND ($5::text[] IS NULL OR q.row_key = ANY ($5)) '
        '              ORDER BY q.replace, q.change_id LIMIT $3), '
        'st AS MATERIALIZED (SELECT cand.row_key, cand.change_id, cand.replace, t.%1$I::text AS url, '
        '                           coalesce(t.%1$I IS NOT NULL AND (t.%2$I IS NULL OR (cand.replace AND %3$s)), '
        '                                    false) AS pending '
        '                    FROM cand LEFT JOIN %4$s t ON t.%5$I = cand.row_key::%6$s), '
        'settled AS (DELETE FROM @extschema@.clip_auto_embed_queue q USING st '
        '            WHERE NOT st.pending AND q.relation = $1 AND q.row_key = st.row_key '
        '              AND q.change_id = st.change_id) '
        'SELECT st.row_key, st.change_id, st.url, st.replace FROM st '
        'WHERE st.pending AND pg_catalog.pg_try_advisory_xact_lock($1::oid::int4, pg_catalog.hashtext(st.row_key)) '
        'ORDER BY st.replace, st.change_id',
        c.url_column, c.vector_column,
        CASE WHEN d.has_version THEN 't.model_version IS DISTINCT FROM $4' ELSE 'false' END,
        target, d.key_name, d.key_type)
    USING target, coalesce(exclude, '{}'), batch_size, version, only_keys;
END
$function$;

-- The worker's step 3, after clip_backfill_apply: failures recorded (clip_backfill_record), and each
-- entry settled unless its row changed again meanwhile (another change_id): embedded rows and permanent
-- failures leave the queue; a transient failure waits retry_delay x 4^(attempts - 1) and is given up after
-- max_attempts (it stays in clip_backfill_failures for a person: clip_auto_embed_retry); a skipped row
-- (claimed elsewhere, locked by a user's transaction) is looked at again a second later.
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
AS $function$
DECLARE
    c @extschema@.clip_auto_embed_tables;
    d record;
BEGIN
    SELECT * INTO STRICT c FROM @extschema@.clip_auto_embed_tables t WHERE t.relation = target;
    SELECT * INTO d FROM @extschema@.clip_backfill_target(target, c.url_column, c.vector_column, c.key_column);
    -- One statement: the failure records (with their attempt counts), then the queue. The DELETE and the
    -- UPDATE touch disjoint entries, so that they may share the statement.
    RETURN QUERY
    WITH r AS MATERIALIZED (
        SELECT * FROM @extschema@.clip_backfill_record(target, c.url_column, d.key_name, d.key_type, keys, urls,
                                                       outcomes, sqlstates, errors, statuses, transients)),
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
           SET not_before = clock_timestamp()
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
     WHERE l.relation = target AND l.finished_at < clock_timestamp() - interval '1 hour';
END
$function$;

-- One row per table that is embedded automatically.
CREATE VIEW @extschema@.clip_auto_embed_status AS
SELECT c.relation,
       c.url_column,
       c.vector_column,
       c.key_column,
       c.paused,
       coalesce(q.pending, 0) AS pending,                 -- changed rows waiting for a vector
       round(extract(epoch FROM clock_timestamp() - q.oldest)::numeric, 1) AS lag_seconds,  -- oldest of them
       coalesce(q.retrying, 0) AS retrying,               -- of those, waiting to retry a transient failure
       coalesce(q.reembed, 0) AS reembed_pending,         -- rows queued for a new model (clip_auto_embed_requeue)
       coalesce(l.embedded, 0) AS embedded_last_minute,
       (SELECT count(*) FROM @extschema@.clip_backfill_failures f WHERE f.relation = c.relation) AS failed,
       w.pid AS worker_pid,
       w.state AS worker_state,
       c.last_error,
       c.last_error_at
FROM @extschema@.clip_auto_embed_tables c
LEFT JOIN LATERAL (SELECT count(*) FILTER (WHERE NOT q.replace) AS pending,
                          min(q.queued_at) FILTER (WHERE NOT q.replace) AS oldest,
                          count(*) FILTER (WHERE q.not_before > clock_timestamp()) AS retrying,
                          count(*) FILTER (WHERE q.replace) AS reembed
                   FROM @extschema@.clip_auto_embed_queue q WHERE q.relation = c.relation) q ON true
LEFT JOIN LATERAL (SELECT sum(l.embedded) AS embedded FROM @extschema@.clip_auto_embed_log l
                   WHERE l.relation = c.relation AND l.finished_at > clock_timestamp() - interval '1 minute') l ON true
CROSS JOIN @extschema@.clip_auto_embed_worker() w;
COMMENT ON VIEW @extschema@.clip_auto_embed_status IS
    'pg_clip: per table embedded automatically: pending rows, lag, rate, failures, the worker';

-- Lets a role embed the tables it owns from their URLs, by CALL clip_backfill and automatically: the URL
-- functions, the procedure, the auto-embed functions, and pg_clip's bookkeeping tables. For a superuser to
-- run once per role (e.g. the application's owner role); REVOKE the same privileges to undo it.
CREATE FUNCTION @extschema@.clip_grant_backfill(role regrole) RETURNS void
LANGUAGE plpgsql VOLATILE
AS $function$
DECLARE
    object text;
BEGIN
    FOREACH object IN ARRAY ARRAY[
        'FUNCTION @extschema@.clip_embed_url(text)',
        'FUNCTION @extschema@.clip_try_embed_url(text)',
        'FUNCTION @extschema@.clip_embed_urls(text[], integer, text[])',
        'PROCEDURE @extschema@.clip_backfill(regclass, name, name, name, integer, integer, boolean, bigint)',
        'FUNCTION @extschema@.clip_auto_embed(regclass, name, name, name)',
        'FUNCTION @extschema@.clip_auto_embed_stop(regclass)',
        'FUNCTION @extschema@.clip_auto_embed_pause(regclass, boolean)',
        'FUNCTION @extschema@.clip_auto_embed_retry(regclass)',
        'FUNCTION @extschema@.clip_auto_embed_requeue(regclass, text[])',
        'FUNCTION @extschema@.clip_auto_embed_sweep(regclass)',
        'FUNCTION @extschema@.clip_auto_embed_drop_triggers(regclass)',
        'FUNCTION @extschema@.clip_auto_embed_wake(boolean)'] LOOP
        EXECUTE pg_catalog.format('GRANT EXECUTE ON %s TO %s', object, role);
    END LOOP;
    EXECUTE pg_catalog.format(
        'GRANT SELECT, INSERT, UPDATE, DELETE ON @extschema@.clip_backfill_failures, @extschema@.clip_backfill_runs, '
        '@extschema@.clip_auto_embed_tables, @extschema@.clip_auto_embed_queue, @extschema@.clip_auto_embed_log TO %s', role);
    EXECUTE pg_catalog.format(
        'GRANT USAGE ON SEQUENCE @extschema@.clip_backfill_runs_run_id_seq, @extschema@.clip_auto_embed_change_seq TO %s', role);
    EXECUTE pg_catalog.format(
        'GRANT SELECT ON @extschema@.clip_backfill_progress, @extschema@.clip_auto_embed_status TO %s', role);
END
$function$;

-- Not for every role, like the URL functions they drive (README, "Security"). The status view and the
-- worker function say nothing secret; the view is granted as the backfill's progress view is: not at all.
REVOKE EXECUTE ON FUNCTION @extschema@.clip_auto_embed(regclass, name, name, name) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION @extschema@.clip_auto_embed_stop(regclass) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION @extschema@.clip_auto_embed_pause(regclass, boolean) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION @extschema@.clip_auto_embed_retry(regclass) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION @extschema@.clip_auto_embed_requeue(regclass, text[]) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION @extschema@.clip_auto_embed_sweep(regclass) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION @extschema@.clip_auto_embed_drop_triggers(regclass) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION @extschema@.clip_auto_embed_pick(regclass, text[], integer, text, text[]) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION @extschema@.clip_auto_embed_settle(regclass, text[], bigint[], text[], text[], text[],
                                                              text[], integer[], boolean[], integer, interval, float8)
    FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION @extschema@.clip_auto_embed_wake(boolean) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION @extschema@.clip_grant_backfill(regrole) FROM PUBLIC;

