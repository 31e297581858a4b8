//! BERT's cased WordPiece tokenizer, for the multilingual text encoder (sentence-transformers
//! `clip-ViT-B-32-multilingual-v1`, whose transformer is distilbert-base-multilingual-cased): `[CLS]`, the
//! WordPiece ids, `[SEP]`, at most `max_length` (128) ids in all.
//!
//! Built on the Hugging Face `tokenizers` crate, which does the work: the added-token (special token) matching,
//! `BertNormalizer`'s cleaning and CJK splitting, `BertPreTokenizer` (whitespace and punctuation),
//! `WordPiece` (greedy longest match, `##` continuations, `[UNK]` for words over 100 characters or with no
//! match), the `[CLS] $A [SEP]` template and truncation. Loaded from a model's `vocab.txt` with the settings the
//! manifest records, or from its `tokenizer.json`.
//!
//! # The reference, and the four corrections made to the crate's pipeline
//! The reference is transformers' pure-Python BERT tokenizer (`BertTokenizerLegacy` in transformers 5, the old
//! "slow" `BertTokenizer`) with do_lower_case=False, strip_accents=None, tokenize_chinese_chars=True.
//! `tests/tokenizer_multilingual.rs` checks every line of `tests/fixtures/tokenizer/multilingual_corpus.jsonl`
//! against its ids. The crate's own BERT pipeline (what transformers' fast tokenizer, and therefore
//! sentence-transformers, runs) departs from it in four ways, all corrected here by [`SlowBertNormalizer`],
//! which wraps the crate's `BertNormalizer`:
//! 1. NFC: the slow tokenizer composes the text (`unicodedata.normalize("NFC")`) after cleaning it, so
//!    "е\u{308}" (е + combining diaeresis, as macOS and some keyboards produce it) is the word "ё". The crate
//!    does not, and gives `е`, `##\u{308}`. Corrected: NFC after the crate's normaliser.
//! 2. Control characters: the slow tokenizer removes every character of general category C* (unassigned code
//!    points and noncharacters included) except tab, LF and CR; the crate's Unicode 9 tables remove Cc, Cf and
//!    Co only, and miss format characters assigned since (U+0890, U+13430...). Corrected: those are removed first.
//! 3. CJK Extension E: the slow tokenizer treats U+2B820..U+2B91F as Chinese characters (split off one by one);
//!    the crate's range starts at U+2B920. Corrected: they are split off first.
//! 4. Punctuation assigned after Unicode 9 (U+2E4E, U+2E52, U+1E95E...) is split off by the slow tokenizer
//!    only. Corrected: every character of category P* is split off first (the crate then splits the rest).
//!
//! On the corpus (547 texts) the crate's own pipeline gives other ids on 95 lines, each for one of these
//! reasons (the corpus says which); this tokenizer gives the reference's ids on every line.
//!
//! Where it can still differ: the category tables used for 2 and 4 are the `regex-syntax` crate's (Unicode 16)
//! and the NFC tables the `tokenizers` crate's (Unicode 9), while Python 3.11 uses Unicode 14. Characters
//! assigned after Unicode 14 are unassigned (removed) for the reference and kept here; a composition added
//! after Unicode 9 (U+11938 DIVES AKURU VOWEL SIGN O, Unicode 13) is not applied. The corpus avoids both.
//!
//! Only the cased settings are supported: a lower-casing or accent-stripping BERT orders those steps around NFC
//! differently in the two implementations, and no model pg_clip loads uses one.
//!
//! # Memory
//! The crate's `WordPiece` model keeps the vocabulary twice, as `HashMap<String, u32>` and its reverse, with one
//! heap allocation per token: 25 MB of heap for these 119,547 entries, in every backend that loads it. Its
//! algorithm runs here unchanged ([`CompactWordPiece::tokenize`] is `WordPiece::tokenize` line for line) over the
//! vocabulary stored as one string with an offset per id and a table of ids (about 3 MB); the rest of the
//! pipeline is the crate's.
//!
//! Tokenizing never panics on any `&str` (a panic inside the crate is caught and reported as an error), and
//! never starts threads: texts of a batch are encoded one after the other, not with the crate's rayon-based
//! `encode_batch`, which would start a thread pool inside a Postgres backend.
#![forbid(unsafe_code)]

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::sync::Arc;

use regex_syntax::hir::{Class, HirKind};
use tokenizers::decoders::wordpiece::WordPiece as WordPieceDecoder;
use tokenizers::models::bpe::Vocab;
use tokenizers::models::wordpiece::WordPieceTrainer;
use tokenizers::normalizers::bert::BertNormalizer;
use tokenizers::pre_tokenizers::bert::BertPreTokenizer;
use tokenizers::processors::template::TemplateProcessing;
use tokenizers::{
    AddedToken, DecoderWrapper, Model, ModelWrapper, NormalizedString, Normalizer, NormalizerWrapper,
    PostProcessorWrapper, PreTokenizerWrapper, Token, TokenizerImpl, TruncationDirection, TruncationParams,
    TruncationStrategy,
};

use crate::error::{PgClipError, Result};

