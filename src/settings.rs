//! Every `pg_clip.*` setting: private statics, one `init()`, typed getters.
//!
//! Values are read once, at the SQL edge (`sql_api`), and handed to the pure modules as plain structs.
//! Anything that reaches files or the network is superuser-only (PGC_SUSET); so are the limits and the
//! thread count, since a role that could raise them could exhaust the server's memory or CPUs.

use pgrx::guc::{GucContext, GucFlags, GucRegistry, GucSetting};
use pgrx::pg_sys;
use pgrx::PostgresGucEnum;
use std::ffi::{CStr, CString};
use std::path::PathBuf;
use std::time::Duration;

use crate::fetch::{FetchConfig, FetchPolicy};

use crate::image::{ImageLimits, Transparency};
use crate::model::encoder::{Precision, WeightSharing};
use crate::model::TextModel;

/// A fault the auto-embed worker injects into each batch while set: how the tests prove that an ERROR or a
/// Rust panic in a batch is logged and survived. Not for production; hidden from SHOW ALL.
#[derive(PostgresGucEnum, Clone, Copy, PartialEq, Eq, Debug)]
pub enum AutoEmbedFault {
    #[name = c"none"]
    None,
    #[name = c"error"]
    Error,
    #[name = c"panic"]
    Panic,
}

/// Which graph of a tower: fp32 (reproduces stored vectors) or int8 (pg_clip.image_precision, pg_clip.text_precision).
#[derive(PostgresGucEnum, Clone, Copy, PartialEq, Eq, Debug)]
pub enum PrecisionSetting {
    #[name = c"fp32"]
    Fp32,
    #[name = c"int8"]
    Int8,
}

/// Which text encoder clip_embed_text runs (and clip_text_tokens tokenizes for).
#[derive(PostgresGucEnum, Clone, Copy, PartialEq, Eq, Debug)]
pub enum TextModelSetting {
    /// OpenAI CLIP's own text tower (text.onnx): English, BPE.
    #[name = c"clip"]
    Clip,
    /// sentence-transformers clip-ViT-B-32-multilingual-v1's text encoder (text-multilingual.onnx): 50+ languages.
    #[name = c"multilingual"]
    Multilingual,
}

/// What becomes of transparent pixels: transformers 4.x (drop alpha) or 5.x (composite onto white).
#[derive(PostgresGucEnum, Clone, Copy, PartialEq, Eq, Debug)]
pub enum TransparencySetting {
    #[name = c"drop"]
    Drop,
    #[name = c"white"]
    White,
}

static MODEL_PATH: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);
static MODELS_PATH: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);
static MODEL: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);
static ONNXRUNTIME_PATH: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);
static INTRA_OP_THREADS: GucSetting<i32> = GucSetting::<i32>::new(1);
/// kB, like work_mem: 20 MB covers any catalogue photo; larger inputs are almost surely a mistake.
static MAX_IMAGE_BYTES_KB: GucSetting<i32> = GucSetting::<i32>::new(20 * 1024);
/// 50 Mpx: a 48 Mpx phone photo passes; decoding it needs 150 MB of RGB, which is the real cost guarded.
static MAX_IMAGE_PIXELS: GucSetting<i32> = GucSetting::<i32>::new(50_000_000);
/// kB. The text towers read 77 (CLIP) or 128 (multilingual) tokens; 64 kB is far past any query, yet bounds
/// the cleaning and tokenizing work an absurd input could cost.
static MAX_TEXT_BYTES_KB: GucSetting<i32> = GucSetting::<i32>::new(64);
static EXIF_ORIENTATION: GucSetting<bool> = GucSetting::<bool>::new(true);
static SHARE_MODEL_WEIGHTS: GucSetting<bool> = GucSetting::<bool>::new(true);
static PREPARED_MODEL_DIR: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);
static IMAGE_PRECISION: GucSetting<PrecisionSetting> = GucSetting::<PrecisionSetting>::new(PrecisionSetting::Fp32);
/// Per session (USERSET): both encoders work in one database, each session picks its own. Not a file, not a
/// limit: choosing an encoder the model directory has costs what a text query costs.
static TEXT_MODEL: GucSetting<TextModelSetting> = GucSetting::<TextModelSetting>::new(TextModelSetting::Clip);
/// Superuser, like image_precision: which graph a backend maps is the administrator's call (and int8 query
/// vectors are not bit-compatible with fp32 ones).
static TEXT_PRECISION: GucSetting<PrecisionSetting> = GucSetting::<PrecisionSetting>::new(PrecisionSetting::Fp32);
/// Per session, like exif_orientation: it changes vectors, and which era the stored vectors came from is the
/// application's knowledge. Default drop = transformers 4.x, what the stored vectors were made with.
static IMAGE_TRANSPARENCY: GucSetting<TransparencySetting> =
    GucSetting::<TransparencySetting>::new(TransparencySetting::Drop);
