-- Automatic embedding, the parts that do not depend on the worker's timing: what clip_auto_embed checks and
-- installs, what the triggers queue (and what they leave alone), and the worker's three steps driven by
-- hand while the worker is paused. The worker itself (latency, restarts, faults, two databases,
-- coexistence with CALL clip_backfill) is tested by tests/clients/test_auto_embed.py.
-- Same image host as 10_url and 11_backfill (127.0.0.1:28836). The cluster preloads pg_clip.
SET pg_clip.allow_private_addresses = on;
SET pg_clip.fetch_retries = 0;
-- The worker fetches with this database's settings, not this session's.
ALTER DATABASE pg_clip_regress SET pg_clip.allowed_private_networks = '127.0.0.1/32';

CREATE TABLE clip_test.shop (id int PRIMARY KEY, name text, image_url text, image_embedding vector(512),
                             model_version text);

-- What is refused, each with its SQLSTATE.
CREATE VIEW clip_test.shop_view AS SELECT * FROM clip_test.shop;
CREATE TABLE clip_test.parted (id int PRIMARY KEY, u text, v vector(512)) PARTITION BY RANGE (id);
CREATE TABLE clip_test.dupkey (id int, u text, v vector(512));
CREATE TABLE clip_test.wrongtype (id int PRIMARY KEY, u text, v real[]);
SELECT clip_test.try($$SELECT clip_auto_embed('clip_test.shop_view', 'image_url', 'image_embedding')$$) AS view;
SELECT clip_test.try($$SELECT clip_auto_embed('clip_test.parted', 'u', 'v')$$) AS partitioned;
SELECT clip_test.try($$SELECT clip_auto_embed('clip_test.shop', 'photo', 'image_embedding')$$) AS missing_column;
SELECT clip_test.try($$SELECT clip_auto_embed('clip_test.wrongtype', 'u', 'v')$$) AS not_a_vector;
SELECT clip_test.try($$SELECT clip_auto_embed('clip_test.dupkey', 'u', 'v')$$) AS no_primary_key;
SELECT clip_test.try($$SELECT clip_auto_embed('clip_test.dupkey', 'u', 'v', key_column => 'id')$$) AS key_not_unique;
SELECT clip_test.try($$SELECT clip_auto_embed('clip_test.missing', 'u', 'v')$$) AS no_table;
SELECT clip_test.try($$SELECT clip_auto_embed(NULL, 'u', 'v')$$) AS null_table;

-- Not for PUBLIC. clip_grant_backfill gives a role what it needs for the tables it owns; even then, only
-- the table's owner may turn it on, and the owner must be allowed to run the URL functions (the worker
-- writes as the owner).
CREATE ROLE clip_shop LOGIN;
CREATE ROLE clip_other;
GRANT USAGE, CREATE ON SCHEMA clip_test TO clip_shop;
SET ROLE clip_shop;
SELECT clip_test.try($$SELECT clip_auto_embed('clip_test.shop', 'image_url', 'image_embedding')$$) AS not_granted;
RESET ROLE;
SELECT clip_grant_backfill('clip_shop');
SET ROLE clip_shop;
SELECT clip_test.try($$SELECT clip_auto_embed('clip_test.shop', 'image_url', 'image_embedding')$$) AS not_owner;
CREATE TABLE clip_test.owned (id int PRIMARY KEY, u text, v vector(512));
BEGIN;
SELECT clip_auto_embed('clip_test.owned', 'u', 'v') AS owner_may;
SELECT clip_auto_embed_stop('clip_test.owned') AS owner_may_stop;
COMMIT;
DROP TABLE clip_test.owned;
RESET ROLE;
CREATE TABLE clip_test.others (id int PRIMARY KEY, u text, v vector(512));
ALTER TABLE clip_test.others OWNER TO clip_other;
SELECT clip_test.try($$SELECT clip_auto_embed('clip_test.others', 'u', 'v')$$) AS owner_without_url_functions;
DROP TABLE clip_test.others;
SELECT p.proname, has_function_privilege('public', p.oid, 'EXECUTE') AS public_may
  FROM pg_proc p JOIN pg_depend d ON d.objid = p.oid AND d.deptype = 'e'
  JOIN pg_extension e ON e.oid = d.refobjid AND e.extname = 'pg_clip'
 WHERE p.proname LIKE 'clip\_auto\_embed%' OR p.proname LIKE 'clip\_grant%' ORDER BY 1;

