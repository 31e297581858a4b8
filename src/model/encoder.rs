//! The towers (image, CLIP text, multilingual text): one ONNX Runtime session each per backend, created on
//! first use and kept for the life of the backend. All session code lives here, so that a later step (shared,
//! pre-packed weights) changes one place.

use ort::session::builder::GraphOptimizationLevel;
use ort::session::Session;
use ort::value::TensorRef;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::{Duration, Instant};

use super::checksum::ChecksumMemo;
use super::manifest::ModelDir;
use super::prepared::{Lookup, PrepareLock, PreparedSlot, Wait, DATA_FILE};
use super::runtime::{panic_message, with_signals_blocked, Runtime};
use crate::error::{PgClipError, Result};
use std::path::{Path, PathBuf};

/// What identifies a loaded session: a change in any of these means a new session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncoderKey {
    pub model_dir: PathBuf,
    pub onnx_sha256: String,
    pub intra_op_threads: usize,
    pub precision: Precision,
    pub sharing: WeightSharing,
}

/// Which graph of a tower: the exported fp32 one (default; reproduces stored vectors) or the int8 one (the image
/// tower's, the multilingual text tower's).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Precision {
    Fp32,
    Int8,
}

/// Which tower, with what its graph must look like.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TowerKind {
    /// float32 pixels [batch, 3, crop, crop] -> [batch, dim]
    Image,
    /// int64 token ids [batch, context] -> [batch, dim]
    Text,
    /// int64 token ids and attention mask [batch, sequence] -> [batch, dim] (clip-ViT-B-32-multilingual-v1)
    Multilingual,
}

pub struct Tower {
    session: Session,
    pub kind: TowerKind,
    pub key: EncoderKey,
    pub model: ModelDir,
    pub load_time: Duration,
    /// The graph's inputs in the order the tower feeds them: pixels; token ids; token ids and attention mask.
    input_names: Vec<String>,
    output_name: String,
    /// Elements of one input item: 3*crop*crop pixels, or the context length (most ids) in tokens.
    item_len: usize,
    item_shape: Vec<i64>,
    /// The text graph accepts any sequence length (model/export.py revision 2): run only the tokens up to
    /// <|endoftext|>. Older exports fix it at the context length: run the padded row.
    dynamic_sequence: bool,
    embedding_dim: usize,
}

/// The image tower (kept as a name: most of the extension speaks of it).
pub type ImageEncoder = Tower;

/// How a backend gets its weights.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WeightSharing {
    /// Map a prepared model from this directory (preparing it on first use): one copy for all backends.
    /// `former_default`: where pg_clip 0.2.0 kept prepared models by default (inside the data directory,
    /// where every base backup copied them), removed when a model is loaded from the new default.
    Shared { cache_dir: PathBuf, former_default: Option<PathBuf> },
    /// A session of this backend's own (pg_clip.share_model_weights = off).
    Private,
}

/// How the session in use was loaded, for clip_model_info().
#[derive(Debug, Clone, Default)]
pub struct LoadReport {
    /// "shared" (mapped a prepared model), "prepared" (made it now, then mapped it), "private", or
    /// "private (fallback)" when sharing was asked for but could not be had.
    pub mode: &'static str,
    pub prepared_path: Option<PathBuf>,
    pub prepared_bytes: Option<u64>,
    /// Why sharing fell back to a private session, or why a prepared model was rebuilt.
    pub note: Option<String>,
    /// Anonymous (heap) memory the load added to this backend, in kB: what the model costs it privately.
    pub private_kb: Option<i64>,
    /// Time spent waiting for another backend's preparation of the same prepared model, and its pid.
    pub waited: Option<Duration>,
    pub waited_for_pid: Option<u32>,
}

