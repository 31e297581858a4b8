//! Prepared model files: a tower's graph optimized once by ONNX Runtime, with its pre-packed weights saved
//! to an external data file that every later backend memory-maps, so all backends share one copy of the
//! weights through the page cache instead of each holding ~350 MB of private pre-packed copies.
//!
//! Layout: `<cache_dir>/<model_version>-<tower>-<key>/` with `model.onnx`, `model.onnx.data` and
//! `prepared.json` (what it was made from, and the BLAKE3 and size of both files). Every name is short
//! whatever the model version (at most [`MAX_RELATIVE_PATH`] bytes below the cache directory: the version is
//! cut to [`VERSION_CHARS`] characters, the key alone tells slots apart), because a cache directory inside
//! the data directory is streamed by pg_basebackup as tar, whose names stop at 99 bytes. The key covers the
//! source graph's SHA-256, the ONNX Runtime version and the CPU's SIMD features, so a file made by another
//! runtime or on another CPU is never even looked at. A directory is written under a temporary name and
//! renamed into place only when complete and fsynced; a backend that dies mid-way leaves only a temporary
//! directory nobody trusts. A prepared directory whose files do not match its `prepared.json` (truncated,
//! altered) is removed and built again.
//!
//! One preparer per slot: `<cache_dir>/<slot name>.lock` is flock()ed by the process that prepares the
//! slot, so that when a connection pool sends its first calls on many backends at once, one prepares
//! (~300 MB of heap and a few seconds of CPU) and the others wait, then map what it made, instead of each
//! preparing a copy of its own and throwing it away. The flock, not the file's existence, is the lock: the
//! kernel releases it when its holder closes the file or dies however it dies, so a lock file left behind
//! is harmless. It lives beside the slots, on the same file system, and needs no shared memory (which only
//! a preloaded library could have). Waiting is a poll (50 ms) that calls back into the caller between
//! tries, so that query cancel, statement_timeout and SIGTERM end a wait.
#![forbid(unsafe_code)]

use serde::{Deserialize, Serialize};
use std::fs::{File, TryLockError};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use super::checksum::ChecksumMemo;
use crate::error::{PgClipError, Result};

pub const GRAPH_FILE: &str = "model.onnx";
pub const DATA_FILE: &str = "model.onnx.data";
const RECORD_FILE: &str = "prepared.json";
const FORMAT: u32 = 1;
const STALE_TEMPORARY: Duration = Duration::from_secs(3600);
/// How much of the model version a slot's name keeps (for people; the key identifies the slot).
pub const VERSION_CHARS: usize = 28;
/// The longest path pg_clip writes below a cache directory (a slot's data file, a temporary's data file, a
/// lock file), whatever the model version: the default cache directory's own name plus this stays within
/// tar's 99 bytes, and so does any directory of up to `99 - 1 - MAX_RELATIVE_PATH` bytes below the data
/// directory (tested).
pub const MAX_RELATIVE_PATH: usize = 81;
/// How often a waiting backend tries the lock again and checks for interrupts: the bound on how late a
/// cancel is honoured, and on how long a waiter idles after the preparer is done.
const LOCK_POLL: Duration = Duration::from_millis(50);

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PreparedRecord {
    pub format: u32,
    pub source_sha256: String,
    pub onnxruntime_version: String,
    pub cpu_features: String,
    pub graph_blake3: String,
    pub graph_bytes: u64,
    pub data_blake3: String,
    pub data_bytes: u64,
}

/// Where a tower's prepared files live, and what they must have been made from.
#[derive(Debug, Clone)]
pub struct PreparedSlot {
    pub dir: PathBuf,
    /// What tells this slot apart (source graph, runtime, CPU): its temporaries are named with it.
    key: String,
    pub source_sha256: String,
    pub onnxruntime_version: String,
    pub cpu_features: String,
}

/// The outcome of looking at a slot.
pub enum Lookup {
    /// Complete and verified: load `graph` (its data file sits beside it).
    Ready { graph: PathBuf, bytes: u64 },
    /// Nothing there (or something that was removed because it did not verify): prepare it.
    Missing { removed_because: Option<String> },
}

/// The right to prepare a slot: an flock on the slot's lock file, released when this is dropped (an
/// ERROR that unwinds past it included) or when the process ends.
#[derive(Debug)]
pub struct PrepareLock {
    file: File,
}

/// A wait for another process's preparation: how long, and the pid that last announced it prepares.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Wait {
    pub duration: Duration,
    pub holder_pid: Option<u32>,
}