-- Turned on, paused in the same transaction: the worker starts at COMMIT, finds the table paused, and
-- leaves it to the steps below. Rows already there with a URL and no vector are queued at once.
INSERT INTO clip_test.shop (id, name, image_url) VALUES
  (1, 'mug', 'http://127.0.0.1:28836/img/coffee.png'),
  (2, 'cat', NULL);
BEGIN;
SELECT clip_auto_embed('clip_test.shop', 'image_url', 'image_embedding') AS queued;
SELECT clip_auto_embed_pause('clip_test.shop');
COMMIT;
SELECT relation, url_column, vector_column, key_column, paused, enabled_by FROM clip_auto_embed_tables;
SELECT tgname, tgenabled, pg_get_triggerdef(oid) FROM pg_trigger WHERE tgrelid = 'clip_test.shop'::regclass ORDER BY 1;
SELECT row_key, replace, not_before FROM clip_auto_embed_queue ORDER BY row_key;
-- Idempotent: again with the same columns, nothing changes (the row is queued once).
SELECT clip_auto_embed('clip_test.shop', 'image_url', 'image_embedding') AS queued_again;
SELECT count(*) AS triggers FROM pg_trigger WHERE tgrelid = 'clip_test.shop'::regclass;

-- The partial index the worker reads to find pending rows (a URL and no vector).
SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'shop' AND indexname LIKE '%clip_auto_embed%';

-- What becomes pending. A new row with a URL and no vector is pending by its own state: the INSERT trigger
-- (once per statement) only wakes the worker, whose look (clip_auto_embed_sweep) queues the row. With a
-- vector, or without a URL, a row is not pending. Another column, or the same URL again: the UPDATE OF
-- trigger's WHEN is false, nothing happens.
INSERT INTO clip_test.shop (id, name, image_url) VALUES (3, 'astronaut', 'http://127.0.0.1:28836/img/astronaut.jpg');
INSERT INTO clip_test.shop (id, name, image_url, image_embedding)
  VALUES (4, 'prefilled', 'http://127.0.0.1:28836/img/small.png', clip_embed_url('http://127.0.0.1:28836/img/small.png'));
INSERT INTO clip_test.shop (id, name) VALUES (5, 'no photo yet');
SELECT count(*) AS queued_by_the_insert FROM clip_auto_embed_queue WHERE row_key = '3';
SELECT clip_auto_embed_sweep('clip_test.shop') AS found;
SELECT row_key FROM clip_auto_embed_queue ORDER BY row_key;
UPDATE clip_test.shop SET name = upper(name);
UPDATE clip_test.shop SET image_url = image_url;
SELECT id, image_embedding IS NOT NULL AS has_vector FROM clip_test.shop WHERE id = 4;

-- A new URL: the vector (and model_version) go in the same statement, so the old photo's vector never
-- outlives the transaction; the row is pending again. Written with the vector, the URL change is the
-- writer's business: nothing is cleared.
UPDATE clip_test.shop SET model_version = 'old model' WHERE id = 4;
UPDATE clip_test.shop SET image_url = 'http://127.0.0.1:28836/img/chelsea.png' WHERE id = 4;
SELECT id, image_embedding IS NULL AS vector_cleared, model_version FROM clip_test.shop WHERE id = 4;
UPDATE clip_test.shop SET image_url = 'http://127.0.0.1:28836/img/coffee.png',
                          image_embedding = clip_embed_url('http://127.0.0.1:28836/img/coffee.png') WHERE id = 5;
