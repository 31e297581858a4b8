-- The design's query as a prepared statement with a bytea parameter returns 50 rows in the exact scan's
-- order, on ivfflat and on HNSW; and what hnsw.ef_search does to LIMIT 50.
SET client_min_messages = error;
SET plan_cache_mode = force_custom_plan;  -- (deterministic EXPLAIN: the plan cache would switch to generic after 5 runs)
SELECT setseed(0.7);
CREATE TABLE catalog (product_id int, image_embedding vector(512));
INSERT INTO catalog
SELECT i,
       (SELECT l2_normalize(array_agg(random() - 0.5)::vector(512)) FROM generate_series(1, 512) WHERE i > 0) AS image_embedding
  FROM generate_series(1, 2000) i;
ANALYZE catalog;
PREPARE search(bytea) AS
  SELECT product_id FROM catalog ORDER BY image_embedding <=> clip_embed_bytes($1) LIMIT 50;

-- The exact answer: no index yet, so a sequential scan + sort.
CREATE TEMP TABLE exact AS EXECUTE search(clip_test.input('coffee.png'));

-- HNSW: 50 rows, the exact order once ef_search covers the table's neighbourhood.
CREATE INDEX catalog_hnsw ON catalog USING hnsw (image_embedding vector_cosine_ops);
EXPLAIN (COSTS OFF) EXECUTE search(clip_test.input('one_pixel.png'));
SET hnsw.ef_search = 1000;
CREATE TEMP TABLE hnsw_result AS EXECUTE search(clip_test.input('coffee.png'));
SELECT (SELECT count(*) FROM hnsw_result) AS hnsw_rows,
       (SELECT array_agg(product_id) FROM hnsw_result) = (SELECT array_agg(product_id) FROM exact) AS hnsw_exact_order;
-- With the default ef_search (40) an HNSW scan finds at most 40 rows, so LIMIT 50 returns fewer than 50 ...
SET hnsw.ef_search = 40;
CREATE TEMP TABLE hnsw_default AS EXECUTE search(clip_test.input('coffee.png'));
SELECT count(*) AS rows_with_ef_search_40 FROM hnsw_default;
-- ... unless iterative scans go on searching (pgvector 0.8), or ef_search >= the LIMIT.
SET hnsw.iterative_scan = relaxed_order;
CREATE TEMP TABLE hnsw_iterative AS EXECUTE search(clip_test.input('coffee.png'));
SELECT count(*) AS rows_with_iterative_scan FROM hnsw_iterative;
RESET hnsw.iterative_scan;
RESET hnsw.ef_search;
DROP INDEX catalog_hnsw;

-- ivfflat: probes = lists is an exact search; the order matches.
CREATE INDEX catalog_ivfflat ON catalog USING ivfflat (image_embedding vector_cosine_ops) WITH (lists = 20);
SET ivfflat.probes = 20;
EXPLAIN (COSTS OFF) EXECUTE search(clip_test.input('one_pixel.png'));
CREATE TEMP TABLE ivf_result AS EXECUTE search(clip_test.input('coffee.png'));
SELECT (SELECT count(*) FROM ivf_result) AS ivfflat_rows,
       (SELECT array_agg(product_id) FROM ivf_result) = (SELECT array_agg(product_id) FROM exact) AS ivfflat_exact_order;
RESET ivfflat.probes;
