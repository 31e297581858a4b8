//! Model files, the ONNX Runtime session per backend, and the image embedding pipeline built on them.
//! No SQL here: `sql_api` reads the settings into `EmbedRequest` and maps errors.

pub mod cache;
pub mod checksum;
pub mod encoder;
pub mod manifest;
pub mod prepared;
pub mod runtime;

use once_cell::sync::Lazy;
use std::hash::{Hash, Hasher};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use crate::error::Result;
use crate::image::{self, ImageLimits};
use crate::tokenizer::ClipTokenizer;
use cache::EmbeddingCache;
use encoder::{ImageEncoder, LoadReport, Precision, Tower, TowerKind, WeightSharing};
use manifest::ModelDir;

/// Everything an embedding (image or text) depends on besides the input, as read from the settings.
#[derive(Debug, Clone)]
pub struct EmbedRequest {
    pub model_dir: PathBuf,
    pub runtime_path: PathBuf,
    pub intra_op_threads: usize,
    pub limits: ImageLimits,
    pub exif_orientation: bool,
    pub cache_size: usize,
    pub max_text_bytes: usize,
    pub precision: Precision,
    pub sharing: WeightSharing,
    /// Called while a load waits for another backend's preparation of the same model; may unwind (the SQL
    /// layer passes CHECK_FOR_INTERRUPTS, so query cancel, statement_timeout and SIGTERM end the wait).
    pub poll_interrupts: fn(),
}

impl EmbedRequest {
    /// Whether a loaded tower is the one this request asks for (else it is replaced).
    fn wants(&self, tower: &Tower, precision: Precision) -> bool {
        tower.key.model_dir == self.model_dir
            && tower.key.intra_op_threads == self.intra_op_threads
            && tower.key.precision == precision
            && tower.key.sharing == self.sharing
    }
}

/// Counters for this backend, reported by clip_model_info() (tests count inferences per query with them).
#[derive(Debug, Clone, Default)]
pub struct Stats {
    pub inferences: u64,
    pub cache_hits: u64,
    pub preprocess_time: Duration,
    pub inference_time: Duration,
}

pub(crate) struct BackendState {
    encoder: Option<ImageEncoder>,
    image_load: LoadReport,
    /// The text tower and its tokenizer: loaded only when text is first embedded.
    text: Option<(Tower, ClipTokenizer)>,
    text_load: LoadReport,
    loaded_at: Option<SystemTime>,
    cache: EmbeddingCache,
    pub(crate) stats: Stats,
    pending_warning: Option<String>,
    /// The model directory whose random weights this backend already warned about (once is enough).
    warned_random: Option<PathBuf>,
}

/// The backend's model state. Postgres runs one query at a time per backend, so the lock is never
/// contended; it is a Mutex so that worker threads of a later batch pipeline can share the session.
static STATE: Lazy<Mutex<BackendState>> = Lazy::new(|| {
    Mutex::new(BackendState {
        encoder: None,
        image_load: LoadReport::default(),
        text: None,
        text_load: LoadReport::default(),
        loaded_at: None,
        cache: EmbeddingCache::new(0),
        stats: Stats::default(),
        pending_warning: None,
        warned_random: None,
    })
});

