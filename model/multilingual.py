"""The multilingual text tower: sentence-transformers clip-ViT-B-32-multilingual-v1's text encoder as one graph.

That model is a sentence-transformers pipeline of three modules, in order:
  Transformer  distilbert-base-multilingual-cased (6 layers, hidden 768, 12 heads, vocabulary 119,547),
               max_seq_length 128, its WordPiece tokenizer cased (do_lower_case false);
  Pooling      mean over the tokens the attention mask keeps ([CLS] and [SEP] included), 768 wide;
  Dense        768 -> 512, no bias, identity activation.
There is no Normalize module: pg_clip L2-normalises, as it does for images. Its 512-wide vectors live in the
space of CLIP ViT-B/32's image vectors (the model was distilled to match clip-ViT-B-32's text tower).

`MultilingualTower` is those three modules as one torch module, `(input_ids, attention_mask) -> [batch, 512]`,
which export.py traces to `text-multilingual.onnx`. Its weights come from a sentence-transformers folder on disk
(`find_checkpoint` / `load_checkpoint`) or are seeded random (`random_tower`), with the architecture spelled out
here (`DISTILBERT_CONFIG`), not taken from library defaults or a hub. `write_sentence_transformers_folder` writes
a tower back out in the published folder's layout, so that sentence-transformers itself can load the very same
weights (the fidelity test's reference, and the checkpoint path's self-test).

Nothing here downloads anything (HF_HUB_OFFLINE=1, local_files_only=True, no hub names anywhere).
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

if TYPE_CHECKING:
    import torch

NAME = "clip-ViT-B-32-multilingual-v1"
ARCHITECTURE = ("sentence-transformers/clip-ViT-B-32-multilingual-v1: distilbert-base-multilingual-cased, "
                "mean pooling, Dense 768->512 without bias")
ONNX = "text-multilingual.onnx"
INPUTS = ("input_ids", "attention_mask")
OUTPUT = "text_embeds"
MANIFEST_KEY = "text_multilingual"
MAX_SEQ_LENGTH = 128
EMBEDDING_DIM = 512

# distilbert-base-multilingual-cased's config.json (as clip-ViT-B-32-multilingual-v1 ships it), spelled out.
DISTILBERT_CONFIG = dict(
    vocab_size=119547,
    max_position_embeddings=512,
    sinusoidal_pos_embds=False,
    n_layers=6,
    n_heads=12,
    dim=768,
    hidden_dim=3072,
    dropout=0.1,
    attention_dropout=0.1,
    activation="gelu",
    initializer_range=0.02,
    qa_dropout=0.1,
    seq_classif_dropout=0.2,
    pad_token_id=0,
)
# What a checkpoint's config.json must agree with (the rest is training-time detail).
ARCHITECTURE_KEYS = ("vocab_size", "max_position_embeddings", "sinusoidal_pos_embds", "n_layers", "n_heads", "dim",
                     "hidden_dim", "activation")
POOLING_CONFIG = {"word_embedding_dimension": 768, "pooling_mode_cls_token": False, "pooling_mode_mean_tokens": True,
                  "pooling_mode_max_tokens": False, "pooling_mode_mean_sqrt_len_tokens": False}
DENSE_CONFIG = {"in_features": 768, "out_features": EMBEDDING_DIM, "bias": False,
                "activation_function": "torch.nn.modules.linear.Identity"}
# The tokenizer settings of the published folder's tokenizer_config.json; the extension's WordPiece reproduces
# exactly these (src/tokenizer/wordpiece.rs).
TOKENIZER_SETTINGS = {"do_lower_case": False, "strip_accents": None, "tokenize_chinese_chars": True}
SPECIAL_TOKENS = {"unk_token": "[UNK]", "sep_token": "[SEP]", "pad_token": "[PAD]", "cls_token": "[CLS]",
                  "mask_token": "[MASK]"}

VOCAB = "vocab.txt"
TOKENIZER_JSON = "tokenizer.json"
# bert-base-multilingual-cased's vocab.txt (119,547 lines), committed beside this file: see model/vocab/README.md.
VOCAB_SHA256 = "fe0fda7c425b48c516fc8f160d594c8022a0808447475c1a7c6d6479763f310c"
VOCAB_ENV = "PG_CLIP_MULTILINGUAL_VOCAB"
DEFAULT_VOCAB = Path(__file__).resolve().parent / "vocab" / "bert-base-multilingual-cased-vocab.txt"

# Texts the fidelity checks embed (check_graph_fidelity.py, the int8 measurement at export): product queries in
# Russian and other languages, mixed scripts, units, brands, emoji, an empty text and one cut at 128 tokens. All NFC
# and free of the characters where the slow and the fast BERT tokenizers part (src/tokenizer/wordpiece.rs), so that
# sentence-transformers' own tokenizer gives exactly the ids the extension's does.
FIDELITY_TEXTS = (
    "красный рюкзак",
    "Красный кожаный рюкзак для ноутбука",
    "чёрные кроссовки Nike Air Max 90",
    "черные кроссовки",
    "ёлочные игрушки",
    "женская сумка из натуральной кожи",
    "детская зимняя куртка, размер 128 см",
    "Power bank 10000 мАч",
    "крем для рук 50 мл",
    "смартфон Samsung Galaxy S24 Ultra 256 ГБ",
    "беспроводные наушники с шумоподавлением",
    "постельное бельё из хлопка",
    "кофемашина DeLonghi — скидка 20%",
    "Москва, ул. Тверская, д. 7",
    "a red backpack",
    "ein roter Rucksack für Wanderungen",
    "un sac à dos rouge",
    "zaino rosso in pelle",
    "红色背包",
    "赤いバックパック",
    "빨간 배낭",
    "حقيبة ظهر حمراء",
    "Українською: червоний рюкзак",
    "👜 сумка",
    "",
    "Большой красный рюкзак для походов в горы, непромокаемый, со множеством карманов и отделений. " * 6,
)


def log(msg: str) -> None:
    print(f"[export] multilingual: {msg}", flush=True)


class ExportError(Exception):
    """A problem the user can fix (export.py reports it like its own)."""


# ---------------------------------------------------------------------------------------------- the tower


def _tower_class():
    import torch

    class MultilingualTower(torch.nn.Module):
        """Transformer -> masked mean pooling -> Dense, as sentence-transformers runs them. Not normalised.

        The pooling is sentence-transformers' own arithmetic (Pooling._forward_padded, mode "mean"): the
        float mask multiplies the token states, the sums over the sequence are divided by the mask's sum clamped
        at 1e-9. Padding therefore changes nothing, whatever id pads."""

        def __init__(self, transformer, dense: torch.nn.Linear):
            super().__init__()
            self.transformer = transformer
            self.dense = dense

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            hidden = self.transformer(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            summed = (hidden * mask).sum(dim=1)
            count = torch.clamp(mask.sum(dim=1), min=1e-9)
            return self.dense(summed / count)

    return MultilingualTower


def distilbert_config():
    from transformers import DistilBertConfig

    return DistilBertConfig(**DISTILBERT_CONFIG)


def random_tower(seed: int, attn_implementation: str = "eager"):
    """The architecture with transformers' seeded initialisation; biases and LayerNorm parameters (which that
    initialisation sets to constants the exporter would fold and deduplicate) redrawn from the same stream, as
    export.random_model does for CLIP. The Dense layer gets torch's default Linear initialisation. Same seed,
    same torch and transformers: same weights."""
    import torch
    from transformers import DistilBertModel

    torch.manual_seed(seed)
    transformer = DistilBertModel(distilbert_config())
    dense = torch.nn.Linear(768, EMBEDDING_DIM, bias=False)
    with torch.no_grad():
        for module in transformer.modules():
            if isinstance(module, torch.nn.LayerNorm):
                module.weight.normal_(1.0, 0.02)
                module.bias.normal_(0.0, 0.02)
            elif isinstance(module, torch.nn.Linear) and module.bias is not None:
                module.bias.normal_(0.0, 0.02)
    transformer.set_attn_implementation(attn_implementation)
    return _tower_class()(transformer, dense).float().eval()


# ---------------------------------------------------------------------------------------------- checkpoints


@dataclass
class Checkpoint:
    """A sentence-transformers clip-ViT-B-32-multilingual-v1 folder (or one laid out like it)."""

    root: Path
    transformer_dir: Path
    pooling_dir: Path
    dense_dir: Path
    weight_files: list[Path] = field(default_factory=list)
    dense_weights: Path | None = None

    @property
    def source(self) -> str:
        return f"{self.root.resolve().name} (sentence-transformers)"

    def tokenizer_file(self) -> Path:
        """The file the extension's tokenizer reads: vocab.txt (what the slow reference reads), else tokenizer.json."""
        for name in (VOCAB, TOKENIZER_JSON):
            if (self.transformer_dir / name).is_file():
                return self.transformer_dir / name
        raise ExportError(f"{self.transformer_dir}: neither {VOCAB} nor {TOKENIZER_JSON}")

    def hashed_files(self) -> list[Path]:
        """Everything that decides what the tower computes: weights, configs, the tokenizer's files."""
        names = ("config.json", "sentence_bert_config.json", "tokenizer_config.json", "special_tokens_map.json",
                 VOCAB, TOKENIZER_JSON)
        extra = [self.transformer_dir / n for n in names if (self.transformer_dir / n).is_file()]
        extra += [p for p in (self.pooling_dir / "config.json", self.dense_dir / "config.json") if p.is_file()]
        extra += [self.root / "modules.json"]
        return sorted(set(self.weight_files + [self.dense_weights] + extra))

    def source_sha256(self) -> str:
        """As export.Checkpoint.source_sha256: sha256 of sorted "<sha256>  <relative path>" lines."""
        lines = "".join(f"{sha256_file(p)}  {p.relative_to(self.root).as_posix()}\n" for p in self.hashed_files())
        return hashlib.sha256(lines.encode()).hexdigest()


