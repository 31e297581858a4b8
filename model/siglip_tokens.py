#!/usr/bin/env python3
"""SigLIP text -> token ids, as the extension computes them, and the CLI the SQL tests compare with.

    python model/siglip_tokens.py --model DIR TEXT...        # prints one JSON array: each text's ids
    python model/siglip_tokens.py --model DIR --json FILE    # the texts from a JSON array of strings
    python model/siglip_tokens.py --model DIR --self-check   # the two implementations below on CHECK_TEXTS

A SigLIP model directory has `tokenizer.json` (tokenizers' format, which the extension's tokenizers crate reads) and
in its manifest `text.tokenizer` the rules around it (`architectures.TextRules`):

    1. lowercase the text if `lowercase`: Unicode's full lowercase mapping of the whole string, as Rust's
       str::to_lowercase and Python's str.lower do (a final capital sigma becomes ς). Not the tokenizers library's
       Lowercase normalizer, which maps character by character (Σ -> σ everywhere): "ΟΔΟΣ" tells them apart;
    2. encode it with tokenizer.json without special tokens (its post-processor is null; no truncation, no padding);
    3. prepend `bos_id` if `add_bos`;
    4. cut the ids so that, with EOS, they fit `max_length` (a long text keeps its EOS: big_vision's "sticky" EOS);
    5. append `eos_id` if `add_eos`;
    6. pad with `pad_id` to `max_length` (the text graph takes exactly max_length ids; SigLIP was trained padded).

`encode` is those rules in plain Python. `token_ids` also runs transformers' PreTrainedTokenizerFast configured the
way transformers configures a SigLIP tokenizer (add_bos_token/add_eos_token rebuild the post-processor,
padding="max_length", truncation to max_length) on the lowercased texts, and refuses to answer if the two
disagree. Printed ids are the full max_length
sequence the text graph is fed, padding included.

`prepare_tokenizer_json` and `folder_tokenizer` make the directory's tokenizer.json from a checkpoint's files.
"""
from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from architectures import TextRules  # noqa: E402  (model/architectures.py)

TOKENIZER_JSON = "tokenizer.json"

# Texts for --self-check and for the fidelity test: Russian, CJK, emoji (in and out of the test vocabulary),
# scripts the test tokenizer only knows as bytes, spaces in every position, special-token spellings, an empty text,
# and texts far longer than 64 tokens (the cut must keep EOS).
CHECK_TEXTS = (
    "a photo of a cat",
    "A Red Leather BACKPACK",
    "красный рюкзак",
    "Красный кожаный рюкзак для ноутбука",
    "ЁЛОЧНЫЕ ИГРУШКИ, Ёж и ёлка",
    "Smartphone Samsung Galaxy S24 Ultra 256 ГБ",
    "红色背包",
    "赤いバックパック",
    "빨간 배낭",
    "حقيبة ظهر حمراء",
    "Ελληνικά ΟΔΟΣ",
    "👜 сумка",
    "😀🎉 party",
    "龘 rare character",
    "  leading spaces",
    "trailing spaces   ",
    "multiple   inner    spaces",
    "tab\tand\nnewline",
    "",
    " ",
    "</s> and <pad> written out",
    "İstanbul ẞ straße",
    "Большой красный рюкзак для походов в горы, непромокаемый, со множеством карманов и отделений. " * 4,
    "word " * 80,
    "x" * 500,
)


def rules_from_manifest(manifest: dict) -> TextRules:
    return TextRules.from_manifest(manifest["text"]["tokenizer"])


def encode(tokenizer, rules: TextRules, text: str) -> list[int]:
    """The manifest's rules in plain Python (`tokenizer` is a tokenizers.Tokenizer read from tokenizer.json)."""
    if rules.lowercase:
        text = text.lower()
    ids = tokenizer.encode(text, add_special_tokens=False).ids
    if rules.add_bos:
        ids = [rules.bos_id, *ids]
    ids = ids[:rules.max_length - (1 if rules.add_eos else 0)]
    if rules.add_eos:
        ids.append(rules.eos_id)
    return ids + [rules.pad_id] * (rules.max_length - len(ids))


