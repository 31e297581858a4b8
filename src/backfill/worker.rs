//! The auto-embed background workers. Children of the postmaster: a crash here (a signal, an abort) would
//! restart every backend, so everything they do runs on the hardened paths the SQL functions use, inside
//! transactions whose ERRORs and Rust panics are caught, logged, and survived.
//!
//! * The launcher: one, registered at server start when the library is preloaded, started once recovery is
//!   over (never on a standby). It starts a worker for every database in turn; a worker whose database has
//!   no table to serve leaves at once. Then it sleeps, and starts again (after a delay) any worker that ended
//!   without leaving, if its database still exists. It stays so that after a crash of any backend, when the
//!   postmaster restarts everything, it comes back and brings the workers back with it.
//! * A worker per database, started by the launcher, or by the commit of a transaction that turned
//!   automatic embedding on or changed a row while no worker was running. It claims its database's slot
//!   in shared memory (a second worker for the same database leaves), loads the model once, and then:
//!   wait on its latch (set at commit by the triggers, see `registry`, or after pg_clip.auto_embed_naptime),
//!   and table by table queue the pending rows (a URL and no vector, found through the table's partial
//!   index) and embed what is due, a few batches each before the next table gets its turn; leave when no
//!   table is left. Each batch is one transaction: pick the next batch and claim it, embed the current one
//!   (as the table's owner: `as_owner`) while the next one downloads, settle the queue. A batch cut
//!   short (SIGTERM, an error) is rolled back whole and done again later.
//!
//! Signals: SIGTERM is Postgres's `die`, as in any backend: the next CHECK_FOR_INTERRUPTS (every 50 ms while
//! downloads run, between inference runs of a few images) ends the process, whose transaction aborts. SIGHUP
//! reloads the configuration between batches. Postmaster death ends the wait at once, and a batch in
//! progress at its next poll (see `sql_api`).

use pgrx::bgworkers::{BackgroundWorker, BackgroundWorkerBuilder, BgWorkerStartTime};
use pgrx::datum::DatumWithOid;
use pgrx::pg_sys::panic::CaughtError;
use pgrx::prelude::*;
use pgrx::{pg_sys, PgTryBuilder};
use std::collections::HashMap;
use std::ffi::CStr;
use std::panic::AssertUnwindSafe;
use std::time::{Duration, Instant};

use super::registry::{self, WorkerState};
use crate::error::sqlstate_text;
use crate::settings::{self, AutoEmbedFault, AutoEmbedSettings};

/// How often the launcher tries again to start a worker it could not (no free background worker slot).
const LAUNCHER_RETRY: Duration = Duration::from_secs(30);
/// Batches one table gets before the next table's turn.
const BATCHES_PER_TURN: usize = 8;
/// How long the launcher gives a database's worker to decide whether it stays.
const PROBE_TIMEOUT: Duration = Duration::from_secs(60);

pub fn register_launcher() {
    BackgroundWorkerBuilder::new("pg_clip launcher")
        .set_type("pg_clip launcher")
        .set_library("pg_clip")
        .set_function("pg_clip_launcher_main")
        .enable_spi_access()
        .set_start_time(BgWorkerStartTime::RecoveryFinished)
        .set_restart_time(Some(Duration::from_secs(10)))
        .load();
}

fn copy_name(target: &mut [std::ffi::c_char], text: &str) {
    let bytes = &text.as_bytes()[..text.len().min(target.len() - 1)];
    for (t, b) in target.iter_mut().zip(bytes) {
        *t = *b as std::ffi::c_char;
    }
    target[bytes.len()] = 0;
}

fn database_worker(database: pg_sys::Oid, notify: bool) -> pg_sys::BackgroundWorker {
    // SAFETY: BackgroundWorker is a plain C struct; all-zero is a valid start (empty strings, no flags).
    let mut worker: pg_sys::BackgroundWorker = unsafe { std::mem::zeroed() };
    copy_name(&mut worker.bgw_name, &format!("pg_clip auto-embed worker for database {}", database.to_u32()));
    copy_name(&mut worker.bgw_type, "pg_clip auto-embed");
    copy_name(&mut worker.bgw_library_name, "pg_clip");
    copy_name(&mut worker.bgw_function_name, "pg_clip_auto_embed_main");
    worker.bgw_flags = (pg_sys::BGWORKER_SHMEM_ACCESS | pg_sys::BGWORKER_BACKEND_DATABASE_CONNECTION) as i32;
    worker.bgw_start_time = pg_sys::BgWorkerStartTime::BgWorkerStart_RecoveryFinished;
    // Restarts are the launcher's (registry::due_restarts), which first checks that the database still exists.
    worker.bgw_restart_time = pg_sys::BGW_NEVER_RESTART;
    worker.bgw_main_arg = pg_sys::Datum::from(database.to_u32());
    // SAFETY: reading this process's pid.
    worker.bgw_notify_pid = if notify { unsafe { pg_sys::MyProcPid } } else { 0 };
    worker
}

/// Asks the postmaster to start `database`'s worker. Safe in a commit callback: no allocation, no ERROR
/// (the struct is valid; a full slot table only makes it return false).
pub fn start_database_worker(database: pg_sys::Oid) -> bool {
    let mut worker = database_worker(database, false);
    // SAFETY: a filled-in worker struct; no handle is wanted.
    unsafe { pg_sys::RegisterDynamicBackgroundWorker(&mut worker, std::ptr::null_mut()) }
}

