#!/usr/bin/env python3
"""Every architecture export.py knows, exported and checked end to end, one at a time (CI runs this).

    python model/check_architectures.py --work DIR [--archs a,b] [--keep NAME...] [--image-only NAME...]
                                        [--no-checkpoints]

For each architecture (default: every preset but clip-vit-base-patch32, which the rest of the test suite covers):
`export.py --random --arch NAME` into DIR/NAME, then `check_graph_fidelity.py --images 2 --texts 3` on it (the
graphs against PyTorch on two images and three texts plus the vocabulary-wide id row, each run batched and one
at a time; SigLIP's tokenizer against transformers on every check text), then checks of the directory itself:
ONNX inputs [batch, 3, S, S] and, for SigLIP, [batch, 64]; the manifest's embedding_dim, family and names; the data
files' sizes against the parameter count (float32: 4 bytes each, plus alignment padding). The directory is deleted
before the next architecture unless named in --keep (disk: siglip2-so400m-patch14-384 alone is ~4.5 GB).
--image-only NAME exports and checks only that architecture's image tower (`--towers image`), to save time.

Then, unless --no-checkpoints, the --checkpoint path on small folders made here: a CLIP that is not ViT-B/32
(`_name_or_path` names it), a SigLIP 1 and a SigLIP 2 folder each with a hub-style tokenizer.json (post-processor,
padding, truncation, which the export strips) and tokenizer_config.json, exported and checked the same way; and
the folders that must be refused (NaFlex siglip2, a non-square size, a SigLIP folder with only spiece.model when
sentencepiece is not installed, the multilingual tower beside a non-B/32 model).

Prints a table: architecture, parameters, export seconds, bytes of ONNX files, worst 1 - cos image / text.
Exit status 1 on any failure.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

# Before transformers is imported (the checkpoint folders are made here): offline, and none of its config
# warnings about the SigLIP configs' unused out-of-vocabulary bos/eos ids.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import architectures as archs  # noqa: E402

DEFAULT_ARCHS = [name for name in archs.PRESETS if name != archs.DEFAULT_ARCH]
FIDELITY_ARGS = ("--images", "2", "--texts", "3")


class Results:
    def __init__(self) -> None:
        self.rows: list[dict] = []
        self.failures: list[str] = []
        self.checks = 0

    def check(self, ok: bool, what: str) -> bool:
        self.checks += 1
        if not ok:
            self.failures.append(what)
            print(f"  FAIL: {what}", flush=True)
        return ok


def run(cmd: list[str], log: Path) -> tuple[int, float]:
    """Run a tool in its own process (each frees its gigabytes when it exits), output to `log`."""
    t0 = time.monotonic()
    with open(log, "w") as out:
        rc = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, check=False).returncode
    return rc, time.monotonic() - t0


def tail(log: Path, lines: int = 15) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])


def check_model_dir(name: str, out: Path, arch: archs.Arch | None, summary: dict, r: Results) -> int:
    """The directory's own facts; returns the ONNX files' bytes."""
    manifest = json.loads((out / "manifest.json").read_text())
    onnx_bytes = sum(meta["bytes"] for f, meta in manifest["files"].items() if ".onnx" in f)
    if arch is not None:
        want = {"model_name": arch.model_name, "architecture": arch.architecture, "embedding_dim": arch.embedding_dim}
        if not arch.legacy:
            want["family"] = arch.family
        for k, v in want.items():
            r.check(manifest.get(k) == v, f"{name}: manifest {k} = {manifest.get(k)!r}, expected {v!r}")
        size, dim = arch.image_size, arch.embedding_dim
    else:
        size, dim = manifest["image"]["preprocess"]["crop_size"], manifest["embedding_dim"]
    inputs = summary.get("inputs", {})
    r.check(inputs.get("image") == ["batch", 3, size, size], f"{name}: image input {inputs.get('image')}")
    if manifest.get("family") == "siglip" and "text" in manifest:
        r.check(inputs.get("text") == ["batch", 64], f"{name}: text input {inputs.get('text')}")
    r.check(summary.get("embedding_dim") == dim, f"{name}: embedding_dim {summary.get('embedding_dim')} != {dim}")
    # float32 weights: 4 bytes a parameter of the tower, plus up to 64 KiB of alignment padding per tensor (a few
    # MiB in all), less the tensors under 1 KiB kept inside the .onnx (a few % for the small checkpoint models);
    # a graph missing a layer or holding a weight twice falls outside.
    for tower, params in summary.get("tower_parameters", {}).items():
        if tower not in manifest:
            continue
        data = manifest["files"][manifest[tower]["onnx"] + ".data"]["bytes"]
        r.check(params * 4 * 0.95 <= data <= params * 4 * 1.02 + 20 * 2**20,
                f"{name}: {tower}: {data:,} bytes of weights for {params:,} parameters")
    return onnx_bytes


def check_arch(name: str, work: Path, keep: bool, seed: int, image_only: bool, r: Results) -> None:
    arch = archs.PRESETS[name]
    out = work / name
    logs = work / "logs"
    towers = "image" if image_only else "image,text"
    print(f"\n=== {name} ({arch.architecture}; {towers}) ===", flush=True)
    rc, export_s = run([sys.executable, str(HERE / "export.py"), "--random", "--seed", str(seed), "--arch", name,
                        "--towers", towers, "--out", str(out), "--force"], logs / f"{name}.export.log")
    print(f"  export: exit {rc}, {export_s:.0f}s", flush=True)
    if not r.check(rc == 0, f"{name}: export.py exited {rc}:\n{tail(logs / f'{name}.export.log')}"):
        return
    summary_path = logs / f"{name}.fidelity.json"
    rc, fid_s = run([sys.executable, str(HERE / "check_graph_fidelity.py"), "--model", str(out), *FIDELITY_ARGS,
                     "--summary-json", str(summary_path)], logs / f"{name}.fidelity.log")
    print(f"  fidelity: exit {rc}, {fid_s:.0f}s", flush=True)
    r.check(rc == 0, f"{name}: check_graph_fidelity.py exited {rc}:\n{tail(logs / f'{name}.fidelity.log', 25)}")
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    onnx_bytes = check_model_dir(name, out, arch, summary, r)
    if arch.family == "siglip" and not image_only:
        rc, _ = run([sys.executable, str(HERE / "siglip_tokens.py"), "--model", str(out), "--self-check"],
                    logs / f"{name}.tokens.log")
        r.check(rc == 0, f"{name}: siglip_tokens.py --self-check exited {rc}:\n{tail(logs / f'{name}.tokens.log')}")
    r.rows.append({"arch": name, "parameters": summary.get("parameters"), "export_s": export_s, "fidelity_s": fid_s,
                   "onnx_bytes": onnx_bytes, "image": summary.get("image_max_1_minus_cos"),
                   "text": summary.get("text_max_1_minus_cos")})
    if not keep:
        shutil.rmtree(out)


# ---------------------------------------------------------------------------------------------- checkpoints

# Small configs: the checkpoint path's logic (config reading, names, preprocessing, tokenizer) does not depend
# on size, and these export in seconds.
TINY_CLIP = dict(
    text_config=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                     projection_dim=48, bos_token_id=0, eos_token_id=2),
    vision_config=dict(hidden_size=96, intermediate_size=192, num_hidden_layers=2, num_attention_heads=4,
                       image_size=64, patch_size=16, projection_dim=48, hidden_act="gelu"),
    projection_dim=48)
TINY_SIGLIP = dict(
    text_config=dict(vocab_size=8000, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                     num_attention_heads=4),
    vision_config=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                       image_size=96, patch_size=16))


def write_folder(kind: str, folder: Path, seed: int, extra_config: dict | None = None) -> None:
    """A seeded random model saved as a hub-style HF folder (config.json + model.safetensors + processor and
    tokenizer files as the hub has them)."""
    import torch
    from transformers import CLIPConfig, CLIPModel, SiglipConfig, SiglipModel
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    torch.manual_seed(seed)
    if kind == "clip":
        model = CLIPModel(CLIPConfig(**TINY_CLIP))
    else:
        model = SiglipModel(SiglipConfig(**TINY_SIGLIP))
    model.save_pretrained(folder)
    cfg = json.loads((folder / "config.json").read_text())
    cfg.update(extra_config or {})
    (folder / "config.json").write_text(json.dumps(cfg, indent=2))


def hub_tokenizer(folder: Path, lowercase: bool, siglip2: bool) -> None:
    """The test tokenizer dressed as a hub tokenizer.json (post-processor appending EOS, padding to 64,
    truncation), with the tokenizer_config.json flags transformers reads."""
    import test_tokenizer
    from tokenizers import processors

    tok = test_tokenizer.build()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    tok.enable_truncation(max_length=64)
    tok.enable_padding(length=64, pad_id=0, pad_token="<pad>")
    tok.save(str(folder / "tokenizer.json"))
    config = {"eos_token": "</s>", "unk_token": "<unk>", "model_max_length": 64, "do_lower_case": lowercase}
    if siglip2:
        config.update(pad_token="<pad>", bos_token="<s>", add_bos_token=False, add_eos_token=True)
    else:
        config.update(pad_token="</s>")  # SigLIP 1 pads with EOS
    (folder / "tokenizer_config.json").write_text(json.dumps(config))


def check_checkpoints(work: Path, r: Results) -> None:
    print("\n=== checkpoint folders (small random models in hub layout) ===", flush=True)
    logs = work / "logs"
    root = work / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    try:
        clip = root / "my-clip"
        write_folder("clip", clip, 1, {"_name_or_path": "someone/clip-vit-tiny-finetuned"})
        (clip / "preprocessor_config.json").write_text(json.dumps(
            {"size": {"shortest_edge": 64}, "crop_size": {"height": 64, "width": 64}, "resample": 3,
             "image_mean": archs.OPENAI_MEAN, "image_std": archs.OPENAI_STD, "rescale_factor": 1 / 255}))
        s1 = root / "siglip1-folder"
        write_folder("siglip", s1, 2)
        hub_tokenizer(s1, lowercase=True, siglip2=False)
        (s1 / "preprocessor_config.json").write_text(json.dumps(
            {"size": {"height": 96, "width": 96}, "resample": 3, "image_mean": [0.5] * 3, "image_std": [0.5] * 3}))
        s2 = root / "siglip2-folder"
        write_folder("siglip", s2, 3, {"_name_or_path": "google/siglip2-tiny-patch16-96"})
        hub_tokenizer(s2, lowercase=False, siglip2=True)
        (s2 / "preprocessor_config.json").write_text(json.dumps(
            {"size": {"height": 96, "width": 96}, "resample": 2, "image_mean": [0.5] * 3, "image_std": [0.5] * 3,
             "rescale_factor": 1 / 255, "do_convert_rgb": None}))

        expect = {
            clip: dict(family="clip", model_name="clip-vit-tiny-finetuned", architecture="someone/clip-vit-tiny-finetuned",
                       embedding_dim=48, preprocess={"mode": "shortest_edge_center_crop", "shortest_edge": 64,
                                                     "crop_size": 64, "resample": "bicubic"}),
            s1: dict(family="siglip", model_name="siglip1-folder", architecture="SiglipModel (siglip1-folder)",
                     embedding_dim=64, preprocess={"mode": "squash", "crop_size": 96, "resample": "bicubic"},
                     tokenizer={"lowercase": True, "add_bos": False, "add_eos": True, "bos_id": 2, "eos_id": 1,
                                "pad_id": 1, "max_length": 64, "test_tokenizer": False}),
            s2: dict(family="siglip", model_name="siglip2-tiny-patch16-96",
                     architecture="google/siglip2-tiny-patch16-96", embedding_dim=64,
                     preprocess={"mode": "squash", "crop_size": 96, "resample": "bilinear"},
                     tokenizer={"lowercase": False, "add_bos": False, "add_eos": True, "bos_id": 2, "eos_id": 1,
                                "pad_id": 0, "max_length": 64, "test_tokenizer": False}),
        }
        for folder, want in expect.items():
            out = root / f"out-{folder.name}"
            rc, secs = run([sys.executable, str(HERE / "export.py"), "--checkpoint", str(folder), "--out", str(out)],
                           logs / f"ckpt-{folder.name}.export.log")
            if not r.check(rc == 0, f"{folder.name}: export.py exited {rc}:\n"
                                    f"{tail(logs / f'ckpt-{folder.name}.export.log')}"):
                continue
            m = json.loads((out / "manifest.json").read_text())
            for k in ("family", "model_name", "architecture", "embedding_dim"):
                r.check(m.get(k) == want[k], f"{folder.name}: manifest {k} = {m.get(k)!r}, expected {want[k]!r}")
            r.check(m["model_version"] == want["model_name"] and m["random_weights"] is False,
                    f"{folder.name}: model_version {m['model_version']}")
            pre = m["image"]["preprocess"]
            r.check(all(pre.get(k) == v for k, v in want["preprocess"].items()), f"{folder.name}: preprocess {pre}")
            if "tokenizer" in want:
                tok = m["text"]["tokenizer"]
                r.check(all(tok.get(k) == v for k, v in want["tokenizer"].items()), f"{folder.name}: tokenizer {tok}")
            summary_path = logs / f"ckpt-{folder.name}.fidelity.json"
            rc, fid_s = run([sys.executable, str(HERE / "check_graph_fidelity.py"), "--model", str(out),
                             "--checkpoint", str(folder), "--images", "4", "--summary-json", str(summary_path)],
                            logs / f"ckpt-{folder.name}.fidelity.log")
            r.check(rc == 0, f"{folder.name}: check_graph_fidelity.py exited {rc}:\n"
                             f"{tail(logs / f'ckpt-{folder.name}.fidelity.log', 25)}")
            summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
            check_model_dir(folder.name, out, None, summary, r)
            # A second run is a no-op.
            mtime = (out / "manifest.json").stat().st_mtime_ns
            rc, _ = run([sys.executable, str(HERE / "export.py"), "--checkpoint", str(folder), "--out", str(out)],
                        logs / f"ckpt-{folder.name}.rerun.log")
            r.check(rc == 0 and (out / "manifest.json").stat().st_mtime_ns == mtime,
                    f"{folder.name}: second export was not a no-op")
            print(f"  {folder.name}: exported in {secs:.0f}s, fidelity in {fid_s:.0f}s, worst 1 - cos image "
                  f"{summary.get('image_max_1_minus_cos', float('nan')):.1e} text "
                  f"{summary.get('text_max_1_minus_cos', float('nan')):.1e}", flush=True)
        rc, _ = run([sys.executable, str(HERE / "export.py"), "--checkpoint", str(clip), "--name", "shop-clip",
                     "--out", str(root / "out-named")], logs / "ckpt-named.export.log")
        named = json.loads((root / "out-named" / "manifest.json").read_text()) if rc == 0 else {}
        r.check(named.get("model_name") == "shop-clip" == named.get("model_version"), f"--name: {named.get('model_name')}")

        check_refusals(root, clip, s2, r)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def check_refusals(root: Path, clip: Path, siglip: Path, r: Results) -> None:
    """Folders and options export.py must refuse with exit 2 and a message naming the cause, writing nothing."""
    cases = []
    naflex = root / "naflex"
    shutil.copytree(siglip, naflex)
    cfg = json.loads((naflex / "config.json").read_text())
    (naflex / "config.json").write_text(json.dumps({**cfg, "model_type": "siglip2"}))
    cases.append(("NaFlex siglip2", ["--checkpoint", str(naflex)], "NaFlex"))
    oblong = root / "oblong"
    shutil.copytree(siglip, oblong)
    (oblong / "preprocessor_config.json").write_text(json.dumps({"size": {"height": 96, "width": 128}}))
    cases.append(("non-square size", ["--checkpoint", str(oblong)], "non-square"))
    spiece = root / "spiece-only"
    shutil.copytree(siglip, spiece)
    (spiece / "tokenizer.json").unlink()
    (spiece / "spiece.model").write_bytes(b"\0")
    try:
        import sentencepiece  # noqa: F401
    except ImportError:
        cases.append(("spiece.model only, no sentencepiece", ["--checkpoint", str(spiece)], "sentencepiece"))
    cases.append(("multilingual beside a non-B/32 CLIP",
                  ["--checkpoint", str(clip), "--towers", "image,text,multilingual", "--multilingual-checkpoint",
                   str(clip)], "ViT-B/32"))
    cases.append(("multilingual beside SigLIP", ["--random", "--arch", "siglip2-base-patch16-224", "--towers",
                                                 "image,multilingual"], "ViT-B/32"))
    for what, args, words in cases:
        out = root / "refused"
        done = subprocess.run([sys.executable, str(HERE / "export.py"), *args, "--out", str(out)],
                              capture_output=True, text=True, check=False)
        ok = done.returncode == 2 and words in done.stderr and not out.exists()
        r.check(ok, f"{what}: exit {done.returncode}, stderr {done.stderr.strip()[-300:]!r}")
        print(f"  refused as it should: {what}: {'yes' if ok else 'NO'}  ({done.stderr.strip().splitlines()[-1][:110] if done.stderr.strip() else ''})",
              flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", required=True, type=Path, help="scratch directory (model directories, logs)")
    ap.add_argument("--archs", default=",".join(DEFAULT_ARCHS),
                    help=f"comma list of presets (default: {','.join(DEFAULT_ARCHS)})")
    ap.add_argument("--keep", nargs="*", default=[], metavar="NAME", help="keep these exports in WORK/NAME")
    ap.add_argument("--image-only", nargs="*", default=[], metavar="NAME",
                    help="export and check only these architectures' image towers (saves time on the big ones)")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--no-checkpoints", action="store_true", help="skip the --checkpoint folders")
    args = ap.parse_args()
    names = [n.strip() for n in args.archs.split(",") if n.strip()]
    unknown = [n for n in names + args.keep + args.image_only if n not in archs.PRESETS]
    if unknown:
        ap.error(f"unknown architectures {unknown}; presets: {', '.join(archs.PRESETS)}")
    work = args.work.expanduser().absolute()
    (work / "logs").mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    r = Results()
    for name in names:
        check_arch(name, work, name in args.keep, args.seed, name in args.image_only, r)
    if not args.no_checkpoints:
        t1 = time.monotonic()
        check_checkpoints(work, r)
        checkpoints_s = time.monotonic() - t1
    total = time.monotonic() - t0

    print(f"\n{'architecture':28s} {'parameters':>12s} {'export s':>9s} {'check s':>8s} {'ONNX bytes':>15s} "
          f"{'1-cos image':>12s} {'1-cos text':>11s}")
    for row in r.rows:
        def fmt(v):
            return f"{v:.1e}" if isinstance(v, float) else "-"
        print(f"{row['arch']:28s} {row['parameters'] or 0:>12,d} {row['export_s']:9.0f} {row['fidelity_s']:8.0f} "
              f"{row['onnx_bytes']:>15,d} {fmt(row['image']):>12s} {fmt(row['text']):>11s}")
    if not args.no_checkpoints:
        print(f"checkpoint folders: {checkpoints_s:.0f}s")
    print(f"total {total:.0f}s ({total / 60:.1f} min); kept: {', '.join(str(work / k) for k in args.keep) or 'none'}")
    print(f"\n{r.checks - len(r.failures)} passed, {len(r.failures)} failed")
    for item in r.failures:
        print(f"  - {item.splitlines()[0]}")
    return 1 if r.failures else 0


if __name__ == "__main__":
    sys.exit(main())
