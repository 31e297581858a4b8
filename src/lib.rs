//! pg_clip: CLIP embeddings inside PostgreSQL.
use pgrx::prelude::*;

::pgrx::pg_module_magic!(name, version);

pub mod error;
pub mod image;
