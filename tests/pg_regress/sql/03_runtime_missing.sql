-- A fresh session whose ONNX Runtime library is missing: a clear 58P01 with a hint, and the session lives.
SET pg_clip.onnxruntime_path = '/nonexistent/libonnxruntime.so';
SELECT clip_test.try($$SELECT clip_embed_bytes(clip_test.input('astronaut.jpg'))$$) AS missing_runtime;
-- A file that is not a shared library at all.
SELECT set_config('pg_clip.onnxruntime_path', current_setting('pg_clip_test.inputs') || '/page.html', false) IS NOT NULL;
SELECT regexp_replace(clip_test.try($$SELECT clip_embed_bytes(clip_test.input('astronaut.jpg'))$$), ': failed to load.*', ': failed to load <dlopen''s words>') AS not_a_library;
-- Fixing the setting in the same session works: nothing was half-loaded.
RESET pg_clip.onnxruntime_path;
SELECT vector_dims(clip_embed_bytes(clip_test.input('astronaut.jpg'))) AS dims_after_fix;
