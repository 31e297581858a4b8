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
    key_name      name := key_column;
    key_type      text;
    vector_type   name;
    version_type  text;
    has_version   boolean;
    columns       name[];
    wanted        name;
    version       text;
    run           bigint;
    total         bigint;
    done          bigint := 0;
    failed        bigint := 0;
    batch_no      integer := 0;
    started       timestamptz := clock_timestamp();
    pick_sql      text;
    apply_sql     text;
    cur_keys      text[];
    cur_urls      text[];
    next_keys     text[];
    next_urls     text[];
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
            USING ERRCODE = '42804', HINT = 'clip_backfill writes the model that made each vector there.';
    END IF;
    -- What made the vectors: the model, the precision, and the start of the ONNX file's SHA-256 (two
    -- checkpoints exported under one name differ there).
    SELECT i.model_version || ' ' || i.precision || ' ' || left(i.image_model_sha256, 12) INTO version
    FROM @extschema@.clip_model_info() i;

    -- One run per table at a time: two would fetch and embed the same rows. The transaction-level lock
    -- makes the check and the insert atomic; the run row itself marks the table busy afterwards.
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

    -- The rows still to do: a URL, no vector, and no permanent failure on record (unless retry_failed).
    -- Walked in key order from the last key done, so a row tried in this run is not tried again in it.
    pick_sql := pg_catalog.format(
        'SELECT coalesce(pg_catalog.array_agg(k::text ORDER BY k), ''{}''), '
        '       coalesce(pg_catalog.array_agg(u::text ORDER BY k), ''{}'') '
        'FROM (SELECT t.%1$I AS k, t.%2$I AS u FROM %3$s t '
        '      WHERE t.%4$I IS NULL AND t.%2$I IS NOT NULL '
        '        AND ($1::text IS NULL OR t.%1$I > $1::%5$s) '
        '        AND ($2 OR NOT EXISTS (SELECT 1 FROM @extschema@.clip_backfill_failures f '
        '                               WHERE f.relation = $3 AND f.row_key = t.%1$I::text AND f.permanent)) '
        '      ORDER BY t.%1$I LIMIT $4) s',
        key_name, url_column, target, vector_column, key_type);

    -- One statement per batch: embed, store the good vectors (only where still NULL, so nothing is
    -- embedded twice), clear old failures of rows now done, record the new failures.
    apply_sql := pg_catalog.format(
        'WITH e AS MATERIALIZED ('
        '    SELECT r.ord, r.embedding, r.sqlstate, r.error, r.http_status, r.transient, ($4::text[])[r.ord] AS k '
        '    FROM @extschema@.clip_embed_urls($1, $2, $3) r), '
        'ok AS (UPDATE %1$s t SET %2$I = e.embedding %3$s FROM e '
        '       WHERE e.embedding IS NOT NULL AND t.%4$I = e.k::%5$s AND t.%2$I IS NULL RETURNING e.k), '
        'cleared AS (DELETE FROM @extschema@.clip_backfill_failures f USING ok '
        '            WHERE f.relation = $5 AND f.row_key = ok.k RETURNING 1), '
        'bad AS (INSERT INTO @extschema@.clip_backfill_failures AS f '
        '            (relation, row_key, sqlstate, error, http_status, permanent) '
        '        SELECT $5, e.k, e.sqlstate, e.error, e.http_status, NOT coalesce(e.transient, false) '
        '        FROM e WHERE e.embedding IS NULL '
        '        ON CONFLICT (relation, row_key) DO UPDATE SET sqlstate = excluded.sqlstate, '
        '            error = excluded.error, http_status = excluded.http_status, '
        '            permanent = excluded.permanent, attempts = f.attempts + 1, last_failed_at = now() '
        '        RETURNING 1) '
        'SELECT (SELECT count(*) FROM ok), (SELECT count(*) FROM bad)',
        target, vector_column,
        CASE WHEN has_version THEN ', model_version = $6' ELSE '' END,
        key_name, key_type);

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

    EXECUTE pick_sql INTO cur_keys, cur_urls
        USING NULL::text, retry_failed, target, least(batch_size::bigint, total);
    WHILE pg_catalog.cardinality(cur_keys) > 0 LOOP
        -- The next batch is chosen now so that its downloads overlap this batch's (prefetch).
        remaining := total - done - failed - pg_catalog.cardinality(cur_keys);
        IF remaining > 0 THEN
            EXECUTE pick_sql INTO next_keys, next_urls
                USING cur_keys[pg_catalog.cardinality(cur_keys)], retry_failed, target,
                      least(batch_size::bigint, remaining);
        ELSE
            next_keys := '{}';
            next_urls := '{}';
        END IF;

        EXECUTE apply_sql INTO batch_done, batch_failed
            USING cur_urls, concurrency, next_urls, cur_keys, target, version;
        done := done + batch_done;
        failed := failed + batch_failed;
        batch_no := batch_no + 1;
        UPDATE @extschema@.clip_backfill_runs r
        SET done = r.done + batch_done, failed = r.failed + batch_failed, batches = batch_no,
            updated_at = clock_timestamp()
        WHERE r.run_id = run;
        COMMIT;

        elapsed := extract(epoch FROM clock_timestamp() - started);
        rate := (done + failed) / greatest(elapsed, 0.001);
        remaining := greatest(total - done - failed, 0);
        RAISE NOTICE 'clip_backfill: % done, % failed, % remaining, % images/s, ETA %',
            done, failed, remaining, round(rate::numeric, 1),
            CASE WHEN rate > 0 THEN date_trunc('second', remaining / rate * interval '1 second')::text ELSE '?' END;

        cur_keys := next_keys;
        cur_urls := next_urls;
    END LOOP;

    UPDATE @extschema@.clip_backfill_runs r
    SET state = 'finished', finished_at = clock_timestamp(), updated_at = clock_timestamp()
    WHERE r.run_id = run;
    COMMIT;
    RAISE NOTICE 'clip_backfill: run % finished: % embedded, % failed in %', run, done, failed,
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