// Postgres's own handlers, as C symbols (pg_sys's wrappers of them are Rust functions, which a signal
// handler must not be).
extern "C-unwind" {
    fn die(signal: std::ffi::c_int);
    fn SignalHandlerForConfigReload(signal: std::ffi::c_int);
}

fn install_signal_handlers() {
    // SAFETY: standard backend handlers, installed before signals are unblocked.
    unsafe {
        #[cfg(not(feature = "pg18"))]
        {
            pg_sys::pqsignal(pg_sys::SIGTERM as i32, Some(die));
            pg_sys::pqsignal(pg_sys::SIGHUP as i32, Some(SignalHandlerForConfigReload));
        }
        #[cfg(feature = "pg18")]
        {
            pg_sys::pqsignal_be(pg_sys::SIGTERM as i32, Some(die));
            pg_sys::pqsignal_be(pg_sys::SIGHUP as i32, Some(SignalHandlerForConfigReload));
        }
        pg_sys::BackgroundWorkerUnblockSignals();
    }
}

/// Sleeps on the process latch until it is set or `timeout` passes (None: no timeout); ends the process if
/// the postmaster dies; then handles SIGTERM (ends the process) and SIGHUP (reloads the configuration).
fn wait(timeout: Option<Duration>) {
    let mut events = pg_sys::WL_LATCH_SET | pg_sys::WL_EXIT_ON_PM_DEATH;
    if timeout.is_some() {
        events |= pg_sys::WL_TIMEOUT;
    }
    let ms = timeout.map_or(-1, |t| t.as_millis().min(i32::MAX as u128) as std::ffi::c_long);
    // SAFETY: MyLatch is this process's latch; the wait event is the generic extension one.
    unsafe {
        pg_sys::WaitLatch(pg_sys::MyLatch, events as i32, ms, pg_sys::PG_WAIT_EXTENSION);
        pg_sys::ResetLatch(pg_sys::MyLatch);
    }
    take_interrupts();
}

fn take_interrupts() {
    pgrx::check_for_interrupts!();
    // SAFETY: ConfigReloadPending is set by the SIGHUP handler; clearing it and reloading is what every
    // Postgres process does in its main loop.
    unsafe {
        if pg_sys::ConfigReloadPending != 0 {
            pg_sys::ConfigReloadPending = 0;
            pg_sys::ProcessConfigFile(pg_sys::GucContext::PGC_SIGHUP);
        }
    }
}

/// Runs `f` in its own transaction, committed if `f` returns. An ERROR or a panic inside, or at COMMIT,
/// rolls the transaction back and comes back as Err with its SQLSTATE and message: the worker goes on.
fn in_transaction<R>(what: &str, f: impl FnOnce() -> R) -> Result<R, Failure> {
    // SAFETY: the worker is between transactions here; this is how a background worker opens one.
    unsafe {
        pg_sys::SetCurrentStatementStartTimestamp();
        pg_sys::StartTransactionCommand();
        pg_sys::PushActiveSnapshot(pg_sys::GetTransactionSnapshot());
    }
    let f = AssertUnwindSafe(f);
    let result = PgTryBuilder::new(AssertUnwindSafe(move || {
        let value = (f.0)();
        // SAFETY: the snapshot pushed above; COMMIT inside the try, so that a failing commit is caught too.
        unsafe {
            pg_sys::PopActiveSnapshot();
            pg_sys::CommitTransactionCommand();
        }
        Ok(value)
    }))
    .catch_others(|caught| Err(Failure::from_caught(caught)))
    .execute();
    if result.is_err() {
        // SAFETY: the error was caught and its state copied and flushed by pgrx; aborting releases the
        // transaction's locks, claims, snapshots, memory, and restores the user id.
        unsafe { pg_sys::AbortCurrentTransaction() };
    }
    // SAFETY: reporting this process's statistics and activity, as every backend does between transactions.
    unsafe {
        pg_sys::pgstat_report_stat(false);
        pg_sys::pgstat_report_activity(pg_sys::BackendState::STATE_IDLE, std::ptr::null());
    }
    result.map_err(|mut failure: Failure| {
        failure.message = format!("{what}: {}", failure.message);
        failure
    })
}

fn report_activity(text: &str) {
    let text = std::ffi::CString::new(text.replace('\0', "")).unwrap_or_default();
    // SAFETY: pgstat copies the string.
    unsafe { pg_sys::pgstat_report_activity(pg_sys::BackendState::STATE_RUNNING, text.as_ptr()) };
}

/// An ERROR or a panic caught in a batch: what the logs, `clip_auto_embed_status.last_error` and the
/// failure records show.
#[derive(Debug, Clone)]
struct Failure {
    sqlstate: String,
    message: String,
}

impl Failure {
    fn from_caught(caught: CaughtError) -> Self {
        match caught {
            CaughtError::PostgresError(report) | CaughtError::ErrorReport(report) => Failure {
                sqlstate: sqlstate_text(report.sql_error_code()),
                message: match report.hint() {
                    Some(hint) => format!("{} (HINT: {hint})", report.message()),
                    None => report.message().to_string(),
                },
            },
            CaughtError::RustPanic { ereport, .. } => {
                Failure { sqlstate: "58000".into(), message: format!("internal error: {}", ereport.message()) }
            }
        }
    }

