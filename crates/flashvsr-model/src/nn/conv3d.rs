//! Causal 3-D convolution built from Candle ops (Candle 0.11 has no conv3d).
//!
//! The input is padded in time *in front only* (causal), the `kT` temporal taps (the kernel's
//! positions in time) are gathered as strided frame selections and concatenated on the channel
//! axis, and a single [`Conv2d`] over `(B·T_out, kT·C, H, W)` with the weight permuted to
//! `(O, kT·C, kH, kW)` does the rest. No per-frame loop, so the whole clip is one conv call.
//!
//! # Temporal padding rules (upstream `CausalConv3d`)
//! Upstream pads `2·p_t` frames in front (p_t = the module's temporal padding, 1 for every
//! FlashVSR conv: 2 frames for both the LQ projection's k=4 convs and the VAE's k=3 convs) and
//! nothing behind. When a cache of previous frames is given it is concatenated in front of `x`
//! and *replaces* that many padding frames; if the cache is shorter than the pad (the Wan VAE's
//! 1-frame caches, spec Correction 2) the remaining frames are padded in front of
//! `[cache, x]` with the conv's pad mode:
//! * LQ projection: [`PadMode::Replicate`] in time *and* space (`time_front = 2`, `spatial = 1`);
//!   its caches always hold 2 frames, so with a cache there is no extra temporal padding.
//! * Wan VAE: [`PadMode::Zeros`] (`time_front = 2`, `spatial = 1` for k=3; `time_conv`
//!   kernel (3,1,1) has `spatial = 0`; 1×1×1 convs have `time_front = 0`, `spatial = 0`).
//!
//! # How the VAE engineer uses it
//! ```ignore
//! let conv = CausalConv3d::new(vb.pp("residual.2"), 384, 384, (3, 3, 3), 1, Padding::zeros(2, 1))?;
//! // feat_cache for this conv: the last (up to) 2 input frames of the previous call.
//! let y = conv.forward(&x, cache.as_ref())?;
//! let new_cache = CausalConv3d::next_cache(&x, cache.as_ref(), 2)?; // keep for the next call
//! ```
//! `next_cache` implements the upstream rule "last 2 input frames; if this call had 1 frame,
//! [previous cache's last frame, this frame]" (the first call with 1 frame keeps 1 frame).
//!
//! dtype: Candle's CPU conv2d does not support bf16 (convert to f32/f16 first on CPU).

#[cfg(test)]
use candle_core::IndexOp;
use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;

use super::conv2d::{conv_weights, Conv2d};

/// How missing border values are filled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PadMode {
    /// Zeros (Wan VAE).
    Zeros,
    /// Repeat the border value (`F.pad(mode="replicate")`, LQ projection).
    Replicate,
}

/// Padding of a causal conv: frames in front (time) and pixels on every spatial side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Padding {
    /// Frames padded in front when there is no cache (upstream: `2 * padding_t`).
    pub time_front: usize,
    /// Pixels padded on each side of H and W.
    pub spatial: usize,
    pub mode: PadMode,
}

impl Padding {
    pub fn zeros(time_front: usize, spatial: usize) -> Self {
        Self {
            time_front,
            spatial,
            mode: PadMode::Zeros,
        }
    }
    pub fn replicate(time_front: usize, spatial: usize) -> Self {
        Self {
            time_front,
            spatial,
            mode: PadMode::Replicate,
        }
    }
}

/// A causal 3-D convolution with spatial stride 1 and a temporal stride.
#[derive(Debug, Clone)]
pub struct CausalConv3d {
    /// The conv2d over stacked taps: weight `[O, kT·I, kH, kW]` (channel index = tap·I + i),
    /// bias `[O]`, the spatial zero padding (none for replicate padding, done beforehand).
    conv: Conv2d,
    in_channels: usize,
    out_channels: usize,
    kernel: (usize, usize, usize),
    stride_t: usize,
    pad: Padding,
    span: tracing::Span,
}

