//! Device memory of one upscale, computed before any work, and the plan that fits it to a budget.
//!
//! The model is arithmetic on the dimensions read from the weights (or their file headers), the
//! compute dtype, the mode, the output size, the KV length and the tiling: the bytes of the
//! weights, of the KV ring, and of the live activations of each stage at its largest moment
//! (DiT step 0 and a steady step, the LQ projection, one decoder call, the colour fix). The peak
//! is the weights + the KV rings resident on the device + the largest stage + the CUDA runtime.
//! Candle's CUDA allocator is a stream-ordered pool: freed memory is reused, so the high-water
//! mark of live tensors is what the device sees (`nvidia-smi` adds the runtime's own context).
//!
//! [`plan`] then picks, in order of preference, the whole frame; the whole frame with one latent
//! per decoder call; tiles of decreasing size whose other tiles' KV caches are parked in host
//! memory between their steps. It refuses at once, with the numbers, when nothing fits.
//!
//! The per-stage counts follow the code as it is (each stage's tensors that are alive at the
//! same time); [`Calibration`] holds the constants that only a measurement gives (runtime
//! overhead, allocator slack), calibrated on the H100 (`benches/notes/memory.md`).

use candle_core::{DType, Result};
use serde::Serialize;

use crate::config::{DitConfig, LqProjConfig, Shapes};
use crate::cuda_limits;
use crate::decoders::tc::{TcConfig, COND_CHANNELS};
use crate::decoders::wan_vae::WanVaeConfig;
use crate::dit::KvStorage;
use crate::pipeline::{Mode, TileOptions};
use crate::preprocess::{FrameGeometry, SizeRule};
use crate::tiling::tile_grid;

pub const GIB: f64 = (1u64 << 30) as f64;

/// Latent frames DiT step 0 denoises, and a later step.
const STEP0_LATENTS: usize = 6;
const STEADY_LATENTS: usize = 2;
/// Output frames DiT step 0 yields (decoded and colour-fixed at once), and a later step.
const STEP0_FRAMES: usize = 21;
/// Preprocessed LQ frames a session holds at most (u8 on the device).
const LQ_FRAMES_HELD: usize = 25;
/// Segments DiT step 0 brings into the KV cache.
const STEP0_SEGMENTS: usize = STEP0_LATENTS / 2;
/// Latent frames per KV segment (one window deep).
const LATENTS_PER_SEGMENT: usize = 2;

/// Which decoder, with its dimensions.
#[derive(Debug, Clone, PartialEq)]
pub enum DecoderDims {
    Tiny(TcConfig),
    Full(WanVaeConfig),
}

/// Parameter counts per part (elements, any dtype).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct PartParams {
    pub dit: u64,
    pub lq_proj: u64,
    pub decoder: u64,
    pub prompt: u64,
}

/// What the memory model needs to know about the weights.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelDims {
    pub dit: DitConfig,
    pub lq_proj: LqProjConfig,
    pub decoder: DecoderDims,
    /// Prompt tokens (512 for the shipped prompt).
    pub text_len: usize,
    pub params: PartParams,
}

impl ModelDims {
    /// From tensor shapes alone (one lookup per part; names as the parts' var builders see them)
    /// and the parts' parameter counts, e.g. from weight file headers.
    pub fn from_shapes(
        dit: &Shapes,
        lq_proj: &Shapes,
        decoder: &Shapes,
        mode: Mode,
        text_len: usize,
        head_dim: Option<usize>,
        params: PartParams,
    ) -> Result<Self> {
        let decoder = match mode {
            Mode::Tiny | Mode::TinyLong => DecoderDims::Tiny(tc_config_from_shapes(decoder)?),
            Mode::Full => DecoderDims::Full(vae_config_from_shapes(decoder)?),
        };
        Ok(Self {
            dit: DitConfig::from_shapes(dit, head_dim)?,
            lq_proj: LqProjConfig::from_shapes(lq_proj)?,
            decoder,
            text_len,
            params,
        })
    }
}

/// The TCDecoder's [`TcConfig`] from shapes (what `TcDecoder::new` derives from the loaded layers).
pub fn tc_config_from_shapes(shape: &Shapes) -> Result<TcConfig> {
    let get = |name: &str| -> Result<Vec<usize>> {
        shape(name).ok_or_else(|| candle_core::Error::Msg(format!("cannot find tensor {name}")))
    };
    let out = |i: usize| -> Result<usize> { Ok(get(&format!("decoder.{i}.weight"))?[0]) };
    let first_in = get("decoder.1.weight")?[1];
    if first_in <= COND_CHANNELS {
        candle_core::bail!("decoder.1.weight has {first_in} input channels; expected {COND_CHANNELS} LQ + latent channels")
    }
    let mut frames_per_latent = 1;
    for i in [9, 15, 21] {
        let w = get(&format!("decoder.{i}.conv.weight"))?;
        if w.len() < 2 || w[1] == 0 || w[0] % w[1] != 0 {
            candle_core::bail!("decoder.{i}.conv.weight: unexpected shape {w:?}")
        }
        frames_per_latent *= w[0] / w[1];
    }
    Ok(TcConfig {
        channels: [out(1)?, out(10)?, out(16)?, out(22)?],
        latent_channels: first_in - COND_CHANNELS,
        frames_per_latent,
    })
}

