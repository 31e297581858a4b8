//! The text encoders a model directory may offer, and their tokenizers: OpenAI CLIP's own text tower (BPE,
//! English) and sentence-transformers clip-ViT-B-32-multilingual-v1's (WordPiece, 50+ languages). Both put a
//! text in the space of the image vectors; `pg_clip.text_model` chooses one per session. No SQL here.

use std::path::PathBuf;

use super::checksum::ChecksumMemo;
use super::encoder::TowerKind;
use super::manifest::ModelDir;
use crate::error::{PgClipError, Result};
use crate::tokenizer::{ClipTokenizer, SentencePieceTokenizer, WordPieceTokenizer, END_OF_TEXT};

/// Which text encoder (`pg_clip.text_model`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TextModel {
    /// `text.onnx`: the model's own text tower. CLIP: OpenAI's BPE, 77 tokens; SigLIP: the checkpoint's
    /// SentencePiece, padded to 64.
    Clip,
    /// `text-multilingual.onnx`: clip-ViT-B-32-multilingual-v1's text encoder, BERT's cased WordPiece, 128 tokens.
    Multilingual,
}

impl TextModel {
    /// The setting's spelling, also what clip_model_info() reports.
    pub fn name(self) -> &'static str {
        match self {
            TextModel::Clip => "clip",
            TextModel::Multilingual => "multilingual",
        }
    }

    pub fn tower_kind(self) -> TowerKind {
        match self {
            TextModel::Clip => TowerKind::Text,
            TextModel::Multilingual => TowerKind::Multilingual,
        }
    }
}

/// A text encoder's tokenizer, read from its model directory's file (checksum verified against the manifest).
/// Built once per backend: the multilingual vocabulary has 119,547 entries (tens of ms to load).
#[derive(Debug)]
#[allow(clippy::large_enum_variant)] // one of each per backend: boxing would save nothing worth an indirection
pub enum TextTokenizer {
    Clip { tokenizer: ClipTokenizer, context_length: usize },
    WordPiece(WordPieceTokenizer),
    SentencePiece(SentencePieceTokenizer),
}

impl TextTokenizer {
    /// The tokenizer of `text_model` from `model`. Returns it with the directory it came from and its file's
    /// SHA-256, which tell a loaded tokenizer apart from a newer one.
    pub fn load(model: &ModelDir, text_model: TextModel) -> Result<LoadedTokenizer> {
        let manifest = &model.manifest;
        let (file, tokenizer) = match text_model {
            TextModel::Clip if manifest.text.as_ref().is_some_and(|t| t.tokenizer.is_some()) => {
                let spec = manifest.text.as_ref().and_then(|t| t.tokenizer.as_ref()).expect("checked by the guard");
                model.verify_file(&spec.file, &ChecksumMemo::default())?;
                let tokenizer = SentencePieceTokenizer::from_file(&model.file_path(&spec.file)?, spec.settings())?;
                (spec.file.clone(), TextTokenizer::SentencePiece(tokenizer))
            }
            TextModel::Clip => {
                let text = manifest.text.as_ref();
                let file = text.and_then(|t| t.bpe_vocab.clone()).ok_or_else(|| {
                    PgClipError::model_invalid(
                        format!("model {}", model.dir.display()),
                        "its manifest names no text tower with a bpe_vocab file",
                    )
                })?;
                let context_length = text.map_or(crate::tokenizer::CONTEXT_LENGTH, |t| t.context_length);
                model.verify_file(&file, &ChecksumMemo::default())?;
                let tokenizer = ClipTokenizer::from_path(&model.file_path(&file)?)?;
                (file, TextTokenizer::Clip { tokenizer, context_length })
            }
            TextModel::Multilingual => {
                let tower = manifest.text_multilingual.as_ref().ok_or_else(|| missing_tower(model, false))?;
                debug_assert!(manifest.family() == "clip", "export.py makes the multilingual tower for ViT-B/32 only");
                let spec = &tower.tokenizer;
                model.verify_file(&spec.file, &ChecksumMemo::default())?;
                let tokenizer = WordPieceTokenizer::from_file(&model.file_path(&spec.file)?, &spec.settings())?;
                (spec.file.clone(), TextTokenizer::WordPiece(tokenizer))
            }
        };
        let sha256 = manifest.files.get(&file).map(|f| f.sha256.clone()).unwrap_or_default();
        Ok(LoadedTokenizer { model_dir: model.dir.clone(), sha256, tokenizer })
    }

