//! The two triggers `clip_auto_embed` installs on a table (sql/auto_embed.sql):
//!
//! * `clip_auto_embed_inserted()`, AFTER INSERT FOR EACH STATEMENT: asks for the worker to be woken at COMMIT.
//!   Nothing per row: a new row with a URL and no vector is pending by its own state, and the worker finds it
//!   through the table's partial index of pending rows. (A row trigger that queued each row cost bulk loads
//!   4 to 7 times a plain INSERT; see the README's benchmark.)
//! * `clip_auto_embed_url_changed(vector_column, key_column, version_column)`, BEFORE UPDATE OF the URL, when
//!   the URL changed (its WHEN clause): unless the same UPDATE wrote the vector too, clears the vector (and the
//!   model_version) in the row being written, so the old photo's vector never outlives the transaction, and
//!   asks for the wake-up. Whether the vector was written is
//!   decided here, on the bytes, not in the WHEN clause: `OLD.v IS DISTINCT FROM NEW.v` needs pgvector's `=`,
//!   which pg_dump's trigger definition cannot schema-qualify, so a restore (search_path empty) failed.
//!
//! Neither runs SQL, and neither switches user: the writer's privileges are all they use. The old photo's
//! failure record needs no deleting here: a record names the URL that failed (its SHA-256) and applies to
//! the row only while the row has that URL (sql/backfill.sql, clip_backfill_failures).

use pgrx::pg_sys;
use pgrx::prelude::*;
use std::ffi::CString;
use std::num::NonZeroUsize;

use super::registry;
use crate::error::PgClipError;

#[pg_trigger]
fn clip_auto_embed_inserted<'a>(
    _trigger: &'a PgTrigger<'a>,
) -> Result<Option<PgHeapTuple<'a, AllocatedByRust>>, std::convert::Infallible> {
    registry::wake_at_commit(false);
    Ok(None)
}

#[pg_trigger]
fn clip_auto_embed_url_changed<'a>(
    trigger: &'a PgTrigger<'a>,
) -> Result<Option<PgHeapTuple<'a, AllocatedByRust>>, std::convert::Infallible> {
    Ok(Some(clear_vector(trigger).unwrap_or_else(|e| e.raise("clip_auto_embed_url_changed"))))
}

fn clear_vector<'a>(trigger: &'a PgTrigger<'a>) -> Result<PgHeapTuple<'a, AllocatedByRust>, PgClipError> {
    // (The key column, the second argument, was for a failure record this trigger once deleted.)
    let args = arguments(trigger, 3)?;
    let (vector_column, version_column) = (&args[0], &args[2]);
    let data = trigger.trigger_data();
    let mut row = trigger
        .new()
        .ok_or_else(|| PgClipError::runtime("clip_auto_embed_url_changed", "fired without a new row"))?
        .into_owned();
    let vector = attribute_number(data.tg_relation, vector_column)?;
    // SAFETY: an UPDATE row trigger: tg_trigtuple is the old row, tg_newtuple the new one, both of the relation.
    if unsafe { value_changed(data.tg_relation, data.tg_trigtuple, data.tg_newtuple, vector) } {
        return Ok(row); // the UPDATE wrote URL and vector together: the writer's business
    }
    let version = match version_column.as_str() {
        "" => None,
        column => Some(attribute_number(data.tg_relation, column)?),
    };
    for attno in std::iter::once(vector).chain(version) {
        // SAFETY: setting a column to NULL needs no datum of its type; attno is a valid attribute number.
        unsafe { row.set_by_index_unchecked(attno, None) };
    }
    registry::wake_at_commit(false);
    Ok(row)
}

fn arguments(trigger: &PgTrigger<'_>, wanted: usize) -> Result<Vec<String>, PgClipError> {
    let args = trigger.extra_args().map_err(|e| PgClipError::runtime("pg_clip trigger", e))?;
    if args.len() != wanted {
        return Err(PgClipError::model_invalid(
            format!("trigger {}", trigger.name().unwrap_or("?")),
            format!("takes {wanted} arguments, has {}; run clip_auto_embed() again to remake it", args.len()),
        ));
    }
    Ok(args)
}

fn attribute_number(relation: pg_sys::Relation, column: &str) -> Result<NonZeroUsize, PgClipError> {
    let name = CString::new(column).map_err(|_| PgClipError::runtime("pg_clip trigger", "column name with NUL"))?;
    // SAFETY: relation is the trigger's open relation; SPI_fnumber only reads its tuple descriptor.
    let attno = unsafe { pg_sys::SPI_fnumber((*relation).rd_att, name.as_ptr()) };
    usize::try_from(attno).ok().and_then(NonZeroUsize::new).ok_or_else(|| PgClipError::ColumnMissing {
        column: column.to_string(),
        hint: "The column was renamed or dropped: run clip_auto_embed() again with its new name.".into(),
    })
}

/// Whether a varlena column (the vector) differs between two versions of a row: NULL against a value, or other
/// bytes once both are detoasted. An UPDATE that does not set the column keeps the very same datum.
///
/// # Safety
/// `old` and `new` must be valid heap tuples of `relation`, and the column of a varlena type.
unsafe fn value_changed(
    relation: pg_sys::Relation,
    old: pg_sys::HeapTuple,
    new: pg_sys::HeapTuple,
    attno: NonZeroUsize,
) -> bool {
    // SAFETY: per the caller; SPI_getbinval reads one attribute; pg_detoast_datum_packed returns the value itself
    // or a palloc'd detoasted copy, whose size and bytes are then read within its bounds.
    unsafe {
        let (mut old_null, mut new_null) = (false, false);
        let tupdesc = (*relation).rd_att;
        let a = pg_sys::SPI_getbinval(old, tupdesc, attno.get() as i32, &mut old_null);
        let b = pg_sys::SPI_getbinval(new, tupdesc, attno.get() as i32, &mut new_null);
        if old_null || new_null {
            return old_null != new_null;
        }
        if a == b {
            return false;
        }
        let bytes = |d: pg_sys::Datum| {
            let v = pg_sys::pg_detoast_datum_packed(d.cast_mut_ptr());
            std::slice::from_raw_parts(pgrx::vardata_any(v) as *const u8, pgrx::varsize_any_exhdr(v))
        };
        bytes(a) != bytes(b)
    }
}
