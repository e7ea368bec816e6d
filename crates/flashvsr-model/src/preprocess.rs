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
//!
//! [`DevicePreprocess`] runs the same resize (with the crop or padding folded in) on the
//! model's device from the same integer windows, uploading the small input frame only.

use candle_core::{Device, Result, Tensor};
use flashvsr_kernels::ResampleTables;

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

/// One axis of the resize as window-table rows `[first, count, weights..]` for the output
/// indices `0..len`, output index `i` taking the window of resized sample `source(i)`. When the
/// axis keeps its size Pillow skips the pass; the identity window gives the same bytes.
fn axis_table(
    in_size: usize,
    scaled: usize,
    len: usize,
    source: impl Fn(usize) -> usize,
) -> Vec<Vec<i32>> {
    let windows = (in_size != scaled).then(|| bicubic_windows(in_size, scaled));
    (0..len)
        .map(|i| {
            let s = source(i);
            match &windows {
                Some(w) => {
                    let win = &w[s];
                    let mut row = vec![win.first as i32, win.weights.len() as i32];
                    row.extend_from_slice(&win.weights);
                    row
                }
                None => vec![s as i32, 1, 1 << PRECISION_BITS],
            }
        })
        .collect()
}

/// Pads the rows of both axes to one length and flattens them.
fn flatten_tables(h: Vec<Vec<i32>>, v: Vec<Vec<i32>>) -> (Vec<i32>, Vec<i32>, usize) {
    let row_len = h.iter().chain(&v).map(Vec::len).max().unwrap_or(2);
    let flat = |rows: Vec<Vec<i32>>| -> Vec<i32> {
        rows.into_iter()
            .flat_map(|mut r| {
                r.resize(row_len, 0);
                r
            })
            .collect()
    };
    (flat(h), flat(v), row_len)
}

/// The bicubic resize on a device: the host's integer windows, uploaded once, applied by
/// [`flashvsr_kernels::resample_rgb8`] (CUDA kernel; the same integer loops elsewhere), so the
/// result is byte for byte [`resize_bicubic`]'s (and [`FrameGeometry::prepare`]'s).
#[derive(Debug, Clone)]
pub struct DevicePreprocess {
    tables: ResampleTables,
    device: Device,
}

impl DevicePreprocess {
    /// [`FrameGeometry::prepare`] of `src_w`×`src_h` frames: resize, then crop or edge padding
    /// to the model size, as one table lookup per output pixel.
    pub fn new(
        src_w: usize,
        src_h: usize,
        g: &FrameGeometry,
        rule: SizeRule,
        device: &Device,
    ) -> Result<Self> {
        let (h, v) = match rule {
            SizeRule::UpstreamCrop => (
                axis_table(src_w, g.scaled_w, g.model_w, |x| g.crop_x + x),
                axis_table(src_h, g.scaled_h, g.model_h, |y| g.crop_y + y),
            ),
            SizeRule::PadToGrid => (
                axis_table(src_w, g.scaled_w, g.model_w, |x| x.min(g.scaled_w - 1)),
                axis_table(src_h, g.scaled_h, g.model_h, |y| y.min(g.scaled_h - 1)),
            ),
        };
        Self::from_rows(h, v, src_w, src_h, device)
    }

    /// [`resize_bicubic`] of `src_w`×`src_h` frames to `out_w`×`out_h`.
    pub fn resize(
        src_w: usize,
        src_h: usize,
        out_w: usize,
        out_h: usize,
        device: &Device,
    ) -> Result<Self> {
        if src_w == 0 || src_h == 0 || out_w == 0 || out_h == 0 {
            candle_core::bail!("bicubic resize {src_w}x{src_h} -> {out_w}x{out_h}: empty size")
        }
        let h = axis_table(src_w, out_w, out_w, |x| x);
        let v = axis_table(src_h, out_h, out_h, |y| y);
        Self::from_rows(h, v, src_w, src_h, device)
    }

    fn from_rows(
        h: Vec<Vec<i32>>,
        v: Vec<Vec<i32>>,
        src_w: usize,
        src_h: usize,
        device: &Device,
    ) -> Result<Self> {
        let (h, v, row_len) = flatten_tables(h, v);
        Ok(Self {
            tables: ResampleTables::new(&h, &v, row_len, src_w, src_h, device)?,
            device: device.clone(),
        })
    }

    /// Uploads `frame` (the small input) and resizes it there: `[H, W, 3]` u8 on the device.
    pub fn prepare(&self, frame: &RgbFrame) -> Result<Tensor> {
        let src = frames::to_device(frame, &self.device)?;
        self.tables.apply(&src)
    }
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

    fn random_frame(w: usize, h: usize, seed: usize) -> Result<RgbFrame> {
        let data = (0..w * h * 3)
            .map(|i: usize| ((i + seed * 7919).wrapping_mul(2654435761) >> 11) as u8)
            .collect();
        frames::from_rgb24(w, h, data)
    }

    /// The device tables run through the kernel op's host loops give the host resize's bytes
    /// (the CUDA kernel is checked against the same in tests/cuda_frame_ops.rs).
    #[test]
    fn device_tables_match_the_host_resize() -> Result<()> {
        let cpu = Device::Cpu;
        for (w, h, ow, oh) in [
            (7, 5, 28, 20),
            (13, 9, 13, 31),
            (10, 11, 4, 11),
            (31, 17, 77, 6),
        ] {
            let src = random_frame(w, h, ow)?;
            let want = resize_bicubic(&src, ow, oh)?;
            let got = DevicePreprocess::resize(w, h, ow, oh, &cpu)?.prepare(&src)?;
            assert_eq!(got.dims(), &[oh, ow, 3]);
            assert_eq!(
                got.flatten_all()?.to_vec1::<u8>()?,
                want.data,
                "{w}x{h} -> {ow}x{oh}"
            );
        }
        for (w, h, scale, rule) in [
            (100, 70, 4.0, SizeRule::UpstreamCrop),
            (100, 70, 4.0, SizeRule::PadToGrid),
            (45, 37, 2.5, SizeRule::PadToGrid),
            (50, 45, 3.0, SizeRule::UpstreamCrop),
        ] {
            let g = FrameGeometry::new(w, h, scale, rule)?;
            let src = random_frame(w, h, 3)?;
            let want = g.prepare(&src, rule)?;
            let got = DevicePreprocess::new(w, h, &g, rule, &cpu)?.prepare(&src)?;
            assert_eq!(got.dims(), &[g.model_h, g.model_w, 3]);
            assert_eq!(
                got.flatten_all()?.to_vec1::<u8>()?,
                want.data,
                "{w}x{h} x{scale} {rule:?}"
            );
        }
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
