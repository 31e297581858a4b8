//! Checksums of model files, remembered across backends so that a load hashes only files that changed.
//!
//! Why: every load verifies the source graph (SHA-256, ~360 MB) and the prepared model (BLAKE3, ~690 MB).
//! With the files in the page cache that is ~0.45 s per backend; right after they were evicted it is a
//! gigabyte read from disk (2.7 s measured). A file whose inode, size, modification time and change time
//! are those recorded when it was last hashed has not been written since (ctime cannot be set from user
//! space), so its recorded checksum still holds. The memo lives in the prepared-model directory, inside the
//! server's own files; without one (private sessions) every load hashes.
#![forbid(unsafe_code)]

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::error::Result;

pub const MEMO_FILE: &str = "verified.json";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Stamp {
    dev: u64,
    ino: u64,
    size: u64,
    mtime_ns: i128,
    ctime_ns: i128,
    checksum: String,
}

/// Where verified checksums are remembered (None: nowhere, always hash).
#[derive(Debug, Clone, Default)]
pub struct ChecksumMemo {
    file: Option<PathBuf>,
}

impl ChecksumMemo {
    pub fn in_dir(dir: Option<&Path>) -> Self {
        ChecksumMemo { file: dir.map(|d| d.join(MEMO_FILE)) }
    }

    /// The checksum `algorithm` names for `path`: remembered if the file is unchanged since it was last
    /// hashed, else computed with `compute` (and remembered, best effort).
    pub fn checksum(
        &self,
        algorithm: &str,
        path: &Path,
        compute: impl FnOnce(&Path) -> Result<String>,
    ) -> Result<String> {
        let Some(memo) = &self.file else { return compute(path) };
        let key = format!("{algorithm}:{}", path.display());
        let stamp = |checksum: String| -> Option<Stamp> {
            let meta = std::fs::metadata(path).ok()?;
            Some(Stamp {
                dev: meta.dev(),
                ino: meta.ino(),
                size: meta.len(),
                mtime_ns: meta.mtime() as i128 * 1_000_000_000 + meta.mtime_nsec() as i128,
                ctime_ns: meta.ctime() as i128 * 1_000_000_000 + meta.ctime_nsec() as i128,
                checksum,
            })
        };
        let mut known: BTreeMap<String, Stamp> =
            std::fs::read(memo).ok().and_then(|bytes| serde_json::from_slice(&bytes).ok()).unwrap_or_default();
        if let (Some(recorded), Some(now)) = (known.get(&key), stamp(String::new())) {
            if (Stamp { checksum: recorded.checksum.clone(), ..now }) == *recorded {
                return Ok(recorded.checksum.clone());
            }
        }
        let before = stamp(String::new());
        let checksum = compute(path)?;
        // Remember it only if the file did not change while it was being read.
        if let (Some(before), Some(after)) = (before, stamp(checksum.clone())) {
            if (Stamp { checksum: checksum.clone(), ..before }) == after {
                known.insert(key, after);
                let temporary = memo.with_extension(format!("tmp-{}", std::process::id()));
                let written = std::fs::write(&temporary, serde_json::to_vec(&known).expect("memo serializes"))
                    .and_then(|()| std::fs::rename(&temporary, memo));
                if written.is_err() {
                    let _ = std::fs::remove_file(&temporary);
                }
            }
        }
        Ok(checksum)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    #[test]
    fn hashes_once_until_the_file_changes() {
        let dir = std::env::temp_dir().join(format!("pg_clip-memo-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("weights");
        std::fs::write(&file, b"one").unwrap();
        let memo = ChecksumMemo::in_dir(Some(&dir));
        let computed = Cell::new(0);
        let hash = |p: &Path| {
            computed.set(computed.get() + 1);
            Ok(String::from_utf8(std::fs::read(p).unwrap()).unwrap())
        };
        assert_eq!(memo.checksum("test", &file, hash).unwrap(), "one");
        assert_eq!(memo.checksum("test", &file, hash).unwrap(), "one");
        assert_eq!(computed.get(), 1, "an unchanged file is not hashed again");
        // Same size, new content: mtime/ctime move, so it is hashed again.
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(&file, b"two").unwrap();
        assert_eq!(memo.checksum("test", &file, hash).unwrap(), "two");
        assert_eq!(computed.get(), 2);
        // Without a memo directory, always hashed.
        let none = ChecksumMemo::in_dir(None);
        none.checksum("test", &file, hash).unwrap();
        assert_eq!(computed.get(), 3);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