/// The Wan VAE decoder's [`WanVaeConfig`] from shapes.
pub fn vae_config_from_shapes(shape: &Shapes) -> Result<WanVaeConfig> {
    let get = |name: &str| -> Result<Vec<usize>> {
        shape(name).ok_or_else(|| candle_core::Error::Msg(format!("cannot find tensor {name}")))
    };
    let (mut temporal_upsamples, mut spatial_factor) = (0, 1);
    for i in 0.. {
        let p = format!("decoder.upsamples.{i}");
        if shape(&format!("{p}.residual.0.gamma")).is_some() {
            continue;
        }
        if shape(&format!("{p}.resample.1.weight")).is_none() {
            break;
        }
        spatial_factor *= 2;
        temporal_upsamples += shape(&format!("{p}.time_conv.weight")).is_some() as usize;
    }
    let base = get("decoder.head.0.gamma")?;
    Ok(WanVaeConfig {
        z_dim: get("conv2.weight")?[0],
        top_dim: get("decoder.conv1.weight")?[0],
        base_dim: base[0],
        temporal_upsamples,
        spatial_factor,
    })
}

/// Constants that only a measurement gives.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Calibration {
    /// CUDA context, loaded kernel modules, cuBLAS workspaces (nvidia-smi counts them).
    pub runtime_bytes: u64,
    /// Allocator slack on top of the live tensors (pool granularity, fragmentation).
    pub slack: f64,
}

impl Calibration {
    pub fn for_device(cuda: bool) -> Self {
        if cuda {
            Self {
                runtime_bytes: 700 << 20,
                slack: 1.05,
            }
        } else {
            Self {
                runtime_bytes: 0,
                slack: 1.0,
            }
        }
    }
}

/// The knobs the planner turns (and the caller may fix).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct MemoryChoices {
    pub tile: Option<TileChoice>,
    /// Park each tile's KV cache in host memory while the other tiles run.
    pub park_kv: bool,
    /// TCDecoder latents per call (2 = a later step's 8 frames, 1 = 4 frames).
    pub decoder_latents_per_call: usize,
    /// TCDecoder tail in stripes of this many rows (of half the model height); `None`: whole.
    pub decoder_stripe_rows: Option<usize>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct TileChoice {
    pub size: usize,
    pub overlap: usize,
}

impl From<TileChoice> for TileOptions {
    fn from(t: TileChoice) -> Self {
        TileOptions {
            size: t.size,
            overlap: t.overlap,
        }
    }
}

/// One upscale to plan.
#[derive(Debug, Clone)]
pub struct PlanRequest {
    pub dims: ModelDims,
    /// Compute dtype of the DiT and the LQ projection.
    pub dtype: DType,
    pub mode: Mode,
    pub input_size: (usize, usize),
    pub scale: f64,
    pub upstream_crop: bool,
    pub kv_len: usize,
    /// How the KV rings store keys and values.
    pub kv_storage: KvStorage,
    /// A tiling the user asked for (`None`: the planner decides).
    pub tile: Option<TileChoice>,
    /// Overlap for tiles the planner picks (input pixels).
    pub tile_overlap: usize,
    /// Device memory the job may use (`None`: no limit).
    pub budget: Option<u64>,
    pub cuda: bool,
    /// The most latents per tiny-decoder call the user allows (`None`: as many as the CUDA
    /// limits allow; the planner still lowers it to fit the budget).
    pub decoder_latents: Option<usize>,
    pub calibration: Calibration,
}

/// Bytes of one stage's live activations at its largest moment (on top of weights and KV).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StageBytes {
    pub stage: &'static str,
    pub bytes: u64,
}

/// The memory of one session geometry (a whole frame or the largest tile).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SessionMemory {
    /// Model grid (multiples of 128) of the session.
    pub model_size: [usize; 2],
    /// This session's KV ring at its fullest.
    pub kv_bytes: u64,
    /// Small per-session state (LQ frames held, LQ projection and decoder caches).
    pub state_bytes: u64,
    pub stages: Vec<StageBytes>,
}

impl SessionMemory {
    pub fn largest_stage(&self) -> &StageBytes {
        self.stages
            .iter()
            .max_by_key(|s| s.bytes)
            .expect("every session has stages")
    }
}

/// The plan: the choices and what they cost.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MemoryPlan {
    pub choices: MemoryChoices,
    pub tiles: usize,
    pub output_size: [usize; 2],
    pub weights_bytes: u64,
    pub runtime_bytes: u64,
    /// KV rings resident on the device (one tile's when parked, all tiles' otherwise).
    pub kv_device_bytes: u64,
    /// KV rings parked in host memory (0 unless `park_kv`).
    pub kv_host_bytes: u64,
    /// How the rings store keys and values (`dense`: the compute dtype).
    pub kv_storage: KvStorage,
    /// Bytes copied each way per DiT step when parking (all tiles).
    pub park_bytes_per_step: u64,
    pub session: SessionMemory,
    /// The predicted device peak (what `nvidia-smi` shows for the process).
    pub peak_bytes: u64,
    /// The stage at which the peak happens.
    pub peak_stage: &'static str,
    pub budget_bytes: Option<u64>,
}

