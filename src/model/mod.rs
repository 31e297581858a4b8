//! Model files, the ONNX Runtime session per backend, and the image embedding pipeline built on them.
//! No SQL here: `sql_api` reads the settings into `EmbedRequest` and maps errors.

pub mod cache;
pub mod catalog;
pub mod checksum;
pub mod encoder;
pub mod manifest;
pub mod node_stats;
pub mod prepared;
pub mod runtime;
pub mod text;

use once_cell::sync::Lazy;
use std::hash::{Hash, Hasher};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use crate::error::Result;
use crate::image::{self, ImageLimits, PreprocessConfig, Transparency};
use cache::EmbeddingCache;
pub use catalog::DEFAULT_MODEL;
use encoder::{ImageEncoder, LoadReport, Precision, Tower, TowerKind, WeightSharing};
use manifest::{Manifest, ModelDir};
pub use text::TextModel;
use text::{LoadedTokenizer, TextTokenizer};

/// Everything an embedding (image or text) depends on besides the input, as read from the settings.
#[derive(Debug, Clone)]
pub struct EmbedRequest {
    /// The model's name (pg_clip.model, or the one a call names) and its directory.
    pub model_name: String,
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
    /// The text encoder clip_embed_text runs (pg_clip.text_model).
    pub text_model: TextModel,
    /// The multilingual tower's graph (pg_clip.text_precision); see `text_precision`.
    pub text_precision: Precision,
    /// What becomes of transparent pixels (pg_clip.image_transparency).
    pub transparency: Transparency,
}

impl EmbedRequest {
    /// Whether a loaded tower is the one this request asks for (else it is replaced).
    fn wants(&self, tower: &Tower, precision: Precision) -> bool {
        tower.key.model_dir == self.model_dir
            && tower.key.intra_op_threads == self.intra_op_threads
            && tower.key.precision == precision
            && tower.key.sharing == self.sharing
    }

    /// The precision of the text tower in force: the multilingual tower follows pg_clip.text_precision; the CLIP
    /// text tower has only an fp32 graph (model/export.py makes no other), whatever the setting says.
    pub fn text_tower_precision(&self) -> Precision {
        match self.text_model {
            TextModel::Clip => Precision::Fp32,
            TextModel::Multilingual => self.text_precision,
        }
    }

