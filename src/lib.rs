//! pg_clip: CLIP image (and later text) embeddings computed inside PostgreSQL, returned as pgvector
//! `vector`s, so a catalogue can be searched by photo with plain SQL.
//!
//! Module map: `settings` (every GUC), `error` (one error type, SQLSTATEs), `sql_api` (every SQL function,
//! thin), `pgvector` (the vector varlena), `model` (manifest, ONNX Runtime session per backend, cache),
//! `image` (decode + CLIP preprocessing, pure), `tokenizer` (CLIP BPE, pure), `fetch` (URL policy and capped
//! downloads on the backend's fetch threads, no Postgres).
use pgrx::prelude::*;

::pgrx::pg_module_magic!(name, version);

pub mod error;
pub mod fetch;
pub mod image;
pub mod model;
pub mod pgvector;
pub mod settings;
mod sql_api;
pub mod tokenizer;

/// Registers the settings and nothing else: no model, no ONNX Runtime, no threads. Loading happens on a
/// backend's first embedding call, so server start is not slowed and nothing has to survive fork().
#[pg_guard]
pub extern "C-unwind" fn _PG_init() {
    settings::init();
}
