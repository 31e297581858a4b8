//! JPEG through libjpeg-turbo's decoder (as built into the `mozjpeg` crate, plain C, no SIMD), so
//! that our pixels are Pillow's: Pillow decodes with libjpeg-turbo too, and pure-Rust decoders round
//! the IDCT, the "fancy" chroma upsampling and the colour conversion differently (zune-jpeg differed
//! by up to 4 levels on 12-17% of the pixels of 4:2:0 photos; this decoder by none, on every fixture).
//!
//! Before libjpeg sees the data we walk the marker segments ourselves, which gives us the size (for
//! the pixel limit, before any allocation), the EXIF block, and whether the data is complete: libjpeg
//! pads a truncated scan with grey and only warns, whereas Pillow refuses "image file is truncated".
#![forbid(unsafe_code)]

use std::panic::{catch_unwind, AssertUnwindSafe};

use super::decode::panic_message;
use crate::error::{PgClipError, Result};

/// What the marker segments before the first scan say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct JpegHeader<'a> {
    pub width: u32,
    pub height: u32,
    pub components: u8,
    /// The TIFF-structured payload of the first APP1 "Exif" segment (the one Pillow reads).
    pub exif: Option<&'a [u8]>,
    /// An end-of-image marker follows the first scan.
    pub complete: bool,
}

const SOI: u8 = 0xD8;
const EOI: u8 = 0xD9;
const SOS: u8 = 0xDA;
const APP1: u8 = 0xE1;

/// Start-of-frame markers: C0-CF except DHT (C4), JPG (C8) and DAC (CC).
fn is_start_of_frame(marker: u8) -> bool {
    matches!(marker, 0xC0..=0xCF) && !matches!(marker, 0xC4 | 0xC8 | 0xCC)
}

pub(crate) fn read_header(bytes: &[u8]) -> Result<JpegHeader<'_>> {
    let truncated = || PgClipError::invalid_image("JPEG is truncated inside its headers");
    if bytes.get(..2) != Some(&[0xFF, SOI][..]) {
        return Err(PgClipError::invalid_image("not a JPEG: no start-of-image marker"));
    }
    let mut frame = None;
    let mut exif = None;
    let mut pos = 2;
    loop {
        // As libjpeg's next_marker: skip stray bytes, then fill bytes (0xFF), up to the marker code.
        while bytes.get(pos).is_some_and(|&b| b != 0xFF) {
            pos += 1;
        }
        while bytes.get(pos + 1) == Some(&0xFF) {
            pos += 1;
        }
        let marker = *bytes.get(pos + 1).ok_or_else(truncated)?;
        pos += 2;
        if matches!(marker, 0x00 | 0x01 | 0xD0..=0xD7) {
            continue; // no length field
        }
        if marker == EOI {
            return Err(PgClipError::invalid_image("JPEG ends before any image data"));
        }
        let length = bytes.get(pos..pos + 2).map(|l| usize::from(u16::from_be_bytes([l[0], l[1]])));
        let length = length.filter(|&l| l >= 2).ok_or_else(truncated)?;
        let segment = bytes.get(pos + 2..pos + length).ok_or_else(truncated)?;
        pos += length;
        match marker {
            APP1 if exif.is_none() && segment.starts_with(b"Exif\0\0") => exif = Some(&segment[6..]),
            m if is_start_of_frame(m) && frame.is_none() => {
                // precision, height, width, component count
                let [_, h0, h1, w0, w1, components, ..] = *segment else {
                    return Err(PgClipError::invalid_image("JPEG frame header is too short"));
                };
                frame = Some((
                    u32::from(u16::from_be_bytes([w0, w1])),
                    u32::from(u16::from_be_bytes([h0, h1])),
                    components,
                ));
            }
            SOS => {
                let (width, height, components) =
                    frame.ok_or_else(|| PgClipError::invalid_image("JPEG scan before any frame header"))?;
                // Entropy-coded data never holds FF D9: 0xFF there is stuffed (FF 00) or a restart
                // marker. So an FF D9 anywhere after the scan header is the end of the image.
                let complete = bytes[pos..].windows(2).any(|w| w == [0xFF, EOI]);
                return Ok(JpegHeader { width, height, components, exif, complete });
            }
            _ => {}
        }
    }
}

/// Pillow's `MULDIV255`: a * b / 255, rounded, for a, b in 0..=255.
fn muldiv255(a: u32, b: u32) -> u32 {
    let t = a * b + 128;
    ((t >> 8) + t) >> 8
}

/// Pillow's CMYK JPEG path: libjpeg hands over the samples as stored, Pillow's "CMYK;I" raw mode
/// inverts them (Adobe convention, assumed for every CMYK JPEG), then `cmyk2rgb` computes
/// `255 - K - (255 - K) * C / 255` per channel on the inverted values.
fn cmyk_to_rgb(stored: &[u8]) -> Vec<u8> {
    let mut rgb = Vec::with_capacity(stored.len() / 4 * 3);
    for px in stored.chunks_exact(4) {
        let [c, m, y, k] = [px[0], px[1], px[2], px[3]].map(|v| 255 - u32::from(v));
        let nk = 255 - k;
        for ink in [c, m, y] {
            rgb.push((nk - muldiv255(ink, nk)) as u8);
        }
    }
    rgb
}