def reference_tokenizer(path: Path, rules: TextRules):
    """transformers' fast tokenizer on tokenizer.json, set up as transformers sets up a SigLIP tokenizer."""
    import os

    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer.from_file(str(path))

    def token(i):
        return None if i is None else backend.id_to_token(i)

    return PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token=token(rules.bos_id), eos_token=token(rules.eos_id),
        pad_token=token(rules.pad_id), add_bos_token=rules.add_bos, add_eos_token=rules.add_eos,
        model_max_length=rules.max_length,
    )


def reference_ids(reference, rules: TextRules, texts: list[str]) -> list[list[int]]:
    texts = [t.lower() for t in texts] if rules.lowercase else list(texts)
    out = reference(texts, padding="max_length", truncation=True, max_length=rules.max_length)
    return [list(ids) for ids in out["input_ids"]]


def token_ids(model_dir: Path, texts: list[str], manifest: dict | None = None) -> list[list[int]]:
    """Each text's max_length ids by the rules, after checking that transformers gives the same."""
    from tokenizers import Tokenizer

    manifest = manifest or json.loads((model_dir / "manifest.json").read_text())
    entry = manifest["text"]["tokenizer"]
    rules = TextRules.from_manifest(entry)
    path = model_dir / entry["file"]
    plain = [encode(Tokenizer.from_file(str(path)), rules, t) for t in texts]
    ref = reference_ids(reference_tokenizer(path, rules), rules, texts)
    differ = [t for t, a, b in zip(texts, plain, ref) if a != b]
    if differ:
        raise RuntimeError(f"the rules and transformers' tokenizer disagree on {len(differ)} texts, e.g. "
                           f"{differ[0][:40]!r}: {plain[texts.index(differ[0])]} vs {ref[texts.index(differ[0])]}")
    return plain


# ---------------------------------------------------------------------------------------------- from a checkpoint


def prepare_tokenizer_json(text: str) -> str:
    """A tokenizer.json with no post-processor, truncation or padding (the rules do those), checked to load."""
    from tokenizers import Tokenizer

    data = json.loads(text)
    data["post_processor"] = None
    data["truncation"] = None
    data["padding"] = None
    return Tokenizer.from_str(json.dumps(data, ensure_ascii=False)).to_str(pretty=True)


def _token_content(value) -> str | None:
    if isinstance(value, dict):
        return value.get("content")
    return value


