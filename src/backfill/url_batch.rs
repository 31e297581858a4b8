//! Embedding images by URL, many at a time: downloads run on the fetch threads (at most
//! `FetchConfig::concurrency` in flight), each body is decoded and preprocessed on a decode thread, and the
//! backend's own thread runs inference on whatever tensors are ready, a few per run, while the next
//! downloads proceed. No Postgres here: the request's `poll_interrupts` (called while the model loads and
//! between waits for downloads) may unwind (query cancel); the in-flight downloads are then dropped, which
//! aborts them.
//!
//! The pipeline outlives one call so that a batch's slowest download does not idle the CPU: a caller that
//! knows its next batch (the backfill procedure) passes it as `prefetch`; those downloads start now and
//! their embeddings wait, already computed, for the call that asks for them.

use once_cell::sync::Lazy;
use std::collections::{HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::error::{PgClipError, Result};
use crate::fetch::{Downloads, FetchConfig, Fetcher, Finished, Process};
use crate::image;
use crate::model::{state, EmbedRequest};

/// What happened to one URL.
#[derive(Debug, Clone)]
pub struct UrlOutcome {
    pub embedding: Option<Arc<[f32]>>,
    pub error: Option<Arc<PgClipError>>,
    pub http_status: Option<u16>,
    pub attempts: u32,
}

impl UrlOutcome {
    fn failed(error: PgClipError, attempts: u32) -> Self {
        UrlOutcome { http_status: error.http_status(), error: Some(Arc::new(error)), embedding: None, attempts }
    }
}

/// Images per inference run. Batching a few amortises ONNX Runtime's per-run overhead; more would only
/// delay the first results and the next check for query cancel (about 80 ms per image on one thread).
const INFERENCE_BATCH: usize = 4;

/// How long the backend's thread waits for a download before checking for query cancel again.
const POLL: Duration = Duration::from_millis(50);

struct Pipeline {
    /// The settings and model the downloads and embeddings were made for.
    key: u64,
    downloads: Downloads<Vec<f32>>,
    /// Download id -> URL, for downloads not yet finished.
    in_flight: HashMap<u64, String>,
    pending: HashSet<String>,
    /// Finished URLs not yet returned to a caller.
    done: HashMap<String, UrlOutcome>,
    next_id: u64,
}

static PIPELINE: Lazy<Mutex<Option<Pipeline>>> = Lazy::new(|| Mutex::new(None));

fn pipeline_key(request: &EmbedRequest, fetch: &FetchConfig, onnx_sha256: &str) -> u64 {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    fetch.hash(&mut hasher);
    request.model_dir.hash(&mut hasher);
    onnx_sha256.hash(&mut hasher);
    format!("{:?}", request.precision).hash(&mut hasher);
    request.exif_orientation.hash(&mut hasher);
    request.transparency.hash(&mut hasher);
    request.limits.hash(&mut hasher);
    hasher.finish()
}

/// Embeds every URL in `urls` (None gives a NULL-input failure), in order, one outcome each; duplicates
/// are fetched once. `prefetch` starts downloads for a later call. Errors that concern one URL are in its
/// outcome; the Err is for the call as a whole (the model cannot load, the fetch threads cannot start).
pub fn embed_urls(
    urls: &[Option<&str>],
    prefetch: &[&str],
    request: &EmbedRequest,
    fetch: &FetchConfig,
) -> Result<Vec<UrlOutcome>> {
    // Load the model first: its errors are the call's, and the decode threads need its preprocessing.
    let (preprocess, tensor_len, onnx_sha256) = {
        let mut state = state();
        let encoder = state.encoder(request)?;
        (request.preprocess_config(&encoder.model.manifest), encoder.tensor_len(), encoder.key.onnx_sha256.clone())
    };
    let fetcher = Fetcher::get()?;
    let key = pipeline_key(request, fetch, &onnx_sha256);

    // Taken out of the static for the duration of the call: if poll_interrupts unwinds, it is dropped
    // here, which aborts its downloads; a later call starts afresh.
    let mut pipeline = match PIPELINE.lock().unwrap_or_else(|p| p.into_inner()).take() {
        Some(p) if p.key == key => p,
        _ => Pipeline {
            key,
            downloads: Downloads::default(),
            in_flight: HashMap::new(),
            pending: HashSet::new(),
            done: HashMap::new(),
            next_id: 0,
        },
    };

    let wanted: Vec<&str> = urls.iter().flatten().copied().collect();
    let keep: HashSet<&str> = wanted.iter().chain(prefetch).copied().collect();
    pipeline.done.retain(|url, _| keep.contains(url.as_str()));
    let mut jobs = Vec::new();
    for url in wanted.iter().chain(prefetch) {
        if !pipeline.done.contains_key(*url) && pipeline.pending.insert(url.to_string()) {
            pipeline.next_id += 1;
            pipeline.in_flight.insert(pipeline.next_id, url.to_string());
            jobs.push((pipeline.next_id, url.to_string()));
        }
    }
    let limits = request.limits;
    let process: Process<Vec<f32>> = Arc::new(move |bytes: &[u8]| {
        let mut pixels = vec![0f32; tensor_len];
        image::preprocess_into(bytes, &limits, &preprocess, &mut pixels)?;
        Ok(pixels)
    });
    fetcher.start(&mut pipeline.downloads, jobs, fetch, process)?;

    let missing = |p: &Pipeline| wanted.iter().any(|url| !p.done.contains_key(*url));
    while missing(&pipeline) {
        (request.poll_interrupts)();
        if pipeline.downloads.outstanding() == 0 {
            // Cannot happen (every task reports, even one that panics); never wait forever if it does.
            let lost: Vec<&str> = wanted.iter().copied().filter(|url| !pipeline.done.contains_key(*url)).collect();
            for url in lost {
                let error = PgClipError::runtime("downloading", "no result arrived for this URL");
                pipeline.done.insert(url.to_string(), UrlOutcome::failed(error, 0));
            }
            break;
        }
        let mut ready = Vec::new();
        let mut wait = POLL;
        while ready.len() < INFERENCE_BATCH {
            let Some(finished) = pipeline.downloads.next(wait) else { break };
            wait = Duration::ZERO;
            if let Some(item) = take_finished(&mut pipeline, finished, &keep) {
                ready.push(item);
            }
        }
        if !ready.is_empty() {
            infer(&mut pipeline, ready, request)?;
        }
    }

    let outcomes = urls
        .iter()
        .map(|url| match url {
            Some(url) => pipeline.done[*url].clone(),
            None => {
                UrlOutcome::failed(PgClipError::InvalidUrl { url: "NULL".into(), reason: "the URL is NULL".into() }, 0)
            }
        })
        .collect();
    for url in &wanted {
        pipeline.done.remove(*url);
    }
    *PIPELINE.lock().unwrap_or_else(|p| p.into_inner()) = Some(pipeline);
    Ok(outcomes)
}

/// A download that finished: a failure goes straight to `done`, a tensor is returned for inference.
/// Results for URLs nobody wants any more (a prefetch the caller did not follow up) are dropped.
fn take_finished(
    pipeline: &mut Pipeline,
    finished: Finished<Vec<f32>>,
    keep: &HashSet<&str>,
) -> Option<(String, Vec<f32>, Option<u16>, u32)> {
    let url = pipeline.in_flight.remove(&finished.id)?;
    pipeline.pending.remove(&url);
    if !keep.contains(url.as_str()) {
        return None;
    }
    match finished.result {
        Ok(tensor) => Some((url, tensor, finished.http_status, finished.attempts)),
        Err(error) => {
            let mut outcome = UrlOutcome::failed(error, finished.attempts);
            outcome.http_status = outcome.http_status.or(finished.http_status);
            pipeline.done.insert(url, outcome);
            None
        }
    }
}

/// One inference run over the ready tensors; every image gets its embedding, or the run's error.
fn infer(
    pipeline: &mut Pipeline,
    ready: Vec<(String, Vec<f32>, Option<u16>, u32)>,
    request: &EmbedRequest,
) -> Result<()> {
    let mut state = state();
    let encoder = state.encoder(request)?;
    let started = Instant::now();
    let mut pixels = Vec::with_capacity(ready.len() * encoder.tensor_len());
    for (_, tensor, _, _) in &ready {
        pixels.extend_from_slice(tensor);
    }
    let result = encoder.embed(&pixels, ready.len());
    state.stats.inference_time += started.elapsed();
    match result {
        Ok(embeddings) => {
            state.stats.inferences += ready.len() as u64;
            crate::model::node_stats::add(ready.len() as u64);
            for ((url, _, status, attempts), mut embedding) in ready.into_iter().zip(embeddings) {
                crate::pgvector::l2_normalize(&mut embedding);
                let outcome =
                    UrlOutcome { embedding: Some(Arc::from(embedding)), error: None, http_status: status, attempts };
                pipeline.done.insert(url, outcome);
            }
        }
        Err(error) => {
            let error = Arc::new(error);
            for (url, _, status, attempts) in ready {
                let outcome = UrlOutcome { embedding: None, error: Some(error.clone()), http_status: status, attempts };
                pipeline.done.insert(url, outcome);
            }
        }
    }
    Ok(())
}

/// Drops the pipeline and every download in it (clip_unload_model).
pub fn reset() {
    PIPELINE.lock().unwrap_or_else(|p| p.into_inner()).take();
}
