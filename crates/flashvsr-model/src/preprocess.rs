//! Input preprocessing: PIL-exact bicubic resize of 8-bit RGB frames, the frame-size and
//! frame-count rules, and the u8 → [-1, 1] mapping into a `[1, 3, T, H, W]` tensor.
//!
//! The network only ever sees the bicubic-upscaled video at the target resolution, so the
//! resize must match Pillow's `Image.resize(.., BICUBIC)` bit for bit (spec §2): cubic
//! convolution with a = -0.5, support 2 (scaled by the factor only when downscaling), sample
//! centre `(x + 0.5) * in / out`, the filter window clamped to the image with the weights
//! renormalised, coefficients in 22-bit fixed point, horizontal pass first (rounded and
//! clipped to u8), then the vertical pass.

use candle_core::{DType, Device, Result, Tensor};

/// Fractional bits of Pillow's fixed-point resampling coefficients (`PRECISION_BITS`).
const PRECISION_BITS: u32 = 32 - 8 - 2;

/// Side of the grid the DiT needs: H and W must be multiples of 128 px.
pub const SIZE_MULTIPLE: usize = 128;

/// An 8-bit RGB frame, rows top to bottom, pixels interleaved `RGBRGB…`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RgbFrame {
    pub width: usize,
    pub height: usize,
    pub data: Vec<u8>,
}

impl RgbFrame {
    /// Wraps interleaved RGB bytes, checking that the buffer matches the size.
    pub fn new(width: usize, height: usize, data: Vec<u8>) -> Result<Self> {
        if width == 0 || height == 0 {
            candle_core::bail!("frame size {width}x{height} is empty")
        }
        if data.len() != width * height * 3 {
            candle_core::bail!(
                "frame {width}x{height} needs {} RGB bytes, got {}",
                width * height * 3,
                data.len()
            )
        }
        Ok(Self {
            width,
            height,
            data,
        })
    }

    /// The `w`×`h` window whose top-left corner is (`x`, `y`); it must lie inside the frame.
    pub fn crop(&self, x: usize, y: usize, w: usize, h: usize) -> Result<Self> {
        if x + w > self.width || y + h > self.height || w == 0 || h == 0 {
            candle_core::bail!(
                "crop {w}x{h} at ({x},{y}) does not fit a {}x{} frame",
                self.width,
                self.height
            )
        }
        let mut data = Vec::with_capacity(w * h * 3);
        for row in y..y + h {
            let start = (row * self.width + x) * 3;
            data.extend_from_slice(&self.data[start..start + w * 3]);
        }
        Ok(Self {
            width: w,
            height: h,
            data,
        })
    }

    /// Grows the frame to `w`×`h` by repeating its last column and last row.
    pub fn pad_edge(&self, w: usize, h: usize) -> Result<Self> {
        if w < self.width || h < self.height {
            candle_core::bail!(
                "cannot pad a {}x{} frame to the smaller {w}x{h}",
                self.width,
                self.height
            )
        }
        let mut data = Vec::with_capacity(w * h * 3);
        for row in 0..h {
            let src_row = row.min(self.height - 1);
            let start = src_row * self.width * 3;
            data.extend_from_slice(&self.data[start..start + self.width * 3]);
            let last = start + (self.width - 1) * 3;
            for _ in self.width..w {
                data.extend_from_slice(&self.data[last..last + 3]);
            }
        }
        Ok(Self {
            width: w,
            height: h,
            data,
        })
    }
}

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
            SizeRule::UpstreamCrop => {
                scaled.crop(self.crop_x, self.crop_y, self.model_w, self.model_h)
            }
            SizeRule::PadToGrid => scaled.pad_edge(self.model_w, self.model_h),
        }
    }
}

/// How many LQ frames the pipeline runs for `N0` input frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FrameRule {
    /// Upstream: append 4 copies of the last frame, keep the largest `8n+1` ≤ N0+4. Output
    /// `F-4` frames, so 0–7 trailing input frames get no output; needs N0 ≥ 21.
    Upstream,
    /// Product default: append copies of the last frame until `F = 8n+1` ≥ max(N0+4, 25), so
    /// every input frame gets its output frame (the extra outputs are dropped); any N0 ≥ 1.
    #[default]
    EveryFrame,
}