/// The options every session shares: threads, no spinning, sequential execution.
fn session_builder(runtime: &Runtime, intra_op_threads: usize) -> ort::Result<ort::session::builder::SessionBuilder> {
    Ok(Session::builder(&runtime.environment)?
        .with_intra_threads(intra_op_threads)?
        .with_inter_threads(1)?
        .with_parallel_execution(false)?
        // Spinning threads burn a core each while idle; a database server has better uses for it.
        .with_intra_op_spinning(false)?
        .with_inter_op_spinning(false)?
        // No CPU arena: it keeps ~5 MB of activation chunks per backend for no measurable speed (77.1 vs
        // 77.5 ms per image), and with the weights shared that is a fifth of what a backend holds.
        .with_execution_providers([ort::ep::CPU::default().with_arena_allocator(false).build()])?)
}

/// Runs an ONNX Runtime session constructor with every signal blocked (it may start threads) and any
/// panic caught.
fn create_session(what: &str, build: impl FnOnce() -> ort::Result<Session>) -> Result<Session> {
    match with_signals_blocked(|| catch_unwind(AssertUnwindSafe(build))) {
        Ok(Ok(session)) => Ok(session),
        Ok(Err(e)) => Err(PgClipError::model_invalid(what, format!("ONNX Runtime could not load it: {e}"))),
        Err(panic) => Err(PgClipError::model_invalid(what, format!("loading panicked: {}", panic_message(&panic)))),
    }
}

