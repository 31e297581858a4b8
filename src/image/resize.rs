//! Pillow's convolution resampler for 8-bit RGB (`libImaging/Resample.c`: `precompute_coeffs`,
//! `normalize_coeffs_8bpc`, `ImagingResampleHorizontal_8bpc`, `ImagingResampleVertical_8bpc`,
//! `ImagingResampleInner`) with its BICUBIC and BILINEAR filters, ported operation for operation so that
//! every output byte equals what `PIL.Image.resize(size, BICUBIC or BILINEAR, reducing_gap=None)` produces.
//! The filters differ only in their kernel and support (`struct filter`); everything below is shared, as
//! in Pillow.
//!
//! What must not change, because each one moves some output by a level:
//! * coefficients are computed in f64 exactly as in C, in the same order (`(x + xmin) - center + 0.5`),
//!   from a scale derived from the f32 box Pillow passes;
//! * they are then rounded to fixed point with 22 fractional bits, half away from zero;
//! * the first pass is rounded and clamped to u8 before the second, and which pass goes first
//!   follows Pillow 13's rule (`vertical_pass_first`);
//! * a pass is skipped when its dimension does not change (Pillow's `need_horizontal/need_vertical`).
//!
//! Each output pixel depends only on its own taps, so computing just a window of the output (the
//! part the centre crop keeps) gives the same bytes as computing everything and cropping.
#![forbid(unsafe_code)]

use std::ops::Range;

use super::Resample;

/// Fractional bits of the fixed-point coefficients: 32 bits minus 8 for the pixel value minus 2 for
/// the overshoot of filters with negative lobes.
const PRECISION_BITS: u32 = 32 - 8 - 2;
/// Pillow's `struct filter`: a kernel and the distance beyond which it is zero.
#[derive(Clone, Copy)]
struct Filter {
    kernel: fn(f64) -> f64,
    support: f64,
}

/// `static struct filter BICUBIC = {bicubic_filter, 2.0}`.
const BICUBIC: Filter = Filter { kernel: bicubic_filter, support: 2.0 };
/// `static struct filter BILINEAR = {bilinear_filter, 1.0}`.
const BILINEAR: Filter = Filter { kernel: bilinear_filter, support: 1.0 };

fn filter(resample: Resample) -> Filter {
    match resample {
        Resample::Bicubic => BICUBIC,
        Resample::Bilinear => BILINEAR,
    }
}

/// The triangle (tent) kernel, as Pillow defines it.
fn bilinear_filter(x: f64) -> f64 {
    let x = if x < 0.0 { -x } else { x };
    if x < 1.0 {
        1.0 - x
    } else {
        0.0
    }
}

/// Keys' cubic convolution kernel with a = -0.5, as Pillow defines it.
fn bicubic_filter(x: f64) -> f64 {
    const A: f64 = -0.5;
    let x = if x < 0.0 { -x } else { x };
    if x < 1.0 {
        ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        (((x - 5.0) * x + 8.0) * x - 4.0) * A
    } else {
        0.0
    }
}

/// The fixed-point taps for a contiguous range of output positions along one axis.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct AxisTaps {
    /// For each output position: the first source index and the number of taps.
    pub bounds: Vec<(usize, usize)>,
    /// `ksize` weights per output position, the first `bounds[i].1` of which are used.
    pub weights: Vec<i32>,
    pub ksize: usize,
}

impl AxisTaps {
    fn taps(&self, i: usize) -> (usize, &[i32]) {
        let (first, count) = self.bounds[i];
        (first, &self.weights[i * self.ksize..i * self.ksize + count])
    }

    /// Half-open range of source indices any of these outputs reads.
    fn source_span(&self) -> Range<usize> {
        let start = self.bounds.iter().map(|&(first, _)| first).min().unwrap_or(0);
        let end = self.bounds.iter().map(|&(first, count)| first + count).max().unwrap_or(0);
        start..end
    }
}