    /// The ids the encoder sees for `text` (already checked by `check_text`):
    /// CLIP: `<|startoftext|>`, the BPE ids, `<|endoftext|>`, cut to the context (77) as `clip.tokenize(truncate=True)`
    /// does; not the zeros that pad it to 77, which the causal tower never reads (see `Tower::embed_tokens`).
    /// Multilingual: `[CLS]`, the WordPiece ids, `[SEP]`, cut to 128 with `[SEP]` last.
    /// SigLIP: the pieces, `</s>`, padded to 64 (the encoder reads every position).
    pub fn ids(&self, text: &str) -> Result<Vec<i64>> {
        match self {
            TextTokenizer::Clip { tokenizer, context_length } => {
                let mut ids = tokenizer.tokenize(text, *context_length);
                let end = i64::from(END_OF_TEXT);
                if let Some(last) = ids.iter().position(|&id| id == end) {
                    ids.truncate(last + 1);
                }
                Ok(ids)
            }
            TextTokenizer::WordPiece(tokenizer) => tokenizer.encode(text),
            TextTokenizer::SentencePiece(tokenizer) => tokenizer.encode(text),
        }
    }
}

/// A tokenizer and where it came from.
#[derive(Debug)]
pub struct LoadedTokenizer {
    pub model_dir: PathBuf,
    pub sha256: String,
    pub tokenizer: TextTokenizer,
}

/// What every text function refuses before any work: empty or whitespace-only text (22023), and text over
/// `pg_clip.max_text_bytes` (54000). Longer than the encoder's context is not an error: it is truncated.
pub fn check_text(text: &str, max_text_bytes: usize) -> Result<()> {
    if text.trim().is_empty() {
        return Err(PgClipError::EmptyInput { what: "text" });
    }
    if text.len() > max_text_bytes {
        return Err(PgClipError::LimitExceeded {
            what: "text size",
            actual: text.len() as u64,
            limit: max_text_bytes as u64,
            setting: "pg_clip.max_text_bytes",
        });
    }
    Ok(())
}

/// The error for a model directory without the multilingual tower (or its int8 graph) that the settings ask
/// for: like a missing model file (58P01), with a HINT on how to get it, or do without it.
pub(crate) fn missing_tower(model: &ModelDir, int8: bool) -> PgClipError {
    let (what, export, instead) = if int8 {
        ("int8 multilingual text tower", "--towers image,text,multilingual --int8", "RESET pg_clip.text_precision")
    } else {
        ("multilingual text tower", "--towers image,text,multilingual", "SET pg_clip.text_model = clip")
    };
    PgClipError::FileNotFound {
        what,
        path: model.dir.clone(),
        hint: Some(format!(
            "The model directory has none: export the model with model/export.py {export} (see model/README.md), \
             or {instead}."
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_whitespace_and_oversized_text_are_refused_with_their_sqlstates() {
        assert_eq!(check_text("", 100).unwrap_err().sqlstate_code(), "22023");
        assert_eq!(check_text(" \t\n\u{3000}", 100).unwrap_err().sqlstate_code(), "22023");
        assert_eq!(check_text("красный рюкзак", 10).unwrap_err().sqlstate_code(), "54000");
        assert!(check_text("красный рюкзак", 100).is_ok());
    }

    #[test]
    fn names_are_the_settings_spelling() {
        assert_eq!(TextModel::Clip.name(), "clip");
        assert_eq!(TextModel::Multilingual.name(), "multilingual");
        assert_eq!(TextModel::Multilingual.tower_kind(), TowerKind::Multilingual);
    }
}