/// sentence-transformers' `max_seq_length` for clip-ViT-B-32-multilingual-v1: ids per text, `[CLS]` and `[SEP]`
/// included.
pub const MULTILINGUAL_MAX_LENGTH: usize = 128;
/// WordPiece's `max_input_chars_per_word` in BERT: a longer word is one `[UNK]`.
pub const MAX_INPUT_CHARS_PER_WORD: usize = 100;
/// BERT's special tokens, in the order the slow tokenizer lists them; each is matched in the raw text, so a
/// query that spells "[MASK]" gets its id, as in the reference.
pub const SPECIAL_TOKENS: [&str; 5] = ["[UNK]", "[SEP]", "[PAD]", "[CLS]", "[MASK]"];

/// The tokenizer settings a model directory's manifest records (from the checkpoint's tokenizer_config.json).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WordPieceSettings {
    /// Must be false: see the module documentation.
    pub do_lower_case: bool,
    /// `None` (follow `do_lower_case`, i.e. keep accents) or `Some(false)`.
    pub strip_accents: Option<bool>,
    /// Split CJK ideographs into one word each (true for BERT's multilingual models).
    pub tokenize_chinese_chars: bool,
    /// Ids per text after truncation, `[CLS]` and `[SEP]` included.
    pub max_length: usize,
}

impl WordPieceSettings {
    /// distilbert-base-multilingual-cased as clip-ViT-B-32-multilingual-v1 uses it.
    pub fn multilingual_cased() -> Self {
        WordPieceSettings {
            do_lower_case: false,
            strip_accents: None,
            tokenize_chinese_chars: true,
            max_length: MULTILINGUAL_MAX_LENGTH,
        }
    }

    fn check(&self, what: &str) -> Result<()> {
        if self.do_lower_case || self.strip_accents == Some(true) {
            return Err(PgClipError::model_invalid(
                what,
                format!(
                    "do_lower_case={} strip_accents={:?}: pg_clip reproduces the cased BERT tokenizer only \
                     (do_lower_case=false, strip_accents unset)",
                    self.do_lower_case, self.strip_accents
                ),
            ));
        }
        if self.max_length < 2 {
            return Err(PgClipError::model_invalid(
                what,
                format!("max_length {} leaves no room for [CLS] and [SEP]", self.max_length),
            ));
        }
        Ok(())
    }
}

/// Token ids of several texts, padded to the longest with `[PAD]`, as the graph takes them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    /// `rows * sequence` ids, row-major.
    pub input_ids: Vec<i64>,
    /// 1 for a real token, 0 for padding; same layout.
    pub attention_mask: Vec<i64>,
    pub rows: usize,
    pub sequence: usize,
}

type Inner =
    TokenizerImpl<CompactWordPiece, SlowBertNormalizer, PreTokenizerWrapper, PostProcessorWrapper, DecoderWrapper>;

/// The tokenizer. Build it once per backend (loading the 119,547-entry vocabulary takes tens of ms) and share it.
pub struct WordPieceTokenizer {
    inner: Inner,
    max_length: usize,
    pad_id: u32,
}

impl std::fmt::Debug for WordPieceTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WordPieceTokenizer")
            .field("vocabulary", &self.inner.get_vocab_size(false))
            .field("max_length", &self.max_length)
            .finish_non_exhaustive()
    }
}

impl WordPieceTokenizer {
    /// From the content of a `vocab.txt` (one token per line, the id is the line number) and the settings.
    pub fn from_vocab(vocab_txt: &str, settings: &WordPieceSettings) -> Result<Self> {
        Self::from_vocab_named("vocab.txt", vocab_txt, settings)
    }

    /// Reads `path` (a `vocab.txt`) and builds the tokenizer from it.
    pub fn from_vocab_file(path: &Path, settings: &WordPieceSettings) -> Result<Self> {
        let text = read_file(path, "WordPiece vocabulary")?;
        Self::from_vocab_named(&format!("WordPiece vocabulary {}", path.display()), &text, settings)
    }

    /// From the content of a Hugging Face `tokenizer.json` for BERT (a WordPiece model with a cased
    /// `BertNormalizer`). Its truncation and padding settings are ignored: texts are cut at `max_length`.
    pub fn from_tokenizer_json(json: &str, max_length: usize) -> Result<Self> {
        Self::from_tokenizer_json_named("tokenizer.json", json, max_length)
    }

    /// Reads `path` (a `tokenizer.json`) and builds the tokenizer from it.
    pub fn from_tokenizer_file(path: &Path, max_length: usize) -> Result<Self> {
        let text = read_file(path, "tokenizer")?;
        Self::from_tokenizer_json_named(&format!("tokenizer {}", path.display()), &text, max_length)
    }

    /// The tokenizer a model directory's manifest names (`text_multilingual.tokenizer`): a `*.json` file is a
    /// `tokenizer.json`, whose own normaliser settings must then be the manifest's; anything else a `vocab.txt`.
    pub fn from_file(path: &Path, settings: &WordPieceSettings) -> Result<Self> {
        if path.extension().is_some_and(|e| e == "json") {
            let text = read_file(path, "tokenizer")?;
            let what = format!("tokenizer {}", path.display());
            let file_settings = json_settings(&what, &text, settings.max_length)?;
            if &file_settings != settings {
                return Err(PgClipError::model_invalid(
                    what,
                    format!("its settings {file_settings:?} are not the manifest's {settings:?}"),
                ));
            }
            Self::from_tokenizer_json_named(&format!("tokenizer {}", path.display()), &text, settings.max_length)
        } else {
            Self::from_vocab_file(path, settings)
        }
    }

