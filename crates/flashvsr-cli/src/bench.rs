//! `flashvsr bench`: the pipeline on synthetic weights (built in memory, see `synth`) and a
//! synthetic moving clip, reporting speed per stage and peak memory.

use std::collections::HashMap;
use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};
use candle_core::Device;
use candle_nn::VarBuilder;
use flashvsr_model::pipeline::{FlashVsr, ModelComponents, ModelVersion, UpscaleOptions};
use flashvsr_video::RgbFrame;
use serde::Serialize;

use crate::args::checked_output_size;
use crate::devices;
use crate::progress::{self, Progress};
use crate::summary::{self, StageTimes};
use crate::weights::quantized::QuantizedDit;
use crate::weights::Role;
use crate::{memory, BenchArgs, DimsArg, VersionArg};

#[derive(Serialize)]
struct BenchReport {
    command: &'static str,
    dims: String,
    mode: String,
    device: String,
    dtype: &'static str,
    /// The DiT's linear weights kept quantized in this type (`--quantize-dit`).
    #[serde(skip_serializing_if = "Option::is_none")]
    quantize_dit: Option<&'static str>,
    /// `--kv-cache`: dense or fp8.
    kv_cache: flashvsr_model::pipeline::KvStorage,
    /// Bytes of the DiT blocks' linear weights on the device, as loaded.
    dit_linear_weight_bytes: u64,
    input_size: [usize; 2],
    output_size: [usize; 2],
    input_frames: u64,
    output_frames: u64,
    weights_build_s: f64,
    model_load_s: f64,
    run_s: f64,
    fps: f64,
    stages_s: StageTimes,
    peak_ram_bytes: Option<u64>,
    peak_vram_bytes: Option<u64>,
    /// The allocator pool's high-water mark per stage (CUDA): live tensors, no runtime.
    stage_peak_vram_bytes: std::collections::BTreeMap<&'static str, u64>,
    /// The most the pool reserved from the device (free blocks included; CUDA).
    pool_reserved_high_bytes: Option<u64>,
    tiles: usize,
    kv_park_s: f64,
    memory_plan: flashvsr_model::memory_plan::MemoryPlan,
}

/// A synthetic input frame: moving gradients and a bright square (RGB24).
fn frame(w: usize, h: usize, t: usize) -> RgbFrame {
    let mut v = Vec::with_capacity(w * h * 3);
    for y in 0..h {
        for x in 0..w {
            let inside = (x + 2 * t) % w < w / 4 && (y + t) % h < h / 4;
            v.push(if inside {
                240
            } else {
                ((x * 255) / w.max(1)) as u8
            });
            v.push(((y * 255) / h.max(1)) as u8);
            v.push(((x + y + 3 * t) % 256) as u8);
        }
    }
    RgbFrame {
        width: w,
        height: h,
        data: v,
    }
}

/// `--dims` as given, else real on GPUs and small on the CPU, where real dims take minutes
/// (said up front either way).
fn dims_for(args: &BenchArgs, device: &Device, quiet: bool) -> DimsArg {
    let cpu = device.is_cpu();
    let dims = args
        .dims
        .unwrap_or(if cpu { DimsArg::Small } else { DimsArg::Real });
    if cpu && !quiet {
        match args.dims {
            None => eprintln!(
                "note: bench on the CPU uses --dims small (reduced widths); the real dims (1.4 B parameters) take minutes here: pass --dims real to measure them"
            ),
            Some(DimsArg::Real) => eprintln!(
                "note: real dims on the CPU take minutes (~40 s to build the 1.4 B random weights, then minutes per step); --dims small is quick"
            ),
            Some(DimsArg::Small) => {}
        }
    }
    dims
}