impl PreparedSlot {
    pub fn new(
        cache_dir: &Path,
        model_version: &str,
        tower: &str,
        source_sha256: &str,
        onnxruntime_version: &str,
    ) -> Self {
        let cpu_features = cpu_features();
        let key = {
            let mut hasher = blake3::Hasher::new();
            for part in [source_sha256, tower, onnxruntime_version, &cpu_features, &FORMAT.to_string()] {
                hasher.update(part.as_bytes());
                hasher.update(&[0]);
            }
            hasher.finalize().to_hex()[..16].to_string()
        };
        let safe_version: String = model_version
            .chars()
            .take(VERSION_CHARS)
            .map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '.' { c } else { '_' })
            .collect();
        PreparedSlot {
            dir: cache_dir.join(format!("{safe_version}-{tower}-{key}")),
            key,
            source_sha256: source_sha256.to_string(),
            onnxruntime_version: onnxruntime_version.to_string(),
            cpu_features,
        }
    }

    /// Checksums remembered beside the slots, so unchanged files are not hashed by every backend.
    pub fn memo(&self) -> ChecksumMemo {
        ChecksumMemo::in_dir(self.dir.parent())
    }

    pub fn graph_path(&self) -> PathBuf {
        self.dir.join(GRAPH_FILE)
    }

    /// Verifies the slot's files against its record (size, then BLAKE3: our own record, so the fastest
    /// sound checksum, ~0.15 s for 690 MB; the read also fills the page cache the mapping will use). A slot that does not verify is removed so it can be rebuilt.
    pub fn lookup(&self) -> Result<Lookup> {
        let record_path = self.dir.join(RECORD_FILE);
        if !self.dir.exists() {
            return Ok(Lookup::Missing { removed_because: None });
        }
        let problem = match std::fs::read_to_string(&record_path) {
            Err(e) => Some(format!("{RECORD_FILE}: {e}")),
            Ok(text) => match serde_json::from_str::<PreparedRecord>(&text) {
                Err(e) => Some(format!("{RECORD_FILE}: {e}")),
                Ok(record) => self.verify(&record)?,
            },
        };
        match problem {
            None => {
                let bytes = file_len(&self.graph_path()) + file_len(&self.dir.join(DATA_FILE));
                Ok(Lookup::Ready { graph: self.graph_path(), bytes })
            }
            Some(reason) => {
                remove_dir(&self.dir)?;
                Ok(Lookup::Missing { removed_because: Some(reason) })
            }
        }
    }

    fn verify(&self, record: &PreparedRecord) -> Result<Option<String>> {
        if record.format != FORMAT
            || record.source_sha256 != self.source_sha256
            || record.onnxruntime_version != self.onnxruntime_version
            || record.cpu_features != self.cpu_features
        {
            return Ok(Some("made from another model, runtime or CPU".into()));
        }
        for (name, bytes, sha) in [
            (GRAPH_FILE, record.graph_bytes, &record.graph_blake3),
            (DATA_FILE, record.data_bytes, &record.data_blake3),
        ] {
            let path = self.dir.join(name);
            let actual = file_len(&path);
            if actual != bytes {
                return Ok(Some(format!("{name} is {actual} bytes, {bytes} were written")));
            }
            if &self.memo().checksum("blake3", &path, blake3_file)? != sha {
                return Ok(Some(format!("{name} does not match the checksum recorded when it was written")));
            }
        }
        Ok(None)
    }

    /// The lock file of this slot: beside it, so on the same file system and under the same permissions.
    pub fn lock_path(&self) -> PathBuf {
        self.dir.with_file_name(format!("{}.lock", self.name()))
    }

    fn name(&self) -> String {
        self.dir.file_name().expect("slot directories have a name").to_string_lossy().into_owned()
    }

    /// Takes the slot's preparation lock, waiting while another process holds it: tries every 50 ms and
    /// calls `poll_interrupts` between tries (it may unwind, which drops the open file and so gives up the
    /// attempt). Returns the lock, and the wait if there was one. An Err means the lock cannot be had at
    /// all (a location that cannot be written or created, a file system without flock): the caller then
    /// does without it, as before there was one.
    pub fn lock(&self, poll_interrupts: &mut dyn FnMut()) -> Result<(PrepareLock, Option<Wait>)> {
        let parent = self.dir.parent().expect("slot directories have a parent");
        std::fs::create_dir_all(parent).map_err(|e| io_error("creating", parent, e))?;
        let path = self.lock_path();
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            // A lock file we may not write can still be locked (flock needs no write access).
            .or_else(|_| File::open(&path))
            .map_err(|e| io_error("opening", &path, e))?;
        let mut waiting: Option<(Instant, Option<u32>)> = None;
        loop {
            match file.try_lock() {
                Ok(()) => break,
                Err(TryLockError::WouldBlock) => {
                    let since = waiting.map_or_else(Instant::now, |(since, _)| since);
                    // Read on every try: when a preparer dies, the next one announces itself.
                    let holder = read_pid(&file).or(waiting.and_then(|(_, pid)| pid));
                    waiting = Some((since, holder));
                    poll_interrupts();
                    std::thread::sleep(LOCK_POLL);
                }
                Err(TryLockError::Error(e)) => return Err(io_error("locking", &path, e)),
            }
        }
        let wait = waiting.map(|(since, holder_pid)| Wait { duration: since.elapsed(), holder_pid });
        Ok((PrepareLock { file }, wait))
    }

    /// A fresh temporary directory beside the slot, for ONNX Runtime to write the optimized model into.
    /// Creating it is also the test that the cache location is writable. With the slot's lock held, the
    /// temporaries an earlier preparer of this slot left (it died or was killed mid-way) are removed first:
    /// no one else can be writing them.
    pub fn begin(&self, lock: Option<&PrepareLock>) -> Result<PathBuf> {
        let parent = self.dir.parent().expect("slot directories have a parent");
        std::fs::create_dir_all(parent).map_err(|e| io_error("creating", parent, e))?;
        let prefix = format!(".tmp-{}-", self.key);
        remove_stale_temporaries(parent, lock.is_some().then_some(prefix.as_str()));
        let nanos = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
        let temporary = parent.join(format!("{prefix}{}-{nanos}", std::process::id()));
        std::fs::create_dir(&temporary).map_err(|e| io_error("creating", &temporary, e))?;
        Ok(temporary)
    }

    /// Records checksums, fsyncs, and renames `temporary` into place. Returns false when another backend
    /// finished first (its files are then used, ours removed; only when preparing without the lock).
    pub fn commit(&self, temporary: &Path) -> Result<bool> {
        let graph = temporary.join(GRAPH_FILE);
        let data = temporary.join(DATA_FILE);
        if !data.is_file() {
            remove_dir(temporary)?;
            return Err(PgClipError::runtime(
                "preparing the model",
                "ONNX Runtime wrote no external data file (nothing large enough to externalize?)",
            ));
        }
        let record = PreparedRecord {
            format: FORMAT,
            source_sha256: self.source_sha256.clone(),
            onnxruntime_version: self.onnxruntime_version.clone(),
            cpu_features: self.cpu_features.clone(),
            graph_blake3: blake3_file(&graph)?,
            graph_bytes: file_len(&graph),
            data_blake3: blake3_file(&data)?,
            data_bytes: file_len(&data),
        };
        let record_path = temporary.join(RECORD_FILE);
        std::fs::write(&record_path, serde_json::to_vec_pretty(&record).expect("record serializes"))
            .map_err(|e| io_error("writing", &record_path, e))?;
        for path in [&graph, &data, &record_path, &temporary.to_path_buf()] {
            std::fs::File::open(path).and_then(|f| f.sync_all()).map_err(|e| io_error("syncing", path, e))?;
        }
        match std::fs::rename(temporary, &self.dir) {
            Ok(()) => Ok(true),
            Err(_) if self.dir.exists() => {
                remove_dir(temporary)?;
                Ok(false)
            }
            Err(e) => {
                let _ = remove_dir(temporary);
                Err(io_error("renaming into place", &self.dir, e))
            }
        }
    }

    /// Gives up on a temporary directory (the preparation failed).
    pub fn abandon(&self, temporary: &Path) {
        let _ = remove_dir(temporary);
    }
}