pub(crate) fn state() -> MutexGuard<'static, BackendState> {
    // A panic while holding the lock is caught and reported as an error; the state stays usable.
    STATE.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl BackendState {
    fn warn_if_random(&mut self, tower: &Tower) {
        if tower.model.manifest.random_weights && self.warned_random.as_ref() != Some(&tower.model.dir) {
            self.pending_warning = Some(random_weights_warning(tower));
            self.warned_random = Some(tower.model.dir.clone());
        }
    }

    /// The encoder for `request`, loading it (lazily, once) or replacing it when the model directory or
    /// thread count changed since it was loaded.
    pub(crate) fn encoder(&mut self, request: &EmbedRequest) -> Result<&mut ImageEncoder> {
        let current = self.encoder.as_ref().is_some_and(|e| request.wants(e, request.precision));
        if !current {
            self.encoder = None;
            self.cache.clear();
            let model = ModelDir::open(&request.model_dir)?;
            let runtime = runtime::runtime(&request.runtime_path)?;
            let mut poll_interrupts = request.poll_interrupts;
            let (encoder, report) = Tower::load(
                runtime,
                model,
                TowerKind::Image,
                request.precision,
                request.intra_op_threads,
                &request.sharing,
                &mut poll_interrupts,
            )?;
            self.warn_if_random(&encoder);
            if let (Some(note), "private (fallback)") = (&report.note, report.mode) {
                self.pending_warning = Some(format!(
                    "pg_clip: could not share the model's weights with other backends, so this backend holds its \
                     own copy: {note}"
                ));
            }
            self.encoder = Some(encoder);
            self.image_load = report;
            self.loaded_at = Some(SystemTime::now());
        }
        Ok(self.encoder.as_mut().expect("encoder was just set"))
    }

    /// The text tower and tokenizer for `request`, loaded on first use like the image tower.
    fn text_encoder(&mut self, request: &EmbedRequest) -> Result<&mut (Tower, ClipTokenizer)> {
        let current = self.text.as_ref().is_some_and(|(t, _)| request.wants(t, Precision::Fp32));
        if !current {
            self.text = None;
            self.cache.clear();
            let model = ModelDir::open(&request.model_dir)?;
            let vocab = model.manifest.text.as_ref().and_then(|t| t.bpe_vocab.clone()).ok_or_else(|| {
                crate::error::PgClipError::model_invalid(
                    format!("model {}", model.dir.display()),
                    "its manifest names no text tower with a bpe_vocab file",
                )
            })?;
            model.verify_file(&vocab, &checksum::ChecksumMemo::default())?;
            let tokenizer = ClipTokenizer::from_path(&model.file_path(&vocab)?)?;
            let runtime = runtime::runtime(&request.runtime_path)?;
            let mut poll_interrupts = request.poll_interrupts;
            let (tower, report) = Tower::load(
                runtime,
                model,
                TowerKind::Text,
                Precision::Fp32,
                request.intra_op_threads,
                &request.sharing,
                &mut poll_interrupts,
            )?;
            self.warn_if_random(&tower);
            self.text = Some((tower, tokenizer));
            self.text_load = report;
        }
        Ok(self.text.as_mut().expect("text tower was just set"))
    }
}

/// Embeds one text: CLIP BPE tokens (truncated to the context length, as OpenAI's clip.tokenize does),
/// the text tower, L2-normalised. Repeated texts come from the cache.
pub fn embed_text(text: &str, request: &EmbedRequest) -> Result<Arc<[f32]>> {
    if text.trim().is_empty() {
        return Err(crate::error::PgClipError::EmptyInput { what: "text" });
    }
    if text.len() > request.max_text_bytes {
        return Err(crate::error::PgClipError::LimitExceeded {
            what: "text size",
            actual: text.len() as u64,
            limit: request.max_text_bytes as u64,
            setting: "pg_clip.max_text_bytes",
        });
    }
    let mut state = state();
    state.cache.set_capacity(request.cache_size);
    let (tower, _) = state.text_encoder(request)?;
    let context = {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        "text".hash(&mut hasher);
        tower.key.model_dir.hash(&mut hasher);
        tower.key.onnx_sha256.hash(&mut hasher);
        hasher.finish()
    };
    if let Some(hit) = state.cache.get(context, text.as_bytes()) {
        state.stats.cache_hits += 1;
        return Ok(hit);
    }
    let started = Instant::now();
    let (tower, tokenizer) = state.text.as_mut().expect("text tower loaded above");
    let ids = tokenizer.tokenize(text, tower.tensor_len());
    let mut embedding = tower.embed_tokens(&ids)?;
    crate::pgvector::l2_normalize(&mut embedding);
    let embedding: Arc<[f32]> = Arc::from(embedding);
    state.stats.inferences += 1;
    state.stats.inference_time += started.elapsed();
    state.cache.put(context, text.as_bytes(), embedding.clone());
    Ok(embedding)
}

/// Embeds one encoded image: decode, preprocess, infer, L2-normalise. Repeated inputs come from the cache.
pub fn embed_image(bytes: &[u8], request: &EmbedRequest) -> Result<Arc<[f32]>> {
    let mut state = state();
    state.cache.set_capacity(request.cache_size);
    let encoder = state.encoder(request)?;
    let context = cache_context(encoder, request);
    let preprocess = {
        let mut config = encoder.model.manifest.preprocess_config();
        config.apply_exif_orientation = request.exif_orientation;
        config
    };
    let tensor_len = encoder.tensor_len();

    if let Some(hit) = state.cache.get(context, bytes) {
        state.stats.cache_hits += 1;
        return Ok(hit);
    }

    let started = Instant::now();
    let mut pixels = vec![0f32; tensor_len];
    image::preprocess_into(bytes, &request.limits, &preprocess, &mut pixels)?;
    let preprocessed = Instant::now();
    let encoder = state.encoder.as_mut().expect("encoder loaded above");
    let mut embedding = encoder.embed(&pixels, 1)?.pop().expect("one embedding per image");
    crate::pgvector::l2_normalize(&mut embedding);
    let embedding: Arc<[f32]> = Arc::from(embedding);

    let stats = &mut state.stats;
    stats.inferences += 1;
    stats.preprocess_time += preprocessed - started;
    stats.inference_time += preprocessed.elapsed();
    state.cache.put(context, bytes, embedding.clone());
    Ok(embedding)
}

