//! `flashvsr bench`: the pipeline on synthetic weights (built in memory, see `synth`) and a
//! synthetic moving clip, reporting speed per stage and peak memory.

use std::collections::HashMap;
use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};
use candle_nn::VarBuilder;
use clap::Args;
use flashvsr_model::pipeline::{FlashVsr, Mode, ModelComponents, ModelVersion, UpscaleOptions};
use flashvsr_video::RgbFrame;
use serde::Serialize;

use crate::devices::{self, DeviceChoice};
use crate::progress::Progress;
use crate::summary::{self, StageTimes};
use crate::weights::Role;
use crate::{DTypeArg, ModeArg, VersionArg};

#[derive(Args, Debug, Clone)]
pub struct BenchArgs {
    /// Output size WxH (the input is this divided by --scale).
    #[arg(long, default_value = "512x512", value_parser = parse_size)]
    pub size: (usize, usize),
    /// Input frames.
    #[arg(long, default_value = "25")]
    pub frames: usize,
    #[arg(long, default_value = "4", value_parser = crate::parse_scale)]
    pub scale: f64,
    #[arg(long, value_enum, default_value = "tiny")]
    pub mode: ModeArg,
    /// real: the shipped model sizes (needs ~6 GB of memory); small: reduced widths (quick).
    #[arg(long, default_value = "real", value_parser = ["real", "small"])]
    pub dims: String,
    #[arg(long, default_value = "auto")]
    pub device: DeviceChoice,
    #[arg(long, value_enum)]
    pub dtype: Option<DTypeArg>,
    #[arg(long)]
    pub json: bool,
}

fn parse_size(s: &str) -> Result<(usize, usize), String> {
    let (w, h) = s
        .split_once(['x', 'X'])
        .ok_or_else(|| format!("size {s:?} must be WxH, e.g. 512x512"))?;
    let w: usize = w
        .trim()
        .parse()
        .map_err(|_| format!("bad width in {s:?}"))?;
    let h: usize = h
        .trim()
        .parse()
        .map_err(|_| format!("bad height in {s:?}"))?;
    if w < 8 || h < 8 {
        return Err(format!("size {s:?} is too small"));
    }
    Ok((w, h))
}

#[derive(Serialize)]
struct BenchReport {
    command: &'static str,
    dims: String,
    mode: String,
    device: String,
    dtype: &'static str,
    input_size: [usize; 2],
    output_size: [usize; 2],
    input_frames: usize,
    output_frames: usize,
    weights_build_s: f64,
    model_load_s: f64,
    run_s: f64,
    fps: f64,
    stages_s: StageTimes,
    peak_ram_bytes: Option<u64>,
    peak_vram_bytes: Option<u64>,
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

pub fn run(args: &BenchArgs, quiet: bool) -> Result<()> {
    if args.frames == 0 {
        bail!("--frames must be at least 1");
    }
    let device = devices::open(args.device)?;
    let dtype = args
        .dtype
        .map(|d| d.dtype())
        .unwrap_or_else(|| devices::default_dtype(&device));
    let small = args.dims == "small";
    let full = args.mode == ModeArg::Full;

    let t0 = Instant::now();
    let vb = |role: Role| -> Result<VarBuilder<'static>> {
        let tensors = crate::synth::synth_part(role, VersionArg::V1_1, small, 0)?;
        let map: HashMap<String, candle_core::Tensor> = tensors.into_iter().collect();
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
    };
    let weights_build_s = t0.elapsed().as_secs_f64();

    let t1 = Instant::now();
    let model = FlashVsr::load(components, ModelVersion::V1_1, &device, dtype)
        .context("cannot build the model")?;
    let model_load_s = t1.elapsed().as_secs_f64();

    let (ow, oh) = args.size;
    let iw = ((ow as f64 / args.scale).round() as usize).max(1);
    let ih = ((oh as f64 / args.scale).round() as usize).max(1);
    let opts = UpscaleOptions {
        scale: args.scale,
        mode: match args.mode {
            ModeArg::Tiny => Mode::Tiny,
            ModeArg::TinyLong => Mode::TinyLong,
            ModeArg::Full => Mode::Full,
        },
        ..UpscaleOptions::default()
    };
    let mut session = model.session(iw, ih, &opts)?;
    let out_size = session.output_size();
    let clip: Vec<RgbFrame> = (0..args.frames.min(16)).map(|t| frame(iw, ih, t)).collect();
    let mut progress = Progress::frames("bench", Some(args.frames as u64), quiet || args.json);
    let mut out_frames = 0usize;
    let mut peak_vram = devices::device_memory_used(&device);
    let t2 = Instant::now();
    for t in 0..args.frames {
        if crate::interrupt::requested() {
            bail!(crate::interrupt::Interrupted);
        }
        out_frames += session.push_frame(&clip[t % clip.len()])?.len();
        progress.set_position(out_frames as u64);
        peak_vram = peak_vram.max(devices::device_memory_used(&device));
    }
    out_frames += session.finish()?.len();
    let run_s = t2.elapsed().as_secs_f64();
    progress.finish();
    let s = session.stats();
    let report = BenchReport {
        command: "bench",
        dims: args.dims.clone(),
        mode: format!("{:?}", args.mode).to_ascii_lowercase(),
        device: devices::describe(&device),
        dtype: summary::dtype_name(dtype),
        input_size: [iw, ih],
        output_size: [out_size.0, out_size.1],
        input_frames: args.frames,
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
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "{} dims, {} mode, {} {}: {}x{} → {}x{}, {} frames in {:.2} s = {:.3} fps",
            report.dims,
            report.mode,
            report.device,
            report.dtype,
            iw,
            ih,
            out_size.0,
            out_size.1,
            out_frames,
            run_s,
            report.fps
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
        println!("weights are random: this measures speed and memory only");
    }
    Ok(())
}