SELECT id, image_embedding IS NOT NULL AS vector_kept FROM clip_test.shop WHERE id = 5;
-- Changed again before the worker got to it: pending still, with the newest URL (the row is the truth).
UPDATE clip_test.shop SET image_url = 'http://127.0.0.1:28836/img/small.gif' WHERE id = 4;
-- A URL cleared: the vector goes, and the row is not pending (there is nothing to embed).
UPDATE clip_test.shop SET image_url = NULL WHERE id = 5;
SELECT id, image_embedding IS NULL AS vector_cleared FROM clip_test.shop WHERE id = 5;
-- With the triggers off (a replica-role load): no wake-up, but the row is pending all the same.
SET session_replication_role = replica;
INSERT INTO clip_test.shop (id, name, image_url) VALUES (6, 'bulk loaded', 'http://127.0.0.1:28836/img/small.bmp');
RESET session_replication_role;
SELECT clip_auto_embed_sweep('clip_test.shop') AS found;
SELECT row_key FROM clip_auto_embed_queue ORDER BY change_id;
-- The look reads the partial index.
SET enable_seqscan = off;
EXPLAIN (COSTS OFF) SELECT id FROM clip_test.shop WHERE image_url IS NOT NULL AND image_embedding IS NULL;
RESET enable_seqscan;

-- The worker's steps by hand, as src/backfill/worker.rs runs them in one transaction per batch: look for
-- pending rows, pick (and claim), apply (download, embed, write where the row still wants that photo), settle. One step here,
-- with a URL that can be changed between the pick and the apply, as a shopper's edit might.
CREATE FUNCTION clip_test.step(change_id_of int DEFAULT NULL, new_url text DEFAULT NULL, max_attempts int DEFAULT 5)
RETURNS TABLE (row_key text, outcome text, sqlstate text, http_status int, transient boolean)
LANGUAGE plpgsql AS $$
DECLARE
  version text := clip_backfill_model_version();
  k text[]; c bigint[]; u text[]; r boolean[];
  ok text[]; ou text[]; oo text[]; os text[]; oe text[]; oh int[]; ot boolean[]; oc bigint[];
BEGIN
  PERFORM clip_auto_embed_sweep('clip_test.shop');
  SELECT array_agg(p.row_key), array_agg(p.change_id), array_agg(p.url), array_agg(p.replace)
    INTO k, c, u, r FROM clip_auto_embed_pick('clip_test.shop', '{}', 10, version) p;
  IF change_id_of IS NOT NULL THEN
    UPDATE clip_test.shop SET image_url = new_url WHERE id = change_id_of;
  END IF;
  SELECT array_agg(a.row_key ORDER BY a.row_key), array_agg(a.url ORDER BY a.row_key), array_agg(a.outcome ORDER BY a.row_key),
         array_agg(a.sqlstate ORDER BY a.row_key), array_agg(a.error ORDER BY a.row_key),
         array_agg(a.http_status ORDER BY a.row_key), array_agg(a.transient ORDER BY a.row_key),
         array_agg(c[array_position(k, a.row_key)] ORDER BY a.row_key)
    INTO ok, ou, oo, os, oe, oh, ot, oc
    FROM clip_backfill_apply('clip_test.shop', 'image_url', 'image_embedding', 'id',
                             k, u, '{}', NULL, version, r, skip_locked => true) a;
  PERFORM clip_auto_embed_settle('clip_test.shop', ok, oc, ou, oo, os, oe, oh, ot, max_attempts, interval '1 second', 0.5);
  RETURN QUERY SELECT x.k, x.o, x.s, x.h, x.t
    FROM ROWS FROM (unnest(ok), unnest(oo), unnest(os), unnest(oh), unnest(ot)) AS x(k, o, s, h, t);