impl Tower {
    /// Creates the session (shared through a prepared model when asked, else private), and checks the graph's
    /// input and output against the manifest before any inference. Source files are verified against the
    /// manifest's checksums before ONNX Runtime reads them; a prepared model against its own record.
    /// `poll_interrupts` is called while waiting for another backend's preparation; it may unwind.
    pub fn load(
        runtime: &Runtime,
        model: ModelDir,
        kind: TowerKind,
        precision: Precision,
        intra_op_threads: usize,
        sharing: &WeightSharing,
        poll_interrupts: &mut dyn FnMut(),
    ) -> Result<(Tower, LoadReport)> {
        let started = Instant::now();
        let manifest = &model.manifest;
        let single = |name: &String| vec![name.clone()];
        let (onnx, input_names, output_name, item_shape) = match (kind, precision) {
            (TowerKind::Image, Precision::Fp32) => {
                let crop = manifest.image.preprocess.crop_size as i64;
                (&manifest.image.onnx, single(&manifest.image.input), &manifest.image.output, vec![3, crop, crop])
            }
            (TowerKind::Image, Precision::Int8) => {
                let crop = manifest.image.preprocess.crop_size as i64;
                let int8 = manifest.image_int8.as_ref().ok_or_else(|| {
                    PgClipError::model_invalid(
                        format!("model {}", model.dir.display()),
                        "it has no int8 image tower (export it with model/export.py --int8), \
                         but pg_clip.image_precision is int8",
                    )
                })?;
                (&int8.onnx, single(&int8.input), &int8.output, vec![3, crop, crop])
            }
            (TowerKind::Text, _) => {
                let text = manifest.text.as_ref().ok_or_else(|| {
                    PgClipError::model_invalid(
                        format!("model {}", model.dir.display()),
                        "it has no text tower (export it with model/export.py --towers image,text)",
                    )
                })?;
                (&text.onnx, single(&text.input), &text.output, vec![text.context_length as i64])
            }
            (TowerKind::Multilingual, _) => {
                let tower =
                    manifest.text_multilingual.as_ref().ok_or_else(|| super::text::missing_tower(&model, false))?;
                let item_shape = vec![tower.max_seq_length as i64];
                match precision {
                    Precision::Fp32 => (&tower.onnx, tower.inputs.clone(), &tower.output, item_shape),
                    Precision::Int8 => {
                        let int8 = manifest
                            .text_multilingual_int8
                            .as_ref()
                            .ok_or_else(|| super::text::missing_tower(&model, true))?;
                        (&int8.onnx, int8.inputs.clone(), &int8.output, item_shape)
                    }
                }
            }
        };
        let onnx_path = model.file_path(onnx)?;
        let what = format!("{} model {}", kind.name(), onnx_path.display());
        let source_sha256 = manifest.files.get(onnx).map(|f| f.sha256.clone()).ok_or_else(|| {
            PgClipError::model_invalid("model manifest", format!("{onnx} is not listed under \"files\""))
        })?;
        let anonymous_before = anonymous_memory_kb();
        let slot = match sharing {
            WeightSharing::Shared { cache_dir, .. } => Some(PreparedSlot::new(
                cache_dir,
                kind.weights(manifest).0,
                kind.prepared_name(precision),
                &source_sha256,
                &runtime.version,
            )),
            WeightSharing::Private => None,
        };
        // Prepared models of 0.2.0 in the data directory are copied by every base backup: gone once the new
        // default is in use (mapped copies stay valid; removing them is what the README always advised).
        if let WeightSharing::Shared { former_default: Some(former), .. } = sharing {
            if former.is_dir() {
                let _ = std::fs::remove_dir_all(former);
                if let Some(parent) = former.parent() {
                    let _ = std::fs::remove_dir(parent); // pg_clip/, if nothing else is in it
                }
            }
        }
        // No prepared model yet: take the right to prepare it, or wait for the backend that has it. Before the
        // source files are verified, so that backends which waited find the checksums the preparer remembered
        // instead of each hashing the 360 MB source at the same time.
        let mut lock = None;
        if let Some(slot) = slot.as_ref().filter(|slot| !slot.dir.exists()) {
            lock = Some(slot.lock(&mut *poll_interrupts));
        }
        // The source files are verified on every load, also when a prepared copy will be used: a model
        // directory whose files do not match its manifest is reported, never quietly papered over.
        let memo = match sharing {
            WeightSharing::Shared { cache_dir, .. } if cache_dir.is_dir() => ChecksumMemo::in_dir(Some(cache_dir)),
            _ => ChecksumMemo::default(),
        };
        for name in model.graph_files(onnx) {
            model.verify_file(&name, &memo)?;
        }
        let load_private = || -> Result<Session> {
            // Extended, not All: All adds NCHWc layouts whose block size depends on the CPU; Extended keeps
            // private and shared sessions computing the same graph, so their vectors are identical.
            create_session(&what, || {
                session_builder(runtime, intra_op_threads)?
                    .with_optimization_level(GraphOptimizationLevel::Level2)?
                    .commit_from_file(&onnx_path)
            })
        };

        let mut report = LoadReport::default();
        let session = match &slot {
            None => {
                report.mode = "private";
                load_private()?
            }
            Some(slot) => {
                let mut shared = Shared::new(runtime, slot, &what, intra_op_threads, lock);
                let session = match shared.load(&onnx_path, &mut *poll_interrupts) {
                    Ok((session, loaded)) => {
                        report = loaded;
                        session
                    }
                    Err(reason) => {
                        report.mode = "private (fallback)";
                        report.note = Some(reason);
                        load_private()?
                    }
                };
                // A wait is reported whatever came of it (a waiter whose preparer failed may fall back too).
                report.waited = shared.wait.map(|w| w.duration);
                report.waited_for_pid = shared.wait.and_then(|w| w.holder_pid);
                session
            }
        };
        // ONNX Runtime packs every weight on the heap before it swaps in the mapped copy; give the freed
        // pages back so the backend's private memory shows what it really keeps.
        // SAFETY: malloc_trim only releases free heap memory; it takes no pointers.
        unsafe {
            libc::malloc_trim(0);
        }
        report.private_kb = match (anonymous_before, anonymous_memory_kb()) {
            (Some(before), Some(after)) => Some(after - before),
            _ => None,
        };

        let embedding_dim = manifest.embedding_dim;
        let element = match kind {
            TowerKind::Image => ort::value::TensorElementType::Float32,
            TowerKind::Text | TowerKind::Multilingual => ort::value::TensorElementType::Int64,
        };
        // The multilingual graph takes any sequence length (-1: not checked); the tokenizer bounds it.
        let input_dims = if kind == TowerKind::Multilingual { vec![-1] } else { item_shape.clone() };
        for input_name in &input_names {
            check_outlet(&session, &what, true, input_name, element, &input_dims)?;
        }
        check_outlet(
            &session,
            &what,
            false,
            output_name,
            ort::value::TensorElementType::Float32,
            &[embedding_dim as i64],
        )?;

        let tower = Tower {
            kind,
            key: EncoderKey {
                model_dir: model.dir.clone(),
                onnx_sha256: source_sha256,
                intra_op_threads,
                precision,
                sharing: sharing.clone(),
            },
            dynamic_sequence: kind == TowerKind::Text && has_dynamic_axis(&session, &input_names[0], 1),
            input_names,
            output_name: output_name.clone(),
            item_len: item_shape.iter().product::<i64>() as usize,
            item_shape,
            embedding_dim,
            model,
            session,
            load_time: started.elapsed(),
        };
        Ok((tower, report))
    }

