//! pg_clip: CLIP image (and later text) embeddings computed inside PostgreSQL, returned as pgvector
//! `vector`s, so a catalogue can be searched by photo with plain SQL.
//!
//! Module map: `settings` (every GUC), `error` (one error type, SQLSTATEs), `sql_api` (every SQL function,
//! thin), `pgvector` (the vector varlena), `model` (manifest, ONNX Runtime session per backend, cache),
//! `image` (decode + CLIP preprocessing, pure), `tokenizer` (CLIP BPE and BERT WordPiece, pure), `fetch` (URL
//! policy and capped downloads on the backend's fetch threads, no Postgres), `backfill` (embedding tables from
//! URLs: the batch pipeline, the triggers and background workers of automatic embedding), `distributed`
//! (Citus: the query vector folded once before Citus plans a search), `search_check` (a search with another
//! model than its column's is refused at planning).
use pgrx::prelude::*;

::pgrx::pg_module_magic!(name, version);

pub mod backfill;
pub mod distributed;
pub mod error;
pub mod fetch;
pub mod image;
pub mod model;
pub mod pgvector;
mod search_check;
pub mod settings;
mod sql_api;
pub mod tokenizer;

/// Registers the settings and nothing else: no model, no ONNX Runtime, no threads. Loading happens on a
/// backend's first embedding call, so server start is not slowed and nothing has to survive fork().
/// Loaded by shared_preload_libraries, it also reserves the auto-embed workers' shared memory and
/// registers their launcher (which the postmaster starts after recovery; it loads no model either).
#[pg_guard]
pub extern "C-unwind" fn _PG_init() {
    settings::init();
    // SAFETY: a flag the postmaster sets while it loads shared_preload_libraries.
    if unsafe { pg_sys::process_shared_preload_libraries_in_progress } {
        backfill::registry::init_shared_memory();
        model::node_stats::init_shared_memory();
        backfill::worker::register_launcher();
        backfill::step_aside::install();
        distributed::fold::install();
    }
}
