//! TCDecoder: the tiny conditional decoder of the tiny / tiny-long modes (spec §6.2), a pruned
//! and widened TAEHV decoder conditioned on the bicubic LQ frames.
//!
//! Every layer is 2-D and runs on all frames of a call at once; the only temporal coupling is
//! the MemBlocks' memory (each block sees its own input of the previous time step, zeros at
//! the start of a video), which lives in [`TcState`] and persists across calls. Running the
//! video in one call or in chunks therefore gives the same frames.
//!
//! # Which LQ frames go with which call
//! Latent k decodes to video frames `4k-3 ..= 4k` (latent 0 to frame 0 only), and it is
//! conditioned on exactly those LQ frames. So a call with latents `[k0, k0+T)` takes the LQ
//! frames `[max(4·k0-3, 0), 4·(k0+T)-3)`:
//! * first call (k0 = 0): `4T-3` LQ frames, e.g. DiT step 0 (6 latents) → LQ `[0, 21)`;
//!   the front is padded with 3 copies of LQ frame 0 and the first 3 output frames are dropped.
//! * later calls: `4T` LQ frames, e.g. DiT step s ≥ 1 (latents `[4+2s, 6+2s)`) →
//!   LQ `[8s+13, 8s+21)`.
//!
//! Each call returns as many frames as LQ frames it was given: `4T-3`, then `4T`.

mod nhwc;

use crate::nn::conv2d::Conv2d;
use candle_core::{DType, Module, Result, Tensor};
use candle_nn::VarBuilder;

/// Layer kinds at each `decoder.<i>` index of the upstream `nn.Sequential`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Clamp,
    Conv,
    Relu,
    Mem,
    Upsample,
    TGrow,
}

/// The upstream layer sequence (spec §6.2 table); channel counts come from the weights.
const LAYOUT: [Kind; 27] = {
    use Kind::*;
    [
        Clamp, Conv, Relu, Conv, Relu, Mem, Mem, Mem, Upsample, TGrow, Conv, Mem, Mem, Mem,
        Upsample, TGrow, Conv, Mem, Mem, Mem, Upsample, TGrow, Conv, Relu, Conv, Relu, Conv,
    ]
};

/// LQ channels after the (4, 8, 8) space-time-to-depth: 3 · 4 · 8 · 8.
pub const COND_CHANNELS: usize = 768;
/// LQ frames folded into one latent step.
pub const FRAMES_PER_LATENT: usize = 4;
/// Spatial factor between latents and pixels.
pub const SPATIAL_FACTOR: usize = 8;

/// `relu(conv(cat[x, past]) → relu → conv → relu → conv + skip(x))`, past = the block's input
/// one time step earlier.
#[derive(Debug, Clone)]
struct MemBlock {
    convs: [Conv2d; 3],
    skip: Option<Conv2d>,
    span: tracing::Span,
}

impl MemBlock {
    fn new(vb: VarBuilder) -> Result<Self> {
        let convs = [
            Conv2d::load(&vb.pp("conv.0"))?,
            Conv2d::load(&vb.pp("conv.2"))?,
            Conv2d::load(&vb.pp("conv.4"))?,
        ];
        let skip = if vb.contains_tensor("skip.weight") {
            Some(Conv2d::load(&vb.pp("skip"))?)
        } else {
            None
        };
        let c_in = convs[0].in_channels() / 2;
        if skip.is_none() && c_in != convs[2].out_channels() {
            candle_core::bail!(
                "{}: {c_in} input channels but {} outputs and no skip conv",
                vb.prefix(),
                convs[2].out_channels()
            )
        }
        Ok(Self {
            convs,
            skip,
            span: tracing::span!(tracing::Level::TRACE, "tc-memblock"),
        })
    }

