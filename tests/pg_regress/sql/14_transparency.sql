-- pg_clip.image_transparency: what becomes of transparent pixels. drop (the default) is transformers 4.x,
-- Pillow's convert('RGB'): the colour stored under a transparent pixel stays (black here); white is
-- transformers 5.x, which composites the image onto white first. The pure pipeline is checked pixel for pixel
-- against both eras (tests/preprocess_fidelity.rs); this checks the setting.
SET client_min_messages = error;  -- (the random-weights WARNING is shown in 01_embed)
SHOW pg_clip.image_transparency;
CREATE TEMP TABLE alpha (setting text, file text, v vector(512));
INSERT INTO alpha SELECT 'default', f, clip_embed_bytes(clip_test.input(f))
  FROM unnest(ARRAY['rgba_product.png', 'rgba_opaque.png', 'astronaut.png', 'astronaut.jpg']) AS f;
SET pg_clip.image_transparency = drop;
INSERT INTO alpha SELECT 'drop', f, clip_embed_bytes(clip_test.input(f))
  FROM unnest(ARRAY['rgba_product.png', 'rgba_opaque.png', 'astronaut.png', 'astronaut.jpg']) AS f;
-- The same bytes again under the other setting: the embedding cache must not answer with the drop vector.
SET pg_clip.image_transparency = white;
SHOW pg_clip.image_transparency;
INSERT INTO alpha SELECT 'white', f, clip_embed_bytes(clip_test.input(f))
  FROM unnest(ARRAY['rgba_product.png', 'rgba_opaque.png', 'astronaut.png', 'astronaut.jpg']) AS f;
RESET pg_clip.image_transparency;
-- A photo with transparent parts: another vector under white (random weights: the size of the move means
-- nothing, only that it moved); opaque photos, with an alpha channel or without: the same vector either way.
SELECT file, count(DISTINCT v::text) AS distinct_vectors,
       bool_and(v::text = (SELECT v::text FROM alpha d WHERE d.setting = 'default' AND d.file = a.file)
                OR setting = 'white') AS drop_is_the_default
  FROM alpha a GROUP BY file ORDER BY file;
SELECT (SELECT v FROM alpha WHERE setting = 'drop' AND file = 'rgba_product.png')
   <=> (SELECT v FROM alpha WHERE setting = 'white' AND file = 'rgba_product.png') > 1e-4 AS transparent_photo_moves;
-- And back: the cache holds both, each under its own setting.
SET pg_clip.image_transparency = white;
SELECT clip_embed_bytes(clip_test.input('rgba_product.png')) = (SELECT v FROM alpha WHERE setting = 'white' AND file = 'rgba_product.png') AS white_again;
RESET pg_clip.image_transparency;
SELECT clip_embed_bytes(clip_test.input('rgba_product.png')) = (SELECT v FROM alpha WHERE setting = 'drop' AND file = 'rgba_product.png') AS drop_again;
SELECT clip_test.try($$SET pg_clip.image_transparency = black$$) AS unknown_value;
