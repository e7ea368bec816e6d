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
//! decoder's causal state.

use std::collections::VecDeque;
use std::time::Instant;

use candle_core::{DType, Device, Result, Tensor};
use candle_nn::VarBuilder;

use crate::color_fix;
pub use crate::color_fix::ColorFix;
use crate::config::{DitConfig, LqProjConfig};
use crate::decode_plan;
use crate::decoders::tc::{TcDecoder, TcState};
use crate::decoders::wan_vae::{WanVaeDecoder, WanVaeState};
use crate::dit::lcsa::LcsaParams;
use crate::dit::{Dit, DitConstants, KvCache};
use crate::lq_proj::{LqProj, LqProjState, LqProjVariant};
use crate::noise::NoiseSource;
use crate::precision::Precision;
use crate::preprocess::{
    frame_to_device, unit_video, FrameGeometry, FramePlan, FrameRule, RgbFrame, SizeRule,
};
use crate::schedule::{step_plan, StepPlan};
use crate::tiling::{crop_rgb, tile_grid, Blender, Tile};

/// Which decoder turns latents into frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// Tiny conditional decoder.
    #[default]
    Tiny,
    /// Tiny decoder, decoding step by step. Numerically identical to `Tiny` (spec 1.1); this
    /// engine always streams, so the two differ only in name.
    TinyLong,
    /// The Wan2.1 VAE decoder.
    Full,
}

/// The FlashVSR weight generation; it decides the LQ projection's caching.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ModelVersion {
    V1,
    #[default]
    V1_1,
}

impl ModelVersion {
    fn lq_proj_variant(self) -> LqProjVariant {
        match self {
            ModelVersion::V1 => LqProjVariant::Buffer,
            ModelVersion::V1_1 => LqProjVariant::Causal,
        }
    }
}

/// Spatial tiling of the input (in input pixels), for outputs too large for one pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TileOptions {
    pub size: usize,
    pub overlap: usize,
}

/// Settings of one upscale.
#[derive(Debug, Clone)]
pub struct UpscaleOptions {
    /// Upscale factor (≥ 1; the model is trained for 4).
    pub scale: f64,
    pub mode: Mode,
    /// LCSA sparsity: ≈ 60·sparse_ratio key blocks per query block (upstream 2.0).
    pub sparse_ratio: f64,
    /// KV cache length in segments (upstream 3.0).
    pub kv_ratio: f64,
    /// Local attention window in blocks (upstream 11).
    pub local_range: usize,
    pub color_fix: ColorFix,
    /// Upstream's exact crop and 8n−3 frame count instead of the product contract.
    pub upstream_compat: bool,
    /// Seed of the initial noise (ignored when `noise` is given).
    pub seed: u64,
    /// The initial noise [1, 16, T, H/8, W/8] for exact reproduction of another run.
    pub noise: Option<Tensor>,
    pub tile: Option<TileOptions>,
}

impl Default for UpscaleOptions {
    fn default() -> Self {
        Self {
            scale: 4.0,
            mode: Mode::Tiny,
            sparse_ratio: 2.0,
            kv_ratio: 3.0,
            local_range: 11,
            color_fix: ColorFix::AdaIn,
            upstream_compat: false,
            seed: 0,
            noise: None,
            tile: None,
        }
    }
}

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
        let dit = Dit::new(c.dit, &dit_cfg)?;
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
}

/// Seconds spent per stage, and frame counts.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct SessionStats {
    pub frames_in: usize,
    pub frames_out: usize,
    pub dit_steps: usize,
    pub preprocess_s: f64,
    pub lq_proj_s: f64,
    pub dit_s: f64,
    pub decode_s: f64,
    pub color_fix_s: f64,
}

enum DecoderState {
    /// The tiny decoder's state and the latents it decodes per call.
    Tiny(TcState, usize),
    Full(WanVaeState),
}

