//! Image decoding and CLIP / SigLIP preprocessing (pure Rust, no Postgres).
//!
//! The stored embeddings were made by sentence-transformers `clip-ViT-B-32`, whose image side is the
//! Hugging Face *slow* (PIL) `CLIPImageProcessor` for `openai/clip-vit-base-patch32` (in transformers
//! 5.x the same code is `CLIPImageProcessorPil`; the default `CLIPImageProcessor` there uses torchvision
//! and resizes differently). To reproduce its vectors we reproduce its pixels:
//!
//! 1. decode, then convert to 8-bit RGB the way `PIL.Image.convert("RGB")` does ([`decode`]), or, with
//!    [`Transparency::OntoWhite`], the way transformers 5.x does (composited onto white);
//! 2. optionally apply the EXIF orientation ([`orientation`]); the reference does not (Pillow 13 does
//!    turn TIFFs while loading them, which `apply_exif_orientation = false` does not reproduce);
//! 3. resize so the shortest side is `shortest_edge` with Pillow 13's bicubic convolution, bit-exact
//!    ([`resize`]), computing only the pixels that survive the crop;
//! 4. centre-crop (zero-padding when the image is smaller than the crop), rescale and normalise
//!    exactly as transformers' numpy code does ([`preprocess`]).
//!
//! Other checkpoints' processors are the same code with other data ([`PreprocessConfig`]): CLIP ViT-L/14-336
//! only changes the sizes; SigLIP's `SiglipImageProcessorPil` ([`ResizeMode::Squash`]) replaces step 3 and 4's
//! geometry by a resize of the whole image to the square input, with Pillow's bicubic (SigLIP 1) or bilinear
//! ([`Resample::Bilinear`], SigLIP 2) filter, and normalises with mean = std = 0.5.
//!
//! Where we knowingly differ from the reference, it is on purpose and documented where it happens:
//! 16-bit images are scaled to 8 bits (Pillow clamps 16-bit grey to 255 and truncates 16-bit RGB to
//! its high byte), and EXIF orientation is applied unless `apply_exif_orientation` is false.
//! JPEG is decoded by libjpeg-turbo's code as in Pillow; the other formats by the `image` crate's
//! decoders, which are exact for the lossless formats and, on our fixtures, for lossy WebP too.
//! `tests/preprocess_fidelity.rs` measures all of it against the reference, for each processor.
#![forbid(unsafe_code)]

mod decode;
pub(crate) mod format;
mod jpeg;
mod orientation;
mod preprocess;
mod resize;

use crate::error::{PgClipError, Result};

/// Resource limits for one image, read from settings at the SQL edge.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ImageLimits {
    /// Largest accepted encoded size (`pg_clip.max_image_bytes`).
    pub max_bytes: usize,
    /// Largest accepted width * height as declared by the header (`pg_clip.max_image_pixels`),
    /// checked before any pixel buffer is allocated.
    pub max_pixels: u64,
}

/// The preprocessing constants of a CLIP checkpoint.
#[derive(Debug, Clone, PartialEq)]
pub struct PreprocessConfig {
    /// The shorter image side after resizing (`size.shortest_edge`). Unused by [`ResizeMode::Squash`].
    pub shortest_edge: u32,
    /// Side of the square input fed to the model: the centre crop (`crop_size`), or for
    /// [`ResizeMode::Squash`] both sides of the resize (`size.height` = `size.width`).
    pub crop_size: u32,
    /// Multiplier taking 0..=255 to 0..=1. transformers multiplies in float64 by the Python float
    /// 1/255 and then casts to float32; an f32 factor alone would give a different last bit for about
    /// half the levels, so a factor that is the reciprocal of an integer is widened back to that
    /// exact reciprocal (see `preprocess::level_tables`).
    pub rescale_factor: f32,
    /// Per-channel mean and standard deviation, in float32 as transformers applies them.
    pub mean: [f32; 3],
    pub std: [f32; 3],
    /// Apply the EXIF orientation tag before resizing. The reference does not, so vectors stored by it
    /// were made from the image as stored; turn this off to reproduce them for rotated photos.
    pub apply_exif_orientation: bool,
    /// What becomes of transparent pixels: the one step in which transformers 4.x and 5.x differ.
    pub transparency: Transparency,
    /// How the image is brought to `crop_size` x `crop_size`: CLIP's shortest-edge resize and centre crop, or
    /// SigLIP's resize of both sides (the aspect ratio is not kept, nothing is cut).
    pub resize: ResizeMode,
    /// Pillow's resampling filter for that resize (`resample` in preprocessor_config.json: 3 bicubic, 2 bilinear).
    pub resample: Resample,
}

