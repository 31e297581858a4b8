-- clip_embed_bytes: a unit-length 512-d pgvector vector; NULL in, NULL out; formats agree.
-- The first call in a session loads the model (and says that its weights are random).
SELECT vector_dims(clip_embed_bytes(clip_test.input('astronaut.jpg'))) AS dims;
SELECT round(vector_norm(clip_embed_bytes(clip_test.input('astronaut.png')))::numeric, 5) AS norm;
SELECT pg_typeof(clip_embed_bytes(clip_test.input('astronaut.png')));
SELECT clip_embed_bytes(NULL) IS NULL AS null_in_null_out;

-- The same pixels through every lossless format: the same vector, to the last bit.
WITH v AS (
  SELECT ext, clip_embed_bytes(clip_test.input('small.' || ext)) AS e FROM unnest(ARRAY['png','bmp','tiff','webp']) ext)
SELECT ext, e = (SELECT e FROM v WHERE ext = 'png') AS same_as_png FROM v ORDER BY ext;
-- Lossy encodings of one photo land close to it; a different photo does not (random weights still map
-- near-identical pixels to near-identical vectors).
SELECT round((clip_embed_bytes(clip_test.input('astronaut.png')) <=> clip_embed_bytes(clip_test.input('astronaut.jpg')))::numeric, 2) < 0.05 AS jpeg_close_to_png,
       round((clip_embed_bytes(clip_test.input('astronaut.png')) <=> clip_embed_bytes(clip_test.input('astronaut.bmp')))::numeric, 6) AS bmp_distance;
SELECT clip_embed_bytes(clip_test.input('astronaut.png')) <> clip_embed_bytes(clip_test.input('chelsea.png')) AS different_photos_differ;
SELECT vector_dims(clip_embed_bytes(clip_test.input('small.gif'))) AS gif_dims,
       vector_dims(clip_embed_bytes(clip_test.input('one_pixel.png'))) AS one_pixel_dims;

-- EXIF orientation: applied by default, so a rotated-with-tag photo embeds like the upright one.
SELECT clip_embed_bytes(clip_test.input('rotated_exif6.png')) = clip_embed_bytes(clip_test.input('upright.png')) AS exif_applied;
SET pg_clip.exif_orientation = off;
SELECT clip_embed_bytes(clip_test.input('rotated_exif6.png')) = clip_embed_bytes(clip_test.input('upright.png')) AS same_without_exif;
RESET pg_clip.exif_orientation;

-- What is loaded, by whom, from where.
SELECT model_name, model_version, dimensions, random_weights, loaded, load_ms > 0 AS load_timed,
       length(image_model_sha256) AS sha256_hex_chars, onnxruntime_version IS NOT NULL AS runtime_known,
       intra_op_threads, inferences > 0 AS has_inferred
  FROM clip_model_info();
SELECT clip_unload_model() AS was_loaded, clip_unload_model() AS still_loaded;
SELECT loaded FROM clip_model_info();
