-- CALL clip_backfill: committed batches, failures recorded with their reason, permanent ones not retried
-- unless asked, model_version written, identifiers quoted. Same test server as 10_url (127.0.0.1:28836).
-- The kill-and-resume case runs in tests/clients/test_backfill.py, which can terminate a backend.
SET pg_clip.allow_private_addresses = on;
SET pg_clip.fetch_retries = 0;

-- A table whose names all need quoting.
CREATE TABLE clip_test."Odd Catalog" ("Product Id" int PRIMARY KEY, "Image URL" text, "Embedding" vector(512), model_version text);
INSERT INTO clip_test."Odd Catalog" ("Product Id", "Image URL") VALUES
  (1, 'http://127.0.0.1:28836/img/astronaut.jpg'),
  (2, 'http://127.0.0.1:28836/img/coffee.png'),
  (3, 'http://127.0.0.1:28836/status/404'),
  (4, 'http://127.0.0.1:28836/img/chelsea.png'),
  (5, 'http://127.0.0.1:28836/html'),
  (6, 'http://127.0.0.1:28836/status/503'),
  (7, 'http://127.0.0.1:28836/img/small.png'),
  (8, NULL),
  (9, 'http://127.0.0.1:28836/img/small.webp'),
  (10, 'http://127.0.0.1:28836/img/upright.png');
-- Progress NOTICEs carry rates and times; the outcome is checked below instead.
SET client_min_messages = warning;
CALL clip_backfill('clip_test."Odd Catalog"', url_column => 'Image URL', vector_column => 'Embedding', batch_size => 3);
RESET client_min_messages;
SELECT "Product Id", "Embedding" IS NOT NULL AS embedded,
       regexp_replace(model_version, '[0-9a-f]{12}$', '<sha256 prefix>') AS model_version
  FROM clip_test."Odd Catalog" ORDER BY 1;
SELECT bool_and("Embedding" = clip_embed_url("Image URL")) AS same_as_clip_embed_url FROM clip_test."Odd Catalog" WHERE "Embedding" IS NOT NULL;
SELECT row_key, sqlstate, http_status, permanent, attempts, error FROM clip_backfill_failures
 WHERE relation = 'clip_test."Odd Catalog"'::regclass ORDER BY row_key::int;
SELECT state, batches, done, failed, remaining, images_per_second > 0 AS has_rate, eta, finished_at IS NOT NULL AS finished
  FROM clip_backfill_progress WHERE relation = 'clip_test."Odd Catalog"'::regclass ORDER BY run_id;

-- A second run retries only the transient failure (503); the permanent ones stay as they are.
SET client_min_messages = warning;
CALL clip_backfill('clip_test."Odd Catalog"', url_column => 'Image URL', vector_column => 'Embedding');
RESET client_min_messages;
SELECT done, failed FROM clip_backfill_progress WHERE relation = 'clip_test."Odd Catalog"'::regclass ORDER BY run_id DESC LIMIT 1;
SELECT row_key, attempts FROM clip_backfill_failures WHERE relation = 'clip_test."Odd Catalog"'::regclass ORDER BY row_key::int;

-- Fixed at the source, then retried on request: the fixed row is embedded and leaves the failure table.
UPDATE clip_test."Odd Catalog" SET "Image URL" = 'http://127.0.0.1:28836/img/small.gif' WHERE "Product Id" = 3;
SET client_min_messages = warning;
CALL clip_backfill('clip_test."Odd Catalog"', url_column => 'Image URL', vector_column => 'Embedding', retry_failed => true);
RESET client_min_messages;
SELECT done, failed FROM clip_backfill_progress WHERE relation = 'clip_test."Odd Catalog"'::regclass ORDER BY run_id DESC LIMIT 1;
SELECT row_key, attempts FROM clip_backfill_failures WHERE relation = 'clip_test."Odd Catalog"'::regclass ORDER BY row_key::int;
SELECT "Embedding" IS NOT NULL AS fixed_row_embedded FROM clip_test."Odd Catalog" WHERE "Product Id" = 3;

-- max_rows, and an explicit key column on a table without a primary key.
CREATE TABLE clip_test.nokey (sku text NOT NULL UNIQUE, photo text, v vector(512));
INSERT INTO clip_test.nokey SELECT 'sku-' || i, 'http://127.0.0.1:28836/img/' || f, NULL
  FROM unnest(ARRAY['coffee.png', 'chelsea.png', 'small.png', 'small.gif', 'small.bmp']) WITH ORDINALITY AS t(f, i);
SELECT clip_test.try($$CALL clip_backfill('clip_test.nokey', url_column => 'photo', vector_column => 'v')$$) AS no_primary_key;
SET client_min_messages = warning;
CALL clip_backfill('clip_test.nokey', url_column => 'photo', vector_column => 'v', key_column => 'sku', batch_size => 2, max_rows => 3);
RESET client_min_messages;
SELECT sku, v IS NOT NULL AS embedded FROM clip_test.nokey ORDER BY sku;
SET client_min_messages = warning;
CALL clip_backfill('clip_test.nokey', url_column => 'photo', vector_column => 'v', key_column => 'sku');
RESET client_min_messages;
SELECT count(*) FILTER (WHERE v IS NOT NULL) AS embedded, count(*) AS rows FROM clip_test.nokey;

-- Mistakes get clear errors, with a SQLSTATE each.
SELECT clip_test.try($$CALL clip_backfill('clip_test.nokey', url_column => 'no_such_column', vector_column => 'v', key_column => 'sku')$$) AS missing_url_column;
SELECT clip_test.try($$CALL clip_backfill('clip_test.nokey', url_column => 'photo', vector_column => 'photo', key_column => 'sku')$$) AS not_a_vector_column;
SELECT clip_test.try($$CALL clip_backfill('clip_test.nokey', url_column => 'photo', vector_column => 'v', key_column => 'nope')$$) AS missing_key_column;
SELECT clip_test.try($$CALL clip_backfill('clip_test.no_such_table', url_column => 'photo', vector_column => 'v')$$) AS missing_table;
SELECT clip_test.try($$CALL clip_backfill('clip_test.nokey', url_column => 'photo', vector_column => 'v', key_column => 'sku', batch_size => 0)$$) AS zero_batch;
SELECT clip_test.try($$CALL clip_backfill('clip_test.nokey; DROP TABLE clip_test.nokey', url_column => 'photo', vector_column => 'v')$$) AS injection_in_table_name;
SELECT clip_test.try($$CALL clip_backfill('clip_test.nokey', url_column => 'photo"; DROP TABLE clip_test.nokey; --', vector_column => 'v', key_column => 'sku')$$) AS injection_in_column_name;
CREATE TABLE clip_test.badversion (id int PRIMARY KEY, u text, v vector(512), model_version int);
SELECT clip_test.try($$CALL clip_backfill('clip_test.badversion', url_column => 'u', vector_column => 'v')$$) AS model_version_not_text;
SELECT count(*) AS nokey_still_there FROM clip_test.nokey;
-- Inside a transaction block the procedure cannot commit its batches, and says so.
BEGIN;
SET LOCAL client_min_messages = warning;
SELECT clip_test.try($$CALL clip_backfill('clip_test.nokey', url_column => 'photo', vector_column => 'v', key_column => 'sku', retry_failed => true)$$) AS in_transaction_block;
ROLLBACK;

-- No failure above restarted the server.
SELECT started = pg_postmaster_start_time() AS same_server FROM clip_test.server;