impl CausalConv3d {
    /// Loads `weight` `[out, in, kT, kH, kW]` and (if present) `bias` `[out]` from `vb`.
    pub fn new(
        vb: VarBuilder,
        in_channels: usize,
        out_channels: usize,
        kernel: (usize, usize, usize),
        stride_t: usize,
        pad: Padding,
    ) -> Result<Self> {
        let (kt, kh, kw) = kernel;
        let weight = vb.get((out_channels, in_channels, kt, kh, kw), "weight")?;
        let bias = if vb.contains_tensor("bias") {
            Some(vb.get(out_channels, "bias")?)
        } else {
            None
        };
        Self::from_weights(weight, bias, stride_t, pad)
    }

    /// Loads `<vb>.weight` `[O, I, kT, kH, kW]` (+ bias if present), temporal stride 1, with
    /// "same" zero padding: `kT − 1` frames in front, `kH / 2` pixels around (the Wan VAE's).
    pub fn load_zero_padded(vb: &VarBuilder) -> Result<Self> {
        let (weight, bias) = conv_weights(vb, 5)?;
        let (_, _, kt, kh, kw) = weight.dims5()?;
        if kh != kw || kh % 2 == 0 || kt % 2 == 0 {
            candle_core::bail!("{}.weight: unsupported kernel {kt}x{kh}x{kw}", vb.prefix())
        }
        Self::from_weights(weight, bias, 1, Padding::zeros(kt - 1, kh / 2))
    }

    /// Builds the conv from an explicit 5-D weight `[O, I, kT, kH, kW]` and optional bias `[O]`.
    pub fn from_weights(
        weight: Tensor,
        bias: Option<Tensor>,
        stride_t: usize,
        pad: Padding,
    ) -> Result<Self> {
        let (o, i, kt, kh, kw) = weight.dims5()?;
        if stride_t == 0 {
            candle_core::bail!("CausalConv3d: temporal stride must be >= 1");
        }
        let weight2d =
            weight
                .permute((0, 2, 1, 3, 4))?
                .contiguous()?
                .reshape((o, kt * i, kh, kw))?;
        let bias = match bias {
            Some(b) => {
                if b.elem_count() != o {
                    candle_core::bail!(
                        "CausalConv3d: bias has {} elements, expected {o}",
                        b.elem_count()
                    );
                }
                Some(b.reshape(o)?)
            }
            None => None,
        };
        // Zeros go into the conv2d itself; replicate padding is done explicitly in `forward`.
        let conv_pad = match pad.mode {
            PadMode::Zeros => pad.spatial,
            PadMode::Replicate => 0,
        };
        Ok(Self {
            conv: Conv2d::new(weight2d, bias, conv_pad)?,
            in_channels: i,
            out_channels: o,
            kernel: (kt, kh, kw),
            stride_t,
            pad,
            span: tracing::span!(tracing::Level::TRACE, "causal-conv3d"),
        })
    }

    pub fn out_channels(&self) -> usize {
        self.out_channels
    }

    /// Number of output frames for `t_in` input frames plus `cached` cache frames.
    pub fn output_frames(&self, t_in: usize, cached: usize) -> usize {
        let padded = t_in + cached.max(self.pad.time_front);
        if padded < self.kernel.0 {
            0
        } else {
            (padded - self.kernel.0) / self.stride_t + 1
        }
    }