def sha256_file(path: Path) -> str:
    """The file's SHA-256 in hex, read in 1 MiB chunks (export.py uses this one too)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _module_kind(entry: dict) -> str:
    return str(entry.get("type", "")).rsplit(".", 1)[-1]


def find_checkpoint(path: Path) -> Checkpoint:
    """Reads modules.json: a Transformer, then Pooling, then Dense (an optional Normalize after them changes
    nothing pg_clip returns, since it normalises anyway); anything else is refused."""
    root = path.expanduser()
    modules_path = root / "modules.json"
    if not modules_path.is_file():
        raise ExportError(f"--multilingual-checkpoint {path}: no modules.json (a sentence-transformers folder)")
    entries = sorted(json.loads(modules_path.read_text()), key=lambda e: int(e.get("idx", 0)))
    kinds = [_module_kind(e) for e in entries]
    if kinds[-1:] == ["Normalize"]:
        kinds, entries = kinds[:-1], entries[:-1]
    if kinds != ["Transformer", "Pooling", "Dense"]:
        raise ExportError(f"{modules_path}: modules {kinds}, expected Transformer, Pooling, Dense "
                          f"(clip-ViT-B-32-multilingual-v1's pipeline)")
    transformer_dir, pooling_dir, dense_dir = (root / e.get("path", "") for e in entries)
    weights = sorted(transformer_dir.glob("*.safetensors")) or sorted(transformer_dir.glob("pytorch_model*.bin"))
    if not (transformer_dir / "config.json").is_file() or not weights:
        raise ExportError(f"{transformer_dir}: the Transformer module needs config.json and model.safetensors or "
                          "pytorch_model.bin")
    dense = [p for p in (dense_dir / "model.safetensors", dense_dir / "pytorch_model.bin") if p.is_file()]
    if not dense:
        raise ExportError(f"{dense_dir}: the Dense module has no model.safetensors or pytorch_model.bin")
    ckpt = Checkpoint(root=root, transformer_dir=transformer_dir, pooling_dir=pooling_dir, dense_dir=dense_dir,
                      weight_files=weights, dense_weights=dense[0])
    ckpt.tokenizer_file()
    return ckpt


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def checkpoint_settings(ckpt: Checkpoint) -> tuple[dict, int]:
    """(tokenizer settings, max_seq_length) of a checkpoint, refused where pg_clip would compute something else."""
    st = _read_json(ckpt.transformer_dir / "sentence_bert_config.json")
    tok = _read_json(ckpt.transformer_dir / "tokenizer_config.json")
    settings = dict(TOKENIZER_SETTINGS)
    for key in settings:
        if key in tok:
            settings[key] = tok[key]
    problems = []
    if st.get("do_lower_case"):
        problems.append("sentence_bert_config.json do_lower_case=true (the module lower-cases the text)")
    if settings["do_lower_case"] or settings["strip_accents"]:
        problems.append(f"tokenizer do_lower_case={settings['do_lower_case']} strip_accents={settings['strip_accents']}")
    pooling = _read_json(ckpt.pooling_dir / "config.json")
    mean = pooling.get("pooling_mode") in ("mean", ["mean"]) or (
        pooling.get("pooling_mode_mean_tokens") is True
        and not any(pooling.get(k) for k in POOLING_CONFIG if k.startswith("pooling_mode_") and k != "pooling_mode_mean_tokens"))
    if not mean or pooling.get("word_embedding_dimension", 768) != 768:
        problems.append(f"1_Pooling {pooling} is not mean pooling over 768")
    dense = _read_json(ckpt.dense_dir / "config.json")
    for key, want in DENSE_CONFIG.items():
        got = dense.get(key)
        if key == "activation_function":
            got = (got or "").replace("torch.nn.modules.linear.", "torch.nn.")
            want = want.replace("torch.nn.modules.linear.", "torch.nn.")
        if got != want:
            problems.append(f"Dense {key}={dense.get(key)!r} (expected {DENSE_CONFIG[key]!r})")
    if problems:
        raise ExportError(f"{ckpt.root}: not clip-ViT-B-32-multilingual-v1's pipeline: " + "; ".join(problems))
    return settings, int(st.get("max_seq_length", MAX_SEQ_LENGTH))


def load_checkpoint(ckpt: Checkpoint, attn_implementation: str = "eager"):
    import torch
    from transformers import AutoModel
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    transformer = AutoModel.from_pretrained(ckpt.transformer_dir, local_files_only=True, dtype=torch.float32,
                                            attn_implementation=attn_implementation)
    config = transformer.config
    wrong = [f"{k}={getattr(config, k, None)!r} (expected {DISTILBERT_CONFIG[k]!r})" for k in ARCHITECTURE_KEYS
             if getattr(config, k, None) != DISTILBERT_CONFIG[k]]
    if config.model_type != "distilbert" or wrong:
        raise ExportError(f"{ckpt.transformer_dir}: not distilbert-base-multilingual-cased's architecture "
                          f"(model_type {config.model_type!r}; {', '.join(wrong)})")
    if ckpt.dense_weights.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(ckpt.dense_weights)
    else:
        state = torch.load(ckpt.dense_weights, map_location="cpu", weights_only=True)
    weight = state.get("linear.weight")
    if weight is None or tuple(weight.shape) != (EMBEDDING_DIM, 768) or "linear.bias" in state:
        raise ExportError(f"{ckpt.dense_weights}: expected linear.weight [512, 768] and no bias, found "
                          f"{ {k: tuple(v.shape) for k, v in state.items()} }")
    dense = torch.nn.Linear(768, EMBEDDING_DIM, bias=False)
    with torch.no_grad():
        dense.weight.copy_(weight.float())
    return _tower_class()(transformer.float().eval(), dense).float().eval()


def vocab_path() -> Path:
    """bert-base-multilingual-cased's vocab.txt for random weights: $PG_CLIP_MULTILINGUAL_VOCAB, else the copy
    committed in model/vocab/. No package registry ships it (a real checkpoint brings its own)."""
    path = Path(os.environ.get(VOCAB_ENV) or DEFAULT_VOCAB)
    if not path.is_file():
        raise ExportError(f"{path}: bert-base-multilingual-cased's vocab.txt not found; set {VOCAB_ENV} to it "
                          "(random multilingual weights need it; a --multilingual-checkpoint brings its own)")
    if sha256_file(path) != VOCAB_SHA256:
        raise ExportError(f"{path}: sha256 differs from bert-base-multilingual-cased's vocab.txt ({VOCAB_SHA256[:12]}...)")
    return path


# ---------------------------------------------------------------------------------------------- reference folder


def write_sentence_transformers_folder(tower, folder: Path, vocab: Path, safetensors: bool = False) -> Path:
    """Writes `tower` as a sentence-transformers folder laid out like the published clip-ViT-B-32-multilingual-v1
    (Transformer module at the root, 1_Pooling, 2_Dense, weights as pytorch_model.bin unless `safetensors`), so
    that SentenceTransformer(folder) runs exactly these weights. Returns the folder."""
    import torch

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Dense", "type": "sentence_transformers.models.Dense"},
    ], indent=2))
    transformer = tower.transformer
    config = transformer.config.to_dict()
    config["architectures"] = ["DistilBertModel"]
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    state = {k: v.contiguous() for k, v in transformer.state_dict().items()}
    if safetensors:
        from safetensors.torch import save_file

        save_file(state, folder / "model.safetensors")
    else:
        torch.save(state, folder / "pytorch_model.bin")
    (folder / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": MAX_SEQ_LENGTH,
                                                                   "do_lower_case": False}))
    (folder / "tokenizer_config.json").write_text(json.dumps({
        **TOKENIZER_SETTINGS, **SPECIAL_TOKENS, "model_max_length": 512, "tokenizer_class": "DistilBertTokenizer"},
        indent=2))
    (folder / "special_tokens_map.json").write_text(json.dumps(SPECIAL_TOKENS))
    (folder / VOCAB).write_bytes(vocab.read_bytes())
    (folder / "1_Pooling").mkdir(exist_ok=True)
    (folder / "1_Pooling" / "config.json").write_text(json.dumps(POOLING_CONFIG, indent=2))
    (folder / "2_Dense").mkdir(exist_ok=True)
    (folder / "2_Dense" / "config.json").write_text(json.dumps(DENSE_CONFIG))
    torch.save({"linear.weight": tower.dense.weight.detach().clone()}, folder / "2_Dense" / "pytorch_model.bin")
    return folder


def sentence_transformer(folder: Path):
    """sentence-transformers' own pipeline for a folder: SentenceTransformer(folder), on CPU, local files only."""
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(folder), device="cpu", local_files_only=True)


def slow_tokenizer(vocab: Path, settings: dict | None = None):
    """transformers' pure-Python BERT tokenizer (the reference src/tokenizer/wordpiece.rs matches)."""
    from transformers.models.bert.tokenization_bert_legacy import BertTokenizerLegacy

    return BertTokenizerLegacy(str(vocab), **(settings or TOKENIZER_SETTINGS))


def token_ids(tokenizer, text: str, max_length: int = MAX_SEQ_LENGTH) -> list[int]:
    return tokenizer(text, truncation=True, max_length=max_length)["input_ids"]


def batch_inputs(rows: list[list[int]]):
    """Right-padded int64 input_ids ([PAD] = 0) and attention_mask, as sentence-transformers pads a batch."""
    import numpy as np

    n = max(len(r) for r in rows)
    ids = np.zeros((len(rows), n), np.int64)
    mask = np.zeros((len(rows), n), np.int64)
    for i, r in enumerate(rows):
        ids[i, :len(r)] = r
        mask[i, :len(r)] = 1
    return ids, mask
