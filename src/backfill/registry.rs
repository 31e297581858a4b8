//! Which database has an auto-embed worker, and how a committing transaction wakes it.
//!
//! A small table in shared memory (so it needs `shared_preload_libraries = 'pg_clip'`, which the worker
//! needs anyway): one slot per database with automatic embedding, holding its worker's pid and latch and
//! what the worker is doing. The triggers and `clip_auto_embed` only ask for a wake-up; the wake-up itself
//! happens at COMMIT (a transaction callback), when the rows it is about are visible to the worker. If the
//! database has no live worker then, the committing backend asks the postmaster to start one.
//!
//! The commit callback runs after the commit is durable, where an ERROR would be a PANIC: it takes an
//! LWLock, sets a latch or registers a dynamic background worker, nothing that can fail short of a bug,
//! and a Rust panic there is caught.
//!
//! A worker that leaves because its database has nothing to serve frees its slot. One that ends otherwise
//! (SIGTERM, an error) leaves its slot marked with the time it went, and wakes the launcher, which starts it
//! again after a delay if the database still exists. (The postmaster's own restart of background workers is
//! not used: a worker whose database was dropped would be restarted every few seconds forever, each time
//! failing to connect, and hold background worker slots the other databases need.)

use pgrx::lwlock::PgLwLock;
use pgrx::pg_guard;
use pgrx::pg_sys;
use pgrx::shmem::PGRXSharedMemory;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// Databases served at once. A database beyond this still gets a worker, but without wake-ups: it then
/// finds changes by looking every pg_clip.auto_embed_naptime.
pub const MAX_DATABASES: usize = 64;

/// How long a backend that found no live worker waits before asking the postmaster for another one: a
/// worker asked for a moment ago is on its way (forking and connecting take milliseconds to seconds).
const START_AGAIN_AFTER_MS: i64 = 10_000;

/// Wait before the launcher starts again a worker that ended without leaving (terminated, an error): 5 s,
/// doubling for each one in a row that lived less than a minute, up to 5 min.
const RESTART_DELAY_MS: i64 = 5_000;
const RESTART_DELAY_MAX_MS: i64 = 300_000;

/// What a worker is doing, as `clip_auto_embed_status.worker_state` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum WorkerState {
    Starting = 1,
    Idle = 2,
    Embedding = 3,
    Sweeping = 4,
    /// Waiting after an error before trying again.
    Backoff = 5,
}

impl WorkerState {
    fn from_u8(value: u8) -> Option<Self> {
        [Self::Starting, Self::Idle, Self::Embedding, Self::Sweeping, Self::Backoff]
            .into_iter()
            .find(|s| *s as u8 == value)
    }

    pub fn name(self) -> &'static str {
        match self {
            WorkerState::Starting => "starting",
            WorkerState::Idle => "idle",
            WorkerState::Embedding => "embedding",
            WorkerState::Sweeping => "sweeping",
            WorkerState::Backoff => "backoff after an error",
        }
    }
}

#[derive(Debug, Clone, Copy, Default)]
#[repr(C)]
pub struct Slot {
    /// The database's OID; 0 for a free slot.
    database: u32,
    /// The live worker's pid, 0 when there is none.
    pid: i32,
    /// The worker's process latch (`&MyProc->procLatch`: in shared memory, so valid in every backend).
    latch: usize,
    state: u8,
    /// Milliseconds since the epoch: when a backend last asked the postmaster to start this worker.
    start_requested_ms: i64,
    /// When the live worker started.
    started_ms: i64,
    /// When the last worker ended without leaving (0: it left, or none ended): the launcher starts another.
    ended_ms: i64,
    /// Workers in a row that ended within a minute of starting (the restart delay doubles with each).
    quick_ends: u32,
    /// Until then no worker serves the database (0: none held): a command that needs the database to itself
    /// (DROP DATABASE, see `step_aside`) asked the worker to go, and nobody starts it again meanwhile.
    held_until_ms: i64,
}

#[derive(Debug, Clone, Copy)]
#[repr(C)]
pub struct Registry {
    slots: [Slot; MAX_DATABASES],
    /// The launcher's process latch, set when a worker ends so that it can start another.
    launcher_latch: usize,
}

