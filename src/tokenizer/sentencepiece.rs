//! SigLIP's text tokenizer: a checkpoint's own `tokenizer.json` (SigLIP 2: Gemma's SentencePiece; SigLIP 1: a
//! T5-like SentencePiece), run by the Hugging Face `tokenizers` crate as the file describes, with the special
//! tokens, truncation and padding that `SiglipProcessor(text, padding="max_length", max_length=64)` applies done
//! here from the manifest's flags (model/export.py strips them from the file, so that nothing is applied twice).
//!
//! Why padding matters: SigLIP's text encoder is not causal and has no attention mask; it pools the last
//! position. Its vector is defined for exactly `max_length` ids, padding included, so a text always runs padded.
#![forbid(unsafe_code)]

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;

use tokenizers::Tokenizer;

use crate::error::{PgClipError, Result};

/// What the processor does around the file's tokenizer (the manifest's `text.tokenizer` flags).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SentencePieceSettings {
    /// Lowercase the text first (SigLIP 1's tokenizer_config `do_lower_case`).
    pub lowercase: bool,
    /// Put this id first (Gemma's `<bos>` when `add_bos_token`; SigLIP 2 does not).
    pub bos_id: Option<u32>,
    /// Put this id last, after truncation, so that it survives it (`</s>` / `<eos>`).
    pub eos_id: Option<u32>,
    pub pad_id: u32,
    /// Ids per text after padding (the text encoder's 64 positions).
    pub max_length: usize,
}

#[derive(Debug)]
pub struct SentencePieceTokenizer {
    inner: Tokenizer,
    settings: SentencePieceSettings,
}

impl SentencePieceTokenizer {
    pub fn from_file(path: &Path, settings: SentencePieceSettings) -> Result<Self> {
        let what = format!("tokenizer {}", path.display());
        let text = std::fs::read_to_string(path).map_err(|e| PgClipError::model_invalid(&what, e))?;
        Self::from_json(&what, &text, settings)
    }

    pub fn from_json(what: &str, json: &str, settings: SentencePieceSettings) -> Result<Self> {
        let special = usize::from(settings.bos_id.is_some()) + usize::from(settings.eos_id.is_some());
        if settings.max_length <= special || settings.max_length > 4096 {
            return Err(PgClipError::model_invalid(
                what,
                format!("max_length {} leaves no room for text", settings.max_length),
            ));
        }
        let inner: Tokenizer = json.parse().map_err(|e| PgClipError::model_invalid(what, e))?;
        // The file must not add, cut or pad anything itself: the settings above do, once.
        if inner.get_post_processor().is_some() || inner.get_truncation().is_some() || inner.get_padding().is_some() {
            return Err(PgClipError::model_invalid(
                what,
                "it has a post_processor, truncation or padding of its own (model/export.py removes them; the \
                 manifest's flags say what to add)",
            ));
        }
        let vocab = inner.get_vocab_size(true) as u32;
        for (name, id) in [("bos_id", settings.bos_id), ("eos_id", settings.eos_id), ("pad_id", Some(settings.pad_id))]
        {
            if id.is_some_and(|id| id >= vocab) {
                return Err(PgClipError::model_invalid(what, format!("{name} {id:?} is outside its {vocab} ids")));
            }
        }
        let tokenizer = SentencePieceTokenizer { inner, settings };
        // A pipeline that cannot encode a word is broken; find out now, not on the first query.
        tokenizer.encode("a photo")?;
        Ok(tokenizer)
    }

    pub fn max_length(&self) -> usize {
        self.settings.max_length
    }

