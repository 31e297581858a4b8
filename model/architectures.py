"""The model architectures export.py builds: CLIP (any size) and SigLIP / SigLIP 2 at a fixed resolution.

An `Arch` is everything about a model that is not its weights and that the extension must know: the family, the
names that tag its vectors, the image side and the embedding width, the preprocessing, and for SigLIP the text
tokenizer's rules. It comes from a preset (`PRESETS`, for `--random --arch NAME`: the published configs written
out below, not taken from a hub or from library defaults) or from a checkpoint folder's JSON files
(`checkpoint_arch`), read without importing transformers so that "the directory is up to date" stays quick.

Sources of the configs and preprocessing: /work/notes/issue20-research.md sections 1 and 2 (each hub
`config.json` omits the values equal to transformers' class defaults; those are filled in here). Two values there
are inferred rather than read: siglip2-so400m-patch14-384's config.json (the SigLIP 1 so400m config with the
256k vocabulary) and its preprocessor (bilinear, as its siglip2 siblings).

Stdlib only at import: export.py's quick paths import this module.
"""
from __future__ import annotations

import json
import re
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path

# ---------------------------------------------------------------------------------------------- CLIP

# openai/clip-vit-base-patch32's config.json, spelled out so that no library default decides the architecture.
# eos_token_id=2 (not 49407) is what that config says; with it, HF pools the text tower at argmax(input_ids),
# the position of the highest token id, which is the first <|endoftext|> (49407) in OpenAI-tokenized input.
# Every OpenAI CLIP config on the hub carries the same legacy ids, so every CLIP preset pools the same way.
CLIP_B32_TEXT = dict(
    vocab_size=49408,
    hidden_size=512,
    intermediate_size=2048,
    projection_dim=512,
    num_hidden_layers=12,
    num_attention_heads=8,
    max_position_embeddings=77,
    hidden_act="quick_gelu",
    layer_norm_eps=1e-5,
    attention_dropout=0.0,
    dropout=0.0,
    initializer_range=0.02,
    initializer_factor=1.0,
    bos_token_id=0,
    eos_token_id=2,
    pad_token_id=1,
)
CLIP_B32_VISION = dict(
    hidden_size=768,
    intermediate_size=3072,
    projection_dim=512,
    num_hidden_layers=12,
    num_attention_heads=12,
    num_channels=3,
    image_size=224,
    patch_size=32,
    hidden_act="quick_gelu",
    layer_norm_eps=1e-5,
    attention_dropout=0.0,
    dropout=0.0,
    initializer_range=0.02,
    initializer_factor=1.0,
)
CLIP_B32_MODEL = dict(projection_dim=512, logit_scale_init_value=2.6592, initializer_factor=1.0)

# The keys that decide what a CLIP graph computes (the rest is training-time detail or token bookkeeping).
# transformers' CLIPTextConfig / CLIPVisionConfig / CLIPConfig defaults are ViT-B/32's values for every one of
# them, so a hub config.json that omits a key means B/32's value.
CLIP_TEXT_KEYS = ("vocab_size", "hidden_size", "intermediate_size", "projection_dim", "num_hidden_layers",
                  "num_attention_heads", "max_position_embeddings", "hidden_act", "layer_norm_eps")
CLIP_VISION_KEYS = ("hidden_size", "intermediate_size", "projection_dim", "num_hidden_layers", "num_attention_heads",
                    "num_channels", "image_size", "patch_size", "hidden_act", "layer_norm_eps")

OPENAI_MEAN = [0.48145466, 0.4578275, 0.40821073]
OPENAI_STD = [0.26862954, 0.26130258, 0.27577711]
# openai/clip-vit-base-patch32's preprocessor_config.json (what the extension's Rust preprocessing reproduces).
# ViT-B/32's manifest has no "mode" (it predates the other architectures; the extension reads a missing mode as
# this one); every other CLIP manifest says "mode": "shortest_edge_center_crop".
OPENAI_PREPROCESS = {
    "shortest_edge": 224,
    "crop_size": 224,
    "resample": "bicubic",
    "rescale_factor": 1 / 255,
    "mean": OPENAI_MEAN,
    "std": OPENAI_STD,
}
CLIP_MODE = "shortest_edge_center_crop"
# PIL resampling filter numbers as stored in HF preprocessor configs.
PIL_RESAMPLE = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}

