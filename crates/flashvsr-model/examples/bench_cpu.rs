//! Speed of the streaming pipeline, stage by stage: one JSON line per configuration.
//!
//! ```text
//! cargo run --release -p flashvsr-model --example bench_cpu -- [CONFIG...] [--frames N]
//!     [--input WxH] [--device cpu|cuda] [--dtype f32|f16|bf16] [--seed S]
//! ```
//!
//! CONFIG (default `fixture`):
//! - `fixture`       tiny-v1.1 fixture weights (reduced dims), tiny mode, 64×64 → 256×256, 41 frames
//! - `fixture-full`  full-v1.1 fixture weights (reduced Wan VAE), full mode, 64×64 → 256×256, 41 frames
//! - `real-256`      real dims (DiT 1536×30, LQ 2048/3072, TCDecoder 512..128), random weights,
//!   tiny mode, 64×64 → 256×256, 29 frames (two DiT steps, every output real)
//! - `real-512`      the same at 128×128 → 512×512
//! - `real-full-256` real dims with the real-size Wan VAE decoder, full mode, 64×64 → 256×256
//!
//! The real-dims configurations build the weights in memory from the loader's layouts (the
//! exact upstream names and shapes): weights uniform with std 1/√fan_in, biases 0, norm scales
//! 1, modulations and prompt std 0.1, so activations keep a realistic scale (no denormals).
//! They need ~8 GiB of RAM; `real-512` takes several minutes on 2 cores.
//!
//! Each line has the wall time of the session (first push to end of `finish`), frames/s of
//! output, the per-stage seconds of `SessionStats`, the seconds of each push that ran a DiT step
//! (`step_push_s`: the first is the 6-latent-frame step 0, the rest steady 2-latent-frame steps),
//! the process CPU seconds of the session and `cores_used` = CPU s / wall s (on a shared machine
//! this shows how much of the CPU the run actually got), the peak RSS of the configuration (VmHWM, reset before each one through
//! /proc/self/clear_refs) and the load average before and after (the machine may be shared).

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use flashvsr_loader::layout::component_layout;
use flashvsr_loader::WeightStore;
use flashvsr_model::frames::{self, RgbFrame};
use flashvsr_model::pipeline::{FlashVsr, Mode, ModelComponents, ModelVersion, UpscaleOptions};
use serde_json::json;

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared/fixtures");

