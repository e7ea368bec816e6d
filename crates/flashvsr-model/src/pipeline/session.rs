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
use crate::device_memory;
use crate::dit::lcsa::LcsaParams;
use crate::dit::KvCache;
use crate::frames::{self, RgbFrame};
use crate::lq_proj::LqProjState;
use crate::noise::NoiseSource;
use crate::preprocess::{DevicePreprocess, FrameGeometry, SizeRule};
use crate::schedule::{step_plan, FramePlan, FrameRule, StepPlan};

/// Set to `1` to run the CUDA path's frame ops as before the device kernels (bicubic resize on
/// the host, colour fix and 8-bit conversion as Candle tensor ops): for A/B timings in one run.
pub const LEGACY_FRAME_OPS_ENV: &str = "FLASHVSR_LEGACY_FRAME_OPS";

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
    /// Moving the KV cache to host memory and back between steps (tiles with `park_kv`).
    pub kv_park_s: f64,
    pub kv_parked_bytes: u64,
    /// Device memory in use at each stage's peak (the allocator pool's high-water mark; CUDA
    /// only): what the memory plan is checked against.
    pub stage_peak_bytes: std::collections::BTreeMap<&'static str, u64>,
}

impl SessionStats {
    /// Records the pool's peak since the last call under `stage`, and restarts it.
    fn stage_peak(&mut self, stage: &'static str, device: &Device) {
        if let Some(peak) = device_memory::pool_peak(device) {
            let e = self.stage_peak_bytes.entry(stage).or_insert(0);
            *e = (*e).max(peak);
            device_memory::reset_pool_peak(device);
        }
    }
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
    /// On CUDA: the resize on the device, and the colour fix fused with the 8-bit conversion.
    device_frame_ops: Option<DevicePreprocess>,
    lcsa: LcsaParams,
    noise: NoiseSource,
    /// Latent frame of the whole clip that this session's latent 0 is (`first_frame / 4`).
    noise_offset: usize,
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
    /// Park the KV cache in host memory between steps.
    park_kv: bool,
    /// The stage running now (named in errors).
    stage: &'static str,
    /// Test hook: fail at this (stage, step) as if the device ran out of memory.
    fail_at: Option<(String, usize)>,
    stats: SessionStats,
}

/// Environment variable of the failure test hook: `STAGE:STEP`, e.g. `decoder:2` (stage names as
/// in the errors: `LQ projection`, `DiT`, `decoder`, `colour fix`).
pub const FAIL_AT_ENV: &str = "FLASHVSR_FAIL_AT";