    fn from_vocab_named(what: &str, vocab_txt: &str, settings: &WordPieceSettings) -> Result<Self> {
        settings.check(what)?;
        let vocab = parse_vocab(vocab_txt);
        for token in SPECIAL_TOKENS {
            if !vocab.contains_key(token) {
                return Err(PgClipError::model_invalid(what, format!("it has no {token} token")));
            }
        }
        let (cls, sep) = (vocab["[CLS]"], vocab["[SEP]"]);
        let model = CompactWordPiece::new(what, &vocab, "[UNK]", "##", MAX_INPUT_CHARS_PER_WORD)?;
        let template = TemplateProcessing::builder()
            .try_single("[CLS] $A [SEP]")
            .and_then(|t| t.try_pair("[CLS] $A [SEP] $B:1 [SEP]:1"))
            .map_err(|e| PgClipError::model_invalid(what, e))?
            .special_tokens(vec![("[CLS]", cls), ("[SEP]", sep)])
            .build()
            .map_err(|e| PgClipError::model_invalid(what, e))?;
        let bert = BertNormalizer::new(true, settings.tokenize_chinese_chars, settings.strip_accents, false);
        let mut inner = Inner::new(model);
        inner.with_normalizer(Some(SlowBertNormalizer::new(bert)?)).map_err(|e| PgClipError::model_invalid(what, e))?;
        inner.with_pre_tokenizer(Some(BertPreTokenizer));
        inner.with_post_processor(Some(template));
        inner.with_decoder(Some(WordPieceDecoder::default()));
        inner
            .add_special_tokens(SPECIAL_TOKENS.iter().map(|t| AddedToken::from(*t, true)))
            .map_err(|e| PgClipError::model_invalid(what, e))?;
        Self::finish(what, inner, settings.max_length)
    }

    fn from_tokenizer_json_named(what: &str, json: &str, max_length: usize) -> Result<Self> {
        let (file, bert) = parse_tokenizer_json(what, json)?;
        let settings = WordPieceSettings {
            do_lower_case: bert.lowercase,
            strip_accents: bert.strip_accents,
            tokenize_chinese_chars: bert.handle_chinese_chars,
            max_length,
        };
        settings.check(what)?;
        let mut added: Vec<(u32, AddedToken)> = file.get_added_tokens_decoder().into_iter().collect();
        added.sort_by_key(|(id, _)| *id);
        let ModelWrapper::WordPiece(wordpiece) = file.get_model() else {
            return Err(PgClipError::model_invalid(what, "its model is not WordPiece"));
        };
        let model = CompactWordPiece::new(
            what,
            &wordpiece.get_vocab(),
            &wordpiece.unk_token,
            &wordpiece.continuing_subword_prefix,
            wordpiece.max_input_chars_per_word,
        )?;
        let mut inner = Inner::new(model);
        inner.with_normalizer(Some(SlowBertNormalizer::new(bert)?)).map_err(|e| PgClipError::model_invalid(what, e))?;
        inner.with_pre_tokenizer(file.get_pre_tokenizer().cloned());
        inner.with_post_processor(file.get_post_processor().cloned());
        inner.with_decoder(file.get_decoder().cloned());
        for (_, token) in added {
            let added = if token.special { inner.add_special_tokens([token]) } else { inner.add_tokens([token]) };
            added.map_err(|e| PgClipError::model_invalid(what, e))?;
        }
        for token in ["[CLS]", "[SEP]", "[PAD]"] {
            if inner.token_to_id(token).is_none() {
                return Err(PgClipError::model_invalid(what, format!("it has no {token} token")));
            }
        }
        Self::finish(what, inner, max_length)
    }

    fn finish(what: &str, mut inner: Inner, max_length: usize) -> Result<Self> {
        inner
            .with_truncation(Some(TruncationParams {
                direction: TruncationDirection::Right,
                max_length,
                strategy: TruncationStrategy::LongestFirst,
                stride: 0,
            }))
            .map_err(|e| PgClipError::model_invalid(what, e))?;
        inner.with_padding(None);
        let pad_id = inner.token_to_id("[PAD]").unwrap_or(0);
        let tokenizer = WordPieceTokenizer { inner, max_length, pad_id };
        // A pipeline that cannot encode an empty text is broken; find out now, not on the first query.
        let ids = tokenizer.encode("")?;
        if ids.len() != 2 {
            return Err(PgClipError::model_invalid(what, format!("an empty text gives {ids:?}, not [CLS] [SEP]")));
        }
        Ok(tokenizer)
    }

    /// The ids of `text`: `[CLS]`, the WordPiece ids, `[SEP]`; cut to [`max_length`](Self::max_length) ids with
    /// `[SEP]` last. No padding: one text runs unpadded with an attention mask of ones.
    pub fn encode(&self, text: &str) -> Result<Vec<i64>> {
        let encoded = catch_unwind(AssertUnwindSafe(|| self.inner.encode(text, true)));
        match encoded {
            Ok(Ok(encoding)) => Ok(encoding.get_ids().iter().map(|&id| i64::from(id)).collect()),
            Ok(Err(e)) => Err(PgClipError::runtime("tokenizing text", e)),
            Err(panic) => Err(PgClipError::runtime("tokenizing text", format!("panicked: {}", panic_message(&panic)))),
        }
    }

