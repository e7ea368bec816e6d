//! LQ projection (`LQ_proj_in`, spec §4): bicubic LQ video → one token per DiT token, added
//! to the patch tokens before DiT block 0.
//!
//! pixel-unshuffle 16 → CausalConv3d (4,3,3)/(2,1,1), replicate → RMS_norm → SiLU →
//! CausalConv3d → RMS_norm → SiLU → tokens (f,h,w) → Linear. Streaming: the first call gets
//! one frame (repeated to 4) and only fills the caches; every later call turns 4 LQ frames
//! into one feature frame.
//!
//! Two variants that differ only in *when* each conv's 2-frame cache is taken:
//! * [`LqProjVariant::Causal`] (v1.1, `Causal_LQ4x_Proj`): the cache is the previous call's
//!   last 2 input frames (truly causal).
//! * [`LqProjVariant::Buffer`] (v1, `Buffer_LQ4x_Proj`, spec Correction 3): the cache is
//!   overwritten with the *current* call's last 2 input frames before the conv, so conv1 sees
//!   the clip's frames in the order 2,3,0,1,2,3.

mod channels_last;

use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;

use channels_last::ChannelsLastConv;

use crate::config::LqProjConfig;
use crate::nn::conv3d::{CausalConv3d, Padding};
use crate::nn::linear::{linear, Linear};
use crate::nn::norm::ChannelRmsNorm;

/// Frames kept per conv cache (upstream `CACHE_T`).
const CACHE_T: usize = 2;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LqProjVariant {
    /// v1.1 `Causal_LQ4x_Proj`.
    Causal,
    /// v1 `Buffer_LQ4x_Proj`.
    Buffer,
}

/// Per-video streaming state: the conv caches and the number of calls so far.
#[derive(Debug, Clone, Default)]
pub struct LqProjState {
    conv1_cache: Option<Tensor>,
    conv2_cache: Option<Tensor>,
    calls: usize,
}

impl LqProjState {
    pub fn new() -> Self {
        Self::default()
    }
}

/// Probes: the intermediate outputs of one `stream` call (for tests).
#[derive(Debug, Clone, Default)]
pub struct LqProjProbes {
    /// SiLU(norm1(conv1)) `[1, H1, 2, h, w]`.
    pub act1: Option<Tensor>,
    /// SiLU(norm2(conv2)) `[1, H2, 1, h, w]` (not on the first call).
    pub act2: Option<Tensor>,
}

/// Which layout the two convolutions run in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LqConvLayout {
    /// `[1, C, T, H, W]` through [`CausalConv3d`]: the reference (CPU default).
    Ncthw,
    /// Channels-last frames `[T, h, w, C]` (CUDA default; `FLASHVSR_LQ_CONV=ncthw` selects
    /// the reference there, for side-by-side timings).
    ChannelsLast,
}

impl LqConvLayout {
    /// The layout for weights on `device`.
    pub fn for_device(device: &candle_core::Device) -> Self {
        if device.is_cuda() && std::env::var("FLASHVSR_LQ_CONV").map_or(true, |v| v != "ncthw") {
            Self::ChannelsLast
        } else {
            Self::Ncthw
        }
    }
}

/// The two convolutions in their layout, and what else depends on the layout: where time is
/// (the caches' frames), the norm's channel axis, the probes' and the tokens' reshapes.
#[derive(Debug, Clone)]
enum Convs {
    /// `[1, C, T, h, w]`.
    Ncthw(CausalConv3d, CausalConv3d),
    /// `[T, h, w, C]`; the probes are converted to `[1, C, T, h, w]`.
    ChannelsLast(ChannelsLastConv, ChannelsLastConv),
}

impl Convs {
    fn time_dim(&self) -> usize {
        match self {
            Convs::Ncthw(..) => 2,
            Convs::ChannelsLast(..) => 0,
        }
    }

    /// The pixel-unshuffled clip in this layout.
    fn unshuffle(&self, clip: &Tensor) -> Result<Tensor> {
        match self {
            Convs::Ncthw(..) => pixel_unshuffle_16(clip),
            Convs::ChannelsLast(..) => channels_last::pixel_unshuffle_16_channels_last(clip),
        }
    }