/// Frame counts of one clip.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FramePlan {
    /// Input frames N0.
    pub input_frames: usize,
    /// LQ frames F fed to the model (`8n+1`, ≥ 25); frame j is input frame `min(j, N0-1)`.
    pub lq_frames: usize,
    /// Frames the decoder produces, `F - 4`; decoded frame j belongs to LQ frame j.
    pub decoded_frames: usize,
    /// Frames to return: `decoded_frames` (Upstream) or N0 (EveryFrame).
    pub output_frames: usize,
    /// Latent frames `(F-1)/4`.
    pub latent_frames: usize,
    /// DiT steps `(F-1)/8 - 2`.
    pub dit_steps: usize,
}

/// Smallest number of LQ frames the pipeline can run (one DiT step).
pub const MIN_LQ_FRAMES: usize = 25;

impl FramePlan {
    pub fn new(input_frames: usize, rule: FrameRule) -> Result<Self> {
        if input_frames == 0 {
            candle_core::bail!("the clip has no frames")
        }
        let lq_frames = match rule {
            FrameRule::Upstream => {
                let f = (input_frames + 4 - 1) / 8 * 8 + 1;
                if f < MIN_LQ_FRAMES {
                    candle_core::bail!(
                        "{input_frames} input frames are too few for the upstream frame rule \
                         (needs at least 21)"
                    )
                }
                f
            }
            FrameRule::EveryFrame => {
                let needed = (input_frames + 4).max(MIN_LQ_FRAMES);
                (needed - 1).div_ceil(8) * 8 + 1
            }
        };
        let decoded_frames = lq_frames - 4;
        let output_frames = match rule {
            FrameRule::Upstream => decoded_frames,
            FrameRule::EveryFrame => input_frames,
        };
        Ok(Self {
            input_frames,
            lq_frames,
            decoded_frames,
            output_frames,
            latent_frames: (lq_frames - 1) / 4,
            dit_steps: (lq_frames - 1) / 8 - 2,
        })
    }

    /// Index of the input frame that LQ frame `j` repeats.
    pub fn source_frame(&self, lq_index: usize) -> usize {
        lq_index.min(self.input_frames - 1)
    }
}

/// Upstream's exact u8 → [-1, 1] mapping, `(u8 / 255.0) * 2.0 - 1.0` in f32.
pub fn u8_to_unit(v: u8) -> f32 {
    (v as f32 / 255.0f32) * 2.0f32 - 1.0f32
}

/// Uploads one frame as it is, `[H, W, 3]` u8: a quarter of the bytes of an f32 frame, and
/// no per-pixel work on the host. [`unit_video`] turns held frames into the model's input.
pub fn frame_to_device(frame: &RgbFrame, device: &Device) -> Result<Tensor> {
    Tensor::from_slice(&frame.data, (frame.height, frame.width, 3), device)
}

/// Equally sized `[H, W, 3]` u8 frames (on any device) → `[1, 3, T, H, W]` in [-1, 1], computed
/// where the frames are. The values are exactly [`u8_to_unit`]'s (a 256-entry table, not a
/// rescale, whose rounding could differ by an ulp), then cast to `dtype`.
pub fn unit_video(frames: &[Tensor], dtype: DType) -> Result<Tensor> {
    let Some(first) = frames.first() else {
        candle_core::bail!("no frames to stack")
    };
    let (h, w, c) = first.dims3()?;
    if let Some((i, f)) = frames
        .iter()
        .enumerate()
        .find(|(_, f)| f.dims() != first.dims())
    {
        candle_core::bail!(
            "frame {i} is {:?}, the first frame is {:?}",
            f.dims(),
            first.dims()
        )
    }
    let table: Vec<f32> = (0..=255u8).map(u8_to_unit).collect();
    let table = Tensor::from_vec(table, 256, first.device())?;
    let t = frames.len();
    let bytes = Tensor::stack(frames, 0)?.flatten_all()?;
    table
        .index_select(&bytes, 0)?
        .reshape((t, h, w, c))?
        .permute((3, 0, 1, 2))?
        .to_dtype(dtype)?
        .contiguous()?
        .unsqueeze(0)
}

