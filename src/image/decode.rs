//! Bytes -> 8-bit RGB, with the limits checked before anything large is allocated, and with the colour
//! conversions of `PIL.Image.convert("RGB")` (which is what the reference applies after decoding).
//!
//! Conversions, and where they differ from Pillow on purpose:
//! * grey (L, 1/2/4-bit) -> replicated to R, G and B, as Pillow;
//! * alpha (LA, RGBA, palette or grey/RGB with a PNG tRNS entry, a GIF transparent index) -> by default
//!   dropped, keeping the colour underneath, as Pillow's convert does: transformers 4.x called exactly
//!   that (`image.convert("RGB")`), so the stored vectors saw it. With [`Transparency::OntoWhite`],
//!   composited onto white as transformers 5.x's `convert_to_rgb` does ([`onto_white`]). The decoders
//!   report alpha for exactly the images Pillow sees transparency in (checked by the fixtures of both
//!   eras); where an image has an alpha channel that is opaque throughout (a GIF without a transparent
//!   index, which the decoder hands over as RGBA), compositing leaves it unchanged, as Pillow would;
//! * palette -> looked up (the PNG and GIF decoders expand it), transparency ignored as above;
//! * JPEG -> decoded by libjpeg-turbo's code, CMYK converted with Pillow's arithmetic (see `jpeg`);
//! * 16-bit samples -> round(v / 257). Pillow clamps 16-bit grey ("I;16") to 255, whitening almost
//!   every pixel, and keeps only the high byte of 16-bit RGB(A); both are artefacts, not intent, so we
//!   scale properly. Such images therefore do not match the reference's vectors (by one level at most
//!   for RGB, entirely for grey).
#![forbid(unsafe_code)]

use std::any::Any;
use std::io::Cursor;
use std::panic::{catch_unwind, AssertUnwindSafe};

use image::metadata::Orientation;
use image::{ColorType, ImageDecoder, ImageError, ImageFormat, ImageReader};

use super::format::{sniff, Sniffed};
use super::jpeg;
use super::{DecodedInfo, ImageLimits, Transparency};
use crate::error::{PgClipError, Result};

/// A packed 8-bit RGB image, rows top to bottom.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RgbImage {
    pub pixels: Vec<u8>,
    pub width: u32,
    pub height: u32,
}

#[derive(Debug)]
pub(crate) struct Decoded {
    pub image: RgbImage,
    pub info: DecodedInfo,
}

/// Bytes per pixel of the largest layout a decoder hands us (RGBA, 16 bits per sample).
const MAX_DECODED_BYTES_PER_PIXEL: u64 = 8;
/// Headroom for a decoder's own tables and line buffers on top of the pixels themselves.
const DECODER_WORKING_MEMORY: u64 = 64 << 20;

pub(crate) fn decode_rgb8(bytes: &[u8], limits: &ImageLimits, transparency: Transparency) -> Result<Decoded> {
    if bytes.is_empty() {
        return Err(PgClipError::EmptyInput { what: "image" });
    }
    if bytes.len() > limits.max_bytes {
        return Err(PgClipError::LimitExceeded {
            what: "image size",
            actual: bytes.len() as u64,
            limit: limits.max_bytes as u64,
            setting: "pg_clip.max_image_bytes",
        });
    }
    let (format, name) = match sniff(bytes) {
        Sniffed::Decodable(format, name) => (format, name),
        Sniffed::UnsupportedImage(name) => return Err(PgClipError::UnsupportedImage { format: name.into() }),
        Sniffed::NotAnImage(what) => {
            return Err(PgClipError::invalid_image(format!("got {what}, not an image")));
        }
        Sniffed::Unknown => {
            let head: Vec<String> = bytes.iter().take(8).map(|b| format!("{b:02x}")).collect();
            return Err(PgClipError::invalid_image(format!(
                "not a recognised image format (JPEG, PNG, GIF, WebP, BMP or TIFF); it starts with {}",
                head.join(" ")
            )));
        }
    };
    catch_decoder_panic(name, || match format {
        ImageFormat::Jpeg => decode_jpeg(bytes, limits),
        _ => decode_with_image_crate(bytes, format, name, limits, transparency),
    })
}