    /// `x`: `[T, C, h, w]`, `mem`: the input of the previous step `[1, C, h, w]` (None at the
    /// start). Returns the output and the new memory.
    fn forward(&self, x: &Tensor, mem: Option<&Tensor>) -> Result<(Tensor, Tensor)> {
        let _enter = self.span.enter();
        let t = x.dim(0)?;
        let first = match mem {
            Some(m) => m.clone(),
            None => x.narrow(0, 0, 1)?.zeros_like()?,
        };
        let past = if t > 1 {
            Tensor::cat(&[&first, &x.narrow(0, 0, t - 1)?], 0)?
        } else {
            first
        };
        let h = Tensor::cat(&[x, &past], 1)?;
        let h = self.convs[0].forward(&h)?.relu()?;
        let h = self.convs[1].forward(&h)?.relu()?;
        let h = self.convs[2].forward(&h)?;
        let skip = match &self.skip {
            Some(s) => s.forward(x)?,
            None => x.clone(),
        };
        Ok(((h + skip)?.relu()?, x.narrow(0, t - 1, 1)?))
    }
}

/// 1×1 conv to `stride·C` channels; channel block s becomes time step `stride·t + s`.
#[derive(Debug, Clone)]
struct TGrow {
    conv: Conv2d,
    stride: usize,
}

impl TGrow {
    fn new(vb: VarBuilder) -> Result<Self> {
        let conv = Conv2d::load(&vb.pp("conv"))?;
        let (c_out, c_in) = (conv.out_channels(), conv.in_channels());
        if c_in == 0 || c_out % c_in != 0 {
            candle_core::bail!(
                "{}.conv.weight: {c_out} outputs is not a multiple of {c_in}",
                vb.prefix()
            )
        }
        Ok(Self {
            conv,
            stride: c_out / c_in,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (t, c, h, w) = x.dims4()?;
        self.conv.forward(x)?.reshape((t * self.stride, c, h, w))
    }
}

#[derive(Debug, Clone)]
// 27 layers per model: variant size does not matter.
#[allow(clippy::large_enum_variant)]
enum Layer {
    Clamp,
    Conv(Conv2d),
    Relu,
    Mem(MemBlock),
    Upsample,
    TGrow(TGrow),
}

/// Dimensions read from the weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcConfig {
    /// Widths of the four stages (upstream `[512, 256, 128, 128]`).
    pub channels: [usize; 4],
    /// Latent channels of the DiT output (16).
    pub latent_channels: usize,
    /// Output frames per latent (product of the TGrow strides, 4).
    pub frames_per_latent: usize,
}

/// Streaming state of one video: the MemBlocks' memories and whether the first call happened.
#[derive(Debug, Clone, Default)]
pub struct TcState {
    mem: Vec<Option<Tensor>>,
    started: bool,
    /// Run the stateless full-resolution tail in horizontal stripes of this many rows (of its
    /// input resolution) to bound its activations; `None`: the whole frame at once.
    tail_stripe_rows: Option<usize>,
}

impl TcState {
    pub fn new() -> Self {
        Self::default()
    }

    /// A state whose calls run the decoder's tail in stripes (the same values: see
    /// [`TcDecoder::decode`]).
    pub fn with_tail_stripes(mut self, rows: Option<usize>) -> Self {
        self.tail_stripe_rows = rows.filter(|&r| r > 0);
        self
    }