    /// `x`: `[B, C, T, H, W]`; `cache`: `[B, C, n, H, W]`, the frames that precede `x`
    /// (replacing up to `time_front` padding frames). Returns `[B, O, T_out, H', W']`.
    pub fn forward(&self, x: &Tensor, cache: Option<&Tensor>) -> Result<Tensor> {
        let _enter = self.span.enter();
        let (b, c, _t, _h, _w) = x.dims5()?;
        if c != self.in_channels {
            candle_core::bail!(
                "CausalConv3d: input has {c} channels, weight expects {}",
                self.in_channels
            );
        }
        let (kt, _kh, _kw) = self.kernel;
        // Temporal: [cache, x], then the remaining front pad in the conv's mode.
        let (x, cached) = match cache {
            Some(cache) if self.pad.time_front > 0 => {
                let n = cache.dim(2)?;
                (Tensor::cat(&[&cache.to_dtype(x.dtype())?, x], 2)?, n)
            }
            _ => (x.clone(), 0),
        };
        let remaining = self.pad.time_front.saturating_sub(cached);
        let x = pad_dim(&x, 2, remaining, 0, self.pad.mode)?;
        // Spatial: zeros go into the conv2d itself; replicate is done explicitly.
        let x = match self.pad.mode {
            PadMode::Zeros => x,
            PadMode::Replicate => {
                let s = self.pad.spatial;
                let x = pad_dim(&x, 3, s, s, PadMode::Replicate)?;
                pad_dim(&x, 4, s, s, PadMode::Replicate)?
            }
        };
        let (_, _, tp, hp, wp) = x.dims5()?;
        if tp < kt {
            candle_core::bail!("CausalConv3d: {tp} frames after padding, kernel needs {kt}");
        }
        let t_out = (tp - kt) / self.stride_t + 1;
        // Gather the kT taps: tap k uses frames k, k+s, ..., k+(T_out-1)s.
        let taps = (0..kt)
            .map(|k| strided_frames(&x, k, self.stride_t, t_out))
            .collect::<Result<Vec<_>>>()?;
        let stacked = Tensor::cat(&taps, 1)?; // [B, kT·C, T_out, Hp, Wp]
        let frames =
            stacked
                .permute((0, 2, 1, 3, 4))?
                .contiguous()?
                .reshape((b * t_out, kt * c, hp, wp))?;
        let y = self.conv.forward(&frames)?;
        let (_, o, ho, wo) = y.dims4()?;
        y.reshape((b, t_out, o, ho, wo))?
            .permute((0, 2, 1, 3, 4))?
            .contiguous()
    }

    /// The cache to pass with the next call: the last `n` frames of `[cache, x]`
    /// (fewer when fewer frames have been seen so far).
    pub fn next_cache(x: &Tensor, cache: Option<&Tensor>, n: usize) -> Result<Tensor> {
        let t = x.dim(2)?;
        if t >= n {
            return x.narrow(2, t - n, n);
        }
        match cache {
            Some(cache) => {
                let all = Tensor::cat(&[&cache.to_dtype(x.dtype())?, x], 2)?;
                let ta = all.dim(2)?;
                let keep = n.min(ta);
                all.narrow(2, ta - keep, keep)
            }
            None => Ok(x.clone()),
        }
    }
}

/// Frames `start, start+step, …` (`count` of them) along dim 2.
fn strided_frames(x: &Tensor, start: usize, step: usize, count: usize) -> Result<Tensor> {
    if step == 1 {
        return x.narrow(2, start, count);
    }
    let idx: Vec<u32> = (0..count).map(|j| (start + j * step) as u32).collect();
    let idx = Tensor::new(idx.as_slice(), x.device())?;
    x.index_select(&idx, 2)
}

/// Pads `left`/`right` entries on `dim` with zeros or copies of the border slice.
fn pad_dim(x: &Tensor, dim: usize, left: usize, right: usize, mode: PadMode) -> Result<Tensor> {
    if left == 0 && right == 0 {
        return Ok(x.clone());
    }
    match mode {
        PadMode::Zeros => x.pad_with_zeros(dim, left, right),
        PadMode::Replicate => x.pad_with_same(dim, left, right),
    }
}