static EMBEDDING_CACHE_SIZE: GucSetting<i32> = GucSetting::<i32>::new(16);
static ALLOWED_HOSTS: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);
static ALLOW_PRIVATE_ADDRESSES: GucSetting<bool> = GucSetting::<bool>::new(false);
static ALLOWED_PRIVATE_NETWORKS: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);
/// ms. Long enough for a slow TLS handshake across regions, short enough that a dead host costs little.
static FETCH_CONNECT_TIMEOUT_MS: GucSetting<i32> = GucSetting::<i32>::new(5_000);
/// ms, per attempt, body included: a 20 MB photo at 1 MB/s still arrives.
static FETCH_TIMEOUT_MS: GucSetting<i32> = GucSetting::<i32>::new(30_000);
static FETCH_RETRIES: GucSetting<i32> = GucSetting::<i32>::new(2);
static FETCH_MAX_REDIRECTS: GucSetting<i32> = GucSetting::<i32>::new(5);
/// 16 downloads hide 200 ms of latency behind ~80 ms inferences with room to spare (see the README).
static FETCH_CONCURRENCY: GucSetting<i32> = GucSetting::<i32>::new(16);

// The auto-embed worker's settings. Context SIGHUP: the worker is not a session anyone can SET in, so they
// live in postgresql.conf or ALTER SYSTEM, and a reload (pg_reload_conf()) reaches the running worker.
/// 64 rows a batch, as clip_backfill: enough to keep 16 downloads in flight, little to redo after a restart.
static AUTO_EMBED_BATCH_SIZE: GucSetting<i32> = GucSetting::<i32>::new(64);
/// s. Changes wake the worker at their commit; this only bounds how late it finds rows written with the
/// triggers off (a look costs an index scan of the pending rows).
static AUTO_EMBED_NAPTIME_S: GucSetting<i32> = GucSetting::<i32>::new(30);
static AUTO_EMBED_MAX_ATTEMPTS: GucSetting<i32> = GucSetting::<i32>::new(5);
/// ms. Transient failures wait this, then 4x longer each time: 10 s, 40 s, 160 s, 640 s (about 14 minutes
/// until a photo host that stays down is given up on).
static AUTO_EMBED_RETRY_DELAY_MS: GucSetting<i32> = GucSetting::<i32>::new(10_000);
static AUTO_EMBED_FAULT: GucSetting<AutoEmbedFault> = GucSetting::<AutoEmbedFault>::new(AutoEmbedFault::None);

