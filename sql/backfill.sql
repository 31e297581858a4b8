-- clip_backfill: embeds the photos of every row that has a URL but no vector yet, in batches, each batch
-- committed on its own, so that an interruption loses at most one batch and a new CALL resumes where the
-- last one stopped. Failures are recorded with their reason in clip_backfill_failures; progress goes to
-- NOTICE lines and to clip_backfill_progress, which other sessions can query while a run goes on.
--
-- PL/pgSQL because a procedure's COMMIT between batches is what makes progress durable; the work itself
-- (downloads, decoding, inference) happens in clip_embed_urls. No SET clause on the procedure (it would
-- forbid COMMIT): our own objects are schema-qualified with @extschema@ instead, and identifiers supplied
-- by the caller go through format('%I') or regclass output, never string concatenation.

-- One row per table row the backfill could not embed. Rows leave it when a later run embeds them.
CREATE TABLE @extschema@.clip_backfill_failures (
    relation        regclass    NOT NULL,
    row_key         text        NOT NULL,  -- the key column's value, as text
    sqlstate        text        NOT NULL,
    error           text        NOT NULL,  -- the message, naming the URL (without its query string)
    http_status     integer,               -- the last HTTP status received, if any
    permanent       boolean     NOT NULL,  -- not retried unless CALL clip_backfill(..., retry_failed => true)
    attempts        integer     NOT NULL DEFAULT 1,  -- backfill runs that tried this row
    first_failed_at timestamptz NOT NULL DEFAULT now(),
    last_failed_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (relation, row_key)
);
COMMENT ON TABLE @extschema@.clip_backfill_failures IS
    'pg_clip: rows clip_backfill could not embed, with the reason (see the README, "Backfill")';

-- One row per CALL; the view below derives rate, ETA and whether a run died.
CREATE TABLE @extschema@.clip_backfill_runs (
    run_id        bigserial   PRIMARY KEY,
    relation      regclass    NOT NULL,
    pid           integer     NOT NULL DEFAULT pg_backend_pid(),
    started_at    timestamptz NOT NULL DEFAULT clock_timestamp(),
    updated_at    timestamptz NOT NULL DEFAULT clock_timestamp(),
    finished_at   timestamptz,
    state         text        NOT NULL DEFAULT 'running' CHECK (state IN ('running', 'finished', 'interrupted')),
    total         bigint      NOT NULL,  -- rows to do when the run started
    done          bigint      NOT NULL DEFAULT 0,
    failed        bigint      NOT NULL DEFAULT 0,
    batches       integer     NOT NULL DEFAULT 0,
    model_version text
);

-- pg_dump keeps what the backfill learnt (the failures and the run history) with the extension.
SELECT pg_catalog.pg_extension_config_dump('@extschema@.clip_backfill_failures', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.clip_backfill_runs', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.clip_backfill_runs_run_id_seq', '');

CREATE VIEW @extschema@.clip_backfill_progress AS
SELECT r.run_id,
       r.relation,
       r.pid,
       CASE WHEN r.state = 'running'
                 AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_stat_activity a
                                 WHERE a.pid = r.pid
                                   AND (a.backend_start IS NULL OR a.backend_start <= r.started_at)
                                   AND a.state IS DISTINCT FROM 'idle')
            THEN 'interrupted' ELSE r.state END AS state,
       r.started_at,
       r.updated_at,
       r.finished_at,
       r.batches,
       r.done,
       r.failed,
       greatest(r.total - r.done - r.failed, 0) AS remaining,
       round(((r.done + r.failed) / nullif(extract(epoch FROM r.updated_at - r.started_at), 0))::numeric, 2)
           AS images_per_second,
       CASE WHEN r.state = 'running' AND r.done + r.failed > 0
            THEN date_trunc('second', (r.updated_at - r.started_at)
                                      * (greatest(r.total - r.done - r.failed, 0)::float8 / (r.done + r.failed)))
       END AS eta,
       r.model_version
FROM @extschema@.clip_backfill_runs r;
COMMENT ON VIEW @extschema@.clip_backfill_progress IS
    'pg_clip: clip_backfill runs, the current one included: done, failed, remaining, rate and ETA';

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

CREATE PROCEDURE @extschema@.clip_backfill(
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
