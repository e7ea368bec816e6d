//! Input preprocessing: PIL-exact bicubic resize of 8-bit RGB frames and the frame-size rules
//! that bring them onto the model's 128-px grid. (The frame-count rules live in
//! [`crate::schedule`], the u8 → [-1, 1] mapping in [`crate::frames`].)
//!
//! The network only ever sees the bicubic-upscaled video at the target resolution, so the
//! resize must match Pillow's `Image.resize(.., BICUBIC)` bit for bit (spec §2): cubic
//! convolution with a = -0.5, support 2 (scaled by the factor only when downscaling), sample
//! centre `(x + 0.5) * in / out`, the filter window clamped to the image with the weights
//! renormalised, coefficients in 22-bit fixed point, horizontal pass first (rounded and
//! clipped to u8), then the vertical pass.

use candle_core::Result;

use crate::frames::{self, RgbFrame};

/// Fractional bits of Pillow's fixed-point resampling coefficients (`PRECISION_BITS`).
const PRECISION_BITS: u32 = 32 - 8 - 2;

/// Side of the grid the DiT needs: H and W must be multiples of 128 px.
pub const SIZE_MULTIPLE: usize = 128;

/// Pillow's bicubic kernel (a = -0.5).
fn bicubic_filter(x: f64) -> f64 {
    const A: f64 = -0.5;
    let x = x.abs();
    if x < 1.0 {
        ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        (((x - 5.0) * x + 8.0) * x - 4.0) * A
    } else {
        0.0
    }
}

/// The filter window of one output sample: first input index and fixed-point weights.
struct Window {
    first: usize,
    weights: Vec<i32>,
}

/// Pillow's `precompute_coeffs` + `normalize_coeffs_8bpc` for one axis.
fn bicubic_windows(in_size: usize, out_size: usize) -> Vec<Window> {
    let scale = in_size as f64 / out_size as f64;
    let filter_scale = scale.max(1.0);
    let support = 2.0 * filter_scale;
    (0..out_size)
        .map(|xx| {
            let center = (xx as f64 + 0.5) * scale;
            // C's `(int)` truncates towards zero, like `as i64`.
            let xmin = ((center - support + 0.5) as i64).max(0) as usize;
            let xmax = ((center + support + 0.5) as i64).min(in_size as i64) as usize;
            let raw: Vec<f64> = (xmin..xmax)
                .map(|x| bicubic_filter((x as f64 - center + 0.5) / filter_scale))
                .collect();
            let total: f64 = raw.iter().sum();
            let one = (1u32 << PRECISION_BITS) as f64;
            let weights = raw
                .iter()
                .map(|&w| {
                    let w = if total != 0.0 { w / total } else { w };
                    if w < 0.0 {
                        (-0.5 + w * one) as i32
                    } else {
                        (0.5 + w * one) as i32
                    }
                })
                .collect();
            Window {
                first: xmin,
                weights,
            }
        })
        .collect()
}

/// Rounds a fixed-point accumulator (which started at one half) and clips it to u8.
fn clip8(acc: i32) -> u8 {
    (acc >> PRECISION_BITS).clamp(0, 255) as u8
}

/// How many threads a pass writing `bytes` of output uses: all cores for frames big enough to
/// pay for the threads (a 1408×768 frame gets 12 on 16 cores), one for small ones.
fn threads_for(bytes: usize) -> usize {
    const MIN_BYTES_PER_THREAD: usize = 1 << 18;
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    cores.min(bytes / MIN_BYTES_PER_THREAD).max(1)
}

/// Runs `f(row index, row)` over the `stride`-byte rows of `data` on up to `threads` threads.
/// Every output row depends only on the input, so the result is the same for any count.
fn for_each_row(
    data: &mut [u8],
    stride: usize,
    threads: usize,
    f: impl Fn(usize, &mut [u8]) + Sync,
) {
    let rows = data.len() / stride.max(1);
    let threads = threads.clamp(1, rows.max(1));
    if threads == 1 {
        data.chunks_mut(stride)
            .enumerate()
            .for_each(|(y, row)| f(y, row));
        return;
    }
    let rows_per_thread = rows.div_ceil(threads);
    std::thread::scope(|scope| {
        for (part, chunk) in data.chunks_mut(rows_per_thread * stride).enumerate() {
            let f = &f;
            scope.spawn(move || {
                for (r, row) in chunk.chunks_mut(stride).enumerate() {
                    f(part * rows_per_thread + r, row);
                }
            });
        }
    });
}