/// `precompute_coeffs` + `normalize_coeffs_8bpc` for the output positions in `outputs`, resampling
/// `in_size` source pixels (the whole axis: Pillow's box is `(0, in_size)`) onto `out_size` with `resample`'s
/// filter.
pub(crate) fn precompute_taps(resample: Resample, in_size: u32, out_size: u32, outputs: Range<usize>) -> AxisTaps {
    let filter = filter(resample);
    // Pillow's box is float; (in1 - in0) is computed in float and only then widened.
    let in0 = 0.0f32;
    let in1 = in_size as f32;
    let scale = f64::from(in1 - in0) / f64::from(out_size);
    let filterscale = if scale < 1.0 { 1.0 } else { scale };
    let support = filter.support * filterscale;
    let ksize = support.ceil() as usize * 2 + 1;
    let in_size = in_size as i32;

    let mut bounds = Vec::with_capacity(outputs.len());
    let mut weights = vec![0i32; outputs.len() * ksize];
    let mut k = vec![0f64; ksize];
    for (slot, xx) in outputs.enumerate() {
        let center = f64::from(in0) + (xx as f64 + 0.5) * scale;
        let ss = 1.0 / filterscale;
        // C's (int) conversion truncates toward zero, as `as` does.
        let xmin = ((center - support + 0.5) as i32).max(0);
        let xmax = ((center + support + 0.5) as i32).min(in_size) - xmin;
        let count = xmax.max(0) as usize;
        let mut ww = 0.0;
        for (x, kx) in k.iter_mut().enumerate().take(count) {
            let w = (filter.kernel)((f64::from(x as i32 + xmin) - center + 0.5) * ss);
            *kx = w;
            ww += w;
        }
        let fixed = &mut weights[slot * ksize..slot * ksize + count];
        for (kx, fx) in k.iter().zip(fixed.iter_mut()) {
            let w = if ww != 0.0 { kx / ww } else { *kx };
            let scaled = w * f64::from(1u32 << PRECISION_BITS);
            *fx = if w < 0.0 { (-0.5 + scaled) as i32 } else { (0.5 + scaled) as i32 };
        }
        bounds.push((xmin as usize, count));
    }
    AxisTaps { bounds, weights, ksize }
}

/// Pillow's `clip8`: drop the fractional bits (arithmetic shift, so negatives floor) and clamp.
#[inline(always)]
fn clip8(acc: i32) -> u8 {
    (acc >> PRECISION_BITS).clamp(0, 255) as u8
}

/// Rounding offset every accumulator starts from (0.5 in fixed point).
const HALF: i32 = 1 << (PRECISION_BITS - 1);

/// A packed 8-bit RGB image.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Rgb8View<'a> {
    pub pixels: &'a [u8],
    pub width: usize,
    pub height: usize,
}

/// A rectangle of some image held in a packed RGB buffer: buffer pixel (0, 0) is image pixel
/// (`first_col`, `first_row`) and buffer rows are `stride` pixels long.
#[derive(Debug, Clone, Copy)]
struct Window<'a> {
    pixels: &'a [u8],
    stride: usize,
    first_row: usize,
    first_col: usize,
}

impl<'a> Window<'a> {
    fn whole(image: Rgb8View<'a>) -> Self {
        Window { pixels: image.pixels, stride: image.width, first_row: 0, first_col: 0 }
    }

    /// Image row `y`, columns `cols` (image coordinates), as packed RGB.
    fn row(&self, y: usize, cols: Range<usize>) -> &'a [u8] {
        let start = ((y - self.first_row) * self.stride + cols.start - self.first_col) * 3;
        &self.pixels[start..start + cols.len() * 3]
    }
}

/// Which pass Pillow runs first when both are needed. Pillow 13 (python-pillow/Pillow#9549) runs the
/// vertical pass first when the height shrinks by more than twice as many pixels as the width does;
/// earlier Pillow always ran the horizontal pass first. The order matters because the intermediate
/// is rounded to 8 bits.
fn vertical_pass_first(in_width: usize, in_height: usize, out_width: usize, out_height: usize) -> bool {
    let (w, h, ow, oh) = (in_width as i64, in_height as i64, out_width as i64, out_height as i64);
    oh < h && (h - oh) > 2 * (w - ow)
}