/// Where the weights of a configuration come from.
#[derive(Debug, Clone, Copy)]
enum Weights {
    /// A fixture folder (upstream files, reduced dims, 32-wide heads).
    Fixture(&'static str),
    /// Random weights of the real shapes.
    Real,
}

#[derive(Debug, Clone)]
struct Config {
    name: &'static str,
    weights: Weights,
    mode: Mode,
    input: (usize, usize),
    frames: usize,
}

fn preset(name: &str) -> Result<Config> {
    let (name, weights, mode, side, frames) = match name {
        "fixture" => ("fixture", Weights::Fixture("tiny-v1.1"), Mode::Tiny, 64, 41),
        "fixture-full" => ("fixture-full", Weights::Fixture("full-v1.1"), Mode::Full, 64, 41),
        "real-256" => ("real-256", Weights::Real, Mode::Tiny, 64, 29),
        "real-512" => ("real-512", Weights::Real, Mode::Tiny, 128, 29),
        "real-full-256" => ("real-full-256", Weights::Real, Mode::Full, 64, 29),
        other => bail!("unknown configuration {other:?}: fixture, fixture-full, real-256, real-512 or real-full-256"),
    };
    Ok(Config {
        name,
        weights,
        mode,
        input: (side, side),
        frames,
    })
}

struct Args {
    configs: Vec<Config>,
    device: Device,
    dtype: DType,
    seed: u64,
}

fn parse_args() -> Result<Args> {
    let mut names = Vec::new();
    let (mut frames, mut input, mut device, mut dtype, mut seed) =
        (None, None, Device::Cpu, DType::F32, 0);
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = || it.next().ok_or_else(|| anyhow!("{arg} needs a value"));
        match arg.as_str() {
            "--frames" => frames = Some(value()?.parse::<usize>().context("--frames")?),
            "--input" => {
                let v = value()?;
                let (w, h) = v
                    .split_once('x')
                    .ok_or_else(|| anyhow!("--input {v:?}: expected WxH"))?;
                input = Some((
                    w.parse::<usize>().context("--input width")?,
                    h.parse::<usize>().context("--input height")?,
                ));
            }
            "--device" => {
                device = match value()?.as_str() {
                    "cpu" => Device::Cpu,
                    "cuda" => Device::new_cuda(0)?,
                    other => bail!("--device {other:?}: cpu or cuda"),
                }
            }
            "--dtype" => {
                dtype = match value()?.as_str() {
                    "f32" => DType::F32,
                    "f16" => DType::F16,
                    "bf16" => DType::BF16,
                    other => bail!("--dtype {other:?}: f32, f16 or bf16"),
                }
            }
            "--seed" => seed = value()?.parse().context("--seed")?,
            "-h" | "--help" => {
                println!("bench_cpu [fixture|fixture-full|real-256|real-512|real-full-256]... [--frames N] [--input WxH] [--device cpu|cuda] [--dtype f32|f16|bf16] [--seed S]");
                std::process::exit(0);
            }
            flag if flag.starts_with('-') => bail!("unknown flag {flag}"),
            name => names.push(name.to_string()),
        }
    }
    if names.is_empty() {
        names.push("fixture".into());
    }
    let mut configs = names
        .iter()
        .map(|n| preset(n))
        .collect::<Result<Vec<_>>>()?;
    for c in &mut configs {
        c.frames = frames.unwrap_or(c.frames);
        c.input = input.unwrap_or(c.input);
    }
    Ok(Args {
        configs,
        device,
        dtype,
        seed,
    })
}

/// Loads a fixture folder's upstream files.
fn fixture_components(
    set: &str,
    mode: Mode,
    device: &Device,
    dtype: DType,
) -> Result<ModelComponents> {
    let dir = Path::new(FIXTURES).join(set);
    let open = |file: &str| -> Result<Arc<WeightStore>> {
        let path = dir.join(file);
        Ok(Arc::new(
            WeightStore::open(&[&path]).with_context(|| format!("loading {}", path.display()))?,
        ))
    };
    let prompt = open("posi_prompt.pth")?.tensor("posi_prompt", DType::F32, device)?;
    let full = mode == Mode::Full;
    Ok(ModelComponents {
        dit: open("diffusion_pytorch_model_streaming_dmd.safetensors")?.var_builder(dtype, device),
        lq_proj: open("LQ_proj_in.ckpt")?.var_builder(dtype, device),
        tc_decoder: if full {
            None
        } else {
            Some(open("TCDecoder.ckpt")?.var_builder(dtype, device))
        },
        vae: if full {
            Some(open("Wan2.1_VAE.pth")?.var_builder(dtype, device))
        } else {
            None
        },
        prompt,
        head_dim: Some(32),
        dit_quantized: None,
    })
}

/// Random tensors of one component's real layout (required tensors only), f32 on the CPU.
fn synthetic_component(component: &str, rng_seed: u64) -> Result<HashMap<String, Tensor>> {
    let layout = component_layout(component)
        .ok_or_else(|| anyhow!("no layout for component {component}"))?;
    let mut rng = SplitMix(rng_seed ^ ((component.len() as u64) * 0x9E37_79B9));
    let mut map = HashMap::new();
    for spec in layout.into_iter().filter(|s| !s.optional) {
        let n: usize = spec.shape.iter().product();
        let last = spec.name.rsplit('.').next().unwrap_or("");
        let values = if spec.name.contains("norm") || last == "gamma" {
            vec![1f32; n]
        } else if last == "bias" {
            vec![0f32; n]
        } else if spec.name.contains("modulation") || component == "prompt" {
            rng.uniform_with_std(n, 0.1)
        } else {
            let fan_in: usize = spec.shape.iter().skip(1).product::<usize>().max(1);
            rng.uniform_with_std(n, 1.0 / (fan_in as f32).sqrt())
        };
        map.insert(
            spec.name,
            Tensor::from_vec(values, spec.shape, &Device::Cpu)?,
        );
    }
    Ok(map)
}

