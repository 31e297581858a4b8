//! The auto-embed worker steps aside for the commands that need a database to themselves.
//!
//! `DROP DATABASE`, `ALTER DATABASE ... RENAME TO`, `ALTER DATABASE ... SET TABLESPACE` and `CREATE DATABASE
//! ... TEMPLATE` fail with "database is being accessed by other users" while any other process is connected
//! to the database. PostgreSQL asks autovacuum's workers to go in that case, but a background worker of an
//! extension stays connected, so a plain DROP DATABASE of a database served by a worker failed until the user
//! stopped automatic embedding or added WITH (FORCE). A ProcessUtility hook (installed when the library is
//! preloaded, the only case in which there is a worker) does for our worker what PostgreSQL does for
//! autovacuum's: before such a command runs, it holds the database in the registry (nobody starts its worker:
//! not the launcher, not a commit, not a starting worker), sends its worker SIGTERM (the batch in progress
//! rolls back; nothing is lost, see `worker`) and lets PostgreSQL's own wait (up to 5 s) see it go. The hold
//! outlasts the command by a few seconds: if the command failed (another session was connected), the launcher
//! starts the worker again then; if the database is gone, the launcher forgets it.
//!
//! The hook reads only the statement's parse tree and the catalog (the database's OID by name); it runs no SQL
//! and evaluates nothing of the user's.

use pgrx::prelude::*;
use pgrx::{pg_sys, PgTryBuilder};
use std::ffi::CStr;
use std::time::{Duration, Instant};

use super::registry;

/// How long after the command the database stays held (so that the launcher's restart, which checks that
/// the database still exists, comes after the command's transaction has committed or failed).
const HOLD_AFTER: Duration = Duration::from_secs(5);
/// How long the command itself may take while the worker stays away: DROP DATABASE of a large database
/// removes its files within the command; a longer command is only held for this long.
const HOLD_DURING: Duration = Duration::from_secs(600);

static mut PREVIOUS: pg_sys::ProcessUtility_hook_type = None;

/// Installs the hook. Called from _PG_init while the library is preloaded.
pub fn install() {
    // SAFETY: _PG_init runs in the postmaster before any backend starts; the previous hook is kept and called.
    unsafe {
        PREVIOUS = pg_sys::ProcessUtility_hook;
        pg_sys::ProcessUtility_hook = Some(process_utility);
    }
}

#[pg_guard]
#[allow(clippy::too_many_arguments)]
unsafe extern "C-unwind" fn process_utility(
    statement: *mut pg_sys::PlannedStmt,
    query: *const std::ffi::c_char,
    read_only_tree: bool,
    context: pg_sys::ProcessUtilityContext::Type,
    params: pg_sys::ParamListInfo,
    environment: *mut pg_sys::QueryEnvironment,
    destination: *mut pg_sys::DestReceiver,
    completion: *mut pg_sys::QueryCompletion,
) {
    // SAFETY: the PlannedStmt of a utility command, as PostgreSQL passes it to every hook.
    let database = unsafe { database_needed_alone((*statement).utilityStmt) };
    if let Some(database) = database {
        ask_worker_to_go(database);
    }
    // The same hook serves Citus: pg_clip's URL trigger made on a shard (a move, a split, clip_auto_embed on
    // the coordinator) starts this database's worker, which finds the shard (crate::distributed).
    // SAFETY: as above.
    if unsafe { crate::distributed::creates_auto_embed_trigger((*statement).utilityStmt) } {
        registry::wake_at_commit(true);
    }
    let run = || {
        // SAFETY: the arguments as received; the previous hook, or PostgreSQL's own, runs the command.
        unsafe {
            match PREVIOUS {
                Some(previous) => {
                    previous(statement, query, read_only_tree, context, params, environment, destination, completion)
                }
                None => pg_sys::standard_ProcessUtility(
                    statement,
                    query,
                    read_only_tree,
                    context,
                    params,
                    environment,
                    destination,
                    completion,
                ),
            }
        }
    };
    match database {
        None => run(),
        Some(database) => PgTryBuilder::new(run)
            .finally(|| {
                registry::hold(database, registry::now_ms() + HOLD_AFTER.as_millis() as i64);
            })
            .execute(),
    }
}