    /// Several texts, padded to the longest with `[PAD]` and an attention mask of 0 there. Encoded one after
    /// the other on the calling thread.
    pub fn encode_batch(&self, texts: &[&str]) -> Result<Batch> {
        let rows: Vec<Vec<i64>> = texts.iter().map(|t| self.encode(t)).collect::<Result<_>>()?;
        let sequence = rows.iter().map(Vec::len).max().unwrap_or(0);
        let mut batch = Batch {
            input_ids: Vec::with_capacity(rows.len() * sequence),
            attention_mask: Vec::with_capacity(rows.len() * sequence),
            rows: rows.len(),
            sequence,
        };
        for row in rows {
            let pad = sequence - row.len();
            batch.attention_mask.extend(std::iter::repeat_n(1, row.len()).chain(std::iter::repeat_n(0, pad)));
            batch.input_ids.extend(row);
            batch.input_ids.extend(std::iter::repeat_n(i64::from(self.pad_id), pad));
        }
        Ok(batch)
    }

    /// Ids per text at most, `[CLS]` and `[SEP]` included.
    pub fn max_length(&self) -> usize {
        self.max_length
    }

    /// The id of a token of the vocabulary (`"[CLS]"`, `"рюкзак"`...).
    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// The vocabulary's size, special tokens included.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }
}

/// WordPiece with its vocabulary stored compactly (see the module documentation, "Memory"). Behaves as the crate's
/// `WordPiece` built from the same vocabulary and settings; `tests` compares the two.
#[derive(Debug, Clone)]
pub struct CompactWordPiece {
    /// Every token's text, one after another.
    text: String,
    /// Token `id`'s text is `text[spans[id].0 as usize..][..spans[id].1 as usize]`; ids without a token (a line
    /// whose token a later line repeats) have `ABSENT` as their length.
    spans: Vec<(u32, u32)>,
    /// Open addressing with linear probing: ids, `EMPTY` where none, at most half full.
    table: Vec<u32>,
    /// Tokens in the vocabulary.
    len: usize,
    unk_token: String,
    prefix: String,
    max_input_chars_per_word: usize,
}

const EMPTY: u32 = u32::MAX;
const ABSENT: u32 = u32::MAX;