# ---------------------------------------------------------------------------------------------- SigLIP

# transformers' SiglipTextConfig / SiglipVisionConfig defaults (= google/siglip-base-patch16-224 but for what its
# config.json states): what a hub config.json means where it says nothing. bos/eos 49406/49407 are out-of-vocab
# leftovers nothing in the model reads (the text tower pools at the last position, whatever is there).
SIGLIP_TEXT_DEFAULTS = dict(
    vocab_size=32000,
    hidden_size=768,
    intermediate_size=3072,
    num_hidden_layers=12,
    num_attention_heads=12,
    max_position_embeddings=64,
    hidden_act="gelu_pytorch_tanh",
    layer_norm_eps=1e-6,
    attention_dropout=0.0,
    pad_token_id=1,
    bos_token_id=49406,
    eos_token_id=49407,
)
SIGLIP_VISION_DEFAULTS = dict(
    hidden_size=768,
    intermediate_size=3072,
    num_hidden_layers=12,
    num_attention_heads=12,
    num_channels=3,
    image_size=224,
    patch_size=16,
    hidden_act="gelu_pytorch_tanh",
    layer_norm_eps=1e-6,
    attention_dropout=0.0,
    vision_use_head=True,
)
SIGLIP_TEXT_KEYS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                    "max_position_embeddings", "hidden_act", "layer_norm_eps", "projection_size")
SIGLIP_VISION_KEYS = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                      "num_channels", "image_size", "patch_size", "hidden_act", "layer_norm_eps", "vision_use_head")
SIGLIP_MEAN = [0.5, 0.5, 0.5]
SIGLIP_STD = [0.5, 0.5, 0.5]
SQUASH_MODE = "squash"


@dataclass(frozen=True)
class TextRules:
    """How a SigLIP text becomes its context_length ids (model/siglip_tokens.py applies them; so does the
    extension): optionally lowercase, encode with tokenizer.json without special tokens, prepend BOS if add_bos,
    cut so that EOS still fits, append EOS if add_eos, pad with pad_id to max_length."""

    lowercase: bool
    add_bos: bool
    add_eos: bool
    bos_id: int | None
    eos_id: int
    pad_id: int
    max_length: int = 64

    def manifest(self) -> dict:
        return {"lowercase": self.lowercase, "add_bos": self.add_bos, "add_eos": self.add_eos, "bos_id": self.bos_id,
                "eos_id": self.eos_id, "pad_id": self.pad_id, "padding": "max_length", "max_length": self.max_length}

    @classmethod
    def from_manifest(cls, entry: dict) -> TextRules:
        return cls(lowercase=bool(entry["lowercase"]), add_bos=bool(entry["add_bos"]), add_eos=bool(entry["add_eos"]),
                   bos_id=entry["bos_id"], eos_id=int(entry["eos_id"]), pad_id=int(entry["pad_id"]),
                   max_length=int(entry["max_length"]))


@dataclass(frozen=True)
class Arch:
    """A model as the manifest describes it. `legacy` marks openai/clip-vit-base-patch32's architecture, whose
    manifest stays exactly as before the other architectures existed (no "family", no preprocess "mode")."""

    family: str  # "clip" | "siglip"
    model_name: str
    architecture: str
    image_size: int
    embedding_dim: int
    context_length: int
    preprocess: dict
    text_rules: TextRules | None = None  # SigLIP only
    legacy: bool = False
    # For presets: the config dicts transformers builds the model from (None for checkpoints, which bring theirs).
    text_config: dict | None = field(default=None, compare=False)
    vision_config: dict | None = field(default=None, compare=False)
    model_config: dict | None = field(default=None, compare=False)

    @property
    def graph_prefix(self) -> str:
        """The ONNX graph names' prefix (ViT-B/32's is what it always was)."""
        return "clip_vit_b32" if self.legacy else re.sub(r"[^a-z0-9]+", "_", self.model_name.lower()).strip("_")

    def transformers_config(self):
        """The transformers config of a preset."""
        if self.family == "clip":
            from transformers import CLIPConfig

            return CLIPConfig(text_config=dict(self.text_config), vision_config=dict(self.vision_config),
                              **self.model_config)
        from transformers import SiglipConfig

        return SiglipConfig(text_config=dict(self.text_config), vision_config=dict(self.vision_config),
                            **self.model_config)