/// Registers the settings. Called from `_PG_init`; does nothing else (no model, no threads).
pub fn init() {
    GucRegistry::define_string_guc(
        c"pg_clip.model_path",
        c"Directory holding the CLIP model files and their manifest.json.",
        c"Empty means the model installed with the extension: $sharedir/pg_clip/model.",
        &MODEL_PATH,
        GucContext::Suset,
        GucFlags::SUPERUSER_ONLY,
    );
    GucRegistry::define_string_guc(
        c"pg_clip.models_path",
        c"Directory of named model directories: <models_path>/<name>/manifest.json (clip_models() lists them).",
        c"Empty means $sharedir/pg_clip/models. The model at pg_clip.model_path is always there too, named default.",
        &MODELS_PATH,
        GucContext::Suset,
        GucFlags::SUPERUSER_ONLY,
    );
    GucRegistry::define_string_guc(
        c"pg_clip.model",
        c"The model embedding calls use when they name none: default, or a name under pg_clip.models_path.",
        c"Per session, role or database (ALTER ROLE/DATABASE ... SET). A query whose result must not depend on the \
          session names its model: clip_embed_bytes(image, 'name').",
        &MODEL,
        GucContext::Userset,
        GucFlags::default(),
    );
    GucRegistry::define_string_guc(
        c"pg_clip.onnxruntime_path",
        c"Path of the ONNX Runtime shared library (libonnxruntime.so).",
        c"Empty means the library installed with the extension: $pkglibdir/pg_clip/libonnxruntime.so. \
          It is loaded once per backend; a change takes effect in new sessions.",
        &ONNXRUNTIME_PATH,
        GucContext::Suset,
        GucFlags::SUPERUSER_ONLY,
    );
    GucRegistry::define_int_guc(
        c"pg_clip.intra_op_threads",
        c"Threads each backend's ONNX Runtime session may use for one inference.",
        c"1 keeps inference on the backend's own thread: many backends then share the CPUs fairly.",
        &INTRA_OP_THREADS,
        1,
        64,
        GucContext::Suset,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"pg_clip.max_image_bytes",
        c"Largest encoded image accepted, before decoding.",
        c"",
        &MAX_IMAGE_BYTES_KB,
        1,
        1024 * 1024,
        GucContext::Suset,
        GucFlags::UNIT_KB,
    );
    GucRegistry::define_int_guc(
        c"pg_clip.max_image_pixels",
        c"Largest image accepted, in pixels (width x height), checked from the header before decoding.",
        c"Guards against decompression bombs: a small file that claims a huge canvas is refused unread.",
        &MAX_IMAGE_PIXELS,
        1,
        i32::MAX,
        GucContext::Suset,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"pg_clip.max_text_bytes",
        c"Longest text clip_embed_text accepts (it is then truncated to the encoder's 77 or 128 tokens).",
        c"",
        &MAX_TEXT_BYTES_KB,
        1,
        1024 * 1024,
        GucContext::Suset,
        GucFlags::UNIT_KB,
    );
    GucRegistry::define_bool_guc(
        c"pg_clip.exif_orientation",
        c"Rotate and flip images as their EXIF orientation tag says before embedding.",
        c"Turn off to reproduce vectors made without it (sentence-transformers does not apply EXIF).",
        &EXIF_ORIENTATION,
        GucContext::Userset,
        GucFlags::default(),
    );
    GucRegistry::define_bool_guc(
        c"pg_clip.share_model_weights",
        c"Share the model's weights between backends through a prepared, memory-mapped model file.",
        c"Off gives every backend a private copy (about 350 MB for the fp32 image tower).",
        &SHARE_MODEL_WEIGHTS,
        GucContext::Suset,
        GucFlags::default(),
    );
    GucRegistry::define_string_guc(
        c"pg_clip.prepared_model_dir",
        c"Directory for prepared (optimized, pre-packed) model files that backends share.",
        c"Empty means pgsql_tmp_pg_clip inside the data directory, which base backups leave out. Files there are \
          specific to this CPU and ONNX Runtime version; pg_clip makes them on first use and rebuilds any that do \
          not verify.",
        &PREPARED_MODEL_DIR,
        GucContext::Suset,
        GucFlags::SUPERUSER_ONLY,
    );
    GucRegistry::define_enum_guc(
        c"pg_clip.image_precision",
        c"Which image tower: fp32 (reproduces stored vectors) or the int8 one a model may offer.",
        c"int8 is about 3.5x faster but its vectors are not bit-compatible with fp32 ones (see the README).",
        &IMAGE_PRECISION,
        GucContext::Suset,
        GucFlags::default(),
    );
    GucRegistry::define_enum_guc(
        c"pg_clip.text_model",
        c"Which text encoder clip_embed_text runs: clip (OpenAI CLIP's, English) or multilingual.",
        c"multilingual is sentence-transformers clip-ViT-B-32-multilingual-v1's text encoder (50+ languages, Russian \
          among them), in the same space as the image vectors; the model directory must have it \
          (model/export.py --towers image,text,multilingual).",
        &TEXT_MODEL,
        GucContext::Userset,
        GucFlags::default(),
    );
    GucRegistry::define_enum_guc(
        c"pg_clip.text_precision",
        c"Which multilingual text tower: fp32 or the int8 one a model may offer (the CLIP text tower is fp32 only).",
        c"int8 is about 3x faster, its vectors about 2e-4 of 1 - cos from fp32 (see the README).",
        &TEXT_PRECISION,
        GucContext::Suset,
        GucFlags::default(),
    );
    GucRegistry::define_enum_guc(
        c"pg_clip.image_transparency",
        c"What becomes of transparent pixels: drop (transformers 4.x, the default) or white (transformers 5.x).",
        c"drop keeps the colour stored under a transparent pixel, as Pillow's convert('RGB'); white composites the \
          image onto white first. Use the one the stored vectors were made with.",
        &IMAGE_TRANSPARENCY,
        GucContext::Userset,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"pg_clip.embedding_cache_size",
        c"How many recent inputs' embeddings each backend remembers (0 disables the cache).",
        c"Lets a query that evaluates clip_embed_bytes once per row (a sequential scan) pay for one inference.",
        &EMBEDDING_CACHE_SIZE,
        0,
        4096,
        GucContext::Userset,
        GucFlags::default(),
    );
    GucRegistry::define_string_guc(
        c"pg_clip.allowed_hosts",
        c"Hosts clip_embed_url may fetch from: names, *.domain patterns or addresses, comma-separated.",
        c"Empty allows any host whose addresses pass the address policy. Every redirect hop must match too.",
        &ALLOWED_HOSTS,
        GucContext::Suset,
        GucFlags::default(),
    );
    GucRegistry::define_bool_guc(
        c"pg_clip.allow_private_addresses",
        c"Let clip_embed_url connect to loopback, private, link-local and other non-public addresses.",
        c"Cloud metadata addresses stay refused; list one in pg_clip.allowed_private_networks to reach it.",
        &ALLOW_PRIVATE_ADDRESSES,
        GucContext::Suset,
        GucFlags::default(),
    );
    GucRegistry::define_string_guc(
        c"pg_clip.allowed_private_networks",
        c"Non-public networks clip_embed_url may connect to, as CIDR (10.1.2.0/24) or addresses, comma-separated.",
        c"For an internal image store, without opening every private address.",
        &ALLOWED_PRIVATE_NETWORKS,
        GucContext::Suset,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"pg_clip.fetch_connect_timeout",
        c"How long clip_embed_url waits for a TCP (and TLS) connection.",
        c"",
        &FETCH_CONNECT_TIMEOUT_MS,
        100,
        600_000,
        GucContext::Userset,
        GucFlags::UNIT_MS,
    );
    GucRegistry::define_int_guc(
        c"pg_clip.fetch_timeout",
        c"How long one download attempt may take, redirects and body included.",
        c"Query cancel and statement_timeout stop a download sooner.",
        &FETCH_TIMEOUT_MS,
        100,
        3_600_000,
        GucContext::Userset,
        GucFlags::UNIT_MS,
    );
    GucRegistry::define_int_guc(
        c"pg_clip.fetch_retries",
        c"Further attempts after a timeout, a network error or an HTTP 5xx, 429 or 408, with backoff.",
        c"",
        &FETCH_RETRIES,
        0,
        10,
        GucContext::Userset,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"pg_clip.fetch_max_redirects",
        c"Most redirects one download follows; each hop is checked like the first URL.",
        c"",
        &FETCH_MAX_REDIRECTS,
        0,
        20,
        GucContext::Userset,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"pg_clip.fetch_concurrency",
        c"Downloads clip_embed_urls and clip_backfill keep in flight at once.",
        c"Memory in flight is bounded by this times pg_clip.max_image_bytes. A batch function's concurrency \
          argument can only lower it.",
        &FETCH_CONCURRENCY,
        1,
        64,
        GucContext::Suset,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"pg_clip.auto_embed_batch_size",
        c"Rows the auto-embed worker embeds per committed batch.",
        c"",
        &AUTO_EMBED_BATCH_SIZE,
        1,
        1000,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"pg_clip.auto_embed_naptime",
        c"Longest time the auto-embed worker sleeps between looks for pending rows (a URL and no vector).",
        c"Changes made with the triggers on wake it at their commit; this bounds how late it finds rows written with \
          the triggers off.",
        &AUTO_EMBED_NAPTIME_S,
        1,
        24 * 3600,
        GucContext::Sighup,
        GucFlags::UNIT_S,
    );
    GucRegistry::define_int_guc(
        c"pg_clip.auto_embed_max_attempts",
        c"Attempts the auto-embed worker makes on a photo that fails transiently (network, 5xx, 429) before it gives up.",
        c"A given-up row stays in clip_backfill_failures; clip_auto_embed_retry() queues it again.",
        &AUTO_EMBED_MAX_ATTEMPTS,
        1,
        100,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"pg_clip.auto_embed_retry_delay",
        c"Wait before the auto-embed worker's first retry of a transiently failed photo; each retry waits 4x longer.",
        c"",
        &AUTO_EMBED_RETRY_DELAY_MS,
        100,
        24 * 3600 * 1000,
        GucContext::Sighup,
        GucFlags::UNIT_MS,
    );
    GucRegistry::define_enum_guc(
        c"pg_clip.debug_auto_embed_fault",
        c"Testing only: the auto-embed worker raises this fault in every batch (none, error, panic).",
        c"",
        &AUTO_EMBED_FAULT,
        GucContext::Sighup,
        GucFlags::NO_SHOW_ALL,
    );
    // SAFETY: called from _PG_init, in the backend's main thread, with a static C string.
    unsafe { pg_sys::MarkGUCPrefixReserved(c"pg_clip".as_ptr()) };
}

