//! Model names: which directory a name stands for, and the models a cluster has installed. Pure: no SQL.
//!
//! `default` is the model at `pg_clip.model_path` (the one installed with the extension); any other name is a
//! directory `<pg_clip.models_path>/<name>/` holding a model/export.py directory. Names are restricted to a
//! safe alphabet so that a name can never reach outside the models directory.
#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};

use super::manifest::{ModelDir, MANIFEST_FILE};
use crate::error::{PgClipError, Result};

/// The name of the model at pg_clip.model_path.
pub const DEFAULT_MODEL: &str = "default";
const MAX_NAME_BYTES: usize = 63;

/// Whether `name` may name a model: 1 to 63 bytes of ASCII letters, digits, `.`, `_` and `-`, starting with a
/// letter or digit (so never `.` or `..`, never a path).
pub fn valid_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= MAX_NAME_BYTES
        && bytes[0].is_ascii_alphanumeric()
        && bytes.iter().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// The directory of the model called `name`. An invalid name is 22023; a name with no directory is 58P01
/// with a HINT listing the models there are.
pub fn model_dir(name: &str, default_dir: &Path, models_dir: &Path) -> Result<PathBuf> {
    if name == DEFAULT_MODEL {
        return Ok(default_dir.to_path_buf());
    }
    if !valid_name(name) {
        return Err(PgClipError::BadSetting {
            setting: "pg_clip.model",
            reason: format!(
                "{name:?} is not a model name (1 to {MAX_NAME_BYTES} letters, digits, '.', '_' or '-', starting with \
                 a letter or digit)"
            ),
        });
    }
    let dir = models_dir.join(name);
    if dir.join(MANIFEST_FILE).is_file() {
        return Ok(dir);
    }
    let known: Vec<String> = installed(default_dir, models_dir).into_iter().map(|m| m.name).collect();
    Err(PgClipError::FileNotFound {
        what: "model",
        path: dir,
        hint: Some(format!(
            "Installed models: {}. A model is a directory made by model/export.py under pg_clip.models_path \
             (see the README, \"Choosing a model\").",
            known.join(", ")
        )),
    })
}

/// A model the cluster has: its name and directory, and its manifest (or why it cannot be read).
pub struct Installed {
    pub name: String,
    pub dir: PathBuf,
    pub model: Result<ModelDir>,
}

/// `default` first, then every directory under `models_dir` with a manifest.json, by name. Directories whose
/// names are not valid model names (an export's temporary `.name.tmp-*`, lost+found) are not models.
pub fn installed(default_dir: &Path, models_dir: &Path) -> Vec<Installed> {
    let mut names: Vec<String> = std::fs::read_dir(models_dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok())
                .filter_map(|e| e.file_name().into_string().ok())
                .filter(|n| valid_name(n) && n != DEFAULT_MODEL && models_dir.join(n).join(MANIFEST_FILE).is_file())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    let mut out = vec![Installed {
        name: DEFAULT_MODEL.to_string(),
        dir: default_dir.to_path_buf(),
        model: ModelDir::open(default_dir),
    }];
    out.extend(names.into_iter().map(|name| {
        let dir = models_dir.join(&name);
        Installed { model: ModelDir::open(&dir), name, dir }
    }));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_cannot_leave_the_models_directory() {
        for bad in ["", ".", "..", "../x", "a/b", "/abs", ".hidden", "a b", "é", &"x".repeat(64)] {
            assert!(!valid_name(bad), "{bad:?}");
            let err = model_dir(bad, Path::new("/d"), Path::new("/m")).unwrap_err();
            assert_eq!(err.sqlstate_code(), "22023", "{bad:?}");
        }
        for good in ["siglip2-base-patch16-224", "clip-ViT-L-14-336", "v2", "a.b_c"] {
            assert!(valid_name(good), "{good:?}");
        }
    }

    #[test]
    fn default_is_model_path_and_unknown_names_list_the_installed_ones() {
        let root = std::env::temp_dir().join(format!("pg_clip-catalog-{}", std::process::id()));
        let models = root.join("models");
        std::fs::create_dir_all(models.join("b16")).unwrap();
        std::fs::write(models.join("b16").join(MANIFEST_FILE), "{}").unwrap();
        std::fs::create_dir_all(models.join("empty")).unwrap();
        assert_eq!(model_dir("default", &root.join("model"), &models).unwrap(), root.join("model"));
        assert_eq!(model_dir("b16", &root.join("model"), &models).unwrap(), models.join("b16"));
        let err = model_dir("empty", &root.join("model"), &models).unwrap_err();
        assert_eq!(err.sqlstate_code(), "58P01");
        assert!(err.hint().unwrap().contains("Installed models: default, b16."), "{:?}", err.hint());
        let names: Vec<String> = installed(&root.join("model"), &models).into_iter().map(|m| m.name).collect();
        assert_eq!(names, ["default", "b16"]);
        std::fs::remove_dir_all(&root).unwrap();
    }
}