    /// Errors that say nothing about the rows of the batch (the model, the settings, privileges, resources,
    /// the server): the table waits and is tried again, and no row is charged for them.
    fn concerns_the_setup(&self) -> bool {
        ["58", "F0", "42", "55", "53", "08", "57", "XX"].iter().any(|class| self.sqlstate.starts_with(class))
            && !matches!(self.sqlstate.as_str(), "55P03" | "57014")
    }

    /// For a row whose batch failed on its own: whether the same row may succeed later.
    fn transient(&self) -> bool {
        self.sqlstate.starts_with("40") || matches!(self.sqlstate.as_str(), "55P03" | "57014")
    }
}

/// One table the worker serves, as read at the start of a round.
#[derive(Debug, Clone)]
struct Table {
    relation: pg_sys::Oid,
    name: String,
    url_column: String,
    vector_column: String,
    key_column: String,
    paused: bool,
    /// Seconds until the earliest retry that is not due yet.
    next_retry_in: Option<f64>,
    /// A shard of a Citus table (sql/distributed.sql): embedded only while Citus places it on this node, and
    /// each batch under the shard's metadata lock.
    shard: bool,
    /// False for a shard that Citus places on another node now (moving here, or moved away).
    served: bool,
}

impl Table {
    /// What tells one vector column kept fresh from another: a table moving to another model has two.
    fn state_key(&self) -> (u32, String) {
        (self.relation.to_u32(), self.vector_column.clone())
    }
}

#[derive(Debug, Clone)]
struct Entry {
    key: String,
    change_id: i64,
    url: String,
    replace: bool,
}

#[derive(Debug, Clone)]
struct Outcome {
    key: String,
    url: Option<String>,
    outcome: String,
    sqlstate: Option<String>,
    error: Option<String>,
    http_status: Option<i32>,
    transient: Option<bool>,
}

/// What the worker remembers of a table between rounds.
#[derive(Debug, Default)]
struct TableState {
    /// After an error about the setup: the table is left alone until then, with a doubling wait.
    wait_until: Option<Instant>,
    wait: Duration,
    /// After a batch failed as a whole for a reason that may be one row's: its keys, to be tried one by one.
    isolate: Vec<String>,
}

struct Worker {
    database: pg_sys::Oid,
    /// pg_clip's schema, quoted, for the SQL below.
    schema: String,
    /// Per vector column kept fresh: (relation, vector column).
    tables: HashMap<(u32, String), TableState>,
}

#[pg_guard]
#[no_mangle]
pub extern "C-unwind" fn pg_clip_launcher_main(_arg: pg_sys::Datum) {
    install_signal_handlers();
    BackgroundWorker::connect_worker_to_spi(None, None);
    registry::set_launcher();
    let mut pending = match in_transaction("listing databases", || {
        // SAFETY: inside a transaction; see connectable_databases.
        unsafe { connectable_databases() }
    }) {
        Ok(databases) => databases,
        Err(failure) => {
            pgrx::warning!("pg_clip launcher: {}", failure.message);
            Vec::new()
        }
    };
    loop {
        // Workers that ended without leaving: started again if their database is still there.
        let (due, next) = registry::due_restarts();
        if !due.is_empty() {
            // SAFETY: inside a transaction; see connectable_databases.
            match in_transaction("listing databases", || unsafe { connectable_databases() }) {
                Ok(existing) => {
                    for database in due {
                        if existing.contains(&database) {
                            registry::restarting(database);
                            pending.push(database);
                        } else {
                            registry::forget(database);
                        }
                    }
                }
                Err(failure) => pgrx::warning!("pg_clip launcher: {}", failure.message),
            }
        }
        pending.retain(|database| !probe(*database));
        pending.dedup();
        // Databases whose worker could not be started (no free background worker slot) are tried again.
        let retry = (!pending.is_empty()).then_some(LAUNCHER_RETRY);
        wait(match (retry, next) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        });
    }
}

/// The databases a worker could connect to (not templates, connections allowed), read straight from
/// pg_database: the launcher is connected to no database, so it has no SQL to do it with.
///
/// # Safety
/// Must run inside a transaction.
unsafe fn connectable_databases() -> Vec<pg_sys::Oid> {
    let mut databases = Vec::new();
    // SAFETY: the catalog scan autovacuum's launcher does (get_database_list): pg_database opened with
    // AccessShareLock, each tuple's fixed-size part read through its header offset.
    unsafe {
        let relation = pg_sys::table_open(pg_sys::DatabaseRelationId, pg_sys::AccessShareLock as i32);
        let scan = pg_sys::table_beginscan_catalog(relation, 0, std::ptr::null_mut());
        loop {
            let tuple = pg_sys::heap_getnext(scan, pg_sys::ScanDirection::ForwardScanDirection);
            if tuple.is_null() {
                break;
            }
            let header = (*tuple).t_data;
            let row = (header as *const u8).add((*header).t_hoff as usize) as *const pg_sys::FormData_pg_database;
            if (*row).datallowconn && !(*row).datistemplate {
                databases.push((*row).oid);
            }
        }
        pg_sys::table_endscan(scan);
        pg_sys::table_close(relation, pg_sys::AccessShareLock as i32);
    }
    databases
}