/// Counts an evaluation answered without this module (the SQL layer's per-call-site memory).
pub fn record_cache_hit() {
    state().stats.cache_hits += 1;
}

/// Everything besides the input bytes that changes the result, folded into the cache key.
fn cache_context(encoder: &ImageEncoder, request: &EmbedRequest) -> u64 {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    encoder.key.model_dir.hash(&mut hasher);
    encoder.key.onnx_sha256.hash(&mut hasher);
    request.exif_orientation.hash(&mut hasher);
    request.limits.max_pixels.hash(&mut hasher);
    hasher.finish()
}

/// What clip_model_info() reports.
#[derive(Debug, Clone)]
pub struct ModelInfo {
    pub model_dir: PathBuf,
    pub model_name: String,
    pub model_version: String,
    pub embedding_dim: usize,
    pub random_weights: bool,
    pub image_model_file: PathBuf,
    pub image_model_sha256: String,
    pub loaded: bool,
    pub load_time: Option<Duration>,
    pub loaded_at: Option<SystemTime>,
    pub onnxruntime_path: PathBuf,
    pub onnxruntime_version: Option<String>,
    pub intra_op_threads: usize,
    pub text_loaded: bool,
    pub image_load: LoadReport,
    pub text_load: LoadReport,
    pub stats: Stats,
}

/// Describes the model in force for `request` without loading it: reads only the manifest. When this
/// backend has it loaded, adds the load time and counters.
pub fn model_info(request: &EmbedRequest) -> Result<ModelInfo> {
    let state = state();
    let loaded = state
        .encoder
        .as_ref()
        .filter(|e| e.key.model_dir == request.model_dir && e.key.intra_op_threads == request.intra_op_threads);
    let model = match loaded {
        Some(encoder) => encoder.model.clone(),
        None => ModelDir::open(&request.model_dir)?,
    };
    let manifest = &model.manifest;
    let runtime = runtime::loaded_runtime();
    Ok(ModelInfo {
        model_dir: model.dir.clone(),
        model_name: manifest.model_name.clone(),
        model_version: manifest.model_version.clone(),
        embedding_dim: manifest.embedding_dim,
        random_weights: manifest.random_weights,
        image_model_file: model.file_path(&manifest.image.onnx)?,
        image_model_sha256: manifest.files.get(&manifest.image.onnx).map(|f| f.sha256.clone()).unwrap_or_default(),
        loaded: loaded.is_some(),
        load_time: loaded.map(|e| e.load_time),
        loaded_at: loaded.and(state.loaded_at),
        onnxruntime_path: runtime.map(|r| r.library_path.clone()).unwrap_or_else(|| request.runtime_path.clone()),
        onnxruntime_version: runtime.map(|r| r.version.clone()),
        intra_op_threads: request.intra_op_threads,
        text_loaded: state.text.is_some(),
        image_load: if loaded.is_some() { state.image_load.clone() } else { LoadReport::default() },
        text_load: if state.text.is_some() { state.text_load.clone() } else { LoadReport::default() },
        stats: state.stats.clone(),
    })
}

/// Drops this backend's session and cache (clip_unload_model()); the next call loads again.
pub fn unload() -> bool {
    crate::backfill::url_batch::reset();
    let mut state = state();
    state.cache.clear();
    state.loaded_at = None;
    let had_text = state.text.take().is_some();
    state.encoder.take().is_some() || had_text
}

/// A message the SQL layer should show once (as a WARNING), e.g. that the model just loaded has random weights.
pub fn take_pending_warning() -> Option<String> {
    state().pending_warning.take()
}

/// A loaded random-weight model is said out loud, once per load, so nobody mistakes its vectors for real ones.
fn random_weights_warning(encoder: &ImageEncoder) -> String {
    format!(
        "pg_clip: model {:?} has RANDOM weights: its vectors have the real model's shape and cost but are \
         meaningless for search",
        encoder.model.manifest.model_version
    )
}