/// Resizes `src` to `out_width` x `out_height` exactly as Pillow's `resample` filter does, but computes only
/// the output rows `rows` and columns `cols`, written as packed RGB rows into `out`
/// (`rows.len() * cols.len() * 3` bytes).
pub(crate) fn resize_window(
    src: Rgb8View<'_>,
    resample: Resample,
    out_width: u32,
    out_height: u32,
    rows: Range<usize>,
    cols: Range<usize>,
    out: &mut [u8],
) {
    assert_eq!(out.len(), rows.len() * cols.len() * 3, "window buffer size");
    assert!(rows.end <= out_height as usize && cols.end <= out_width as usize, "window inside output");
    assert_eq!(src.pixels.len(), src.width * src.height * 3, "source buffer size");
    if rows.is_empty() || cols.is_empty() {
        return;
    }
    let source = Window::whole(src);
    // Pillow skips a pass whose dimension does not change (need_horizontal / need_vertical).
    let horizontal =
        (out_width as usize != src.width).then(|| precompute_taps(resample, src.width as u32, out_width, cols.clone()));
    let vertical = (out_height as usize != src.height)
        .then(|| precompute_taps(resample, src.height as u32, out_height, rows.clone()));

    match (horizontal, vertical) {
        (None, None) => {
            for (y, out_row) in rows.zip(out.chunks_exact_mut(cols.len() * 3)) {
                out_row.copy_from_slice(source.row(y, cols.clone()));
            }
        }
        (Some(h_taps), None) => horizontal_pass(&source, rows, &h_taps, out),
        (None, Some(v_taps)) => vertical_pass(&source, cols, &v_taps, out),
        (Some(h_taps), Some(v_taps)) => {
            if vertical_pass_first(src.width, src.height, out_width as usize, out_height as usize) {
                // Only the source columns the horizontal taps read.
                let src_cols = h_taps.source_span();
                let mut temp = vec![0u8; rows.len() * src_cols.len() * 3];
                vertical_pass(&source, src_cols.clone(), &v_taps, &mut temp);
                let temp =
                    Window { pixels: &temp, stride: src_cols.len(), first_row: rows.start, first_col: src_cols.start };
                horizontal_pass(&temp, rows, &h_taps, out);
            } else {
                // Only the source rows the vertical taps read, as Pillow's imTemp.
                let src_rows = v_taps.source_span();
                let mut temp = vec![0u8; src_rows.len() * cols.len() * 3];
                horizontal_pass(&source, src_rows.clone(), &h_taps, &mut temp);
                let temp =
                    Window { pixels: &temp, stride: cols.len(), first_row: src_rows.start, first_col: cols.start };
                vertical_pass(&temp, cols, &v_taps, out);
            }
        }
    }
}

/// `ImagingResampleHorizontal_8bpc` for image rows `rows` and the output columns the taps describe.
fn horizontal_pass(input: &Window<'_>, rows: Range<usize>, taps: &AxisTaps, out: &mut [u8]) {
    let out_row_bytes = taps.bounds.len() * 3;
    let span = taps.source_span();
    for (y, out_row) in rows.zip(out.chunks_exact_mut(out_row_bytes)) {
        let in_row = input.row(y, span.clone());
        for (xx, out_px) in out_row.chunks_exact_mut(3).enumerate() {
            let (first, weights) = taps.taps(xx);
            let start = (first - span.start) * 3;
            let pixels = &in_row[start..start + weights.len() * 3];
            let (mut r, mut g, mut b) = (HALF, HALF, HALF);
            for (px, &w) in pixels.chunks_exact(3).zip(weights) {
                r += i32::from(px[0]) * w;
                g += i32::from(px[1]) * w;
                b += i32::from(px[2]) * w;
            }
            out_px[0] = clip8(r);
            out_px[1] = clip8(g);
            out_px[2] = clip8(b);
        }
    }
}