def folder_tokenizer(hf_dir: Path, max_length: int) -> tuple[str, TextRules]:
    """(tokenizer.json text, rules) for a SigLIP checkpoint folder.

    tokenizer.json when the folder has one; else its sentencepiece model converted by transformers, which needs the
    sentencepiece package. Rules: do_lower_case and add_bos_token from tokenizer_config.json (absent: false); EOS
    always appended (SigLIP and SigLIP 2 were trained with it: SiglipTokenizer appends </s>, big_vision's tokenizer
    eos="sticky"); the special tokens' ids from tokenizer_config.json / special_tokens_map.json looked up in the
    tokenizer, the usual names when those files are silent."""
    from tokenizers import Tokenizer

    cfg_path = hf_dir / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text()) if cfg_path.is_file() else {}
    special_path = hf_dir / "special_tokens_map.json"
    special = json.loads(special_path.read_text()) if special_path.is_file() else {}
    if (hf_dir / TOKENIZER_JSON).is_file():
        text = (hf_dir / TOKENIZER_JSON).read_text(encoding="utf-8")
    else:
        text = _convert_sentencepiece(hf_dir)
    prepared = prepare_tokenizer_json(text)
    tok = Tokenizer.from_str(prepared)

    def token_id(key: str, fallbacks: tuple[str, ...]) -> int | None:
        names = [_token_content(cfg.get(key)), _token_content(special.get(key)), *fallbacks]
        for name in (n for n in names if n):
            if tok.token_to_id(name) is not None:
                return tok.token_to_id(name)
        return None

    eos_id = token_id("eos_token", ("</s>", "<eos>"))
    if eos_id is None:
        raise ValueError(f"{hf_dir}: no EOS token found (tokenizer_config.json eos_token, </s> or <eos>)")
    pad_id = token_id("pad_token", ())
    bos_id = token_id("bos_token", ("<bos>", "<s>"))
    add_bos = bool(cfg.get("add_bos_token", False))
    if add_bos and bos_id is None:
        raise ValueError(f"{cfg_path}: add_bos_token true but no BOS token in the tokenizer")
    if cfg.get("add_eos_token") is False:
        warnings.warn(f"{cfg_path}: add_eos_token false ignored: SigLIP models were trained with EOS appended")
    rules = TextRules(lowercase=bool(cfg.get("do_lower_case", False)), add_bos=add_bos, add_eos=True,
                      bos_id=bos_id, eos_id=eos_id, pad_id=eos_id if pad_id is None else pad_id,
                      max_length=max_length)
    return prepared, rules


def _convert_sentencepiece(hf_dir: Path) -> str:
    models = [p for p in (hf_dir / "spiece.model", hf_dir / "tokenizer.model") if p.is_file()]
    if not models:
        raise ValueError(f"{hf_dir}: no tokenizer.json, spiece.model or tokenizer.model")
    try:
        import sentencepiece  # noqa: F401
    except ImportError:
        raise ValueError(f"{hf_dir}: has {models[0].name} but no tokenizer.json, and converting it needs the "
                         "sentencepiece package (pip install sentencepiece), which is not installed; or put the "
                         "model's tokenizer.json (tokenizers' format) in the folder") from None
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(hf_dir, local_files_only=True)
    backend = getattr(tok, "backend_tokenizer", None)
    if backend is None:
        try:
            from transformers.convert_slow_tokenizer import convert_slow_tokenizer

            backend = convert_slow_tokenizer(tok)
        except Exception as e:  # transformers raises ValueError or Exception depending on the class
            raise ValueError(f"{hf_dir}: transformers cannot convert {type(tok).__name__} ({models[0].name}) to "
                             f"tokenizers' format ({e}); put the model's tokenizer.json in the folder") from None
    return backend.to_str()


# ---------------------------------------------------------------------------------------------- CLI


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, type=Path, help="a SigLIP model directory made by model/export.py")
    ap.add_argument("--json", type=Path, help="read the texts from this JSON array of strings")
    ap.add_argument("--self-check", action="store_true", help="compare the two implementations on CHECK_TEXTS")
    ap.add_argument("texts", nargs="*")
    args = ap.parse_args(argv)
    manifest = json.loads((args.model / "manifest.json").read_text())
    if manifest.get("family") != "siglip" or "text" not in manifest:
        ap.error(f"{args.model}: not a SigLIP model directory with a text tower")
    texts = list(args.texts) + (json.loads(args.json.read_text()) if args.json else [])
    if args.self_check:
        ids = token_ids(args.model, list(CHECK_TEXTS), manifest)
        rules = rules_from_manifest(manifest)
        for text, row in zip(CHECK_TEXTS, ids):
            n = len(row)
            while n and row[n - 1] == rules.pad_id:
                n -= 1
            n += int(rules.pad_id == rules.eos_id and n < len(row))  # the EOS that looks like padding
            print(f"{n:3d} ids  {text[:40]!r}")
        print(f"{len(CHECK_TEXTS)} texts: the rules and transformers' tokenizer agree", file=sys.stderr)
    if texts:
        print(json.dumps(token_ids(args.model, texts, manifest)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
