-- clip_backfill: embeds the photos of every row that has a URL but no vector yet, in batches, each batch
-- committed on its own, so that an interruption loses at most one batch and a new CALL resumes where the
-- last one stopped. Failures are recorded with their reason in clip_backfill_failures; progress goes to
-- NOTICE lines and to clip_backfill_progress, which other sessions can query while a run goes on.
--
-- Security (README, "Security notes"). Two kinds of statement, never mixed:
--   * statements on the user's table (which evaluate types, casts, operators, triggers, policies the table's
--     owner controls) run only in src/backfill/as_owner.rs, always as the table's owner inside a
--     security-restricted operation: clip_backfill_pending_rows, _count_pending, _outdated_rows, _row_states,
--     _apply. They return text, booleans and bytea;
--   * everything here is bookkeeping on pg_clip's own tables, with built-in types only, as the caller (the
--     auto-embed worker, a superuser; or an owner granted with clip_grant_backfill, whom row-level security
--     limits to the records of the tables it owns).
-- Every function here runs with search_path = pg_catalog, pg_temp (its SET clause), names pg_clip's objects
-- with @extschema@, and so resolves nothing through the caller's search_path. The procedure cannot have a
-- SET clause (it would forbid COMMIT): it pins the same search_path itself at the start of each of its
-- transactions. Expressions bound when this script runs (defaults, checks, views, policies) are
-- schema-qualified, operators included, since the script's own search_path contains the extension's schema.

