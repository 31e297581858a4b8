-- Every class of bad input gets an ERROR with its own SQLSTATE (never XX000), and the session goes on.
SELECT clip_test.try($$SELECT clip_embed_bytes('\x'::bytea)$$) AS empty;
SELECT clip_test.try($$SELECT clip_embed_bytes(clip_test.input('random.bin'))$$) AS random_bytes;
SELECT clip_test.try($$SELECT clip_embed_bytes(clip_test.input('truncated.jpg'))$$) AS truncated_jpeg;
SELECT clip_test.try($$SELECT clip_embed_bytes(clip_test.input('page.html'))$$) AS html_page;
SELECT clip_test.try($$SELECT clip_embed_bytes(clip_test.input('avif.bin'))$$) AS avif;
SELECT clip_test.try($$SELECT clip_embed_bytes(clip_test.input('bomb.png'))$$) AS decompression_bomb;
SET pg_clip.max_image_bytes = '100kB';
SELECT clip_test.try($$SELECT clip_embed_bytes(clip_test.input('astronaut.png'))$$) AS over_byte_limit;
RESET pg_clip.max_image_bytes;
SET pg_clip.max_image_pixels = 10000;
SELECT clip_test.try($$SELECT clip_embed_bytes(clip_test.input('astronaut.jpg'))$$) AS over_pixel_limit;
RESET pg_clip.max_image_pixels;

-- Model files: missing, corrupt, inconsistent. Each error names the file and cause.
SET pg_clip.model_path = '/nonexistent/pg_clip/model';
SELECT clip_test.try($$SELECT clip_embed_bytes(clip_test.input('astronaut.jpg'))$$) AS missing_model_dir;
SELECT clip_test.try($$SELECT * FROM clip_model_info()$$) AS info_of_missing_model;
SELECT clip_test.use_model('missing_file') IS NULL;
SELECT clip_test.try($$SELECT clip_embed_bytes(clip_test.input('astronaut.jpg'))$$) AS missing_model_file;
SELECT clip_test.use_model('corrupt_checksum') IS NULL;
SELECT regexp_replace(clip_test.try($$SELECT clip_embed_bytes(clip_test.input('astronaut.jpg'))$$), '[0-9a-f]{64}', '<sha256>', 'g') AS corrupt_model_file;
SELECT clip_test.use_model('bad_manifest') IS NULL;
SELECT clip_test.try($$SELECT clip_embed_bytes(clip_test.input('astronaut.jpg'))$$) AS bad_manifest;
SELECT clip_test.use_model('wrong_dimensions') IS NULL;
SELECT clip_test.try($$SELECT clip_embed_bytes(clip_test.input('astronaut.jpg'))$$) AS wrong_dimensions;
SELECT clip_test.use_model('not_onnx') IS NULL;
SELECT regexp_replace(clip_test.try($$SELECT clip_embed_bytes(clip_test.input('astronaut.jpg'))$$), 'could not load it: .*', 'could not load it: <ONNX Runtime''s words>') AS not_onnx;
RESET pg_clip.model_path;

-- After all that, this session still embeds.
SELECT vector_dims(clip_embed_bytes(clip_test.input('coffee.png'))) AS still_works;
