//! The two triggers `clip_auto_embed` installs on a table (sql/auto_embed.sql):
//!
//! * `clip_auto_embed_inserted()`, AFTER INSERT FOR EACH STATEMENT: asks for the worker to be woken at COMMIT.
//!   Nothing per row: a new row with a URL and no vector is pending by its own state, and the worker finds it
//!   through the table's partial index of pending rows. (A row trigger that queued each row cost bulk loads
//!   4 to 7 times a plain INSERT; see the README's benchmark.)
//! * `clip_auto_embed_url_changed(vector_column, key_column, version_column)`, BEFORE UPDATE OF the URL, when
//!   the URL changed (its WHEN clause): unless the same UPDATE wrote the vector too, clears the vector (and the
//!   model_version) in the row being written, so the old photo's vector never outlives the transaction,
//!   forgets the old photo's failure record, and asks for the wake-up. Whether the vector was written is
//!   decided here, on the bytes, not in the WHEN clause: `OLD.v IS DISTINCT FROM NEW.v` needs pgvector's `=`,
//!   which pg_dump's trigger definition cannot schema-qualify, so a restore (search_path empty) failed.
//!
//! The failure records belong to pg_clip, not to whoever writes the table: the one fixed statement here runs
//! as the bootstrap superuser (a local user-id switch, as a SECURITY DEFINER function would do), so an
//! application role needs no privilege on pg_clip's tables. No user code runs under that switch: the table has
//! no triggers of its own.

use pgrx::pg_sys;
use pgrx::prelude::*;
use pgrx::spi::OwnedPreparedStatement;
use std::cell::RefCell;
use std::ffi::{CStr, CString};
use std::num::NonZeroUsize;

use super::registry;
use crate::error::PgClipError;

/// The statement prepared once per backend (per pg_clip schema), reused by every row.
struct Statements {
    schema: pg_sys::Oid,
    forget_failure: OwnedPreparedStatement,
}

thread_local! {
    static STATEMENTS: RefCell<Option<Statements>> = const { RefCell::new(None) };
}

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
    let args = arguments(trigger, 3)?;
    let (vector_column, key_column, version_column) = (&args[0], &args[1], &args[2]);
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
    // SAFETY: tg_newtuple is the row being written (before our change, which did not touch the key).
    let key = unsafe { column_text(data.tg_relation, data.tg_newtuple, key_column) }?;
    if let Some(key) = key {
        forget_failure(trigger, &key)?;
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

/// A column's value as text (its type's output function), or None for NULL.
///
/// # Safety
/// `tuple` must be a valid heap tuple of `relation`.
unsafe fn column_text(
    relation: pg_sys::Relation,
    tuple: pg_sys::HeapTuple,
    column: &str,
) -> Result<Option<String>, PgClipError> {
    let attno = attribute_number(relation, column)?;
    // SAFETY: the caller guarantees tuple belongs to relation; SPI_getvalue pallocs the text or returns NULL.
    unsafe {
        let text = pg_sys::SPI_getvalue(tuple, (*relation).rd_att, attno.get() as i32);
        Ok((!text.is_null()).then(|| CStr::from_ptr(text).to_string_lossy().into_owned()))
    }
}

/// Deletes the failure record of (the trigger's table, key), as the bootstrap superuser: it was about the old
/// photo. (Without it, a permanent failure would keep the worker from ever trying the new one.)
fn forget_failure(trigger: &PgTrigger<'_>, key: &str) -> Result<(), PgClipError> {
    let relid = trigger.relid().map_err(|e| PgClipError::runtime("pg_clip trigger", e))?;
    // pg_clip's schema: where the trigger function lives (the extension's schema).
    // SAFETY: tgfoid is the OID of the function this trigger calls, which exists while it runs.
    let schema = unsafe { pg_sys::get_func_namespace(trigger.trigger().tgfoid) };
    let (mut saved_user, mut saved_context) = (pg_sys::Oid::INVALID, 0);
    // SAFETY: a local user-id switch around a fixed statement on pg_clip's own table; restored below, and by
    // the (sub)transaction abort if it raises.
    unsafe {
        pg_sys::GetUserIdAndSecContext(&mut saved_user, &mut saved_context);
        pg_sys::SetUserIdAndSecContext(
            pg_sys::Oid::from(pg_sys::BOOTSTRAP_SUPERUSERID),
            saved_context | pg_sys::SECURITY_LOCAL_USERID_CHANGE as i32,
        );
    }
    let result = Spi::connect_mut(|client| {
        STATEMENTS.with(|cell| {
            let mut cached = cell.borrow_mut();
            if cached.as_ref().is_none_or(|s| s.schema != schema) {
                *cached = Some(prepare(client, schema)?);
            }
            let statement = &cached.as_ref().expect("prepared above").forget_failure;
            client.update(statement, None, &[relid.into(), key.into()]).map(|_| ())
        })
    });
    // SAFETY: restores what was saved above.
    unsafe { pg_sys::SetUserIdAndSecContext(saved_user, saved_context) };
    result.map_err(|e| PgClipError::runtime("pg_clip trigger", e))
}

fn prepare(client: &mut pgrx::spi::SpiClient<'_>, schema: pg_sys::Oid) -> pgrx::spi::SpiResult<Statements> {
    // SAFETY: get_namespace_name returns a palloc'd copy (or NULL for a missing schema, not possible for the
    // schema of the running trigger function); quote_identifier returns its input or a palloc'd quoted copy.
    let schema_sql = unsafe {
        let name = pg_sys::get_namespace_name(schema);
        CStr::from_ptr(pg_sys::quote_identifier(name)).to_string_lossy().into_owned()
    };
    let sql = format!("DELETE FROM {schema_sql}.clip_backfill_failures WHERE relation = $1::regclass AND row_key = $2");
    let statement = client.prepare_mut(sql.as_str(), &[PgOid::from(pg_sys::OIDOID), PgOid::from(pg_sys::TEXTOID)])?;
    Ok(Statements { schema, forget_failure: statement.keep() })
}
