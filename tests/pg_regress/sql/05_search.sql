-- The design's photo search, on an ivfflat cosine index, runs the model ONCE per query in every plan:
-- custom and generic prepared plans, the index scan, and a sequential scan + sort.
SET client_min_messages = error;  -- (the random-weights WARNING is shown in 01_embed)
SELECT setseed(0.42);
-- A catalogue-shaped table of random unit vectors (fast to build; the search is what is tested).
CREATE TABLE image_embeddings (image_id int PRIMARY KEY, product_id int, image_embedding vector(512),
                               image_url text, model_version varchar);
INSERT INTO image_embeddings
SELECT i, 10000 + i, (SELECT l2_normalize(array_agg(random() - 0.5)::vector) FROM generate_series(1, 512) WHERE i > 0),
       'https://bucket.example/images/' || i || '.jpg', 'random'
  FROM generate_series(1, 3000) i;
CREATE INDEX image_embeddings_ivfflat ON image_embeddings USING ivfflat (image_embedding vector_cosine_ops) WITH (lists = 30);
ANALYZE image_embeddings;

PREPARE search(bytea) AS
  SELECT product_id FROM image_embeddings ORDER BY image_embedding <=> clip_embed_bytes($1) LIMIT 50;
-- Evaluations of clip_embed_bytes = inferences (model runs) + cache_hits (answered from memory).
CREATE FUNCTION clip_test.calls() RETURNS TABLE (inferences bigint, cache_hits bigint) LANGUAGE sql AS
$$ SELECT inferences, cache_hits FROM clip_model_info() $$;
-- Each case below uses a photo this session has not embedded yet, so no earlier query helps it.

-- 1. Custom plan (the planner's own choice, no enable_* overrides): the index scan. It evaluates the
--    ORDER BY argument once to start the scan, and the hidden sort-key column once per returned row:
--    51 evaluations, 1 inference. (EXPLAIN uses a 1-pixel PNG so that the plan's literal stays short.)
EXPLAIN (COSTS OFF) EXECUTE search(clip_test.input('one_pixel.png'));
SELECT * FROM clip_test.calls() \gset before_
EXECUTE search(clip_test.input('astronaut.jpg')) \g /dev/null
SELECT inferences - :before_inferences AS inferences, cache_hits - :before_cache_hits AS cache_hits FROM clip_test.calls();

-- 2. Generic plan ($1 stays a parameter): still the index scan, still one inference.
SET plan_cache_mode = force_generic_plan;
EXPLAIN (COSTS OFF) EXECUTE search(clip_test.input('one_pixel.png'));
SELECT * FROM clip_test.calls() \gset before_
EXECUTE search(clip_test.input('astronaut.png')) \g /dev/null
SELECT inferences - :before_inferences AS inferences, cache_hits - :before_cache_hits AS cache_hits FROM clip_test.calls();
RESET plan_cache_mode;

-- 3. Sequential scan + sort (exact search, as on a small table or with probes = lists): evaluated for
--    each of the 3000 rows, one inference.
SET enable_indexscan = off;
EXPLAIN (COSTS OFF) EXECUTE search(clip_test.input('one_pixel.png'));
SELECT * FROM clip_test.calls() \gset before_
EXECUTE search(clip_test.input('chelsea.png')) \g /dev/null
SELECT inferences - :before_inferences AS inferences, cache_hits - :before_cache_hits AS cache_hits FROM clip_test.calls();

-- 4. An argument that is not a constant or parameter (here a volatile function call) is evaluated anew
--    per row; the per-backend cache of recent inputs (pg_clip.embedding_cache_size) makes each a lookup.
SELECT * FROM clip_test.calls() \gset before_
SELECT count(*) FROM (SELECT product_id FROM image_embeddings
                       ORDER BY image_embedding <=> clip_embed_bytes(clip_test.input('upright.png')) LIMIT 50) s;
SELECT inferences - :before_inferences AS inferences, cache_hits - :before_cache_hits AS cache_hits FROM clip_test.calls();
RESET enable_indexscan;

-- 5. Why that cache exists: without it, the index scan's two call sites (scan key, sort-key column)
--    each run the model once.
SET pg_clip.embedding_cache_size = 0;
SELECT * FROM clip_test.calls() \gset before_
EXECUTE search(clip_test.input('small.png')) \g /dev/null
SELECT inferences - :before_inferences AS inferences, cache_hits - :before_cache_hits AS cache_hits FROM clip_test.calls();
RESET pg_clip.embedding_cache_size;

-- LIMIT 50 returns 50 rows from the index (probes = 10 of 30 lists hold far more than 50 rows).
SET ivfflat.probes = 10;
SELECT count(*) FROM image_embeddings WHERE product_id IN (
  SELECT product_id FROM image_embeddings ORDER BY image_embedding <=> clip_embed_bytes(clip_test.input('astronaut.jpg')) LIMIT 50);
-- The index scan and an exact scan agree on the nearest rows for a photo's vector (all lists probed).
SET ivfflat.probes = 30;
CREATE TEMP TABLE q AS SELECT clip_embed_bytes(clip_test.input('coffee.png')) AS e;
SELECT (SELECT array_agg(product_id) FROM (SELECT product_id FROM image_embeddings ORDER BY image_embedding <=> (SELECT e FROM q) LIMIT 10) a)
     = (SELECT array_agg(product_id) FROM (SELECT product_id FROM image_embeddings ORDER BY (image_embedding <=> (SELECT e FROM q)) + 0 LIMIT 10) b)
       AS index_matches_exact;
RESET ivfflat.probes;

-- No error in any test restarted the server.
SELECT started = pg_postmaster_start_time() AS server_never_restarted FROM clip_test.server;