    /// Elements of one input item (pixels of one image, or token ids of one text).
    pub fn tensor_len(&self) -> usize {
        self.item_len
    }

    pub fn embedding_dim(&self) -> usize {
        self.embedding_dim
    }

    /// Runs the image tower on `batch` preprocessed images laid out NCHW in `pixels`; returns one raw
    /// (not yet normalised) embedding per image.
    pub fn embed(&mut self, pixels: &[f32], batch: usize) -> Result<Vec<Vec<f32>>> {
        self.run(pixels, batch)
    }

    /// Runs a text tower on one text's ids, as the tokenizer gives them (`TextTokenizer::ids`).
    ///
    /// CLIP: the ids up to the first <|endoftext|>. With a dynamic sequence axis only those run: the encoder is
    /// causal and pools at that token, so the padding after it cannot change the embedding, and a 4-token query
    /// then costs about a twentieth of the full context. Older exports fix the axis at the context length: the
    /// row is padded with zeros, as `clip.tokenize` pads it.
    ///
    /// Multilingual: `[CLS] ... [SEP]`, unpadded, with an attention mask of ones (what sentence-transformers
    /// feeds for a batch of one; padding a batch with mask 0 changes nothing, so one text needs none).
    pub fn embed_tokens(&mut self, ids: &[i64]) -> Result<Vec<f32>> {
        let mut rows = match self.kind {
            TowerKind::Multilingual => {
                if ids.is_empty() || ids.len() > self.item_len {
                    return Err(PgClipError::runtime(
                        "text inference",
                        format!("{} token ids, the tower takes 1 to {}", ids.len(), self.item_len),
                    ));
                }
                let shape = [1, ids.len() as i64];
                let mask = vec![1i64; ids.len()];
                self.execute(1, |names| {
                    Ok(ort::inputs![
                        names[0].clone() => TensorRef::from_array_view((shape, ids))?,
                        names[1].clone() => TensorRef::from_array_view((shape, mask.as_slice()))?,
                    ])
                })?
            }
            _ if self.dynamic_sequence => self.run_shaped(ids, 1, &[ids.len() as i64])?,
            _ => {
                let mut padded = ids.to_vec();
                padded.resize(self.item_len, 0);
                self.run(&padded, 1)?
            }
        };
        Ok(rows.pop().expect("one embedding per row"))
    }