impl PrepareLock {
    /// Writes this process's pid into the lock file, so that waiters can say whose preparation they
    /// waited for. Best effort: a lock file we may only read still locks.
    pub fn announce(&self) {
        let pid = format!("{}\n", std::process::id());
        if self.file.set_len(0).is_ok() {
            let _ = self.file.write_all_at(pid.as_bytes(), 0);
        }
    }
}

/// The pid a preparer wrote into the lock file (None if empty or unreadable, e.g. mid-write).
fn read_pid(file: &File) -> Option<u32> {
    let mut buffer = [0u8; 16];
    let n = file.read_at(&mut buffer, 0).ok()?;
    std::str::from_utf8(&buffer[..n]).ok()?.trim().parse().ok()
}

/// The SIMD features that decide how ONNX Runtime's kernels pack weights on this CPU.
pub fn cpu_features() -> String {
    #[cfg(target_arch = "x86_64")]
    {
        let mut features = vec!["x86_64"];
        macro_rules! detect {
            ($($f:tt),*) => { $( if std::arch::is_x86_feature_detected!($f) { features.push($f); } )* };
        }
        detect!("sse4.1", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512vnni", "avx512bf16");
        features.join(",")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        std::env::consts::ARCH.to_string()
    }
}

fn blake3_file(path: &Path) -> Result<String> {
    let mut hasher = blake3::Hasher::new();
    hasher
        .update_reader(std::fs::File::open(path).map_err(|e| io_error("opening", path, e))?)
        .map_err(|e| io_error("reading", path, e))?;
    Ok(hasher.finalize().to_hex().to_string())
}

fn file_len(path: &Path) -> u64 {
    std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

fn remove_dir(dir: &Path) -> Result<()> {
    match std::fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_error("removing", dir, e)),
    }
}