    /// Whether the next call is the first of a video (gets `4T-3` LQ frames).
    pub fn is_first_call(&self) -> bool {
        !self.started
    }
}

/// The tiny conditional decoder.
#[derive(Debug, Clone)]
pub struct TcDecoder {
    layers: Vec<Layer>,
    /// The channels-last program of the same layers (CUDA, f16/bf16; `FLASHVSR_TC_CONV=tap`
    /// keeps the NCHW tap-GEMM path, for comparisons).
    nhwc: Option<nhwc::NhwcPlan>,
    config: TcConfig,
    /// The dtype it computes in (the weights', `Precision::tiny_decoder` in the pipeline).
    dtype: candle_core::DType,
    span: tracing::Span,
}

impl TcDecoder {
    /// Loads `decoder.<i>.*` from `vb` (the root of `TCDecoder.ckpt`).
    pub fn new(vb: VarBuilder) -> Result<Self> {
        let vb = vb.pp("decoder");
        let mut layers = Vec::with_capacity(LAYOUT.len());
        let mut stage_widths = Vec::new();
        let mut frames_per_latent = 1;
        for (i, kind) in LAYOUT.iter().enumerate() {
            let vb = vb.pp(i);
            layers.push(match kind {
                Kind::Clamp => Layer::Clamp,
                Kind::Relu => Layer::Relu,
                Kind::Upsample => Layer::Upsample,
                Kind::Conv => {
                    let conv = Conv2d::load(&vb)?;
                    // Stage widths: the convs that open each stage (1, 10, 16, 22).
                    if matches!(i, 1 | 10 | 16 | 22) {
                        stage_widths.push(conv.out_channels());
                    }
                    Layer::Conv(conv)
                }
                Kind::Mem => Layer::Mem(MemBlock::new(vb)?),
                Kind::TGrow => {
                    let g = TGrow::new(vb)?;
                    frames_per_latent *= g.stride;
                    Layer::TGrow(g)
                }
            });
        }
        let first_in = match &layers[1] {
            Layer::Conv(c) => c.in_channels(),
            _ => 0,
        };
        if first_in <= COND_CHANNELS {
            candle_core::bail!(
                "decoder.1.weight has {first_in} input channels; expected {COND_CHANNELS} LQ + latent channels"
            )
        }
        if frames_per_latent != FRAMES_PER_LATENT {
            candle_core::bail!(
                "TCDecoder TGrow strides give {frames_per_latent} frames per latent, expected {FRAMES_PER_LATENT}"
            )
        }
        let config = TcConfig {
            channels: [
                stage_widths[0],
                stage_widths[1],
                stage_widths[2],
                stage_widths[3],
            ],
            latent_channels: first_in - COND_CHANNELS,
            frames_per_latent,
        };
        let use_nhwc = vb.device().is_cuda()
            && matches!(vb.dtype(), DType::F16 | DType::BF16)
            && std::env::var("FLASHVSR_TC_CONV").map_or(true, |v| v != "tap");
        let nhwc = if use_nhwc {
            nhwc::NhwcPlan::new(&layers, vb.dtype())?
        } else {
            None
        };
        Ok(Self {
            layers,
            nhwc,
            config,
            dtype: vb.dtype(),
            span: tracing::span!(tracing::Level::TRACE, "tc-decoder"),
        })
    }

    pub fn config(&self) -> &TcConfig {
        &self.config
    }

    /// Output frames dropped at the start of a video (3).
    pub fn frames_to_trim(&self) -> usize {
        self.config.frames_per_latent - 1
    }

    /// LQ frames a call with `latents` latent frames needs (`4T-3` first, then `4T`).
    pub fn lq_frames_for(&self, latents: usize, state: &TcState) -> usize {
        let n = latents * self.config.frames_per_latent;
        if state.is_first_call() {
            n.saturating_sub(self.frames_to_trim())
        } else {
            n
        }
    }

    /// [`TcDecoder::decode`] at most `latents_per_call` latent frames at a time, consuming the
    /// matching LQ frames call by call: the same frames (the MemBlock memory carries over, as
    /// between DiT steps), with activations bounded by `4 · latents_per_call` output frames
    /// instead of the whole call (DiT step 0 decodes 21 frames at once).
    pub fn decode_chunked(
        &self,
        latents: &Tensor,
        lq: &Tensor,
        state: &mut TcState,
        latents_per_call: usize,
    ) -> Result<Tensor> {
        let t = latents.dim(2)?;
        let mut outputs = Vec::new();
        let (mut k, mut f) = (0, 0);
        while k < t {
            let n = latents_per_call.max(1).min(t - k);
            let frames = self.lq_frames_for(n, state);
            if f + frames > lq.dim(2)? {
                candle_core::bail!(
                    "TCDecoder: {t} latent frames need more than the {} LQ frames given",
                    lq.dim(2)?
                )
            }
            outputs.push(self.decode(
                &latents.narrow(2, k, n)?,
                &lq.narrow(2, f, frames)?,
                state,
            )?);
            k += n;
            f += frames;
        }
        if f != lq.dim(2)? {
            candle_core::bail!(
                "TCDecoder: {t} latent frames need {f} LQ frames, got {}",
                lq.dim(2)?
            )
        }
        Tensor::cat(&outputs, 2)
    }