    /// Conv 1 or 2 of `x` with `cache` in front.
    fn forward(&self, second: bool, x: &Tensor, cache: Option<&Tensor>) -> Result<Tensor> {
        match (self, second) {
            (Convs::Ncthw(c, _), false) | (Convs::Ncthw(_, c), true) => c.forward(x, cache),
            (Convs::ChannelsLast(c, _), false) | (Convs::ChannelsLast(_, c), true) => {
                c.forward(x, cache)
            }
        }
    }

    fn norm(&self, norm: &ChannelRmsNorm, x: &Tensor) -> Result<Tensor> {
        match self {
            Convs::Ncthw(..) => norm.forward(x),
            Convs::ChannelsLast(..) => norm.forward_channels_last(x),
        }
    }

    /// An activation as the probes report it, `[1, C, T, h, w]`.
    fn probe(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            Convs::Ncthw(..) => Ok(x.clone()),
            Convs::ChannelsLast(..) => channels_last::to_ncthw(x),
        }
    }

    /// The last activation as tokens `[1, f·h·w, C]` in (f, h, w) order.
    fn tokens(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            Convs::Ncthw(..) => x.flatten_from(2)?.transpose(1, 2)?.contiguous(),
            Convs::ChannelsLast(..) => channels_last::tokens(x),
        }
    }
}

/// The LQ projection with its weights.
#[derive(Debug, Clone)]
pub struct LqProj {
    convs: Convs,
    norm1: ChannelRmsNorm,
    norm2: ChannelRmsNorm,
    linear: Linear,
    variant: LqProjVariant,
    span: tracing::Span,
}

impl LqProj {
    /// `vb` points at the LQ projection's tensors (`conv1.weight`, …, `linear_layers.0.bias`).
    /// The conv layout follows the weights' device ([`LqConvLayout::for_device`]).
    pub fn new(vb: VarBuilder, config: &LqProjConfig, variant: LqProjVariant) -> Result<Self> {
        let layout = LqConvLayout::for_device(vb.device());
        Self::with_layout(vb, config, variant, layout)
    }

    pub fn with_layout(
        vb: VarBuilder,
        config: &LqProjConfig,
        variant: LqProjVariant,
        layout: LqConvLayout,
    ) -> Result<Self> {
        let c = config;
        let convs = match layout {
            LqConvLayout::Ncthw => {
                let pad = Padding::replicate(2, 1);
                Convs::Ncthw(
                    CausalConv3d::new(vb.pp("conv1"), c.in_channels, c.hidden1, (4, 3, 3), 2, pad)?,
                    CausalConv3d::new(vb.pp("conv2"), c.hidden1, c.hidden2, (4, 3, 3), 2, pad)?,
                )
            }
            LqConvLayout::ChannelsLast => Convs::ChannelsLast(
                ChannelsLastConv::new(vb.pp("conv1"), c.in_channels, c.hidden1, 4, 2)?,
                ChannelsLastConv::new(vb.pp("conv2"), c.hidden1, c.hidden2, 4, 2)?,
            ),
        };
        let norm1 = channel_norm(&vb.pp("norm1"), c.hidden1)?;
        let norm2 = channel_norm(&vb.pp("norm2"), c.hidden2)?;
        let linear = linear(c.hidden2, c.dim, vb.pp("linear_layers").pp(0))?;
        Ok(Self {
            convs,
            norm1,
            norm2,
            linear,
            variant,
            span: tracing::span!(tracing::Level::TRACE, "lq-proj"),
        })
    }

    /// One streaming call. `clip`: `[1, 3, T, H, W]` in [-1, 1] (T = 1 on the first call,
    /// 4 afterwards; H, W multiples of 16). Returns `None` on the first call, else tokens
    /// `[1, f·h·w, dim]` (f = T/4 feature frames, h = H/16, w = W/16).
    pub fn stream(&self, clip: &Tensor, state: &mut LqProjState) -> Result<Option<Tensor>> {
        self.stream_with_probes(clip, state, None)
    }

