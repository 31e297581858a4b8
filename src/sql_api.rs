//! Every SQL-callable function. Each one reads the settings, calls the pure core, and maps errors to
//! ErrorReports with their SQLSTATE. Nothing else happens here.

use pgrx::pg_sys::panic::ErrorReport;
use pgrx::prelude::*;
use pgrx::{PgLogLevel, PgSqlErrorCode};
use std::panic::{catch_unwind, AssertUnwindSafe};

use crate::backfill;
use crate::backfill::url_batch::{self, UrlOutcome};
use crate::error::{PgClipError, Result};
use crate::model::{self, EmbedRequest};
use crate::pgvector::Vector;
use crate::settings;

/// The settings in force for one call, with the model the call names (`model`) or else pg_clip.model.
fn embed_request(model: Option<&str>) -> Result<EmbedRequest> {
    let model_name = model.map(str::to_string).unwrap_or_else(settings::model_name);
    let model_dir = settings::model_dir(&model_name)?;
    Ok(EmbedRequest {
        model_name,
        model_dir,
        runtime_path: settings::onnxruntime_path(),
        intra_op_threads: settings::intra_op_threads(),
        limits: settings::image_limits(),
        exif_orientation: settings::exif_orientation(),
        cache_size: settings::embedding_cache_size(),
        max_text_bytes: settings::max_text_bytes(),
        precision: settings::image_precision(),
        sharing: settings::weight_sharing(),
        poll_interrupts,
        text_model: settings::text_model(),
        text_precision: settings::text_precision(),
        transparency: settings::image_transparency(),
    })
}

/// `embed_request`, raising its error (an unknown or invalid model name) for `function`.
fn embed_request_or_raise(model: Option<&str>, function: &'static str) -> EmbedRequest {
    embed_request(model).unwrap_or_else(|e| raise(e, function))
}

/// What a long wait inside the pure core calls between slices (waiting for another backend's preparation of
/// the model, for downloads): query cancel, statement_timeout and SIGTERM raise here, as in any Postgres
/// loop, and unwind through the core (which releases what it holds as it goes).
fn poll_interrupts() {
    pgrx::check_for_interrupts!();
    exit_if_postmaster_died();
}

/// Runs the pure core; a panic inside it becomes an error of our own instead of pgrx's XX000. An ERROR
/// raised by Postgres itself inside `f` (query cancel from check_for_interrupts) travels on unchanged.
fn guarded<T>(context: &'static str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(result) => result,
        Err(panic) if panic.is::<pgrx::pg_sys::panic::CaughtError>() => std::panic::resume_unwind(panic),
        Err(panic) => {
            Err(PgClipError::runtime(context, format!("internal error: {}", model::runtime::panic_message(&panic))))
        }
    }
}

/// Raises `error` as an ERROR with its SQLSTATE, message and hint. Never returns.
fn raise(error: impl std::borrow::Borrow<PgClipError>, function: &'static str) -> ! {
    error.borrow().raise(function)
}

fn emit_pending_warning() {
    for message in model::take_pending_warnings() {
        ErrorReport::new(PgSqlErrorCode::ERRCODE_WARNING, message, "pg_clip").report(PgLogLevel::WARNING);
    }
}

/// CLIP image embedding of an encoded image (JPEG, PNG, WebP, GIF, BMP, TIFF), L2-normalised.
///
/// STABLE, not IMMUTABLE: the result depends on pg_clip.model_path, pg_clip.exif_orientation and
/// pg_clip.image_transparency, so it must not be folded into cached plans or expression indexes. A STABLE
/// call in ORDER BY is evaluated once by an index scan; a sequential scan evaluates it per row, which the
/// per-backend cache turns into a lookup. COST 10000 (about 25 ms in the planner's units) tells the planner
/// one call is expensive, which favours plans that evaluate it once. PARALLEL RESTRICTED: a parallel worker
/// would load its own copy of the model (hundreds of MB) for one query.
#[pg_extern(stable, strict, parallel_restricted, cost = 10000)]
fn clip_embed_bytes(image: &[u8], fcinfo: pg_sys::FunctionCallInfo) -> Vector {
    embed_at_call_site(fcinfo, "clip_embed_bytes", None, |request| model::embed_image(image, request))
}

