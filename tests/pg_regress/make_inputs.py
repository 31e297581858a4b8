"""Makes the inputs the pg_regress tests read (with pg_read_binary_file), into the directory given.

Run by scripts/test.sh with the project venv. Everything is generated or taken from a package (scikit-image's
bundled photos), so the tests need nothing from outside. Also makes broken model directories from a good one,
one per failure class the extension must report with its own SQLSTATE.
"""
import json
import os
import shutil
import struct
import sys
import zlib
from pathlib import Path

import numpy as np
from PIL import Image
import skimage

out = Path(sys.argv[1])
good_model = Path(sys.argv[2])
out.mkdir(parents=True, exist_ok=True)
data = Path(skimage.__file__).parent / "data"

# Real photos that a package ships.
astronaut = Image.open(data / "astronaut.png").convert("RGB")
astronaut.save(out / "astronaut.png")
astronaut.save(out / "astronaut.bmp")
astronaut.save(out / "astronaut.jpg", quality=92)
shutil.copy(data / "chelsea.png", out / "chelsea.png")
shutil.copy(data / "coffee.png", out / "coffee.png")
# More of them for the catalogue of the page's browser test (tests/clients/test_page.py): pictures that differ.
# Top level, as the test image host serves no subdirectories.
for name in ("rocket.jpg", "motorcycle_left.png", "hubble_deep_field.jpg", "retina.jpg", "ihc.png", "camera.png",
             "moon.png", "coins.png", "brick.png"):
    shutil.copy(data / name, out / name)

# The same pixels in every lossless format must give the same vector.
rng = np.random.default_rng(7)
small = Image.fromarray((rng.random((90, 130, 3)) * 255).astype(np.uint8))
for ext in ("png", "bmp", "tiff", "webp"):
    small.save(out / f"small.{ext}", **({"lossless": True} if ext == "webp" else {}))
small.save(out / "small.gif")  # GIF is palette-quantised: not the same pixels, but it must decode
Image.new("RGB", (1, 1), (200, 30, 30)).save(out / "one_pixel.png")

# An EXIF-rotated JPEG (orientation 6: rotate 90 degrees clockwise to display) of a non-square photo,
# and the same photo already upright: with pg_clip.exif_orientation = on they must embed identically.
upright = astronaut.resize((256, 160))
exif = Image.Exif()
exif[0x0112] = 6
upright.rotate(90, expand=True).save(out / "rotated_exif6.png", exif=exif)  # PNG eXIf chunk, lossless
upright.save(out / "upright.png")

# Transparency (14_transparency): a product photo cut out on a transparent background, the background stored as
# black (as many exporters leave it), with a half-transparent rim: pg_clip.image_transparency = drop (transformers
# 4.x) sees black there, white (5.x) sees white. And the same photo with an alpha channel that is opaque
# everywhere, which must embed the same under both settings.
product = np.asarray(astronaut.resize((240, 240)), dtype=np.uint8).copy()
yy, xx = np.mgrid[:240, :240]
radius = np.hypot(yy - 120, xx - 120)
alpha = np.where(radius < 90, 255, np.where(radius < 105, 128, 0)).astype(np.uint8)
product[alpha == 0] = 0
Image.fromarray(np.dstack([product, alpha]), "RGBA").save(out / "rgba_product.png")
Image.fromarray(np.dstack([product, np.full_like(alpha, 255)]), "RGBA").save(out / "rgba_opaque.png")

# Bad inputs, one per error class.
(out / "empty.bin").write_bytes(b"")
(out / "random.bin").write_bytes(rng.integers(0, 256, 5000, dtype=np.uint8).tobytes())
jpeg = (out / "astronaut.jpg").read_bytes()
(out / "truncated.jpg").write_bytes(jpeg[: len(jpeg) // 3])
(out / "page.html").write_bytes(b"<!DOCTYPE html><html><body>Access Denied</body></html>")
(out / "avif.bin").write_bytes(b"\x00\x00\x00\x1cftypavif\x00\x00\x00\x00avifmif1miaf" + bytes(64))


def png_chunk(kind, payload):
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


# A decompression bomb: a valid PNG header that claims 50000 x 50000 pixels, a few hundred bytes long.
bomb = b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", struct.pack(">IIBBBBB", 50000, 50000, 8, 2, 0, 0, 0))
bomb += png_chunk(b"IDAT", zlib.compress(b"\x00" * 4096)) + png_chunk(b"IEND", b"")
(out / "bomb.png").write_bytes(bomb)

# Broken model directories: each is the good model with one thing wrong. Big files are symlinked.
models = out / "models"
shutil.rmtree(models, ignore_errors=True)
manifest = json.loads((good_model / "manifest.json").read_text())


def model_copy(name, mutate_manifest=None, link=True):
    d = models / name
    d.mkdir(parents=True)
    for f in good_model.iterdir():
        if f.name != "manifest.json":
            (d / f.name).symlink_to(f) if link else shutil.copy(f, d / f.name)
    m = json.loads(json.dumps(manifest))
    if mutate_manifest:
        mutate_manifest(m)
    (d / "manifest.json").write_text(json.dumps(m, indent=1))
    return d


# The manifest lists a file that is not there.
d = model_copy("missing_file")
(d / manifest["image"]["onnx"]).unlink()
# Same size, different bytes: only the checksum can tell.
d = model_copy("corrupt_checksum")
target = d / (manifest["image"]["onnx"] + ".data")
target.unlink()
raw = bytearray((good_model / (manifest["image"]["onnx"] + ".data")).read_bytes())
raw[len(raw) // 2] ^= 0xFF
target.write_bytes(raw)
# A model that offers no int8 image tower.
model_copy("no_int8", lambda m: m.pop("image_int8", None))
# A model made before the multilingual tower (export.py --towers image,text), and one without its int8 graph.
model_copy("no_multilingual", lambda m: (m.pop("text_multilingual", None), m.pop("text_multilingual_int8", None)))
model_copy("no_multilingual_int8", lambda m: m.pop("text_multilingual_int8", None))
# A manifest that is not JSON.
d = model_copy("bad_manifest")
(d / "manifest.json").write_text("{ this is not json")
# A model whose output is not what the manifest says (manifest claims 768 dimensions, for every tower, so that the
# manifest itself is consistent and only the graph can object).
def claim_768(m):
    m["embedding_dim"] = 768
    if "text_multilingual" in m:
        m["text_multilingual"]["embedding_dim"] = 768


model_copy("wrong_dimensions", claim_768)
# An ONNX file that is not ONNX, with a manifest that matches it (so only ONNX Runtime can object).
d = model_copy("not_onnx")
(d / manifest["image"]["onnx"]).unlink()
junk = b"this is not an onnx graph" * 10
(d / manifest["image"]["onnx"]).write_bytes(junk)
import hashlib
m = json.loads((d / "manifest.json").read_text())
m["files"][manifest["image"]["onnx"]] = {"sha256": hashlib.sha256(junk).hexdigest(), "bytes": len(junk)}
(d / "manifest.json").write_text(json.dumps(m, indent=1))

# An empty directory the server may write prepared models into (07/08_shared_*).
prepared = out / "prepared"
shutil.rmtree(prepared, ignore_errors=True)
prepared.mkdir()

for root, dirs, files in os.walk(out):
    os.chmod(root, 0o755)
    for f in files:
        p = os.path.join(root, f)
        if not os.path.islink(p):
            os.chmod(p, 0o644)
os.chmod(prepared, 0o777)
print(f"pg_regress inputs in {out}")