/// Starts `database`'s worker and waits until it either serves the database or has left. False if it
/// could not be started (try again later).
fn probe(database: pg_sys::Oid) -> bool {
    if registry::worker_info(database).pid.is_some() {
        return true;
    }
    let mut worker = database_worker(database, true);
    let mut handle: *mut pg_sys::BackgroundWorkerHandle = std::ptr::null_mut();
    // SAFETY: a filled-in worker struct; the handle is palloc'd by Postgres in the current context.
    if !unsafe { pg_sys::RegisterDynamicBackgroundWorker(&mut worker, &mut handle) } {
        pgrx::warning!(
            "pg_clip launcher: cannot start the auto-embed worker of database {}: no free background worker slot",
            database.to_u32()
        );
        return false;
    }
    let mut pid: pg_sys::pid_t = 0;
    // SAFETY: the handle just returned; this process is the worker's notify pid.
    if unsafe { pg_sys::WaitForBackgroundWorkerStartup(handle, &mut pid) } != pg_sys::BgwHandleStatus::BGWH_STARTED {
        return true;
    }
    let started = Instant::now();
    while started.elapsed() < PROBE_TIMEOUT {
        if registry::worker_info(database).pid == Some(pid) {
            break;
        }
        let mut current: pg_sys::pid_t = 0;
        // SAFETY: as above.
        if unsafe { pg_sys::GetBackgroundWorkerPid(handle, &mut current) } == pg_sys::BgwHandleStatus::BGWH_STOPPED {
            break;
        }
        wait(Some(Duration::from_millis(50)));
    }
    true
}

#[pg_guard]
#[no_mangle]
pub extern "C-unwind" fn pg_clip_auto_embed_main(arg: pg_sys::Datum) {
    let database = pg_sys::Oid::from(arg.value() as u32);
    install_signal_handlers();
    BackgroundWorker::connect_worker_to_spi_by_oid(Some(database), None);
    pin_search_path();
    // SAFETY: a static C string; pgstat copies it.
    unsafe { pg_sys::pgstat_report_appname(c"pg_clip auto-embed".as_ptr()) };

    // pg_clip installed here, at a version with automatic embedding, and a table to serve? Else leave.
    let schema = match in_transaction("starting", || {
        Spi::get_one::<String>(
            "SELECT pg_catalog.quote_ident(n.nspname) FROM pg_catalog.pg_extension e \
             JOIN pg_catalog.pg_namespace n ON n.oid = e.extnamespace \
             WHERE e.extname = 'pg_clip' \
               AND pg_catalog.to_regclass(pg_catalog.quote_ident(n.nspname) || '.clip_auto_embed_tables') IS NOT NULL",
        )
    }) {
        Ok(Ok(Some(schema))) => schema,
        Ok(_) => leave(),
        Err(failure) => {
            pgrx::warning!("pg_clip auto-embed: {}", failure.message);
            leave()
        }
    };
    let mut worker = Worker { database, schema, tables: HashMap::new() };
    if worker.has_work() == Some(false) || !registry::claim(database) {
        leave();
    }
    // SAFETY: a plain C callback run when the process exits, however it exits (FATAL from SIGTERM included).
    unsafe { pg_sys::before_shmem_exit(Some(on_exit), pg_sys::Datum::from(database.to_u32())) };
    pgrx::log!("pg_clip auto-embed: worker started for database {}", database_name(database));
    worker.run()
}

/// The worker connects as the bootstrap superuser, with the database's and the role's settings: a database
/// owner's `ALTER DATABASE ... SET search_path` would otherwise choose where the worker's own SQL finds its
/// functions and operators. For the whole session: pg_catalog, then this worker's own temporary schema, and
/// nothing else; pg_clip's objects are named with their schema, and statements on users' tables run in
/// `as_owner`, which restricts the search_path again in a nest level of its own and undoes whatever the
/// user's code set.
fn pin_search_path() {
    // SAFETY: a session-level SET of a string setting, as `SET search_path` would make it; the value is
    // checked by PostgreSQL's own check hook (a list of names, no catalog access).
    unsafe {
        pg_sys::set_config_option(
            c"search_path".as_ptr(),
            c"pg_catalog, pg_temp".as_ptr(),
            pg_sys::GucContext::PGC_SUSET,
            pg_sys::GucSource::PGC_S_SESSION,
            pg_sys::GucAction::GUC_ACTION_SET,
            true,
            0,
            false,
        );
    }
    // On a Citus node, Citus hides shards from pg_class in ordinary sessions: the worker must see the shards it
    // serves (its look for dropped tables reads pg_class). Outside Citus this only sets an unused placeholder.
    // SAFETY: as above, a boolean setting.
    unsafe {
        pg_sys::set_config_option(
            c"citus.override_table_visibility".as_ptr(),
            c"off".as_ptr(),
            pg_sys::GucContext::PGC_SUSET,
            pg_sys::GucSource::PGC_S_SESSION,
            pg_sys::GucAction::GUC_ACTION_SET,
            true,
            0,
            false,
        );
    }
}

