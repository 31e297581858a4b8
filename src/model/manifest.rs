//! The model directory's manifest.json (written by model/export.py): what the files are, their checksums,
//! the graph's input and output names, and the preprocessing constants. Pure: no Postgres, no ONNX Runtime.
#![forbid(unsafe_code)]

use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use super::checksum::ChecksumMemo;
use crate::error::{PgClipError, Result};
use crate::image::PreprocessConfig;

pub const MANIFEST_FILE: &str = "manifest.json";
const SUPPORTED_FORMAT_VERSION: u32 = 1;

#[derive(Debug, Clone, Deserialize)]
pub struct Manifest {
    pub format: String,
    pub format_version: u32,
    pub model_name: String,
    pub model_version: String,
    #[serde(default)]
    pub architecture: Option<String>,
    pub random_weights: bool,
    #[serde(default)]
    pub seed: Option<i64>,
    #[serde(default)]
    pub source: Option<String>,
    pub embedding_dim: usize,
    pub files: BTreeMap<String, FileEntry>,
    pub image: ImageTower,
    /// The optional dynamically quantized image tower (model/export.py --int8).
    #[serde(default)]
    pub image_int8: Option<GraphIo>,
    #[serde(default)]
    pub text: Option<TextTower>,
}

/// A graph file and the names of its input and output.
#[derive(Debug, Clone, Deserialize)]
pub struct GraphIo {
    pub onnx: String,
    pub input: String,
    pub output: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct FileEntry {
    pub sha256: String,
    pub bytes: u64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ImageTower {
    pub onnx: String,
    pub input: String,
    pub output: String,
    pub preprocess: PreprocessSpec,
}

#[derive(Debug, Clone, Deserialize)]
pub struct TextTower {
    pub onnx: String,
    pub input: String,
    pub output: String,
    pub context_length: usize,
    #[serde(default)]
    pub bpe_vocab: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct PreprocessSpec {
    pub shortest_edge: u32,
    pub crop_size: u32,
    pub resample: String,
    pub rescale_factor: f32,
    pub mean: [f32; 3],
    pub std: [f32; 3],
}

/// A manifest together with the directory it was read from.
#[derive(Debug, Clone)]
pub struct ModelDir {
    pub dir: PathBuf,
    pub manifest: Manifest,
}

impl ModelDir {
    /// Reads and validates `dir/manifest.json`: structure, supported version, and that every file it lists
    /// exists with the recorded size. Checksums are verified separately (`verify_file`), when a file is loaded.
    pub fn open(dir: &Path) -> Result<ModelDir> {
        let hint = Some(
            "Set pg_clip.model_path to a directory made by model/export.py (see the README, \"Model files\")."
                .to_string(),
        );
        if !dir.is_dir() {
            return Err(PgClipError::FileNotFound { what: "model directory", path: dir.to_path_buf(), hint });
        }
        let manifest_path = dir.join(MANIFEST_FILE);
        let text = match std::fs::read_to_string(&manifest_path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(PgClipError::FileNotFound { what: "model manifest", path: manifest_path, hint })
            }
            Err(e) => return Err(PgClipError::model_invalid(format!("{}", manifest_path.display()), e)),
        };
        let manifest = Manifest::parse(&text)
            .map_err(|reason| PgClipError::model_invalid(format!("{}", manifest_path.display()), reason))?;
        let model = ModelDir { dir: dir.to_path_buf(), manifest };
        for (name, entry) in &model.manifest.files {
            let path = model.file_path(name)?;
            match std::fs::metadata(&path) {
                Ok(meta) if meta.len() == entry.bytes => {}
                Ok(meta) => {
                    return Err(PgClipError::model_invalid(
                        format!("model file {}", path.display()),
                        format!(
                            "size is {} bytes, the manifest says {} (truncated or replaced?)",
                            meta.len(),
                            entry.bytes
                        ),
                    ))
                }
                Err(_) => return Err(PgClipError::FileNotFound { what: "model file", path, hint: None }),
            }
        }
        Ok(model)
    }

    /// The path of a file the manifest names; refuses names that would leave the directory.
    pub fn file_path(&self, name: &str) -> Result<PathBuf> {
        let relative = Path::new(name);
        if relative.is_absolute() || relative.components().any(|c| !matches!(c, std::path::Component::Normal(_))) {
            return Err(PgClipError::model_invalid(
                "model manifest",
                format!("file name {name:?} leaves the model directory"),
            ));
        }
        Ok(self.dir.join(relative))
    }

    /// Verifies a listed file's SHA-256 against the manifest. Costs one read of the file (about 0.2 s for the
    /// 350 MB image tower with SHA-NI), which also warms the page cache for the load that follows.
    pub fn verify_file(&self, name: &str, memo: &ChecksumMemo) -> Result<()> {
        let entry = self.manifest.files.get(name).ok_or_else(|| {
            PgClipError::model_invalid("model manifest", format!("{name} is not listed under \"files\""))
        })?;
        let path = self.file_path(name)?;
        let actual = memo.checksum("sha256", &path, sha256_file)?;
        if !actual.eq_ignore_ascii_case(&entry.sha256) {
            return Err(PgClipError::model_invalid(
                format!("model file {}", path.display()),
                format!("sha256 is {actual}, the manifest says {} (corrupt or replaced?)", entry.sha256),
            ));
        }
        Ok(())
    }

    /// Files that belong to an ONNX graph: the graph and its external data file, if listed.
    pub fn graph_files(&self, onnx: &str) -> Vec<String> {
        let data = format!("{onnx}.data");
        let mut names = vec![onnx.to_string()];
        if self.manifest.files.contains_key(&data) {
            names.push(data);
        }
        names
    }
}

impl Manifest {
    pub fn parse(text: &str) -> std::result::Result<Manifest, String> {
        let manifest: Manifest = serde_json::from_str(text).map_err(|e| format!("not a valid manifest: {e}"))?;
        if manifest.format != "pg_clip-model" {
            return Err(format!("format is {:?}, expected \"pg_clip-model\"", manifest.format));
        }
        if manifest.format_version != SUPPORTED_FORMAT_VERSION {
            return Err(format!(
                "format_version {} is not supported by this pg_clip (it reads version {SUPPORTED_FORMAT_VERSION})",
                manifest.format_version
            ));
        }
        if manifest.embedding_dim == 0 || manifest.embedding_dim > crate::pgvector::VECTOR_MAX_DIM {
            return Err(format!("embedding_dim {} is outside 1..=16000", manifest.embedding_dim));
        }
        let p = &manifest.image.preprocess;
        if p.resample != "bicubic" {
            return Err(format!("image resample {:?} is not supported (only \"bicubic\")", p.resample));
        }
        if p.crop_size == 0 || p.shortest_edge == 0 || p.std.iter().any(|s| *s <= 0.0) {
            return Err("image preprocess sizes must be positive and std > 0".into());
        }
        if !manifest.files.contains_key(&manifest.image.onnx) {
            return Err(format!("image.onnx {:?} is not listed under \"files\"", manifest.image.onnx));
        }
        Ok(manifest)
    }

    pub fn preprocess_config(&self) -> PreprocessConfig {
        let p = &self.image.preprocess;
        PreprocessConfig {
            shortest_edge: p.shortest_edge,
            crop_size: p.crop_size,
            rescale_factor: p.rescale_factor,
            mean: p.mean,
            std: p.std,
            apply_exif_orientation: true,
        }
    }
}

pub fn sha256_file(path: &Path) -> Result<String> {
    let mut file = std::fs::File::open(path).map_err(|_| PgClipError::FileNotFound {
        what: "model file",
        path: path.to_path_buf(),
        hint: None,
    })?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).map_err(|e| PgClipError::runtime("reading model file", e))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> String {
        r#"{"format":"pg_clip-model","format_version":1,"model_name":"clip-ViT-B-32",
            "model_version":"clip-ViT-B-32-random-seed42","random_weights":true,"seed":42,"embedding_dim":512,
            "files":{"image.onnx":{"sha256":"00","bytes":1}},
            "image":{"onnx":"image.onnx","input":"pixel_values","output":"image_embeds",
              "preprocess":{"shortest_edge":224,"crop_size":224,"resample":"bicubic",
              "rescale_factor":0.00392156862745098,"mean":[0.48145466,0.4578275,0.40821073],
              "std":[0.26862954,0.26130258,0.27577711]}}}"#
            .to_string()
    }