def _clip_preset(model_name: str, architecture: str, text: dict, vision: dict, projection_dim: int) -> Arch:
    text_config = {**CLIP_B32_TEXT, **text, "projection_dim": projection_dim}
    vision_config = {**CLIP_B32_VISION, **vision, "projection_dim": projection_dim}
    size = vision_config["image_size"]
    return Arch(
        family="clip", model_name=model_name, architecture=architecture, image_size=size,
        embedding_dim=projection_dim, context_length=text_config["max_position_embeddings"],
        preprocess={"mode": CLIP_MODE, **OPENAI_PREPROCESS, "shortest_edge": size, "crop_size": size},
        text_config=text_config, vision_config=vision_config,
        model_config={**CLIP_B32_MODEL, "projection_dim": projection_dim},
    )


def _siglip_preset(model_name: str, architecture: str, text: dict, vision: dict, resample: str,
                   rules: TextRules) -> Arch:
    text_config = {**SIGLIP_TEXT_DEFAULTS, **text}
    vision_config = {**SIGLIP_VISION_DEFAULTS, **vision}
    size = vision_config["image_size"]
    return Arch(
        family="siglip", model_name=model_name, architecture=architecture, image_size=size,
        embedding_dim=vision_config["hidden_size"], context_length=text_config["max_position_embeddings"],
        preprocess=squash_preprocess(size, resample, SIGLIP_MEAN, SIGLIP_STD, 1 / 255),
        text_rules=replace(rules, max_length=text_config["max_position_embeddings"]),
        text_config=text_config, vision_config=vision_config, model_config=dict(initializer_factor=1.0),
    )


def squash_preprocess(size: int, resample: str, mean: list, std: list, rescale_factor: float) -> dict:
    """SigLIP's: resize to size x size ignoring the aspect ratio (SiglipImageProcessor; no crop). shortest_edge and
    crop_size both say the side, so that a reader that knows only those two still gets the tensor's shape."""
    return {"mode": SQUASH_MODE, "shortest_edge": size, "crop_size": size, "resample": resample,
            "rescale_factor": rescale_factor, "mean": list(mean), "std": list(std)}


# SigLIP 1 (google/siglip-base-patch16-224's tokenizer_config.json): sentencepiece, lowercased, no BOS, </s> (1)
# appended and used as padding. SigLIP 2 (Gemma tokenizer): <pad> 0, <eos> 1, <bos> 2; no BOS (add_bos_token
# false), EOS appended (big_vision's eos="sticky": a cut text keeps it), padded with <pad>. Not lowercased: the
# fixed-resolution checkpoints are model_type "siglip", whose transformers tokenizer (GemmaTokenizer) does not
# lowercase; big_vision lowercased ASCII at training time (see model/README.md).
SIGLIP1_RULES = TextRules(lowercase=True, add_bos=False, add_eos=True, bos_id=None, eos_id=1, pad_id=1)
SIGLIP2_RULES = TextRules(lowercase=False, add_bos=False, add_eos=True, bos_id=2, eos_id=1, pad_id=0)