/// clip_embed_bytes with the model named (clip_models() lists them): the result does not depend on the
/// session's pg_clip.model, which is what a stored query, a view or a backfill of one model's column wants.
#[pg_extern(name = "clip_embed_bytes", stable, strict, parallel_restricted, cost = 10000)]
fn clip_embed_bytes_with_model(image: &[u8], model: &str, fcinfo: pg_sys::FunctionCallInfo) -> Vector {
    embed_at_call_site(fcinfo, "clip_embed_bytes", Some(model), |request| model::embed_image(image, request))
}

/// Text embedding of a query ("red backpack", "красный рюкзак"), in the same space as the image vectors, by the
/// encoder pg_clip.text_model chooses: `clip`, OpenAI CLIP's text tower (its BPE tokens: lower-cased, cleaned,
/// start/end tokens, truncated to the 77-token context), or `multilingual`, clip-ViT-B-32-multilingual-v1's
/// (BERT's cased WordPiece, [CLS] ... [SEP], truncated to 128 tokens); L2-normalised. Each tower loads on the
/// first text call that needs it, not before; both may be loaded in one backend. Labels as clip_embed_bytes
/// (STABLE: the result also depends on pg_clip.text_model); COST 2000 since either text tower costs about a
/// fifth of the image tower.
#[pg_extern(stable, strict, parallel_restricted, cost = 2000)]
fn clip_embed_text(query: &str, fcinfo: pg_sys::FunctionCallInfo) -> Vector {
    embed_at_call_site(fcinfo, "clip_embed_text", None, |request| model::embed_text(query, request))
}

/// clip_embed_text with the model named: that model's own text tower (CLIP's BPE, SigLIP's SentencePiece;
/// pg_clip.text_model = multilingual still picks the multilingual tower of a model that has one).
#[pg_extern(name = "clip_embed_text", stable, strict, parallel_restricted, cost = 2000)]
fn clip_embed_text_with_model(query: &str, model: &str, fcinfo: pg_sys::FunctionCallInfo) -> Vector {
    embed_at_call_site(fcinfo, "clip_embed_text", Some(model), |request| model::embed_text(query, request))
}

/// The ids the text encoder in force (pg_clip.text_model) sees for `query`: `[49406, ..., 49407]` (CLIP's
/// start and end tokens) or `[101, ..., 102]` (`[CLS]`, `[SEP]`), truncated as clip_embed_text truncates.
/// For debugging a query and for tests; the same errors as clip_embed_text (22023 empty, 54000 too long).
///
/// STABLE (the result depends on pg_clip.text_model and pg_clip.model_path), STRICT (NULL in, NULL out).
/// PARALLEL SAFE, unlike the embedding functions: it loads the tokenizer alone (a vocabulary file of about 1 MB,
/// tens of ms), no tower, so a parallel worker that runs it costs little. COST 100: a tokenization is
/// microseconds, the first call of a backend reads the vocabulary.
#[pg_extern(stable, strict, parallel_safe, cost = 100)]
fn clip_text_tokens(query: &str) -> Vec<i32> {
    text_tokens(query, None)
}

/// clip_text_tokens for the model named.
#[pg_extern(name = "clip_text_tokens", stable, strict, parallel_safe, cost = 100)]
fn clip_text_tokens_with_model(query: &str, model: &str) -> Vec<i32> {
    text_tokens(query, Some(model))
}

