//! The multilingual text encoder's tokenizer (src/tokenizer/wordpiece.rs) against transformers' pure-Python
//! BERT tokenizer, on tests/fixtures/tokenizer/multilingual_corpus.jsonl (made by make_multilingual_corpus.py
//! beside it; its first line records the reference, its settings and versions). Every line must give the
//! reference's ids exactly, from vocab.txt and from an equivalent tokenizer.json.
//!
//! Lines with "ids_fast" are where the `tokenizers` crate's own BERT pipeline (what sentence-transformers runs)
//! gives other ids; the test counts them and checks that their reasons are the four the module documents.
//!
//! The vocabulary (bert-base-multilingual-cased's vocab.txt, 995,526 bytes) is committed as
//! model/vocab/bert-base-multilingual-cased-vocab.txt (see its README); $PG_CLIP_MULTILINGUAL_VOCAB points the
//! test at another copy.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use pg_clip::tokenizer::wordpiece::{WordPieceSettings, WordPieceTokenizer, MULTILINGUAL_MAX_LENGTH};
use serde_json::Value;
use sha2::{Digest, Sha256};

fn find_vocab() -> PathBuf {
    if let Some(path) = std::env::var_os("PG_CLIP_MULTILINGUAL_VOCAB") {
        let path = PathBuf::from(path);
        assert!(path.is_file(), "PG_CLIP_MULTILINGUAL_VOCAB={} is not a file", path.display());
        return path;
    }
    let committed = Path::new(env!("CARGO_MANIFEST_DIR")).join("model/vocab/bert-base-multilingual-cased-vocab.txt");
    assert!(
        committed.is_file(),
        "{} is missing: set PG_CLIP_MULTILINGUAL_VOCAB=/path/to/vocab.txt",
        committed.display()
    );
    committed
}

fn ids_of(value: &Value) -> Vec<i64> {
    value.as_array().expect("ids is an array").iter().map(|v| v.as_i64().expect("id is an integer")).collect()
}

