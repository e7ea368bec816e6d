//! [`StreamSession`]: the streaming state of one video upscaled in one piece, turning
//! "push frame" into "frames ready" step by step along the schedule.

use std::collections::VecDeque;
use std::time::Instant;

use candle_core::{DType, Device, Result, Tensor};

use super::{FlashVsr, Mode, UpscaleOptions};
use crate::color_fix::ColorFix;
use crate::cuda_limits;
use crate::decoders::tc::TcState;
use crate::decoders::wan_vae::WanVaeState;
use crate::dit::lcsa::LcsaParams;
use crate::dit::KvCache;
use crate::frames::{self, RgbFrame};
use crate::lq_proj::LqProjState;
use crate::noise::NoiseSource;
use crate::preprocess::{FrameGeometry, SizeRule};
use crate::schedule::{step_plan, FramePlan, FrameRule, StepPlan};

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
    pub(super) fn new(
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
        // (cuda_limits); step 0 then never needs more decoder memory than later steps.
        let (mh, mw, cuda) = (geometry.model_h, geometry.model_w, model.device.is_cuda());
        let decoder = match opts.mode {
            Mode::Tiny | Mode::TinyLong => {
                let Some(tc) = model.tc_decoder.as_ref() else {
                    candle_core::bail!("mode tiny needs the TCDecoder weights (TCDecoder.ckpt), which were not loaded")
                };
                let per_call = cuda_limits::tc_latents_per_call(tc.config(), mh, mw, cuda)?;
                DecoderState::Tiny(TcState::new(), per_call)
            }
            Mode::Full => {
                let Some(vae) = model.vae.as_ref() else {
                    candle_core::bail!("mode full needs the Wan VAE weights (Wan2.1_VAE.pth), which were not loaded")
                };
                cuda_limits::check_vae(vae.config(), mh, mw, cuda)?;
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

    pub fn stats(&self) -> SessionStats {
        self.stats.clone()
    }

    /// Feeds one input frame; returns the output frames that became final, in order.
    pub fn push_frame(&mut self, frame: &RgbFrame) -> Result<Vec<RgbFrame>> {
        if self.finished {
            candle_core::bail!("push_frame after finish: start a new session for a new video")
        }
        let (w, h) = self.input_size;
        frames::check_size(frame, w, h)?;
        let t0 = Instant::now();
        let lq = self.geometry.prepare(frame, self.size_rule)?;
        let lq = frames::to_device(&lq, &self.model.device)?;
        self.stats.preprocess_s += t0.elapsed().as_secs_f64();
        self.frames_in += 1;
        self.stats.frames_in += 1;
        self.lq.push_back(lq);
        self.lq_total += 1;
        self.run_ready_steps()
    }

    /// Ends the video: pads the tail as the frame contract says and returns the remaining frames.
    pub fn finish(&mut self) -> Result<Vec<RgbFrame>> {
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

    fn run_ready_steps(&mut self) -> Result<Vec<RgbFrame>> {
        let mut out = Vec::new();
        loop {
            let plan = step_plan(self.next_step);
            if self.lq_total < plan.lq_frames_needed() {
                break;
            }
            out.extend(self.run_step(&plan)?);
            self.next_step += 1;
            self.stats.dit_steps += 1;
            // Frames older than the next step's outputs are no longer needed.
            let keep_from = step_plan(self.next_step).outputs.start;
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
        frames::unit_video(&frames, self.model.dtype)
    }

    fn run_step(&mut self, plan: &StepPlan) -> Result<Vec<RgbFrame>> {
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
        // The LQ frames of this step's outputs: the tiny decoder's conditioning and the colour
        // reference, built once.
        let lq = self.lq_tensor(plan.outputs.clone())?;
        let decoded = match &mut self.decoder {
            DecoderState::Tiny(state, per_call) => {
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
        let reference = crop(&lq)?;
        let fixed = self.color_fix.apply(&hq, &reference)?.clamp(-1f32, 1f32)?;
        let frames = frames::to_rgb_frames(&fixed)?;
        self.stats.color_fix_s += t0.elapsed().as_secs_f64();
        self.stats.frames_out += frames.len();
        Ok(frames)
    }
}