fn text_tokens(query: &str, model: Option<&str>) -> Vec<i32> {
    let request = embed_request_or_raise(model, "clip_text_tokens");
    match guarded("clip_text_tokens", || model::text_tokens(query, &request)) {
        // Every vocabulary is far below 2^31 entries (49,408; 119,547; SigLIP 2's 256,000).
        Ok(ids) => ids.into_iter().map(|id| id as i32).collect(),
        Err(e) => raise(e, "clip_text_tokens"),
    }
}

/// The common path of the embedding functions: the call site's remembered result if it has one (see
/// `call_site`), else the pure core with the session's settings, errors raised with their SQLSTATE.
fn embed_at_call_site(
    fcinfo: pg_sys::FunctionCallInfo,
    function: &'static str,
    model: Option<&str>,
    embed: impl FnOnce(&EmbedRequest) -> Result<std::sync::Arc<[f32]>>,
) -> Vector {
    // SAFETY: fcinfo is the live call info pgrx passes to the calling #[pg_extern] function.
    if let Some(values) = unsafe { call_site::cached(fcinfo) } {
        model::record_cache_hit();
        return Vector(values);
    }
    let request = embed_request_or_raise(model, function);
    let result = guarded(function, || embed(&request));
    emit_pending_warning();
    match result {
        Ok(embedding) => {
            // SAFETY: as above.
            unsafe { call_site::store(fcinfo, &embedding) };
            Vector(embedding.to_vec())
        }
        Err(e) => raise(e, function),
    }
}

/// A result remembered by one call site for the rest of the query, when its argument cannot change
/// during the query: a constant, or an external parameter such as `$1`.
///
/// Why: for `ORDER BY image_embedding <=> clip_embed_bytes($1) LIMIT 50` an index scan evaluates the
/// ORDER BY argument once to start the scan and then once more for every row it returns (the sort key
/// is projected as a hidden column). Postgres gives each call site an FmgrInfo whose fn_extra lives as
/// long as the query; `get_fn_expr_arg_stable` says whether the argument is fixed for that time. With
/// both, every evaluation after the first is a pointer read, whatever the size of the photo.
mod call_site {
    use pgrx::pg_sys;

    /// Layout in fn_extra: the number of floats, then the floats.
    const HEADER: usize = std::mem::size_of::<usize>();

    /// # Safety
    /// `fcinfo` must be the FunctionCallInfo of the current call.
    pub unsafe fn cached(fcinfo: pg_sys::FunctionCallInfo) -> Option<Vec<f32>> {
        // SAFETY: flinfo and fn_extra belong to this call site; fn_extra is null or was written by
        // `store` below, in fn_mcxt, which outlives every call of this query.
        unsafe {
            let flinfo = (*fcinfo).flinfo;
            if flinfo.is_null() || (*flinfo).fn_extra.is_null() {
                return None;
            }
            let base = (*flinfo).fn_extra as *const u8;
            let len = (base as *const usize).read();
            Some(std::slice::from_raw_parts(base.add(HEADER) as *const f32, len).to_vec())
        }
    }

    /// # Safety
    /// `fcinfo` must be the FunctionCallInfo of the current call.
    pub unsafe fn store(fcinfo: pg_sys::FunctionCallInfo, values: &[f32]) {
        // SAFETY: as above; the allocation is sized for the header and the floats, and MAXALIGNed.
        unsafe {
            let flinfo = (*fcinfo).flinfo;
            if flinfo.is_null() || (*flinfo).fn_expr.is_null() {
                return;
            }
            // Every argument (the input, and the model's name when the call gives one) fixed for the query.
            for arg in 0..(*fcinfo).nargs as i32 {
                if !pg_sys::get_fn_expr_arg_stable(flinfo, arg) {
                    return;
                }
            }
            let size = HEADER + std::mem::size_of_val(values);
            let base = pg_sys::MemoryContextAlloc((*flinfo).fn_mcxt, size) as *mut u8;
            (base as *mut usize).write(values.len());
            std::ptr::copy_nonoverlapping(values.as_ptr(), base.add(HEADER) as *mut f32, values.len());
            (*flinfo).fn_extra = base as *mut std::ffi::c_void;
        }
    }
}

