//! The ONNX Runtime library and its one Environment per process.
//!
//! ort allows a single Environment per process, and the library can be dlopen'ed only once, so both live
//! here, apart from the sessions (which `encoder` creates and caches per model). Nothing here runs in
//! `_PG_init` or the postmaster: the first embedding call of a backend loads the library, so threads that
//! ONNX Runtime may create never have to survive a fork.

use once_cell::sync::OnceCell;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::error::{PgClipError, Result};

pub struct Runtime {
    pub library_path: PathBuf,
    pub version: String,
    pub environment: ort::environment::Environment,
}

static RUNTIME: OnceCell<Runtime> = OnceCell::new();
/// Serialises first-time initialisation (OnceCell::get_or_try_init would too, but we also want to report
/// a failed path consistently and allow a retry with a corrected setting).
static INIT_LOCK: Mutex<()> = Mutex::new(());

/// The process's runtime, loading `library_path` on first use. Once loaded, a different path cannot
/// replace it in this process: the caller gets the loaded one and can compare `library_path`.
pub fn runtime(library_path: &Path) -> Result<&'static Runtime> {
    if let Some(rt) = RUNTIME.get() {
        return Ok(rt);
    }
    let _guard = INIT_LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some(rt) = RUNTIME.get() {
        return Ok(rt);
    }
    if !library_path.is_file() {
        return Err(PgClipError::FileNotFound {
            what: "ONNX Runtime library",
            path: library_path.to_path_buf(),
            hint: Some(
                "Set pg_clip.onnxruntime_path to libonnxruntime.so (the PyPI onnxruntime wheel ships it as \
                 onnxruntime/capi/libonnxruntime.so.*), or reinstall pg_clip with `make install`."
                    .into(),
            ),
        });
    }
    let loaded = with_signals_blocked(|| {
        catch_unwind(AssertUnwindSafe(|| -> Result<Runtime> {
            let builder = ort::init_from(library_path).map_err(|e| {
                PgClipError::model_invalid(format!("ONNX Runtime library {}", library_path.display()), e)
            })?;
            let environment = builder
                .with_name("pg_clip")
                .with_telemetry(false)
                .build()
                .map_err(|e| PgClipError::runtime("creating the ONNX Runtime environment", e))?;
            let version = library_version(library_path).unwrap_or_else(|| version_from_build_info(ort::info()));
            Ok(Runtime { library_path: library_path.to_path_buf(), version, environment })
        }))
    });
    let runtime = match loaded {
        Ok(result) => result?,
        Err(panic) => {
            return Err(PgClipError::model_invalid(
                format!("ONNX Runtime library {}", library_path.display()),
                format!("loading it failed: {}", panic_message(&panic)),
            ))
        }
    };
    Ok(RUNTIME.get_or_init(|| runtime))
}

/// The runtime if some call in this process already loaded it.
pub fn loaded_runtime() -> Option<&'static Runtime> {
    RUNTIME.get()
}

/// The version the loaded library reports (OrtGetApiBase()->GetVersionString(), e.g. "1.31.1").
fn library_version(library_path: &Path) -> Option<String> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(library_path.as_os_str().as_bytes()).ok()?;
    // SAFETY: RTLD_NOLOAD only returns a handle to the library ort already loaded (it loads nothing);
    // OrtGetApiBase is ONNX Runtime's C entry point with this signature, and GetVersionString returns a
    // static NUL-terminated string. dlclose drops only the reference we added.
    unsafe {
        let handle = libc::dlopen(path.as_ptr(), libc::RTLD_LAZY | libc::RTLD_NOLOAD);
        if handle.is_null() {
            return None;
        }
        let symbol = libc::dlsym(handle, c"OrtGetApiBase".as_ptr());
        let version = if symbol.is_null() {
            None
        } else {
            let get_api_base: unsafe extern "C" fn() -> *const ort::sys::OrtApiBase = std::mem::transmute(symbol);
            let base = get_api_base();
            if base.is_null() {
                None
            } else {
                let text = ((*base).GetVersionString)();
                (!text.is_null()).then(|| std::ffi::CStr::from_ptr(text).to_string_lossy().into_owned())
            }
        };
        libc::dlclose(handle);
        version
    }
}

/// "git-branch=rel-1.31.1, ..." -> "1.31.1"; the whole string when it has another shape.
fn version_from_build_info(info: &str) -> String {
    info.split([',', ' '])
        .find_map(|part| part.strip_prefix("git-branch=rel-"))
        .map(str::to_string)
        .unwrap_or_else(|| info.trim().to_string())
}

pub fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "unknown panic".into())
}

/// Runs `f` with every signal blocked in the calling thread, so that any thread ONNX Runtime creates
/// meanwhile inherits a full mask: Postgres's signal handlers (SIGINT for cancel, SIGTERM, SIGUSR1 ...)
/// must only ever run on the backend's own thread. The caller's mask is restored afterwards, also on
/// panic, and signals that arrived meanwhile are delivered then.
pub fn with_signals_blocked<T>(f: impl FnOnce() -> T) -> T {
    // SAFETY: sigfillset/pthread_sigmask only write the sigset_t values we own; restoring the saved mask
    // returns the thread to exactly its previous state.
    let previous = unsafe {
        let mut all: libc::sigset_t = std::mem::zeroed();
        let mut previous: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut previous);
        previous
    };
    let result = catch_unwind(AssertUnwindSafe(f));
    // SAFETY: as above.
    unsafe {
        libc::pthread_sigmask(libc::SIG_SETMASK, &previous, std::ptr::null_mut());
    }
    match result {
        Ok(value) => value,
        Err(panic) => resume_unwind(panic),
    }
}

/// Blocks every signal in the calling thread for the rest of its life. Threads the fetch runtime starts call
/// it first thing (they are also created from threads whose mask is already full; this covers any created
/// otherwise), so that Postgres's handlers only ever run on the backend's own thread.
pub fn block_all_signals_in_this_thread() {
    // SAFETY: as in with_signals_blocked; this thread's mask is the only state changed.
    unsafe {
        let mut all: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_BLOCK, &all, std::ptr::null_mut());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_version_from_build_info() {
        assert_eq!(
            version_from_build_info("ORT Build Info: git-branch=rel-1.31.1, git-commit-id=abc, build type=Release"),
            "1.31.1"
        );
        assert_eq!(version_from_build_info("something else"), "something else");
    }

    #[test]
    fn signal_mask_is_restored() {
        // SAFETY: reads the current thread's mask into a local.
        let mask = || unsafe {
            let mut current: libc::sigset_t = std::mem::zeroed();
            libc::pthread_sigmask(libc::SIG_SETMASK, std::ptr::null(), &mut current);
            libc::sigismember(&current, libc::SIGINT)
        };
        let before = mask();
        let inside = with_signals_blocked(mask);
        assert_eq!(inside, 1);
        assert_eq!(mask(), before);
    }

    #[test]
    fn missing_library_is_file_not_found() {
        let err = runtime(Path::new("/nonexistent/libonnxruntime.so")).err().unwrap();
        assert_eq!(err.sqlstate_code(), "58P01");
    }
}
