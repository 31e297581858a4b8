//! pg_clip on Citus, the distributed engine of PostgreSQL (README, "Scaling out with Citus").
//!
//! * [`fold`]: a search on a distributed table computes its query vector once, in the planner, before Citus
//!   sends the query to the shards as a constant.
//! * [`creates_auto_embed_trigger`]: the utility hook (`backfill::step_aside`) starts a node's worker when a
//!   shard gets pg_clip's URL trigger.
//!
//! The rest is SQL (sql/distributed.sql): the backfill of a distributed table run on the nodes that hold its
//! shards, automatic embedding by each node's worker of the shards it holds, and views over every node.

use pgrx::pg_sys;
use std::ffi::CStr;

pub mod fold;

/// The name clip_auto_embed gives the URL trigger (sql/auto_embed.sql). Citus names a shard's copy
/// `zz_clip_auto_embed_url_<shard id>` (its relay_event_utility.c appends the shard id to trigger names).
const URL_TRIGGER: &[u8] = b"zz_clip_auto_embed_url";

/// Whether a trigger name is pg_clip's URL trigger on a table or on a Citus shard of one.
fn is_url_trigger_name(name: &[u8]) -> bool {
    match name.strip_prefix(URL_TRIGGER) {
        Some([]) => true,
        Some([b'_', shard_id @ ..]) => !shard_id.is_empty() && shard_id.iter().all(u8::is_ascii_digit),
        _ => false,
    }
}

/// Whether a utility statement creates pg_clip's URL trigger on a table: then the table may be a new shard
/// of an auto-embedded table, for this node's worker to find (`clip_auto_embed_discover` checks the rest:
/// the trigger's function, and that the table is a shard).
///
/// # Safety
/// `node` must be a parse tree node (or null).
pub unsafe fn creates_auto_embed_trigger(node: *mut pg_sys::Node) -> bool {
    // SAFETY: the cast follows the node's tag; trigname is the parser's NUL-terminated string.
    unsafe {
        if node.is_null() || (*node).type_ != pg_sys::NodeTag::T_CreateTrigStmt {
            return false;
        }
        let name = (*(node as *mut pg_sys::CreateTrigStmt)).trigname;
        !name.is_null() && is_url_trigger_name(CStr::from_ptr(name).to_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::is_url_trigger_name;

    #[test]
    fn the_url_trigger_and_its_shard_copies_are_recognised() {
        assert!(is_url_trigger_name(b"zz_clip_auto_embed_url"));
        assert!(is_url_trigger_name(b"zz_clip_auto_embed_url_102008"));
        assert!(!is_url_trigger_name(b"zz_clip_auto_embed_url_"));
        assert!(!is_url_trigger_name(b"zz_clip_auto_embed_url_x1"));
        assert!(!is_url_trigger_name(b"zz_clip_auto_embed_urls"));
        assert!(!is_url_trigger_name(b"zz_clip_auto_embed_insert_102008"));
    }
}