/// The model in force for this session, whether this backend has loaded it, and its counters.
/// VOLATILE: it reports counters that every embedding call changes.
#[pg_extern(volatile, parallel_restricted)]
#[allow(clippy::type_complexity)]
fn clip_model_info() -> TableIterator<
    'static,
    (
        name!(model_name, String),
        name!(model_version, String),
        name!(dimensions, i32),
        name!(random_weights, bool),
        name!(model_path, String),
        name!(image_model_file, String),
        name!(image_model_sha256, String),
        name!(loaded, bool),
        name!(load_ms, Option<f64>),
        name!(onnxruntime_path, String),
        name!(onnxruntime_version, Option<String>),
        name!(intra_op_threads, i32),
        name!(inferences, i64),
        name!(cache_hits, i64),
        name!(preprocess_ms_total, f64),
        name!(inference_ms_total, f64),
        name!(text_loaded, bool),
        name!(precision, String),
        name!(load_mode, Option<String>),
        name!(load_note, Option<String>),
        name!(prepared_path, Option<String>),
        name!(prepared_bytes, Option<i64>),
        name!(model_private_mb, Option<f64>),
        // Appended, never inserted: applications may read the columns by position.
        name!(load_waited_ms, Option<f64>),
        name!(load_waited_for_pid, Option<i32>),
        name!(text_load_mode, Option<String>),
        name!(text_load_waited_ms, Option<f64>),
        name!(text_load_waited_for_pid, Option<i32>),
        // pgrx's TableIterator takes at most 32 columns, and these four make 32: a further column needs another
        // shape (a second function, or a composite), not one more tuple element.
        name!(text_model, String),
        name!(text_random_weights, Option<bool>),
        name!(text_precision, String),
        name!(text_model_loaded, bool),
    ),
> {
    let request = embed_request_or_raise(None, "clip_model_info");
    let info = match guarded("clip_model_info", || model::model_info(&request)) {
        Ok(info) => info,
        Err(e) => raise(e, "clip_model_info"),
    };
    let ms = |d: std::time::Duration| d.as_secs_f64() * 1000.0;
    TableIterator::once((
        info.model_name,
        info.model_version,
        info.embedding_dim as i32,
        info.random_weights,
        info.model_dir.display().to_string(),
        info.image_model_file.display().to_string(),
        info.image_model_sha256,
        info.loaded,
        info.load_time.map(ms),
        info.onnxruntime_path.display().to_string(),
        info.onnxruntime_version,
        info.intra_op_threads as i32,
        info.stats.inferences as i64,
        info.stats.cache_hits as i64,
        ms(info.stats.preprocess_time),
        ms(info.stats.inference_time),
        info.text_loaded,
        format!("{:?}", request.precision).to_lowercase(),
        info.loaded.then(|| info.image_load.mode.to_string()),
        info.image_load.note.clone(),
        info.image_load.prepared_path.as_ref().map(|p| p.display().to_string()),
        info.image_load.prepared_bytes.map(|b| b as i64),
        info.image_load.private_kb.map(|kb| kb as f64 / 1024.0),
        info.image_load.waited.map(ms),
        info.image_load.waited_for_pid.map(|pid| pid as i32),
        // The text tower in force (pg_clip.text_model), as the columns below describe it.
        info.text_model_loaded.then(|| info.text_load.mode.to_string()),
        info.text_load.waited.map(ms),
        info.text_load.waited_for_pid.map(|pid| pid as i32),
        info.text_model.name().to_string(),
        info.text_random_weights,
        format!("{:?}", info.text_precision).to_lowercase(),
        info.text_model_loaded,
    ))
}