/// FNV-1a over the bytes of `parts` as if concatenated: "##" + a piece is looked up without building the string.
/// The table holds a fixed vocabulary, so a query cannot lengthen its probes.
fn fnv1a(parts: [&[u8]; 2]) -> u64 {
    let mut hash = 0xcbf2_9ce4_8422_2325u64;
    for byte in parts.into_iter().flatten() {
        hash = (hash ^ u64::from(*byte)).wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

impl CompactWordPiece {
    /// From (token, id) pairs, each token once (a `Vocab`, or the crate's `WordPiece::get_vocab()`).
    fn new<'a>(
        what: &str,
        vocab: impl IntoIterator<Item = (&'a String, &'a u32)>,
        unk_token: &str,
        prefix: &str,
        max_input_chars_per_word: usize,
    ) -> Result<Self> {
        let mut entries: Vec<(&str, u32)> = vocab.into_iter().map(|(token, id)| (token.as_str(), *id)).collect();
        entries.sort_unstable_by_key(|(_, id)| *id);
        let count = entries.len();
        let max_id = entries.last().map_or(0, |(_, id)| *id as usize);
        // Ids are line numbers (vocab.txt) or dense (tokenizer.json); a sparse table would waste what this saves.
        if max_id > 2 * count + 1024 || count >= (EMPTY as usize) / 2 {
            return Err(PgClipError::model_invalid(
                what,
                format!("{count} tokens with ids up to {max_id}: not a WordPiece vocabulary"),
            ));
        }
        let mut text = String::with_capacity(entries.iter().map(|(t, _)| t.len()).sum());
        let mut spans = vec![(0, ABSENT); max_id + 1];
        let mut table = vec![EMPTY; (2 * count).next_power_of_two().max(16)];
        let mask = table.len() - 1;
        for (token, id) in entries {
            spans[id as usize] = (text.len() as u32, token.len() as u32);
            text.push_str(token);
            let mut slot = fnv1a([token.as_bytes(), b""]) as usize & mask;
            while table[slot] != EMPTY {
                slot = (slot + 1) & mask;
            }
            table[slot] = id;
        }
        if text.len() > ABSENT as usize {
            return Err(PgClipError::model_invalid(what, "the vocabulary is larger than 4 GB"));
        }
        let model = CompactWordPiece {
            text,
            spans,
            table,
            len: count,
            unk_token: unk_token.to_string(),
            prefix: prefix.to_string(),
            max_input_chars_per_word,
        };
        if model.token_to_id(unk_token).is_none() {
            return Err(PgClipError::model_invalid(what, format!("it has no {unk_token} token")));
        }
        Ok(model)
    }

    fn token(&self, id: u32) -> Option<&str> {
        let &(start, len) = self.spans.get(id as usize)?;
        (len != ABSENT).then(|| &self.text[start as usize..][..len as usize])
    }

    /// The id of `prefix` + `piece`.
    fn lookup(&self, prefix: &str, piece: &str) -> Option<u32> {
        let mask = self.table.len() - 1;
        let mut slot = fnv1a([prefix.as_bytes(), piece.as_bytes()]) as usize & mask;
        loop {
            let id = self.table[slot];
            if id == EMPTY {
                return None;
            }
            let token = self.token(id).unwrap_or_default();
            if token.len() == prefix.len() + piece.len() && token.starts_with(prefix) && token.ends_with(piece) {
                return Some(id);
            }
            slot = (slot + 1) & mask;
        }
    }

    fn unk(&self, sequence: &str) -> tokenizers::Result<Vec<Token>> {
        let id = self.token_to_id(&self.unk_token).ok_or("the vocabulary has no unknown token")?;
        Ok(vec![Token { value: self.unk_token.clone(), id, offsets: (0, sequence.len()) }])
    }
}

impl Model for CompactWordPiece {
    type Trainer = WordPieceTrainer;

    /// The crate's `WordPiece::tokenize`: greedy longest match first, `##` before every piece but the first, the
    /// whole word one unknown token when it is longer than `max_input_chars_per_word` characters or when some
    /// part of it matches nothing.
    fn tokenize(&self, sequence: &str) -> tokenizers::Result<Vec<Token>> {
        if sequence.chars().count() > self.max_input_chars_per_word {
            return self.unk(sequence);
        }
        let mut pieces = Vec::new();
        let mut start = 0;
        while start < sequence.len() {
            let mut end = sequence.len();
            let prefix = if start > 0 { self.prefix.as_str() } else { "" };
            let found = loop {
                if start >= end {
                    break None;
                }
                let piece = &sequence[start..end];
                if let Some(id) = self.lookup(prefix, piece) {
                    break Some(Token { id, value: format!("{prefix}{piece}"), offsets: (start, end) });
                }
                end -= piece.chars().last().map_or(1, char::len_utf8);
            };
            let Some(token) = found else { return self.unk(sequence) };
            pieces.push(token);
            start = end;
        }
        Ok(pieces)
    }

    fn token_to_id(&self, token: &str) -> Option<u32> {
        self.lookup("", token)
    }

    fn id_to_token(&self, id: u32) -> Option<String> {
        self.token(id).map(str::to_string)
    }

    fn get_vocab(&self) -> std::collections::HashMap<String, u32> {
        (0..self.spans.len() as u32).filter_map(|id| Some((self.token(id)?.to_string(), id))).collect()
    }

    fn get_vocab_size(&self) -> usize {
        self.len
    }

    fn save(&self, _folder: &Path, _prefix: Option<&str>) -> tokenizers::Result<Vec<std::path::PathBuf>> {
        Err("pg_clip's WordPiece reads vocabularies; it does not write them".into())
    }

    fn get_trainer(&self) -> WordPieceTrainer {
        WordPieceTrainer::default()
    }
}

/// A BERT `tokenizer.json`: a WordPiece model and a `BertNormalizer` that cleans the text.
fn parse_tokenizer_json(what: &str, json: &str) -> Result<(tokenizers::Tokenizer, BertNormalizer)> {
    let file: tokenizers::Tokenizer =
        json.parse().map_err(|e| PgClipError::model_invalid(what, format!("not a tokenizer.json: {e}")))?;
    if !matches!(file.get_model(), ModelWrapper::WordPiece(_)) {
        return Err(PgClipError::model_invalid(what, "its model is not WordPiece"));
    }
    let bert = match file.get_normalizer() {
        Some(NormalizerWrapper::BertNormalizer(bert)) if bert.clean_text => *bert,
        other => {
            return Err(PgClipError::model_invalid(
                what,
                format!("its normalizer is {other:?}, not BERT's (BertNormalizer with clean_text)"),
            ))
        }
    };
    Ok((file, bert))
}

fn json_settings(what: &str, json: &str, max_length: usize) -> Result<WordPieceSettings> {
    let (_, bert) = parse_tokenizer_json(what, json)?;
    Ok(WordPieceSettings {
        do_lower_case: bert.lowercase,
        strip_accents: bert.strip_accents,
        tokenize_chinese_chars: bert.handle_chinese_chars,
        max_length,
    })
}

/// `vocab.txt` as the slow tokenizer's `load_vocab` reads it: Python's universal newlines (`\n`, `\r\n` and `\r`
/// all end a line), the line terminator dropped but nothing else (the crate's own reader also trims trailing
/// spaces), the id is the line number, and a repeated token keeps its last line's id.
fn parse_vocab(text: &str) -> Vocab {
    let mut vocab = Vocab::default();
    let mut rest = text;
    let mut id = 0u32;
    while !rest.is_empty() {
        let (line, after) = match rest.find(['\n', '\r']) {
            Some(i) if rest[i..].starts_with("\r\n") => (&rest[..i], &rest[i + 2..]),
            Some(i) => (&rest[..i], &rest[i + 1..]),
            None => (rest, ""),
        };
        vocab.insert(line.to_string(), id);
        id += 1;
        rest = after;
    }
    vocab
}

fn read_file(path: &Path, what: &'static str) -> Result<String> {
    std::fs::read_to_string(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => PgClipError::FileNotFound { what, path: path.to_path_buf(), hint: None },
        _ => PgClipError::model_invalid(format!("{what} {}", path.display()), e),
    })
}

fn panic_message(payload: &Box<dyn std::any::Any + Send>) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "no message".into())
}

/// A set of code points from a Unicode property class, for binary search.
#[derive(Debug)]
struct CharClass(Vec<(char, char)>);

