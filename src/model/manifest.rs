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
use crate::image::{Resample, ResizeMode};
use crate::tokenizer::wordpiece::WordPieceSettings;
use crate::tokenizer::SentencePieceSettings;

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
    /// "clip" (absent in directories made before SigLIP: they are all CLIP) or "siglip".
    #[serde(default)]
    pub family: Option<String>,
    pub embedding_dim: usize,
    pub files: BTreeMap<String, FileEntry>,
    pub image: ImageTower,
    /// The optional dynamically quantized image tower (model/export.py --int8).
    #[serde(default)]
    pub image_int8: Option<GraphIo>,
    #[serde(default)]
    pub text: Option<TextTower>,
    /// The multilingual text tower (model/export.py --towers ...,multilingual); absent from older directories.
    #[serde(default)]
    pub text_multilingual: Option<MultilingualTower>,
    /// Its int8 graph (--int8 with the multilingual tower).
    #[serde(default)]
    pub text_multilingual_int8: Option<MultilingualGraph>,
}

/// sentence-transformers clip-ViT-B-32-multilingual-v1's text encoder as one graph: int64 `input_ids` and
/// `attention_mask` [batch, sequence] -> float32 [batch, embedding_dim], in the space of the image vectors,
/// not normalised. Its weights have their own provenance (a checkpoint or a seed), recorded here.
#[derive(Debug, Clone, Deserialize)]
pub struct MultilingualTower {
    /// Always "multilingual".
    pub kind: String,
    pub model_name: String,
    /// Tells vectors of different multilingual weights apart (`clip-ViT-B-32-multilingual-v1[-random-seedN]`).
    pub model_version: String,
    pub random_weights: bool,
    #[serde(default)]
    pub seed: Option<i64>,
    #[serde(default)]
    pub source: Option<String>,
    pub onnx: String,
    /// The graph's inputs in order: `["input_ids", "attention_mask"]`.
    pub inputs: Vec<String>,
    pub output: String,
    pub embedding_dim: usize,
    /// Ids per text, `[CLS]` and `[SEP]` included (the tokenizer truncates to it).
    pub max_seq_length: usize,
    pub tokenizer: TokenizerSpec,
}

/// The multilingual tower's tokenizer: a file of the directory and the settings to build it with.
#[derive(Debug, Clone, Deserialize)]
pub struct TokenizerSpec {
    /// Always "wordpiece".
    pub kind: String,
    /// `text-multilingual.vocab.txt` (a BERT vocab.txt) or `text-multilingual.tokenizer.json`.
    pub file: String,
    pub sha256: String,
    pub do_lower_case: bool,
    #[serde(default)]
    pub strip_accents: Option<bool>,
    pub tokenize_chinese_chars: bool,
    pub max_length: usize,
}

impl TokenizerSpec {
    /// The settings `WordPieceTokenizer::from_file` takes (it refuses the ones it cannot reproduce exactly).
    pub fn settings(&self) -> WordPieceSettings {
        WordPieceSettings {
            do_lower_case: self.do_lower_case,
            strip_accents: self.strip_accents,
            tokenize_chinese_chars: self.tokenize_chinese_chars,
            max_length: self.max_length,
        }
    }
}

/// A graph with several named inputs and one output (the multilingual tower's int8 graph).
#[derive(Debug, Clone, Deserialize)]
pub struct MultilingualGraph {
    pub onnx: String,
    pub inputs: Vec<String>,
    pub output: String,
    #[serde(default)]
    pub quantization: Quantization,
}

/// A graph file and the names of its input and output (the int8 image tower).
#[derive(Debug, Clone, Deserialize)]
pub struct GraphIo {
    pub onnx: String,
    pub input: String,
    pub output: String,
    #[serde(default)]
    pub quantization: Quantization,
}

/// How an int8 graph was quantized: the settings of onnxruntime's quantize_dynamic that model/export.py records.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Quantization {
    #[serde(default)]
    pub weight_type: Option<String>,
    #[serde(default)]
    pub reduce_range: Option<bool>,
}

impl Quantization {
    /// Signed weights at the full 8-bit range (what model/export.py made before 0.3.0). ONNX Runtime multiplies
    /// them by uint8 activations with u8s8 kernels which, on a CPU without VNNI, add pairs of products into
    /// saturating 16-bit sums: measured there, 1 - cos to fp32 up to 2.5e-2 instead of 2.3e-4 (model/README.md,
    /// "Why 7-bit weights"). 7-bit weights (reduce_range) and unsigned weights cannot saturate.
    pub fn can_saturate_without_vnni(&self) -> bool {
        self.weight_type.as_deref() == Some("QInt8") && self.reduce_range == Some(false)
    }
}