/// However the worker ends (FATAL from SIGTERM included): its slot is released for the launcher to restart,
/// unless the worker already left it (a clean exit).
#[pg_guard]
unsafe extern "C-unwind" fn on_exit(_code: std::ffi::c_int, arg: pg_sys::Datum) {
    registry::release(pg_sys::Oid::from(arg.value() as u32), false);
}

// proc_exit never returns, but PostgreSQL 18's bindings say `-> ()` (its header marks it with C11 _Noreturn, which
// bindgen does not carry over): hence the unreachable!, dead code for 15 to 17.
#[allow(unreachable_code)]
fn leave() -> ! {
    // SAFETY: a clean exit: the postmaster forgets a dynamic worker that exits with 0.
    unsafe { pg_sys::proc_exit(0) };
    unreachable!("proc_exit returned")
}

fn database_name(database: pg_sys::Oid) -> String {
    in_transaction("", || {
        // SAFETY: get_database_name reads the catalog inside a transaction; NULL if the database is gone.
        unsafe {
            let name = pg_sys::get_database_name(database);
            if name.is_null() {
                format!("{}", database.to_u32())
            } else {
                CStr::from_ptr(name).to_string_lossy().into_owned()
            }
        }
    })
    .unwrap_or_default()
}

enum Round {
    /// Work remains: go again at once.
    Busy,
    /// Nothing due; sleep at most this long.
    Idle(Duration),
    /// No table left to serve.
    Empty,
}

impl Worker {
    fn run(&mut self) -> ! {
        let mut wait_after_error = Duration::ZERO;
        loop {
            take_interrupts();
            let settings = settings::auto_embed();
            match self.round(&settings) {
                Ok(Round::Busy) => wait_after_error = Duration::ZERO,
                Ok(Round::Idle(timeout)) => {
                    wait_after_error = Duration::ZERO;
                    registry::set_state(self.database, WorkerState::Idle);
                    wait(Some(timeout));
                }
                Ok(Round::Empty) => {
                    // Give the slot up, then look once more: a clip_auto_embed that committed meanwhile saw
                    // this worker alive and only set its latch.
                    registry::release(self.database, true);
                    if self.has_work() != Some(false) && registry::claim(self.database) {
                        continue;
                    }
                    pgrx::log!("pg_clip auto-embed: no table left to embed; worker exits");
                    leave();
                }
                Err(failure) => {
                    wait_after_error = (wait_after_error * 2).clamp(Duration::from_secs(1), Duration::from_secs(60));
                    pgrx::warning!("pg_clip auto-embed: {} (SQLSTATE {})", failure.message, failure.sqlstate);
                    registry::set_state(self.database, WorkerState::Backoff);
                    wait(Some(wait_after_error));
                }
            }
        }
    }

    fn sql(&self, text: &str) -> String {
        text.replace("@extschema@", &self.schema)
    }

    /// Whether this database has tables to serve, or is a Citus database, where shards that need serving can
    /// arrive at any time (a move, a split, clip_auto_embed on the coordinator committed in two phases) and
    /// the worker stays to find them (`clip_auto_embed_discover` at every round).
    fn has_work(&self) -> Option<bool> {
        in_transaction("counting tables", || {
            // (The table may be gone with the extension: then there is nothing to count.)
            match Spi::get_one::<bool>(
                &self.sql("SELECT pg_catalog.to_regclass('@extschema@.clip_auto_embed_tables') IS NOT NULL"),
            ) {
                Ok(Some(true)) => Spi::get_one::<bool>(&self.sql(
                    "SELECT EXISTS (SELECT 1 FROM @extschema@.clip_auto_embed_tables) \
                         OR pg_catalog.to_regclass('pg_catalog.pg_dist_shard') IS NOT NULL",
                )),
                other => other.map(|_| Some(false)),
            }
        })
        .ok()
        .and_then(|r| r.ok().flatten())
    }

    fn round(&mut self, settings: &AutoEmbedSettings) -> Result<Round, Failure> {
        let (tables, citus) = in_transaction("reading clip_auto_embed_tables", || self.load_tables())?
            .map_err(|e| Failure { sqlstate: "58000".into(), message: e.to_string() })?;
        if tables.is_empty() {
            return Ok(if citus { Round::Idle(settings.naptime) } else { Round::Empty });
        }
        self.tables.retain(|key, _| tables.iter().any(|t| t.state_key() == *key));
        let mut busy = false;
        let mut next = settings.naptime;
        for table in tables.iter().filter(|t| !t.paused && t.served) {
            let state = self.tables.entry(table.state_key()).or_default();
            if let Some(until) = state.wait_until {
                let now = Instant::now();
                if until > now {
                    next = next.min(until - now);
                    continue;
                }
                state.wait_until = None;
            }
            // The pending rows into the queue: new rows, changed URLs, rows written with the triggers off.
            registry::set_state(self.database, WorkerState::Sweeping);
            let found = in_transaction("looking for pending rows", || {
                Spi::get_one_with_args::<i64>(
                    &self.sql("SELECT @extschema@.clip_auto_embed_sweep($1::regclass, $2::name)"),
                    &[table.relation.into(), table.vector_column.as_str().into()],
                )
            });
            if let Err(failure) = found {
                self.table_failed(table, failure);
                continue;
            }
            registry::set_state(self.database, WorkerState::Embedding);
            match self.drain(table, settings) {
                Ok(more) => busy |= more,
                Err(failure) => self.table_failed(table, failure),
            }
            if let Some(retry_in) = table.next_retry_in {
                next = next.min(Duration::from_secs_f64(retry_in.max(0.05)));
            }
        }
        Ok(if busy { Round::Busy } else { Round::Idle(next) })
    }