    /// The (4, 8, 8) space-time-to-depth of the LQ frames `[1, 3, T_lq, H, W]`, front-padded
    /// with copies of its first frame to a multiple of 4: `[T_lq/4, 768, H/8, W/8]`
    /// (`[T_lq/4, H/8, W/8, 768]` if `channels_last`), channel = c·256 + ft·64 + dy·8 + dx.
    fn lq_condition(&self, lq: &Tensor, channels_last: bool) -> Result<Tensor> {
        let (b, c, t, h, w) = lq.dims5()?;
        if b != 1 || c != 3 {
            candle_core::bail!(
                "TCDecoder: LQ video must be [1, 3, T, H, W], got {:?}",
                lq.dims()
            )
        }
        if h % SPATIAL_FACTOR != 0 || w % SPATIAL_FACTOR != 0 {
            candle_core::bail!(
                "TCDecoder: LQ frame size {w}x{h} is not a multiple of {SPATIAL_FACTOR}"
            )
        }
        let g = FRAMES_PER_LATENT;
        let pad = (g - t % g) % g;
        let lq = if pad > 0 {
            let first = lq.narrow(2, 0, 1)?;
            let copies = vec![&first; pad];
            Tensor::cat(&[Tensor::cat(&copies, 2)?, lq.clone()], 2)?
        } else {
            lq.clone()
        };
        let n = (t + pad) / g;
        let (s, hh, ww) = (SPATIAL_FACTOR, h / SPATIAL_FACTOR, w / SPATIAL_FACTOR);
        let lq = lq.reshape(vec![c, n, g, hh, s, ww, s])?;
        if channels_last {
            // [c, n, ft, hh, dy, ww, dx] → [n, hh, ww, c, ft, dy, dx]
            lq.permute(vec![1, 3, 5, 0, 2, 4, 6])?
                .contiguous()?
                .reshape((n, hh, ww, c * g * s * s))
        } else {
            // [c, n, ft, hh, dy, ww, dx] → [n, c, ft, dy, dx, hh, ww]
            lq.permute(vec![1, 0, 2, 4, 6, 3, 5])?
                .contiguous()?
                .reshape((n, c * g * s * s, hh, ww))
        }
    }

    /// A layer without temporal state.
    fn stateless(layer: &Layer, x: &Tensor) -> Result<Tensor> {
        match layer {
            Layer::Clamp => (x / 3.0)?.tanh()? * 3.0,
            Layer::Conv(c) => c.forward(x),
            Layer::Relu => x.relu(),
            Layer::Upsample => {
                let (_, _, hh, ww) = x.dims4()?;
                x.upsample_nearest2d(hh * 2, ww * 2)
            }
            Layer::TGrow(g) => g.forward(x),
            Layer::Mem(_) => candle_core::bail!("internal: a MemBlock in the stateless tail"),
        }
    }

    /// Index of the first layer after the last MemBlock: from there on every layer is 2-D and
    /// spatially local.
    fn tail_start(&self) -> usize {
        self.layers
            .iter()
            .rposition(|l| matches!(l, Layer::Mem(_)))
            .map_or(0, |i| i + 1)
    }

    /// Rows of context (at the tail's input resolution) an output row of the tail needs on each
    /// side: each conv adds its padding, each ×2 upsample halves what the layers after it need.
    pub fn tail_halo_rows(&self) -> usize {
        let mut need = 0;
        for layer in self.layers[self.tail_start()..].iter().rev() {
            match layer {
                Layer::Conv(c) => need += c.padding(),
                Layer::TGrow(g) => need += g.conv.padding(),
                Layer::Upsample => need = need.div_ceil(2),
                _ => {}
            }
        }
        need
    }

    /// The tail over horizontal stripes of `rows` input rows, each with its halo of context
    /// rows (cropped after): the zero padding a stripe edge adds only reaches rows of the halo,
    /// so every kept row is computed from the same inputs as in one whole-frame call.
    fn striped_tail(&self, x: &Tensor, rows: usize) -> Result<Tensor> {
        let layers = &self.layers[self.tail_start()..];
        let h = x.dim(2)?;
        let halo = self.tail_halo_rows();
        let mut parts = Vec::new();
        let mut a = 0;
        while a < h {
            let b = (a + rows).min(h);
            let (lo, hi) = (a.saturating_sub(halo), (b + halo).min(h));
            let mut y = x.narrow(2, lo, hi - lo)?.contiguous()?;
            for layer in layers {
                y = Self::stateless(layer, &y)?;
            }
            let factor = y.dim(2)? / (hi - lo);
            parts.push(
                y.narrow(2, (a - lo) * factor, (b - a) * factor)?
                    .contiguous()?,
            );
            a = b;
        }
        if parts.len() == 1 {
            return Ok(parts.pop().expect("one stripe"));
        }
        Tensor::cat(&parts, 2)
    }