impl CharClass {
    fn new(property: &str) -> Result<Self> {
        let hir = regex_syntax::Parser::new()
            .parse(property)
            .map_err(|e| PgClipError::runtime("building the WordPiece normaliser", e))?;
        match hir.kind() {
            HirKind::Class(Class::Unicode(class)) => {
                Ok(CharClass(class.ranges().iter().map(|r| (r.start(), r.end())).collect()))
            }
            _ => Err(PgClipError::runtime("building the WordPiece normaliser", format!("{property} is not a class"))),
        }
    }

    fn contains(&self, c: char) -> bool {
        self.0
            .binary_search_by(|&(lo, hi)| {
                if hi < c {
                    std::cmp::Ordering::Less
                } else if lo > c {
                    std::cmp::Ordering::Greater
                } else {
                    std::cmp::Ordering::Equal
                }
            })
            .is_ok()
    }
}

/// The crate's `BertNormalizer`, with the corrections that make it the slow BasicTokenizer's normalisation
/// (module documentation, 1 to 4). Its order is the slow tokenizer's: clean, split CJK, NFC.
#[derive(Debug, Clone)]
pub struct SlowBertNormalizer {
    bert: BertNormalizer,
    /// General category C* (Cc, Cf, Cs, Co, Cn): `_is_control` in the slow tokenizer.
    other: Arc<CharClass>,
    /// General category P*: `_is_punctuation` (it also counts ASCII symbols, which the crate handles).
    punctuation: Arc<CharClass>,
}

impl SlowBertNormalizer {
    fn new(bert: BertNormalizer) -> Result<Self> {
        Ok(SlowBertNormalizer {
            bert,
            other: Arc::new(CharClass::new(r"\p{C}")?),
            punctuation: Arc::new(CharClass::new(r"\p{P}")?),
        })
    }

    fn removed(&self, c: char) -> bool {
        !matches!(c, '\t' | '\n' | '\r') && self.other.contains(c)
    }

    fn split_off(&self, c: char) -> bool {
        (self.bert.handle_chinese_chars && ('\u{2B820}'..='\u{2B91F}').contains(&c)) || self.punctuation.contains(c)
    }
}