    pub fn stream_with_probes(
        &self,
        clip: &Tensor,
        state: &mut LqProjState,
        mut probes: Option<&mut LqProjProbes>,
    ) -> Result<Option<Tensor>> {
        let _enter = self.span.enter();
        let (_b, c, _t, h, w) = clip.dims5()?;
        if c != 3 || h % 16 != 0 || w % 16 != 0 {
            candle_core::bail!(
                "LQ projection: clip must be [B,3,T,H,W] with H, W multiples of 16, got {:?}",
                clip.dims()
            );
        }
        let first = state.calls == 0;
        let clip = if first {
            // First call: the frame is repeated so the clip is 4 frames long.
            let f0 = clip.narrow(2, 0, 1)?;
            Tensor::cat(&[&f0, &f0, &f0, clip], 2)?
        } else {
            clip.clone()
        };
        let convs = &self.convs;
        let x = convs.unshuffle(&clip)?;

        let (x1, c1) = self.conv_with_cache(false, &x, state.conv1_cache.take())?;
        state.conv1_cache = Some(c1);
        let a1 = candle_nn::ops::silu(&convs.norm(&self.norm1, &x1)?)?;
        if let Some(probes) = probes.as_deref_mut() {
            probes.act1 = Some(convs.probe(&a1)?);
        }
        state.calls += 1;
        if first {
            state.conv2_cache = Some(last_frames(&a1, convs.time_dim(), CACHE_T)?);
            return Ok(None);
        }
        let (x2, c2) = self.conv_with_cache(true, &a1, state.conv2_cache.take())?;
        state.conv2_cache = Some(c2);
        let a2 = candle_nn::ops::silu(&convs.norm(&self.norm2, &x2)?)?;
        if let Some(probes) = probes {
            probes.act2 = Some(convs.probe(&a2)?);
        }
        Ok(Some(self.linear.forward(&convs.tokens(&a2)?)?))
    }

    /// Runs conv 1 or 2 with the variant's cache rule; returns (output, cache for next call).
    fn conv_with_cache(
        &self,
        second: bool,
        x: &Tensor,
        cache: Option<Tensor>,
    ) -> Result<(Tensor, Tensor)> {
        let own_last = last_frames(x, self.convs.time_dim(), CACHE_T)?;
        let y = match self.variant {
            LqProjVariant::Causal => self.convs.forward(second, x, cache.as_ref())?,
            LqProjVariant::Buffer => self.convs.forward(second, x, Some(&own_last))?,
        };
        Ok((y, own_last))
    }
}

/// A channel RMS norm of `channels` channels.
fn channel_norm(vb: &VarBuilder, channels: usize) -> Result<ChannelRmsNorm> {
    let norm = ChannelRmsNorm::new(vb)?;
    if norm.channels() != channels {
        candle_core::bail!(
            "{}.gamma: {} channels, expected {channels}",
            vb.prefix(),
            norm.channels()
        );
    }
    Ok(norm)
}

/// The last `n` frames of `x` along its time axis `dim`, contiguous (the conv caches).
fn last_frames(x: &Tensor, dim: usize, n: usize) -> Result<Tensor> {
    let t = x.dim(dim)?;
    let n = n.min(t);
    x.narrow(dim, t - n, n)?.contiguous()
}

/// "PixelShuffle3d(1,16,16)": `[B, 3, T, H, W]` → `[B, 3·256, T, H/16, W/16]` with channel
/// index c·256 + dy·16 + dx.
pub fn pixel_unshuffle_16(x: &Tensor) -> Result<Tensor> {
    let (b, c, t, h, w) = x.dims5()?;
    let (hs, ws) = (h / 16, w / 16);
    x.reshape(vec![b, c, t, hs, 16, ws, 16])?
        .permute(vec![0, 1, 4, 6, 2, 3, 5])?
        .contiguous()?
        .reshape((b, c * 256, t, hs, ws))
}