/// The models this cluster has: `default` (pg_clip.model_path) and every model directory under
/// pg_clip.models_path, with what their manifests say. Reads manifests only (no model is loaded). A directory
/// whose manifest cannot be used is listed with the reason in `problem`. `in_use`: the session's pg_clip.model.
#[pg_extern(volatile, parallel_safe)]
#[allow(clippy::type_complexity)]
fn clip_models() -> TableIterator<
    'static,
    (
        name!(name, String),
        name!(model_name, Option<String>),
        name!(model_version, Option<String>),
        name!(family, Option<String>),
        name!(dimensions, Option<i32>),
        name!(towers, Option<Vec<String>>),
        name!(random_weights, Option<bool>),
        name!(bytes, Option<i64>),
        name!(path, String),
        name!(in_use, bool),
        name!(problem, Option<String>),
    ),
> {
    let in_use = settings::model_name();
    let rows: Vec<_> = model::catalog::installed(&settings::model_path(), &settings::models_path())
        .into_iter()
        .map(|m| {
            let path = m.dir.display().to_string();
            let used = m.name == in_use;
            match m.model {
                Ok(dir) => {
                    let manifest = &dir.manifest;
                    (
                        m.name,
                        Some(manifest.model_name.clone()),
                        Some(manifest.model_version.clone()),
                        Some(manifest.family().to_string()),
                        Some(manifest.embedding_dim as i32),
                        Some(manifest.towers().into_iter().map(str::to_string).collect()),
                        Some(manifest.random_weights),
                        Some(manifest.files.values().map(|f| f.bytes as i64).sum()),
                        path,
                        used,
                        None,
                    )
                }
                Err(e) => (m.name, None, None, None, None, None, None, None, path, used, Some(e.to_string())),
            }
        })
        .collect();
    TableIterator::new(rows)
}

/// Drops this backend's model session and embedding cache, returning whether one was loaded. The next
/// embedding call loads the model again (useful after replacing model files, and to free memory).
#[pg_extern(volatile, parallel_restricted)]
fn clip_unload_model() -> bool {
    model::unload()
}

/// Embeds URLs through the batch pipeline with the session's settings. The downloads run on the fetch
/// threads; this thread waits for them in short slices and checks for query cancel and statement_timeout
/// between slices (`poll_interrupts`), so a stalled download stops within about a tenth of a second of the
/// interrupt.
fn embed_urls_or_raise(
    urls: &[Option<&str>],
    prefetch: &[&str],
    concurrency: Option<i32>,
    function: &'static str,
    model: Option<&str>,
) -> Vec<UrlOutcome> {
    let request = embed_request_or_raise(model, function);
    let fetch = settings::fetch_config(concurrency).unwrap_or_else(|e| raise(e, function));
    let result = guarded(function, || url_batch::embed_urls(urls, prefetch, &request, &fetch));
    emit_pending_warning();
    result.unwrap_or_else(|e| raise(e, function))
}

/// A background worker whose postmaster died must not linger in a long download: the new postmaster will
/// not start while an old process still holds the shared memory. (A session's backend finds out when its
/// client goes; a worker has none.)
fn exit_if_postmaster_died() {
    // SAFETY: reading process globals; proc_exit runs the exit callbacks and never returns.
    // MyBackendType, not IsBackgroundWorker: PostgreSQL 17 replaced that flag (AmBackgroundWorkerProcess()).
    unsafe {
        if pg_sys::MyBackendType == pg_sys::BackendType::B_BG_WORKER && libc::getppid() != pg_sys::PostmasterPid {
            pg_sys::proc_exit(1);
        }
    }
}

/// One URL's outcome as the try-variants return it: the vector, or NULL plus the reason.
type UrlRow = (Option<Vector>, Option<String>, Option<String>, Option<i32>, i32, Option<bool>);

fn url_row(outcome: UrlOutcome) -> UrlRow {
    let error = outcome.error.as_deref();
    (
        outcome.embedding.map(|e| Vector(e.to_vec())),
        error.map(|e| e.sqlstate_code().to_string()),
        error.map(|e| format!("pg_clip: {e}")),
        outcome.http_status.map(i32::from),
        outcome.attempts as i32,
        error.map(|e| e.is_transient()),
    )
}