impl MemoryPlan {
    /// `weights 3.1 + KV 4.7 + decoder 2.0 + runtime 0.7 = 10.5 GiB (budget 24.0 GiB); 1 tile`.
    pub fn summary(&self) -> String {
        let g = |b: u64| format!("{:.1}", b as f64 / GIB);
        let stage = self.session.largest_stage();
        let mut s = format!(
            "predicted peak {} GiB = weights {} + KV {}{} + {} {} + state {} + runtime {}",
            g(self.peak_bytes),
            g(self.weights_bytes),
            g(self.kv_device_bytes),
            match self.kv_storage {
                KvStorage::Dense => "",
                KvStorage::Fp8 => " (fp8)",
            },
            stage.stage,
            g(stage.bytes),
            g(self.session.state_bytes * self.tiles as u64),
            g(self.runtime_bytes)
        );
        if let Some(b) = self.budget_bytes {
            s += &format!(" (budget {} GiB)", g(b));
        }
        match self.choices.tile {
            Some(t) => {
                s += &format!(
                    "; {} tiles of {} px (overlap {}), model grid {}x{} each",
                    self.tiles,
                    t.size,
                    t.overlap,
                    self.session.model_size[0],
                    self.session.model_size[1]
                );
                if self.choices.park_kv {
                    s += &format!(
                        ", KV caches parked in host memory ({} GiB, {} GiB moved each way per step)",
                        g(self.kv_host_bytes),
                        g(self.park_bytes_per_step)
                    );
                }
            }
            None => s += "; whole frame",
        }
        s += &format!(
            "; {} latent(s) per decoder call",
            self.choices.decoder_latents_per_call
        );
        if let Some(r) = self.choices.decoder_stripe_rows {
            s += &format!(", decoder tail in stripes of {} rows", 2 * r);
        }
        s
    }
}

fn dtype_bytes(d: DType) -> u64 {
    d.size_in_bytes() as u64
}

/// The decoder dtype the pipeline uses for `compute` (`Precision`).
fn tiny_decoder_dtype(compute: DType) -> DType {
    if compute == DType::BF16 {
        DType::F16
    } else {
        compute
    }
}

/// Bytes of the weights once loaded (each part in the dtype the pipeline computes it in) plus
/// the per-prompt constants (text context and every block's cross-attention K/V).
pub fn weights_bytes(dims: &ModelDims, dtype: DType) -> u64 {
    let dt = dtype_bytes(dtype);
    let p = &dims.params;
    let decoder = match dims.decoder {
        DecoderDims::Tiny(_) => p.decoder * dtype_bytes(tiny_decoder_dtype(dtype)),
        DecoderDims::Full(_) => p.decoder * 4,
    };
    let d = &dims.dit;
    let constants = (dims.text_len * d.dim * (1 + 2 * d.num_layers)) as u64 * dt;
    (p.dit + p.lq_proj + p.prompt) * dt + decoder + constants
}

/// Tokens of one latent frame at model size `h`×`w`.
fn tokens_per_latent(dit: &DitConfig, h: usize, w: usize) -> u64 {
    let (_, ph, pw) = dit.patch_size;
    ((h / 8 / ph) * (w / 8 / pw)) as u64
}

/// Segment slots of a ring that never holds a spare: the most segments kept between steps.
pub fn ring_slots(kv_len: usize) -> usize {
    // Step 0 brings 3 segments and drops one if that is more than kv_len; later steps add one
    // and drop one once over kv_len, so the count settles at max(kv_len, what step 0 kept).
    let after_step0 = if STEP0_SEGMENTS > kv_len {
        STEP0_SEGMENTS - 1
    } else {
        STEP0_SEGMENTS
    };
    kv_len.max(after_step0)
}

/// Bytes of one session's KV rings (every block, keys and values) at model size `h`×`w`,
/// stored as `storage`.
pub fn kv_bytes(
    dit: &DitConfig,
    dtype: DType,
    storage: KvStorage,
    h: usize,
    w: usize,
    kv_len: usize,
) -> u64 {
    let seg = LATENTS_PER_SEGMENT as u64 * tokens_per_latent(dit, h, w);
    dit.num_layers as u64
        * ring_slots(kv_len) as u64
        * 2
        * dit.num_heads as u64
        * seg
        * storage.row_bytes(dtype, dit.head_dim()) as u64
}

/// Live activations of one DiT step over `latents` latent frames with `cached` segments in the
/// ring (the block being computed also holds the keys/values it attends over).
fn dit_step_bytes(
    dims: &ModelDims,
    dtype: DType,
    storage: KvStorage,
    h: usize,
    w: usize,
    latents: usize,
    cached: usize,
) -> u64 {
    let d = &dims.dit;
    let dt = dtype_bytes(dtype);
    let t1 = tokens_per_latent(d, h, w);
    let n = latents as u64 * t1;
    let (dim, ffn) = (d.dim as u64, d.ffn_dim as u64);
    let nd = n * dim;
    // The residual stream: the block's input, its f32 copy and the next value (f32).
    let residual = 3 * 4 * nd;
    // Self-attention: modulated input, q/k/v before and after the window partition, RoPE's
    // f32 temporaries, the output and its reverse-partition copy; keys/values attended over.
    let new_segments = latents / LATENTS_PER_SEGMENT;
    let cached_values = cached as u64 * LATENTS_PER_SEGMENT as u64 * t1 * dim;
    let attended = if cached == 0 {
        0 // the new keys themselves
    } else {
        (cached + new_segments) as u64 * LATENTS_PER_SEGMENT as u64 * t1 * dim * dt * 2
    };
    // An fp8 ring decodes its stored values through u32 indices and two f32 temporaries.
    let attended = attended
        + match storage {
            KvStorage::Dense => 0,
            KvStorage::Fp8 => cached_values * (1 + 4 + 4 + 4),
        };
    let self_attn = 9 * nd * dt + 2 * 4 * nd + attended;
    // Cross-attention: scores [heads, N, L] in the dtype, in f32, scaled f32 and softmax f32
    // (two of the f32 alive at once), back to the dtype.
    let scores = d.num_heads as u64 * n * dims.text_len as u64;
    let cross = 2 * nd * dt + scores * (2 * 4 + dt);
    // FFN: hidden and GELU in the dtype, the modulated input's f32 temporaries.
    let ffn_live = 2 * n * ffn * dt + 2 * nd * dt + 3 * 4 * nd;
    residual + self_attn.max(cross).max(ffn_live)
}