fn string_setting(setting: &GucSetting<Option<CString>>) -> Option<String> {
    setting.get().map(|s| s.to_string_lossy().into_owned()).filter(|s| !s.trim().is_empty())
}

/// The model directory in force: the setting, or the one the install put under the share directory.
pub fn model_path() -> PathBuf {
    string_setting(&MODEL_PATH).map(PathBuf::from).unwrap_or_else(|| share_dir().join("pg_clip").join("model"))
}

/// The directory of named models: the setting, or the one the install puts under the share directory.
pub fn models_path() -> PathBuf {
    string_setting(&MODELS_PATH).map(PathBuf::from).unwrap_or_else(|| share_dir().join("pg_clip").join("models"))
}

/// The name of the model calls use when they name none (pg_clip.model; empty means `default`).
pub fn model_name() -> String {
    string_setting(&MODEL).map(|s| s.trim().to_string()).unwrap_or_else(|| crate::model::DEFAULT_MODEL.to_string())
}

/// The directory of the model called `name` (see `model::catalog::model_dir`).
pub fn model_dir(name: &str) -> crate::error::Result<PathBuf> {
    crate::model::catalog::model_dir(name, &model_path(), &models_path())
}

/// The ONNX Runtime library in force: the setting, or the one the install put under pkglibdir.
pub fn onnxruntime_path() -> PathBuf {
    string_setting(&ONNXRUNTIME_PATH)
        .map(PathBuf::from)
        .unwrap_or_else(|| pkglib_dir().join("pg_clip").join("libonnxruntime.so"))
}