END $$;
-- A queue entry with nothing to do (id 2 has no URL; made by hand here) is settled by the pick; the others
-- are claimed.
INSERT INTO clip_auto_embed_queue (relation, vector_column, row_key) VALUES ('clip_test.shop', 'image_embedding', '2');
UPDATE clip_test.shop SET image_url = 'http://127.0.0.1:28836/status/404' WHERE id = 3;
BEGIN;
SELECT row_key, url, replace FROM clip_auto_embed_pick('clip_test.shop', '{}', 10, clip_backfill_model_version());
SELECT count(*) AS queued_2 FROM clip_auto_embed_queue WHERE row_key = '2';
SELECT count(*) AS claims FROM pg_locks WHERE locktype = 'advisory' AND objsubid = 2 AND pid = pg_backend_pid();
ROLLBACK;
SELECT count(*) AS claims_after_rollback FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid();
-- One step; row 4's URL changes after it was picked: the photo fetched is not written, the entry stays for
-- the new URL. Embedded rows leave the queue; the 404 is a permanent failure and leaves it too.
SELECT * FROM clip_test.step(change_id_of => 4, new_url => 'http://127.0.0.1:28836/img/chelsea.png') ORDER BY 1;
SELECT id, image_embedding IS NOT NULL AS embedded,
       regexp_replace(model_version, '[0-9a-f]{12}$', '<sha256 prefix>') AS model_version
  FROM clip_test.shop ORDER BY id;
SELECT bool_and(image_embedding = clip_embed_url(image_url)) AS same_as_clip_embed_url
  FROM clip_test.shop WHERE image_embedding IS NOT NULL;
SELECT row_key, not_before IS NULL AS due_now FROM clip_auto_embed_queue ORDER BY row_key;
SELECT row_key, sqlstate, http_status, permanent, attempts, error FROM clip_backfill_failures
 WHERE relation = 'clip_test.shop'::regclass ORDER BY row_key;
SELECT embedded_last_minute, pending, failed FROM clip_auto_embed_status;
-- The next step embeds row 4 with its new photo. (A skipped entry waits a second, so that a row another
-- transaction holds is not tried in a busy loop; the test does not wait.)
UPDATE clip_auto_embed_queue SET not_before = NULL;
SELECT * FROM clip_test.step() ORDER BY 1;
SELECT image_embedding = clip_embed_url('http://127.0.0.1:28836/img/chelsea.png') AS newest_photo FROM clip_test.shop WHERE id = 4;
-- A permanent failure is not swept up again; a new URL makes it say nothing about the row (it names the
-- SHA-256 of the URL that failed), so the next look queues the row and forgets the record. The writer's
-- trigger touched no pg_clip table.
SELECT clip_auto_embed_sweep('clip_test.shop') AS swept;
UPDATE clip_test.shop SET image_url = 'http://127.0.0.1:28836/status/503' WHERE id = 3;
SELECT url_sha256 = clip_backfill_url_sha256('http://127.0.0.1:28836/status/404') AS names_the_old_url
  FROM clip_backfill_failures WHERE relation = 'clip_test.shop'::regclass AND row_key = '3';
SELECT clip_auto_embed_sweep('clip_test.shop') AS swept;
SELECT count(*) AS failures_3 FROM clip_backfill_failures WHERE relation = 'clip_test.shop'::regclass AND row_key = '3';
-- A transient failure (503) waits retry_delay x 4^(attempts - 1) (1 s here), and is given up after
-- max_attempts (3 here): it stays recorded, out of the queue, not swept again.
SELECT * FROM clip_test.step(max_attempts => 3);
SELECT row_key, round(extract(epoch FROM not_before - clock_timestamp())) AS waits_s FROM clip_auto_embed_queue;
UPDATE clip_auto_embed_queue SET not_before = NULL;
SELECT * FROM clip_test.step(max_attempts => 3);
SELECT row_key, round(extract(epoch FROM not_before - clock_timestamp())) AS waits_s FROM clip_auto_embed_queue;
UPDATE clip_auto_embed_queue SET not_before = NULL;
SELECT * FROM clip_test.step(max_attempts => 3);
SELECT count(*) AS queued FROM clip_auto_embed_queue;
SELECT permanent, attempts, sqlstate, http_status FROM clip_backfill_failures
 WHERE relation = 'clip_test.shop'::regclass AND row_key = '3';
