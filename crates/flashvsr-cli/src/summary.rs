//! The end-of-run summary (`--json` on stdout, a short line otherwise) and memory measurements.

use candle_core::DType;
use flashvsr_model::pipeline::KvStorage;
use serde::Serialize;

use crate::weights::components::{Resolved, VersionSource};
use crate::UpscaleArgs;

/// Seconds spent per stage.
#[derive(Debug, Clone, Default, Serialize)]
pub struct StageTimes {
    pub load_weights: f64,
    pub preprocess: f64,
    pub lq_proj: f64,
    pub dit: f64,
    pub decode: f64,
    pub color_fix: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Settings {
    pub scale: f64,
    pub mode: String,
    pub model_version: String,
    pub model_version_source: VersionSource,
    pub sparse_ratio: f64,
    pub kv_ratio: f64,
    /// `--kv-cache`: dense or fp8.
    pub kv_cache: KvStorage,
    pub local_range: usize,
    pub color_fix: String,
    pub seed: u64,
    pub noise_file: Option<String>,
    pub tile: Option<usize>,
    pub tile_overlap: Option<usize>,
    pub upstream_compat: bool,
    pub frames: Option<String>,
    /// `--warmup`: the run was a segment of a longer clip.
    pub warmup: Option<usize>,
    pub codec: Option<String>,
    pub crf: Option<u32>,
    pub preset: Option<String>,
    pub pix_fmt: Option<String>,
}

impl Settings {
    pub fn from_args(a: &UpscaleArgs, w: &Resolved) -> Settings {
        Settings {
            scale: a.scale,
            mode: a.mode.as_str().into(),
            model_version: w.version.as_str().to_string(),
            model_version_source: w.version_source,
            sparse_ratio: a.sparse_ratio,
            kv_ratio: a.kv_ratio,
            kv_cache: a.memory.kv_cache.into(),
            local_range: a.local_range.into(),
            color_fix: a.color_fix.as_str().into(),
            seed: a.seed,
            noise_file: a.noise.as_ref().map(|p| p.display().to_string()),
            tile: a.tile,
            tile_overlap: a.tile.map(|_| a.tile_overlap),
            upstream_compat: a.upstream_compat,
            frames: a.frames.map(|r| r.to_string()),
            warmup: a.warmup,
            codec: a.codec.clone(),
            crf: a.crf,
            preset: a.preset.clone(),
            pix_fmt: a.pix_fmt.clone(),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub command: &'static str,
    pub input: String,
    pub output: String,
    pub input_frames: u64,
    pub output_frames: u64,
    pub input_size: [usize; 2],
    pub output_size: [usize; 2],
    pub frame_rate: String,
    pub variable_frame_rate: bool,
    /// Frames the input's container declares (counted, or estimated from its duration).
    pub frames_expected: Option<u64>,
    /// Fewer frames decoded than declared (a cut or damaged file; `--strict` fails instead).
    pub input_truncated: bool,
    /// Every audio stream of the input copied as it is.
    pub audio_copied: bool,
    /// Some audio re-encoded because the output container cannot hold its codec.
    pub audio_reencoded: bool,
    /// Pixel format of the written video (`null` for pictures).
    pub output_pix_fmt: Option<String>,
    /// What the output check told the user (re-encoded audio, dropped subtitles, formats).
    pub notes: Vec<String>,
    pub wall_s: f64,
    /// Output frames per second of model time (excluding weight loading).
    pub processing_fps: f64,
    /// The same rate under the name benchmark runners read from the last JSON line.
    pub fps: f64,
    pub stages_s: StageTimes,
    /// Spatial tiles the picture was processed in (1 without `--tile`).
    pub tiles: usize,
    /// Peak resident memory of the process (VmHWM).
    pub peak_ram_bytes: Option<u64>,
    /// Highest device memory in use seen between frames (CUDA only).
    pub peak_vram_bytes: Option<u64>,
    pub device: String,
    pub dtype: &'static str,
    pub settings: Settings,
    pub weights: Vec<String>,
    /// The memory plan the run followed (predicted peak, tiles, KV parking, decoder chunking).
    pub memory_plan: flashvsr_model::memory_plan::MemoryPlan,
    /// Device memory at each stage's peak (CUDA), to compare with the plan.
    pub stage_peak_vram_bytes: std::collections::BTreeMap<&'static str, u64>,
    /// The most the allocator pool reserved from the device, free blocks included (CUDA).
    pub pool_reserved_high_bytes: Option<u64>,
}

impl Summary {
    /// `--json`: the JSON as one line, the last on stdout (stderr when stdout carries the
    /// video), so that runners can take the last line as the summary; otherwise one line for
    /// people on stderr unless quiet.
    pub fn emit(&self, json: bool, quiet: bool, stdout_is_video: bool) {
        if json {
            let text = serde_json::to_string(self).unwrap_or_default();
            if stdout_is_video {
                eprintln!("{text}");
            } else {
                println!("{text}");
            }
        } else if !quiet {
            eprintln!(
                "{} → {}: {} {}x{} → {}x{} in {} ({}), peak RAM {}",
                self.input,
                self.output,
                crate::progress::frames(self.output_frames),
                self.input_size[0],
                self.input_size[1],
                self.output_size[0],
                self.output_size[1],
                crate::progress::format_secs(self.wall_s),
                crate::progress::format_rate(self.processing_fps, "fps"),
                self.peak_ram_bytes
                    .map(format_bytes)
                    .unwrap_or_else(|| "n/a".into())
            );
        }
    }
}

pub fn format_bytes(b: u64) -> String {
    if b >= 1 << 30 {
        format!("{:.2} GiB", b as f64 / (1u64 << 30) as f64)
    } else {
        format!("{:.0} MiB", b as f64 / (1u64 << 20) as f64)
    }
}

pub fn dtype_name(d: DType) -> &'static str {
    match d {
        DType::F32 => "f32",
        DType::F16 => "f16",
        DType::BF16 => "bf16",
        DType::F64 => "f64",
        _ => "other",
    }
}

/// Peak resident memory of this process (VmHWM), in bytes; `None` where /proc is unavailable.
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}