impl Default for Registry {
    fn default() -> Self {
        Registry { slots: [Slot::default(); MAX_DATABASES], launcher_latch: 0 }
    }
}

// SAFETY: Registry is plain old data (integers only, no pointers into process memory: the latch is an
// address in shared memory, the same in every backend), so it may live in shared memory.
unsafe impl PGRXSharedMemory for Registry {}

// SAFETY: the name is a static C string; the lock is created by pg_shmem_init! in _PG_init while
// shared_preload_libraries are loaded, before any backend can use it.
static REGISTRY: PgLwLock<Registry> = unsafe { PgLwLock::new(c"pg_clip_auto_embed") };

/// Whether the library was loaded by shared_preload_libraries, so that the registry exists. Set in the
/// postmaster and inherited by every backend it forks.
static PRELOADED: AtomicBool = AtomicBool::new(false);

/// Reserves the registry's shared memory. Called from _PG_init, only while shared_preload_libraries are
/// being loaded.
pub fn init_shared_memory() {
    pgrx::pg_shmem_init!(REGISTRY = Registry::default());
    PRELOADED.store(true, Ordering::Relaxed);
}

pub fn preloaded() -> bool {
    PRELOADED.load(Ordering::Relaxed)
}

pub fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

impl Registry {
    fn slot_of(&mut self, database: u32) -> Option<&mut Slot> {
        self.slots.iter_mut().find(|s| s.database == database)
    }

    /// The database's slot, or a free one made its own: never used, or left by a worker long gone.
    fn slot_for(&mut self, database: u32) -> Option<&mut Slot> {
        if let Some(i) = self.slots.iter().position(|s| s.database == database) {
            return Some(&mut self.slots[i]);
        }
        let now = now_ms();
        let free = self
            .slots
            .iter()
            .position(|s| s.database == 0 || (s.pid == 0 && now - s.start_requested_ms > 10 * START_AGAIN_AFTER_MS))?;
        let slot = &mut self.slots[free];
        *slot = Slot { database, ..Slot::default() };
        Some(slot)
    }
}

/// What a backend sees of its database's worker (clip_auto_embed_worker()).
#[derive(Debug, Clone, Default)]
pub struct WorkerInfo {
    pub pid: Option<i32>,
    pub state: Option<&'static str>,
    pub started_ms: Option<i64>,
}

pub fn worker_info(database: pg_sys::Oid) -> WorkerInfo {
    if !preloaded() {
        return WorkerInfo::default();
    }
    let registry = REGISTRY.share();
    match registry.slots.iter().find(|s| s.database == database.to_u32() && s.pid != 0) {
        Some(slot) => WorkerInfo {
            pid: Some(slot.pid),
            state: WorkerState::from_u8(slot.state).map(WorkerState::name),
            started_ms: Some(slot.started_ms),
        },
        None => WorkerInfo::default(),
    }
}

/// Claims the database's slot for the calling worker process. Returns false if another live worker
/// already serves the database (two were started at once): the caller then leaves.
pub fn claim(database: pg_sys::Oid) -> bool {
    let mut registry = REGISTRY.exclusive();
    let Some(slot) = registry.slot_for(database.to_u32()) else {
        pgrx::warning!(
            "pg_clip: more than {MAX_DATABASES} databases embed automatically; this one's worker polls instead of being woken"
        );
        return true;
    };
    // SAFETY: reading the process-global pid and latch pointer of this process; MyLatch points to this
    // backend's PGPROC latch in shared memory once the worker is connected.
    let (me, latch) = unsafe { (pg_sys::MyProcPid, pg_sys::MyLatch as usize) };
    if slot.pid != 0 && slot.pid != me && process_alive(slot.pid) {
        return false;
    }
    if slot.held_until_ms > now_ms() {
        return false; // the database is being dropped (or renamed, moved, copied): see step_aside
    }
    slot.pid = me;
    slot.latch = latch;
    slot.state = WorkerState::Starting as u8;
    slot.started_ms = now_ms();
    slot.start_requested_ms = 0;
    slot.ended_ms = 0;
    true
}

