//! EXIF orientation (tag 0x0112), applied the way `PIL.ImageOps.exif_transpose` does: 2 mirror,
//! 3 rotate 180, 4 flip, 5 transpose, 6 rotate 90 clockwise, 7 transverse, 8 rotate 90 anticlockwise.
//!
//! It runs on the full decoded image, before resizing: resizing does its horizontal pass first and
//! rounds in between, so rotating the 224x224 result instead would not give the same bytes.
#![forbid(unsafe_code)]

use crate::image::decode::RgbImage;

/// Returns the image as it should be displayed. Values outside 2..=8 leave it as stored.
pub(crate) fn apply_exif_orientation(image: RgbImage, orientation: u8) -> RgbImage {
    if !(2..=8).contains(&orientation) {
        return image;
    }
    let (w, h) = (image.width as usize, image.height as usize);
    let swaps_axes = orientation >= 5;
    let (out_w, out_h) = if swaps_axes { (h, w) } else { (w, h) };
    // For a displayed pixel (x, y), the stored pixel it shows.
    let source = |x: usize, y: usize| -> (usize, usize) {
        match orientation {
            2 => (w - 1 - x, y),
            3 => (w - 1 - x, h - 1 - y),
            4 => (x, h - 1 - y),
            5 => (y, x),
            6 => (y, h - 1 - x),
            7 => (w - 1 - y, h - 1 - x),
            _ => (w - 1 - y, x), // 8
        }
    };
    let mut pixels = vec![0u8; image.pixels.len()];
    for (y, row) in pixels.chunks_exact_mut(out_w * 3).enumerate() {
        for (x, px) in row.chunks_exact_mut(3).enumerate() {
            let (sx, sy) = source(x, y);
            let at = (sy * w + sx) * 3;
            px.copy_from_slice(&image.pixels[at..at + 3]);
        }
    }
    RgbImage { pixels, width: out_w as u32, height: out_h as u32 }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 3x2 image whose pixels are their stored index:  0 1 2 / 3 4 5.
    fn numbered() -> RgbImage {
        RgbImage { pixels: (0..6u8).flat_map(|i| [i, i, i]).collect(), width: 3, height: 2 }
    }

    fn shown(orientation: u8) -> (u32, u32, Vec<u8>) {
        let out = apply_exif_orientation(numbered(), orientation);
        (out.width, out.height, out.pixels.chunks_exact(3).map(|p| p[0]).collect())
    }

    #[test]
    fn each_orientation_matches_pillow_exif_transpose() {
        // Expected values from PIL.ImageOps.exif_transpose on the same 3x2 image.
        assert_eq!(shown(1), (3, 2, vec![0, 1, 2, 3, 4, 5]));
        assert_eq!(shown(2), (3, 2, vec![2, 1, 0, 5, 4, 3]));
        assert_eq!(shown(3), (3, 2, vec![5, 4, 3, 2, 1, 0]));
        assert_eq!(shown(4), (3, 2, vec![3, 4, 5, 0, 1, 2]));
        assert_eq!(shown(5), (2, 3, vec![0, 3, 1, 4, 2, 5]));
        assert_eq!(shown(6), (2, 3, vec![3, 0, 4, 1, 5, 2]));
        assert_eq!(shown(7), (2, 3, vec![5, 2, 4, 1, 3, 0]));
        assert_eq!(shown(8), (2, 3, vec![2, 5, 1, 4, 0, 3]));
    }

    #[test]
    fn unknown_values_leave_the_image_alone() {
        assert_eq!(shown(0).2, vec![0, 1, 2, 3, 4, 5]);
        assert_eq!(shown(9).2, vec![0, 1, 2, 3, 4, 5]);
    }
}