/// PIL-exact `Image.resize((out_w, out_h), Image.BICUBIC)` of an RGB frame.
pub fn resize_bicubic(src: &RgbFrame, out_w: usize, out_h: usize) -> Result<RgbFrame> {
    resize_bicubic_on(src, out_w, out_h, threads_for(out_w * out_h * 3))
}

fn resize_bicubic_on(
    src: &RgbFrame,
    out_w: usize,
    out_h: usize,
    threads: usize,
) -> Result<RgbFrame> {
    if out_w == 0 || out_h == 0 {
        candle_core::bail!("bicubic resize to an empty size {out_w}x{out_h}")
    }
    let half = 1i32 << (PRECISION_BITS - 1);
    // Pillow skips a pass whose axis keeps its size.
    let horizontal = if out_w != src.width {
        let windows = bicubic_windows(src.width, out_w);
        let mut data = vec![0u8; out_w * src.height * 3];
        for_each_row(&mut data, out_w * 3, threads, |y, out_row| {
            let row = &src.data[y * src.width * 3..(y + 1) * src.width * 3];
            for (xx, win) in windows.iter().enumerate() {
                for c in 0..3 {
                    let mut acc = half;
                    for (k, &w) in win.weights.iter().enumerate() {
                        acc += row[(win.first + k) * 3 + c] as i32 * w;
                    }
                    out_row[xx * 3 + c] = clip8(acc);
                }
            }
        });
        RgbFrame {
            width: out_w,
            height: src.height,
            data,
        }
    } else {
        src.clone()
    };
    if out_h == horizontal.height {
        return Ok(horizontal);
    }
    let windows = bicubic_windows(horizontal.height, out_h);
    let stride = out_w * 3;
    let mut data = vec![0u8; out_h * stride];
    for_each_row(&mut data, stride, threads, |yy, out_row| {
        let win = &windows[yy];
        for (i, out) in out_row.iter_mut().enumerate() {
            let mut acc = half;
            for (k, &w) in win.weights.iter().enumerate() {
                acc += horizontal.data[(win.first + k) * stride + i] as i32 * w;
            }
            *out = clip8(acc);
        }
    });
    Ok(RgbFrame {
        width: out_w,
        height: out_h,
        data,
    })
}

/// Python's `round()` (half to even), which upstream applies to `w * scale`.
fn round_half_even(x: f64) -> f64 {
    x.round_ties_even()
}

/// How the upscaled frame is brought onto the 128-px grid.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SizeRule {
    /// Upstream tiny scripts: `round(w*scale)`, floored to a multiple of 128, centre crop
    /// (up to 127 px per axis are lost; an error when the floor is 0).
    UpstreamCrop,
    /// Product default: exactly `round(w*scale)`, padded on the right and bottom to the next
    /// multiple of 128 by repeating the edge pixels; the output is cropped back to the scaled size.
    #[default]
    PadToGrid,
}

/// Where the frames go at each size stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameGeometry {
    /// Bicubic output size.
    pub scaled_w: usize,
    pub scaled_h: usize,
    /// Size the model runs at (multiples of 128).
    pub model_w: usize,
    pub model_h: usize,
    /// `UpstreamCrop`: top-left of the crop box inside the scaled frame (else 0).
    pub crop_x: usize,
    pub crop_y: usize,
    /// Size of the frames the pipeline finally returns: the crop (`UpstreamCrop`) or the
    /// scaled size (`PadToGrid`, take the top-left `out_w`×`out_h` of the model output).
    pub out_w: usize,
    pub out_h: usize,
}