    /// The tables to serve, and whether this is a Citus database. On Citus: this node's shards of
    /// auto-embedded tables registered first (`clip_auto_embed_discover`), and the distributed tables
    /// themselves (registered on the coordinator) left to the nodes that hold their shards.
    fn load_tables(&self) -> Result<(Vec<Table>, bool), pgrx::spi::SpiError> {
        Spi::connect_mut(|client| {
            // pg_clip dropped (or re-created in another schema) since this worker started: nothing to serve
            // here; a commit or the launcher starts a worker that knows the new schema.
            let present = client
                .select(
                    &self.sql("SELECT pg_catalog.to_regclass('@extschema@.clip_auto_embed_tables') IS NOT NULL"),
                    None,
                    &[],
                )?
                .first()
                .get_one::<bool>()?;
            if present != Some(true) {
                return Ok((Vec::new(), false));
            }
            let citus = client
                .update(
                    &self.sql(
                        "SELECT pg_catalog.to_regclass('pg_catalog.pg_dist_shard') IS NOT NULL \
                            AND @extschema@.clip_auto_embed_discover() IS NOT NULL",
                    ),
                    None,
                    &[],
                )?
                .first()
                .get_one::<bool>()?
                == Some(true);
            // Tables dropped since they were turned on: forget them (their triggers went with them).
            client.update(
                &self.sql(
                    "WITH gone AS (DELETE FROM @extschema@.clip_auto_embed_tables c \
                                   WHERE NOT EXISTS (SELECT 1 FROM pg_catalog.pg_class r WHERE r.oid = c.relation) \
                                   RETURNING c.relation), \
                          q AS (DELETE FROM @extschema@.clip_auto_embed_queue q USING gone WHERE q.relation = gone.relation), \
                          f AS (DELETE FROM @extschema@.clip_backfill_failures f USING gone WHERE f.relation = gone.relation) \
                     DELETE FROM @extschema@.clip_auto_embed_log l USING gone WHERE l.relation = gone.relation",
                ),
                None,
                &[],
            )?;
            let rows = client.select(
                &self.sql(
                    "SELECT c.relation::oid, c.relation::text, c.url_column::text, c.vector_column::text, \
                            c.key_column::text, c.paused, \
                            (SELECT extract(epoch FROM min(q.not_before) - clock_timestamp())::float8 \
                               FROM @extschema@.clip_auto_embed_queue q \
                              WHERE q.relation = c.relation AND q.vector_column = c.vector_column \
                                AND q.not_before > clock_timestamp()), \
                            s.served \
                     FROM @extschema@.clip_auto_embed_tables c JOIN pg_catalog.pg_class r ON r.oid = c.relation \
                     CROSS JOIN LATERAL (SELECT @extschema@.clip_shard_served_here(c.relation) AS served) s \
                     WHERE NOT @extschema@.clip_is_distributed(c.relation) \
                     ORDER BY c.relation, c.vector_column",
                ),
                None,
                &[],
            )?;
            let mut tables = Vec::new();
            for row in rows {
                tables.push(Table {
                    relation: row.get(1)?.unwrap_or(pg_sys::Oid::INVALID),
                    name: row.get(2)?.unwrap_or_default(),
                    url_column: row.get(3)?.unwrap_or_default(),
                    vector_column: row.get(4)?.unwrap_or_default(),
                    key_column: row.get(5)?.unwrap_or_default(),
                    paused: row.get(6)?.unwrap_or(false),
                    next_retry_in: row.get(7)?,
                    shard: row.get::<bool>(8)?.is_some(),
                    served: row.get::<bool>(8)?.unwrap_or(true),
                });
            }
            Ok((tables, citus))
        })
    }

    /// An error that stopped a table's work: logged, shown in clip_auto_embed_status, and the table waits
    /// (1 s, doubling to 5 min) before its next try, unless the batch can be retried row by row.
    fn table_failed(&mut self, table: &Table, failure: Failure) {
        pgrx::warning!("pg_clip auto-embed: {}: {} (SQLSTATE {})", table.name, failure.message, failure.sqlstate);
        let recorded = in_transaction("recording an error", || {
            Spi::run_with_args(
                &self.sql(
                    "UPDATE @extschema@.clip_auto_embed_tables SET last_error = $2, last_error_at = clock_timestamp() \
                     WHERE relation = $1::regclass AND vector_column = $3::name",
                ),
                &[
                    table.relation.into(),
                    format!("{} (SQLSTATE {})", failure.message, failure.sqlstate).into(),
                    table.vector_column.as_str().into(),
                ],
            )
        });
        if let Err(e) = recorded {
            pgrx::warning!("pg_clip auto-embed: {}", e.message);
        }
        let state = self.tables.entry(table.state_key()).or_default();
        state.wait = (state.wait * 2).clamp(Duration::from_secs(1), Duration::from_secs(300));
        state.wait_until = Some(Instant::now() + state.wait);
    }