/// Live activations of one LQ-projection call (4 input frames) and the step's token stash.
fn lq_proj_bytes(dims: &ModelDims, dtype: DType, h: usize, w: usize, latents: usize) -> u64 {
    let c = &dims.lq_proj;
    let dt = dtype_bytes(dtype);
    let (hh, ww) = ((h / 16) as u64, (w / 16) as u64);
    let hw = hh * ww;
    // The tap convolution's padded grid (rows aligned to 8) per frame.
    let grid = (hh + 3) * (ww + 2).div_ceil(8) * 8;
    // conv1: 6 frames of 768 channels in, its 4 temporal taps stacked (2 output frames);
    // conv2: 4 taps of hidden1 stacked (1 output frame). Scratch per `tap_conv`.
    let conv1 = 6 * c.in_channels as u64 * hw * dt
        + 2 * grid * (4 * c.in_channels as u64 * dt * 6 + 2 * c.hidden1 as u64 * 4);
    let conv2 = 4 * c.hidden1 as u64 * hw * dt * 2
        + grid * (4 * c.hidden1 as u64 * dt * 6 + 2 * c.hidden2 as u64 * 4);
    let stash = 2 * latents as u64 * tokens_per_latent(&dims.dit, h, w) * c.dim as u64 * dt;
    conv1.max(conv2) + stash
}

/// Scratch of one `tap_conv` call per batch item (its doc: `(kW + 3)·C_in·Hp·Wp` input-dtype
/// values plus `2·C_out·Hp·Wp` f32), 3×3 kernels.
fn tap_scratch(cin: u64, cout: u64, h: u64, w: u64, dt: u64) -> u64 {
    let (hp, wp) = (h + 3, (w + 2).div_ceil(8) * 8);
    hp * wp * (cin * dt * 6 + 2 * cout * 4)
}

/// Live bytes of `Conv2d::forward` (tap GEMMs, batch chunked to 1 GiB of scratch) over
/// `frames` items of `cin`×`h`×`w`: input, one chunk's scratch and f32 output, the outputs.
fn conv_bytes(frames: u64, cin: u64, cout: u64, h: u64, w: u64, dt: u64, k3: bool) -> u64 {
    let per_item = if k3 {
        tap_scratch(cin, cout, h, w, dt)
    } else {
        tap_scratch(cin, cout, h, w, dt) / 3
    };
    let chunk =
        ((crate::nn::conv2d::SCRATCH_BUDGET_BYTES as u64) / per_item.max(1)).clamp(1, frames);
    let input = frames * cin * h * w * dt;
    let out = frames * cout * h * w * dt;
    let parts = if chunk < frames { 2 * out } else { out };
    input + chunk * (per_item + cout * h * w * 4) + parts
}

/// Rows of context the TCDecoder's tail needs on each side of a stripe (its three 3×3 convs at
/// full resolution after a ×2 upsample: 2 rows at the tail's input resolution).
pub const TC_TAIL_HALO_ROWS: usize = 2;

/// Live activations of one TCDecoder call over `latents` latents at model size `h`×`w`, walking
/// its layers (spec §6.2): the largest moment of the layers before the tail, and of the
/// stateless full-resolution tail (from the last upsample on) run over the whole frame.
fn tc_decoder_parts(
    cfg: &TcConfig,
    dtype: DType,
    h: usize,
    w: usize,
    latents: usize,
) -> (u64, u64) {
    let dt = dtype_bytes(tiny_decoder_dtype(dtype));
    let (mut f, mut hh, mut ww) = (latents as u64, (h / 8) as u64, (w / 8) as u64);
    let mut c = (COND_CHANNELS + cfg.latent_channels) as u64;
    let t = |f: u64, c: u64, hh: u64, ww: u64| f * c * hh * ww * dt;
    let (mut head, mut tail) = (0, 0);
    // Stage openers, then per stage 3 MemBlocks, an upsample and a TGrow (strides 1, 2, 2).
    let strides = [1u64, 2, 2];
    for (stage, &width) in cfg.channels.iter().enumerate() {
        let width = width as u64;
        if stage == 3 {
            // Full-resolution tail: conv, relu, conv, relu, conv → 3 channels.
            tail = tail.max(conv_bytes(f, c, width, hh, ww, dt, true) + t(f, c, hh, ww));
            break;
        }
        // Opening conv(s) (stage 0: conv, relu, conv, relu).
        head = head.max(conv_bytes(f, c, width, hh, ww, dt, true));
        c = width;
        if stage == 0 {
            head = head.max(conv_bytes(f, c, c, hh, ww, dt, true));
        }
        // A MemBlock: the input, the past frames, their concatenation, conv over 2C.
        let mem = 2 * t(f, c, hh, ww) + conv_bytes(f, 2 * c, c, hh, ww, dt, true);
        head = head.max(mem);
        // Upsample ×2 then TGrow (1×1 conv to stride·C, reshaped to stride× the frames).
        let up = t(f, c, hh, ww) + t(f, c, 2 * hh, 2 * ww);
        let s = strides[stage];
        let grow = conv_bytes(f, c, s * c, 2 * hh, 2 * ww, dt, false);
        if stage == 2 {
            tail = tail.max(up).max(grow);
        } else {
            head = head.max(up).max(grow);
        }
        hh *= 2;
        ww *= 2;
        f *= s;
    }
    // The output [1, 3, frames, H, W], mapped to [-1, 1] (two copies).
    let out = 2 * t(f, 3, hh, ww);
    (head + out, tail + out)
}