/// The tokenizer.json transformers' BertTokenizer writes for this vocabulary and these settings, made with the
/// crate's components (the same JSON layout; see src/tokenizer/wordpiece.rs's unit test for it).
fn tokenizer_json(vocab_path: &Path) -> String {
    use tokenizers::decoders::wordpiece::WordPiece as WordPieceDecoder;
    use tokenizers::models::wordpiece::WordPiece;
    use tokenizers::normalizers::bert::BertNormalizer;
    use tokenizers::pre_tokenizers::bert::BertPreTokenizer;
    use tokenizers::processors::template::TemplateProcessing;
    use tokenizers::{AddedToken, Tokenizer};

    let model = WordPiece::from_file(vocab_path.to_str().unwrap()).unk_token("[UNK]".into()).build().unwrap();
    let mut t = Tokenizer::new(model);
    let (cls, sep) = (t.token_to_id("[CLS]").unwrap(), t.token_to_id("[SEP]").unwrap());
    t.with_normalizer(Some(BertNormalizer::new(true, true, None, false))).unwrap();
    t.with_pre_tokenizer(Some(BertPreTokenizer));
    t.with_post_processor(Some(
        TemplateProcessing::builder()
            .try_single("[CLS] $A [SEP]")
            .unwrap()
            .try_pair("[CLS] $A [SEP] $B:1 [SEP]:1")
            .unwrap()
            .special_tokens(vec![("[CLS]", cls), ("[SEP]", sep)])
            .build()
            .unwrap(),
    ));
    t.with_decoder(Some(WordPieceDecoder::default()));
    t.add_special_tokens(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"].map(|s| AddedToken::from(s, true))).unwrap();
    t.to_string(false).unwrap()
}

#[test]
fn matches_the_slow_bert_tokenizer_on_the_corpus() {
    let vocab_path = find_vocab();
    let vocab = std::fs::read_to_string(&vocab_path).expect("read the vocabulary");
    let corpus_path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tokenizer/multilingual_corpus.jsonl");
    let corpus = std::fs::read_to_string(&corpus_path).expect("read multilingual_corpus.jsonl");
    let mut lines = corpus.lines();
    let meta: Value = serde_json::from_str(lines.next().expect("meta line")).expect("meta is JSON");
    let sha = format!("{:x}", Sha256::digest(vocab.as_bytes()));
    assert_eq!(
        Some(sha.as_str()),
        meta["meta"]["vocab_sha256"].as_str(),
        "{} is not the vocabulary the corpus was made with",
        vocab_path.display()
    );
    assert_eq!(meta["meta"]["max_length"].as_u64(), Some(MULTILINGUAL_MAX_LENGTH as u64));

    let started = Instant::now();
    let from_vocab = WordPieceTokenizer::from_vocab(&vocab, &WordPieceSettings::multilingual_cased()).unwrap();
    eprintln!("loaded {} ({} tokens) in {:?}", vocab_path.display(), from_vocab.vocab_size(), started.elapsed());
    let from_json = WordPieceTokenizer::from_tokenizer_json(&tokenizer_json(&vocab_path), MULTILINGUAL_MAX_LENGTH)
        .expect("tokenizer.json");

    let (mut texts, mut truncated, mut failures) = (0, 0, Vec::new());
    let mut fast_reasons: BTreeMap<String, usize> = BTreeMap::new();
    let mut elapsed = std::time::Duration::ZERO;
    for (number, line) in lines.enumerate() {
        let row: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("line {}: {e}", number + 2));
        let text = row["text"].as_str().expect("text");
        let expected = ids_of(&row["ids"]);
        texts += 1;
        truncated += usize::from(expected.len() == MULTILINGUAL_MAX_LENGTH);
        let t0 = Instant::now();
        let got = from_vocab.encode(text).unwrap_or_else(|e| panic!("{text:?}: {e}"));
        elapsed += t0.elapsed();
        if got != expected {
            failures.push(format!("{text:?} (vocab.txt)\n  expected {expected:?}\n       got {got:?}"));
        }
        let got_json = from_json.encode(text).unwrap_or_else(|e| panic!("{text:?}: {e}"));
        if got_json != expected {
            failures.push(format!("{text:?} (tokenizer.json)\n  expected {expected:?}\n       got {got_json:?}"));
        }
        if let Some(reason) = row["fast_differs"].as_str() {
            for part in reason.split("; ") {
                *fast_reasons.entry(part.split(':').next().unwrap().to_string()).or_default() += 1;
            }
        }
    }
    let fast_lines = corpus.lines().filter(|l| l.contains("\"ids_fast\"")).count();
    eprintln!(
        "corpus: {texts} texts ({truncated} at the {MULTILINGUAL_MAX_LENGTH}-id limit), {} identical to the slow BERT \
         tokenizer from vocab.txt and from tokenizer.json, {} failures; {} mean per text",
        texts - failures.len().min(texts),
        failures.len(),
        format_args!("{:?}", elapsed / texts as u32)
    );
    eprintln!("the tokenizers crate's own BERT pipeline (sentence-transformers) differs on {fast_lines} lines:");
    for (reason, n) in &fast_reasons {
        eprintln!("  {n:4}  {reason}");
    }
    assert!(failures.is_empty(), "{} lines differ from the reference:\n{}", failures.len(), failures.join("\n"));
    assert!(texts >= 500, "the corpus has shrunk: {texts} texts");
    assert!(truncated >= 5, "the corpus no longer exercises truncation");
    let known = ["NFC", "CJK Extension E U+2B820..U+2B91F", "category C* character", "punctuation newer than"];
    for reason in fast_reasons.keys() {
        assert!(known.iter().any(|k| reason.starts_with(k)), "undocumented reason in the corpus: {reason}");
    }
}