-- clip_auto_embed_retry queues every failed row again, its attempts counted from zero.
SELECT clip_auto_embed_retry('clip_test.shop') AS retried;
SELECT row_key, not_before FROM clip_auto_embed_queue;
SELECT count(*) AS failures FROM clip_backfill_failures WHERE relation = 'clip_test.shop'::regclass;
UPDATE clip_test.shop SET image_url = NULL WHERE id = 3;

-- A model change: rows made by another model are queued to be re-embedded (keeping their vectors until
-- then); keep_versions spares the ones known to be equivalent.
UPDATE clip_test.shop SET model_version = 'clip-ViT-B-32' WHERE id = 1;
UPDATE clip_test.shop SET model_version = 'something else' WHERE id = 6;
SELECT clip_auto_embed_requeue('clip_test.shop', keep_versions => '{clip-ViT-B-32}') AS requeued;
SELECT row_key, replace FROM clip_auto_embed_queue WHERE replace;
SELECT image_embedding IS NOT NULL AS still_serving FROM clip_test.shop WHERE id = 6;
-- A step re-embeds it; the same vector written by hand with the current model meanwhile would stand.
SELECT * FROM clip_test.step();
SELECT regexp_replace(model_version, '[0-9a-f]{12}$', '<sha256 prefix>') AS model_version FROM clip_test.shop WHERE id = 6;
SELECT row_key, outcome FROM clip_backfill_apply('clip_test.shop', 'image_url', 'image_embedding', 'id',
    ARRAY['6'], ARRAY['http://127.0.0.1:28836/img/small.bmp'], '{}', NULL, clip_backfill_model_version(), ARRAY[true], true);
SELECT clip_test.try($$SELECT clip_auto_embed_requeue('clip_test.dupkey')$$) AS not_automatic;

-- The status view: one row per table.
SELECT relation, paused, pending, reembed_pending, worker_pid IS NOT NULL AS worker_running, worker_state
  FROM clip_auto_embed_status;

-- Calling again with other columns updates the setting and remakes the triggers.
ALTER TABLE clip_test.shop ADD COLUMN thumb_url text;
SELECT clip_auto_embed('clip_test.shop', 'thumb_url', 'image_embedding') AS queued;
SELECT url_column, pending_index FROM clip_auto_embed_tables;
SELECT indexdef FROM pg_indexes WHERE tablename = 'shop' AND indexname LIKE '%clip_auto_embed%';
SELECT pg_get_triggerdef(oid) FROM pg_trigger WHERE tgrelid = 'clip_test.shop'::regclass AND tgname = 'zz_clip_auto_embed_url';

-- Stop: the configuration, the triggers, the partial index and the queue go; failure records stay
-- (clip_backfill's too).
SELECT clip_auto_embed_stop('clip_test.shop') AS stopped;
SELECT clip_auto_embed_stop('clip_test.shop') AS stopped_again;
SELECT count(*) AS triggers FROM pg_trigger WHERE tgrelid = 'clip_test.shop'::regclass AND NOT tgisinternal;
SELECT count(*) AS indexes FROM pg_indexes WHERE tablename = 'shop' AND indexname LIKE '%clip_auto_embed%';
SELECT count(*) AS tables, (SELECT count(*) FROM clip_auto_embed_queue) AS queued FROM clip_auto_embed_tables;
SELECT clip_test.try($$SELECT clip_auto_embed_pause('clip_test.shop')$$) AS pause_after_stop;
INSERT INTO clip_test.shop (id, image_url) VALUES (7, 'http://127.0.0.1:28836/img/small.png');
SELECT count(*) AS queued FROM clip_auto_embed_queue;

DROP OWNED BY clip_shop, clip_other;
DROP ROLE clip_shop, clip_other;
ALTER DATABASE pg_clip_regress RESET pg_clip.allowed_private_networks;