    fn run<T: ort::value::PrimitiveTensorElementType + Clone + std::fmt::Debug + 'static>(
        &mut self,
        items: &[T],
        batch: usize,
    ) -> Result<Vec<Vec<f32>>> {
        let item_shape = self.item_shape.clone();
        self.run_shaped(items, batch, &item_shape)
    }

    fn run_shaped<T: ort::value::PrimitiveTensorElementType + Clone + std::fmt::Debug + 'static>(
        &mut self,
        items: &[T],
        batch: usize,
        item_shape: &[i64],
    ) -> Result<Vec<Vec<f32>>> {
        let context = self.kind.inference_context();
        let item_len = item_shape.iter().product::<i64>() as usize;
        if batch == 0 || items.len() != batch * item_len {
            return Err(PgClipError::runtime(context, format!("got {} values for a batch of {batch}", items.len())));
        }
        let mut shape = vec![batch as i64];
        shape.extend_from_slice(item_shape);
        self.execute(batch, |names| Ok(ort::inputs![names[0].clone() => TensorRef::from_array_view((shape, items))?]))
    }

    /// One run: `inputs` makes the input values from the graph's input names (inside the panic guard, since
    /// making a tensor can fail too); returns the `batch` output rows.
    fn execute<'v>(
        &mut self,
        batch: usize,
        inputs: impl FnOnce(
            &[String],
        )
            -> ort::Result<Vec<(std::borrow::Cow<'static, str>, ort::session::SessionInputValue<'v>)>>,
    ) -> Result<Vec<Vec<f32>>> {
        let context = self.kind.inference_context();
        let dim = self.embedding_dim;
        let input_names = self.input_names.as_slice();
        let output_name = self.output_name.as_str();
        let session = &mut self.session;
        let run = catch_unwind(AssertUnwindSafe(|| -> ort::Result<Vec<Vec<f32>>> {
            let outputs = session.run(inputs(input_names)?)?;
            let (shape, values) = outputs
                .get(output_name)
                .ok_or_else(|| ort::Error::new(format!("no output named {output_name}")))?
                .try_extract_tensor::<f32>()?;
            if shape.len() != 2 || shape[0] as usize != batch || shape[1] as usize != dim {
                return Err(ort::Error::new(format!("output shape {shape:?}, expected [{batch}, {dim}]")));
            }
            Ok(values.chunks_exact(dim).map(<[f32]>::to_vec).collect())
        }));
        match run {
            Ok(result) => result.map_err(|e| PgClipError::runtime(context, e)),
            Err(panic) => Err(PgClipError::runtime(context, format!("panicked: {}", panic_message(&panic)))),
        }
    }
}

impl TowerKind {
    pub fn name(self) -> &'static str {
        match self {
            TowerKind::Image => "image",
            TowerKind::Text => "text",
            TowerKind::Multilingual => "text-multilingual",
        }
    }

    /// The prepared model's name within its directory name: the tower, and `-int8` for the int8 graph. Short,
    /// so that every path in the cache stays within tar's 99 bytes (see prepared::MAX_RELATIVE_PATH).
    fn prepared_name(self, precision: Precision) -> &'static str {
        match (self, precision) {
            (TowerKind::Image, Precision::Int8) => "image-int8",
            (TowerKind::Image, _) => "image",
            (TowerKind::Text, _) => "text",
            (TowerKind::Multilingual, Precision::Int8) => "text-ml-int8",
            (TowerKind::Multilingual, _) => "text-ml",
        }
    }

    /// Which weights the tower has, as (model_version, random_weights): the multilingual tower has its own
    /// provenance (its manifest section); the image and CLIP text towers share the manifest's.
    pub fn weights(self, manifest: &super::manifest::Manifest) -> (&str, bool) {
        match (self, &manifest.text_multilingual) {
            (TowerKind::Multilingual, Some(tower)) => (&tower.model_version, tower.random_weights),
            _ => (&manifest.model_version, manifest.random_weights),
        }
    }

    fn inference_context(self) -> &'static str {
        match self {
            TowerKind::Image => "image inference",
            TowerKind::Text | TowerKind::Multilingual => "text inference",
        }
    }
}

/// Checks one graph input or output: the name the manifest gives, its element type, a free batch axis,
/// then `dims` (a negative expected dimension is not checked).
fn check_outlet(
    session: &Session,
    what: &str,
    is_input: bool,
    name: &str,
    element: ort::value::TensorElementType,
    dims: &[i64],
) -> Result<()> {
    let kind = if is_input { "input" } else { "output" };
    let outlets = if is_input { session.inputs() } else { session.outputs() };
    let outlet = outlets.iter().find(|o| o.name() == name).ok_or_else(|| {
        let names: Vec<&str> = outlets.iter().map(|o| o.name()).collect();
        PgClipError::model_invalid(what, format!("the graph has no {kind} named {name:?} (it has {names:?})"))
    })?;
    let ok = match outlet.dtype() {
        ort::value::ValueType::Tensor { ty, shape, .. } => {
            *ty == element
                && shape.len() == dims.len() + 1
                && shape
                    .iter()
                    .skip(1)
                    .zip(dims)
                    .all(|(actual, expected)| *actual == *expected || *actual < 0 || *expected < 0)
        }
        _ => false,
    };
    if !ok {
        let expected =
            dims.iter().map(|d| if *d < 0 { "sequence".into() } else { d.to_string() }).collect::<Vec<_>>().join(", ");
        return Err(PgClipError::model_invalid(
            what,
            format!(
                "{kind} {name:?} is {}, expected {} [batch, {expected}]",
                describe(outlet.dtype()),
                format!("{element:?}").to_lowercase()
            ),
        ));
    }
    Ok(())
}