/// The database a command needs to itself, if it is one of those commands and the database exists.
///
/// # Safety
/// `node` must be a parse tree node (or null).
unsafe fn database_needed_alone(node: *mut pg_sys::Node) -> Option<pg_sys::Oid> {
    if node.is_null() {
        return None;
    }
    // SAFETY: each cast follows the node's tag; names are the parser's NUL-terminated strings.
    let name: *const std::ffi::c_char = unsafe {
        match (*node).type_ {
            pg_sys::NodeTag::T_DropdbStmt => (*(node as *mut pg_sys::DropdbStmt)).dbname,
            pg_sys::NodeTag::T_RenameStmt => {
                let rename = node as *mut pg_sys::RenameStmt;
                if (*rename).renameType != pg_sys::ObjectType::OBJECT_DATABASE {
                    return None;
                }
                (*rename).subname
            }
            pg_sys::NodeTag::T_AlterDatabaseStmt => {
                let alter = node as *mut pg_sys::AlterDatabaseStmt;
                if !has_option((*alter).options, c"tablespace") {
                    return None;
                }
                (*alter).dbname
            }
            pg_sys::NodeTag::T_CreatedbStmt => {
                option_string((*(node as *mut pg_sys::CreatedbStmt)).options, c"template")?
            }
            _ => return None,
        }
    };
    if name.is_null() {
        return None;
    }
    // SAFETY: get_database_oid reads pg_database (we are in a transaction: utility commands run in one);
    // missing_ok, so a name that does not exist gives InvalidOid and PostgreSQL reports it as it would.
    let oid = unsafe { pg_sys::get_database_oid(name, true) };
    // SAFETY: MyDatabaseId is this backend's database; a command on it fails on its own anyway.
    (oid != pg_sys::Oid::INVALID && oid != unsafe { pg_sys::MyDatabaseId }).then_some(oid)
}

/// Whether a list of DefElem options has one named `name`.
///
/// # Safety
/// `options` must be a List of DefElem (or null).
unsafe fn has_option(options: *mut pg_sys::List, name: &CStr) -> bool {
    // SAFETY: per the caller.
    unsafe { find_option(options, name).is_some() }
}

/// The string value of the DefElem option `name`, if the list has it.
///
/// # Safety
/// `options` must be a List of DefElem (or null).
unsafe fn option_string(options: *mut pg_sys::List, name: &CStr) -> Option<*const std::ffi::c_char> {
    // SAFETY: per the caller; defGetString returns the option's value as a C string (or raises, for an
    // option without a value, which CREATE DATABASE would raise for itself).
    unsafe { find_option(options, name).map(|option| pg_sys::defGetString(option) as *const std::ffi::c_char) }
}

/// # Safety
/// `options` must be a List of DefElem (or null).
unsafe fn find_option(options: *mut pg_sys::List, name: &CStr) -> Option<*mut pg_sys::DefElem> {
    // SAFETY: per the caller; PgList only reads the list's cells.
    let list = unsafe { pgrx::PgList::<pg_sys::DefElem>::from_pg(options) };
    let found = list.iter_ptr().find(|&option| {
        // SAFETY: a DefElem's defname is its NUL-terminated option name.
        !option.is_null() && unsafe { CStr::from_ptr((*option).defname) } == name
    });
    found
}

/// Holds the database and asks its worker to go; waits (interruptibly) for it to be gone, at most as long as
/// PostgreSQL itself would wait for other sessions, so that the command finds the database free.
fn ask_worker_to_go(database: pg_sys::Oid) {
    let Some(pid) = registry::hold(database, registry::now_ms() + HOLD_DURING.as_millis() as i64) else {
        return;
    };
    // SAFETY: the pid is our worker's, read from the registry and alive just now; SIGTERM is how PostgreSQL
    // itself stops a backend (die: the transaction aborts, the process exits).
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let started = Instant::now();
    while registry::serves(database, pid) && started.elapsed() < Duration::from_secs(5) {
        pgrx::check_for_interrupts!();
        std::thread::sleep(Duration::from_millis(10));
    }
}