pub fn intra_op_threads() -> usize {
    INTRA_OP_THREADS.get().max(1) as usize
}

pub fn embedding_cache_size() -> usize {
    EMBEDDING_CACHE_SIZE.get().max(0) as usize
}

pub fn image_limits() -> ImageLimits {
    ImageLimits {
        max_bytes: MAX_IMAGE_BYTES_KB.get().max(1) as usize * 1024,
        max_pixels: MAX_IMAGE_PIXELS.get().max(1) as u64,
    }
}

pub fn max_text_bytes() -> usize {
    MAX_TEXT_BYTES_KB.get().max(1) as usize * 1024
}

fn precision(setting: &GucSetting<PrecisionSetting>) -> Precision {
    match setting.get() {
        PrecisionSetting::Fp32 => Precision::Fp32,
        PrecisionSetting::Int8 => Precision::Int8,
    }
}

pub fn image_precision() -> Precision {
    precision(&IMAGE_PRECISION)
}

/// The text encoder in force for this session.
pub fn text_model() -> TextModel {
    match TEXT_MODEL.get() {
        TextModelSetting::Clip => TextModel::Clip,
        TextModelSetting::Multilingual => TextModel::Multilingual,
    }
}

/// The multilingual text tower's precision (the CLIP text tower has only fp32).
pub fn text_precision() -> Precision {
    precision(&TEXT_PRECISION)
}

/// What becomes of transparent pixels before the resize.
pub fn image_transparency() -> Transparency {
    match IMAGE_TRANSPARENCY.get() {
        TransparencySetting::Drop => Transparency::DropAlpha,
        TransparencySetting::White => Transparency::OntoWhite,
    }
}

/// Shared weights from the prepared-model directory in force, or a private session.
pub fn weight_sharing() -> WeightSharing {
    if !SHARE_MODEL_WEIGHTS.get() {
        return WeightSharing::Private;
    }
    match string_setting(&PREPARED_MODEL_DIR) {
        Some(dir) => WeightSharing::Shared { cache_dir: PathBuf::from(dir), former_default: None },
        // A name starting with pgsql_tmp: pg_basebackup, pg_rewind and pgBackRest skip it, and PostgreSQL's
        // documentation lets any file-level backup leave it out ("Any file or directory beginning with
        // pgsql_tmp can be omitted from the backup"). It is a cache that every node remakes or maps by
        // itself; PostgreSQL does not remove it (it clears base/pgsql_tmp and tablespaces' pgsql_tmp only).
        None => WeightSharing::Shared {
            cache_dir: data_dir().join(DEFAULT_PREPARED_DIR),
            former_default: Some(data_dir().join("pg_clip").join("prepared")),
        },
    }
}