/// Whether this CPU runs ONNX Runtime's u8s8 kernels with a saturating instruction: x86-64 without VNNI
/// (AVX512-VNNI or AVX-VNNI compute the dot products in 32 bits). Other architectures have no such kernel.
pub fn cpu_saturates_u8s8() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        !(std::arch::is_x86_feature_detected!("avx512vnni") || std::arch::is_x86_feature_detected!("avxvnni"))
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
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
    /// CLIP: OpenAI's BPE vocabulary (the tokenizer is pg_clip's own port).
    #[serde(default)]
    pub bpe_vocab: Option<String>,
    /// SigLIP: the checkpoint's SentencePiece `tokenizer.json` and what the processor adds around it.
    #[serde(default)]
    pub tokenizer: Option<SentencePieceSpec>,
}

/// A SigLIP text tower's tokenizer (model/export.py writes the file without special tokens, truncation or
/// padding of its own; these flags say what `SiglipProcessor(padding="max_length")` adds).
#[derive(Debug, Clone, Deserialize)]
pub struct SentencePieceSpec {
    /// Always "tokenizers".
    pub kind: String,
    pub file: String,
    pub sha256: String,
    #[serde(default)]
    pub lowercase: bool,
    #[serde(default)]
    pub add_bos: bool,
    #[serde(default)]
    pub add_eos: bool,
    #[serde(default)]
    pub bos_id: Option<u32>,
    #[serde(default)]
    pub eos_id: Option<u32>,
    pub pad_id: u32,
    /// Always "max_length": the encoder has no attention mask and pools the last position.
    pub padding: String,
    pub max_length: usize,
    /// A tokenizer trained by model/export.py for random-weight models (no registry ships SigLIP's).
    #[serde(default)]
    pub test_tokenizer: bool,
}

