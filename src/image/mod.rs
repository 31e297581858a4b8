//! Image decoding and CLIP preprocessing (pure Rust, no Postgres).