/// Whether the named input's `axis` is free (-1) in the graph.
fn has_dynamic_axis(session: &Session, input: &str, axis: usize) -> bool {
    session.inputs().iter().find(|o| o.name() == input).is_some_and(|o| match o.dtype() {
        ort::value::ValueType::Tensor { shape, .. } => shape.get(axis).is_some_and(|d| *d < 0),
        _ => false,
    })
}

/// "float32 [batch, 512]" rather than the runtime's Debug output.
fn describe(dtype: &ort::value::ValueType) -> String {
    match dtype {
        ort::value::ValueType::Tensor { ty, shape, .. } => {
            let dims: Vec<String> =
                shape.iter().map(|d| if *d < 0 { "batch".to_string() } else { d.to_string() }).collect();
            format!("{} [{}]", format!("{ty:?}").to_lowercase(), dims.join(", "))
        }
        other => format!("{other:?}"),
    }
}

/// One shared load: the slot, and the preparation lock once this backend has it.
struct Shared<'a> {
    runtime: &'a Runtime,
    slot: &'a PreparedSlot,
    what: &'a str,
    intra_op_threads: usize,
    lock: Option<PrepareLock>,
    /// Set when taking the lock meant waiting for another backend.
    wait: Option<Wait>,
    /// Why the lock could not be taken (a preparation then goes ahead without it, as before there was one).
    lock_problem: Option<String>,
}

impl<'a> Shared<'a> {
    /// `lock`: the outcome of taking the slot's lock, if the caller already tried.
    fn new(
        runtime: &'a Runtime,
        slot: &'a PreparedSlot,
        what: &'a str,
        intra_op_threads: usize,
        lock: Option<Result<(PrepareLock, Option<Wait>)>>,
    ) -> Self {
        let mut shared = Shared { runtime, slot, what, intra_op_threads, lock: None, wait: None, lock_problem: None };
        match lock {
            Some(Ok((lock, wait))) => (shared.lock, shared.wait) = (Some(lock), wait),
            Some(Err(e)) => shared.lock_problem = Some(e.to_string()),
            None => {}
        }
        shared
    }

    /// Maps the slot's prepared model, preparing it first when it is missing or did not verify: under the
    /// slot's lock, so that one backend prepares and the others wait and then map what it made. An error is
    /// the reason sharing could not be had (the caller then falls back to a private session); the lock is
    /// released either way, so that the next waiter may try.
    fn load(
        &mut self,
        source: &Path,
        poll_interrupts: &mut dyn FnMut(),
    ) -> std::result::Result<(Session, LoadReport), String> {
        let loaded = self.map_or_prepare(source, poll_interrupts);
        self.lock = None;
        loaded
    }