fn real_components(
    mode: Mode,
    seed: u64,
    device: &Device,
    dtype: DType,
) -> Result<ModelComponents> {
    let vb = |component: &str| -> Result<VarBuilder<'static>> {
        Ok(VarBuilder::from_tensors(
            synthetic_component(component, seed)?,
            dtype,
            device,
        ))
    };
    let mut prompt = synthetic_component("prompt", seed)?;
    let prompt = prompt
        .remove("posi_prompt")
        .ok_or_else(|| anyhow!("prompt layout has no posi_prompt"))?;
    let full = mode == Mode::Full;
    Ok(ModelComponents {
        dit: vb("dit")?,
        lq_proj: vb("lq_proj_v1_1")?,
        tc_decoder: if full { None } else { Some(vb("tc_decoder")?) },
        vae: if full { Some(vb("wan_vae")?) } else { None },
        prompt,
        head_dim: None,
        dit_quantized: None,
    })
}

/// SplitMix64 giving uniform values of a chosen standard deviation: the timings do not depend
/// on the distribution, only on the scale (which keeps activations finite and normal), and
/// this fills the 1.6 G real-size values in seconds.
struct SplitMix(u64);

impl SplitMix {
    fn next_unit(&mut self) -> f32 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        ((z ^ (z >> 31)) >> 40) as f32 / (1u64 << 24) as f32
    }

    /// Uniform on [-√3·std, √3·std] (variance std²).
    fn uniform_with_std(&mut self, n: usize, std: f32) -> Vec<f32> {
        let half_width = 3f32.sqrt() * std;
        (0..n)
            .map(|_| (2.0 * self.next_unit() - 1.0) * half_width)
            .collect()
    }
}

/// Frame `i` of a synthetic clip: gradients, a moving band and some per-pixel noise .
fn synthetic_frame(width: usize, height: usize, i: usize) -> RgbFrame {
    let mut rgb = Vec::with_capacity(width * height * 3);
    for y in 0..height {
        for x in 0..width {
            let noise = (x * 7919 + y * 104_729 + i * 1_299_709) % 17;
            let band = if (x + 2 * y + 3 * i) % 24 < 6 {
                200
            } else {
                40
            };
            rgb.extend_from_slice(&[
                (x * 255 / width) as u8,
                (y * 255 / height) as u8,
                (band + noise) as u8,
            ]);
        }
    }
    frames::from_rgb24(width, height, rgb).expect("width × height × 3 bytes")
}

fn proc_field(file: &str, key: &str) -> Option<String> {
    let text = std::fs::read_to_string(file).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(key))
        .map(|v| v.trim_start_matches([':', ' ', '\t']).trim().to_string())
}

fn load_average() -> Option<String> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
}

/// CPU seconds used by this process so far, all threads (utime + stime of /proc/self/stat,
/// in the 100 Hz clock ticks of Linux's USER_HZ).
fn process_cpu_s() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}

/// Peak resident memory so far, in MiB.
fn peak_rss_mib() -> Option<f64> {
    let kb: f64 = proc_field("/proc/self/status", "VmHWM")?
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb / 1024.0)
}