/// Stacks equally sized frames into the LQ video tensor `[1, 3, T, H, W]` in [-1, 1]
/// (computed in f32, then cast to `dtype`).
pub fn frames_to_tensor(frames: &[&RgbFrame], device: &Device, dtype: DType) -> Result<Tensor> {
    let Some(first) = frames.first() else {
        candle_core::bail!("no frames to stack")
    };
    let (w, h) = (first.width, first.height);
    let plane = w * h;
    let t = frames.len();
    let mut data = vec![0f32; 3 * t * plane];
    for (ti, frame) in frames.iter().enumerate() {
        if frame.width != w || frame.height != h {
            candle_core::bail!(
                "frame {ti} is {}x{}, the first frame is {w}x{h}",
                frame.width,
                frame.height
            )
        }
        for (p, px) in frame.data.chunks_exact(3).enumerate() {
            for c in 0..3 {
                data[(c * t + ti) * plane + p] = u8_to_unit(px[c]);
            }
        }
    }
    Tensor::from_vec(data, (1, 3, t, h, w), device)?.to_dtype(dtype)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bicubic_is_the_same_on_any_number_of_threads() -> Result<()> {
        let data = (0..301 * 203 * 3)
            .map(|i: usize| (i.wrapping_mul(2654435761) >> 7) as u8)
            .collect();
        let src = RgbFrame::new(301, 203, data)?;
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
    fn unit_video_matches_the_host_conversion() -> Result<()> {
        let frames: Vec<RgbFrame> = (0..3u8)
            .map(|t| {
                let data = (0..5 * 4 * 3)
                    .map(|i| (i as u8).wrapping_mul(37).wrapping_add(t * 91))
                    .collect();
                RgbFrame::new(5, 4, data)
            })
            .collect::<Result<_>>()?;
        let refs: Vec<&RgbFrame> = frames.iter().collect();
        let want = frames_to_tensor(&refs, &Device::Cpu, DType::F32)?;
        let held = frames
            .iter()
            .map(|f| frame_to_device(f, &Device::Cpu))
            .collect::<Result<Vec<_>>>()?;
        let got = unit_video(&held, DType::F32)?;
        assert_eq!(got.dims(), &[1, 3, 3, 4, 5]);
        let (got, want) = (
            got.flatten_all()?.to_vec1::<f32>()?,
            want.flatten_all()?.to_vec1::<f32>()?,
        );
        assert_eq!(got, want);
        Ok(())
    }

    #[test]
    fn frame_plans() -> Result<()> {
        let p = FramePlan::new(25, FrameRule::Upstream)?;
        assert_eq!(
            (p.lq_frames, p.decoded_frames, p.latent_frames, p.dit_steps),
            (25, 21, 6, 1)
        );
        let p = FramePlan::new(100, FrameRule::Upstream)?;
        assert_eq!(p.decoded_frames, 93);
        let p = FramePlan::new(81, FrameRule::Upstream)?;
        assert_eq!(p.decoded_frames, 77);
        assert!(FramePlan::new(20, FrameRule::Upstream).is_err());
        let p = FramePlan::new(46, FrameRule::Upstream)?;
        assert_eq!((p.lq_frames, p.source_frame(48)), (49, 45));
        for n in 1..200 {
            let p = FramePlan::new(n, FrameRule::EveryFrame)?;
            assert!(p.decoded_frames >= n && p.lq_frames % 8 == 1 && p.lq_frames >= 25);
            assert!(p.decoded_frames < n + 8 || p.lq_frames == 25);
            assert_eq!(p.output_frames, n);
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

    #[test]
    fn pad_and_crop() -> Result<()> {
        let f = RgbFrame::new(2, 1, vec![1, 2, 3, 4, 5, 6])?;
        let p = f.pad_edge(3, 2)?;
        assert_eq!(
            p.data,
            vec![1, 2, 3, 4, 5, 6, 4, 5, 6, 1, 2, 3, 4, 5, 6, 4, 5, 6]
        );
        assert_eq!(p.crop(0, 0, 2, 1)?, f);
        Ok(())
    }

    #[test]
    fn unit_mapping_ends() {
        assert_eq!(u8_to_unit(0), -1.0);
        assert_eq!(u8_to_unit(255), 1.0);
    }
}
