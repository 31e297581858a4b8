//! Recognising the format from the first bytes, so that we pick the decoder ourselves (never from a
//! file name or a guess), and so that inputs we cannot decode fail with a message that names what
//! they are: an HTML error page saved instead of a photo, an iPhone HEIC, an SVG logo.
#![forbid(unsafe_code)]

use image::ImageFormat;

/// What the first bytes say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Sniffed {
    /// A format we decode, with its Pillow-style name.
    Decodable(ImageFormat, &'static str),
    /// An image format we recognise but have no decoder for.
    UnsupportedImage(&'static str),
    /// Something recognisable that is not an image at all (HTML, PDF, video, ...).
    NotAnImage(&'static str),
    /// Nothing we recognise.
    Unknown,
}

/// How far into the input we look for text markers (`<svg` after an XML prolog and comments).
const TEXT_SNIFF_LEN: usize = 1024;

pub(crate) fn sniff(bytes: &[u8]) -> Sniffed {
    use Sniffed::*;
    let starts = |magic: &[u8]| bytes.starts_with(magic);
    let at = |offset: usize, magic: &[u8]| bytes.get(offset..offset + magic.len()) == Some(magic);

    if starts(b"\xFF\xD8\xFF") {
        return Decodable(ImageFormat::Jpeg, "JPEG");
    }
    if starts(b"\x89PNG\r\n\x1A\n") {
        return Decodable(ImageFormat::Png, "PNG");
    }
    if starts(b"GIF87a") || starts(b"GIF89a") {
        return Decodable(ImageFormat::Gif, "GIF");
    }
    if starts(b"RIFF") && at(8, b"WEBP") {
        return Decodable(ImageFormat::WebP, "WEBP");
    }
    if starts(b"RIFF") && (at(8, b"AVI ") || at(8, b"WAVE")) {
        return NotAnImage(if at(8, b"AVI ") { "an AVI video" } else { "a WAV audio file" });
    }
    if starts(b"II*\0") || starts(b"MM\0*") || starts(b"II+\0") || starts(b"MM\0+") {
        return Decodable(ImageFormat::Tiff, "TIFF");
    }
    // "BM" alone is weak; the reserved header fields are zero in every BMP writer we know of, but we
    // do not insist, so that odd writers still reach the decoder and get its precise error.
    if starts(b"BM") && bytes.len() >= 14 {
        return Decodable(ImageFormat::Bmp, "BMP");
    }
    if at(4, b"ftyp") {
        return sniff_iso_media(bytes);
    }
    if starts(b"\xFF\x0A") || starts(b"\0\0\0\x0CJXL \r\n\x87\n") {
        return UnsupportedImage("JPEG XL");
    }
    if starts(b"\0\0\0\x0CjP  \r\n\x87\n") || starts(b"\xFF\x4F\xFF\x51") {
        return UnsupportedImage("JPEG 2000");
    }
    // ICO/CUR: reserved 0, type 1 or 2, then a non-zero image count.
    if (starts(b"\0\0\x01\0") || starts(b"\0\0\x02\0")) && bytes.len() >= 6 && bytes[4..6] != [0, 0] {
        return UnsupportedImage(if bytes[2] == 1 { "ICO" } else { "CUR" });
    }
    if starts(b"8BPS") {
        return UnsupportedImage("PSD");
    }
    if starts(b"qoif") {
        return UnsupportedImage("QOI");
    }
    if starts(b"DDS ") {
        return UnsupportedImage("DDS");
    }
    if starts(b"\x76\x2F\x31\x01") {
        return UnsupportedImage("OpenEXR");
    }
    if starts(b"#?RADIANCE") || starts(b"#?RGBE") {
        return UnsupportedImage("Radiance HDR");
    }
    if starts(b"gimp xcf") {
        return UnsupportedImage("GIMP XCF");
    }
    if bytes.len() >= 3 && bytes[0] == b'P' && (b'1'..=b'7').contains(&bytes[1]) && bytes[2].is_ascii_whitespace() {
        return UnsupportedImage("PNM (PBM/PGM/PPM/PAM)");
    }
    if starts(b"%PDF-") {
        return NotAnImage("a PDF document");
    }
    if starts(b"PK\x03\x04") {
        return NotAnImage("a ZIP archive");
    }
    if starts(b"\x1F\x8B") {
        return NotAnImage("gzip-compressed data (an .svgz or a compressed download?)");
    }
    if starts(b"\x1A\x45\xDF\xA3") {
        return NotAnImage("a Matroska/WebM video");
    }
    sniff_text(bytes)
}

/// ISO base media files (HEIF, AVIF, MP4, QuickTime): the major brand, then the compatible ones.
fn sniff_iso_media(bytes: &[u8]) -> Sniffed {
    let box_len = u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) as usize;
    // 0 means "to the end of the file" and 1 a 64-bit size; read to the end of what we have then.
    let end = if box_len < 8 { bytes.len() } else { box_len.min(bytes.len()) };
    let ftyp = &bytes[8..end.max(8)];
    // major brand, minor version, then compatible brands, 4 bytes each
    let brands = || ftyp.chunks_exact(4).enumerate().filter(|&(i, _)| i != 1).map(|(_, brand)| brand);
    let has = |wanted: &[&[u8]]| brands().any(|brand| wanted.contains(&brand));
    if has(&[b"avif", b"avis"]) {
        Sniffed::UnsupportedImage("AVIF")
    } else if has(&[b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"hevm", b"hevs"]) {
        Sniffed::UnsupportedImage("HEIC")
    } else if has(&[b"mif1", b"msf1"]) {
        Sniffed::UnsupportedImage("HEIF")
    } else if has(&[b"crx "]) {
        Sniffed::UnsupportedImage("Canon CR3 raw")
    } else {
        Sniffed::NotAnImage("an MP4/QuickTime video")
    }
}

fn sniff_text(bytes: &[u8]) -> Sniffed {
    let head = &bytes[..bytes.len().min(TEXT_SNIFF_LEN)];
    let head = head.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(head);
    let start = head.iter().position(|b| !b.is_ascii_whitespace()).unwrap_or(head.len());
    let lower: Vec<u8> = head[start..].iter().map(u8::to_ascii_lowercase).collect();
    let contains = |needle: &[u8]| lower.windows(needle.len()).any(|w| w == needle);
    if lower.starts_with(b"<!doctype html")
        || lower.starts_with(b"<html")
        || lower.starts_with(b"<head")
        || lower.starts_with(b"<body")
    {
        return Sniffed::NotAnImage("HTML");
    }
    if lower.starts_with(b"<svg") || (lower.starts_with(b"<") && contains(b"<svg")) {
        return Sniffed::UnsupportedImage("SVG");
    }
    if lower.starts_with(b"<?xml") || lower.starts_with(b"<!--") {
        return Sniffed::NotAnImage("XML");
    }
    if lower.starts_with(b"{") || lower.starts_with(b"[") {
        return Sniffed::NotAnImage("JSON or other text");
    }
    Sniffed::Unknown
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodable_formats_by_magic() {
        assert_eq!(sniff(b"\xFF\xD8\xFF\xE0\0\x10JFIF"), Sniffed::Decodable(ImageFormat::Jpeg, "JPEG"));
        assert_eq!(sniff(b"\x89PNG\r\n\x1A\n\0\0\0\x0DIHDR"), Sniffed::Decodable(ImageFormat::Png, "PNG"));
        assert_eq!(sniff(b"GIF89a\x01\0\x01\0"), Sniffed::Decodable(ImageFormat::Gif, "GIF"));
        assert_eq!(sniff(b"RIFF\x24\0\0\0WEBPVP8 "), Sniffed::Decodable(ImageFormat::WebP, "WEBP"));
        assert_eq!(sniff(b"II*\0\x08\0\0\0"), Sniffed::Decodable(ImageFormat::Tiff, "TIFF"));
        assert_eq!(sniff(b"BM\x36\0\0\0\0\0\0\0\x36\0\0\0"), Sniffed::Decodable(ImageFormat::Bmp, "BMP"));
    }

    #[test]
    fn heif_family_by_brand() {
        let ftyp = |major: &[u8], compat: &[&[u8]]| {
            let mut b = Vec::new();
            b.extend_from_slice(&((16 + 4 * compat.len()) as u32).to_be_bytes());
            b.extend_from_slice(b"ftyp");
            b.extend_from_slice(major);
            b.extend_from_slice(&[0, 0, 0, 0]);
            compat.iter().for_each(|c| b.extend_from_slice(c));
            b.extend_from_slice(b"\0\0\0\x08meta");
            b
        };
        assert_eq!(sniff(&ftyp(b"avif", &[b"mif1", b"miaf"])), Sniffed::UnsupportedImage("AVIF"));
        // An AVIF whose major brand is the generic HEIF one still says avif among compatible brands.
        assert_eq!(sniff(&ftyp(b"mif1", &[b"avif", b"miaf"])), Sniffed::UnsupportedImage("AVIF"));
        assert_eq!(sniff(&ftyp(b"heic", &[b"mif1", b"heic"])), Sniffed::UnsupportedImage("HEIC"));
        assert_eq!(sniff(&ftyp(b"mif1", &[b"mif1"])), Sniffed::UnsupportedImage("HEIF"));
        assert_eq!(sniff(&ftyp(b"isom", &[b"isom", b"mp41"])), Sniffed::NotAnImage("an MP4/QuickTime video"));
        // A truncated box length must not panic.
        assert_eq!(sniff(b"\xFF\xFF\xFF\xFFftypheic"), Sniffed::UnsupportedImage("HEIC"));
        assert_eq!(sniff(b"\0\0\0\0ftyp"), Sniffed::NotAnImage("an MP4/QuickTime video"));
    }

    #[test]
    fn text_formats() {
        assert_eq!(sniff(b"\xEF\xBB\xBF  <!DOCTYPE html><html>"), Sniffed::NotAnImage("HTML"));
        assert_eq!(sniff(b"\n<HTML><body>404</body></HTML>"), Sniffed::NotAnImage("HTML"));
        assert_eq!(sniff(b"<svg xmlns=\"http://www.w3.org/2000/svg\"/>"), Sniffed::UnsupportedImage("SVG"));
        assert_eq!(
            sniff(b"<?xml version=\"1.0\"?>\n<!-- logo -->\n<svg width=\"10\"/>"),
            Sniffed::UnsupportedImage("SVG")
        );
        assert_eq!(sniff(b"<?xml version=\"1.0\"?><rss/>"), Sniffed::NotAnImage("XML"));
        assert_eq!(sniff(b"{\"error\": \"not found\"}"), Sniffed::NotAnImage("JSON or other text"));
        assert_eq!(sniff(b"%PDF-1.7\n"), Sniffed::NotAnImage("a PDF document"));
    }

    #[test]
    fn other_image_formats_are_named() {
        assert_eq!(sniff(b"\xFF\x0A\xFA\x7F"), Sniffed::UnsupportedImage("JPEG XL"));
        assert_eq!(sniff(b"\0\0\0\x0CJXL \r\n\x87\n"), Sniffed::UnsupportedImage("JPEG XL"));
        assert_eq!(sniff(b"\0\0\x01\0\x01\0\x10\x10"), Sniffed::UnsupportedImage("ICO"));
        assert_eq!(sniff(b"P6\n3 2\n255\n"), Sniffed::UnsupportedImage("PNM (PBM/PGM/PPM/PAM)"));
        assert_eq!(sniff(b"8BPS\0\x01"), Sniffed::UnsupportedImage("PSD"));
    }

    #[test]
    fn short_and_random_inputs_are_unknown() {
        assert_eq!(sniff(b""), Sniffed::Unknown);
        assert_eq!(sniff(b"\xFF"), Sniffed::Unknown);
        assert_eq!(sniff(b"BM"), Sniffed::Unknown);
        assert_eq!(sniff(b"hello world"), Sniffed::Unknown);
        assert_eq!(sniff(&[0x13, 0x37, 0xC0, 0xDE, 0x00, 0x42]), Sniffed::Unknown);
    }
}
