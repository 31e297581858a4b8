//! The image tower: one ONNX Runtime session per backend, created on first use and kept for the life of
//! the backend. All session code lives here, so that a later step (shared, pre-packed weights) changes one
//! place.

use ort::session::builder::GraphOptimizationLevel;
use ort::session::Session;
use ort::value::TensorRef;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::{Duration, Instant};

use super::manifest::ModelDir;
use super::runtime::{panic_message, with_signals_blocked, Runtime};
use crate::error::{PgClipError, Result};

/// What identifies a loaded session: a change in any of these means a new session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncoderKey {
    pub model_dir: std::path::PathBuf,
    pub onnx_sha256: String,
    pub intra_op_threads: usize,
}

pub struct ImageEncoder {
    session: Session,
    pub key: EncoderKey,
    pub model: ModelDir,
    pub load_time: Duration,
    input_name: String,
    output_name: String,
    crop_size: usize,
    embedding_dim: usize,
}

impl ImageEncoder {
    /// Verifies the graph files' checksums, creates the session with all signals blocked (ONNX Runtime may
    /// start threads), and checks the graph's input and output against the manifest before any inference.
    pub fn load(runtime: &Runtime, model: ModelDir, intra_op_threads: usize) -> Result<ImageEncoder> {
        let started = Instant::now();
        let manifest = &model.manifest;
        for name in model.graph_files(&manifest.image.onnx) {
            model.verify_file(&name)?;
        }
        let onnx_path = model.file_path(&manifest.image.onnx)?;
        let what = format!("image model {}", onnx_path.display());
        let created = with_signals_blocked(|| {
            catch_unwind(AssertUnwindSafe(|| -> ort::Result<Session> {
                Session::builder(&runtime.environment)?
                    .with_optimization_level(GraphOptimizationLevel::All)?
                    .with_intra_threads(intra_op_threads)?
                    .with_inter_threads(1)?
                    .with_parallel_execution(false)?
                    // Spinning threads burn a core each while idle; a database server has better uses for it.
                    .with_intra_op_spinning(false)?
                    .with_inter_op_spinning(false)?
                    .commit_from_file(&onnx_path)
                    .map_err(ort::Error::from)
            }))
        });
        let session = match created {
            Ok(Ok(session)) => session,
            Ok(Err(e)) => return Err(PgClipError::model_invalid(what, format!("ONNX Runtime could not load it: {e}"))),
            Err(panic) => return Err(PgClipError::model_invalid(what, format!("loading panicked: {}", panic_message(&panic)))),
        };

        let crop_size = manifest.image.preprocess.crop_size as usize;
        let embedding_dim = manifest.embedding_dim;
        check_outlet(&session, &what, true, &manifest.image.input, &[3, crop_size as i64, crop_size as i64])?;
        check_outlet(&session, &what, false, &manifest.image.output, &[embedding_dim as i64])?;

        Ok(ImageEncoder {
            key: EncoderKey {
                model_dir: model.dir.clone(),
                onnx_sha256: manifest.files[&manifest.image.onnx].sha256.clone(),
                intra_op_threads,
            },
            input_name: manifest.image.input.clone(),
            output_name: manifest.image.output.clone(),
            crop_size,
            embedding_dim,
            model,
            session,
            load_time: started.elapsed(),
        })
    }

    pub fn tensor_len(&self) -> usize {
        3 * self.crop_size * self.crop_size
    }

    pub fn embedding_dim(&self) -> usize {
        self.embedding_dim
    }

    /// Runs the image tower on `batch` preprocessed images laid out NCHW in `pixels`; returns one raw
    /// (not yet normalised) embedding per image.
    pub fn embed(&mut self, pixels: &[f32], batch: usize) -> Result<Vec<Vec<f32>>> {
        if batch == 0 || pixels.len() != batch * self.tensor_len() {
            return Err(PgClipError::runtime(
                "image inference",
                format!("got {} floats for a batch of {batch}", pixels.len()),
            ));
        }
        let side = self.crop_size;
        let dim = self.embedding_dim;
        let input_name = self.input_name.as_str();
        let output_name = self.output_name.as_str();
        let session = &mut self.session;
        let run = catch_unwind(AssertUnwindSafe(|| -> ort::Result<Vec<Vec<f32>>> {
            let input = TensorRef::from_array_view(([batch, 3, side, side], pixels))?;
            let outputs = session.run(ort::inputs![input_name => input])?;
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
            Ok(result) => result.map_err(|e| PgClipError::runtime("image inference", e)),
            Err(panic) => Err(PgClipError::runtime("image inference", format!("panicked: {}", panic_message(&panic)))),
        }
    }
}

/// Checks one graph input or output: the name the manifest gives, float32, a free batch axis, then `dims`.
fn check_outlet(session: &Session, what: &str, is_input: bool, name: &str, dims: &[i64]) -> Result<()> {
    let kind = if is_input { "input" } else { "output" };
    let outlets = if is_input { session.inputs() } else { session.outputs() };
    let outlet = outlets.iter().find(|o| o.name() == name).ok_or_else(|| {
        let names: Vec<&str> = outlets.iter().map(|o| o.name()).collect();
        PgClipError::model_invalid(what, format!("the graph has no {kind} named {name:?} (it has {names:?})"))
    })?;
    let ok = match outlet.dtype() {
        ort::value::ValueType::Tensor { ty, shape, .. } => {
            *ty == ort::value::TensorElementType::Float32
                && shape.len() == dims.len() + 1
                && shape.iter().skip(1).zip(dims).all(|(actual, expected)| *actual == *expected || *actual < 0)
        }
        _ => false,
    };
    if !ok {
        let expected = dims.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(", ");
        return Err(PgClipError::model_invalid(
            what,
            format!("{kind} {name:?} is {}, expected float32 [batch, {expected}]", describe(outlet.dtype())),
        ));
    }
    Ok(())
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