/// The streaming state of one video upscaled in one piece.
pub struct StreamSession<'m> {
    model: &'m FlashVsr,
    geometry: FrameGeometry,
    size_rule: SizeRule,
    frame_rule: FrameRule,
    input_size: (usize, usize),
    color_fix: ColorFix,
    lcsa: LcsaParams,
    noise: NoiseSource,
    /// Preprocessed LQ frames still needed (`[H, W, 3]` u8, on the model's device: each frame
    /// enters the device once), with the index of the first one.
    lq: VecDeque<Tensor>,
    lq_first: usize,
    lq_total: usize,
    /// Real input frames seen so far.
    frames_in: usize,
    next_step: usize,
    lq_state: LqProjState,
    kv: KvCache,
    decoder: DecoderState,
    finished: bool,
    stats: SessionStats,
}

impl<'m> StreamSession<'m> {
    fn new(
        model: &'m FlashVsr,
        width: usize,
        height: usize,
        opts: &UpscaleOptions,
    ) -> Result<Self> {
        if !(opts.scale.is_finite() && opts.scale >= 1.0) {
            candle_core::bail!("scale {} must be a number ≥ 1", opts.scale)
        }
        let (size_rule, frame_rule) = if opts.upstream_compat {
            (SizeRule::UpstreamCrop, FrameRule::Upstream)
        } else {
            (SizeRule::PadToGrid, FrameRule::EveryFrame)
        };
        let geometry = FrameGeometry::new(width, height, opts.scale, size_rule)?;
        // Decoder calls sized so that no activation reaches Candle's CUDA element limit
        // (decode_plan); step 0 then never needs more decoder memory than later steps.
        let (mh, mw, cuda) = (geometry.model_h, geometry.model_w, model.device.is_cuda());
        let decoder = match opts.mode {
            Mode::Tiny | Mode::TinyLong => {
                let Some(tc) = model.tc_decoder.as_ref() else {
                    candle_core::bail!("mode tiny needs the TCDecoder weights (TCDecoder.ckpt), which were not loaded")
                };
                let per_call = decode_plan::tc_latents_per_call(tc.config(), mh, mw, cuda)?;
                DecoderState::Tiny(TcState::new(), per_call)
            }
            Mode::Full => {
                let Some(vae) = model.vae.as_ref() else {
                    candle_core::bail!("mode full needs the Wan VAE weights (Wan2.1_VAE.pth), which were not loaded")
                };
                decode_plan::check_vae(vae.config(), mh, mw, cuda)?;
                DecoderState::Full(WanVaeState::new())
            }
        };
        let lcsa = LcsaParams {
            sparse_ratio: opts.sparse_ratio,
            kv_ratio: opts.kv_ratio,
            local_range: opts.local_range,
        };
        let noise = match &opts.noise {
            Some(t) => NoiseSource::Given(t.clone()),
            None => NoiseSource::Seeded(opts.seed),
        };
        Ok(Self {
            model,
            geometry,
            size_rule,
            frame_rule,
            input_size: (width, height),
            color_fix: opts.color_fix,
            lcsa,
            noise,
            lq: VecDeque::new(),
            lq_first: 0,
            lq_total: 0,
            frames_in: 0,
            next_step: 0,
            lq_state: LqProjState::new(),
            kv: KvCache::new(model.dit.config()),
            decoder,
            finished: false,
            stats: SessionStats::default(),
        })
    }

    /// Size of the frames this session returns (width, height).
    pub fn output_size(&self) -> (usize, usize) {
        (self.geometry.out_w, self.geometry.out_h)
    }

    /// The size the model runs at (multiples of 128).
    pub fn model_size(&self) -> (usize, usize) {
        (self.geometry.model_w, self.geometry.model_h)
    }

    pub fn stats(&self) -> SessionStats {
        self.stats.clone()
    }