/// Everything a download depends on. A batch function's `concurrency` argument may lower
/// pg_clip.fetch_concurrency, never raise it: the setting is what bounds a backend's memory in flight.
pub fn fetch_config(concurrency: Option<i32>) -> crate::error::Result<FetchConfig> {
    let policy = FetchPolicy {
        allow_private_addresses: ALLOW_PRIVATE_ADDRESSES.get(),
        allowed_private_networks: FetchPolicy::parse_networks(
            &string_setting(&ALLOWED_PRIVATE_NETWORKS).unwrap_or_default(),
        )?,
        allowed_hosts: FetchPolicy::parse_hosts(&string_setting(&ALLOWED_HOSTS).unwrap_or_default())?,
    };
    let ms = |setting: &GucSetting<i32>| Duration::from_millis(setting.get().max(1) as u64);
    Ok(FetchConfig {
        policy,
        connect_timeout: ms(&FETCH_CONNECT_TIMEOUT_MS),
        timeout: ms(&FETCH_TIMEOUT_MS),
        retries: FETCH_RETRIES.get().max(0) as u32,
        max_redirects: FETCH_MAX_REDIRECTS.get().max(0) as u32,
        max_bytes: image_limits().max_bytes,
        concurrency: concurrency.map_or(FETCH_CONCURRENCY.get(), |c| c.min(FETCH_CONCURRENCY.get())).max(1) as usize,
    })
}

/// What the auto-embed worker reads at the start of each round (after a reload, the new values).
#[derive(Debug, Clone, Copy)]
pub struct AutoEmbedSettings {
    pub batch_size: usize,
    pub naptime: Duration,
    pub max_attempts: i32,
    pub retry_delay: Duration,
    pub fault: AutoEmbedFault,
}

pub fn auto_embed() -> AutoEmbedSettings {
    AutoEmbedSettings {
        batch_size: AUTO_EMBED_BATCH_SIZE.get().max(1) as usize,
        naptime: Duration::from_secs(AUTO_EMBED_NAPTIME_S.get().max(1) as u64),
        max_attempts: AUTO_EMBED_MAX_ATTEMPTS.get().max(1),
        retry_delay: Duration::from_millis(AUTO_EMBED_RETRY_DELAY_MS.get().max(1) as u64),
        fault: AUTO_EMBED_FAULT.get(),
    }
}

/// Whether EXIF orientation is applied; the rest of the preprocessing comes from the model manifest.
pub fn exif_orientation() -> bool {
    EXIF_ORIENTATION.get()
}

fn share_dir() -> PathBuf {
    let mut buf = [0 as std::ffi::c_char; pg_sys::MAXPGPATH as usize];
    // SAFETY: my_exec_path is set by the postmaster before any backend runs SQL; get_share_path writes at
    // most MAXPGPATH bytes, NUL-terminated, into buf.
    unsafe {
        pg_sys::get_share_path(std::ptr::addr_of!(pg_sys::my_exec_path).cast(), buf.as_mut_ptr());
        PathBuf::from(CStr::from_ptr(buf.as_ptr()).to_string_lossy().into_owned())
    }
}

/// The default prepared-model directory, inside the data directory (see weight_sharing).
pub const DEFAULT_PREPARED_DIR: &str = "pgsql_tmp_pg_clip";

fn data_dir() -> PathBuf {
    // SAFETY: DataDir is set at postmaster start, before any backend runs SQL, and never freed.
    unsafe {
        if pg_sys::DataDir.is_null() {
            return PathBuf::from(".");
        }
        PathBuf::from(CStr::from_ptr(pg_sys::DataDir).to_string_lossy().into_owned())
    }
}

fn pkglib_dir() -> PathBuf {
    // SAFETY: pkglib_path is a NUL-terminated MAXPGPATH buffer filled in at backend start.
    unsafe {
        PathBuf::from(CStr::from_ptr(std::ptr::addr_of!(pg_sys::pkglib_path).cast()).to_string_lossy().into_owned())
    }
}