impl FrameGeometry {
    /// Computes the geometry of a `w0`×`h0` input upscaled by `scale`.
    pub fn new(w0: usize, h0: usize, scale: f64, rule: SizeRule) -> Result<Self> {
        if w0 == 0 || h0 == 0 {
            candle_core::bail!("input frame size {w0}x{h0} is empty")
        }
        if !(scale.is_finite() && scale > 0.0) {
            candle_core::bail!("scale {scale} must be a positive number")
        }
        let scaled_w = round_half_even(w0 as f64 * scale) as usize;
        let scaled_h = round_half_even(h0 as f64 * scale) as usize;
        if scaled_w == 0 || scaled_h == 0 {
            candle_core::bail!("scale {scale} turns {w0}x{h0} into an empty frame")
        }
        match rule {
            SizeRule::UpstreamCrop => {
                let model_w = scaled_w / SIZE_MULTIPLE * SIZE_MULTIPLE;
                let model_h = scaled_h / SIZE_MULTIPLE * SIZE_MULTIPLE;
                if model_w == 0 || model_h == 0 {
                    candle_core::bail!(
                        "upscaled size {scaled_w}x{scaled_h} is smaller than {SIZE_MULTIPLE} px \
                         on one side; the upstream crop rule cannot handle it"
                    )
                }
                Ok(Self {
                    scaled_w,
                    scaled_h,
                    model_w,
                    model_h,
                    crop_x: (scaled_w - model_w) / 2,
                    crop_y: (scaled_h - model_h) / 2,
                    out_w: model_w,
                    out_h: model_h,
                })
            }
            SizeRule::PadToGrid => Ok(Self {
                scaled_w,
                scaled_h,
                model_w: scaled_w.div_ceil(SIZE_MULTIPLE) * SIZE_MULTIPLE,
                model_h: scaled_h.div_ceil(SIZE_MULTIPLE) * SIZE_MULTIPLE,
                crop_x: 0,
                crop_y: 0,
                out_w: scaled_w,
                out_h: scaled_h,
            }),
        }
    }

    /// Resizes one input frame and brings it to the model size.
    pub fn prepare(&self, frame: &RgbFrame, rule: SizeRule) -> Result<RgbFrame> {
        let scaled = resize_bicubic(frame, self.scaled_w, self.scaled_h)?;
        match rule {
            SizeRule::UpstreamCrop => frames::crop(
                &scaled,
                self.crop_x,
                self.crop_y,
                self.model_w,
                self.model_h,
            ),
            SizeRule::PadToGrid => frames::pad_edge(&scaled, self.model_w, self.model_h),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bicubic_is_the_same_on_any_number_of_threads() -> Result<()> {
        let data = (0..301 * 203 * 3)
            .map(|i: usize| (i.wrapping_mul(2654435761) >> 7) as u8)
            .collect();
        let src = frames::from_rgb24(301, 203, data)?;
        let one = resize_bicubic_on(&src, 1204, 812, 1)?;
        for threads in [2, 3, 7, 5000] {
            assert_eq!(
                resize_bicubic_on(&src, 1204, 812, threads)?.data,
                one.data,
                "{threads} threads"
            );
        }
        assert_eq!(resize_bicubic(&src, 1204, 812)?.data, one.data);
        Ok(())
    }

    #[test]
    fn geometry_rules() -> Result<()> {
        let g = FrameGeometry::new(100, 70, 4.0, SizeRule::UpstreamCrop)?;
        assert_eq!(
            (g.scaled_w, g.scaled_h, g.model_w, g.model_h),
            (400, 280, 384, 256)
        );
        assert_eq!((g.crop_x, g.crop_y), (8, 12));
        let g = FrameGeometry::new(100, 70, 4.0, SizeRule::PadToGrid)?;
        assert_eq!(
            (g.model_w, g.model_h, g.out_w, g.out_h),
            (512, 384, 400, 280)
        );
        // Python rounds halves to even: 5 * 2.5 = 12.5 -> 12.
        let g = FrameGeometry::new(5, 7, 2.5, SizeRule::PadToGrid)?;
        assert_eq!((g.scaled_w, g.scaled_h), (12, 18));
        assert!(FrameGeometry::new(10, 10, 4.0, SizeRule::UpstreamCrop).is_err());
        Ok(())
    }
}
