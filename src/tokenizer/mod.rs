//! Text tokenizers, pure (no Postgres, no ONNX Runtime).
//!
//! * [`clip`]: OpenAI CLIP's byte-level BPE for the CLIP text tower (`text.onnx`).
#![forbid(unsafe_code)]

pub mod clip;

pub use clip::{ClipTokenizer, CONTEXT_LENGTH, END_OF_TEXT, START_OF_TEXT};
