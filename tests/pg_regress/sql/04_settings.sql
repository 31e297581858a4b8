-- Settings: defaults (boot_val: the test clusters set some, e.g. prepared_model_dir), units, ranges, and who may
-- change them. They exist once the library is loaded
-- (by the first pg_clip call of a session, or LOAD, or shared_preload_libraries).
LOAD 'pg_clip';
SELECT name, boot_val AS default_value, unit, context, vartype, min_val, max_val
  FROM pg_settings WHERE name LIKE 'pg_clip.%' ORDER BY name;
-- The path defaults are empty: the extension then uses what the install put in place.
SELECT model_path LIKE '%/pg_clip/model' AS default_model_path,
       onnxruntime_path LIKE '%/pg_clip/libonnxruntime.so' AS default_runtime_path
  FROM clip_model_info();
-- The prefix is reserved: a typo is an error, not a silently ignored placeholder.
SET pg_clip.modle_path = '/tmp';
-- Out of range.
SET pg_clip.intra_op_threads = 0;

-- Paths, threads, limits and precisions are superuser-only; exif_orientation, transparency, the text encoder and
-- the cache size are not.
CREATE ROLE clip_app LOGIN;
GRANT USAGE ON SCHEMA clip_test TO clip_app;
SET ROLE clip_app;
SET pg_clip.model_path = '/tmp/evil';
SET pg_clip.onnxruntime_path = '/tmp/evil.so';
SET pg_clip.intra_op_threads = 8;
SET pg_clip.max_image_bytes = '1GB';
SET pg_clip.text_precision = int8;
SHOW pg_clip.model_path;
SET pg_clip.exif_orientation = off;
SET pg_clip.image_transparency = white;
SET pg_clip.text_model = multilingual;
SET pg_clip.embedding_cache_size = 4;
RESET ROLE;
RESET ALL;
DROP OWNED BY clip_app;
DROP ROLE clip_app;

-- intra_op_threads takes effect on the next call: the session is rebuilt with the new count, same vector.
CREATE TEMP TABLE one AS SELECT clip_embed_bytes(clip_test.input('chelsea.png')) AS e;
SET pg_clip.intra_op_threads = 2;
SELECT clip_embed_bytes(clip_test.input('chelsea.png')) <=> (SELECT e FROM one) < 1e-6 AS same_vector_two_threads,
       (SELECT intra_op_threads FROM clip_model_info()) AS threads;
RESET pg_clip.intra_op_threads;

-- The embedding cache: a repeated input costs a lookup; size 0 turns it off.
SELECT inferences AS inf0, cache_hits AS hit0 FROM clip_model_info() \gset
SELECT count(*) FROM (SELECT clip_embed_bytes(clip_test.input('coffee.png')) FROM generate_series(1, 5)) s;
SELECT inferences - :inf0 AS inferences, cache_hits - :hit0 AS cache_hits FROM clip_model_info();
SET pg_clip.embedding_cache_size = 0;
SELECT inferences AS inf0, cache_hits AS hit0 FROM clip_model_info() \gset
SELECT count(*) FROM (SELECT clip_embed_bytes(clip_test.input('coffee.png')) FROM generate_series(1, 3)) s;
SELECT inferences - :inf0 AS inferences, cache_hits - :hit0 AS cache_hits FROM clip_model_info();
RESET pg_clip.embedding_cache_size;
