//! Text tokenizers, pure (no Postgres, no ONNX Runtime).
//!
//! * [`clip`]: OpenAI CLIP's byte-level BPE for the CLIP text tower (`text.onnx`): cleaning and pre-tokenizer
//!   in Rust, merges by the Hugging Face `tokenizers` crate's BPE model.
//! * [`wordpiece`]: BERT's cased WordPiece for the multilingual text tower (`text-multilingual.onnx`),
//!   built on the Hugging Face `tokenizers` crate.
//! * [`sentencepiece`]: SigLIP's SentencePiece tokenizers from a checkpoint's `tokenizer.json`, padded to the
//!   text encoder's fixed length.
#![forbid(unsafe_code)]

pub mod clip;
pub mod sentencepiece;
pub mod wordpiece;

pub use clip::{ClipTokenizer, CONTEXT_LENGTH, END_OF_TEXT, START_OF_TEXT};
pub use sentencepiece::{SentencePieceSettings, SentencePieceTokenizer};
pub use wordpiece::{WordPieceSettings, WordPieceTokenizer};
