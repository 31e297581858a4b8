//! What this node (the whole server: every backend, the auto-embed workers) has inferred since it started,
//! in shared memory while the library is preloaded. On Citus the tests and `make bench-citus` tell with it
//! which node ran the model: a backend's own counters (clip_model_info) do not see the shard queries and
//! backfill sessions that Citus opens on the nodes.
use pgrx::prelude::*;
use pgrx::{pg_sys, PgAtomic};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

// SAFETY: the name is pg_clip's own; nothing else allocates shared memory under it.
static NODE_INFERENCES: PgAtomic<AtomicU64> = unsafe { PgAtomic::new(c"pg_clip_node_inferences") };
/// Set in the postmaster (and so in every backend it forks) once the counter has shared memory; never in a
/// plain `cargo test` or a session that loaded the library itself.
static READY: AtomicBool = AtomicBool::new(false);

/// Reserves the counter. Called from _PG_init while the library is preloaded.
pub fn init_shared_memory() {
    pgrx::pg_shmem_init!(NODE_INFERENCES);
    READY.store(true, Ordering::Relaxed);
}

/// Counts `n` inferences of this backend on the node's counter (nothing without shared memory).
pub fn add(n: u64) {
    if READY.load(Ordering::Relaxed) {
        NODE_INFERENCES.get().fetch_add(n, Ordering::Relaxed);
    }
}

/// The node's count since the server started, or None when the library is not preloaded.
pub fn total() -> Option<u64> {
    READY.load(Ordering::Relaxed).then(|| NODE_INFERENCES.get().load(Ordering::Relaxed))
}
