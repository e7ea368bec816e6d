//! The whole FlashVSR pipeline behind a streaming API.
//!
//! [`FlashVsr`] holds the loaded modules and the per-model constants (time embedding,
//! cross-attention keys/values of the prompt). [`Session`] upscales one video: push input
//! frames one at a time, get output frames back as soon as they are final.
//!
//! Latency: nothing comes out until 25 frames are in (the first DiT step needs 25 LQ frames
//! and yields 21 output frames); after that every 8 input frames yield 8 output frames.
//! `finish` pads the tail and flushes the rest. Memory does not grow with the video length:
//! the session keeps at most ~20 preprocessed LQ frames, the bounded KV cache and the
//! decoder's causal state. [`SegmentSession`] upscales one segment of a longer clip (scale-out,
//! see [`crate::segments`]).

mod options;
mod segment;
mod session;
mod tiled;

use candle_core::{DType, Device, Result, Tensor};
use candle_nn::VarBuilder;
use std::sync::Arc;

use crate::nn::linear::QuantizedWeights;

use crate::config::{DitConfig, LqProjConfig};
use crate::decoders::tc::TcDecoder;
use crate::decoders::wan_vae::WanVaeDecoder;
use crate::dit::{Dit, DitConstants};
use crate::lq_proj::LqProj;
use crate::precision::Precision;
use crate::segments::Segment;

pub use options::{ColorFix, KvStorage, Mode, ModelVersion, TileOptions, UpscaleOptions};
pub use segment::SegmentSession;
pub use session::{SessionStats, StreamSession};
pub use tiled::Session;

/// The weights of each component, as candle-nn var builders rooted at the component's names
/// (`blocks.0...`, `conv1...`, `decoder.1...`).
pub struct ModelComponents {
    pub dit: VarBuilder<'static>,
    pub lq_proj: VarBuilder<'static>,
    pub tc_decoder: Option<VarBuilder<'static>>,
    pub vae: Option<VarBuilder<'static>>,
    /// The pre-encoded prompt [1, L, text_dim].
    pub prompt: Tensor,
    /// DiT head size; `None` = 128 (every real Wan DiT). Not recoverable from the shapes.
    pub head_dim: Option<usize>,
    /// Where the DiT's linear weights come from kept quantized (a quantized GGUF, or weights
    /// quantized at load); `None`: every weight dense from `dit`.
    pub dit_quantized: Option<Arc<dyn QuantizedWeights + Send + Sync>>,
}

/// A loaded FlashVSR model.
pub struct FlashVsr {
    dit: Dit,
    constants: DitConstants,
    lq_proj: LqProj,
    tc_decoder: Option<TcDecoder>,
    vae: Option<WanVaeDecoder>,
    latent_channels: usize,
    device: Device,
    dtype: DType,
}

impl FlashVsr {
    /// Builds every module from `components` on `device` in `dtype`.
    pub fn load(
        c: ModelComponents,
        version: ModelVersion,
        device: &Device,
        dtype: DType,
    ) -> Result<Self> {
        let precision = Precision::new(device, dtype)?;
        let dit_cfg = DitConfig::from_weights(&c.dit, c.head_dim)?;
        let quantized = c
            .dit_quantized
            .as_deref()
            .map(|q| q as &dyn QuantizedWeights);
        let dit = Dit::load(c.dit, &dit_cfg, quantized)?;
        let lq_cfg = LqProjConfig::from_weights(&c.lq_proj)?;
        if lq_cfg.dim != dit_cfg.dim {
            candle_core::bail!(
                "the LQ projection produces {}-wide tokens but the DiT is {} wide: these weights do not belong together",
                lq_cfg.dim,
                dit_cfg.dim
            )
        }
        let lq_proj = LqProj::new(c.lq_proj, &lq_cfg, version.lq_proj_variant())?;
        let tc_decoder = c
            .tc_decoder
            .map(|vb| TcDecoder::new(vb.set_dtype(precision.tiny_decoder())))
            .transpose()?;
        if let Some(tc) = &tc_decoder {
            if tc.config().latent_channels != dit_cfg.out_channels {
                candle_core::bail!(
                    "the tiny decoder takes {} latent channels but the DiT produces {}",
                    tc.config().latent_channels,
                    dit_cfg.out_channels
                )
            }
        }
        let vae = c
            .vae
            .map(|vb| {
                WanVaeDecoder::new(vb.set_dtype(precision.vae()))
                    .map(|v| v.with_tf32(precision.vae_tf32()))
            })
            .transpose()?;
        let prompt = c.prompt.to_device(device)?.to_dtype(dtype)?;
        let constants = dit.constants(&prompt)?;
        Ok(Self {
            dit,
            constants,
            lq_proj,
            tc_decoder,
            vae,
            latent_channels: dit_cfg.out_channels,
            device: device.clone(),
            dtype,
        })
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Bytes of the DiT blocks' linear weights on the device (dense, GGUF-quantized or FP8).
    pub fn dit_linear_bytes(&self) -> usize {
        self.dit.block_linear_bytes()
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// Starts upscaling a video of `input_width`×`input_height` frames.
    pub fn session(
        &self,
        input_width: usize,
        input_height: usize,
        opts: &UpscaleOptions,
    ) -> Result<Session<'_>> {
        Session::new(self, input_width, input_height, opts)
    }

    /// Starts upscaling `segment` of a longer clip (push the frames of its run, from
    /// `segment.run_start`); `opts.first_frame` is taken from the segment.
    pub fn segment_session(
        &self,
        input_width: usize,
        input_height: usize,
        opts: &UpscaleOptions,
        segment: &Segment,
    ) -> Result<SegmentSession<'_>> {
        SegmentSession::new(self, input_width, input_height, opts, segment)
    }
}