    /// Feeds one RGB24 input frame; returns the output frames that became final, in order.
    pub fn push_frame(&mut self, rgb24: &[u8]) -> Result<Vec<Vec<u8>>> {
        if self.finished {
            candle_core::bail!("push_frame after finish: start a new session for a new video")
        }
        let (w, h) = self.input_size;
        let frame = RgbFrame::new(w, h, rgb24.to_vec())?;
        let t0 = Instant::now();
        let lq = self.geometry.prepare(&frame, self.size_rule)?;
        let lq = frame_to_device(&lq, &self.model.device)?;
        self.stats.preprocess_s += t0.elapsed().as_secs_f64();
        self.frames_in += 1;
        self.stats.frames_in += 1;
        self.lq.push_back(lq);
        self.lq_total += 1;
        self.run_ready_steps()
    }

    /// Ends the video: pads the tail as the frame contract says and returns the remaining frames.
    pub fn finish(&mut self) -> Result<Vec<Vec<u8>>> {
        if self.finished {
            return Ok(Vec::new());
        }
        self.finished = true;
        let plan = FramePlan::new(self.frames_in, self.frame_rule)?;
        let last = match self.lq.back() {
            Some(f) => f.clone(),
            None => candle_core::bail!("internal: no LQ frame left to pad the tail with"),
        };
        while self.lq_total < plan.lq_frames {
            self.lq.push_back(last.clone());
            self.lq_total += 1;
        }
        let out = self.run_ready_steps()?;
        Ok(out)
    }

    fn run_ready_steps(&mut self) -> Result<Vec<Vec<u8>>> {
        let mut out = Vec::new();
        loop {
            let plan = step_plan(self.next_step);
            if self.lq_total < plan.lq_frames_needed() {
                break;
            }
            out.extend(self.run_step(&plan)?);
            self.next_step += 1;
            self.stats.dit_steps += 1;
            // Frames older than the next step's decoder window are no longer needed.
            let keep_from = step_plan(self.next_step).decoder_lq.start;
            while self.lq_first < keep_from && !self.lq.is_empty() {
                self.lq.pop_front();
                self.lq_first += 1;
            }
        }
        Ok(out)
    }

    /// The LQ frames `range` as a [1, 3, T, H, W] tensor in the model dtype.
    fn lq_tensor(&self, range: std::ops::Range<usize>) -> Result<Tensor> {
        if range.start < self.lq_first || range.end > self.lq_total {
            candle_core::bail!(
                "internal: LQ frames {range:?} requested, {}..{} held",
                self.lq_first,
                self.lq_total
            )
        }
        let frames: Vec<Tensor> = range.map(|i| self.lq[i - self.lq_first].clone()).collect();
        unit_video(&frames, self.model.dtype)
    }