    fn map_or_prepare(
        &mut self,
        source: &Path,
        poll_interrupts: &mut dyn FnMut(),
    ) -> std::result::Result<(Session, LoadReport), String> {
        let fallback = |e: PgClipError| e.to_string();
        let slot = self.slot;
        let mut report = LoadReport { mode: "shared", prepared_path: Some(slot.dir.clone()), ..Default::default() };
        let mut lookup = slot.lookup().map_err(fallback)?;
        if let Lookup::Missing { removed_because } = &lookup {
            if let Some(reason) = removed_because {
                report.note = Some(format!("rebuilt the prepared model: {reason}"));
            }
            if self.lock.is_none() && self.lock_problem.is_none() {
                // It was there a moment ago, but went (or did not verify and was removed): take the lock now.
                match slot.lock(&mut *poll_interrupts) {
                    Ok((lock, wait)) => (self.lock, self.wait) = (Some(lock), wait),
                    Err(e) => self.lock_problem = Some(e.to_string()),
                }
            }
            if self.lock.is_some() {
                // Whoever held the lock before may have made it meanwhile: then this backend maps it.
                lookup = slot.lookup().map_err(fallback)?;
            }
        }
        let (graph, bytes) = match lookup {
            Lookup::Ready { graph, bytes } => {
                // Mapping needs no lock; other waiters may go on.
                self.lock = None;
                (graph, bytes)
            }
            Lookup::Missing { removed_because } => {
                if let (Some(reason), None) = (removed_because, &report.note) {
                    report.note = Some(format!("rebuilt the prepared model: {reason}"));
                }
                if let Some(lock) = &self.lock {
                    lock.announce();
                }
                // A cancel that came while the lock was being had (or just before) is honoured before the
                // expensive part, not after.
                poll_interrupts();
                self.prepare(source)?;
                report.mode = "prepared";
                if let (Some(problem), None) = (&self.lock_problem, &self.lock) {
                    report.note = Some(format!("prepared without the one-preparer lock: {problem}"));
                }
                // Verified while the lock is still held: the checksums are then remembered (verified.json)
                // before the waiters look, so that they do not all hash the 690 MB file at once.
                let ready = slot.lookup().map_err(fallback)?;
                self.lock = None;
                // Interrupts that arrived during the preparation are honoured now that it is published: its
                // work is not lost to a cancel or to a statement_timeout shorter than a preparation.
                poll_interrupts();
                match ready {
                    Lookup::Ready { graph, bytes } => (graph, bytes),
                    Lookup::Missing { removed_because } => {
                        return Err(format!(
                            "the prepared model did not verify right after it was written: {}",
                            removed_because.unwrap_or_default()
                        ))
                    }
                }
            }
        };
        report.prepared_bytes = Some(bytes);
        // Already optimized: loading it again at any level would only redo (or undo) that work.
        let session = create_session(self.what, || {
            session_builder(self.runtime, self.intra_op_threads)?
                .with_optimization_level(GraphOptimizationLevel::Disable)?
                .commit_from_file(&graph)
        })
        .map_err(|e| format!("the prepared model would not load: {e}"))?;
        Ok((session, report))
    }

    /// Makes the prepared files in a temporary directory and renames it into place. ONNX Runtime cannot be
    /// interrupted once started: a cancel or SIGTERM that arrives meanwhile takes effect when it is done.
    fn prepare(&self, source: &Path) -> std::result::Result<(), String> {
        let slot = self.slot;
        let temporary = slot.begin(self.lock.as_ref()).map_err(|e| e.to_string())?;
        // Optimize at Extended (no CPU-specific layouts) and save the graph with every weight, pre-packed
        // ones included, in one external data file that ONNX Runtime maps page-aligned at load.
        let graph = temporary.join(super::prepared::GRAPH_FILE);
        let made = create_session(self.what, || {
            session_builder(self.runtime, self.intra_op_threads)?
                .with_optimization_level(GraphOptimizationLevel::Level2)?
                .with_optimized_model_path(&graph)?
                .with_config_entry("session.optimized_model_external_initializers_file_name", DATA_FILE)?
                .with_config_entry("session.optimized_model_external_initializers_min_size_in_bytes", "1024")?
                .with_config_entry("session.save_external_prepacked_constant_initializers", "1")?
                .commit_from_file(source)
        });
        match made {
            Ok(session) => drop(session),
            Err(e) => {
                slot.abandon(&temporary);
                return Err(format!("preparing failed: {e}"));
            }
        }
        if let Err(e) = slot.commit(&temporary) {
            slot.abandon(&temporary);
            return Err(e.to_string());
        }
        Ok(())
    }
}

/// This process's anonymous (heap) resident memory, in kB (RssAnon in /proc/self/status).
fn anonymous_memory_kb() -> Option<i64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("RssAnon:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}