    /// The image preprocessing: the manifest's constants with this request's EXIF and transparency settings.
    pub fn preprocess_config(&self, manifest: &Manifest) -> PreprocessConfig {
        PreprocessConfig {
            apply_exif_orientation: self.exif_orientation,
            transparency: self.transparency,
            ..manifest.preprocess_config()
        }
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

/// One text encoder of this backend: its tokenizer (which clip_text_tokens loads alone) and its tower (loaded by
/// the first text embedding that needs it). Both encoders may be loaded at once, so a session that switches
/// pg_clip.text_model back and forth loads each once.
#[derive(Default)]
struct TextEncoder {
    tokenizer: Option<LoadedTokenizer>,
    tower: Option<Tower>,
    load: LoadReport,
}

/// An image tower of another model than the one in use, kept loaded: a session (or the auto-embed worker) that
/// uses two models side by side loads each once, not at every switch. Its weights are the shared mapping, so a
/// parked tower costs this backend its session's private memory only.
struct ParkedImage {
    encoder: ImageEncoder,
    load: LoadReport,
    loaded_at: Option<SystemTime>,
}

pub(crate) struct BackendState {
    encoder: Option<ImageEncoder>,
    image_load: LoadReport,
    parked_images: Vec<ParkedImage>,
    /// Text encoders of other models than the one in use, with the text model they serve.
    parked_texts: Vec<(TextModel, TextEncoder)>,
    /// The CLIP text tower (pg_clip.text_model = clip).
    clip_text: TextEncoder,
    /// The multilingual text tower (pg_clip.text_model = multilingual).
    multilingual: TextEncoder,
    loaded_at: Option<SystemTime>,
    cache: EmbeddingCache,
    pub(crate) stats: Stats,
    /// Messages the SQL layer shows once each, as WARNINGs, after the call that loaded a tower.
    pending_warnings: Vec<String>,
    /// The weights (model directory, model_version) whose randomness this backend already warned about: once
    /// each is enough. The multilingual tower has weights of its own, so it is warned about separately.
    warned_random: Vec<(PathBuf, String)>,
}

/// The backend's model state. Postgres runs one query at a time per backend, so the lock is never
/// contended; it is a Mutex so that worker threads of a later batch pipeline can share the session.
static STATE: Lazy<Mutex<BackendState>> = Lazy::new(|| {
    Mutex::new(BackendState {
        encoder: None,
        image_load: LoadReport::default(),
        parked_images: Vec::new(),
        parked_texts: Vec::new(),
        clip_text: TextEncoder::default(),
        multilingual: TextEncoder::default(),
        loaded_at: None,
        cache: EmbeddingCache::new(0),
        stats: Stats::default(),
        pending_warnings: Vec::new(),
        warned_random: Vec::new(),
    })
});

pub(crate) fn state() -> MutexGuard<'static, BackendState> {
    // A panic while holding the lock is caught and reported as an error; the state stays usable.
    STATE.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl BackendState {
    /// Says once per set of weights that they are random; the multilingual tower's flag is its own section's.
    fn warn_if_random(&mut self, tower: &Tower) {
        let (version, random) = tower.kind.weights(&tower.model.manifest);
        let key = (tower.model.dir.clone(), version.to_string());
        if random && !self.warned_random.contains(&key) {
            self.pending_warnings.push(random_weights_warning(version));
            self.warned_random.push(key);
        }
    }

    /// A shared load that fell back to a private session is said out loud: it costs this backend hundreds of MB.
    fn warn_if_fallback(&mut self, report: &LoadReport) {
        if let (Some(note), "private (fallback)") = (&report.note, report.mode) {
            self.pending_warnings.push(format!(
                "pg_clip: could not share the model's weights with other backends, so this backend holds its own \
                 copy: {note}"
            ));
        }
    }

    /// An int8 graph with 8-bit weights (exported before 0.3.0) on a CPU whose u8s8 kernels saturate is said out
    /// loud, once per load: its vectors can be far from fp32's there, and nothing else would show it.
    fn warn_if_saturating(&mut self, tower: &Tower, precision: Precision) {
        let manifest = &tower.model.manifest;
        let quantization = match (precision, tower.kind) {
            (Precision::Int8, TowerKind::Image) => manifest.image_int8.as_ref().map(|g| &g.quantization),
            (Precision::Int8, TowerKind::Multilingual) => {
                manifest.text_multilingual_int8.as_ref().map(|g| &g.quantization)
            }
            _ => None,
        };
        if quantization.is_some_and(|q| q.can_saturate_without_vnni()) && manifest::cpu_saturates_u8s8() {
            self.pending_warnings.push(format!(
                "pg_clip: the int8 {} graph of {} has full-range 8-bit weights, and this CPU has no VNNI: ONNX \
                 Runtime's u8s8 kernels saturate here, so its vectors can be far from the fp32 graph's (1 - cos up \
                 to 2.5e-2 measured); export the model again with model/export.py --int8 (7-bit weights since \
                 pg_clip 0.3.0) or use fp32",
                tower.kind.name(),
                tower.model.dir.display()
            ));
        }
    }

    /// The encoder for `request`, loading it (lazily, once) or replacing it when the model directory or
    /// thread count changed since it was loaded.
    pub(crate) fn encoder(&mut self, request: &EmbedRequest) -> Result<&mut ImageEncoder> {
        let current = self.encoder.as_ref().is_some_and(|e| request.wants(e, request.precision));
        if !current {
            // Another model's tower is parked, not dropped; a parked tower of this model comes back as it was.
            if let Some(encoder) = self.encoder.take() {
                if encoder.key.model_dir != request.model_dir {
                    let load = std::mem::take(&mut self.image_load);
                    self.parked_images.push(ParkedImage { encoder, load, loaded_at: self.loaded_at });
                }
            }
            if let Some(i) = self.parked_images.iter().position(|p| request.wants(&p.encoder, request.precision)) {
                let parked = self.parked_images.swap_remove(i);
                self.encoder = Some(parked.encoder);
                self.image_load = parked.load;
                self.loaded_at = parked.loaded_at;
                return Ok(self.encoder.as_mut().expect("encoder was just set"));
            }
            // A tower of this model with other settings (threads, precision, sharing) is replaced.
            self.parked_images.retain(|p| p.encoder.key.model_dir != request.model_dir);
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
            self.warn_if_fallback(&report);
            self.warn_if_saturating(&encoder, request.precision);
            self.encoder = Some(encoder);
            self.image_load = report;
            self.loaded_at = Some(SystemTime::now());
        }
        Ok(self.encoder.as_mut().expect("encoder was just set"))
    }

    fn text_slot(&mut self, model: TextModel) -> &mut TextEncoder {
        match model {
            TextModel::Clip => &mut self.clip_text,
            TextModel::Multilingual => &mut self.multilingual,
        }
    }

    /// The tokenizer of the text encoder in force, loaded alone if need be (clip_text_tokens loads no tower).
    fn text_tokenizer(&mut self, request: &EmbedRequest) -> Result<&TextTokenizer> {
        let slot = self.text_slot(request.text_model);
        if slot.tokenizer.as_ref().is_none_or(|t| t.model_dir != request.model_dir) {
            slot.tokenizer = None;
            let model = ModelDir::open(&request.model_dir)?;
            slot.tokenizer = Some(TextTokenizer::load(&model, request.text_model)?);
            release_freed_heap();
        }
        Ok(&slot.tokenizer.as_ref().expect("tokenizer was just set").tokenizer)
    }

    /// The text encoder in force (tower and tokenizer), loaded on first use like the image tower, or replaced
    /// when the model directory, thread count, precision or sharing changed since. The other encoder stays.
    fn text_encoder(&mut self, request: &EmbedRequest) -> Result<&mut TextEncoder> {
        let precision = request.text_tower_precision();
        let current = self.text_slot(request.text_model).tower.as_ref().is_some_and(|t| request.wants(t, precision));
        if !current {
            let slot = self.text_slot(request.text_model);
            if slot.tower.as_ref().is_some_and(|t| t.key.model_dir != request.model_dir) {
                let other = std::mem::take(slot);
                self.parked_texts.push((request.text_model, other));
            }
            let parked = self.parked_texts.iter().position(|(model, encoder)| {
                *model == request.text_model && encoder.tower.as_ref().is_some_and(|t| request.wants(t, precision))
            });
            if let Some(i) = parked {
                let (_, encoder) = self.parked_texts.swap_remove(i);
                *self.text_slot(request.text_model) = encoder;
                return Ok(self.text_slot(request.text_model));
            }
            self.parked_texts.retain(|(model, encoder)| {
                *model != request.text_model
                    || encoder.tower.as_ref().is_none_or(|t| t.key.model_dir != request.model_dir)
            });
            self.text_slot(request.text_model).tower = None;
            let model = ModelDir::open(&request.model_dir)?;
            // Read from the same manifest as the tower, unless the one loaded is that very file.
            let tokenizer = match self.text_slot(request.text_model).tokenizer.take() {
                Some(loaded) if text_tokenizer_is(&loaded, &model, request.text_model) => loaded,
                _ => {
                    let loaded = TextTokenizer::load(&model, request.text_model)?;
                    release_freed_heap();
                    loaded
                }
            };
            let runtime = runtime::runtime(&request.runtime_path)?;
            let mut poll_interrupts = request.poll_interrupts;
            let (tower, report) = Tower::load(
                runtime,
                model,
                request.text_model.tower_kind(),
                precision,
                request.intra_op_threads,
                &request.sharing,
                &mut poll_interrupts,
            )?;
            self.warn_if_random(&tower);
            self.warn_if_fallback(&report);
            self.warn_if_saturating(&tower, precision);
            *self.text_slot(request.text_model) =
                TextEncoder { tokenizer: Some(tokenizer), tower: Some(tower), load: report };
        }
        Ok(self.text_slot(request.text_model))
    }
}

/// Gives the heap pages freed by a load back to the system. Building a tokenizer reads its vocabulary into
/// temporary maps several times the size of what it keeps (12 MB for the multilingual one); without this they
/// would stay resident in every backend that tokenized once, as private memory.
fn release_freed_heap() {
    // SAFETY: malloc_trim only releases free heap memory; it takes no pointers.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Whether `loaded` is the tokenizer file `model`'s manifest names for `text_model` (same directory, same SHA-256).
fn text_tokenizer_is(loaded: &LoadedTokenizer, model: &ModelDir, text_model: TextModel) -> bool {
    let manifest = &model.manifest;
    let file = match text_model {
        TextModel::Clip => manifest
            .text
            .as_ref()
            .and_then(|t| t.tokenizer.as_ref().map(|spec| spec.file.clone()).or(t.bpe_vocab.clone())),
        TextModel::Multilingual => manifest.text_multilingual.as_ref().map(|t| t.tokenizer.file.clone()),
    };
    loaded.model_dir == model.dir
        && file.and_then(|f| manifest.files.get(&f)).is_some_and(|entry| entry.sha256 == loaded.sha256)
}

/// The ids the text encoder in force sees for `text` (clip_text_tokens): the same checks as `embed_text`, then
/// the tokenizer alone; no tower is loaded.
pub fn text_tokens(text: &str, request: &EmbedRequest) -> Result<Vec<i64>> {
    text::check_text(text, request.max_text_bytes)?;
    state().text_tokenizer(request)?.ids(text)
}

/// Embeds one text with the encoder in force (pg_clip.text_model): its tokens (truncated to its context), its
/// tower, L2-normalised. Repeated texts come from the cache.
pub fn embed_text(text: &str, request: &EmbedRequest) -> Result<Arc<[f32]>> {
    text::check_text(text, request.max_text_bytes)?;
    let mut state = state();
    state.cache.set_capacity(request.cache_size);
    let context = {
        let tower = state.text_encoder(request)?.tower.as_ref().expect("text tower loaded above");
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        "text".hash(&mut hasher);
        request.text_model.hash(&mut hasher);
        tower.key.model_dir.hash(&mut hasher);
        tower.key.onnx_sha256.hash(&mut hasher);
        hasher.finish()
    };
    if let Some(hit) = state.cache.get(context, text.as_bytes()) {
        state.stats.cache_hits += 1;
        return Ok(hit);
    }
    let started = Instant::now();
    let slot = state.text_slot(request.text_model);
    let (Some(tower), Some(tokenizer)) = (slot.tower.as_mut(), slot.tokenizer.as_ref()) else {
        unreachable!("text_encoder loads both")
    };
    let ids = tokenizer.tokenizer.ids(text)?;
    let mut embedding = tower.embed_tokens(&ids)?;
    crate::pgvector::l2_normalize(&mut embedding);
    let embedding: Arc<[f32]> = Arc::from(embedding);
    state.stats.inferences += 1;
    node_stats::add(1);
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
    let preprocess = request.preprocess_config(&encoder.model.manifest);
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
    node_stats::add(1);
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
    request.transparency.hash(&mut hasher);
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
    /// The CLIP text tower is loaded in this backend.
    pub text_loaded: bool,
    pub image_load: LoadReport,
    pub stats: Stats,
    /// The text encoder in force, whether its weights are random (None when the model directory has no such
    /// tower), and the precision of its graph.
    pub text_model: TextModel,
    pub text_random_weights: Option<bool>,
    pub text_precision: Precision,
    /// This backend has the text encoder in force loaded, as the settings now ask for it.
    pub text_model_loaded: bool,
    /// How the text tower in force was loaded, when it is.
    pub text_load: LoadReport,
}

/// Describes the model in force for `request` without loading it: reads only the manifest. When this
/// backend has it loaded, adds the load time and counters.
pub fn model_info(request: &EmbedRequest) -> Result<ModelInfo> {
    let state = state();
    let wanted =
        |e: &&ImageEncoder| e.key.model_dir == request.model_dir && e.key.intra_op_threads == request.intra_op_threads;
    let parked = state.parked_images.iter().find(|p| wanted(&&p.encoder));
    let loaded = state.encoder.as_ref().filter(wanted).or(parked.map(|p| &p.encoder));
    let (image_load, loaded_at) = match parked {
        Some(p) if state.encoder.as_ref().filter(wanted).is_none() => (p.load.clone(), p.loaded_at),
        _ => (state.image_load.clone(), state.loaded_at),
    };
    let model = match loaded {
        Some(encoder) => encoder.model.clone(),
        None => ModelDir::open(&request.model_dir)?,
    };
    let manifest = &model.manifest;
    let runtime = runtime::loaded_runtime();
    let text_random_weights = match request.text_model {
        TextModel::Clip => manifest.text.as_ref().map(|_| manifest.random_weights),
        TextModel::Multilingual => manifest.text_multilingual.as_ref().map(|t| t.random_weights),
    };
    let text_slot = match request.text_model {
        TextModel::Clip => &state.clip_text,
        TextModel::Multilingual => &state.multilingual,
    };
    let text_model_loaded = text_slot.tower.as_ref().is_some_and(|t| request.wants(t, request.text_tower_precision()));
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
        loaded_at: loaded.and(loaded_at),
        onnxruntime_path: runtime.map(|r| r.library_path.clone()).unwrap_or_else(|| request.runtime_path.clone()),
        onnxruntime_version: runtime.map(|r| r.version.clone()),
        intra_op_threads: request.intra_op_threads,
        text_loaded: state.clip_text.tower.is_some(),
        image_load: if loaded.is_some() { image_load } else { LoadReport::default() },
        stats: state.stats.clone(),
        text_model: request.text_model,
        text_random_weights,
        text_precision: request.text_tower_precision(),
        text_model_loaded,
        text_load: if text_model_loaded { text_slot.load.clone() } else { LoadReport::default() },
    })
}

/// Drops this backend's session and cache (clip_unload_model()); the next call loads again.
pub fn unload() -> bool {
    crate::backfill::url_batch::reset();
    let mut guard = state();
    let state = &mut *guard;
    state.cache.clear();
    state.loaded_at = None;
    let had_text = [&mut state.clip_text, &mut state.multilingual].map(|slot| std::mem::take(slot).tower.is_some());
    let had_parked = !state.parked_images.is_empty() || !state.parked_texts.is_empty();
    state.parked_images.clear();
    state.parked_texts.clear();
    state.encoder.take().is_some() || had_text.contains(&true) || had_parked
}

/// The messages the SQL layer should show once each (as WARNINGs), e.g. that the model just loaded has random
/// weights, and could not be shared.
pub fn take_pending_warnings() -> Vec<String> {
    std::mem::take(&mut state().pending_warnings)
}

/// A loaded random-weight model is said out loud, once per load, so nobody mistakes its vectors for real ones.
fn random_weights_warning(model_version: &str) -> String {
    format!(
        "pg_clip: model {model_version:?} has RANDOM weights: its vectors have the real model's shape and cost but \
         are meaningless for search"
    )
}