/// Gives the slot up, only if the calling worker holds it. `left`: the worker leaves because its database has
/// nothing to serve (the slot is freed); otherwise it ended (terminated, an error) and the launcher is woken to
/// start another after a delay.
pub fn release(database: pg_sys::Oid, left: bool) {
    if !preloaded() {
        return;
    }
    let mut registry = REGISTRY.exclusive();
    // SAFETY: reading this process's pid.
    let me = unsafe { pg_sys::MyProcPid };
    let launcher = registry.launcher_latch;
    if let Some(slot) = registry.slot_of(database.to_u32()).filter(|s| s.pid == me) {
        if left {
            *slot = Slot::default();
            return;
        }
        let now = now_ms();
        slot.quick_ends = if now - slot.started_ms < 60_000 { slot.quick_ends.saturating_add(1) } else { 0 };
        slot.pid = 0;
        slot.latch = 0;
        slot.state = 0;
        slot.ended_ms = now;
        // The next commit that wants a worker starts one at once.
        slot.start_requested_ms = 0;
        if launcher != 0 {
            // SAFETY: the launcher's PGPROC latch, in shared memory (see set_launcher).
            unsafe { pg_sys::SetLatch(launcher as *mut pg_sys::Latch) };
        }
    }
}

/// The launcher registers its latch, to be woken when a worker ends.
pub fn set_launcher() {
    // SAFETY: MyLatch is this process's PGPROC latch once connected (shared memory).
    REGISTRY.exclusive().launcher_latch = unsafe { pg_sys::MyLatch as usize };
}

/// Databases whose worker ended without leaving and is due to be started again, and how long until the next
/// one is due (None if none is waiting).
pub fn due_restarts() -> (Vec<pg_sys::Oid>, Option<std::time::Duration>) {
    let registry = REGISTRY.share();
    let now = now_ms();
    let (mut due, mut next) = (Vec::new(), None::<i64>);
    for slot in registry.slots.iter().filter(|s| s.database != 0 && s.pid == 0 && s.ended_ms != 0) {
        let delay = (RESTART_DELAY_MS << slot.quick_ends.min(6)).min(RESTART_DELAY_MAX_MS);
        let at = (slot.ended_ms + delay).max(slot.held_until_ms);
        if at <= now {
            due.push(pg_sys::Oid::from(slot.database));
        } else {
            next = Some(next.map_or(at - now, |n: i64| n.min(at - now)));
        }
    }
    (due, next.map(|ms| std::time::Duration::from_millis(ms as u64)))
}

/// A command needs `database` to itself (DROP DATABASE and the like): no worker may serve it until
/// `until_ms` (the launcher, a commit and a starting worker all respect the hold). Returns the live worker's
/// pid, which the caller asks to go.
pub fn hold(database: pg_sys::Oid, until_ms: i64) -> Option<i32> {
    if !preloaded() {
        return None;
    }
    let mut registry = REGISTRY.exclusive();
    let launcher = registry.launcher_latch;
    let slot = registry.slot_for(database.to_u32())?;
    slot.held_until_ms = until_ms;
    let pid = (slot.pid != 0 && process_alive(slot.pid)).then_some(slot.pid);
    if launcher != 0 {
        // SAFETY: the launcher's PGPROC latch, in shared memory: it recomputes when to restart the worker (a
        // shortened hold must not leave it asleep until the longer one ends).
        unsafe { pg_sys::SetLatch(launcher as *mut pg_sys::Latch) };
    }
    pid
}

/// Whether `pid` is still the live worker of `database`.
pub fn serves(database: pg_sys::Oid, pid: i32) -> bool {
    preloaded()
        && REGISTRY.share().slots.iter().any(|s| s.database == database.to_u32() && s.pid == pid)
        && process_alive(pid)
}

/// The launcher starts a worker for `database` (again): the slot is no longer waiting for a restart.
pub fn restarting(database: pg_sys::Oid) {
    if let Some(slot) = REGISTRY.exclusive().slot_of(database.to_u32()) {
        slot.ended_ms = 0;
        slot.start_requested_ms = now_ms();
    }
}