/// How a processor reaches the model's square input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum ResizeMode {
    /// CLIPImageProcessor: the shorter side becomes `shortest_edge`, then a centre crop of `crop_size`.
    #[default]
    ShortestEdgeCenterCrop,
    /// SiglipImageProcessor: `size = {height, width}`, both sides resized to `crop_size`, no crop.
    Squash,
}

/// Pillow's resampling filters the processors use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Resample {
    /// `Image.BICUBIC` (3): CLIP and SigLIP 1.
    #[default]
    Bicubic,
    /// `Image.BILINEAR` (2): SigLIP 2.
    Bilinear,
}

impl Resample {
    /// The manifest's spelling.
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "bicubic" => Some(Resample::Bicubic),
            "bilinear" => Some(Resample::Bilinear),
            _ => None,
        }
    }
}

/// What becomes of transparency (an alpha channel, a PNG `tRNS` entry, a GIF transparent index) when the image
/// is made RGB, before the resize. Images without transparency are the same either way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Transparency {
    /// transformers 4.x's `convert_to_rgb`, i.e. Pillow's `image.convert("RGB")`: the alpha channel is dropped
    /// and the colour stored under a transparent pixel is kept (black, or whatever the exporter left there). What
    /// sentence-transformers ran up to transformers 4.57, so what vectors stored before 5.x were made with. The
    /// default.
    #[default]
    DropAlpha,
    /// transformers 5.x's `convert_to_rgb` (5.23's `CLIPImageProcessorPil`): the image is composited onto opaque
    /// white with Pillow's `Image.alpha_composite`, so transparent pixels become white and semi-transparent ones
    /// are blended towards white, with Pillow's integer arithmetic (see `decode::onto_white`). For vectors made
    /// with transformers 5.x: a transparent product photo's vector moves by 1 - cos ~0.1 between the two.
    OntoWhite,
}

impl Transparency {
    /// The spelling a setting uses: `drop` (transformers 4.x) or `white` (transformers 5.x).
    pub fn name(self) -> &'static str {
        match self {
            Transparency::DropAlpha => "drop",
            Transparency::OntoWhite => "white",
        }
    }

    /// Parses [`name`](Self::name)'s spellings, and the eras they stand for (`4.x`, `5.x`).
    pub fn from_name(name: &str) -> Option<Self> {
        match name.trim().to_ascii_lowercase().as_str() {
            "drop" | "4.x" | "4" => Some(Transparency::DropAlpha),
            "white" | "5.x" | "5" => Some(Transparency::OntoWhite),
            _ => None,
        }
    }
}

impl PreprocessConfig {
    /// The constants of `openai/clip-vit-base-patch32` (`preprocessor_config.json`), which
    /// sentence-transformers `clip-ViT-B-32` uses, with EXIF orientation applied.
    pub fn clip_vit_b32() -> Self {
        // Written as f64 and narrowed, as numpy does with `np.array(python_floats, dtype=float32)`:
        // parsing the decimal straight to f32 could round differently.
        const OPENAI_CLIP_MEAN: [f64; 3] = [0.48145466, 0.4578275, 0.40821073];
        const OPENAI_CLIP_STD: [f64; 3] = [0.26862954, 0.26130258, 0.27577711];
        PreprocessConfig {
            shortest_edge: 224,
            crop_size: 224,
            rescale_factor: (1.0f64 / 255.0) as f32,
            mean: OPENAI_CLIP_MEAN.map(|m| m as f32),
            std: OPENAI_CLIP_STD.map(|s| s as f32),
            apply_exif_orientation: true,
            transparency: Transparency::DropAlpha,
            resize: ResizeMode::ShortestEdgeCenterCrop,
            resample: Resample::Bicubic,
        }
    }