    /// Embeds what is due in `table`, up to BATCHES_PER_TURN batches. Ok(true) if more is due.
    fn drain(&mut self, table: &Table, settings: &AutoEmbedSettings) -> Result<bool, Failure> {
        let mut current: Vec<Entry> = Vec::new();
        for turn in 0..BATCHES_PER_TURN {
            take_interrupts();
            let isolate = self.tables.get(&table.state_key()).map(|s| s.isolate.clone()).unwrap_or_default();
            let batch_size = if isolate.is_empty() { settings.batch_size } else { 1 };
            let started = Instant::now();
            let mut picked = current.clone();
            let result = in_transaction("embedding a batch", || {
                self.batch(table, settings, turn == 0, &mut picked, &isolate, batch_size, started)
            });
            match result {
                Ok(Ok(next)) => {
                    let state = self.tables.entry(table.state_key()).or_default();
                    state.wait = Duration::ZERO;
                    state.isolate.retain(|key| !picked.iter().any(|e| &e.key == key));
                    // Nothing picked for next: drained (rows queued meanwhile set the latch: the next round).
                    if next.is_empty() {
                        return Ok(false);
                    }
                    current = next;
                }
                Ok(Err(e)) => return Err(Failure { sqlstate: "58000".into(), message: e.to_string() }),
                Err(failure) => return self.batch_failed(table, settings, &picked, failure).map(|_| true),
            }
        }
        Ok(true)
    }

    /// One batch, in the caller's transaction: `current` is the batch to embed (picked in the previous
    /// transaction, or now when `first`); returns the next batch, picked and claimed now, whose downloads
    /// start while this one is embedded.
    #[allow(clippy::too_many_arguments)]
    fn batch(
        &self,
        table: &Table,
        settings: &AutoEmbedSettings,
        first: bool,
        current: &mut Vec<Entry>,
        isolate: &[String],
        batch_size: usize,
        started: Instant,
    ) -> Result<Vec<Entry>, pgrx::spi::SpiError> {
        match settings.fault {
            AutoEmbedFault::None => {}
            AutoEmbedFault::Error => pgrx::error!("pg_clip: fault injected by pg_clip.debug_auto_embed_fault"),
            AutoEmbedFault::Panic => panic!("fault injected by pg_clip.debug_auto_embed_fault"),
        }
        // A shard: this batch holds the shard's metadata lock, so that a move's cutover waits for it (and then
        // carries its writes over), and goes ahead only if Citus still places the shard here.
        if table.shard
            && Spi::get_one_with_args::<bool>(
                &self.sql("SELECT @extschema@.clip_shard_served_here($1::regclass, true)"),
                &[table.relation.into()],
            )? == Some(false)
        {
            return Ok(Vec::new());
        }
        // The column's own model (recorded by clip_auto_embed), for this transaction, whatever the worker's
        // pg_clip.model says: two columns of a table may belong to two models.
        Spi::run_with_args(
            &self.sql("SELECT @extschema@.clip_use_vector_column_model($1::regclass, $2::name)"),
            &[table.relation.into(), table.vector_column.as_str().into()],
        )?;
        let version = Spi::get_one::<String>(&self.sql("SELECT @extschema@.clip_backfill_model_version()"))?;
        let only = (!isolate.is_empty()).then(|| isolate.to_vec());
        if first {
            *current = self.pick(table, &[], batch_size, &version, &only)?;
        }
        if current.is_empty() {
            return Ok(Vec::new());
        }
        let exclude: Vec<String> = current.iter().map(|e| e.key.clone()).collect();
        let next = self.pick(table, &exclude, batch_size, &version, &only)?;
        report_activity(&format!("embedding {} rows of {}", current.len(), table.name));
        // The table is read and written as its owner inside clip_backfill_apply (src/backfill/as_owner.rs).
        let outcomes = self.apply(table, current, &next, &version)?;
        self.settle(table, settings, current, &outcomes, started)?;
        Ok(next)
    }

    fn pick(
        &self,
        table: &Table,
        exclude: &[String],
        batch_size: usize,
        version: &Option<String>,
        only: &Option<Vec<String>>,
    ) -> Result<Vec<Entry>, pgrx::spi::SpiError> {
        Spi::connect_mut(|client| {
            let rows = client.update(
                &self.sql(
                    "SELECT row_key, change_id, url, replace \
                     FROM @extschema@.clip_auto_embed_pick($1::regclass, $2, $3, $4, $5, $6::name)",
                ),
                None,
                &[
                    table.relation.into(),
                    exclude.to_vec().into(),
                    (batch_size as i32).into(),
                    version.clone().into(),
                    only.clone().into(),
                    table.vector_column.as_str().into(),
                ],
            )?;
            let mut entries = Vec::new();
            for row in rows {
                entries.push(Entry {
                    key: row.get(1)?.unwrap_or_default(),
                    change_id: row.get(2)?.unwrap_or_default(),
                    url: row.get(3)?.unwrap_or_default(),
                    replace: row.get(4)?.unwrap_or(false),
                });
            }
            Ok(entries)
        })
    }