    /// Decodes `latents` `[1, C_lat, T, h, w]` (DiT x0, not un-normalised) conditioned on the LQ
    /// frames `lq` `[1, 3, T_lq, 8h, 8w]` in [-1, 1] (see the module docs for which frames).
    /// Returns `[1, 3, T_lq, 8h, 8w]`, roughly in [-1, 1] (not clamped), in the decoder's dtype
    /// (the inputs are converted to it).
    pub fn decode(&self, latents: &Tensor, lq: &Tensor, state: &mut TcState) -> Result<Tensor> {
        let _enter = self.span.enter();
        let (b, c_lat, t, h, w) = latents.dims5()?;
        if b != 1 || c_lat != self.config.latent_channels {
            candle_core::bail!(
                "TCDecoder: latents must be [1, {}, T, h, w], got {:?}",
                self.config.latent_channels,
                latents.dims()
            )
        }
        let t_lq = lq.dim(2)?;
        let want = self.lq_frames_for(t, state);
        if t == 0 || t_lq != want {
            candle_core::bail!(
                "TCDecoder: {t} latent frames need {want} LQ frames in this call, got {t_lq}"
            )
        }
        let (_, _, _, lh, lw) = lq.dims5()?;
        if lh != h * SPATIAL_FACTOR || lw != w * SPATIAL_FACTOR {
            candle_core::bail!(
                "TCDecoder: LQ frames are {lw}x{lh}, latents {w}x{h} need {}x{}",
                w * SPATIAL_FACTOR,
                h * SPATIAL_FACTOR
            )
        }
        if state.mem.len() != self.layers.len() {
            state.mem = vec![None; self.layers.len()];
        }
        let lq = lq.to_dtype(self.dtype)?;
        let latents = latents.to_dtype(self.dtype)?.squeeze(0)?;
        // The channels-last program has no striped tail (yet): a stream the memory plan puts
        // in stripes runs the NCHW layers (the choice holds for the whole stream).
        if let (Some(plan), None) = (&self.nhwc, state.tail_stripe_rows) {
            // [T, h, w, 784] in, [frames, H, W, 3] out.
            let cond = self.lq_condition(&lq, true)?;
            let lat = latents.permute((1, 2, 3, 0))?;
            let x = Tensor::cat(&[&cond, &lat], 3)?;
            let mut y = plan.run(x, &mut state.mem)?;
            if !state.started {
                let trim = self.frames_to_trim();
                y = y.narrow(0, trim, y.dim(0)? - trim)?;
                state.started = true;
            }
            let y = y.permute((3, 0, 1, 2))?.unsqueeze(0)?.contiguous()?;
            return (y * 2.0)? - 1.0;
        }
        let cond = self.lq_condition(&lq, false)?;
        let lat = latents.permute((1, 0, 2, 3))?;
        let mut x = Tensor::cat(&[&cond, &lat], 1)?;
        let tail = self.tail_start();
        for (i, layer) in self.layers.iter().enumerate() {
            if let (true, Some(rows)) = (i == tail, state.tail_stripe_rows) {
                x = self.striped_tail(&x, rows)?;
                break;
            }
            x = match layer {
                Layer::Mem(m) => {
                    let (y, mem) = m.forward(&x, state.mem[i].as_ref())?;
                    state.mem[i] = Some(mem);
                    y
                }
                other => Self::stateless(other, &x)?,
            };
        }
        if !state.started {
            let trim = self.frames_to_trim();
            x = x.narrow(0, trim, x.dim(0)? - trim)?;
            state.started = true;
        }
        // [frames, 3, H, W] → [1, 3, frames, H, W], mapped from [0, 1] to [-1, 1].
        let x = x.permute((1, 0, 2, 3))?.unsqueeze(0)?.contiguous()?;
        (x * 2.0)? - 1.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};
    use std::collections::HashMap;