    /// The ids the text encoder sees: [bos] the text's pieces (cut to fit) [eos], padded to `max_length`.
    pub fn encode(&self, text: &str) -> Result<Vec<i64>> {
        let s = &self.settings;
        let lowered;
        let text = if s.lowercase {
            lowered = text.to_lowercase();
            lowered.as_str()
        } else {
            text
        };
        let encoded = catch_unwind(AssertUnwindSafe(|| self.inner.encode(text, false)));
        let pieces = match encoded {
            Ok(Ok(encoding)) => encoding.get_ids().to_vec(),
            Ok(Err(e)) => return Err(PgClipError::runtime("tokenizing text", e)),
            Err(_) => return Err(PgClipError::runtime("tokenizing text", "the tokenizer panicked")),
        };
        let room = s.max_length - usize::from(s.bos_id.is_some()) - usize::from(s.eos_id.is_some());
        let mut ids: Vec<i64> = Vec::with_capacity(s.max_length);
        ids.extend(s.bos_id.map(i64::from));
        ids.extend(pieces.iter().take(room).map(|&id| i64::from(id)));
        ids.extend(s.eos_id.map(i64::from));
        ids.resize(s.max_length, i64::from(s.pad_id));
        Ok(ids)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tiny Unigram tokenizer in the layout model/export.py writes (Metaspace, no post-processor).
    fn tokenizer_json(post_processor: &str) -> String {
        format!(
            r#"{{"version":"1.0","truncation":null,"padding":null,"added_tokens":[],
            "normalizer":null,
            "pre_tokenizer":{{"type":"Metaspace","replacement":"▁","prepend_scheme":"always","split":true}},
            "post_processor":{post_processor},
            "decoder":null,
            "model":{{"type":"Unigram","unk_id":3,"byte_fallback":false,"vocab":[
              ["<pad>",0.0],["</s>",0.0],["<s>",0.0],["<unk>",0.0],
              ["▁a",-1.0],["▁photo",-1.0],["▁red",-1.0],["▁",-2.0],["a",-3.0],["b",-3.0]]}}}}"#
        )
    }

    fn settings() -> SentencePieceSettings {
        SentencePieceSettings { lowercase: true, bos_id: None, eos_id: Some(1), pad_id: 0, max_length: 6 }
    }

    #[test]
    fn pads_to_max_length_with_eos_after_the_text() {
        let t = SentencePieceTokenizer::from_json("t", &tokenizer_json("null"), settings()).unwrap();
        assert_eq!(t.encode("a photo").unwrap(), vec![4, 5, 1, 0, 0, 0]);
        // Lowercased first, as SigLIP 1's processor does.
        assert_eq!(t.encode("A RED photo").unwrap(), vec![4, 6, 5, 1, 0, 0]);
    }

    #[test]
    fn truncation_keeps_eos_last_and_bos_first() {
        let t = SentencePieceTokenizer::from_json("t", &tokenizer_json("null"), settings()).unwrap();
        assert_eq!(t.encode("a a a a a a a a").unwrap(), vec![4, 4, 4, 4, 4, 1]);
        let with_bos = SentencePieceSettings { bos_id: Some(2), ..settings() };
        let t = SentencePieceTokenizer::from_json("t", &tokenizer_json("null"), with_bos).unwrap();
        assert_eq!(t.encode("a a a a a a a a").unwrap(), vec![2, 4, 4, 4, 4, 1]);
    }

    #[test]
    fn refuses_a_file_that_adds_tokens_itself_and_ids_out_of_range() {
        let post = r#"{"type":"TemplateProcessing","single":[{"Sequence":{"id":"A","type_id":0}}],
            "pair":[{"Sequence":{"id":"A","type_id":0}}],"special_tokens":{}}"#;
        let err = SentencePieceTokenizer::from_json("t", &tokenizer_json(post), settings()).unwrap_err();
        assert!(err.to_string().contains("post_processor"), "{err}");
        let bad = SentencePieceSettings { eos_id: Some(99), ..settings() };
        assert!(SentencePieceTokenizer::from_json("t", &tokenizer_json("null"), bad).is_err());
        let no_room = SentencePieceSettings { max_length: 1, ..settings() };
        assert!(SentencePieceTokenizer::from_json("t", &tokenizer_json("null"), no_room).is_err());
    }
}