/// One TCDecoder call with its tail in stripes of `stripe_rows` rows of the tail's input
/// (`h/2`; `None` = whole frame): the tail's activations scale with the stripe and its halo.
fn tc_decoder_bytes(
    cfg: &TcConfig,
    dtype: DType,
    h: usize,
    w: usize,
    latents: usize,
    stripe_rows: Option<usize>,
) -> u64 {
    let (head, tail) = tc_decoder_parts(cfg, dtype, h, w, latents);
    let rows = (h / 2) as u64;
    let tail = match stripe_rows {
        Some(r) if (r as u64) < rows => {
            let r = r as u64;
            let span = (r + 2 * TC_TAIL_HALO_ROWS as u64).min(rows);
            // The stripes' outputs and their concatenation are full size (3 channels, small).
            tail * span / rows + tc_output_bytes(dtype, h, w, latents)
        }
        _ => tail,
    };
    head.max(tail)
}

fn tc_output_bytes(dtype: DType, h: usize, w: usize, latents: usize) -> u64 {
    2 * (4 * latents * 3 * h * w) as u64 * dtype_bytes(tiny_decoder_dtype(dtype))
}

/// The stripe height (rows of the tail's input, `h/2`) that brings the tail down to the rest of
/// the decoder, or `None` when the tail is not the largest part.
pub fn tc_stripe_rows(
    cfg: &TcConfig,
    dtype: DType,
    h: usize,
    w: usize,
    latents: usize,
) -> Option<usize> {
    let (head, tail) = tc_decoder_parts(cfg, dtype, h, w, latents);
    let rows = (h / 2) as u64;
    if tail <= head {
        return None;
    }
    let span = rows * head / tail;
    let r = span.saturating_sub(2 * TC_TAIL_HALO_ROWS as u64).max(8);
    (r < rows).then_some(r as usize)
}

/// Live activations of one Wan VAE call (one latent, 4 frames) and its causal caches: the
/// full-resolution stage dominates (96-wide f32 frames, 3 stacked temporal taps, the tap-conv
/// scratch); the caches keep 2 frames per causal conv at every resolution.
fn vae_decoder_bytes(cfg: &WanVaeConfig, h: usize, w: usize) -> (u64, u64) {
    let px = (h * w) as u64;
    let frames = 1u64 << cfg.temporal_upsamples;
    let base = cfg.base_dim as u64;
    let x = frames * base * px * 4;
    // Input, the stacked taps (3×), residual and skip, the chunked conv output and its parts.
    let call = 8 * x + tap_scratch(3 * base, base, h as u64, w as u64, 4);
    // Causal caches: 2 frames per conv; stages at 1, 1/2, 1/4, 1/8 resolution of 2·base,
    // 2·base, 4·base, 4·base channels (Wan2.1: 96/192/384/384), 7 convs each.
    let cache = 2 * 4 * 7 * px * (base + 2 * base / 4 + 4 * base / 16 + 4 * base / 64);
    (call, cache)
}

/// The colour fix and 8-bit conversion of `frames` frames (f32 temporaries of the decoded and
/// the reference video).
fn color_fix_bytes(frames: usize, h: usize, w: usize, dtype: DType) -> u64 {
    let px = (h * w * 3 * frames) as u64;
    px * (4 * 4 + 2 * dtype_bytes(dtype) + 1)
}

/// The memory of one session of `req` at model size `h`×`w` with the decoder chunking of
/// `choices`.
pub fn session_memory(
    req: &PlanRequest,
    h: usize,
    w: usize,
    choices: &MemoryChoices,
) -> SessionMemory {
    let (dims, dtype, kv_storage, kv_len) = (&req.dims, req.dtype, req.kv_storage, req.kv_len);
    let (decoder_latents_per_call, stripe_rows) = (
        choices.decoder_latents_per_call,
        choices.decoder_stripe_rows,
    );
    let kv = kv_bytes(&dims.dit, dtype, kv_storage, h, w, kv_len);
    let cached = ring_slots(kv_len);
    let (decoder, cache) = match &dims.decoder {
        DecoderDims::Tiny(cfg) => {
            // Outputs of the step's earlier calls wait for the concatenation.
            let dt = dtype_bytes(tiny_decoder_dtype(dtype));
            let outputs = 2 * (STEP0_FRAMES * 3 * h * w) as u64 * dt;
            (
                tc_decoder_bytes(cfg, dtype, h, w, decoder_latents_per_call, stripe_rows) + outputs,
                0,
            )
        }
        DecoderDims::Full(cfg) => vae_decoder_bytes(cfg, h, w),
    };
    // LQ frames held (u8) and the step's LQ video in the dtype (decoder condition, colour ref).
    let lq_held = (LQ_FRAMES_HELD * 3 * h * w) as u64;
    let lq_video = (STEP0_FRAMES * 3 * h * w) as u64 * dtype_bytes(dtype);
    let stages = vec![
        StageBytes {
            stage: "LQ projection",
            bytes: lq_proj_bytes(dims, dtype, h, w, STEP0_LATENTS),
        },
        StageBytes {
            stage: "DiT step 0",
            bytes: dit_step_bytes(dims, dtype, kv_storage, h, w, STEP0_LATENTS, 0),
        },
        StageBytes {
            stage: "DiT step",
            bytes: dit_step_bytes(dims, dtype, kv_storage, h, w, STEADY_LATENTS, cached),
        },
        StageBytes {
            stage: "decoder",
            bytes: decoder + lq_video,
        },
        StageBytes {
            stage: "colour fix",
            bytes: color_fix_bytes(STEP0_FRAMES, h, w, dtype) + lq_video,
        },
    ];
    SessionMemory {
        model_size: [w, h],
        kv_bytes: kv,
        state_bytes: lq_held + cache,
        stages,
    }
}