/// Reference implementation used by the unit test: explicit loops over output frames and taps.
#[cfg(test)]
fn reference_loop(
    weight: &Tensor,
    bias: Option<&Tensor>,
    x: &Tensor,
    cache: Option<&Tensor>,
    stride_t: usize,
    pad: Padding,
) -> Result<Tensor> {
    let (o, _i, kt, _kh, _kw) = weight.dims5()?;
    let mut full = match cache {
        Some(c) => Tensor::cat(&[c, x], 2)?,
        None => x.clone(),
    };
    let cached = cache.map(|c| c.dim(2)).transpose()?.unwrap_or(0);
    let remaining = pad.time_front.saturating_sub(cached);
    for _ in 0..remaining {
        let front = match pad.mode {
            PadMode::Zeros => full.i((.., .., 0..1))?.zeros_like()?,
            PadMode::Replicate => full.i((.., .., 0..1))?,
        };
        full = Tensor::cat(&[&front, &full], 2)?;
    }
    let tp = full.dim(2)?;
    let t_out = (tp - kt) / stride_t + 1;
    let mut outs = Vec::new();
    for to in 0..t_out {
        let mut acc: Option<Tensor> = None;
        for k in 0..kt {
            let frame = full.i((.., .., to * stride_t + k))?; // [B, C, H, W]
            let frame = match pad.mode {
                PadMode::Zeros => frame
                    .pad_with_zeros(2, pad.spatial, pad.spatial)?
                    .pad_with_zeros(3, pad.spatial, pad.spatial)?,
                PadMode::Replicate => frame
                    .pad_with_same(2, pad.spatial, pad.spatial)?
                    .pad_with_same(3, pad.spatial, pad.spatial)?,
            };
            let w = weight.i((.., .., k))?.contiguous()?;
            let y = frame.conv2d(&w, 0, 1, 1, 1)?;
            acc = Some(match acc {
                Some(a) => (a + y)?,
                None => y,
            });
        }
        let mut y = acc.expect("kernel has at least one tap");
        if let Some(b) = bias {
            y = y.broadcast_add(&b.reshape((1, o, 1, 1))?)?;
        }
        outs.push(y.unsqueeze(2)?);
    }
    Tensor::cat(&outs, 2)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    }

    #[test]
    fn conv3d_matches_direct_loop() -> Result<()> {
        let dev = Device::Cpu;
        let cases = [
            // (kernel, stride, pad, cache frames)
            ((4, 3, 3), 2, Padding::replicate(2, 1), 0usize),
            ((4, 3, 3), 2, Padding::replicate(2, 1), 2),
            ((3, 3, 3), 1, Padding::zeros(2, 1), 0),
            ((3, 3, 3), 1, Padding::zeros(2, 1), 1),
            ((3, 3, 3), 1, Padding::zeros(2, 1), 2),
            ((3, 1, 1), 1, Padding::zeros(2, 0), 1),
            ((1, 1, 1), 1, Padding::zeros(0, 0), 0),
        ];
        for (n, (kernel, stride, pad, cached)) in cases.into_iter().enumerate() {
            let (kt, kh, kw) = kernel;
            let (ci, co) = (3, 5);
            let w = Tensor::randn(0f32, 1.0, (co, ci, kt, kh, kw), &dev)?;
            let b = Tensor::randn(0f32, 1.0, co, &dev)?;
            let x = Tensor::randn(0f32, 1.0, (2, ci, 4, 6, 7), &dev)?;
            let cache = if cached > 0 {
                Some(Tensor::randn(0f32, 1.0, (2, ci, cached, 6, 7), &dev)?)
            } else {
                None
            };
            let conv = CausalConv3d::from_weights(w.clone(), Some(b.clone()), stride, pad)?;
            let got = conv.forward(&x, cache.as_ref())?;
            let want = reference_loop(&w, Some(&b), &x, cache.as_ref(), stride, pad)?;
            assert_eq!(got.dims(), want.dims(), "case {n}");
            let d = max_abs_diff(&got, &want);
            assert!(d < 1e-4, "case {n}: max abs diff {d}");
            assert_eq!(got.dim(2)?, conv.output_frames(4, cached), "case {n}");
        }
        Ok(())
    }

    #[test]
    fn next_cache_keeps_last_frames() -> Result<()> {
        let dev = Device::Cpu;
        let frame = |v: f32| Tensor::full(v, (1, 1, 1, 1, 1), &dev);
        let one = frame(1.0)?;
        let c = CausalConv3d::next_cache(&one, None, 2)?;
        assert_eq!(c.dim(2)?, 1);
        let two = frame(2.0)?;
        let c = CausalConv3d::next_cache(&two, Some(&c), 2)?;
        assert_eq!(c.flatten_all()?.to_vec1::<f32>()?, vec![1.0, 2.0]);
        let three = Tensor::cat(&[frame(3.0)?, frame(4.0)?, frame(5.0)?], 2)?;
        let c = CausalConv3d::next_cache(&three, Some(&c), 2)?;
        assert_eq!(c.flatten_all()?.to_vec1::<f32>()?, vec![4.0, 5.0]);
        Ok(())
    }
}