# `--random --arch NAME`. clip-vit-base-patch32's entry is the one export.py always built.
PRESETS: dict[str, Arch] = {
    "clip-vit-base-patch32": Arch(
        family="clip", model_name="clip-ViT-B-32", architecture="openai/clip-vit-base-patch32", image_size=224,
        embedding_dim=512, context_length=77, preprocess=dict(OPENAI_PREPROCESS), legacy=True,
        text_config=CLIP_B32_TEXT, vision_config=CLIP_B32_VISION, model_config=CLIP_B32_MODEL,
    ),
    "clip-vit-base-patch16": _clip_preset(
        "clip-ViT-B-16", "openai/clip-vit-base-patch16", text={}, vision=dict(patch_size=16), projection_dim=512),
    "clip-vit-large-patch14": _clip_preset(
        "clip-ViT-L-14", "openai/clip-vit-large-patch14",
        text=dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12),
        vision=dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                    patch_size=14),
        projection_dim=768),
    "clip-vit-large-patch14-336": _clip_preset(
        "clip-ViT-L-14-336", "openai/clip-vit-large-patch14-336",
        text=dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12),
        vision=dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                    patch_size=14, image_size=336),
        projection_dim=768),
    "siglip-base-patch16-224": _siglip_preset(
        "siglip-base-patch16-224", "google/siglip-base-patch16-224", text=dict(vocab_size=32000), vision={},
        resample="bicubic", rules=SIGLIP1_RULES),
    "siglip2-base-patch16-224": _siglip_preset(
        "siglip2-base-patch16-224", "google/siglip2-base-patch16-224", text=dict(vocab_size=256000), vision={},
        resample="bilinear", rules=SIGLIP2_RULES),
    "siglip2-so400m-patch14-384": _siglip_preset(
        "siglip2-so400m-patch14-384", "google/siglip2-so400m-patch14-384",
        text=dict(vocab_size=256000, hidden_size=1152, intermediate_size=4304, num_hidden_layers=27,
                  num_attention_heads=16),
        vision=dict(hidden_size=1152, intermediate_size=4304, num_hidden_layers=27, num_attention_heads=16,
                    patch_size=14, image_size=384),
        resample="bilinear", rules=SIGLIP2_RULES),
}
DEFAULT_ARCH = "clip-vit-base-patch32"
B32 = PRESETS[DEFAULT_ARCH]


def preset_for_manifest(manifest: dict) -> Arch:
    """The preset a random-weight manifest was exported from (by its architecture; a manifest without one, or
    an older one, is ViT-B/32's)."""
    for arch in PRESETS.values():
        if arch.architecture == manifest.get("architecture", B32.architecture):
            return arch
    raise ValueError(f"no preset has architecture {manifest.get('architecture')!r}")


# ---------------------------------------------------------------------------------------------- checkpoints


class ArchError(Exception):
    """A checkpoint folder that cannot be exported (export.py reports it as an ExportError)."""


def _filled(raw: dict | None, defaults: dict, keys: tuple[str, ...]) -> dict:
    raw = raw or {}
    return {k: raw.get(k, defaults.get(k)) for k in keys}


def architecture_values(cfg: dict) -> tuple[str, dict, dict, dict]:
    """(family, text values, vision values, top-level values) of a config.json, the class defaults filled in."""
    model_type = cfg.get("model_type")
    if model_type == "clip":
        top = {"projection_dim": cfg.get("projection_dim", CLIP_B32_MODEL["projection_dim"])}
        return ("clip", _filled(cfg.get("text_config"), CLIP_B32_TEXT, CLIP_TEXT_KEYS),
                _filled(cfg.get("vision_config"), CLIP_B32_VISION, CLIP_VISION_KEYS), top)
    if model_type == "siglip":
        text = _filled(cfg.get("text_config"), SIGLIP_TEXT_DEFAULTS, SIGLIP_TEXT_KEYS)
        if text["projection_size"] is None:
            text["projection_size"] = text["hidden_size"]
        return "siglip", text, _filled(cfg.get("vision_config"), SIGLIP_VISION_DEFAULTS, SIGLIP_VISION_KEYS), {}
    if model_type == "siglip2":
        raise ArchError("model_type siglip2 is SigLIP 2 NaFlex (variable resolution, Siglip2Model), which pg_clip "
                        "does not run; the fixed-resolution SigLIP 2 checkpoints (e.g. siglip2-base-patch16-224) "
                        "have model_type siglip")
    raise ArchError(f"model_type {model_type!r}: export.py builds CLIPModel (clip) and SiglipModel (siglip)")


def b32_differences(cfg: dict) -> list[str]:
    """How a CLIP config.json differs from ViT-B/32's architecture ([] when it is ViT-B/32)."""
    family, text, vision, top = architecture_values(cfg)
    if family != "clip":
        return [f"model_type {cfg.get('model_type')}"]
    wrong = [f"text_config.{k}={v!r} (B/32: {CLIP_B32_TEXT[k]!r})" for k, v in text.items() if v != CLIP_B32_TEXT[k]]
    wrong += [f"vision_config.{k}={v!r} (B/32: {CLIP_B32_VISION[k]!r})" for k, v in vision.items()
              if v != CLIP_B32_VISION[k]]
    if top["projection_dim"] != CLIP_B32_MODEL["projection_dim"]:
        wrong.append(f"projection_dim={top['projection_dim']!r} (B/32: 512)")
    return wrong