    /// Length of the CHW tensor this configuration produces.
    pub fn tensor_len(&self) -> usize {
        3 * self.crop_size as usize * self.crop_size as usize
    }
}

/// What the decoder found, before any orientation or resizing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodedInfo {
    /// Container format, spelled as Pillow's `Image.format` ("JPEG", "PNG", "GIF", "WEBP", "BMP", "TIFF").
    pub format: &'static str,
    /// Dimensions as stored in the file, before EXIF orientation.
    pub width: u32,
    pub height: u32,
    /// The EXIF orientation tag (1..=8; 1 when absent or unreadable), whether or not it was applied.
    pub exif_orientation: u8,
}

/// Full pipeline: bytes -> CHW float tensor written into `out` (len 3*crop*crop), channel-major
/// [R plane, G plane, B plane], each plane row-major.
pub fn preprocess_into(
    bytes: &[u8],
    limits: &ImageLimits,
    cfg: &PreprocessConfig,
    out: &mut [f32],
) -> Result<DecodedInfo> {
    if out.len() != cfg.tensor_len() {
        return Err(PgClipError::runtime(
            "image preprocessing",
            format!("output buffer holds {} floats, the crop needs {}", out.len(), cfg.tensor_len()),
        ));
    }
    let (crop, info) = preprocess_to_rgb8(bytes, limits, cfg)?;
    preprocess::normalize_into_chw(&crop, cfg, out);
    Ok(info)
}

/// Convenience: allocates.
pub fn preprocess(bytes: &[u8], limits: &ImageLimits, cfg: &PreprocessConfig) -> Result<(Vec<f32>, DecodedInfo)> {
    let mut out = vec![0.0; cfg.tensor_len()];
    let info = preprocess_into(bytes, limits, cfg, &mut out)?;
    Ok((out, info))
}

/// Intermediate, for tests/debugging: the uint8 RGB crop (crop*crop*3, HWC) before normalisation.
pub fn preprocess_to_rgb8(
    bytes: &[u8],
    limits: &ImageLimits,
    cfg: &PreprocessConfig,
) -> Result<(Vec<u8>, DecodedInfo)> {
    validate(cfg)?;
    let decoded = decode::decode_rgb8(bytes, limits, cfg.transparency)?;
    let info = decoded.info.clone();
    let image = if cfg.apply_exif_orientation {
        orientation::apply_exif_orientation(decoded.image, info.exif_orientation)
    } else {
        decoded.image
    };
    let crop = preprocess::resize_to_input(&image, cfg)?;
    Ok((crop, info))
}