/// The geometry of a job with `choices`: (model grid of the largest session, sessions).
fn geometry(
    req: &PlanRequest,
    tile: Option<TileChoice>,
) -> Result<(usize, usize, usize, [usize; 2])> {
    let rule = if req.upstream_crop {
        SizeRule::UpstreamCrop
    } else {
        SizeRule::PadToGrid
    };
    let (iw, ih) = req.input_size;
    let whole = FrameGeometry::new(iw, ih, req.scale, rule)?;
    let out = [whole.out_w, whole.out_h];
    let tile = tile.filter(|t| t.size < iw.max(ih));
    let Some(t) = tile else {
        return Ok((whole.model_h, whole.model_w, 1, out));
    };
    let scale = req.scale;
    let out_len = |n: usize| (n as f64 * scale).round_ties_even() as usize;
    let grid = tile_grid(iw, ih, t.size, t.overlap, out_len);
    let (mut mh, mut mw) = (0, 0);
    for tile in &grid {
        let g = FrameGeometry::new(tile.w, tile.h, scale, rule)?;
        mh = mh.max(g.model_h);
        mw = mw.max(g.model_w);
    }
    Ok((mh, mw, grid.len(), out))
}

/// The memory of a job with fixed choices.
pub fn estimate(req: &PlanRequest, choices: MemoryChoices) -> Result<MemoryPlan> {
    let (h, w, tiles, out) = geometry(req, choices.tile)?;
    let tiled = tiles > 1;
    let choices = MemoryChoices {
        tile: choices.tile.filter(|_| tiled),
        park_kv: choices.park_kv && tiled,
        ..choices
    };
    let session = session_memory(req, h, w, &choices);
    let weights = weights_bytes(&req.dims, req.dtype);
    let (kv_device, kv_host) = if choices.park_kv {
        (session.kv_bytes, session.kv_bytes * (tiles as u64 - 1))
    } else {
        (session.kv_bytes * tiles as u64, 0)
    };
    let park_bytes_per_step = if choices.park_kv {
        session.kv_bytes * tiles as u64
    } else {
        0
    };
    let stage = session.largest_stage().clone();
    let live = weights + kv_device + session.state_bytes * tiles as u64 + stage.bytes;
    let cal = req.calibration;
    let peak = (live as f64 * cal.slack) as u64 + cal.runtime_bytes;
    Ok(MemoryPlan {
        choices,
        tiles,
        output_size: out,
        weights_bytes: weights,
        runtime_bytes: cal.runtime_bytes,
        kv_device_bytes: kv_device,
        kv_host_bytes: kv_host,
        kv_storage: req.kv_storage,
        park_bytes_per_step,
        session,
        peak_bytes: peak,
        peak_stage: stage.stage,
        budget_bytes: req.budget,
    })
}

/// Tile sizes (input pixels) the planner tries, largest first.
const TILE_SIZES: [usize; 16] = [
    1920, 1536, 1280, 1024, 960, 768, 640, 512, 480, 384, 320, 256, 224, 192, 160, 128,
];

/// Latents per decoder call that the CUDA element limit allows at model size `h`×`w` (2 or 1).
fn max_latents_per_call(req: &PlanRequest, h: usize, w: usize) -> Result<usize> {
    match &req.dims.decoder {
        DecoderDims::Tiny(cfg) => cuda_limits::tc_latents_per_call(cfg, h, w, req.cuda),
        DecoderDims::Full(cfg) => cuda_limits::check_vae(cfg, h, w, req.cuda).map(|_| 1),
    }
}

