//! The geometry and arithmetic of transformers' PIL-backend image processors after decoding.
//!
//! * CLIP (`CLIPImageProcessorPil`, [`ResizeMode::ShortestEdgeCenterCrop`]):
//!   `get_resize_output_image_size(default_to_square=False)`, then `center_crop` (which zero-pads images
//!   smaller than the crop).
//! * SigLIP (`SiglipImageProcessorPil`, [`ResizeMode::Squash`]): `size = {height, width}`, so
//!   `PIL.Image.resize((width, height))` of the whole image, the aspect ratio not kept, and no crop.
//!
//! Both then go through the same `PilBackend._preprocess`: `rescale` (float64, then cast to float32) and
//! `normalize` (float32). The only differences are the geometry, the filter and the constants.
#![forbid(unsafe_code)]

use super::resize::{resize_window, Rgb8View};
use super::{PreprocessConfig, ResizeMode};
use crate::error::{PgClipError, Result};
use crate::image::decode::RgbImage;

/// Output (width, height) of the resize: the shorter side becomes `shortest_edge` and the longer one
/// `int(shortest_edge * long / short)`. Python's float division is correctly rounded and the product
/// is far below 2^53, so it truncates to the same integer as exact integer division does.
pub(crate) fn resize_output_size(width: u32, height: u32, shortest_edge: u32) -> (u64, u64) {
    let scaled = |long: u32, short: u32| u64::from(shortest_edge) * u64::from(long) / u64::from(short);
    if width <= height {
        (u64::from(shortest_edge), scaled(height, width))
    } else {
        (scaled(width, height), u64::from(shortest_edge))
    }
}

/// Where the centre crop takes its pixels along one axis: `len` pixels starting at `src_start` of the
/// resized image land at `dst_start` of the crop; the rest of the crop is zero padding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct AxisCrop {
    pub src_start: usize,
    pub dst_start: usize,
    pub len: usize,
}

/// transformers' `center_crop` along one axis. A larger image is cut at `(size - crop) // 2`; a
/// smaller one is placed at `ceil((crop - size) / 2)` in a zero canvas (the offsets its padding
/// branch arrives at once its floor division of a negative number is worked through).
pub(crate) fn center_crop_axis(size: usize, crop: usize) -> AxisCrop {
    if size >= crop {
        AxisCrop { src_start: (size - crop) / 2, dst_start: 0, len: crop }
    } else {
        AxisCrop { src_start: 0, dst_start: (crop - size).div_ceil(2), len: size }
    }
}

/// The model's square input as packed RGB (crop_size * crop_size * 3), by `cfg.resize`.
pub(crate) fn resize_to_input(image: &RgbImage, cfg: &PreprocessConfig) -> Result<Vec<u8>> {
    match cfg.resize {
        ResizeMode::ShortestEdgeCenterCrop => resize_and_center_crop(image, cfg),
        ResizeMode::Squash => Ok(squash(image, cfg)),
    }
}

/// SigLIP: the whole image resized to crop_size x crop_size. Both output sides are at most 65535
/// (`validate`), so unlike the shortest-edge resize no image is too elongated for it.
fn squash(image: &RgbImage, cfg: &PreprocessConfig) -> Vec<u8> {
    let side = cfg.crop_size as usize;
    let mut out = vec![0u8; side * side * 3];
    let src = Rgb8View { pixels: &image.pixels, width: image.width as usize, height: image.height as usize };
    resize_window(src, cfg.resample, cfg.crop_size, cfg.crop_size, 0..side, 0..side, &mut out);
    out
}