def _matching_preset(cfg: dict) -> Arch | None:
    family, text, vision, top = architecture_values(cfg)
    for arch in PRESETS.values():
        if arch.family != family:
            continue
        if family == "clip":
            want = (_filled(arch.text_config, {}, CLIP_TEXT_KEYS), _filled(arch.vision_config, {}, CLIP_VISION_KEYS),
                    {"projection_dim": arch.model_config["projection_dim"]})
        else:
            t = _filled(arch.text_config, {}, SIGLIP_TEXT_KEYS)
            t["projection_size"] = t["projection_size"] or t["hidden_size"]
            want = (t, _filled(arch.vision_config, {}, SIGLIP_VISION_KEYS), {})
        if (text, vision, top) == want:
            return arch
    return None


def _square(value, what: str, path: Path) -> int:
    if isinstance(value, (list, tuple)):
        if len(set(value)) != 1:
            raise ArchError(f"{path}: non-square {what} {value} is not supported")
        value = value[0]
    if isinstance(value, dict):
        h, w = value.get("height"), value.get("width")
        if "shortest_edge" in value:
            return int(value["shortest_edge"])
        if h != w or h is None:
            raise ArchError(f"{path}: non-square {what} {value} is not supported")
        value = h
    return int(value)


def _resample(cfg: dict, default: str, path: Path) -> str:
    if "resample" not in cfg:
        return default
    name = PIL_RESAMPLE.get(cfg["resample"])
    if name not in ("bilinear", "bicubic"):
        raise ArchError(f"{path}: resample {cfg['resample']!r}; the extension resizes with bilinear or bicubic")
    return name


def clip_preprocess(hf_dir: Path, image_size: int, legacy: bool) -> dict:
    """A CLIP checkpoint's preprocessing: its preprocessor_config.json where it has one, else OpenAI's at the
    model's image size. ViT-B/32's warns where it differs from openai's (its manifest shape is the old one)."""
    base = dict(OPENAI_PREPROCESS) if legacy else {"mode": CLIP_MODE, **OPENAI_PREPROCESS, "shortest_edge": image_size,
                                                    "crop_size": image_size}
    pre = dict(base)
    cfg_path = hf_dir / "preprocessor_config.json"
    if not cfg_path.is_file():
        return pre
    cfg = json.loads(cfg_path.read_text())
    if "size" in cfg:
        size = cfg["size"]
        if isinstance(size, dict) and "shortest_edge" not in size:
            raise ArchError(f"{cfg_path}: size {size} without shortest_edge; CLIP resizes the shortest edge")
        pre["shortest_edge"] = size.get("shortest_edge") if isinstance(size, dict) else size
    if "crop_size" in cfg:
        pre["crop_size"] = _square(cfg["crop_size"], "crop_size", cfg_path)
    if "resample" in cfg:
        pre["resample"] = PIL_RESAMPLE.get(cfg["resample"], str(cfg["resample"])) if legacy else \
            _resample(cfg, "bicubic", cfg_path)
    for src, dst in (("rescale_factor", "rescale_factor"), ("image_mean", "mean"), ("image_std", "std")):
        if src in cfg:
            pre[dst] = cfg[src]
    for flag in ("do_resize", "do_center_crop", "do_rescale", "do_normalize"):
        if cfg.get(flag) is False:
            warnings.warn(f"{cfg_path}: {flag}=false; the manifest cannot express that, the extension will do it")
    if not legacy and pre["crop_size"] != image_size:
        raise ArchError(f"{cfg_path}: crop_size {pre['crop_size']} but the vision tower takes {image_size} px")
    differ = [k for k in OPENAI_PREPROCESS if not _close(pre[k], base[k])]
    if differ:
        warnings.warn(
            f"{cfg_path}: preprocessing differs from OpenAI CLIP's in {', '.join(differ)}; "
            "the manifest records the checkpoint's values"
        )
    return pre


