//! Embedding a table's rows from their photo URLs: the engine behind `CALL clip_backfill` and behind
//! automatic embedding, which share it (one implementation, two callers).
//!
//! * The engine's batch steps are SQL (sql/backfill.sql): claim rows, `clip_backfill_apply` (download, embed,
//!   write only where the row still wants that photo), `clip_backfill_record` (failures). The procedure
//!   `clip_backfill` walks a table's NULL vectors with them; the worker walks the auto-embed queue
//!   (sql/auto_embed.sql) with them.
//! * [`url_batch`]: the downloads and inference under `clip_embed_urls`, many URLs in flight.
//! * [`triggers`]: what `clip_auto_embed` installs on a table: changes into the queue.
//! * [`registry`]: the workers' slots in shared memory, and the wake-up at commit.
//! * [`worker`]: the launcher and the per-database workers.

pub mod registry;
pub mod triggers;
pub mod url_batch;
pub mod worker;