    fn apply(
        &self,
        table: &Table,
        current: &[Entry],
        next: &[Entry],
        version: &Option<String>,
    ) -> Result<Vec<Outcome>, pgrx::spi::SpiError> {
        let args: Vec<DatumWithOid> = vec![
            table.relation.into(),
            table.url_column.as_str().into(),
            table.vector_column.as_str().into(),
            table.key_column.as_str().into(),
            current.iter().map(|e| e.key.clone()).collect::<Vec<_>>().into(),
            current.iter().map(|e| e.url.clone()).collect::<Vec<_>>().into(),
            next.iter().map(|e| e.url.clone()).collect::<Vec<_>>().into(),
            version.clone().into(),
            current.iter().map(|e| e.replace).collect::<Vec<_>>().into(),
        ];
        Spi::connect_mut(|client| {
            let rows = client.update(
                &self.sql(
                    "SELECT row_key, url, outcome, sqlstate, error, http_status, transient \
                     FROM @extschema@.clip_backfill_apply($1::regclass, $2::name, $3::name, $4::name, $5, $6, \
                                                          $7, NULL, $8, $9, skip_locked => true)",
                ),
                None,
                &args,
            )?;
            let mut outcomes = Vec::new();
            for row in rows {
                outcomes.push(Outcome {
                    key: row.get(1)?.unwrap_or_default(),
                    url: row.get(2)?,
                    outcome: row.get(3)?.unwrap_or_default(),
                    sqlstate: row.get(4)?,
                    error: row.get(5)?,
                    http_status: row.get(6)?,
                    transient: row.get(7)?,
                });
            }
            Ok(outcomes)
        })
    }

    fn settle(
        &self,
        table: &Table,
        settings: &AutoEmbedSettings,
        current: &[Entry],
        outcomes: &[Outcome],
        started: Instant,
    ) -> Result<(), pgrx::spi::SpiError> {
        let change_of = |key: &str| current.iter().find(|e| e.key == key).map_or(0, |e| e.change_id);
        let url_of =
            |o: &Outcome| o.url.clone().or_else(|| current.iter().find(|e| e.key == o.key).map(|e| e.url.clone()));
        let args: Vec<DatumWithOid> = vec![
            table.relation.into(),
            outcomes.iter().map(|o| o.key.clone()).collect::<Vec<_>>().into(),
            outcomes.iter().map(|o| change_of(&o.key)).collect::<Vec<_>>().into(),
            outcomes.iter().map(url_of).collect::<Vec<_>>().into(),
            outcomes.iter().map(|o| o.outcome.clone()).collect::<Vec<_>>().into(),
            outcomes.iter().map(|o| o.sqlstate.clone()).collect::<Vec<_>>().into(),
            outcomes.iter().map(|o| o.error.clone()).collect::<Vec<_>>().into(),
            outcomes.iter().map(|o| o.http_status).collect::<Vec<_>>().into(),
            outcomes.iter().map(|o| o.transient).collect::<Vec<_>>().into(),
            settings.max_attempts.into(),
            format!("{} milliseconds", settings.retry_delay.as_millis()).into(),
            started.elapsed().as_secs_f64().into(),
        ];
        Spi::connect_mut(|client| {
            client.update(
                &self.sql(
                    "SELECT * FROM @extschema@.clip_auto_embed_settle($1::regclass, $2, $3, $4, $5, $6, $7, $8, $9, \
                                                                      $10, $11::interval, $12)",
                ),
                None,
                &args,
            )?;
            Ok(())
        })
    }

    /// A batch that failed as a whole. About the setup (no model, no privilege...): the table waits. Else it
    /// may be one row's doing (a trigger of the table that raises, a constraint): the batch is tried again
    /// row by row, and a row that fails alone is charged with the error.
    fn batch_failed(
        &mut self,
        table: &Table,
        settings: &AutoEmbedSettings,
        picked: &[Entry],
        failure: Failure,
    ) -> Result<(), Failure> {
        if failure.concerns_the_setup() || picked.is_empty() {
            return Err(failure);
        }
        pgrx::warning!(
            "pg_clip auto-embed: {}: a batch of {} rows failed: {} (SQLSTATE {})",
            table.name,
            picked.len(),
            failure.message,
            failure.sqlstate
        );
        let state = self.tables.entry(table.state_key()).or_default();
        if picked.len() > 1 {
            state.isolate = picked.iter().map(|e| e.key.clone()).collect();
            return Ok(());
        }
        // One row, alone, failed: charge it, and move past it.
        state.isolate.retain(|key| key != &picked[0].key);
        let entry = &picked[0];
        let outcome = Outcome {
            key: entry.key.clone(),
            url: Some(entry.url.clone()),
            outcome: "failed".into(),
            sqlstate: Some(failure.sqlstate.clone()),
            error: Some(format!("pg_clip auto-embed: {}", failure.message)),
            http_status: None,
            transient: Some(failure.transient()),
        };
        in_transaction("recording a failed row", || {
            self.settle(table, settings, std::slice::from_ref(entry), &[outcome], Instant::now())
        })
        .and_then(|r| r.map_err(|e| Failure { sqlstate: "58000".into(), message: e.to_string() }))
    }
}