fn check_pixel_limit(name: &str, width: u32, height: u32, limits: &ImageLimits) -> Result<()> {
    let pixels = u64::from(width) * u64::from(height);
    if pixels > limits.max_pixels {
        return Err(PgClipError::LimitExceeded {
            what: "image pixel count",
            actual: pixels,
            limit: limits.max_pixels,
            setting: "pg_clip.max_image_pixels",
        });
    }
    if pixels == 0 {
        return Err(PgClipError::invalid_image(format!("{name} declares a {width}x{height} image")));
    }
    Ok(())
}

fn decode_jpeg(bytes: &[u8], limits: &ImageLimits) -> Result<Decoded> {
    let header = jpeg::read_header(bytes)?;
    check_pixel_limit("JPEG", header.width, header.height, limits)?;
    if !header.complete {
        // libjpeg would pad the missing part with grey and only warn; Pillow refuses.
        return Err(PgClipError::invalid_image("JPEG is truncated: no end-of-image marker after the scan data"));
    }
    let exif_orientation = header.exif.and_then(Orientation::from_exif_chunk).map_or(1, Orientation::to_exif);
    let info = DecodedInfo { format: "JPEG", width: header.width, height: header.height, exif_orientation };
    let pixels = jpeg::decode_rgb8(bytes, &header)?;
    Ok(Decoded { image: RgbImage { pixels, width: header.width, height: header.height }, info })
}

/// A bug in a decoder must become an error for this one image, not an aborted backend.
pub(crate) fn catch_decoder_panic<T>(name: &str, decode: impl FnOnce() -> Result<T>) -> Result<T> {
    catch_unwind(AssertUnwindSafe(decode)).unwrap_or_else(|payload| {
        Err(PgClipError::invalid_image(format!("the {name} decoder failed unexpectedly: {}", panic_message(&*payload))))
    })
}

/// The text of a panic payload (`panic!` with a literal or a format, or `resume_unwind` with either).
pub(crate) fn panic_message(payload: &(dyn Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "no message".into())
}

fn decode_with_image_crate(
    bytes: &[u8],
    format: ImageFormat,
    name: &'static str,
    limits: &ImageLimits,
    transparency: Transparency,
) -> Result<Decoded> {
    let mut reader = ImageReader::with_format(Cursor::new(bytes), format);
    let mut fence = image::Limits::default();
    fence.max_alloc =
        Some(limits.max_pixels.saturating_mul(MAX_DECODED_BYTES_PER_PIXEL).saturating_add(DECODER_WORKING_MEMORY));
    reader.limits(fence);
    // Constructing the decoder reads the header only.
    let mut decoder = reader.into_decoder().map_err(|e| decode_error(name, e))?;
    let (width, height) = decoder.dimensions();
    check_pixel_limit(name, width, height, limits)?;
    // An unreadable EXIF block is not worth failing the image for: it is then shown as stored.
    let exif_orientation = decoder.orientation().map(|o| o.to_exif()).unwrap_or(1);
    let info = DecodedInfo { format: name, width, height, exif_orientation };

    let color = decoder.color_type();
    let rgb = if matches!(
        color,
        ColorType::L8
            | ColorType::La8
            | ColorType::Rgb8
            | ColorType::Rgba8
            | ColorType::L16
            | ColorType::La16
            | ColorType::Rgb16
            | ColorType::Rgba16
    ) {
        let len = usize::try_from(decoder.total_bytes())
            .map_err(|_| PgClipError::invalid_image(format!("{name} image too large for this platform")))?;
        let mut native = vec![0u8; len];
        decoder.read_image(&mut native).map_err(|e| decode_error(name, e))?;
        native_to_rgb8(native, color, transparency)
    } else {
        // Float TIFFs and the like: rare enough to go through the crate's own conversion.
        let image = image::DynamicImage::from_decoder(decoder).map_err(|e| decode_error(name, e))?;
        if transparency == Transparency::OntoWhite && image.color().has_alpha() {
            native_to_rgb8(image.to_rgba8().into_raw(), ColorType::Rgba8, transparency)
        } else {
            image.to_rgb8().into_raw()
        }
    };
    Ok(Decoded { image: RgbImage { pixels: rgb, width, height }, info })
}