/// Decodes to packed RGB. The caller has checked the header (size limits, completeness).
pub(crate) fn decode_rgb8(bytes: &[u8], header: &JpegHeader<'_>) -> Result<Vec<u8>> {
    // The mozjpeg crate reports libjpeg's fatal errors (corrupt tables, unsupported precision, ...)
    // by unwinding out of the C code with the message as payload: an ordinary "bad JPEG" here.
    catch_unwind(AssertUnwindSafe(|| decode_unchecked(bytes, header))).unwrap_or_else(|payload| {
        let message = panic_message(&*payload);
        Err(PgClipError::invalid_image(format!("JPEG: {}", message.trim_start_matches("libjpeg fatal error: "))))
    })
}

fn decode_unchecked(bytes: &[u8], header: &JpegHeader<'_>) -> Result<Vec<u8>> {
    let failed = |e: std::io::Error| PgClipError::invalid_image(format!("JPEG: {e}"));
    let decompress = mozjpeg::Decompress::new_mem(bytes).map_err(failed)?;
    let (width, height) = (header.width as usize, header.height as usize);
    if decompress.size() != (width, height) {
        return Err(PgClipError::invalid_image("JPEG: libjpeg and the frame header disagree on the size"));
    }
    let rgb = if header.components == 4 {
        // CMYK or YCCK: libjpeg converts YCCK to CMYK, the rest is Pillow's arithmetic.
        let mut started = decompress.to_colorspace(mozjpeg::ColorSpace::JCS_CMYK).map_err(failed)?;
        let mut cmyk = vec![0u8; width * height * 4];
        started.read_scanlines_into(&mut cmyk).map_err(failed)?;
        started.finish().map_err(failed)?;
        cmyk_to_rgb(&cmyk)
    } else {
        // YCbCr, RGB or greyscale: libjpeg converts to RGB (grey replicated), as for Pillow's convert.
        let mut started = decompress.rgb().map_err(failed)?;
        let mut rgb = vec![0u8; width * height * 3];
        started.read_scanlines_into(&mut rgb).map_err(failed)?;
        started.finish().map_err(failed)?;
        rgb
    };
    Ok(rgb)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// SOI, APP1 Exif (holding a thumbnail's FF D9), SOF0 3x2 with 3 components, SOS, scan, EOI.
    fn skeleton() -> Vec<u8> {
        let app1: &[u8] = &[0xFF, 0xE1, 0x00, 0x0C, b'E', b'x', b'i', b'f', 0, 0, b'M', b'M', 0xFF, 0xD9];
        let sof: &[u8] = &[0xFF, 0xC0, 0x00, 0x11, 8, 0, 2, 0, 3, 3, 1, 0x22, 0, 2, 0x11, 1, 3, 0x11, 1];
        let sos: &[u8] = &[0xFF, 0xDA, 0x00, 0x0C, 3, 1, 0, 2, 0x11, 3, 0x11, 0, 63, 0];
        let scan: &[u8] = &[0x12, 0xFF, 0x00, 0x34, 0xFF, 0xD0, 0x56];
        [&[0xFF, 0xD8][..], app1, sof, sos, scan, &[0xFF, 0xD9]].concat()
    }

    #[test]
    fn header_gives_size_components_exif_and_completeness() {
        let whole = skeleton();
        let header = read_header(&whole).unwrap();
        assert_eq!((header.width, header.height, header.components), (3, 2, 3));
        assert_eq!(header.exif, Some(&b"MM\xFF\xD9"[..]));
        assert!(header.complete);
        // Trailing bytes after EOI (some cameras append data) are fine.
        assert!(read_header(&[&whole[..], b"trailer"].concat()).unwrap().complete);
    }

    #[test]
    fn a_cut_scan_is_incomplete_and_a_cut_header_an_error() {
        let whole = skeleton();
        assert!(!read_header(&whole[..whole.len() - 2]).unwrap().complete);
        assert!(!read_header(&whole[..whole.len() - 5]).unwrap().complete);
        // Cut inside the APP1 segment: the thumbnail's FF D9 must not count as the end.
        assert!(read_header(&whole[..12]).is_err());
        assert!(read_header(&whole[..20]).is_err());
        assert!(read_header(b"\xFF\xD8").is_err());
        assert!(read_header(b"\xFF\xD8\xFF\xD9").is_err());
    }

    #[test]
    fn cmyk_conversion_is_pillows() {
        // Stored (Adobe-inverted) samples -> Pillow 13's Image.open(...).convert("RGB") values:
        // stored K = 255 means no black ink, stored C = 0 means full cyan.
        assert_eq!(cmyk_to_rgb(&[255, 255, 255, 255]), [255, 255, 255]);
        assert_eq!(cmyk_to_rgb(&[0, 255, 255, 255]), [0, 255, 255]);
        assert_eq!(cmyk_to_rgb(&[200, 100, 50, 0]), [0, 0, 0]);
        assert_eq!(cmyk_to_rgb(&[200, 100, 50, 128]), [100, 50, 25]);
    }
}
