"""The reference pipeline's cost per image, for scripts/bench.sh: what sentence-transformers clip-ViT-B-32 does
for one photo (PIL decode, transformers CLIPImageProcessor, PyTorch CLIPModel.get_image_features), on the same
weights as the model directory, with the same number of threads as a pg_clip backend.

usage: bench_reference.py --model DIR [--rounds 3] [--threads 1] IMAGE...   (prints one JSON line)
"""
import argparse
import io
import json
import sys
import time
from pathlib import Path

import torch
from PIL import Image
# transformers 5's CLIPImageProcessor needs torchvision; the PIL one is what sentence-transformers ran.
from transformers import CLIPImageProcessorPil as CLIPImageProcessor

sys.path.insert(0, str(Path(__file__).resolve().parent))
import export  # noqa: E402  (the export tool rebuilds the exact PyTorch model a model dir came from)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True, type=Path)
    ap.add_argument("--checkpoint", type=Path, default=None)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("images", nargs="+", type=Path)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    manifest = json.loads((args.model / "manifest.json").read_text())
    model = export.model_from_manifest(manifest, args.checkpoint).eval()
    p = manifest["image"]["preprocess"]
    processor = CLIPImageProcessor(
        do_resize=True, size={"shortest_edge": p["shortest_edge"]}, resample=3, do_center_crop=True,
        crop_size={"height": p["crop_size"], "width": p["crop_size"]}, do_rescale=True,
        rescale_factor=p["rescale_factor"], do_normalize=True, image_mean=p["mean"], image_std=p["std"],
        do_convert_rgb=True)
    blobs = [path.read_bytes() for path in args.images]

    def one(blob):
        t0 = time.perf_counter()
        image = Image.open(io.BytesIO(blob))
        pixels = processor(images=image, return_tensors="pt")["pixel_values"]
        t1 = time.perf_counter()
        with torch.inference_mode():
            features = model.get_image_features(pixel_values=pixels)
        if not torch.is_tensor(features):  # transformers 5 may wrap it in a ModelOutput
            features = features.pooler_output
        features.sum().item()
        t2 = time.perf_counter()
        return (t1 - t0) * 1e3, (t2 - t1) * 1e3

    for blob in blobs[:3]:
        one(blob)  # warm-up
    pre, inf = [], []
    for _ in range(args.rounds):
        for blob in blobs:
            a, b = one(blob)
            pre.append(a)
            inf.append(b)
    total = sorted(a + b for a, b in zip(pre, inf))
    pre.sort()
    inf.sort()

    def pct(v, q):
        return v[round((len(v) - 1) * q)]

    print(json.dumps({"preprocess_p50": pct(pre, .5), "inference_p50": pct(inf, .5), "total_p50": pct(total, .5),
                      "total_p95": pct(total, .95), "n": len(total), "threads": args.threads,
                      "torch": torch.__version__}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