impl SentencePieceSpec {
    pub fn settings(&self) -> SentencePieceSettings {
        SentencePieceSettings {
            lowercase: self.lowercase,
            bos_id: if self.add_bos { self.bos_id } else { None },
            eos_id: if self.add_eos { self.eos_id } else { None },
            pad_id: self.pad_id,
            max_length: self.max_length,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct PreprocessSpec {
    /// "shortest_edge_center_crop" (CLIP; absent in older manifests) or "squash" (SigLIP).
    #[serde(default)]
    pub mode: Option<String>,
    pub shortest_edge: u32,
    pub crop_size: u32,
    pub resample: String,
    pub rescale_factor: f32,
    pub mean: [f32; 3],
    pub std: [f32; 3],
}

impl PreprocessSpec {
    pub fn resize_mode(&self) -> ResizeMode {
        match self.mode.as_deref() {
            Some("squash") => ResizeMode::Squash,
            _ => ResizeMode::ShortestEdgeCenterCrop,
        }
    }
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
        if Resample::from_name(&p.resample).is_none() {
            return Err(format!("image resample {:?} is not supported (\"bicubic\" or \"bilinear\")", p.resample));
        }
        if !matches!(p.mode.as_deref(), None | Some("shortest_edge_center_crop") | Some("squash")) {
            return Err(format!(
                "image preprocess mode {:?} is not supported (\"shortest_edge_center_crop\" or \"squash\")",
                p.mode
            ));
        }
        if !matches!(manifest.family.as_deref(), None | Some("clip") | Some("siglip")) {
            return Err(format!("family {:?} is not supported (\"clip\" or \"siglip\")", manifest.family));
        }
        if let Some(text) = &manifest.text {
            manifest.check_text(text)?;
        }
        if p.crop_size == 0 || p.shortest_edge == 0 || p.std.iter().any(|s| *s <= 0.0) {
            return Err("image preprocess sizes must be positive and std > 0".into());
        }
        if !manifest.files.contains_key(&manifest.image.onnx) {
            return Err(format!("image.onnx {:?} is not listed under \"files\"", manifest.image.onnx));
        }
        if let Some(tower) = &manifest.text_multilingual {
            manifest.check_multilingual(tower)?;
        }
        if let Some(int8) = &manifest.text_multilingual_int8 {
            if manifest.text_multilingual.is_none() {
                return Err("text_multilingual_int8 without text_multilingual".into());
            }
            manifest.check_graph("text_multilingual_int8", &int8.onnx, &int8.inputs)?;
        }
        Ok(manifest)
    }

    fn check_text(&self, text: &TextTower) -> std::result::Result<(), String> {
        let Some(spec) = &text.tokenizer else { return Ok(()) };
        if spec.kind != "tokenizers" || spec.padding != "max_length" {
            return Err(format!(
                "text.tokenizer kind {:?} / padding {:?}: only \"tokenizers\" / \"max_length\" are supported",
                spec.kind, spec.padding
            ));
        }
        if spec.max_length != text.context_length
            || (spec.add_bos && spec.bos_id.is_none())
            || (spec.add_eos && spec.eos_id.is_none())
        {
            return Err(
                "text.tokenizer: max_length must equal context_length, and bos/eos ids be given when added".to_string()
            );
        }
        match self.files.get(&spec.file) {
            None => Err(format!("text.tokenizer.file {:?} is not listed under \"files\"", spec.file)),
            Some(entry) if !entry.sha256.eq_ignore_ascii_case(&spec.sha256) => {
                Err(format!("text.tokenizer.sha256 differs from the one \"files\" lists for {}", spec.file))
            }
            Some(_) => Ok(()),
        }
    }

    /// "clip" or "siglip".
    pub fn family(&self) -> &str {
        self.family.as_deref().unwrap_or("clip")
    }

    /// The towers the directory has, as clip_models() lists them.
    pub fn towers(&self) -> Vec<&'static str> {
        let mut towers = vec!["image"];
        if self.text.is_some() {
            towers.push("text");
        }
        if self.text_multilingual.is_some() {
            towers.push("multilingual");
        }
        towers
    }

    fn check_multilingual(&self, tower: &MultilingualTower) -> std::result::Result<(), String> {
        const WHAT: &str = "text_multilingual";
        if tower.kind != "multilingual" {
            return Err(format!("{WHAT}.kind is {:?}, expected \"multilingual\"", tower.kind));
        }
        self.check_graph(WHAT, &tower.onnx, &tower.inputs)?;
        if tower.embedding_dim != self.embedding_dim {
            return Err(format!(
                "{WHAT}.embedding_dim {} differs from the image vectors' {}: the towers must share one space",
                tower.embedding_dim, self.embedding_dim
            ));
        }
        let tokenizer = &tower.tokenizer;
        if tokenizer.kind != "wordpiece" {
            return Err(format!("{WHAT}.tokenizer.kind {:?} is not supported (only \"wordpiece\")", tokenizer.kind));
        }
        // 512: the DistilBERT position table; [CLS] and [SEP] need two.
        if !(2..=512).contains(&tower.max_seq_length) || tokenizer.max_length != tower.max_seq_length {
            return Err(format!(
                "{WHAT}.max_seq_length {} / tokenizer.max_length {} must be equal and within 2..=512",
                tower.max_seq_length, tokenizer.max_length
            ));
        }
        match self.files.get(&tokenizer.file) {
            None => Err(format!("{WHAT}.tokenizer.file {:?} is not listed under \"files\"", tokenizer.file)),
            Some(entry) if !entry.sha256.eq_ignore_ascii_case(&tokenizer.sha256) => {
                Err(format!("{WHAT}.tokenizer.sha256 differs from the one \"files\" lists for {}", tokenizer.file))
            }
            Some(_) => Ok(()),
        }
    }

    /// A graph of several inputs: listed under "files", and fed input_ids and attention_mask in that order.
    fn check_graph(&self, what: &str, onnx: &str, inputs: &[String]) -> std::result::Result<(), String> {
        if !self.files.contains_key(onnx) {
            return Err(format!("{what}.onnx {onnx:?} is not listed under \"files\""));
        }
        if inputs != ["input_ids", "attention_mask"] {
            return Err(format!("{what}.inputs {inputs:?}, expected [\"input_ids\", \"attention_mask\"]"));
        }
        Ok(())
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
            transparency: crate::image::Transparency::DropAlpha,
            resize: p.resize_mode(),
            resample: crate::image::Resample::from_name(&p.resample).unwrap_or_default(),
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
    fn int8_graphs_know_whether_their_weights_can_saturate_u8s8() {
        let with = |quantization: &str| {
            sample().replacen(
                r#""files":"#,
                &format!(
                    r#""image_int8":{{"onnx":"image.int8.onnx","input":"pixel_values","output":"image_embeds",
                       "quantization":{quantization},"fidelity":{{}}}},"files":"#
                ),
                1,
            )
        };
        let saturates = |quantization: &str| {
            Manifest::parse(&with(quantization)).unwrap().image_int8.unwrap().quantization.can_saturate_without_vnni()
        };
        // What export.py wrote before 0.3.0, and since.
        assert!(saturates(r#"{"method":"quantize_dynamic","weight_type":"QInt8","reduce_range":false}"#));
        assert!(!saturates(r#"{"method":"quantize_dynamic","weight_type":"QInt8","reduce_range":true}"#));
        assert!(!saturates(r#"{"weight_type":"QUInt8","reduce_range":false}"#));
        // Settings not recorded: nothing to say.
        assert!(!saturates("{}"));
        assert!(Manifest::parse(&sample()).unwrap().image_int8.is_none());
    }

    #[test]
    fn refuses_file_names_outside_the_directory() {
        let dir = ModelDir { dir: "/m".into(), manifest: Manifest::parse(&sample()).unwrap() };
        assert!(dir.file_path("../etc/passwd").is_err());
        assert!(dir.file_path("/etc/passwd").is_err());
        assert_eq!(dir.file_path("image.onnx").unwrap(), PathBuf::from("/m/image.onnx"));
    }

    /// The manifest export.py writes with --towers image,text,multilingual --int8 (abridged).
    fn multilingual_sample() -> String {
        sample().replacen(
            r#""files":{"image.onnx":{"sha256":"00","bytes":1}},"#,
            r#""files":{"image.onnx":{"sha256":"00","bytes":1},"text-multilingual.onnx":{"sha256":"01","bytes":1},
               "text-multilingual.onnx.data":{"sha256":"02","bytes":1},
               "text-multilingual.int8.onnx":{"sha256":"03","bytes":1},
               "text-multilingual.vocab.txt":{"sha256":"fe0f","bytes":1}},
              "text_multilingual":{"kind":"multilingual","model_name":"clip-ViT-B-32-multilingual-v1",
               "model_version":"clip-ViT-B-32-multilingual-v1-random-seed42","architecture":"...",
               "random_weights":true,"seed":42,"source":"seeded random init","source_sha256":null,
               "onnx":"text-multilingual.onnx","inputs":["input_ids","attention_mask"],"output":"text_embeds",
               "embedding_dim":512,"max_seq_length":128,"pooling":"mean","normalized":false,
               "tokenizer":{"kind":"wordpiece","file":"text-multilingual.vocab.txt","sha256":"FE0F",
                 "do_lower_case":false,"strip_accents":null,"tokenize_chinese_chars":true,"max_length":128}},
              "text_multilingual_int8":{"onnx":"text-multilingual.int8.onnx","inputs":["input_ids","attention_mask"],
               "output":"text_embeds","quantization":{},"fidelity":{}},"#,
            1,
        )
    }

    #[test]
    fn parses_the_multilingual_tower() {
        let m = Manifest::parse(&multilingual_sample()).unwrap();
        let tower = m.text_multilingual.as_ref().unwrap();
        assert_eq!(tower.inputs, ["input_ids", "attention_mask"]);
        assert_eq!((tower.output.as_str(), tower.max_seq_length, tower.random_weights), ("text_embeds", 128, true));
        assert_eq!(tower.model_version, "clip-ViT-B-32-multilingual-v1-random-seed42");
        assert_eq!(tower.tokenizer.settings(), WordPieceSettings::multilingual_cased());
        assert_eq!(m.text_multilingual_int8.unwrap().onnx, "text-multilingual.int8.onnx");
        // Older directories have neither section.
        let old = Manifest::parse(&sample()).unwrap();
        assert!(old.text_multilingual.is_none() && old.text_multilingual_int8.is_none());
    }

    #[test]
    fn rejects_inconsistent_multilingual_sections() {
        let bad = |from: &str, to: &str| {
            let s = multilingual_sample();
            assert!(s.contains(from), "{from}");
            Manifest::parse(&s.replacen(from, to, 1)).unwrap_err()
        };
        assert!(bad(r#""onnx":"text-multilingual.onnx""#, r#""onnx":"other.onnx""#).contains("not listed"));
        assert!(bad(r#""inputs":["input_ids","attention_mask"]"#, r#""inputs":["input_ids"]"#).contains("inputs"));
        assert!(bad(r#""sha256":"FE0F""#, r#""sha256":"abcd""#).contains("tokenizer.sha256"));
        assert!(bad(r#""file":"text-multilingual.vocab.txt""#, r#""file":"vocab.txt""#).contains("not listed"));
        assert!(bad(r#""max_seq_length":128"#, r#""max_seq_length":1024"#).contains("max_seq_length"));
        assert!(bad(r#""kind":"wordpiece""#, r#""kind":"bpe""#).contains("wordpiece"));
        assert!(bad(r#""kind":"multilingual""#, r#""kind":"clip""#).contains("kind"));
        assert!(bad(r#""embedding_dim":512,"max_seq_length""#, r#""embedding_dim":768,"max_seq_length""#)
            .contains("one space"));
        assert!(bad(r#""text_multilingual":{"kind""#, r#""other":{"kind""#).contains("without text_multilingual"));
    }

    #[test]
    fn missing_directory_is_file_not_found() {
        let err = ModelDir::open(Path::new("/nonexistent/pg_clip/model")).unwrap_err();
        assert_eq!(err.sqlstate_code(), "58P01");
    }
}
