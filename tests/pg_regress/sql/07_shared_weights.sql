-- One model in memory for all backends: the first load prepares an optimized model whose pre-packed
-- weights sit in one file that every backend memory-maps (see README, "Memory"). This file uses its own,
-- empty prepared-model directory so the first load here is really the first.
SELECT set_config('pg_clip.prepared_model_dir', current_setting('pg_clip_test.inputs') || '/prepared', false) IS NOT NULL AS set;
SELECT vector_dims(clip_embed_bytes(clip_test.input('chelsea.png'))) AS dims;
SELECT load_mode, load_note, precision,
       prepared_path LIKE '%/prepared/clip-ViT-B-32-random-seed42-image-%' AS in_prepared_dir,
       prepared_bytes > 600e6 AS holds_prepacked_weights,
       model_private_mb < 150 AS small_private_memory
  FROM clip_model_info();
CREATE TABLE clip_test.paths AS SELECT 'prepared now' AS path, clip_embed_bytes(clip_test.input('chelsea.png')) AS v;

-- Loading again (as any later backend does) maps the file that is now there.
SELECT clip_unload_model() AS unloaded;
INSERT INTO clip_test.paths SELECT 'mapped', clip_embed_bytes(clip_test.input('chelsea.png'));
SELECT load_mode, load_note, model_private_mb < 150 AS small_private_memory FROM clip_model_info();

-- A private session, as every backend had before: hundreds of MB of its own.
SET pg_clip.share_model_weights = off;
INSERT INTO clip_test.paths SELECT 'private', clip_embed_bytes(clip_test.input('chelsea.png'));
SELECT load_mode, prepared_path IS NULL AS no_prepared_file, model_private_mb > 250 AS large_private_memory FROM clip_model_info();
RESET pg_clip.share_model_weights;

-- A prepared-model location that cannot be written: a private session and a WARNING that says why.
SET pg_clip.prepared_model_dir = '/proc/pg_clip-prepared';
INSERT INTO clip_test.paths SELECT 'fallback', clip_embed_bytes(clip_test.input('chelsea.png'));
SELECT load_mode, load_note FROM clip_model_info();

-- Every path computes the same vector, to the last bit.
SELECT count(*) AS paths, count(DISTINCT v::text) AS distinct_vectors FROM clip_test.paths;