/// CLIP embedding of the image at an http(s) URL: downloaded under the fetch policy and limits
/// (pg_clip.allowed_hosts, pg_clip.allow_private_addresses, pg_clip.fetch_*, pg_clip.max_image_bytes),
/// then exactly as clip_embed_bytes. Errors carry a SQLSTATE per class (README, "Errors").
///
/// VOLATILE: the same URL may serve different bytes, or fail, from one call to the next. PARALLEL
/// RESTRICTED as the other embedding functions. COST 100000: a download dwarfs even an inference.
#[pg_extern(volatile, strict, parallel_restricted, cost = 100000)]
fn clip_embed_url(url: &str) -> Vector {
    embed_url(url, None)
}

/// clip_embed_url with the model named.
#[pg_extern(name = "clip_embed_url", volatile, strict, parallel_restricted, cost = 100000)]
fn clip_embed_url_with_model(url: &str, model: &str) -> Vector {
    embed_url(url, Some(model))
}

fn embed_url(url: &str, model: Option<&str>) -> Vector {
    let outcome =
        embed_urls_or_raise(&[Some(url)], &[], None, "clip_embed_url", model).pop().expect("one outcome per URL");
    match (outcome.embedding, outcome.error) {
        (Some(embedding), _) => Vector(embedding.to_vec()),
        (None, Some(error)) => raise(error, "clip_embed_url"),
        (None, None) => raise(PgClipError::runtime("clip_embed_url", "no embedding and no error"), "clip_embed_url"),
    }
}

/// clip_embed_url that never raises for a bad URL: one row with the vector, or a NULL vector plus the
/// reason (SQLSTATE, message, HTTP status, attempts, and whether a later retry may succeed). For an
/// UPDATE that must finish while some URLs fail:
/// `UPDATE t SET (v, err) = (SELECT embedding, error FROM clip_try_embed_url(t.url))`.
/// Settings and model problems still raise: they concern every row, not this one.
#[pg_extern(volatile, strict, parallel_restricted, cost = 100000)]
#[allow(clippy::type_complexity)]
fn clip_try_embed_url(
    url: &str,
) -> TableIterator<
    'static,
    (
        name!(embedding, Option<Vector>),
        name!(sqlstate, Option<String>),
        name!(error, Option<String>),
        name!(http_status, Option<i32>),
        name!(attempts, i32),
        name!(transient, Option<bool>),
    ),
> {
    let outcome = embed_urls_or_raise(&[Some(url)], &[], None, "clip_try_embed_url", None).pop();
    TableIterator::new(outcome.map(url_row))
}

/// Embeds many URLs at once: up to pg_clip.fetch_concurrency downloads in flight (`concurrency` may lower
/// it), decoding on the fetch threads and inference in small batches on this one. One row per element,
/// `ord` its 1-based position; a failed URL has a NULL embedding and the reason, like clip_try_embed_url.
/// `prefetch` names the URLs of the caller's next batch: their downloads start now, so the slowest
/// download of this batch does not leave the CPU idle (clip_backfill uses it). Duplicates are fetched once.
#[pg_extern(volatile, parallel_restricted, cost = 100000)]
#[allow(clippy::type_complexity)]
fn clip_embed_urls(
    urls: Option<Array<&str>>,
    concurrency: default!(Option<i32>, "NULL"),
    prefetch: default!(Option<Array<&str>>, "NULL"),
) -> TableIterator<
    'static,
    (
        name!(ord, i32),
        name!(embedding, Option<Vector>),
        name!(sqlstate, Option<String>),
        name!(error, Option<String>),
        name!(http_status, Option<i32>),
        name!(attempts, i32),
        name!(transient, Option<bool>),
    ),