/// The database is gone (dropped): its slot is freed.
pub fn forget(database: pg_sys::Oid) {
    if let Some(slot) = REGISTRY.exclusive().slot_of(database.to_u32()) {
        *slot = Slot::default();
    }
}

pub fn set_state(database: pg_sys::Oid, state: WorkerState) {
    let mut registry = REGISTRY.exclusive();
    // SAFETY: reading this process's pid.
    let me = unsafe { pg_sys::MyProcPid };
    if let Some(slot) = registry.slot_of(database.to_u32()).filter(|s| s.pid == me) {
        slot.state = state as u8;
    }
}

fn process_alive(pid: i32) -> bool {
    // SAFETY: signal 0 only checks that the process exists; nothing is sent.
    unsafe { libc::kill(pid, 0) == 0 }
}

// What this backend's current transaction asks for at COMMIT.
const WAKE: u8 = 1;
const START: u8 = 2;
static AT_COMMIT: AtomicU8 = AtomicU8::new(0);
static CALLBACK_REGISTERED: AtomicBool = AtomicBool::new(false);

/// Asks for this database's worker to be woken when the current transaction commits (the trigger's rows
/// are visible then), and started if it is not running: always when `start_worker`, else if nobody asked
/// for one recently. Nothing happens if the transaction aborts. Does nothing without the registry (the
/// library not preloaded); `clip_auto_embed` refuses to start in that case.
pub fn wake_at_commit(start_worker: bool) {
    if !preloaded() {
        return;
    }
    if !CALLBACK_REGISTERED.swap(true, Ordering::Relaxed) {
        // SAFETY: registers a plain C callback for the life of this backend; no argument is passed.
        unsafe { pg_sys::RegisterXactCallback(Some(on_transaction_end), std::ptr::null_mut()) };
    }
    AT_COMMIT.fetch_or(WAKE | if start_worker { START } else { 0 }, Ordering::Relaxed);
}

#[pg_guard]
unsafe extern "C-unwind" fn on_transaction_end(event: pg_sys::XactEvent::Type, _arg: *mut std::ffi::c_void) {
    use pg_sys::XactEvent::*;
    match event {
        XACT_EVENT_COMMIT => {
            let wanted = AT_COMMIT.swap(0, Ordering::Relaxed);
            if wanted != 0 {
                // Never let a panic out of here: after the commit, an ERROR is a PANIC.
                let _ = std::panic::catch_unwind(|| wake_or_start(wanted & START != 0));
            }
        }
        // A prepared transaction commits later, maybe in another backend; the worker's poll finds its rows. A
        // start asked for is done now (Citus prepares the shards' side of clip_auto_embed on the coordinator,
        // and a move's: the worker of a Citus database stays and finds them once they commit).
        XACT_EVENT_PREPARE => {
            let wanted = AT_COMMIT.swap(0, Ordering::Relaxed);
            if wanted & START != 0 {
                let _ = std::panic::catch_unwind(|| wake_or_start(true));
            }
        }
        XACT_EVENT_ABORT | XACT_EVENT_PARALLEL_ABORT => {
            AT_COMMIT.store(0, Ordering::Relaxed);
        }
        _ => {}
    }
}

fn wake_or_start(start_requested: bool) {
    // SAFETY: MyDatabaseId is set for the life of a connected backend.
    let database = unsafe { pg_sys::MyDatabaseId };
    let start = {
        let mut registry = REGISTRY.exclusive();
        let Some(slot) = registry.slot_for(database.to_u32()) else { return };
        if slot.pid != 0 && slot.latch != 0 && process_alive(slot.pid) {
            // SAFETY: the latch is the worker's PGPROC latch, in shared memory; setting a latch whose owner
            // has gone is a harmless spurious wake-up of whoever owns that PGPROC now.
            unsafe { pg_sys::SetLatch(slot.latch as *mut pg_sys::Latch) };
            false
        } else if slot.held_until_ms > now_ms() {
            false
        } else {
            let now = now_ms();
            let due = start_requested || now - slot.start_requested_ms > START_AGAIN_AFTER_MS;
            if due {
                slot.start_requested_ms = now;
            }
            due
        }
    };
    if start {
        super::worker::start_database_worker(database);
    }
}