fn decode_error(name: &str, error: ImageError) -> PgClipError {
    match error {
        ImageError::Unsupported(e) => PgClipError::UnsupportedImage { format: format!("{name} ({e})") },
        ImageError::Limits(e) => PgClipError::invalid_image(format!(
            "the {name} decoder needed more memory than the declared size allows ({e}); \
             raise pg_clip.max_image_pixels if the image is genuine"
        )),
        ImageError::IoError(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
            PgClipError::invalid_image(format!("{name} is truncated ({e})"))
        }
        other => PgClipError::invalid_image(format!("{name}: {other}")),
    }
}

/// 16-bit sample -> 8 bits, rounding to nearest: (v + 128) / 257 equals round(v / 257) for every v,
/// and 257 being odd there are no ties.
fn scale16(sample: u16) -> u8 {
    ((u32::from(sample) + 128) / 257) as u8
}

/// transformers 5.x's `convert_to_rgb` for one sample: `Image.alpha_composite(white, image)`, then RGB.
/// Pillow's integer implementation (libImaging/AlphaComposite.c, 7 bits of extra precision, divisions by 255
/// rounded with its shift trick) with the destination opaque white, where its coefficients reduce to
/// `alpha * 128` and `(255 - alpha) * 128`: the result is round((value * alpha + 255 * (255 - alpha)) / 255),
/// ties up. A fully transparent pixel is white; an opaque one keeps its value.
pub(crate) fn onto_white(value: u8, alpha: u8) -> u8 {
    if alpha == 0 {
        return 255;
    }
    const PRECISION_BITS: u32 = 7;
    let (value, alpha) = (u32::from(value), u32::from(alpha));
    let blend = 255 * (255 - alpha); // the destination's alpha (255) times the source's complement
    let outa255 = alpha * 255 + blend;
    let coef1 = alpha * 255 * 255 * (1 << PRECISION_BITS) / outa255;
    let coef2 = 255 * (1 << PRECISION_BITS) - coef1;
    let tmp = value * coef1 + 255 * coef2 + (0x80 << PRECISION_BITS);
    ((((tmp >> 8) + tmp) >> 8) >> PRECISION_BITS) as u8
}