> {
    let Some(urls) = urls else { return TableIterator::new(Vec::new()) };
    let urls: Vec<Option<&str>> = urls.iter().collect();
    let prefetch: Vec<&str> = prefetch.as_ref().map(|p| p.iter().flatten().collect()).unwrap_or_default();
    if concurrency.is_some_and(|c| c < 1) {
        raise(
            PgClipError::BadSetting { setting: "concurrency", reason: "must be at least 1".into() },
            "clip_embed_urls",
        );
    }
    let outcomes = embed_urls_or_raise(&urls, &prefetch, concurrency, "clip_embed_urls", None);
    let rows: Vec<_> = outcomes
        .into_iter()
        .enumerate()
        .map(|(i, outcome)| {
            let (embedding, sqlstate, error, status, attempts, transient) = url_row(outcome);
            (i as i32 + 1, embedding, sqlstate, error, status, attempts, transient)
        })
        .collect();
    TableIterator::new(rows)
}

/// Asks for this database's auto-embed worker to be woken when the transaction commits (and started if it
/// is not running: always when `start_worker`). The triggers and clip_auto_embed's functions call it;
/// `start_worker` refuses if the library is not preloaded, since the worker needs its shared memory.
#[pg_extern(volatile, parallel_unsafe)]
fn clip_auto_embed_wake(start_worker: bool) {
    if start_worker && !backfill::registry::preloaded() {
        raise(
            PgClipError::Prerequisite {
                what: "automatic embedding needs pg_clip in shared_preload_libraries".into(),
                hint: "ALTER SYSTEM SET shared_preload_libraries = 'pg_clip'; then restart the server (add to the \
                       list if it has other libraries)."
                    .into(),
            },
            "clip_auto_embed",
        );
    }
    backfill::registry::wake_at_commit(start_worker);
}

/// This database's auto-embed worker, as shared memory shows it: pid and state (NULL pid: none running),
/// and when it started. VOLATILE: it changes by itself.
#[pg_extern(volatile, parallel_safe)]
#[allow(clippy::type_complexity)]
fn clip_auto_embed_worker() -> TableIterator<
    'static,
    (
        name!(pid, Option<i32>),
        name!(state, Option<String>),
        name!(started_at, Option<pgrx::datum::TimestampWithTimeZone>),
    ),
> {
    // SAFETY: MyDatabaseId is set for a connected backend.
    let info = backfill::registry::worker_info(unsafe { pg_sys::MyDatabaseId });
    let state = match (backfill::registry::preloaded(), info.state) {
        (false, _) => Some("unavailable: pg_clip is not in shared_preload_libraries".to_string()),
        (true, None) => Some("not running".to_string()),
        (true, Some(state)) => Some(state.to_string()),
    };
    let started = info.started_ms.and_then(|ms| {
        // Unix epoch ms to Postgres's timestamptz (microseconds since 2000-01-01).
        pgrx::datum::TimestampWithTimeZone::try_from((ms - 946_684_800_000) * 1000).ok()
    });
    TableIterator::once((info.pid, state, started))
}

/// What this node (every backend and worker of this server) has inferred since the server started; NULL when
/// the library is not preloaded (no shared memory to count in). On Citus, clip_cluster_model_info() shows it
/// for every node: which node ran the model for a search or a backfill.
#[pg_extern(volatile, parallel_safe)]
fn clip_node_inferences() -> Option<i64> {
    crate::model::node_stats::total().map(|n| n as i64)
}

// Then the SQL of the engine and of automatic embedding: they grant on, and call, the functions above.
pgrx::extension_sql_file!(
    "../sql/backfill.sql",
    name = "backfill",
    requires = [clip_embed_urls, clip_embed_url, clip_try_embed_url, clip_model_info]
);
pgrx::extension_sql_file!(
    "../sql/distributed.sql",
    name = "distributed",
    requires = ["backfill", clip_node_inferences, clip_model_info]
);
pgrx::extension_sql_file!("../sql/auto_embed.sql", name = "auto_embed", finalize);