fn run(config: &Config, args: &Args) -> Result<serde_json::Value> {
    // Reset VmHWM so each configuration reports its own peak (Linux ≥ 4.0; best effort).
    let _ = std::fs::write("/proc/self/clear_refs", "5");
    let load_before = load_average();

    let t0 = Instant::now();
    let components = match config.weights {
        Weights::Fixture(set) => fixture_components(set, config.mode, &args.device, args.dtype)?,
        Weights::Real => real_components(config.mode, args.seed, &args.device, args.dtype)?,
    };
    let weights_s = t0.elapsed().as_secs_f64();
    let t0 = Instant::now();
    let model = FlashVsr::load(components, ModelVersion::V1_1, &args.device, args.dtype)?;
    let load_s = t0.elapsed().as_secs_f64();
    let peak_rss_load = peak_rss_mib();
    let _ = std::fs::write("/proc/self/clear_refs", "5");

    let (w, h) = config.input;
    let opts = UpscaleOptions {
        mode: config.mode,
        seed: args.seed,
        ..Default::default()
    };
    let clip: Vec<RgbFrame> = (0..config.frames)
        .map(|i| synthetic_frame(w, h, i))
        .collect();
    let mut session = model.session(w, h, &opts)?;

    let cpu_before = process_cpu_s();
    let start = Instant::now();
    let (mut frames_out, mut first_output) = (0, None);
    let mut step_push_s = Vec::new();
    for (i, frame) in clip.iter().enumerate() {
        let steps_before = session.stats().dit_steps;
        let t = Instant::now();
        let out = session.push_frame(frame)?;
        if session.stats().dit_steps > steps_before {
            step_push_s.push(round3(t.elapsed().as_secs_f64()));
        }
        if !out.is_empty() && first_output.is_none() {
            first_output = Some(
                json!({ "after_frames": i + 1, "seconds": round3(start.elapsed().as_secs_f64()) }),
            );
        }
        frames_out += out.len();
    }
    let t = Instant::now();
    frames_out += session.finish()?.len();
    let finish_s = t.elapsed().as_secs_f64();
    let wall_s = start.elapsed().as_secs_f64();
    let cpu_s = cpu_before.zip(process_cpu_s()).map(|(a, b)| b - a);
    let stats = session.stats();
    let (ow, oh) = session.output_size();

    Ok(json!({
        "config": config.name,
        "weights": match config.weights { Weights::Fixture(set) => set.to_string(), Weights::Real => "real dims, synthetic".into() },
        "mode": format!("{:?}", config.mode).to_lowercase(),
        "device": format!("{:?}", args.device),
        "dtype": format!("{:?}", args.dtype).to_lowercase(),
        "input": [w, h],
        "output": [ow, oh],
        "frames_in": config.frames,
        "frames_out": frames_out,
        "dit_steps": stats.dit_steps,
        "weights_s": round3(weights_s),
        "load_s": round3(load_s),
        "wall_s": round3(wall_s),
        "fps": round3(frames_out as f64 / wall_s),
        "cpu_s": cpu_s.map(round3),
        "cores_used": cpu_s.map(|c| round3(c / wall_s)),
        "first_output": first_output,
        "step_push_s": step_push_s,
        "finish_s": round3(finish_s),
        "stages_s": {
            "preprocess": round3(stats.preprocess_s),
            "lq_proj": round3(stats.lq_proj_s),
            "dit": round3(stats.dit_s),
            "decode": round3(stats.decode_s),
            "color_fix": round3(stats.color_fix_s),
        },
        "peak_rss_load_mib": peak_rss_load.map(|m| m.round()),
        "peak_rss_session_mib": peak_rss_mib().map(|m| m.round()),
        "load_average_before": load_before,
        "load_average_after": load_average(),
    }))
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

fn main() -> Result<()> {
    let args = parse_args()?;
    eprintln!(
        "cpu: {} ({} threads)",
        proc_field("/proc/cpuinfo", "model name").unwrap_or_else(|| "unknown".into()),
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    );
    for config in &args.configs {
        eprintln!(
            "running {} ({} frames of {}x{})",
            config.name, config.frames, config.input.0, config.input.1
        );
        let report =
            run(config, &args).with_context(|| format!("configuration {}", config.name))?;
        println!("{report}");
    }
    Ok(())
}