/// Resize then centre-crop, computing only the resized pixels the crop keeps. Returns the crop as
/// packed RGB (crop_size * crop_size * 3), zero where the crop extends past the image.
fn resize_and_center_crop(image: &RgbImage, cfg: &PreprocessConfig) -> Result<Vec<u8>> {
    let (out_w, out_h) = resize_output_size(image.width, image.height, cfg.shortest_edge);
    // Pillow sizes are C ints; an image this elongated could not be resized by the reference either.
    let (Ok(out_w), Ok(out_h)) = (i32::try_from(out_w), i32::try_from(out_h)) else {
        return Err(PgClipError::invalid_image(format!(
            "a {}x{} image is too elongated to resize to a shortest side of {}",
            image.width, image.height, cfg.shortest_edge
        )));
    };
    let (out_w, out_h) = (out_w as u32, out_h as u32);
    let crop = cfg.crop_size as usize;
    let x = center_crop_axis(out_w as usize, crop);
    let y = center_crop_axis(out_h as usize, crop);

    let mut window = vec![0u8; x.len * y.len * 3];
    let src = Rgb8View { pixels: &image.pixels, width: image.width as usize, height: image.height as usize };
    resize_window(
        src,
        cfg.resample,
        out_w,
        out_h,
        y.src_start..y.src_start + y.len,
        x.src_start..x.src_start + x.len,
        &mut window,
    );

    if x.len == crop && y.len == crop {
        return Ok(window);
    }
    let mut canvas = vec![0u8; crop * crop * 3];
    for (row, src_row) in window.chunks_exact(x.len * 3).enumerate() {
        let start = ((y.dst_start + row) * crop + x.dst_start) * 3;
        canvas[start..start + x.len * 3].copy_from_slice(src_row);
    }
    Ok(canvas)
}

/// The float64 factor transformers multiplies by. Configurations carry it as f32 (checkpoints write
/// 0.00392156862745098, i.e. the double 1/255); when it is the f32 nearest to 1/n for an integer n we
/// use the double 1/n, which is what the reference multiplies by.
fn rescale_factor_f64(factor: f32) -> f64 {
    let widened = f64::from(factor);
    let n = (1.0 / widened).round();
    if n >= 1.0 && ((1.0 / n) as f32) == factor {
        1.0 / n
    } else {
        widened
    }
}

/// Per channel, the normalised value of each of the 256 levels, computed as transformers does:
/// `float32(level * rescale_factor)` with the product in float64, then `(x - mean) / std` in float32.
fn level_tables(cfg: &PreprocessConfig) -> [[f32; 256]; 3] {
    let factor = rescale_factor_f64(cfg.rescale_factor);
    let mut tables = [[0f32; 256]; 3];
    for (c, table) in tables.iter_mut().enumerate() {
        for (level, value) in table.iter_mut().enumerate() {
            let rescaled = (level as f64 * factor) as f32;
            *value = (rescaled - cfg.mean[c]) / cfg.std[c];
        }
    }
    tables
}

