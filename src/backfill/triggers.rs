//! The two row triggers `clip_auto_embed` installs on a table (see sql/auto_embed.sql for their WHEN
//! clauses, which do the filtering, so that an unrelated change never reaches this code):
//!
//! * `clip_auto_embed_inserted(key_column)`, AFTER INSERT, for rows with a URL and no vector: queues the row.
//! * `clip_auto_embed_url_changed(vector_column, key_column, url_column, version_column)`, BEFORE UPDATE OF
//!   the URL, when the URL changed and the vector was not written with it: clears the vector (and the
//!   model_version) in the row being written, forgets the old photo's failure, and queues the row unless the
//!   URL was cleared.
//!
//! Both ask for the worker to be woken when the transaction commits. The queue and the failure records
//! belong to pg_clip, not to whoever writes the table: the few fixed statements here run as the bootstrap
//! superuser (a local user-id switch, as a SECURITY DEFINER function would do), so an application role
//! needs no privileges on pg_clip's tables. No user code runs under that switch: those tables have no
//! triggers of their own.

use pgrx::prelude::*;
use pgrx::spi::OwnedPreparedStatement;
use pgrx::pg_sys;
use std::cell::RefCell;
use std::ffi::{CStr, CString};
use std::num::NonZeroUsize;

use super::registry;
use crate::error::PgClipError;

/// Statements prepared once per backend (per pg_clip schema), reused by every row.
struct Statements {
    schema: pg_sys::Oid,
    enqueue: OwnedPreparedStatement,
    dequeue: OwnedPreparedStatement,
    forget_failure: OwnedPreparedStatement,
}

thread_local! {
    static STATEMENTS: RefCell<Option<Statements>> = const { RefCell::new(None) };
}

#[derive(Clone, Copy)]
enum Action {
    Enqueue,
    Dequeue,
    ForgetFailure,
}

#[pg_trigger]
fn clip_auto_embed_inserted<'a>(
    trigger: &'a PgTrigger<'a>,
) -> Result<Option<PgHeapTuple<'a, AllocatedByRust>>, std::convert::Infallible> {
    queue_inserted(trigger).unwrap_or_else(|e| e.raise("clip_auto_embed_inserted"));
    Ok(None)
}

fn queue_inserted(trigger: &PgTrigger<'_>) -> Result<(), PgClipError> {
    let args = arguments(trigger, 1)?;
    let data = trigger.trigger_data();
    // SAFETY: a row-level INSERT trigger: tg_trigtuple is the inserted row, described by the relation's
    // tuple descriptor.
    let key = unsafe { column_text(data.tg_relation, data.tg_trigtuple, &args[0]) }?;
    if let Some(key) = key {
        run(trigger, Action::Enqueue, &key)?;
        registry::wake_at_commit(false);
    }
    Ok(())
}

#[pg_trigger]
fn clip_auto_embed_url_changed<'a>(
    trigger: &'a PgTrigger<'a>,
) -> Result<Option<PgHeapTuple<'a, AllocatedByRust>>, std::convert::Infallible> {
    Ok(Some(clear_and_queue(trigger).unwrap_or_else(|e| e.raise("clip_auto_embed_url_changed"))))
}

fn clear_and_queue<'a>(trigger: &'a PgTrigger<'a>) -> Result<PgHeapTuple<'a, AllocatedByRust>, PgClipError> {
    let args = arguments(trigger, 4)?;
    let (vector_column, key_column, url_column, version_column) = (&args[0], &args[1], &args[2], &args[3]);
    let data = trigger.trigger_data();
    let mut row = trigger
        .new()
        .ok_or_else(|| PgClipError::runtime("clip_auto_embed_url_changed", "fired without a new row"))?
        .into_owned();
    for column in [vector_column.as_str(), version_column.as_str()].into_iter().filter(|c| !c.is_empty()) {
        let attno = attribute_number(data.tg_relation, column)?;
        // SAFETY: setting a column to NULL needs no datum of its type; attno is a valid attribute number.
        unsafe { row.set_by_index_unchecked(attno, None) };
    }
    // SAFETY: tg_newtuple is the row being written (before our change, which touched neither key nor URL).
    let key = unsafe { column_text(data.tg_relation, data.tg_newtuple, key_column) }?;
    // SAFETY: as above.
    let url = unsafe { column_text(data.tg_relation, data.tg_newtuple, url_column) }?;
    if let Some(key) = key {
        run(trigger, Action::ForgetFailure, &key)?;
        run(trigger, if url.is_some() { Action::Enqueue } else { Action::Dequeue }, &key)?;
        registry::wake_at_commit(false);
    }
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

/// Runs one of the bookkeeping statements for (the trigger's table, key), as the bootstrap superuser.
fn run(trigger: &PgTrigger<'_>, action: Action, key: &str) -> Result<(), PgClipError> {
    let relid = trigger.relid().map_err(|e| PgClipError::runtime("pg_clip trigger", e))?;
    // pg_clip's schema: where the trigger function lives (the extension's schema).
    // SAFETY: tgfoid is the OID of the function this trigger calls, which exists while it runs.
    let schema = unsafe { pg_sys::get_func_namespace(trigger.trigger().tgfoid) };
    let (mut saved_user, mut saved_context) = (pg_sys::Oid::INVALID, 0);
    // SAFETY: a local user-id switch around fixed statements on pg_clip's own tables; restored below, and
    // by the (sub)transaction abort if one of them raises.
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
            let statements = cached.as_ref().expect("prepared above");
            let statement = match action {
                Action::Enqueue => &statements.enqueue,
                Action::Dequeue => &statements.dequeue,
                Action::ForgetFailure => &statements.forget_failure,
            };
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
    let args = [PgOid::from(pg_sys::OIDOID), PgOid::from(pg_sys::TEXTOID)];
    let keep = |sql: String| client.prepare_mut(sql.as_str(), &args).map(|s| s.keep());
    // A row changed again before it was embedded keeps its place in the queue (queued_at) but takes a new
    // change_id, which tells the worker that what it may be fetching is no longer current.
    Ok(Statements {
        schema,
        enqueue: keep(format!(
            "INSERT INTO {schema_sql}.clip_auto_embed_queue AS q (relation, row_key) VALUES ($1::regclass, $2) \
             ON CONFLICT (relation, row_key) DO UPDATE \
             SET change_id = nextval('{schema_sql}.clip_auto_embed_change_seq'), replace = false, not_before = NULL"
        ))?,
        dequeue: keep(format!(
            "DELETE FROM {schema_sql}.clip_auto_embed_queue WHERE relation = $1::regclass AND row_key = $2"
        ))?,
        forget_failure: keep(format!(
            "DELETE FROM {schema_sql}.clip_backfill_failures WHERE relation = $1::regclass AND row_key = $2"
        ))?,
    })
}