/// `ImagingResampleVertical_8bpc` for image columns `cols` and the output rows the taps describe.
fn vertical_pass(input: &Window<'_>, cols: Range<usize>, taps: &AxisTaps, out: &mut [u8]) {
    let row_bytes = cols.len() * 3;
    let mut acc = vec![0i32; row_bytes];
    for (slot, out_row) in out.chunks_exact_mut(row_bytes).enumerate() {
        let (first, weights) = taps.taps(slot);
        acc.fill(HALF);
        // Integer sums are exact, so accumulating row by row (cache-friendly) equals Pillow's
        // per-pixel loop.
        for (dy, &w) in weights.iter().enumerate() {
            for (a, &p) in acc.iter_mut().zip(input.row(first + dy, cols.clone())) {
                *a += i32::from(p) * w;
            }
        }
        for (o, &a) in out_row.iter_mut().zip(acc.iter()) {
            *o = clip8(a);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn full(in_size: u32, out_size: u32) -> AxisTaps {
        precompute_taps(Resample::Bicubic, in_size, out_size, 0..out_size as usize)
    }

    fn full_bilinear(in_size: u32, out_size: u32) -> AxisTaps {
        precompute_taps(Resample::Bilinear, in_size, out_size, 0..out_size as usize)
    }

    fn resize_all(pixels: &[u8], width: usize, height: usize, resample: Resample, ow: u32, oh: u32) -> Vec<u8> {
        let mut out = vec![0u8; ow as usize * oh as usize * 3];
        let src = Rgb8View { pixels, width, height };
        resize_window(src, resample, ow, oh, 0..oh as usize, 0..ow as usize, &mut out);
        out
    }

    #[test]
    fn kernel_matches_keys_cubic() {
        assert_eq!(bicubic_filter(0.0), 1.0);
        assert_eq!(bicubic_filter(1.0), 0.0);
        assert_eq!(bicubic_filter(2.0), 0.0);
        assert_eq!(bicubic_filter(0.5), 0.5625);
        assert_eq!(bicubic_filter(-1.5), -0.0625);
    }

    #[test]
    fn bilinear_kernel_is_the_tent() {
        assert_eq!(bilinear_filter(0.0), 1.0);
        assert_eq!(bilinear_filter(0.25), 0.75);
        assert_eq!(bilinear_filter(-0.75), 0.25);
        assert_eq!(bilinear_filter(1.0), 0.0);
        assert_eq!(bilinear_filter(-3.0), 0.0);
    }

    #[test]
    fn bilinear_upscaling_two_times_has_the_known_taps() {
        // 2 -> 4: scale 0.5, support 1, ksize 2*1+1 = 3. Output 0's centre is 0.25: xmin = int(-0.25) = 0,
        // xmax = int(1.75) = 1, so one tap (source 0, kernel 0.75, normalised to 1). Output 1's centre 0.75
        // reads sources 0 and 1 at distances 0.25 and 0.75: 0.75 and 0.25 of 2^22.
        let taps = full_bilinear(2, 4);
        assert_eq!(taps.ksize, 3);
        assert_eq!(taps.bounds, vec![(0, 1), (0, 2), (0, 2), (1, 1)]);
        assert_eq!(taps.taps(0).1, &[1 << 22]);
        assert_eq!(taps.taps(1).1, &[3 << 20, 1 << 20]);
        assert_eq!(taps.taps(2).1, &[1 << 20, 3 << 20]);
        assert_eq!(taps.taps(3).1, &[1 << 22]);
    }

    #[test]
    fn bilinear_downscaling_widens_the_tent_by_the_factor() {
        // 1000 -> 224: scale 4.464..., support 4.46, ksize 2*5+1 = 11 (bicubic's is 19).
        let taps = full_bilinear(1000, 224);
        assert_eq!(taps.ksize, 11);
        // centre 448.66: xmin = int(448.66 - 4.46 + 0.5) = 444, xmax = int(453.63) = 453.
        let (first, weights) = taps.taps(100);
        assert_eq!((first, weights.len()), (444, 9));
        // The tent peaks at the tap nearest the centre (source 448, at distance 0.16) and has no negative lobe.
        let peak = weights.iter().enumerate().max_by_key(|&(_, w)| *w).unwrap().0;
        assert_eq!(first + peak, 448);
        assert!(weights.iter().all(|&w| w > 0));
        assert_eq!(weights.iter().sum::<i32>(), (1 << 22) - 1);
        let (last_first, last) = taps.taps(223);
        assert_eq!(last_first + last.len(), 1000);
    }

    #[test]
    fn bilinear_matches_pillow_on_small_images() {
        // Pillow 13.0.0: Image.fromarray(a, "RGB").resize(size, BILINEAR, reducing_gap=None), red channel.
        let mut impulse = vec![0u8; 7 * 3];
        impulse[9] = 255;
        let red = |v: Vec<u8>| v.chunks_exact(3).map(|p| p[0]).collect::<Vec<u8>>();
        assert_eq!(red(resize_all(&impulse, 7, 1, Resample::Bilinear, 3, 1)), [0, 105, 0]);
        assert_eq!(
            red(resize_all(&impulse, 7, 1, Resample::Bilinear, 16, 1)),
            [0, 0, 0, 0, 0, 0, 88, 199, 199, 88, 0, 0, 0, 0, 0, 0]
        );
        let square = [0, 0, 0, 200, 100, 50, 40, 80, 120, 255, 255, 255];
        assert_eq!(
            red(resize_all(&square, 2, 2, Resample::Bilinear, 4, 4)),
            [0, 50, 150, 200, 10, 61, 163, 214, 30, 83, 188, 241, 40, 94, 201, 255]
        );
    }

    #[test]
    fn upscaling_two_times_has_the_known_taps() {
        // 2 -> 4: scale 0.5, support 2, centre of output 0 at 0.25. It reads sources 0 and 1 at
        // distances 0.25 and 1.25: kernel 0.8671875 and -0.0703125, normalised by their sum 0.796875
        // to 1.0882353 and -0.0882353, i.e. 4564390 and -370086 in 22-bit fixed point.
        let taps = full(2, 4);
        assert_eq!(taps.ksize, 5);
        assert_eq!(taps.bounds, vec![(0, 2), (0, 2), (0, 2), (0, 2)]);
        assert_eq!(taps.taps(0).1, &[4_564_390, -370_086]);
        assert_eq!(taps.taps(3).1, &[-370_086, 4_564_390]);
    }

    #[test]
    fn downscaling_widens_the_support_by_the_factor() {
        // 1000 -> 224: scale 4.464..., support 8.93, ksize 2*9+1 = 19.
        let taps = full(1000, 224);
        assert_eq!(taps.ksize, 19);
        let (first, weights) = taps.taps(100);
        // centre = 100.5 * 4.4642857 = 448.66; xmin = int(448.66 - 8.93 + 0.5) = 440.
        assert_eq!(first, 440);
        assert_eq!(weights.len(), 18);
        // Rounding each tap separately leaves the sum a unit short of 1.0 here, as in Pillow.
        assert_eq!(weights.iter().sum::<i32>(), (1 << 22) - 1);
        // Edges are clamped to the image.
        assert_eq!(taps.taps(0).0, 0);
        let (last_first, last) = taps.taps(223);
        assert_eq!(last_first + last.len(), 1000);
    }

    #[test]
    fn window_equals_the_same_part_of_the_full_resize() {
        let (w, h) = (37usize, 23usize);
        let pixels: Vec<u8> = (0..w * h * 3).map(|i| ((i * 7919) % 251) as u8).collect();
        let src = Rgb8View { pixels: &pixels, width: w, height: h };
        for resample in [Resample::Bicubic, Resample::Bilinear] {
            for (ow, oh) in [(80u32, 50u32), (12, 9), (37, 11), (20, 23), (37, 23)] {
                let full_out = resize_all(&pixels, w, h, resample, ow, oh);
                let (rows, cols) = (oh as usize / 3..oh as usize - 1, ow as usize / 4..ow as usize);
                let mut window = vec![0u8; rows.len() * cols.len() * 3];
                resize_window(src, resample, ow, oh, rows.clone(), cols.clone(), &mut window);
                for (i, y) in rows.clone().enumerate() {
                    let expected = &full_out[(y * ow as usize + cols.start) * 3..(y * ow as usize + cols.end) * 3];
                    let got = &window[i * cols.len() * 3..(i + 1) * cols.len() * 3];
                    assert_eq!(got, expected, "{resample:?} {ow}x{oh} row {y}");
                }
            }
        }
    }

    #[test]
    fn same_size_is_a_copy() {
        let pixels: Vec<u8> = (0..5 * 4 * 3).map(|i| i as u8).collect();
        for resample in [Resample::Bicubic, Resample::Bilinear] {
            assert_eq!(resize_all(&pixels, 5, 4, resample, 5, 4), pixels);
        }
    }

    #[test]
    fn one_pixel_upscales_to_a_flat_image() {
        for resample in [Resample::Bicubic, Resample::Bilinear] {
            let out = resize_all(&[10, 200, 255], 1, 1, resample, 224, 224);
            assert!(out.chunks_exact(3).all(|p| p == [10, 200, 255]), "{resample:?}");
        }
    }

    #[test]
    fn pass_order_follows_pillow_13() {
        // Boundary cases checked against Pillow 13.0.0 (which order reproduces its output).
        assert!(vertical_pass_first(640, 1281, 224, 448)); // 833 > 2 * 416
        assert!(!vertical_pass_first(640, 1280, 224, 448)); // 832 = 2 * 416
        assert!(!vertical_pass_first(1600, 1200, 298, 224)); // landscape photos: horizontal first
        assert!(vertical_pass_first(100, 100, 101, 99)); // width grows, height shrinks
        assert!(!vertical_pass_first(100, 100, 150, 150)); // both grow
        assert!(!vertical_pass_first(100, 100, 50, 5)); // height shrinks more, but not by 2x the pixels
    }

    #[test]
    fn clip8_floors_then_clamps() {
        assert_eq!(clip8(HALF + (17 << PRECISION_BITS)), 17);
        assert_eq!(clip8((17 << PRECISION_BITS) - 1), 16);
        assert_eq!(clip8(-5 << PRECISION_BITS), 0);
        assert_eq!(clip8(300 << PRECISION_BITS), 255);
    }
}
