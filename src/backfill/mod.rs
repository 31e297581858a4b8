//! Embedding a table's rows from their photo URLs: the engine behind `CALL clip_backfill` and behind
//! automatic embedding, which share it (one implementation, two callers).
//!
//! * The engine's batch steps: pick and claim rows, `clip_backfill_apply` (download, embed, write only where
//!   the row still wants that photo), `clip_backfill_record` (failures). The procedure `clip_backfill`
//!   (sql/backfill.sql) walks a table's NULL vectors with them; the worker walks the auto-embed queue
//!   (sql/auto_embed.sql) with them.
//! * [`as_owner`]: every statement on a user's table, run as the table's owner in a security-restricted
//!   operation, whoever calls (the worker connects as a superuser); the SQL in sql/ is bookkeeping on
//!   pg_clip's own tables only. The one place where pg_clip changes the user id.
//! * [`url_batch`]: the downloads and inference under `clip_embed_urls`, many URLs in flight.
//! * [`triggers`]: what `clip_auto_embed` installs on a table: changes into the queue.
//! * [`registry`]: the workers' slots in shared memory, and the wake-up at commit.
//! * [`worker`]: the launcher and the per-database workers.
//! * [`step_aside`]: the worker leaves a database that DROP DATABASE (and the like) needs to itself.

pub mod as_owner;
pub mod registry;
pub mod step_aside;
pub mod triggers;
pub mod url_batch;
pub mod worker;