impl Normalizer for SlowBertNormalizer {
    fn normalize(&self, normalized: &mut NormalizedString) -> tokenizers::Result<()> {
        if self.bert.clean_text && normalized.get().chars().any(|c| self.removed(c)) {
            normalized.filter(|c| !self.removed(c));
        }
        if normalized.get().chars().any(|c| self.split_off(c)) {
            // As the crate's own CJK splitting does it: a space before (a new character) and after.
            let mut spaced: Vec<(char, isize)> = Vec::with_capacity(normalized.get().len() + 8);
            normalized.for_each(|c| {
                if self.split_off(c) {
                    spaced.extend([(' ', 0), (c, 1), (' ', 1)]);
                } else {
                    spaced.push((c, 0));
                }
            });
            normalized.transform(spaced, 0);
        }
        self.bert.normalize(normalized)?;
        normalized.nfc();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokenizers::models::wordpiece::WordPiece;

    const VOCAB: &str =
        "[PAD]\n[unused1]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\nк\n##рас\n##ный\nр\n##юк\n##зак\nё\nе\n##\u{308}\n\
                         ##лка\ncafé\ncafe\n##\u{301}\n,\n!\n\u{2E4E}\na\nb\n##b\n語\nx\ny\n";

    fn tokenizer() -> WordPieceTokenizer {
        WordPieceTokenizer::from_vocab(VOCAB, &WordPieceSettings::multilingual_cased()).unwrap()
    }

    fn id(token: &str) -> i64 {
        let line = VOCAB.split('\n').position(|l| l == token).unwrap_or_else(|| panic!("{token} not in VOCAB"));
        line as i64
    }

    fn ids(tokens: &[&str]) -> Vec<i64> {
        tokens.iter().map(|t| id(t)).collect()
    }

    #[test]
    fn words_split_into_pieces_between_cls_and_sep() {
        let t = tokenizer();
        assert_eq!(
            t.encode("красный рюкзак").unwrap(),
            ids(&["[CLS]", "к", "##рас", "##ный", "р", "##юк", "##зак", "[SEP]"])
        );
        assert_eq!(t.encode("").unwrap(), ids(&["[CLS]", "[SEP]"]));
        assert_eq!(t.encode(" \t\u{3000}\n").unwrap(), ids(&["[CLS]", "[SEP]"]));
        // Unknown words and words over 100 characters are one [UNK].
        assert_eq!(t.encode("zzz").unwrap(), ids(&["[CLS]", "[UNK]", "[SEP]"]));
        assert_eq!(t.encode(&"a".repeat(101)).unwrap(), ids(&["[CLS]", "[UNK]", "[SEP]"]));
    }

    #[test]
    fn nfd_text_is_composed_first_as_the_slow_tokenizer_does() {
        let t = tokenizer();
        assert_eq!(t.encode("е\u{308}лка").unwrap(), t.encode("ёлка").unwrap());
        assert_eq!(t.encode("cafe\u{301}").unwrap(), ids(&["[CLS]", "café", "[SEP]"]));
        // A zero-width space between the letter and its accent goes first, then they compose.
        assert_eq!(t.encode("cafe\u{200B}\u{301}").unwrap(), ids(&["[CLS]", "café", "[SEP]"]));
    }

    #[test]
    fn the_other_corrections() {
        let t = tokenizer();
        // Unassigned code points and noncharacters are removed.
        assert_eq!(t.encode("a\u{378}b\u{FFFF}b").unwrap(), ids(&["[CLS]", "a", "##b", "##b", "[SEP]"]));
        // CJK Extension E's first 256 code points are split off like the rest of CJK.
        assert_eq!(t.encode("x\u{2B820}y").unwrap(), ids(&["[CLS]", "x", "[UNK]", "y", "[SEP]"]));
        assert_eq!(t.encode("x語y").unwrap(), ids(&["[CLS]", "x", "語", "y", "[SEP]"]));
        // Punctuation newer than the crate's tables is split off.
        assert_eq!(t.encode("a\u{2E4E}b").unwrap(), ids(&["[CLS]", "a", "\u{2E4E}", "b", "[SEP]"]));
    }

    #[test]
    fn special_tokens_in_the_text_keep_their_ids() {
        let t = tokenizer();
        assert_eq!(t.encode("a [MASK] b").unwrap(), ids(&["[CLS]", "a", "[MASK]", "b", "[SEP]"]));
        assert_eq!(t.encode("a[SEP]b").unwrap(), ids(&["[CLS]", "a", "[SEP]", "b", "[SEP]"]));
        assert_eq!(t.token_id("[unused1]"), Some(1));
        assert_eq!(t.encode("[unused1]").unwrap()[1], id("[UNK]"));
    }

    #[test]
    fn truncation_keeps_sep_last() {
        let settings = WordPieceSettings { max_length: 5, ..WordPieceSettings::multilingual_cased() };
        let t = WordPieceTokenizer::from_vocab(VOCAB, &settings).unwrap();
        assert_eq!(t.encode("a b a b a b").unwrap(), ids(&["[CLS]", "a", "b", "a", "[SEP]"]));
        assert_eq!(t.encode("рюкзак").unwrap(), ids(&["[CLS]", "р", "##юк", "##зак", "[SEP]"]));
        assert_eq!(t.encode("красный").unwrap(), ids(&["[CLS]", "к", "##рас", "##ный", "[SEP]"]));
        assert_eq!(t.encode(&"a ".repeat(10_000)).unwrap().len(), 5);
        assert_eq!(t.max_length(), 5);
    }

    #[test]
    fn batches_are_padded_with_a_mask() {
        let t = tokenizer();
        let b = t.encode_batch(&["a b", "", "a"]).unwrap();
        assert_eq!((b.rows, b.sequence), (3, 4));
        let (cls, sep, pad, a, bb) = (id("[CLS]"), id("[SEP]"), id("[PAD]"), id("a"), id("b"));
        assert_eq!(b.input_ids, [cls, a, bb, sep, cls, sep, pad, pad, cls, a, sep, pad]);
        assert_eq!(b.attention_mask, [1, 1, 1, 1, 1, 1, 0, 0, 1, 1, 1, 0]);
        let empty = t.encode_batch(&[]).unwrap();
        assert_eq!((empty.rows, empty.sequence, empty.input_ids.len()), (0, 0, 0));
    }

    #[test]
    fn the_compact_model_tokenizes_as_the_crates_wordpiece() {
        let vocab = parse_vocab(&format!("{VOCAB}##a\nab\n##ab\nк\n[UNK]\n"));
        let crate_model = WordPiece::builder()
            .vocab(vocab.clone())
            .unk_token("[UNK]".into())
            .continuing_subword_prefix("##".into())
            .max_input_chars_per_word(MAX_INPUT_CHARS_PER_WORD)
            .build()
            .unwrap();
        let compact = CompactWordPiece::new("test", &vocab, "[UNK]", "##", MAX_INPUT_CHARS_PER_WORD).unwrap();
        assert_eq!(compact.get_vocab(), crate_model.get_vocab().into_iter().collect());
        assert_eq!(compact.get_vocab_size(), crate_model.get_vocab_size());
        // A repeated token keeps its last id; the earlier id has no token, in both.
        for id in 0..vocab.len() as u32 + 3 {
            assert_eq!(compact.id_to_token(id), crate_model.id_to_token(id), "{id}");
        }
        let pieces = ["a", "b", "ab", "к", "рас", "ный", "#", "##", "語", "x", "é", "\u{308}", "zz", "ё"];
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        let mut words = vec![String::new(), "a".repeat(100), "a".repeat(101), "красный".into(), "##b".into()];
        for _ in 0..5000 {
            let mut word = String::new();
            for _ in 0..(1 + state % 7) {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                word.push_str(pieces[(state % pieces.len() as u64) as usize]);
            }
            words.push(word);
        }
        for word in &words {
            let ours = compact.tokenize(word).unwrap();
            let theirs = crate_model.tokenize(word).unwrap();
            let view = |t: &[Token]| t.iter().map(|t| (t.id, t.value.clone(), t.offsets)).collect::<Vec<_>>();
            assert_eq!(view(&ours), view(&theirs), "{word:?}");
        }
    }

    #[test]
    fn vocab_lines_are_read_as_python_reads_them() {
        let v = parse_vocab("a\r\nb\rc \n\nd\na");
        assert_eq!(v["b"], 1);
        assert_eq!(v["c "], 2, "trailing spaces are part of the token");
        assert_eq!(v[""], 3);
        assert_eq!(v["d"], 4);
        assert_eq!(v["a"], 5, "a repeated token keeps its last id");
        assert_eq!(parse_vocab("x\n").len(), 1);
        assert!(parse_vocab("").is_empty());
    }

    #[test]
    fn unsupported_settings_and_broken_files_are_model_errors() {
        let lower = WordPieceSettings { do_lower_case: true, ..WordPieceSettings::multilingual_cased() };
        let err = WordPieceTokenizer::from_vocab(VOCAB, &lower).unwrap_err();
        assert_eq!(err.sqlstate_code(), "F0000", "{err}");
        let err = WordPieceTokenizer::from_vocab("a\nb\n", &WordPieceSettings::multilingual_cased()).unwrap_err();
        assert!(err.to_string().contains("no [UNK]"), "{err}");
        let short = WordPieceSettings { max_length: 1, ..WordPieceSettings::multilingual_cased() };
        assert!(WordPieceTokenizer::from_vocab(VOCAB, &short).is_err());
        for json in ["", "{", "{\"model\": 1}", "[]"] {
            let err = WordPieceTokenizer::from_tokenizer_json(json, 128).unwrap_err();
            assert_eq!(err.sqlstate_code(), "F0000", "{err}");
        }
        let missing = WordPieceTokenizer::from_vocab_file(Path::new("/nonexistent/vocab.txt"), &lower).unwrap_err();
        assert_eq!(missing.sqlstate_code(), "58P01");
    }

    /// The tokenizer.json transformers writes for this vocabulary (BertTokenizer.save_pretrained), made here
    /// with the crate's own components: it must load and tokenize as the vocab.txt path does.
    fn hf_tokenizer_json(lowercase: bool) -> String {
        let vocab = parse_vocab(VOCAB);
        let (cls, sep) = (vocab["[CLS]"], vocab["[SEP]"]);
        let mut t =
            tokenizers::Tokenizer::new(WordPiece::builder().vocab(vocab).unk_token("[UNK]".into()).build().unwrap());
        t.with_normalizer(Some(BertNormalizer::new(true, true, None, lowercase))).unwrap();
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
        t.add_special_tokens(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"].map(|s| AddedToken::from(s, true)))
            .unwrap();
        t.to_string(false).unwrap()
    }

    #[test]
    fn tokenizer_json_gives_the_same_ids() {
        let from_json = WordPieceTokenizer::from_tokenizer_json(&hf_tokenizer_json(false), 128).unwrap();
        let from_vocab = tokenizer();
        for text in ["красный рюкзак", "е\u{308}лка", "a [MASK] b\u{378}", "x\u{2B820}y a\u{2E4E}b", "", "zzz"]
        {
            assert_eq!(from_json.encode(text).unwrap(), from_vocab.encode(text).unwrap(), "{text:?}");
        }
        let err = WordPieceTokenizer::from_tokenizer_json(&hf_tokenizer_json(true), 128).unwrap_err();
        assert!(err.to_string().contains("cased"), "{err}");
    }

    #[test]
    fn from_file_picks_the_format_by_name_and_checks_the_settings() {
        let dir = std::env::temp_dir().join(format!("pg_clip-wordpiece-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (vocab, json) = (dir.join("text-multilingual.vocab.txt"), dir.join("text-multilingual.tokenizer.json"));
        std::fs::write(&vocab, VOCAB).unwrap();
        std::fs::write(&json, hf_tokenizer_json(false)).unwrap();
        let settings = WordPieceSettings::multilingual_cased();
        let a = WordPieceTokenizer::from_file(&vocab, &settings).unwrap();
        let b = WordPieceTokenizer::from_file(&json, &settings).unwrap();
        assert_eq!(a.encode("красный рюкзак").unwrap(), b.encode("красный рюкзак").unwrap());
        let no_cjk = WordPieceSettings { tokenize_chinese_chars: false, ..settings };
        let err = WordPieceTokenizer::from_file(&json, &no_cjk).unwrap_err();
        assert!(err.to_string().contains("not the manifest's"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn any_text_is_tokenized_without_panicking() {
        let t = tokenizer();
        // Every code point class that matters to a normaliser, at word boundaries and inside words.
        let pieces = [
            "\u{0}",
            "\u{FFFD}",
            "\u{378}",
            "\u{FFFF}",
            "\u{10FFFF}",
            "\u{E000}",
            "\u{301}",
            "\u{345}",
            "\u{200B}",
            "\u{200D}",
            "\u{FEFF}",
            "\u{2028}",
            "\r\n",
            "\t",
            "\u{3000}",
            "\u{85}",
            "\u{1F44D}\u{1F3FD}",
            "\u{2B820}",
            "語",
            "İ",
            "ß",
            "\u{FB01}",
            "[",
            "[MASK]",
            "[SEP",
            "##",
            "#",
            "ё",
            "е",
            "\u{308}",
            "a",
            ".",
            "\u{2E4E}",
        ];
        let mut state = 0x2545_F491_4F6C_DD1Du64;
        for _ in 0..3000 {
            let mut text = String::new();
            for _ in 0..(state % 24) {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                text.push_str(pieces[(state % pieces.len() as u64) as usize]);
            }
            let ids = t.encode(&text).unwrap_or_else(|e| panic!("{text:?}: {e}"));
            assert!(ids.len() >= 2 && ids[0] == id("[CLS]") && *ids.last().unwrap() == id("[SEP]"), "{text:?}");
        }
        // Code points across the whole range, one at a time.
        for c in (0..=0x10FFFFu32).step_by(53).filter_map(char::from_u32) {
            assert!(t.encode(&format!("a{c}b {c}")).is_ok(), "{c:?}");
        }
    }
}
