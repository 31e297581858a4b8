//! The towers (image, text): one ONNX Runtime session each per backend, created on first use and kept
//! for the life of the backend. All session code lives here, so that a later step (shared, pre-packed
//! weights) changes one place.

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

/// Which tower, with what its graph must look like.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TowerKind {
    /// float32 pixels [batch, 3, crop, crop] -> [batch, dim]
    Image,
    /// int64 token ids [batch, context] -> [batch, dim]
    Text,
}

pub struct Tower {
    session: Session,
    pub kind: TowerKind,
    pub key: EncoderKey,
    pub model: ModelDir,
    pub load_time: Duration,
    input_name: String,
    output_name: String,
    /// Elements of one input item: 3*crop*crop pixels, or the context length in tokens.
    item_len: usize,
    item_shape: Vec<i64>,
    embedding_dim: usize,
}

/// The image tower (kept as a name: most of the extension speaks of it).
pub type ImageEncoder = Tower;

impl Tower {
    /// Verifies the graph files' checksums, creates the session with all signals blocked (ONNX Runtime may
    /// start threads), and checks the graph's input and output against the manifest before any inference.
    pub fn load(runtime: &Runtime, model: ModelDir, kind: TowerKind, intra_op_threads: usize) -> Result<Tower> {
        let started = Instant::now();
        let manifest = &model.manifest;
        let (onnx, input_name, output_name, item_shape) = match kind {
            TowerKind::Image => {
                let crop = manifest.image.preprocess.crop_size as i64;
                (&manifest.image.onnx, &manifest.image.input, &manifest.image.output, vec![3, crop, crop])
            }
            TowerKind::Text => {
                let text = manifest.text.as_ref().ok_or_else(|| {
                    PgClipError::model_invalid(
                        format!("model {}", model.dir.display()),
                        "it has no text tower (export it with model/export.py --towers image,text)",
                    )
                })?;
                (&text.onnx, &text.input, &text.output, vec![text.context_length as i64])
            }
        };
        for name in model.graph_files(onnx) {
            model.verify_file(&name)?;
        }
        let onnx_path = model.file_path(onnx)?;
        let what = format!("{} model {}", kind.name(), onnx_path.display());
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
            Err(panic) => {
                return Err(PgClipError::model_invalid(what, format!("loading panicked: {}", panic_message(&panic))))
            }
        };

        let embedding_dim = manifest.embedding_dim;
        let element = match kind {
            TowerKind::Image => ort::value::TensorElementType::Float32,
            TowerKind::Text => ort::value::TensorElementType::Int64,
        };
        check_outlet(&session, &what, true, input_name, element, &item_shape)?;
        check_outlet(
            &session,
            &what,
            false,
            output_name,
            ort::value::TensorElementType::Float32,
            &[embedding_dim as i64],
        )?;

        Ok(Tower {
            kind,
            key: EncoderKey {
                model_dir: model.dir.clone(),
                onnx_sha256: manifest.files[onnx].sha256.clone(),
                intra_op_threads,
            },
            input_name: input_name.clone(),
            output_name: output_name.clone(),
            item_len: item_shape.iter().product::<i64>() as usize,
            item_shape,
            embedding_dim,
            model,
            session,
            load_time: started.elapsed(),
        })
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

    /// Runs the text tower on `batch` token-id rows of the context length.
    pub fn embed_tokens(&mut self, ids: &[i64], batch: usize) -> Result<Vec<Vec<f32>>> {
        self.run(ids, batch)
    }

    fn run<T: ort::value::PrimitiveTensorElementType + Clone + std::fmt::Debug + 'static>(
        &mut self,
        items: &[T],
        batch: usize,
    ) -> Result<Vec<Vec<f32>>> {
        let context = self.kind.inference_context();
        if batch == 0 || items.len() != batch * self.item_len {
            return Err(PgClipError::runtime(context, format!("got {} values for a batch of {batch}", items.len())));
        }
        let mut shape = vec![batch as i64];
        shape.extend_from_slice(&self.item_shape);
        let dim = self.embedding_dim;
        let input_name = self.input_name.as_str();
        let output_name = self.output_name.as_str();
        let session = &mut self.session;
        let run = catch_unwind(AssertUnwindSafe(|| -> ort::Result<Vec<Vec<f32>>> {
            let input = TensorRef::from_array_view((shape, items))?;
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
        }
    }

    fn inference_context(self) -> &'static str {
        match self {
            TowerKind::Image => "image inference",
            TowerKind::Text => "text inference",
        }
    }
}

/// Checks one graph input or output: the name the manifest gives, its element type, a free batch axis,
/// then `dims`.
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
                && shape.iter().skip(1).zip(dims).all(|(actual, expected)| *actual == *expected || *actual < 0)
        }
        _ => false,
    };
    if !ok {
        let expected = dims.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(", ");
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