pub fn run(args: &BenchArgs, quiet: bool) -> Result<()> {
    let device = devices::open(args.device)?;
    let dtype = args
        .dtype
        .map(Into::into)
        .unwrap_or_else(|| devices::default_dtype(&device));
    let (ow, oh) = args.size;
    let iw = ((ow as f64 / args.scale).round() as usize).max(1);
    let ih = ((oh as f64 / args.scale).round() as usize).max(1);
    checked_output_size(iw, ih, args.scale)?;
    let dims = dims_for(args, &device, quiet);
    let small = dims.is_small();
    let full = args.mode.is_full();
    let frames = args.frames;

    // The memory plan from the synthetic layouts (nothing built yet).
    let shapes = |role: Role| -> Result<memory::PartShapes> {
        Ok(memory::PartShapes::new(crate::synth::layout_of(
            role,
            VersionArg::V1_1,
            small,
        )?))
    };
    let decoder_role = if full { Role::Vae } else { Role::TcDecoder };
    let model_dims = memory::dims_from_parts(
        &shapes(Role::Dit)?,
        &shapes(Role::LqProj)?,
        &shapes(decoder_role)?,
        &shapes(Role::Prompt)?,
        args.mode.into(),
        None,
    )?;
    let job = memory::Job {
        dtype,
        mode: args.mode.into(),
        input_size: (iw, ih),
        scale: args.scale,
        upstream_crop: false,
        kv_ratio: UpscaleOptions::default().kv_ratio,
        kv_storage: args.memory.kv_cache.into(),
        tile: args.tile.map(|t| (t, args.tile_overlap)),
        tile_overlap: args.tile_overlap,
        budget: memory::budget(args.memory.max_vram, &device),
        decoder_latents: args.memory.decoder_latents.map(|n| n as usize),
        cuda: device.is_cuda(),
    };
    let plan = memory::plan(model_dims, &job)?;
    if args.memory.plan {
        return memory::print_plan(&plan, args.json);
    }

    let t0 = Instant::now();
    let mut dit_quantized = None;
    let mut vb = |role: Role| -> Result<VarBuilder<'static>> {
        let tensors = crate::synth::synth_part(role, VersionArg::V1_1, small, 0)?;
        let map: HashMap<String, candle_core::Tensor> = tensors.into_iter().collect();
        if let (Role::Dit, Some(q)) = (role, args.quantize_dit) {
            let quantized = QuantizedDit::from_tensors(&map, q)?;
            dit_quantized = Some(crate::weights::quantized::shared(quantized));
        }
        Ok(VarBuilder::from_tensors(map, dtype, &device))
    };
    let prompt = crate::synth::synth_part(Role::Prompt, VersionArg::V1_1, small, 0)?
        .into_iter()
        .next()
        .ok_or_else(|| anyhow!("empty prompt layout"))?
        .1;
    let components = ModelComponents {
        dit: vb(Role::Dit)?,
        lq_proj: vb(Role::LqProj)?,
        tc_decoder: if full {
            None
        } else {
            Some(vb(Role::TcDecoder)?)
        },
        vae: if full { Some(vb(Role::Vae)?) } else { None },
        prompt,
        head_dim: None,
        dit_quantized,
    };
    let weights_build_s = t0.elapsed().as_secs_f64();

    let t1 = Instant::now();
    let model = FlashVsr::load(components, ModelVersion::V1_1, &device, dtype)
        .context("cannot build the model")?;
    let model_load_s = t1.elapsed().as_secs_f64();
    let dit_linear_bytes = model.dit_linear_bytes();

    let opts = UpscaleOptions {
        scale: args.scale,
        mode: args.mode.into(),
        tile: plan.choices.tile.map(Into::into),
        park_kv: plan.choices.park_kv,
        kv_storage: args.memory.kv_cache.into(),
        decoder_latents_per_call: Some(plan.choices.decoder_latents_per_call),
        decoder_stripe_rows: plan.choices.decoder_stripe_rows,
        ..UpscaleOptions::default()
    };
    let mut session = model.session(iw, ih, &opts)?;
    let out_size = session.output_size();
    let clip: Vec<RgbFrame> = (0..frames.min(16) as usize)
        .map(|t| frame(iw, ih, t))
        .collect();
    let mut progress = Progress::frames("bench", Some(frames), quiet || args.json);
    let mut out_frames = 0u64;
    let mut peak_vram = devices::device_memory_used(&device);
    let t2 = Instant::now();
    for t in 0..frames as usize {
        if crate::interrupt::requested() {
            bail!(crate::interrupt::Interrupted);
        }
        out_frames += session.push_frame(&clip[t % clip.len()])?.len() as u64;
        progress.set_position(t as u64 + 1);
        peak_vram = peak_vram.max(devices::device_memory_used(&device));
    }
    out_frames += session.finish()?.len() as u64;
    let run_s = t2.elapsed().as_secs_f64();
    progress.finish();
    let s = session.stats();
    let report = BenchReport {
        command: "bench",
        dims: dims.as_str().into(),
        mode: args.mode.as_str().into(),
        device: devices::describe(&device),
        dtype: summary::dtype_name(dtype),
        quantize_dit: args.quantize_dit.map(|q| q.name()),
        kv_cache: args.memory.kv_cache.into(),
        dit_linear_weight_bytes: dit_linear_bytes as u64,
        input_size: [iw, ih],
        output_size: [out_size.0, out_size.1],
        input_frames: frames,
        output_frames: out_frames,
        weights_build_s,
        model_load_s,
        run_s,
        fps: out_frames as f64 / run_s.max(1e-9),
        stages_s: StageTimes {
            load_weights: weights_build_s + model_load_s,
            preprocess: s.preprocess_s,
            lq_proj: s.lq_proj_s,
            dit: s.dit_s,
            decode: s.decode_s,
            color_fix: s.color_fix_s,
        },
        peak_ram_bytes: summary::peak_rss_bytes(),
        peak_vram_bytes: peak_vram,
        stage_peak_vram_bytes: s.stage_peak_bytes.clone(),
        pool_reserved_high_bytes: flashvsr_model::device_memory::pool_reserved_high(&device),
        tiles: session.tiles(),
        kv_park_s: s.kv_park_s,
        memory_plan: plan,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "{} dims, {} mode, {} {}: {}x{} → {}x{}, {} in {:.2} s = {}",
            report.dims,
            report.mode,
            report.device,
            report.dtype,
            iw,
            ih,
            out_size.0,
            out_size.1,
            progress::frames(out_frames),
            run_s,
            progress::format_rate(report.fps, "fps")
        );
        let st = &report.stages_s;
        println!(
            "stages (s): preprocess {:.2}, lq_proj {:.2}, dit {:.2}, decode {:.2}, color_fix {:.2}; weights {:.2}",
            st.preprocess, st.lq_proj, st.dit, st.decode, st.color_fix, st.load_weights
        );
        println!(
            "peak RAM {}{}",
            report
                .peak_ram_bytes
                .map(summary::format_bytes)
                .unwrap_or_else(|| "n/a".into()),
            report
                .peak_vram_bytes
                .map(|b| format!(", device memory {}", summary::format_bytes(b)))
                .unwrap_or_default()
        );
        let pool_peak = report.stage_peak_vram_bytes.values().max().copied();
        println!(
            "memory: planned peak {}{}; {} tile(s){}",
            summary::format_bytes(report.memory_plan.peak_bytes),
            pool_peak
                .map(|b| format!(
                    ", measured pool peak {} (+ runtime)",
                    summary::format_bytes(b)
                ))
                .unwrap_or_default(),
            report.tiles,
            if report.kv_park_s > 0.0 {
                format!(", KV parking {:.2} s", report.kv_park_s)
            } else {
                String::new()
            }
        );
        println!("weights are random: this measures speed and memory only");
    }
    Ok(())
}
