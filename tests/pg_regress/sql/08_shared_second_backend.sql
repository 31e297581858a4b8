-- A second backend maps the prepared model that 07 left; then a damaged prepared file is detected and rebuilt.
SET client_min_messages = error;  -- (the random-weights WARNING is shown in 01_embed)
SELECT set_config('pg_clip.prepared_model_dir', current_setting('pg_clip_test.inputs') || '/prepared', false) IS NOT NULL AS set;
INSERT INTO clip_test.paths SELECT 'second backend', clip_embed_bytes(clip_test.input('chelsea.png'));
SELECT load_mode, load_note FROM clip_model_info();
SELECT count(*) AS paths, count(DISTINCT v::text) AS distinct_vectors FROM clip_test.paths;

-- Damage the prepared data file (truncate it; never do this while a backend has it mapped: unload first).
SELECT prepared_path AS prepared FROM clip_model_info() \gset
SELECT clip_unload_model() AS unloaded;
\set datafile :prepared/model.onnx.data
COPY (SELECT 'not the weights') TO :'datafile';
-- The next load finds it does not match what was written, removes it, prepares anew, and says so.
SELECT vector_dims(clip_embed_bytes(clip_test.input('chelsea.png'))) AS dims;
SELECT load_mode, regexp_replace(load_note, '[0-9]+ bytes, [0-9]+ were', 'N bytes, M were') AS load_note FROM clip_model_info();
INSERT INTO clip_test.paths SELECT 'rebuilt', clip_embed_bytes(clip_test.input('chelsea.png'));
SELECT count(*) AS paths, count(DISTINCT v::text) AS distinct_vectors FROM clip_test.paths;

-- The int8 image tower, when the model offers one: a different graph, close to but not the fp32 vectors.
SET pg_clip.image_precision = int8;
SELECT precision, load_mode FROM (SELECT clip_embed_bytes(clip_test.input('chelsea.png'))) s, clip_model_info();
SELECT (SELECT v FROM clip_test.paths WHERE path = 'private') <=> clip_embed_bytes(clip_test.input('chelsea.png')) < 1e-3 AS int8_close_to_fp32,
       (SELECT v FROM clip_test.paths WHERE path = 'private') <> clip_embed_bytes(clip_test.input('chelsea.png')) AS int8_not_identical;
SELECT clip_test.use_model('no_int8') IS NULL;
SELECT clip_test.try($$SELECT clip_embed_bytes(clip_test.input('chelsea.png'))$$) AS model_without_int8;
RESET pg_clip.model_path;
RESET pg_clip.image_precision;