fn validate(cfg: &PreprocessConfig) -> Result<()> {
    // i32 bounds: Pillow's resampler, which we port, indexes with C ints.
    let sane = |v: u32| (1..=65_535).contains(&v);
    let shortest_edge_used = cfg.resize == ResizeMode::ShortestEdgeCenterCrop;
    if (shortest_edge_used && !sane(cfg.shortest_edge)) || !sane(cfg.crop_size) {
        return Err(PgClipError::runtime(
            "image preprocessing",
            format!("shortest_edge {} and crop_size {} must be between 1 and 65535", cfg.shortest_edge, cfg.crop_size),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use ::image::{DynamicImage, ImageFormat, Rgb, RgbImage};
    use std::io::Cursor;

    const LIMITS: ImageLimits = ImageLimits { max_bytes: 16 << 20, max_pixels: 50_000_000 };

    fn encoded(format: ImageFormat, width: u32, height: u32) -> Vec<u8> {
        let img = RgbImage::from_fn(width, height, |x, y| Rgb([(x * 4) as u8, (y * 5) as u8, (x ^ y) as u8]));
        let mut out = Cursor::new(Vec::new());
        DynamicImage::ImageRgb8(img).write_to(&mut out, format).unwrap();
        out.into_inner()
    }

    fn run(bytes: &[u8]) -> Result<(Vec<u8>, DecodedInfo)> {
        preprocess_to_rgb8(bytes, &LIMITS, &PreprocessConfig::clip_vit_b32())
    }

    fn invalid_reason(result: Result<(Vec<u8>, DecodedInfo)>) -> String {
        match result {
            Err(PgClipError::InvalidImage { reason }) => reason,
            other => panic!("expected InvalidImage, got {other:?}"),
        }
    }

    /// A PNG header declaring a size, with a token IDAT: a decompression bomb's first bytes.
    fn png_header_only(width: u32, height: u32) -> Vec<u8> {
        fn chunk(kind: &[u8], data: &[u8]) -> Vec<u8> {
            let crc = crc32(&[kind, data].concat());
            [&(data.len() as u32).to_be_bytes()[..], kind, data, &crc.to_be_bytes()].concat()
        }
        fn crc32(bytes: &[u8]) -> u32 {
            let mut crc = !0u32;
            for &b in bytes {
                crc ^= u32::from(b);
                for _ in 0..8 {
                    crc = if crc & 1 == 1 { (crc >> 1) ^ 0xEDB8_8320 } else { crc >> 1 };
                }
            }
            !crc
        }
        let ihdr = [&width.to_be_bytes()[..], &height.to_be_bytes(), &[8, 2, 0, 0, 0]].concat();
        [
            &b"\x89PNG\r\n\x1a\n"[..],
            &chunk(b"IHDR", &ihdr),
            &chunk(b"IDAT", &[0x78, 0x9C, 0x03, 0x00]),
            &chunk(b"IEND", &[]),
        ]
        .concat()
    }

    /// Peak resident memory of this process, in kB (Linux).
    fn peak_rss_kb() -> Option<u64> {
        let status = std::fs::read_to_string("/proc/self/status").ok()?;
        let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
        line.split_whitespace().nth(1)?.parse().ok()
    }

    #[test]
    fn clip_constants_are_the_float32_values_numpy_uses() {
        let cfg = PreprocessConfig::clip_vit_b32();
        // np.array([0.48145466, 0.4578275, 0.40821073], dtype=np.float32).view(np.uint32)
        assert_eq!(cfg.mean.map(f32::to_bits), [0x3ef6_813a, 0x3eea_685e, 0x3ed1_00ff]);
        assert_eq!(cfg.std.map(f32::to_bits), [0x3e89_89d0, 0x3e85_c974, 0x3e8d_32a8]);
        assert_eq!(cfg.tensor_len(), 3 * 224 * 224);
    }

    #[test]
    fn transparency_names_round_trip_and_default_to_dropping_alpha() {
        assert_eq!(PreprocessConfig::clip_vit_b32().transparency, Transparency::DropAlpha);
        assert_eq!(Transparency::default(), Transparency::DropAlpha);
        for t in [Transparency::DropAlpha, Transparency::OntoWhite] {
            assert_eq!(Transparency::from_name(t.name()), Some(t));
        }
        assert_eq!(Transparency::from_name(" 5.x "), Some(Transparency::OntoWhite));
        assert_eq!(Transparency::from_name("4.x"), Some(Transparency::DropAlpha));
        assert_eq!(Transparency::from_name("black"), None);
    }

    #[test]
    fn transparent_pixels_are_kept_or_made_white() {
        // A 2x2 RGBA PNG, fully transparent red: 4.x keeps the red, 5.x sees white.
        let img = ::image::RgbaImage::from_pixel(2, 2, ::image::Rgba([200, 0, 0, 0]));
        let mut png = Cursor::new(Vec::new());
        DynamicImage::ImageRgba8(img).write_to(&mut png, ImageFormat::Png).unwrap();
        let cfg = PreprocessConfig::clip_vit_b32();
        let (dropped, _) = preprocess_to_rgb8(png.get_ref(), &LIMITS, &cfg).unwrap();
        let white = PreprocessConfig { transparency: Transparency::OntoWhite, ..cfg };
        let (composited, _) = preprocess_to_rgb8(png.get_ref(), &LIMITS, &white).unwrap();
        assert_eq!(&dropped[..3], &[200, 0, 0]);
        assert!(composited.iter().all(|&v| v == 255));
    }

    #[test]
    fn squash_needs_no_shortest_edge_but_a_sane_input_side() {
        let png = encoded(ImageFormat::Png, 64, 48);
        let siglip = PreprocessConfig {
            shortest_edge: 0,
            crop_size: 384,
            resize: ResizeMode::Squash,
            resample: Resample::Bilinear,
            ..PreprocessConfig::clip_vit_b32()
        };
        let (tensor, _) = preprocess(&png, &LIMITS, &siglip).unwrap();
        assert_eq!(tensor.len(), 3 * 384 * 384);
        let clip = PreprocessConfig { resize: ResizeMode::ShortestEdgeCenterCrop, ..siglip.clone() };
        assert!(preprocess(&png, &LIMITS, &clip).is_err(), "the shortest-edge path needs shortest_edge");
        let no_side = PreprocessConfig { crop_size: 0, ..siglip };
        assert!(preprocess(&png, &LIMITS, &no_side).is_err());
    }

    #[test]
    fn resample_names_are_the_manifest_spellings() {
        assert_eq!(Resample::from_name("bicubic"), Some(Resample::Bicubic));
        assert_eq!(Resample::from_name("bilinear"), Some(Resample::Bilinear));
        assert_eq!(Resample::from_name("lanczos"), None);
        assert_eq!(PreprocessConfig::clip_vit_b32().resize, ResizeMode::ShortestEdgeCenterCrop);
        assert_eq!(PreprocessConfig::clip_vit_b32().resample, Resample::Bicubic);
    }

    #[test]
    fn wrong_output_length_is_an_error_not_a_panic() {
        let cfg = PreprocessConfig::clip_vit_b32();
        let mut out = vec![0.0; 10];
        assert!(preprocess_into(b"x", &LIMITS, &cfg, &mut out).is_err());
    }

    #[test]
    fn every_decoded_format_runs_through_the_pipeline() {
        for (format, name) in [
            (ImageFormat::Png, "PNG"),
            (ImageFormat::Jpeg, "JPEG"),
            (ImageFormat::Gif, "GIF"),
            (ImageFormat::WebP, "WEBP"),
            (ImageFormat::Bmp, "BMP"),
            (ImageFormat::Tiff, "TIFF"),
        ] {
            let (crop, info) = run(&encoded(format, 64, 48)).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(info, DecodedInfo { format: name, width: 64, height: 48, exif_orientation: 1 });
            assert_eq!(crop.len(), 224 * 224 * 3);
            let (tensor, _) = preprocess(&encoded(format, 64, 48), &LIMITS, &PreprocessConfig::clip_vit_b32()).unwrap();
            assert!(tensor.iter().all(|v| v.is_finite() && v.abs() < 3.0), "{name}");
        }
    }

    #[test]
    fn empty_and_oversized_inputs_are_refused_first() {
        assert!(matches!(run(b""), Err(PgClipError::EmptyInput { what: "image" })));
        let limits = ImageLimits { max_bytes: 10, max_pixels: 1 << 20 };
        let err = preprocess_to_rgb8(&[0u8; 11], &limits, &PreprocessConfig::clip_vit_b32()).unwrap_err();
        assert!(matches!(
            err,
            PgClipError::LimitExceeded { actual: 11, limit: 10, setting: "pg_clip.max_image_bytes", .. }
        ));
    }

    #[test]
    fn random_bytes_html_and_foreign_formats_are_named() {
        let mut state = 0x2545_F491_4F6C_DD1Du64;
        let noise: Vec<u8> = (0..4096)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                (state >> 24) as u8
            })
            .collect();
        assert!(invalid_reason(run(&noise)).contains("not a recognised image format"));
        let html = b"<!DOCTYPE html>\n<html><head><title>404 Not Found</title></head></html>";
        assert_eq!(invalid_reason(run(html)), "got HTML, not an image");
        let avif = b"\0\0\0\x1cftypavif\0\0\0\0avifmif1miaf\0\0\0\0";
        assert!(matches!(run(avif), Err(PgClipError::UnsupportedImage { format }) if format == "AVIF"));
        let heic = b"\0\0\0\x18ftypheic\0\0\0\0mif1heic";
        assert!(matches!(run(heic), Err(PgClipError::UnsupportedImage { format }) if format == "HEIC"));
        let svg = b"<?xml version=\"1.0\"?><svg xmlns=\"http://www.w3.org/2000/svg\"/>";
        assert!(matches!(run(svg), Err(PgClipError::UnsupportedImage { format }) if format == "SVG"));
    }

    #[test]
    fn a_decompression_bomb_is_refused_from_its_header() {
        let bomb = png_header_only(40_000, 40_000);
        assert!(bomb.len() < 100);
        let before = peak_rss_kb();
        let err = run(&bomb).unwrap_err();
        assert!(
            matches!(
                err,
                PgClipError::LimitExceeded { actual: 1_600_000_000, setting: "pg_clip.max_image_pixels", .. }
            ),
            "{err:?}"
        );
        // The 4.8 GB the pixels would take was never touched (other tests share the process, so allow
        // their few MB).
        if let (Some(before), Some(after)) = (before, peak_rss_kb()) {
            assert!(after.saturating_sub(before) < 200_000, "peak RSS grew from {before} kB to {after} kB");
        }

        // The same through a JPEG frame header: 65000 x 65000.
        let mut jpeg = encoded(ImageFormat::Jpeg, 16, 16);
        let sof = jpeg.windows(2).position(|w| w == [0xFF, 0xC0]).unwrap();
        jpeg[sof + 5..sof + 9].copy_from_slice(&[0xFD, 0xE8, 0xFD, 0xE8]);
        assert!(matches!(run(&jpeg), Err(PgClipError::LimitExceeded { actual: 4_225_000_000, .. })));
    }

    #[test]
    fn truncated_files_are_invalid() {
        for format in [
            ImageFormat::Jpeg,
            ImageFormat::Png,
            ImageFormat::Gif,
            ImageFormat::WebP,
            ImageFormat::Bmp,
            ImageFormat::Tiff,
        ] {
            let whole = encoded(format, 64, 48);
            let half = &whole[..whole.len() / 2];
            assert!(
                matches!(run(half), Err(PgClipError::InvalidImage { .. })),
                "{format:?} cut in half: {:?}",
                run(half)
            );
        }
        assert!(invalid_reason(run(&encoded(ImageFormat::Jpeg, 64, 48)[..300])).contains("truncated"));
    }

    #[test]
    fn a_fatal_libjpeg_error_is_caught_and_reported() {
        // Claim 12-bit samples: the 8-bit libjpeg stops with a fatal error, which the mozjpeg crate
        // raises by unwinding out of C; it must come back as an error for this image.
        let mut jpeg = encoded(ImageFormat::Jpeg, 16, 16);
        let sof = jpeg.windows(2).position(|w| w == [0xFF, 0xC0]).unwrap();
        jpeg[sof + 4] = 12;
        let reason = invalid_reason(run(&jpeg));
        assert_eq!(reason, "JPEG: Unsupported JPEG data precision 12");
    }

    #[test]
    fn a_panicking_decoder_becomes_an_invalid_image() {
        let result: Result<()> = decode::catch_decoder_panic("TEST", || panic!("decoder bug"));
        match result {
            Err(PgClipError::InvalidImage { reason }) => assert!(reason.contains("decoder bug"), "{reason}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn exif_orientation_is_reported_and_applied_only_when_asked() {
        // A 64x48 JPEG with an APP1 Exif segment saying "rotate 90 clockwise" (6).
        let jpeg = encoded(ImageFormat::Jpeg, 64, 48);
        let exif: &[u8] = b"Exif\0\0MM\0\x2a\0\0\0\x08\0\x01\x01\x12\0\x03\0\0\0\x01\0\x06\0\0\0\0\0\0";
        let app1 = [&[0xFF, 0xE1][..], &((exif.len() + 2) as u16).to_be_bytes(), exif].concat();
        let rotated = [&jpeg[..2], &app1[..], &jpeg[2..]].concat();
        let cfg = PreprocessConfig::clip_vit_b32();
        let (applied, info) = preprocess_to_rgb8(&rotated, &LIMITS, &cfg).unwrap();
        assert_eq!((info.width, info.height, info.exif_orientation), (64, 48, 6));
        let as_stored = PreprocessConfig { apply_exif_orientation: false, ..cfg };
        let (ignored, _) = preprocess_to_rgb8(&rotated, &LIMITS, &as_stored).unwrap();
        let (plain, _) = run(&jpeg).unwrap();
        assert_eq!(ignored, plain);
        assert_ne!(applied, plain);
    }
}