-- One row per table row the backfill could not embed. Rows leave it when a later run embeds them, and when
-- the row is gone or its URL changed (the record was about another photo: see clip_backfill_forget_stale).
CREATE TABLE @extschema@.clip_backfill_failures (
    relation        pg_catalog.regclass    NOT NULL,
    row_key         pg_catalog.text        NOT NULL,  -- the key column's value, as text
    sqlstate        pg_catalog.text        NOT NULL,
    error           pg_catalog.text        NOT NULL,  -- the message, naming the URL (without its query string)
    http_status     pg_catalog.int4,                  -- the last HTTP status received, if any
    permanent       pg_catalog.bool        NOT NULL,  -- not retried unless CALL clip_backfill(..., retry_failed => true)
    attempts        pg_catalog.int4        NOT NULL DEFAULT 1,  -- backfill runs that tried this row
    first_failed_at pg_catalog.timestamptz NOT NULL DEFAULT pg_catalog.now(),
    last_failed_at  pg_catalog.timestamptz NOT NULL DEFAULT pg_catalog.now(),
    -- Which photo failed: the SHA-256 of its URL (not the URL: a presigned URL's signature is a secret). A
    -- record applies to its row only while the row has that URL, so a changed URL needs no one to delete
    -- the old record first. NULL in records made before 0.3.0: taken to be the row's current URL.
    url_sha256      pg_catalog.bytea,
    PRIMARY KEY (relation, row_key)
);
COMMENT ON TABLE @extschema@.clip_backfill_failures IS
    'pg_clip: rows clip_backfill could not embed, with the reason (see the README, "Backfill")';

-- One row per CALL; the view below derives rate, ETA and whether a run died.
CREATE TABLE @extschema@.clip_backfill_runs (
    run_id        bigserial   PRIMARY KEY,
    relation      pg_catalog.regclass    NOT NULL,
    pid           pg_catalog.int4        NOT NULL DEFAULT pg_catalog.pg_backend_pid(),
    started_at    pg_catalog.timestamptz NOT NULL DEFAULT pg_catalog.clock_timestamp(),
    updated_at    pg_catalog.timestamptz NOT NULL DEFAULT pg_catalog.clock_timestamp(),
    finished_at   pg_catalog.timestamptz,
    state         pg_catalog.text        NOT NULL DEFAULT 'running'
        CHECK (state OPERATOR(pg_catalog.=) ANY (ARRAY['running', 'finished', 'interrupted']::pg_catalog.text[])),
    total         pg_catalog.int8        NOT NULL,  -- rows to do when the run started
    done          pg_catalog.int8        NOT NULL DEFAULT 0,
    failed        pg_catalog.int8        NOT NULL DEFAULT 0,
    batches       pg_catalog.int4        NOT NULL DEFAULT 0,
    model_version pg_catalog.text
);

-- pg_dump keeps what the backfill learnt (the failures and the run history) with the extension.
SELECT pg_catalog.pg_extension_config_dump('@extschema@.clip_backfill_failures', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.clip_backfill_runs', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.clip_backfill_runs_run_id_seq', '');

-- Each role sees and changes the records of the tables it owns (is a member of the owner's role), and no
-- others; a superuser (and the auto-embed worker, which connects as one) sees everything. A record of a table
-- that was dropped belongs to no one but a superuser. The policy is bound here, schema-qualified, and reads
-- only the catalog.
ALTER TABLE @extschema@.clip_backfill_failures ENABLE ROW LEVEL SECURITY;
CREATE POLICY clip_owner ON @extschema@.clip_backfill_failures
    USING (pg_catalog.pg_has_role((SELECT c.relowner FROM pg_catalog.pg_class c
                                   WHERE c.oid OPERATOR(pg_catalog.=) relation), 'USAGE'));
ALTER TABLE @extschema@.clip_backfill_runs ENABLE ROW LEVEL SECURITY;
CREATE POLICY clip_owner ON @extschema@.clip_backfill_runs
    USING (pg_catalog.pg_has_role((SELECT c.relowner FROM pg_catalog.pg_class c
                                   WHERE c.oid OPERATOR(pg_catalog.=) relation), 'USAGE'));

-- security_invoker: the view reads the table with the rights (and row-level security) of whoever queries it.
CREATE VIEW @extschema@.clip_backfill_progress WITH (security_invoker = true) AS
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
COMMENT ON VIEW @extschema@.clip_backfill_progress IS
    'pg_clip: clip_backfill runs, the current one included: done, failed, remaining, rate and ETA';

-- The engine. Two callers share it: CALL clip_backfill below, and the auto-embed worker
-- (sql/auto_embed.sql, src/backfill/worker.rs). A batch is three steps:
--   1. pick rows and claim them (each caller picks from its own source: the table's NULL vectors in key
--      order, clip_backfill_pick; or the auto-embed queue, clip_auto_embed_pick);
--   2. clip_backfill_apply (src/backfill/as_owner.rs): claim, download and embed the batch's photos (while
--      the next batch downloads) and write the vectors, only where the row still has the URL that was fetched
--      and no vector yet, as the table's owner;
--   3. clip_backfill_record: failures in, fixed rows out of clip_backfill_failures.
-- All three run in the caller's transaction; the caller commits per batch.
--
-- Claims keep the two callers from embedding a row twice: a transaction-level advisory lock per row
-- (relation OID, hash of the key). A row another transaction holds is skipped, and every claim goes at
-- COMMIT or on any error, so nothing stays claimed by a session that went away or a batch that failed.

-- The table's key column (default: its single-column primary key) and whether it has a model_version
-- column; every check on the caller's names, with a SQLSTATE each. Reads the catalogs only.
CREATE FUNCTION @extschema@.clip_backfill_target(
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
CREATE FUNCTION @extschema@.clip_backfill_authorize(target regclass, with_urls boolean DEFAULT false)
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
CREATE FUNCTION @extschema@.clip_backfill_model_version() RETURNS text
LANGUAGE sql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $function$
    SELECT i.model_version || ' ' || i.precision || ' ' || left(i.image_model_sha256, 12)
      FROM @extschema@.clip_model_info() i
$function$;

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

-- The SHA-256 of a URL, as clip_backfill_failures.url_sha256 keeps it.
CREATE FUNCTION @extschema@.clip_backfill_url_sha256(url text) RETURNS bytea
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $function$ SELECT pg_catalog.sha256(pg_catalog.textsend(url)) $function$;

-- Step 1 for CALL clip_backfill: the next rows to do after after_key (a URL, no vector, no permanent
-- failure of their current URL on record unless retry_failed), in key order, at most batch_size; each
-- claimed (a row the auto-embed worker holds is left to it). The rows are read as the table's owner
-- (clip_backfill_pending_rows); keys and URLs come back as text. Returns the claimed keys and URLs, and
-- the last key looked at (NULL: nothing left).
CREATE FUNCTION @extschema@.clip_backfill_pick(
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
CREATE FUNCTION @extschema@.clip_backfill_record(
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
CREATE FUNCTION @extschema@.clip_backfill_forget_stale(
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

COMMENT ON PROCEDURE @extschema@.clip_backfill(regclass, name, name, name, integer, integer, boolean, bigint) IS
    'pg_clip: embeds the photos of rows with a URL and no vector, in committed batches; resumable';

-- Functions that reach the network, and the procedure built on them, are not for every role: an
-- administrator grants them (README, "Security"). The engine's steps on a user's table act as its owner and
-- check that the caller may: granted to PUBLIC like any function, they need the owner's role to do anything.
REVOKE EXECUTE ON FUNCTION @extschema@.clip_embed_url(text) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION @extschema@.clip_try_embed_url(text) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION @extschema@.clip_embed_urls(text[], integer, text[]) FROM PUBLIC;
REVOKE EXECUTE ON PROCEDURE @extschema@.clip_backfill(regclass, name, name, name, integer, integer, boolean, bigint)
    FROM PUBLIC;