    fn run_step(&mut self, plan: &StepPlan) -> Result<Vec<Vec<u8>>> {
        let model = self.model;
        let sync = |d: &Device| d.synchronize();

        let t0 = Instant::now();
        let mut tokens = Vec::new();
        for call in &plan.lq_proj_calls {
            let clip = self.lq_tensor(call.clone())?;
            if let Some(t) = model.lq_proj.stream(&clip, &mut self.lq_state)? {
                tokens.push(t);
            }
        }
        let lq_tokens = Tensor::cat(&tokens, 1)?;
        sync(&model.device)?;
        self.stats.lq_proj_s += t0.elapsed().as_secs_f64();

        let t0 = Instant::now();
        let (mw, mh) = (self.geometry.model_w, self.geometry.model_h);
        let noise = self.noise.frames(
            plan.latents.clone(),
            model.latent_channels,
            mh / 8,
            mw / 8,
            &model.device,
        )?;
        let velocity = model.dit.step(
            &noise.to_dtype(model.dtype)?,
            &lq_tokens,
            plan.latents.start,
            &model.constants,
            &mut self.kv,
            &self.lcsa,
            None,
        )?;
        // x0 stays in f32: rounding it to bf16 alone costs the VAE decoder ~5e-2 (relative).
        let x0 = (noise - velocity.to_dtype(DType::F32)?)?;
        sync(&model.device)?;
        self.stats.dit_s += t0.elapsed().as_secs_f64();

        let t0 = Instant::now();
        let decoder_lq = match self.decoder {
            DecoderState::Tiny(..) => Some(self.lq_tensor(plan.decoder_lq.clone())?),
            DecoderState::Full(_) => None,
        };
        let decoded = match &mut self.decoder {
            DecoderState::Tiny(state, per_call) => {
                let lq = decoder_lq.expect("built above for the tiny decoder");
                let tc = model.tc_decoder.as_ref().expect("checked in Session::new");
                tc.decode_chunked(&x0, &lq, state, *per_call)?
            }
            DecoderState::Full(state) => {
                let vae = model.vae.as_ref().expect("checked in Session::new");
                vae.decode(&x0, state)?
            }
        };
        sync(&model.device)?;
        self.stats.decode_s += t0.elapsed().as_secs_f64();

        // Only outputs of real input frames leave the session (upstream-compat never runs
        // a step whose outputs pass the 8n−3 cut, so this is the product contract's cut).
        let n_real = plan
            .outputs
            .end
            .min(self.frames_in)
            .saturating_sub(plan.outputs.start);
        if n_real == 0 {
            return Ok(Vec::new());
        }
        let t0 = Instant::now();
        let g = &self.geometry;
        let crop = |t: &Tensor| -> Result<Tensor> {
            t.narrow(2, 0, n_real)?
                .narrow(3, 0, g.out_h)?
                .narrow(4, 0, g.out_w)
        };
        let hq = crop(&decoded)?;
        let reference = crop(&self.lq_tensor(plan.outputs.clone())?)?;
        let fixed = self.color_fix.apply(&hq, &reference)?.clamp(-1f32, 1f32)?;
        let frames = color_fix::to_rgb_frames(&fixed)?;
        self.stats.color_fix_s += t0.elapsed().as_secs_f64();
        self.stats.frames_out += frames.len();
        Ok(frames.into_iter().map(|f| f.data).collect())
    }
}

/// A streaming upscale of one video: one session over the whole frame, or one per tile with
/// the outputs blended (`UpscaleOptions::tile`).
pub struct Session<'m> {
    inner: Inner<'m>,
}

