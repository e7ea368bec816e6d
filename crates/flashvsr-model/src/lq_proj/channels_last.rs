//! The LQ projection's causal convolutions on channels-last frames (`[T, h, w, C]`), as the
//! GPU runs them.
//!
//! The NCTHW path ([`crate::nn::conv3d::CausalConv3d`]) spent two thirds of its time on the H100
//! in permuted copies (temporal taps stacked then transposed, a channel-major padded grid, three
//! shifted copies of it) around GEMMs that ran at ~700 TFLOP/s. Channels-last, the four temporal
//! taps are stacked on the channel axis with plain concatenations, and the nine spatial taps
//! are GEMMs over shifted views of one replicate-padded buffer
//! ([`flashvsr_kernels::tap_conv::conv2d_nhwc_valid`]); the output is already token-major.
//!
//! Same numerics as the NCTHW path: f32 accumulation over every tap, bias added in f32, one
//! rounding to the activation dtype.

use candle_core::{DType, Result, Tensor, D};
use candle_nn::VarBuilder;

/// One causal Conv3d `(kT, 3, 3)` with temporal stride `stride_t`, replicate padding (2 frames
/// in front without a cache, 1 pixel around), on channels-last frames.
#[derive(Debug, Clone)]
pub(super) struct ChannelsLastConv {
    /// `[9, C_out, kT·C_in]`: per spatial tap, the temporal taps' weights side by side
    /// (K index `dt·C_in + i`, the stacking order of [`Self::forward`]).
    taps: Tensor,
    /// `[C_out]` f32.
    bias: Option<Tensor>,
    in_channels: usize,
    kt: usize,
    stride_t: usize,
    span: tracing::Span,
}

/// Frames padded in front when there is no cache (upstream `2 * padding_t`).
const TIME_FRONT: usize = 2;

impl ChannelsLastConv {
    /// Loads `weight` `[out, in, kT, 3, 3]` and (if present) `bias` `[out]` from `vb`.
    pub(super) fn new(
        vb: VarBuilder,
        in_channels: usize,
        out_channels: usize,
        kt: usize,
        stride_t: usize,
    ) -> Result<Self> {
        let weight = vb.get((out_channels, in_channels, kt, 3, 3), "weight")?;
        // [O, I, kT, kH, kW] -> [kH, kW, O, kT, I] -> [9, O, kT·I]
        let taps = weight.permute((3, 4, 0, 2, 1))?.contiguous()?.reshape((
            9,
            out_channels,
            kt * in_channels,
        ))?;
        let bias = if vb.contains_tensor("bias") {
            Some(vb.get(out_channels, "bias")?.to_dtype(DType::F32)?)
        } else {
            None
        };
        Ok(Self {
            taps,
            bias,
            in_channels,
            kt,
            stride_t,
            span: tracing::span!(tracing::Level::TRACE, "lq-conv-channels-last"),
        })
    }

    /// `x` `[T, h, w, C_in]`, `cache` the previous frames `[n, h, w, C_in]` (they replace that
    /// many front padding frames); returns `[T_out, h, w, C_out]` in `x`'s dtype.
    pub(super) fn forward(&self, x: &Tensor, cache: Option<&Tensor>) -> Result<Tensor> {
        let _enter = self.span.enter();
        let (_, h, w, c) = x.dims4()?;
        if c != self.in_channels {
            candle_core::bail!(
                "LQ projection conv: input has {c} channels, weight expects {}",
                self.in_channels
            )
        }
        let (frames, cached) = match cache {
            Some(cache) => (
                Tensor::cat(&[&cache.to_dtype(x.dtype())?, x], 0)?,
                cache.dim(0)?,
            ),
            None => (x.clone(), 0),
        };
        let frames = frames.pad_with_same(0, TIME_FRONT.saturating_sub(cached), 0)?;
        let frames = frames.pad_with_same(1, 1, 1)?.pad_with_same(2, 1, 1)?;
        let tp = frames.dim(0)?;
        if tp < self.kt {
            candle_core::bail!(
                "LQ projection conv: {tp} frames after padding, kernel needs {}",
                self.kt
            )
        }
        let t_out = (tp - self.kt) / self.stride_t + 1;
        // [T_out, h+2, w+2, kT·C_in]: output frame t's temporal taps side by side.
        let stacked = (0..t_out)
            .map(|t| {
                let taps = (0..self.kt)
                    .map(|dt| frames.narrow(0, t * self.stride_t + dt, 1))
                    .collect::<Result<Vec<_>>>()?;
                Tensor::cat(&taps, 3)
            })
            .collect::<Result<Vec<_>>>()?;
        let stacked = Tensor::cat(&stacked, 0)?;
        let y = flashvsr_kernels::tap_conv::conv2d_nhwc_valid(&stacked, &self.taps, 3, 3)?;
        debug_assert_eq!(y.dims()[1..3], [h, w]);
        match &self.bias {
            Some(b) => y.broadcast_add(b)?.to_dtype(x.dtype()),
            None => y.to_dtype(x.dtype())?.contiguous(),
        }
    }
}

/// "PixelShuffle3d(1,16,16)" onto channels-last frames: `[1, 3, T, H, W]` → `[T, H/16, W/16,
/// 768]` with channel index c·256 + dy·16 + dx (as [`super::pixel_unshuffle_16`]).
pub(super) fn pixel_unshuffle_16_channels_last(x: &Tensor) -> Result<Tensor> {
    let (b, c, t, h, w) = x.dims5()?;
    if b != 1 {
        candle_core::bail!("LQ projection: one clip at a time, got a batch of {b}")
    }
    let (hs, ws) = (h / 16, w / 16);
    x.reshape(vec![c, t, hs, 16, ws, 16])?
        .permute(vec![1, 2, 4, 0, 3, 5])?
        .contiguous()?
        .reshape((t, hs, ws, c * 256))
}

/// `[T, h, w, C]` → `[1, C, T, h, w]` (the probes' layout).
pub(super) fn to_ncthw(x: &Tensor) -> Result<Tensor> {
    x.permute((3, 0, 1, 2))?.contiguous()?.unsqueeze(0)
}

/// `[T, h, w, C]` → tokens `[1, T·h·w, C]` in (t, y, x) order.
pub(super) fn tokens(x: &Tensor) -> Result<Tensor> {
    let c = x.dim(D::Minus1)?;
    x.reshape((1, x.elem_count() / c, c))
}