fn fail_at_from_env() -> Option<(String, usize)> {
    let v = std::env::var(FAIL_AT_ENV).ok()?;
    let (stage, step) = v.rsplit_once(':')?;
    Some((stage.to_string(), step.trim().parse().ok()?))
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
                let limit = cuda_limits::tc_latents_per_call(tc.config(), mh, mw, cuda)?;
                let per_call = opts
                    .decoder_latents_per_call
                    .map_or(limit, |n| n.clamp(1, limit));
                let state = TcState::new().with_tail_stripes(opts.decoder_stripe_rows);
                DecoderState::Tiny(state, per_call)
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
        let legacy = std::env::var(LEGACY_FRAME_OPS_ENV).is_ok_and(|v| v == "1");
        let device_frame_ops = if cuda && !legacy {
            Some(DevicePreprocess::new(
                width,
                height,
                &geometry,
                size_rule,
                &model.device,
            )?)
        } else {
            None
        };
        let noise = match &opts.noise {
            Some(t) => NoiseSource::Given(t.clone()),
            None => NoiseSource::Seeded(opts.seed),
        };
        let noise_offset = crate::segments::noise_offset(opts.first_frame)?;
        // Stage peaks count from here (not the weights' loading).
        device_memory::reset_pool_peak(&model.device);
        Ok(Self {
            model,
            geometry,
            size_rule,
            frame_rule,
            input_size: (width, height),
            color_fix: opts.color_fix,
            device_frame_ops,
            lcsa,
            noise,
            noise_offset,
            lq: VecDeque::new(),
            lq_first: 0,
            lq_total: 0,
            frames_in: 0,
            next_step: 0,
            lq_state: LqProjState::new(),
            kv: KvCache::with_storage(model.dit.config(), opts.kv_storage),
            decoder,
            finished: false,
            park_kv: opts.park_kv,
            stage: "start",
            fail_at: fail_at_from_env(),
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
        let lq = match &self.device_frame_ops {
            Some(ops) => {
                let lq = ops.prepare(frame)?;
                // Only for the stage time: the kernels take tens of microseconds.
                self.model.device.synchronize()?;
                lq
            }
            None => {
                let lq = self.geometry.prepare(frame, self.size_rule)?;
                frames::to_device(&lq, &self.model.device)?
            }
        };
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
        let mut unparked = false;
        loop {
            let plan = step_plan(self.next_step);
            if self.lq_total < plan.lq_frames_needed() {
                break;
            }
            if self.park_kv && !unparked {
                self.stage = "KV cache unparking";
                self.move_kv(&self.model.device.clone())?;
                unparked = true;
            }
            let frames = self.run_step(&plan).map_err(|e| {
                let g = &self.geometry;
                candle_core::Error::Msg(format!(
                    "{} failed (DiT step {}, {}x{} model grid): {e}",
                    self.stage, plan.step, g.model_w, g.model_h
                ))
            })?;
            out.extend(frames);
            self.next_step += 1;
            self.stats.dit_steps += 1;
            // Frames older than the next step's outputs are no longer needed.
            let keep_from = step_plan(self.next_step).outputs.start;
            while self.lq_first < keep_from && !self.lq.is_empty() {
                self.lq.pop_front();
                self.lq_first += 1;
            }
        }
        if unparked {
            self.stage = "KV cache parking";
            self.move_kv(&Device::Cpu)?;
            self.stats.kv_parked_bytes = self.kv.bytes() as u64;
        }
        Ok(out)
    }

    /// Marks the start of `stage` of `step` (errors name it; the test hook may fail here).
    fn enter_stage(&mut self, stage: &'static str, step: usize) -> Result<()> {
        self.stage = stage;
        if let Some((s, n)) = &self.fail_at {
            if s == stage && *n == step {
                candle_core::bail!("out of memory (injected by {FAIL_AT_ENV})")
            }
        }
        Ok(())
    }

    /// Moves the KV cache to `device` (host parking between this tile's steps), timed.
    fn move_kv(&mut self, device: &Device) -> Result<()> {
        let t0 = Instant::now();
        self.kv.move_to(device)?;
        device.synchronize()?;
        self.model.device.synchronize()?;
        self.stats.kv_park_s += t0.elapsed().as_secs_f64();
        Ok(())
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

        self.enter_stage("LQ projection", plan.step)?;
        let t0 = Instant::now();
        let mut tokens = Vec::new();
        for call in &plan.lq_proj_calls {
            let clip = self.lq_tensor(call.clone())?;
            if let Some(t) = model.lq_proj.stream(&clip, &mut self.lq_state)? {
                tokens.push(t);
            }
        }
        let lq_tokens = Tensor::cat(&tokens, 1)?;
        drop(tokens);
        sync(&model.device)?;
        self.stats.lq_proj_s += t0.elapsed().as_secs_f64();
        self.stats.stage_peak("LQ projection", &model.device);

        self.enter_stage("DiT", plan.step)?;
        let t0 = Instant::now();
        let (mw, mh) = (self.geometry.model_w, self.geometry.model_h);
        // A segment's session draws the clip's noise for its latents (segments.rs).
        let (off, lat) = (self.noise_offset, &plan.latents);
        let noise = self.noise.frames(
            lat.start + off..lat.end + off,
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
        drop((velocity, lq_tokens));
        sync(&model.device)?;
        self.stats.dit_s += t0.elapsed().as_secs_f64();
        self.stats.stage_peak(
            if plan.step == 0 {
                "DiT step 0"
            } else {
                "DiT step"
            },
            &model.device,
        );

        self.enter_stage("decoder", plan.step)?;
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
        drop(x0);
        sync(&model.device)?;
        self.stats.decode_s += t0.elapsed().as_secs_f64();
        self.stats.stage_peak("decoder", &model.device);

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
        self.enter_stage("colour fix", plan.step)?;
        let t0 = Instant::now();
        let g = &self.geometry;
        let crop = |t: &Tensor| -> Result<Tensor> {
            t.narrow(2, 0, n_real)?
                .narrow(3, 0, g.out_h)?
                .narrow(4, 0, g.out_w)
        };
        let hq = crop(&decoded)?;
        let reference = crop(&lq)?;
        let frames = if self.device_frame_ops.is_some() {
            let start = plan.outputs.start - self.lq_first;
            let held: Vec<Tensor> = self.lq.range(start..start + n_real).cloned().collect();
            let lq_frames = Tensor::stack(&held, 0)?
                .narrow(1, 0, g.out_h)?
                .narrow(2, 0, g.out_w)?;
            let rgb = self
                .color_fix
                .apply_to_rgb8_cuda(&hq, &reference, &lq_frames)?;
            frames::rgb8_to_frames(&rgb)?
        } else {
            let fixed = self.color_fix.apply(&hq, &reference)?.clamp(-1f32, 1f32)?;
            frames::to_rgb_frames(&fixed)?
        };
        drop((hq, reference, decoded, lq));
        self.stats.color_fix_s += t0.elapsed().as_secs_f64();
        self.stats.stage_peak("colour fix", &model.device);
        self.stats.frames_out += frames.len();
        Ok(frames)
    }
}