fn native_to_rgb8(native: Vec<u8>, color: ColorType, transparency: Transparency) -> Vec<u8> {
    let (channels, samples) = match color {
        ColorType::Rgb8 => return native,
        ColorType::L8 => (1, native),
        ColorType::La8 => (2, native),
        ColorType::Rgba8 => (4, native),
        ColorType::L16 | ColorType::La16 | ColorType::Rgb16 | ColorType::Rgba16 => {
            // The decoder wrote native-endian u16s.
            let eight: Vec<u8> = native.chunks_exact(2).map(|b| scale16(u16::from_ne_bytes([b[0], b[1]]))).collect();
            let channels = match color {
                ColorType::L16 => 1,
                ColorType::La16 => 2,
                ColorType::Rgb16 => return eight,
                _ => 4,
            };
            (channels, eight)
        }
        _ => unreachable!("only called for the 8- and 16-bit layouts"),
    };
    let white = transparency == Transparency::OntoWhite;
    let mut rgb = Vec::with_capacity(samples.len() / channels * 3);
    match channels {
        1 => samples.iter().for_each(|&l| rgb.extend_from_slice(&[l, l, l])),
        2 if white => samples.chunks_exact(2).for_each(|la| rgb.extend_from_slice(&[onto_white(la[0], la[1]); 3])),
        2 => samples.chunks_exact(2).for_each(|la| rgb.extend_from_slice(&[la[0], la[0], la[0]])),
        _ if white => samples.chunks_exact(4).for_each(|p| {
            rgb.extend_from_slice(&[onto_white(p[0], p[3]), onto_white(p[1], p[3]), onto_white(p[2], p[3])])
        }),
        _ => samples.chunks_exact(4).for_each(|p| rgb.extend_from_slice(&p[..3])),
    }
    rgb
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sixteen_bit_scaling_rounds_to_nearest() {
        for v in 0..=u16::MAX {
            let exact = f64::from(v) / 257.0;
            assert_eq!(scale16(v), exact.round() as u8, "{v}");
        }
        assert_eq!(scale16(0x8080), 128);
        assert_eq!(scale16(u16::MAX), 255);
    }

    #[test]
    fn alpha_is_dropped_keeping_the_colour_underneath() {
        let drop = Transparency::DropAlpha;
        let rgba = vec![10, 20, 30, 0, 40, 50, 60, 255];
        assert_eq!(native_to_rgb8(rgba, ColorType::Rgba8, drop), [10, 20, 30, 40, 50, 60]);
        assert_eq!(native_to_rgb8(vec![7, 0], ColorType::La8, drop), [7, 7, 7]);
        let l16: Vec<u8> = [0u16, 0x8080, 0xFFFF].iter().flat_map(|v| v.to_ne_bytes()).collect();
        assert_eq!(native_to_rgb8(l16, ColorType::L16, drop), [0, 0, 0, 128, 128, 128, 255, 255, 255]);
        let rgba16: Vec<u8> = [0x0100u16, 0x7F80, 0xFFFF, 0].iter().flat_map(|v| v.to_ne_bytes()).collect();
        assert_eq!(native_to_rgb8(rgba16, ColorType::Rgba16, drop), [1, 127, 255]);
    }

    #[test]
    fn onto_white_composites_as_pillow_does() {
        let white = Transparency::OntoWhite;
        let rgba = vec![10, 20, 30, 0, 40, 50, 60, 255, 0, 100, 200, 128];
        assert_eq!(native_to_rgb8(rgba, ColorType::Rgba8, white), [255, 255, 255, 40, 50, 60, 127, 177, 227]);
        assert_eq!(
            native_to_rgb8(vec![7, 0, 7, 255, 0, 1], ColorType::La8, white),
            [255, 255, 255, 7, 7, 7, 254, 254, 254]
        );
        // (Expected values printed by Pillow 13: Image.alpha_composite onto white, then RGB.) Alpha-less layouts
        // are untouched.
        assert_eq!(native_to_rgb8(vec![1, 2, 3], ColorType::Rgb8, white), [1, 2, 3]);
        assert_eq!(native_to_rgb8(vec![9], ColorType::L8, white), [9, 9, 9]);
        let rgba16: Vec<u8> = [0u16, 0xFFFF, 0x8080, 0x8080].iter().flat_map(|v| v.to_ne_bytes()).collect();
        assert_eq!(native_to_rgb8(rgba16, ColorType::Rgba16, white), [127, 255, 191]);
        // Every (value, alpha): Pillow 13's alpha_composite onto white gives, for all 65,536 of them, what
        // transformers' numpy path computes, round(alpha / 255 * value + (1 - alpha / 255) * 255) (checked
        // in Python over the full table, tests/fixtures/make_fixtures.py --check-composite).
        for alpha in 0..=255u8 {
            for value in 0..=255u8 {
                let a = f64::from(alpha) / 255.0;
                let expected = (a * f64::from(value) + (1.0 - a) * 255.0).round_ties_even() as u8;
                assert_eq!(onto_white(value, alpha), expected, "value {value} alpha {alpha}");
            }
        }
    }
}