/// Packed HWC u8 crop -> CHW f32 tensor ([R plane, G plane, B plane], each row-major).
pub(crate) fn normalize_into_chw(crop: &[u8], cfg: &PreprocessConfig, out: &mut [f32]) {
    let plane = crop.len() / 3;
    debug_assert_eq!(out.len(), crop.len());
    let tables = level_tables(cfg);
    let (r_plane, rest) = out.split_at_mut(plane);
    let (g_plane, b_plane) = rest.split_at_mut(plane);
    for (i, px) in crop.chunks_exact(3).enumerate() {
        r_plane[i] = tables[0][px[0] as usize];
        g_plane[i] = tables[1][px[1] as usize];
        b_plane[i] = tables[2][px[2] as usize];
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::Resample;

    #[test]
    fn shortest_side_becomes_the_edge_and_the_long_side_truncates() {
        assert_eq!(resize_output_size(640, 427, 224), (335, 224)); // 224*640/427 = 335.7
        assert_eq!(resize_output_size(427, 640, 224), (224, 335));
        assert_eq!(resize_output_size(224, 224, 224), (224, 224));
        assert_eq!(resize_output_size(1, 1, 224), (224, 224));
        assert_eq!(resize_output_size(3, 5, 224), (224, 373)); // 373.33
        assert_eq!(resize_output_size(100, 50, 224), (448, 224));
        // Equal sides count as "width <= height".
        assert_eq!(resize_output_size(7, 7, 224), (224, 224));
    }

    #[test]
    fn crop_offsets_floor_for_odd_excess() {
        assert_eq!(center_crop_axis(335, 224), AxisCrop { src_start: 55, dst_start: 0, len: 224 });
        assert_eq!(center_crop_axis(225, 224), AxisCrop { src_start: 0, dst_start: 0, len: 224 });
        assert_eq!(center_crop_axis(227, 224), AxisCrop { src_start: 1, dst_start: 0, len: 224 });
        assert_eq!(center_crop_axis(224, 224), AxisCrop { src_start: 0, dst_start: 0, len: 224 });
    }

    #[test]
    fn smaller_images_are_padded_with_the_extra_pixel_before() {
        // transformers: top_pad = ceil((224 - 101) / 2) = 62, so 62 rows above and 61 below.
        assert_eq!(center_crop_axis(101, 224), AxisCrop { src_start: 0, dst_start: 62, len: 101 });
        assert_eq!(center_crop_axis(100, 224), AxisCrop { src_start: 0, dst_start: 62, len: 100 });
    }

    #[test]
    fn padding_is_zero_and_placed_like_transformers() {
        let cfg = PreprocessConfig { shortest_edge: 4, crop_size: 7, ..PreprocessConfig::clip_vit_b32() };
        // A 4x2 image resized to shortest side 4 -> 8x4; crop 7: x from 0 (8-7)//2 = 0, y padded at 2.
        let image = RgbImage { pixels: vec![200; 4 * 2 * 3], width: 4, height: 2 };
        let crop = resize_and_center_crop(&image, &cfg).unwrap();
        let row = |y: usize| &crop[y * 7 * 3..(y + 1) * 7 * 3];
        assert!(row(0).iter().chain(row(1)).chain(row(6)).all(|&v| v == 0));
        assert!((2..6).all(|y| row(y).iter().all(|&v| v == 200)));
    }

    fn squash_cfg(side: u32, resample: Resample) -> PreprocessConfig {
        PreprocessConfig {
            shortest_edge: 0, // unused by Squash
            crop_size: side,
            resize: ResizeMode::Squash,
            resample,
            ..PreprocessConfig::clip_vit_b32()
        }
    }

    #[test]
    fn squash_of_a_1000x10_strip_keeps_no_aspect_and_matches_pillow() {
        // R varies along x only, G along y only, B is flat, so each channel of the output is one row or one
        // column of values. Width 1000 -> 32 is a downscale, height 10 -> 32 an upscale; Pillow 13.0.0's
        // `Image.resize((32, 32), f, reducing_gap=None)` gives these (no crop, no padding: every row and
        // column is filled).
        let (w, h) = (1000u32, 10u32);
        let mut pixels = Vec::with_capacity((w * h * 3) as usize);
        for y in 0..h {
            for x in 0..w {
                pixels.extend_from_slice(&[(x % 251) as u8, (y * 28) as u8, 128]);
            }
        }
        let image = RgbImage { pixels, width: w, height: h };
        for (resample, red_row, green_col) in [
            (
                Resample::Bilinear,
                [
                    18, 46, 78, 109, 140, 171, 203, 206, 50, 45, 77, 108, 139, 170, 202, 209, 53, 44, 76, 107, 138,
                    169, 201, 211, 57, 43, 75, 106, 137, 168, 200, 228,
                ],
                [
                    0, 0, 8, 17, 25, 34, 43, 52, 60, 69, 78, 87, 95, 104, 113, 122, 130, 139, 148, 157, 165, 174, 183,
                    192, 200, 209, 218, 227, 235, 244, 252, 252,
                ],
            ),
            (
                Resample::Bicubic,
                [
                    16, 46, 78, 109, 140, 171, 205, 218, 39, 42, 77, 108, 139, 170, 204, 221, 43, 40, 76, 107, 138,
                    169, 203, 224, 47, 38, 75, 106, 137, 168, 200, 230,
                ],
                [
                    0, 0, 5, 15, 25, 34, 43, 52, 60, 69, 78, 87, 95, 104, 113, 122, 130, 139, 148, 157, 165, 174, 183,
                    192, 200, 209, 218, 227, 237, 247, 252, 255,
                ],
            ),
        ] {
            let out = resize_to_input(&image, &squash_cfg(32, resample)).unwrap();
            assert_eq!(out.len(), 32 * 32 * 3);
            for y in 0..32 {
                for x in 0..32 {
                    let px = &out[(y * 32 + x) * 3..(y * 32 + x) * 3 + 3];
                    assert_eq!(px, [red_row[x], green_col[y], 128], "{resample:?} ({x}, {y})");
                }
            }
        }
    }

    #[test]
    fn squash_upscales_tiny_images_to_the_whole_input() {
        for resample in [Resample::Bicubic, Resample::Bilinear] {
            let one = RgbImage { pixels: vec![10, 200, 255], width: 1, height: 1 };
            let out = resize_to_input(&one, &squash_cfg(224, resample)).unwrap();
            assert!(out.chunks_exact(3).all(|p| p == [10, 200, 255]), "{resample:?}");
        }
        // 3x1 -> 5x5: rows are equal (the height is only stretched), and no zero padding appears where the
        // shortest-edge path would pad.
        let image = RgbImage { pixels: vec![30, 30, 30, 90, 90, 90, 250, 250, 250], width: 3, height: 1 };
        let out = resize_to_input(&image, &squash_cfg(5, Resample::Bilinear)).unwrap();
        let first_row = &out[..5 * 3];
        assert!(out.chunks_exact(5 * 3).all(|row| row == first_row));
        assert!(out.iter().all(|&v| v >= 30));
        // Pillow 13.0.0: Image.fromarray(...).resize((5, 5), BILINEAR).
        let red: Vec<u8> = first_row.chunks_exact(3).map(|p| p[0]).collect();
        assert_eq!(red, [30, 54, 90, 186, 250]);
    }

    #[test]
    fn squash_of_a_square_image_equals_shortest_edge_and_crop() {
        let pixels: Vec<u8> = (0..40 * 40 * 3).map(|i| ((i * 7919) % 251) as u8).collect();
        let image = RgbImage { pixels, width: 40, height: 40 };
        for resample in [Resample::Bicubic, Resample::Bilinear] {
            let squashed = resize_to_input(&image, &squash_cfg(24, resample)).unwrap();
            let clip =
                PreprocessConfig { shortest_edge: 24, crop_size: 24, resample, ..PreprocessConfig::clip_vit_b32() };
            assert_eq!(squashed, resize_to_input(&image, &clip).unwrap(), "{resample:?}");
        }
    }

    #[test]
    fn bilinear_applies_to_the_shortest_edge_path_too() {
        let pixels: Vec<u8> = (0..60 * 30 * 3).map(|i| ((i * 7919) % 251) as u8).collect();
        let image = RgbImage { pixels, width: 60, height: 30 };
        let bicubic = PreprocessConfig { shortest_edge: 16, crop_size: 16, ..PreprocessConfig::clip_vit_b32() };
        let bilinear = PreprocessConfig { resample: Resample::Bilinear, ..bicubic.clone() };
        assert_ne!(resize_to_input(&image, &bicubic).unwrap(), resize_to_input(&image, &bilinear).unwrap());
    }

    #[test]
    fn reciprocal_factors_are_widened_to_the_exact_double() {
        assert_eq!(rescale_factor_f64((1.0f64 / 255.0) as f32), 1.0 / 255.0);
        assert_eq!(rescale_factor_f64(0.5), 0.5);
        assert_eq!(rescale_factor_f64(0.3), f64::from(0.3f32));
    }

    #[test]
    fn normalisation_is_channel_major_and_matches_numpy_bits() {
        let cfg = PreprocessConfig::clip_vit_b32();
        let crop = [0u8, 128, 255, 255, 0, 1];
        let mut out = [0f32; 6];
        normalize_into_chw(&crop, &cfg, &mut out);
        // numpy: ((np.float64(v) * (1/255)).astype(np.float32) - mean32) / std32, viewed as uint32.
        let bits = out.map(f32::to_bits);
        assert_eq!(bits, [0xbfe5_68dc, 0x3ff7_1541, 0x3e2c_f36b, 0xbfe0_44b8, 0x4009_5660, 0xbfbb_a5e1]);
    }
}