def siglip_preprocess(hf_dir: Path, image_size: int) -> dict:
    """A SigLIP checkpoint's preprocessing: resize to the square `size` with its `resample`, no crop."""
    cfg_path = hf_dir / "preprocessor_config.json"
    cfg = json.loads(cfg_path.read_text()) if cfg_path.is_file() else {}
    size = _square(cfg.get("size", {"height": image_size, "width": image_size}), "size", cfg_path)
    if isinstance(cfg.get("size"), dict) and "shortest_edge" in cfg["size"]:
        raise ArchError(f"{cfg_path}: size {cfg['size']}: SigLIP resizes to height x width, not the shortest edge")
    if size != image_size:
        raise ArchError(f"{cfg_path}: size {size} but the vision tower takes {image_size} px")
    if cfg.get("do_center_crop"):
        raise ArchError(f"{cfg_path}: do_center_crop with a SigLIP processor is not supported")
    for flag in ("do_resize", "do_rescale", "do_normalize"):
        if cfg.get(flag) is False:
            raise ArchError(f"{cfg_path}: {flag}=false is not supported")
    # SiglipImageProcessor's own defaults where the file is silent: bicubic, mean/std 0.5, 1/255.
    return squash_preprocess(size, _resample(cfg, "bicubic", cfg_path), cfg.get("image_mean", SIGLIP_MEAN),
                             cfg.get("image_std", SIGLIP_STD), cfg.get("rescale_factor", 1 / 255))


def _close(a, b) -> bool:
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_close(x, y) for x, y in zip(a, b))
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return abs(a - b) <= 1e-9 * max(1.0, abs(b))
    return a == b


def checkpoint_arch(hf_dir: Path, folder_name: str, name: str | None = None) -> Arch:
    """The Arch of the HF model in `hf_dir` (config.json and the JSON beside it; no transformers import).

    model_name: ViT-B/32's is "clip-ViT-B-32" (the vectors in the field are tagged with it); others take `name`,
    else the basename of config.json's `_name_or_path`, else the checkpoint folder's name."""
    cfg_path = hf_dir / "config.json"
    cfg = json.loads(cfg_path.read_text())
    family, text, vision, top = architecture_values(cfg)
    image_size = _square(vision["image_size"], "vision_config.image_size", cfg_path)
    if _square(vision["patch_size"], "vision_config.patch_size", cfg_path) <= 0:
        raise ArchError(f"{cfg_path}: patch_size {vision['patch_size']}")
    name_or_path = str(cfg.get("_name_or_path") or "").rstrip("/")
    derived = name or (name_or_path.rsplit("/", 1)[-1] if name_or_path else folder_name)
    preset = _matching_preset(cfg)
    if family == "clip" and not b32_differences(cfg):
        return replace(B32, model_name=name or B32.model_name, preprocess=clip_preprocess(hf_dir, image_size, True),
                       text_config=None, vision_config=None, model_config=None)
    architecture = (preset.architecture if preset else
                    name_or_path if name_or_path and not name_or_path.startswith(("/", ".")) else
                    f"{'CLIPModel' if family == 'clip' else 'SiglipModel'} ({folder_name})")
    if family == "clip":
        return Arch(family="clip", model_name=derived, architecture=architecture, image_size=image_size,
                    embedding_dim=top["projection_dim"], context_length=text["max_position_embeddings"],
                    preprocess=clip_preprocess(hf_dir, image_size, False))
    if text["projection_size"] != vision["hidden_size"]:
        raise ArchError(f"{cfg_path}: text projection_size {text['projection_size']} differs from the vision "
                        f"hidden_size {vision['hidden_size']}: the two towers' vectors would not be comparable")
    if not vision["vision_use_head"]:
        raise ArchError(f"{cfg_path}: vision_use_head false: no pooled image embedding")
    return Arch(family="siglip", model_name=derived, architecture=architecture, image_size=image_size,
                embedding_dim=vision["hidden_size"], context_length=text["max_position_embeddings"],
                preprocess=siglip_preprocess(hf_dir, image_size))


def check_against_model(arch: Arch, config) -> None:
    """The values read from JSON must be what transformers built (a mismatch is a bug here, not the user's)."""
    if arch.family == "clip":
        got = (config.vision_config.image_size, config.projection_dim, config.text_config.max_position_embeddings)
    else:
        got = (config.vision_config.image_size, config.vision_config.hidden_size,
               config.text_config.max_position_embeddings)
    want = (arch.image_size, arch.embedding_dim, arch.context_length)
    if tuple(_square(v, "", Path("config")) if isinstance(v, (list, tuple)) else v for v in got) != want:
        raise RuntimeError(f"config read as {want} (image size, dim, context) but transformers built {got}")