enum Inner<'m> {
    Whole(Box<StreamSession<'m>>),
    Tiled(TiledSessions<'m>),
}

struct TiledSessions<'m> {
    input_width: usize,
    input_height: usize,
    output_size: (usize, usize),
    ramp: usize,
    tiles: Vec<(Tile, [bool; 4], StreamSession<'m>)>,
}

impl<'m> Session<'m> {
    fn new(
        model: &'m FlashVsr,
        width: usize,
        height: usize,
        opts: &UpscaleOptions,
    ) -> Result<Self> {
        let Some(tile) = opts.tile.filter(|t| t.size < width.max(height)) else {
            return Ok(Self {
                inner: Inner::Whole(Box::new(StreamSession::new(model, width, height, opts)?)),
            });
        };
        if opts.upstream_compat {
            candle_core::bail!("tiling cannot be combined with the upstream-compatible contract (upstream does not tile)")
        }
        if tile.size < 16 || tile.overlap >= tile.size / 2 {
            candle_core::bail!(
                "tile size {} with overlap {}: the tile must be at least 16 px and the overlap less than half of it",
                tile.size,
                tile.overlap
            )
        }
        let scale = opts.scale;
        let out_len = |n: usize| (n as f64 * scale).round_ties_even() as usize;
        let grid = tile_grid(width, height, tile.size, tile.overlap, out_len);
        let mut tiles = Vec::with_capacity(grid.len());
        for t in grid {
            let neighbours = [t.x > 0, t.x + t.w < width, t.y > 0, t.y + t.h < height];
            tiles.push((t, neighbours, StreamSession::new(model, t.w, t.h, opts)?));
        }
        Ok(Self {
            inner: Inner::Tiled(TiledSessions {
                input_width: width,
                input_height: height,
                output_size: (out_len(width), out_len(height)),
                ramp: out_len(tile.overlap).max(1),
                tiles,
            }),
        })
    }

    /// Size of the frames this session returns (width, height).
    pub fn output_size(&self) -> (usize, usize) {
        match &self.inner {
            Inner::Whole(s) => s.output_size(),
            Inner::Tiled(t) => t.output_size,
        }
    }

    /// Number of spatial tiles (1 without tiling).
    pub fn tiles(&self) -> usize {
        match &self.inner {
            Inner::Whole(_) => 1,
            Inner::Tiled(t) => t.tiles.len(),
        }
    }

    /// Frame counts and seconds per stage, summed over tiles.
    pub fn stats(&self) -> SessionStats {
        match &self.inner {
            Inner::Whole(s) => s.stats(),
            Inner::Tiled(t) => {
                let mut sum = SessionStats::default();
                for (_, _, s) in &t.tiles {
                    let st = s.stats();
                    sum.preprocess_s += st.preprocess_s;
                    sum.lq_proj_s += st.lq_proj_s;
                    sum.dit_s += st.dit_s;
                    sum.decode_s += st.decode_s;
                    sum.color_fix_s += st.color_fix_s;
                    sum.frames_in = st.frames_in;
                    sum.frames_out = st.frames_out;
                    sum.dit_steps = st.dit_steps;
                }
                sum
            }
        }
    }

    /// Feeds one RGB24 input frame; returns the output frames that became final, in order.
    pub fn push_frame(&mut self, rgb24: &[u8]) -> Result<Vec<Vec<u8>>> {
        match &mut self.inner {
            Inner::Whole(s) => s.push_frame(rgb24),
            Inner::Tiled(t) => {
                let (w, h) = (t.input_width, t.input_height);
                if rgb24.len() != w * h * 3 {
                    candle_core::bail!(
                        "frame of {} bytes is not a {w}x{h} RGB24 frame",
                        rgb24.len()
                    )
                }
                let input_width = t.input_width;
                t.each(|tile, s| {
                    s.push_frame(&crop_rgb(
                        rgb24,
                        input_width,
                        tile.x,
                        tile.y,
                        tile.w,
                        tile.h,
                    ))
                })
            }
        }
    }

    /// Ends the video: pads the tail as the frame contract says and returns the remaining frames.
    pub fn finish(&mut self) -> Result<Vec<Vec<u8>>> {
        match &mut self.inner {
            Inner::Whole(s) => s.finish(),
            Inner::Tiled(t) => t.each(|_, s| s.finish()),
        }
    }
}

impl TiledSessions<'_> {
    /// Runs `f` on every tile's session and blends the frames they return.
    fn each(
        &mut self,
        mut f: impl FnMut(&Tile, &mut StreamSession<'_>) -> Result<Vec<Vec<u8>>>,
    ) -> Result<Vec<Vec<u8>>> {
        let (ow, oh) = self.output_size;
        let mut blenders: Vec<Blender> = Vec::new();
        for (i, (tile, neighbours, session)) in self.tiles.iter_mut().enumerate() {
            let frames = f(tile, session)?;
            if i == 0 {
                blenders = (0..frames.len()).map(|_| Blender::new(ow, oh)).collect();
            } else if frames.len() != blenders.len() {
                candle_core::bail!(
                    "internal: tiles returned different frame counts ({} vs {})",
                    frames.len(),
                    blenders.len()
                )
            }
            let (tw, th) = session.output_size();
            for (b, frame) in blenders.iter_mut().zip(&frames) {
                b.add(
                    frame,
                    tw,
                    th,
                    tile.out_x,
                    tile.out_y,
                    self.ramp,
                    *neighbours,
                );
            }
        }
        Ok(blenders.into_iter().map(Blender::finish).collect())
    }
}