    #[test]
    fn parses_the_export_tool_schema() {
        let m = Manifest::parse(&sample()).unwrap();
        assert_eq!(m.embedding_dim, 512);
        assert!(m.random_weights);
        assert_eq!(m.preprocess_config().crop_size, 224);
    }

    #[test]
    fn rejects_wrong_version_and_unknown_resample() {
        let s = sample().replace("\"format_version\":1", "\"format_version\":9");
        assert!(Manifest::parse(&s).unwrap_err().contains("format_version 9"));
        let s = sample().replace("\"bicubic\"", "\"nearest\"");
        assert!(Manifest::parse(&s).unwrap_err().contains("nearest"));
        assert!(Manifest::parse("{").is_err());
    }

    #[test]
    fn refuses_file_names_outside_the_directory() {
        let dir = ModelDir { dir: "/m".into(), manifest: Manifest::parse(&sample()).unwrap() };
        assert!(dir.file_path("../etc/passwd").is_err());
        assert!(dir.file_path("/etc/passwd").is_err());
        assert_eq!(dir.file_path("image.onnx").unwrap(), PathBuf::from("/m/image.onnx"));
    }

    #[test]
    fn missing_directory_is_file_not_found() {
        let err = ModelDir::open(Path::new("/nonexistent/pg_clip/model")).unwrap_err();
        assert_eq!(err.sqlstate_code(), "58P01");
    }
}