    /// Random weights with the upstream layout at small widths `[16, 16, 8, 8]`.
    fn random_decoder(device: &Device) -> Result<TcDecoder> {
        let mut t = HashMap::new();
        let mut add = |name: String, shape: &[usize]| -> Result<()> {
            let fan_in: usize = shape[1..].iter().product::<usize>().max(1);
            let v = (Tensor::randn(0f32, 1.0, shape, device)? / (fan_in as f64).sqrt())?;
            t.insert(name, v);
            Ok(())
        };
        let ch = [16usize, 16, 8, 8];
        add(
            "decoder.1.weight".into(),
            &[ch[0], COND_CHANNELS + 16, 3, 3],
        )?;
        add("decoder.1.bias".into(), &[ch[0]])?;
        add("decoder.3.weight".into(), &[ch[0], ch[0], 3, 3])?;
        for (stage, first) in [(0usize, 5usize), (1, 11), (2, 17)] {
            let c = ch[stage];
            for i in first..first + 3 {
                add(format!("decoder.{i}.conv.0.weight"), &[c, 2 * c, 3, 3])?;
                add(format!("decoder.{i}.conv.0.bias"), &[c])?;
                for j in [2, 4] {
                    add(format!("decoder.{i}.conv.{j}.weight"), &[c, c, 3, 3])?;
                    add(format!("decoder.{i}.conv.{j}.bias"), &[c])?;
                }
            }
        }
        // TGrow 9 (stride 1), 15 and 21 (stride 2); the convs after them.
        add("decoder.9.conv.weight".into(), &[ch[0], ch[0], 1, 1])?;
        add("decoder.10.weight".into(), &[ch[1], ch[0], 3, 3])?;
        add("decoder.15.conv.weight".into(), &[2 * ch[1], ch[1], 1, 1])?;
        add("decoder.16.weight".into(), &[ch[2], ch[1], 3, 3])?;
        add("decoder.21.conv.weight".into(), &[2 * ch[2], ch[2], 1, 1])?;
        add("decoder.22.weight".into(), &[ch[3], ch[2], 3, 3])?;
        add("decoder.24.weight".into(), &[ch[3], ch[3], 3, 3])?;
        add("decoder.26.weight".into(), &[3, ch[3], 3, 3])?;
        add("decoder.26.bias".into(), &[3])?;
        TcDecoder::new(VarBuilder::from_tensors(t, DType::F32, device))
    }

    /// The channels-last program (here through the implicit conv's Candle path) decodes the
    /// same frames as the NCHW layers, over two calls so the MemBlock memories carry over.
    #[test]
    fn channels_last_program_matches_nchw_layers() -> Result<()> {
        let dev = Device::Cpu;
        let nchw = random_decoder(&dev)?;
        assert!(nchw.nhwc.is_none(), "CPU f32 runs the NCHW layers");
        let mut nhwc = nchw.clone();
        nhwc.nhwc = nhwc::NhwcPlan::new(&nhwc.layers, DType::F32)?;
        assert!(nhwc.nhwc.is_some());
        let (h, w) = (3, 5);
        let (mut s1, mut s2) = (TcState::new(), TcState::new());
        for (latents, frames) in [(2usize, 5usize), (1, 4)] {
            let lat = Tensor::randn(0f32, 1.0, (1, 16, latents, h, w), &dev)?;
            let lq = Tensor::randn(0f32, 0.5, (1, 3, frames, 8 * h, 8 * w), &dev)?;
            let a = nchw.decode(&lat, &lq, &mut s1)?;
            let b = nhwc.decode(&lat, &lq, &mut s2)?;
            assert_eq!(a.dims(), &[1, 3, frames, 8 * h, 8 * w]);
            assert_eq!(a.dims(), b.dims());
            let d = (a - b)?.abs()?.max_all()?.to_scalar::<f32>()?;
            assert!(d < 1e-4, "channels-last decode differs by {d}");
        }
        Ok(())
    }
}