/// Removes temporaries older than an hour (whoever made them is long gone), and every temporary whose
/// name starts with `abandoned` (those of a slot whose lock the caller holds).
fn remove_stale_temporaries(parent: &Path, abandoned: Option<&str>) {
    let Ok(entries) = std::fs::read_dir(parent) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.starts_with(".tmp-") {
            continue;
        }
        let old = entry.metadata().and_then(|m| m.modified()).ok().and_then(|t| t.elapsed().ok());
        if old.is_some_and(|age| age > STALE_TEMPORARY) || abandoned.is_some_and(|prefix| name.starts_with(prefix)) {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

fn io_error(action: &str, path: &Path, e: std::io::Error) -> PgClipError {
    PgClipError::runtime("prepared model files", format!("{action} {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slot(dir: &Path) -> PreparedSlot {
        PreparedSlot::new(dir, "clip-ViT-B-32/random", "image", "abc", "1.31.1")
    }

    #[test]
    fn key_depends_on_source_runtime_and_name_is_safe() {
        let a = slot(Path::new("/c"));
        let b = PreparedSlot::new(Path::new("/c"), "clip-ViT-B-32/random", "image", "abd", "1.31.1");
        let c = PreparedSlot::new(Path::new("/c"), "clip-ViT-B-32/random", "image", "abc", "1.32.0");
        assert_ne!(a.dir, b.dir);
        assert_ne!(a.dir, c.dir);
        assert!(a.dir.file_name().unwrap().to_str().unwrap().starts_with("clip-ViT-B-32_random-image-"));
    }

    /// pg_basebackup streams the data directory as tar, whose names stop at 99 bytes: a slot made from a
    /// model version of any length, for every tower, keeps every path it writes within MAX_RELATIVE_PATH.
    #[test]
    fn names_stay_short_whatever_the_model_version() {
        let root = std::env::temp_dir().join(format!("pg_clip-prepared-names-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let long_version = "clip-ViT-L-14-336-laion2B-s32B-b82K-finetuned-on-our-own-catalogue-2026-12/v17".repeat(4);
        let towers = ["image", "image-int8", "text", "text-ml", "text-ml-int8"];
        for tower in towers {
            let s = PreparedSlot::new(&root, &long_version, tower, "f".repeat(64).as_str(), "1.31.1");
            let tmp = s.begin(None).unwrap();
            let mut written = vec![s.dir.join(DATA_FILE), s.dir.join(RECORD_FILE), s.lock_path(), tmp.join(DATA_FILE)];
            written.push(root.join(super::super::checksum::MEMO_FILE));
            for path in written {
                let relative = path.strip_prefix(&root).unwrap().to_string_lossy().into_owned();
                assert!(relative.len() <= MAX_RELATIVE_PATH, "{relative}: {} bytes", relative.len());
            }
            s.abandon(&tmp);
        }
        // Within the default location, pgsql_tmp_pg_clip/ (not backed up at all), and within the former
        // default, pg_clip/prepared/, if someone sets it again: both fit tar.
        for dir in ["pgsql_tmp_pg_clip", "pg_clip/prepared"] {
            assert!(dir.len() + 1 + MAX_RELATIVE_PATH <= 99, "{dir}");
        }
        let _ = std::fs::remove_dir_all(&root);
    }

    #[test]
    fn commit_verify_corrupt_and_rebuild() {
        let root = std::env::temp_dir().join(format!("pg_clip-prepared-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let s = slot(&root);
        assert!(matches!(s.lookup().unwrap(), Lookup::Missing { removed_because: None }));
        let tmp = s.begin(None).unwrap();
        std::fs::write(tmp.join(GRAPH_FILE), b"graph").unwrap();
        std::fs::write(tmp.join(DATA_FILE), vec![7u8; 10_000]).unwrap();
        assert!(s.commit(&tmp).unwrap());
        assert!(matches!(s.lookup().unwrap(), Lookup::Ready { bytes: 10_005, .. }));
        // A second preparer that finishes later loses the race without harm.
        let tmp2 = s.begin(None).unwrap();
        std::fs::write(tmp2.join(GRAPH_FILE), b"graph").unwrap();
        std::fs::write(tmp2.join(DATA_FILE), vec![7u8; 10_000]).unwrap();
        assert!(!s.commit(&tmp2).unwrap());
        assert!(!tmp2.exists());
        // Same size, one byte changed: only the checksum can tell; the slot is removed for a rebuild.
        let mut data = std::fs::read(s.dir.join(DATA_FILE)).unwrap();
        data[5000] ^= 1;
        std::fs::write(s.dir.join(DATA_FILE), data).unwrap();
        match s.lookup().unwrap() {
            Lookup::Missing { removed_because: Some(reason) } => assert!(reason.contains("checksum"), "{reason}"),
            _ => panic!("a corrupt slot must not be Ready"),
        }
        assert!(!s.dir.exists());
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn unwritable_location_is_an_error_not_a_panic() {
        let s = slot(Path::new("/proc/pg_clip-cannot-exist"));
        assert!(s.begin(None).is_err());
        assert!(s.lock(&mut || {}).is_err(), "no lock where nothing can be created: the caller goes without");
    }

    fn test_root(name: &str) -> PathBuf {
        let root = std::env::temp_dir().join(format!("pg_clip-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        root
    }

    /// flock locks belong to an open file description, so two opens in one process contend like two
    /// backends do.
    #[test]
    fn one_preparer_at_a_time_and_waiters_learn_whom_they_waited_for() {
        let root = test_root("lock-test");
        let s = slot(&root);
        let (held, wait) = s.lock(&mut || {}).unwrap();
        assert!(wait.is_none(), "a free lock is taken without waiting");
        held.announce();
        let released = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            drop(held);
        });
        let mut polls = 0;
        let (_second, wait) = s.lock(&mut || polls += 1).unwrap();
        released.join().unwrap();
        let wait = wait.expect("the second taker waited");
        assert!(wait.duration >= Duration::from_millis(250), "{wait:?}");
        assert_eq!(wait.holder_pid, Some(std::process::id()));
        assert!((3..=10).contains(&polls), "interrupts checked between tries (every 50 ms): {polls}");
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn an_interrupted_wait_gives_up_its_attempt_and_a_dead_holder_frees_the_lock() {
        let root = test_root("lock-cancel-test");
        let s = slot(&root);
        let (held, _) = s.lock(&mut || {}).unwrap();
        // The SQL layer's poll raises an ERROR (query cancel) by unwinding; nothing may stay locked by it.
        let cancelled = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            s.lock(&mut || panic!("canceling statement due to user request"))
        }));
        assert!(cancelled.is_err());
        // The holder goes (a closed descriptor, as when a process dies): the lock is free at once, though
        // the lock file stays.
        drop(held);
        assert!(s.lock_path().exists());
        let (_again, wait) = s.lock(&mut || panic!("must not wait")).unwrap();
        assert!(wait.is_none());
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn the_lock_holder_removes_what_an_earlier_preparer_of_its_slot_left() {
        let root = test_root("tmp-test");
        let s = slot(&root);
        let other = PreparedSlot::new(&root, "clip-ViT-B-32/random", "text", "abc", "1.31.1");
        let dead = s.begin(None).unwrap();
        let busy = other.begin(None).unwrap();
        // Without the lock, another backend may still be writing: both stay.
        let unlocked = s.begin(None).unwrap();
        assert!(dead.exists() && busy.exists());
        let (lock, _) = s.lock(&mut || {}).unwrap();
        let fresh = s.begin(Some(&lock)).unwrap();
        assert!(!dead.exists() && !unlocked.exists(), "this slot's leftovers are removed under its lock");
        assert!(busy.exists(), "another slot's temporary is not this lock's business");
        assert!(fresh.exists());
        std::fs::remove_dir_all(&root).unwrap();
    }
}