/// The choices that fit `req.budget`, in order of preference (see the module doc), or an error
/// with the numbers of the smallest configuration tried.
pub fn plan(req: &PlanRequest) -> Result<MemoryPlan> {
    let mut candidates: Vec<Option<TileChoice>> = Vec::new();
    match req.tile {
        Some(t) => candidates.push(Some(t)),
        None => {
            candidates.push(None);
            let (iw, ih) = req.input_size;
            candidates.extend(
                TILE_SIZES
                    .iter()
                    .filter(|&&s| s < iw.max(ih) && s > 2 * req.tile_overlap)
                    .map(|&size| {
                        Some(TileChoice {
                            size,
                            overlap: req.tile_overlap,
                        })
                    }),
            );
        }
    }
    let fits = |p: &MemoryPlan| req.budget.is_none_or(|b| p.peak_bytes <= b);
    let mut smallest: Option<MemoryPlan> = None;
    let mut limit_error = None;
    for tile in candidates {
        let (h, w, tiles, _) = geometry(req, tile)?;
        let max_lat = match max_latents_per_call(req, h, w) {
            Ok(n) => req.decoder_latents.map_or(n, |cap| n.min(cap.max(1))),
            Err(e) => {
                limit_error.get_or_insert(e);
                continue;
            }
        };
        let mut options = vec![];
        for lat in (1..=max_lat).rev() {
            options.push((false, lat));
        }
        if tiles > 1 {
            for lat in (1..=max_lat).rev() {
                options.push((true, lat));
            }
        }
        // The decoder's tail in stripes only where the whole frame does not fit: the
        // whole-frame tail is the faster one (on CUDA the channels-last TCDecoder has no stripes).
        let mut configs = vec![];
        for (park_kv, lat) in options {
            configs.push((park_kv, lat, None));
            let stripes = match &req.dims.decoder {
                DecoderDims::Tiny(cfg) => tc_stripe_rows(cfg, req.dtype, h, w, lat),
                DecoderDims::Full(_) => None,
            };
            if stripes.is_some() {
                configs.push((park_kv, lat, stripes));
            }
        }
        for (park_kv, lat, stripes) in configs {
            let p = estimate(
                req,
                MemoryChoices {
                    tile,
                    park_kv,
                    decoder_latents_per_call: lat,
                    decoder_stripe_rows: stripes,
                },
            )?;
            if fits(&p) {
                return Ok(p);
            }
            if smallest
                .as_ref()
                .is_none_or(|s| p.peak_bytes < s.peak_bytes)
            {
                smallest = Some(p);
            }
        }
    }
    match smallest {
        Some(p) => {
            let budget = req.budget.map(|b| b as f64 / GIB).unwrap_or(f64::INFINITY);
            candle_core::bail!(
                "the job needs more device memory than the {budget:.1} GiB budget in every configuration tried; the smallest: {}",
                p.summary()
            )
        }
        None => Err(limit_error
            .unwrap_or_else(|| candle_core::Error::Msg("no configuration to plan".into()))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tc() -> TcConfig {
        TcConfig {
            channels: [512, 256, 128, 128],
            latent_channels: 16,
            frames_per_latent: 4,
        }
    }

    fn real_dims(decoder: DecoderDims) -> ModelDims {
        ModelDims {
            dit: DitConfig::wan_1_3b(),
            lq_proj: LqProjConfig::flashvsr(),
            decoder,
            text_len: 512,
            params: PartParams {
                dit: 1_418_996_800 - 287_000_000,
                lq_proj: 287_000_000,
                decoder: 20_000_000,
                prompt: 512 * 4096,
            },
        }
    }

    fn request(w: usize, h: usize) -> PlanRequest {
        PlanRequest {
            dims: real_dims(DecoderDims::Tiny(tc())),
            dtype: DType::BF16,
            mode: Mode::Tiny,
            input_size: (w / 4, h / 4),
            scale: 4.0,
            upstream_crop: false,
            kv_len: 3,
            kv_storage: KvStorage::Dense,
            tile: None,
            tile_overlap: 32,
            budget: None,
            cuda: true,
            decoder_latents: None,
            calibration: Calibration::for_device(true),
        }
    }

    #[test]
    fn kv_ring_counted_by_hand() {
        // 768x1408: 48x88 tokens per latent, segments of 2 latents = 8448 tokens; 3 slots of
        // K and V, 1536 wide, bf16, 30 blocks: 30 · 3 · 2 · 1536 · 8448 · 2 bytes.
        let cfg = DitConfig::wan_1_3b();
        assert_eq!(
            kv_bytes(&cfg, DType::BF16, KvStorage::Dense, 768, 1408, 3),
            30 * 3 * 2 * 1536 * 8448 * 2
        );
        // fp8: one byte per value plus an f32 scale per (head, token) row of 128.
        assert_eq!(
            kv_bytes(&cfg, DType::BF16, KvStorage::Fp8, 768, 1408, 3),
            30 * 3 * 2 * 12 * 8448 * (128 + 4)
        );
        // (the ring the previous code kept had a 4th slot)
        assert_eq!(ring_slots(3), 3);
        assert_eq!(ring_slots(0), 2);
        assert_eq!(ring_slots(1), 2);
        assert_eq!(ring_slots(2), 2);
        assert_eq!(ring_slots(5), 5);
    }

    #[test]
    fn kv_ring_slots_match_the_cache_rule() {
        // Replay the eviction rule (step 0 adds 3, later steps 1; drop one when over kv_len).
        for kv_len in 0..8 {
            let (mut held, mut most) = (0usize, 0usize);
            for step in 0..10 {
                held += if step == 0 { 3 } else { 1 };
                if held > kv_len {
                    held -= 1;
                }
                most = most.max(held);
            }
            assert_eq!(ring_slots(kv_len), most, "kv_len {kv_len}");
        }
    }

    #[test]
    fn weights_counted_by_hand() {
        let dims = real_dims(DecoderDims::Tiny(tc()));
        let consts = 512 * 1536 * 61 * 2;
        let want = (1_418_996_800u64 + 512 * 4096) * 2 + 20_000_000 * 2 + consts;
        assert_eq!(weights_bytes(&dims, DType::BF16), want);
        let full = real_dims(DecoderDims::Full(WanVaeConfig {
            z_dim: 16,
            top_dim: 384,
            base_dim: 96,
            temporal_upsamples: 2,
            spatial_factor: 8,
        }));
        // The VAE stays f32 whatever the compute dtype.
        assert_eq!(
            weights_bytes(&full, DType::BF16),
            want - 20_000_000 * 2 + 20_000_000 * 4
        );
    }

    #[test]
    fn dit_cross_attention_scores_counted_by_hand() {
        // At step 0 of 768x1408 the f32 cross-attention scores dominate the DiT: 12 heads ×
        // 25344 tokens × 512 prompt tokens, two f32 copies and one bf16.
        let dims = real_dims(DecoderDims::Tiny(tc()));
        let n = 6 * 48 * 88u64;
        let nd = n * 1536;
        let cross = 2 * nd * 2 + 12 * n * 512 * (8 + 2);
        let residual = 12 * nd;
        assert_eq!(
            dit_step_bytes(&dims, DType::BF16, KvStorage::Dense, 768, 1408, 6, 0),
            residual + cross
        );
    }

    #[test]
    fn tiny_decoder_full_resolution_tail_counted_by_hand() {
        // One latent at 128x128 output (4 frames): the last stage's conv 128→128 at 128x128.
        // Tap scratch per frame: (128+3)·(136 rounded to 136)·(128·2·6 + 2·128·4).
        let per_item = 131 * 136 * (128 * 2 * 6 + 2 * 128 * 4);
        assert_eq!(tap_scratch(128, 128, 128, 128, 2), per_item);
        let frame = 128 * 128 * 128 * 2;
        // 4 frames per chunk fit the 1 GiB budget: input + 4 × (scratch + f32 out) + output.
        let conv = 4 * frame + 4 * (per_item + 128 * 128 * 128 * 4) + 4 * frame;
        assert_eq!(conv_bytes(4, 128, 128, 128, 128, 2, true), conv);
    }

    #[test]
    fn untiled_when_no_budget_and_tiles_under_a_small_one() -> Result<()> {
        let req = request(1408, 768);
        let p = plan(&req)?;
        assert_eq!(p.tiles, 1);
        assert_eq!(p.choices.decoder_latents_per_call, 2);
        assert!(!p.choices.park_kv);
        let whole = p.peak_bytes;
        // A budget just under the untiled peak: first one latent per decoder call.
        let mut req2 = request(1408, 768);
        req2.budget = Some(whole - 1);
        let p2 = plan(&req2)?;
        assert!(p2.peak_bytes <= whole - 1);
        // 8 GiB at 1920x1080: tiles with parked KV.
        let mut req3 = request(1920, 1080);
        req3.budget = Some(8 << 30);
        let p3 = plan(&req3)?;
        assert!(p3.tiles > 1 && p3.choices.park_kv, "{}", p3.summary());
        assert!(p3.peak_bytes <= 8 << 30);
        assert_eq!(
            p3.kv_host_bytes,
            p3.session.kv_bytes * (p3.tiles as u64 - 1)
        );
        Ok(())
    }

    #[test]
    fn refuses_with_the_numbers_when_nothing_fits() {
        let mut req = request(1408, 768);
        req.budget = Some(1 << 30); // less than the weights
        let err = plan(&req).unwrap_err().to_string();
        assert!(
            err.contains("1.0 GiB budget") && err.contains("weights"),
            "{err}"
        );
    }

    #[test]
    fn parking_keeps_one_tiles_kv_on_the_device() -> Result<()> {
        let mut req = request(3840, 2160);
        req.tile = Some(TileChoice {
            size: 480,
            overlap: 32,
        });
        let parked = estimate(
            &req,
            MemoryChoices {
                tile: req.tile,
                park_kv: true,
                decoder_latents_per_call: 1,
                decoder_stripe_rows: None,
            },
        )?;
        let resident = estimate(
            &req,
            MemoryChoices {
                tile: req.tile,
                park_kv: false,
                decoder_latents_per_call: 1,
                decoder_stripe_rows: None,
            },
        )?;
        // 960x540 input in 480-px tiles overlapping by 32: 3 columns × 2 rows.
        assert_eq!(parked.tiles, 6);
        assert_eq!(parked.kv_device_bytes * 6, resident.kv_device_bytes);
        // The difference is the 5 other tiles' KV rings (times the allocator slack).
        let diff = resident.peak_bytes - parked.peak_bytes;
        let want = (5 * parked.kv_device_bytes) as f64 * req.calibration.slack;
        assert!((diff as f64 - want).abs() < 4.0, "{diff} vs {want}");
        assert_eq!(parked.park_bytes_per_step, 6 * parked.kv_device_bytes);
        assert!(parked.peak_bytes < resident.peak_bytes);
        Ok(())
    }

    #[test]
    fn fp8_kv_shrinks_the_ring_in_the_plan() -> Result<()> {
        let dense = plan(&request(1408, 768))?;
        let fp8 = plan(&PlanRequest {
            kv_storage: KvStorage::Fp8,
            ..request(1408, 768)
        })?;
        // bf16 rows of 128 values: 256 bytes; fp8: 128 + a 4-byte scale.
        assert_eq!(fp8.kv_device_bytes * 256, dense.kv_device_bytes * 132);
        assert!(fp8.peak_bytes < dense.peak_bytes);
        assert!(fp8.summary().contains("(fp8)"), "{}", fp8.summary());
        Ok(())
    }

    #[test]
    fn decoder_latents_caps_the_planned_chunking() -> Result<()> {
        let free = plan(&request(1408, 768))?;
        assert_eq!(free.choices.decoder_latents_per_call, 2);
        let capped = plan(&PlanRequest {
            decoder_latents: Some(1),
            ..request(1408, 768)
        })?;
        assert_eq!(capped.choices.decoder_latents_per_call, 1);
        assert!(capped.peak_bytes < free.peak_bytes);
        Ok(())
    }
}
