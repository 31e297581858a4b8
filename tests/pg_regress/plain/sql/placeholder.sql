-- On a server that does not preload pg_clip, a session loads the library with its first pg_clip call. Before
-- that, `SET pg_clip.model_path` by anyone creates a placeholder (Postgres cannot know the setting yet). When the
-- library loads, a placeholder for a superuser-only setting set by a non-superuser must not take effect:
-- otherwise any role could point the server at a model or a runtime library of its choosing.
CREATE EXTENSION pg_clip CASCADE;
SELECT current_setting('shared_preload_libraries') AS preloaded;
CREATE ROLE clip_placeholder LOGIN;
\c - clip_placeholder
-- Not loaded yet in this new session: placeholders.
SET pg_clip.model_path = '/tmp/evil-model';
SET pg_clip.onnxruntime_path = '/tmp/evil.so';
SET pg_clip.exif_orientation = off;
SHOW pg_clip.model_path;
-- The first call loads the library: the superuser-only placeholders are refused, the user-settable one stays.
SELECT model_path NOT LIKE '/tmp/%' AS default_model_path, onnxruntime_path NOT LIKE '/tmp/%' AS default_runtime
  FROM clip_model_info();
SHOW pg_clip.exif_orientation;
-- And now that the library is loaded, SET is refused outright.
SET pg_clip.model_path = '/tmp/evil-model';
-- Automatic embedding needs the library preloaded: refused, with the way to get it.
\c - postgres
CREATE TABLE shop (id int PRIMARY KEY, image_url text, image_embedding vector(512));
\set SHOW_CONTEXT never
SELECT clip_auto_embed('shop', 'image_url', 'image_embedding');
\set SHOW_CONTEXT errors
SELECT pid, state FROM clip_auto_embed_worker();
DROP TABLE shop;
DROP ROLE clip_placeholder;
