//! The command line: every command's arguments, the value types they parse into (with their
//! ranges, checked while parsing so that a wrong value is a usage error, never a failed
//! allocation later), and the conversions from those values to the model's own types.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use flashvsr_loader::convert::Quant;
use flashvsr_model::color_fix::ColorFix;
use flashvsr_model::pipeline::{KvStorage, Mode, ModelVersion};

use crate::devices::DeviceChoice;
use crate::tools;
use crate::weights::quantized::DitQuant;
use crate::weights::Role;

const EXAMPLES: &str = "\
Examples:
  flashvsr upscale in.mp4 out.mp4                      4x, tiny decoder, weights found or downloaded
  flashvsr upscale in.mkv out.mkv --scale 2 --codec libx265 --crf 20
  flashvsr upscale in.mp4 out.mp4 --mode full --dtype bf16 --device cuda:1
  flashvsr upscale in.mp4 out.mp4 --tile 256 --tile-overlap 32     big inputs in bounded memory
  flashvsr upscale frames/ out/ --weights ~/models/FlashVSR-v1.1   PNG folder in, PNG folder out
  ffmpeg -i in.mov -f yuv4mpegpipe - | flashvsr upscale - - > out.y4m
  flashvsr download --model-version v1.1
  flashvsr devices
  flashvsr bench --size 512x512 --frames 33 --json";

#[derive(Parser, Debug)]
#[command(
    name = "flashvsr",
    version,
    about = "FlashVSR one-step diffusion video super-resolution, native Rust on Candle",
    after_help = EXAMPLES
)]
pub struct Cli {
    /// No progress output (errors are still printed).
    #[arg(short, long, global = true)]
    pub quiet: bool,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Upscale a video (file, .y4m, image folder or `-` for y4m on stdin).
    #[command(after_help = UPSCALE_HELP)]
    Upscale(Box<UpscaleArgs>),
    /// Download the weights into the Hugging Face cache (done automatically by `upscale`).
    Download(DownloadArgs),
    /// List the compute devices this build can use.
    Devices {
        #[arg(long)]
        json: bool,
    },
    /// Write random weights with the upstream file names, formats and shapes (outputs are
    /// meaningless; for tests and benchmarks).
    SynthWeights(SynthArgs),
    /// Measure speed and memory on synthetic weights and a synthetic clip.
    Bench(BenchArgs),
    /// List the tensors of weight files (names, shapes, dtypes, formats).
    Inspect {
        #[arg(required = true, value_name = "FILE|DIR")]
        paths: Vec<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// Check weight files against a component's expected layout.
    Validate {
        #[arg(required = true, value_name = "FILE|DIR")]
        paths: Vec<PathBuf>,
        /// Component to check against (see the error message for the list).
        #[arg(long, value_name = "COMPONENT")]
        against: String,
        /// Check names and ranks only (reduced test models), not the real dims.
        #[arg(long)]
        structure: bool,
        #[arg(long)]
        json: bool,
    },
    /// Convert weight files (upstream pickles/safetensors) to GGUF/safetensors (a folder: one file each).
    Convert(tools::ConvertArgs),
    /// Split a clip into segments for separate runs (scale-out; see `upscale --warmup`).
    PlanSegments(PlanSegmentsArgs),
}

impl Command {
    /// The command's name, as typed.
    pub fn name(&self) -> &'static str {
        match self {
            Command::Upscale(_) => "upscale",
            Command::Download(_) => "download",
            Command::Devices { .. } => "devices",
            Command::SynthWeights(_) => "synth-weights",
            Command::Bench(_) => "bench",
            Command::Inspect { .. } => "inspect",
            Command::Validate { .. } => "validate",
            Command::Convert(_) => "convert",
            Command::PlanSegments(_) => "plan-segments",
        }
    }

    /// Where a `--json` failure object goes, if one was asked for: stdout, or stderr when stdout
    /// carries the video (`upscale ... -`).
    pub fn json_output(&self) -> Option<JsonTo> {
        let json = match self {
            Command::Upscale(a) => {
                return a.json.then(|| {
                    if a.output.as_os_str() == "-" {
                        JsonTo::Stderr
                    } else {
                        JsonTo::Stdout
                    }
                })
            }
            Command::Devices { json } => *json,
            Command::Bench(a) => a.json,
            Command::Inspect { json, .. } => *json,
            Command::Convert(a) => a.json,
            Command::PlanSegments(a) => a.json,
            // `validate` puts its report of a mismatch into the failure object.
            Command::Validate { json, .. } => *json,
            Command::Download(_) | Command::SynthWeights(_) => false,
        };
        json.then_some(JsonTo::Stdout)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JsonTo {
    Stdout,
    Stderr,
}

const UPSCALE_HELP: &str = "\
Output size is exactly scale x input and every input frame is output (upstream crops to a multiple
of 128 px and drops up to 7 trailing frames; --upstream-compat reproduces that).

Weights: --weights, else $FLASHVSR_MODELS, the Hugging Face cache
($HF_HOME/hub/models--JunhaoZhuang--FlashVSR-v1.1), a ComfyUI models/ folder; if none is found they
are downloaded (HF_ENDPOINT and HF_HOME are honoured, HF_HUB_OFFLINE=1 forbids it).
Model version: from GGUF metadata, else the Hugging Face repo name, else --model-version, default v1.1.

Examples:
  flashvsr upscale in.mp4 out.mp4
  flashvsr upscale in.mp4 out.mkv --codec libx265 --pix-fmt yuv420p10le --crf 18 -y
  flashvsr upscale in.mp4 out.mp4 --frames 100:200 --json
  flashvsr upscale in.mp4 seg1.mkv --frames 501:981 --warmup 21   one segment (plan-segments)
  flashvsr upscale clip.y4m out/ --upstream-compat --noise noise.npy";

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ModeArg {
    Tiny,
    TinyLong,
    Full,
}

impl ModeArg {
    pub fn as_str(self) -> &'static str {
        match self {
            ModeArg::Tiny => "tiny",
            ModeArg::TinyLong => "tiny-long",
            ModeArg::Full => "full",
        }
    }

    /// Whether this mode decodes with the Wan VAE (and so needs its weights).
    pub fn is_full(self) -> bool {
        self == ModeArg::Full
    }
}

impl From<ModeArg> for Mode {
    fn from(m: ModeArg) -> Mode {
        match m {
            ModeArg::Tiny => Mode::Tiny,
            ModeArg::TinyLong => Mode::TinyLong,
            ModeArg::Full => Mode::Full,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum VersionArg {
    #[value(name = "v1")]
    V1,
    #[value(name = "v1.1")]
    V1_1,
}

impl VersionArg {
    pub fn as_str(self) -> &'static str {
        match self {
            VersionArg::V1 => "v1",
            VersionArg::V1_1 => "v1.1",
        }
    }
}

impl From<VersionArg> for ModelVersion {
    fn from(v: VersionArg) -> ModelVersion {
        match v {
            VersionArg::V1 => ModelVersion::V1,
            VersionArg::V1_1 => ModelVersion::V1_1,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum DTypeArg {
    F32,
    F16,
    Bf16,
}

impl From<DTypeArg> for candle_core::DType {
    fn from(d: DTypeArg) -> candle_core::DType {
        match d {
            DTypeArg::F32 => candle_core::DType::F32,
            DTypeArg::F16 => candle_core::DType::F16,
            DTypeArg::Bf16 => candle_core::DType::BF16,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ColorFixArg {
    Adain,
    Wavelet,
    None,
}

impl ColorFixArg {
    pub fn as_str(self) -> &'static str {
        match self {
            ColorFixArg::Adain => "adain",
            ColorFixArg::Wavelet => "wavelet",
            ColorFixArg::None => "none",
        }
    }
}

impl From<ColorFixArg> for ColorFix {
    fn from(c: ColorFixArg) -> ColorFix {
        match c {
            ColorFixArg::Adain => ColorFix::AdaIn,
            ColorFixArg::Wavelet => ColorFix::Wavelet,
            ColorFixArg::None => ColorFix::None,
        }
    }
}

/// How the KV cache keeps keys and values (`--kv-cache`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, ValueEnum)]
pub enum KvCacheArg {
    /// The compute dtype: exact.
    #[default]
    Dense,
    /// e4m3 bytes with one scale per head and token: about half the KV memory of bf16.
    Fp8,
}

impl From<KvCacheArg> for KvStorage {
    fn from(k: KvCacheArg) -> KvStorage {
        match k {
            KvCacheArg::Dense => KvStorage::Dense,
            KvCacheArg::Fp8 => KvStorage::Fp8,
        }
    }
}

/// `synth-weights` / `bench` model sizes: the shipped ones or reduced widths.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum DimsArg {
    Real,
    Small,
}

impl DimsArg {
    pub fn as_str(self) -> &'static str {
        match self {
            DimsArg::Real => "real",
            DimsArg::Small => "small",
        }
    }

    pub fn is_small(self) -> bool {
        self == DimsArg::Small
    }
}

/// Which decoder's files `download` fetches.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum PartsArg {
    /// The tiny decoder's set (TCDecoder).
    Tiny,
    /// The full decoder's set (Wan VAE).
    Full,
    /// Every file.
    All,
}

impl PartsArg {
    pub fn roles(self) -> Vec<Role> {
        Role::ALL
            .into_iter()
            .filter(|r| match self {
                PartsArg::Tiny => r.needed_for(false),
                PartsArg::Full => r.needed_for(true),
                PartsArg::All => true,
            })
            .collect()
    }
}

/// `START:END` in input frames, END exclusive; either side may be empty.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameRange {
    pub start: u64,
    pub end: Option<u64>,
}

impl FrameRange {
    /// Frames selected from a clip of `total` frames.
    pub fn selected(&self, total: u64) -> u64 {
        self.end
            .unwrap_or(total)
            .min(total)
            .saturating_sub(self.start)
    }
}

impl std::fmt::Display for FrameRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:", self.start)?;
        match self.end {
            Some(e) => write!(f, "{e}"),
            None => Ok(()),
        }
    }
}

impl std::str::FromStr for FrameRange {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (a, b) = s
            .split_once(':')
            .ok_or_else(|| format!("frame range {s:?} must be START:END (e.g. 0:100 or 50:)"))?;
        let start = if a.trim().is_empty() {
            0
        } else {
            a.trim()
                .parse()
                .map_err(|_| format!("bad start frame {a:?}"))?
        };
        let end = if b.trim().is_empty() {
            None
        } else {
            Some(
                b.trim()
                    .parse()
                    .map_err(|_| format!("bad end frame {b:?}"))?,
            )
        };
        if let Some(e) = end {
            if e <= start {
                return Err(format!(
                    "frame range {s:?} is empty (END must be greater than START)"
                ));
            }
        }
        Ok(FrameRange { start, end })
    }
}

/// The largest output frame side, in pixels (what video encoders accept, and far beyond what
/// fits a GPU without `--tile`).
pub const MAX_FRAME_SIDE: usize = 16384;

/// Largest `--kv-ratio`: segments kept in the KV cache (each holds the keys and values of all
/// 30 blocks for one step, ~1.4 GB in bf16 at 1280x768 output).
pub const MAX_KV_RATIO: f64 = 16.0;

/// Largest `--sparse-ratio` (upstream uses 1.5 to 2; far above that attention is dense anyway).
pub const MAX_SPARSE_RATIO: f64 = 100.0;

/// Largest `--scale`: the output size check (`checked_output_size`) is what bounds it in
/// practice; this only keeps the number itself sane.
pub const MAX_SCALE: f64 = 64.0;

fn parse_number(s: &str) -> Result<f64, String> {
    let v: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a number"))?;
    if !v.is_finite() {
        return Err(format!("{s:?} is not a finite number"));
    }
    Ok(v)
}

/// A quantized type for `--quantize-dit` (float types are what `--dtype` is for).
pub(crate) fn parse_dit_quant(s: &str) -> Result<DitQuant, String> {
    if matches!(s.to_ascii_lowercase().as_str(), "fp8" | "e4m3" | "fp8_e4m3") {
        return Ok(DitQuant::Fp8);
    }
    let q: Quant = s.parse()?;
    if q.is_float() {
        return Err(format!(
            "{s} is not a quantized type (use --dtype for float weights; quantized: q8_0, q6_k, q5_k, q4_k, q4_0, fp8)"
        ));
    }
    Ok(DitQuant::Ggml(q))
}

pub(crate) fn parse_scale(s: &str) -> Result<f64, String> {
    let v = parse_number(s).map_err(|_| format!("scale {s:?} is not a number"))?;
    if !(1.0..=MAX_SCALE).contains(&v) {
        return Err(format!(
            "scale must be a number from 1 to {MAX_SCALE} (got {s})"
        ));
    }
    Ok(v)
}

fn parse_kv_ratio(s: &str) -> Result<f64, String> {
    let v = parse_number(s)?;
    if !(v > 0.0 && v <= MAX_KV_RATIO) {
        return Err(format!(
            "must be more than 0 and at most {MAX_KV_RATIO} (KV cache segments; got {s})"
        ));
    }
    Ok(v)
}

fn parse_sparse_ratio(s: &str) -> Result<f64, String> {
    let v = parse_number(s)?;
    if !(v > 0.0 && v <= MAX_SPARSE_RATIO) {
        return Err(format!(
            "must be more than 0 and at most {MAX_SPARSE_RATIO} (got {s})"
        ));
    }
    Ok(v)
}

fn parse_frame_count(s: &str) -> Result<u64, String> {
    match s.trim().parse::<u64>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(_) => Err(format!("{s:?} is not a frame count")),
    }
}

/// `WxH`, each side from 8 to [`MAX_FRAME_SIDE`].
fn parse_size(s: &str) -> Result<(usize, usize), String> {
    let (w, h) = s
        .split_once(['x', 'X'])
        .ok_or_else(|| format!("size {s:?} must be WxH, e.g. 512x512"))?;
    let side = |v: &str, what: &str| -> Result<usize, String> {
        let n: u64 = v
            .trim()
            .parse()
            .map_err(|_| format!("bad {what} in {s:?}"))?;
        if n < 8 {
            return Err(format!("size {s:?} is too small (at least 8x8)"));
        }
        if n > MAX_FRAME_SIDE as u64 {
            return Err(format!(
                "size {s:?} is too large (at most {MAX_FRAME_SIDE} px a side)"
            ));
        }
        Ok(n as usize)
    };
    Ok((side(w, "width")?, side(h, "height")?))
}

/// Output size of a `w`x`h` input upscaled by `scale` (rounded), refused beyond
/// [`MAX_FRAME_SIDE`] a side: computed in f64, so no product can overflow.
pub fn checked_output_size(w: usize, h: usize, scale: f64) -> anyhow::Result<(usize, usize)> {
    let side = |n: usize| (n as f64 * scale).round();
    let (ow, oh) = (side(w), side(h));
    let max = MAX_FRAME_SIDE as f64;
    if !(ow.is_finite() && oh.is_finite() && ow <= max && oh <= max) {
        anyhow::bail!(
            "--scale {scale} turns {w}x{h} into about {ow:.0}x{oh:.0} px, more than the {MAX_FRAME_SIDE} px a side flashvsr supports; use a smaller --scale"
        );
    }
    Ok((ow as usize, oh as usize))
}

/// Constant rate factor range of an encoder (libx264 and libx265 0-51; VP9 and the AV1
/// encoders 0-63; others: the widest, left to the encoder). `codec` = `--codec`, else the
/// container's default, named by the output extension.
pub fn crf_range(codec: Option<&str>, output: &std::path::Path) -> (u32, u32) {
    let ext = output
        .extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default();
    let codec = codec.map(str::to_ascii_lowercase).unwrap_or_else(|| {
        match ext.as_str() {
            "webm" => "libvpx-vp9",
            _ => "libx264",
        }
        .to_string()
    });
    match codec.as_str() {
        "libx264" | "libx264rgb" | "h264" | "libx265" | "hevc" | "h265" => (0, 51),
        _ => (0, 63),
    }
}

#[derive(Args, Debug, Clone)]
pub struct WeightArgs {
    /// Weight folder(s) or file(s): the upstream file set, a single-file repack (ausboss, 1038lab,
    /// Kijai names) or a GGUF from `flashvsr convert`.
    #[arg(long, num_args = 1.., value_name = "DIR|FILE")]
    pub weights: Vec<PathBuf>,
    /// Model version when the weights do not say (GGUF metadata, HF repo name) [default: v1.1].
    #[arg(long, value_enum, value_name = "VERSION")]
    pub model_version: Option<VersionArg>,
    /// Download manifest to use instead of the built-in one (also $FLASHVSR_MANIFEST).
    #[arg(long, hide = true, value_name = "FILE")]
    pub manifest: Option<PathBuf>,
    /// Never download (also HF_HUB_OFFLINE=1).
    #[arg(long)]
    pub offline: bool,
}

#[derive(Args, Debug, Clone)]
pub struct UpscaleArgs {
    /// Input: video file (needs ffmpeg), .y4m, folder of PNG/JPEG frames, or `-` (y4m on stdin).
    pub input: PathBuf,
    /// Output: video file (needs ffmpeg; extension picks the container), .y4m, folder (PNG
    /// frames; end the name with `/` to create it), or `-` (y4m on stdout).
    pub output: PathBuf,

    /// Upscale factor (any number from 1 to 64; the model is trained for 4).
    #[arg(long, default_value = "4", value_parser = parse_scale)]
    pub scale: f64,
    /// tiny: TCDecoder (fast); tiny-long: same numerics, lowest memory; full: Wan VAE decoder.
    #[arg(long, value_enum, default_value = "tiny")]
    pub mode: ModeArg,
    /// Compute dtype [default: f32 on cpu, bf16 on GPUs].
    #[arg(long, value_enum)]
    pub dtype: Option<DTypeArg>,
    /// Keep the DiT's linear weights quantized on the device in TYPE (q8_0, q6_k, q5_k, q4_k,
    /// q4_0), quantized while loading a float file: less memory, a little less accuracy; or
    /// fp8 (e4m3 weights and activations, FP8 tensor cores; sm_89+ GPUs). A quantized GGUF
    /// is kept as stored without this option.
    #[arg(long, value_name = "TYPE", value_parser = parse_dit_quant)]
    pub quantize_dit: Option<DitQuant>,
    /// cpu, cuda, cuda:N, metal or auto (best available).
    #[arg(long, default_value = "auto", value_name = "DEVICE")]
    pub device: DeviceChoice,

    /// Process the picture in tiles of SIZE input pixels (bounds memory for big inputs).
    #[arg(long, value_name = "SIZE")]
    pub tile: Option<usize>,
    /// Overlap between tiles, in input pixels (blended).
    #[arg(long, value_name = "PX", default_value = "32", requires = "tile")]
    pub tile_overlap: usize,
    #[command(flatten)]
    pub memory: MemoryArgs,

    /// Sparse attention budget (upstream: 1.5 faster, 2.0 more stable; at most 100).
    #[arg(long, default_value = "2.0", value_parser = parse_sparse_ratio)]
    pub sparse_ratio: f64,
    /// KV cache length in segments (at most 16).
    #[arg(long, default_value = "3.0", value_parser = parse_kv_ratio)]
    pub kv_ratio: f64,
    /// Local attention range in blocks (upstream: 9 sharper, 11 more stable).
    #[arg(long, default_value = "11", value_parser = clap::value_parser!(u16).range(1..))]
    pub local_range: u16,
    /// Colour correction against the bicubic input.
    #[arg(long, value_enum, default_value = "adain")]
    pub color_fix: ColorFixArg,
    /// Noise seed.
    #[arg(long, default_value = "0")]
    pub seed: u64,
    /// Initial noise from a .npy file [1,16,T,H/8,W/8] (exact reproduction of a reference run).
    #[arg(long, value_name = "FILE.npy")]
    pub noise: Option<PathBuf>,
    /// Only these input frames, START:END (END exclusive; either may be omitted).
    #[arg(long, value_name = "START:END")]
    pub frames: Option<FrameRange>,
    /// Upscale --frames START:END as a segment of the whole clip: decode at least W frames
    /// before START (down to a multiple of 8) and discard their outputs, read past END to the
    /// end of its step, and draw the clip's noise for these frames, so that the segment joins
    /// its neighbours seamlessly. Take the bounds from `flashvsr plan-segments`.
    #[arg(
        long,
        value_name = "W",
        requires = "frames",
        conflicts_with = "upstream_compat"
    )]
    pub warmup: Option<usize>,
    /// Upstream's output geometry: crop to multiples of 128 px and 8n-3 frames (needs at least
    /// 21 input frames).
    #[arg(long)]
    pub upstream_compat: bool,
    /// Replace the output if it exists.
    #[arg(short = 'y', long)]
    pub overwrite: bool,
    /// Fail, instead of warning, when the input decodes to fewer frames than its container
    /// declares (a cut or damaged file).
    #[arg(long)]
    pub strict: bool,

    /// Video encoder (libx264, libx265, libsvtav1, libvpx-vp9, ...).
    #[arg(long)]
    pub codec: Option<String>,
    /// Constant rate factor (lower = better quality, bigger file; 0-51 for libx264/libx265,
    /// 0-63 for VP9/AV1).
    #[arg(long)]
    pub crf: Option<u32>,
    /// Encoder preset (e.g. medium, slow).
    #[arg(long)]
    pub preset: Option<String>,
    /// Output pixel format (yuv420p, yuv420p10le, yuv444p, ...) [default: the input's chroma
    /// and bit depth where the encoder can, 4:4:4 for odd sizes; y4m: yuv420p, or yuv444p /
    /// yuvj444p (full range) for 4:4:4].
    #[arg(long)]
    pub pix_fmt: Option<String>,

    #[command(flatten)]
    pub weights: WeightArgs,

    /// Print a JSON summary on stdout at the end (a failure object on error).
    #[arg(long)]
    pub json: bool,
    /// DiT head dimension override (reduced test models use 32).
    #[arg(long, hide = true)]
    pub head_dim: Option<usize>,
}

#[derive(Args, Debug, Clone)]
pub struct DownloadArgs {
    /// Which weights.
    #[arg(long, value_enum, default_value = "v1.1")]
    pub model_version: VersionArg,
    /// Which decoder's files to fetch: tiny (TCDecoder), full (Wan VAE) or all.
    #[arg(long, value_enum, default_value = "tiny")]
    pub parts: PartsArg,
    /// Download manifest to use instead of the built-in one (also $FLASHVSR_MANIFEST).
    #[arg(long, hide = true, value_name = "FILE")]
    pub manifest: Option<PathBuf>,
}

#[derive(Args, Debug, Clone)]
pub struct SynthArgs {
    /// Folder to write the files into (created if missing).
    pub dir: PathBuf,
    #[arg(long, value_enum, default_value = "v1.1")]
    pub model_version: VersionArg,
    /// real: the shipped shapes (~7 GB on disk); small: reduced widths (see `synth`).
    #[arg(long, value_enum, default_value = "small")]
    pub dims: DimsArg,
    #[arg(long, default_value = "0")]
    pub seed: u64,
    /// Replace existing files.
    #[arg(short = 'y', long)]
    pub overwrite: bool,
}

#[derive(Args, Debug, Clone)]
pub struct BenchArgs {
    /// Output size WxH (the input is this divided by --scale).
    #[arg(long, default_value = "512x512", value_parser = parse_size)]
    pub size: (usize, usize),
    /// Input frames.
    #[arg(long, default_value = "25", value_parser = parse_frame_count)]
    pub frames: u64,
    #[arg(long, default_value = "4", value_parser = parse_scale)]
    pub scale: f64,
    #[arg(long, value_enum, default_value = "tiny")]
    pub mode: ModeArg,
    /// real: the shipped model sizes (needs ~6 GB of memory; minutes on a CPU); small: reduced
    /// widths (quick) [default: real on GPUs, small on the CPU].
    #[arg(long, value_enum)]
    pub dims: Option<DimsArg>,
    #[arg(long, default_value = "auto")]
    pub device: DeviceChoice,
    #[arg(long, value_enum)]
    pub dtype: Option<DTypeArg>,
    /// Keep the DiT's linear weights quantized in TYPE (as `upscale --quantize-dit`).
    #[arg(long, value_name = "TYPE", value_parser = parse_dit_quant)]
    pub quantize_dit: Option<DitQuant>,
    #[arg(long)]
    pub json: bool,
    /// Tiles of SIZE input pixels, as for upscale (with parked KV caches when the plan says so).
    #[arg(long, value_name = "SIZE")]
    pub tile: Option<usize>,
    #[arg(long, value_name = "PX", default_value = "32", requires = "tile")]
    pub tile_overlap: usize,
    #[command(flatten)]
    pub memory: MemoryArgs,
}

#[derive(Args, Debug, Clone)]
pub struct PlanSegmentsArgs {
    /// The clip (video file, .y4m or image folder).
    pub input: PathBuf,
    /// Frames per segment, at least (each bound is rounded up to the model's step grid).
    #[arg(long, value_name = "N", value_parser = parse_frame_count)]
    pub segment_frames: u64,
    /// Warm-up frames before each segment, at least (21 = one first step: 46 dB at the joins on
    /// the test weights, against 17 dB without).
    #[arg(long, value_name = "W", default_value = "21")]
    pub warmup: usize,
    /// Scene cuts (frames where a new scene starts, e.g. from ffmpeg's scdet filter): a segment
    /// also ends at the first step bound at or after each.
    #[arg(long, value_name = "FRAME,...", value_delimiter = ',')]
    pub cuts: Vec<usize>,
    /// The clip's frame count, when known (otherwise read from the header, or counted).
    #[arg(long, value_name = "N", value_parser = parse_frame_count)]
    pub total_frames: Option<u64>,
    /// Print JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

/// The device memory budget and the plan's dry run (upscale and bench).
#[derive(Args, Debug, Clone, Default)]
pub struct MemoryArgs {
    /// Device memory the job may use, in GiB [default: the device's free memory]. The memory
    /// plan picks tiling, KV parking and decoder chunking to fit, or refuses before any work.
    #[arg(long, value_name = "GIB", value_parser = parse_gib)]
    pub max_vram: Option<f64>,
    /// Latents the tiny decoder decodes per call (each is 4 output frames) [default: the
    /// plan's choice, the most that fit]. Fewer: less decoder memory, a little slower.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub decoder_latents: Option<u64>,
    /// KV cache storage: dense (the compute dtype, exact) or fp8 (e4m3 with a scale per head
    /// and token: about half the cache's memory, slightly less accurate).
    #[arg(long, value_enum, default_value = "dense", value_name = "STORAGE")]
    pub kv_cache: KvCacheArg,
    /// Print the memory plan and exit (the weights are read only for their headers).
    #[arg(long)]
    pub plan: bool,
}

fn parse_gib(s: &str) -> Result<f64, String> {
    let v = parse_number(s)?;
    if !(v.is_finite() && v > 0.0) {
        return Err(format!("must be a positive number of GiB (got {s})"));
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cli_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    #[test]
    fn frame_range_and_scale() {
        assert_eq!(
            "10:20".parse::<FrameRange>(),
            Ok(FrameRange {
                start: 10,
                end: Some(20)
            })
        );
        assert_eq!(
            ":5".parse::<FrameRange>(),
            Ok(FrameRange {
                start: 0,
                end: Some(5)
            })
        );
        assert_eq!(
            "7:".parse::<FrameRange>(),
            Ok(FrameRange {
                start: 7,
                end: None
            })
        );
        assert!("5:5".parse::<FrameRange>().is_err());
        assert!("5".parse::<FrameRange>().is_err());
        assert_eq!("7:".parse::<FrameRange>().unwrap().to_string(), "7:");
        assert_eq!("1:3".parse::<FrameRange>().unwrap().selected(2), 1);
        assert_eq!(parse_scale("2.5"), Ok(2.5));
        assert!(parse_scale("0.5").is_err());
        assert!(parse_scale("nan").is_err());
        assert!(parse_scale("1e4").is_err());
        assert!(parse_kv_ratio("1e9").is_err());
        assert!(parse_kv_ratio("0").is_err());
        assert_eq!(parse_kv_ratio("3"), Ok(3.0));
        assert!(parse_sparse_ratio("inf").is_err());
        assert!(parse_size("100000x100000").is_err());
        assert_eq!(parse_size("64x48"), Ok((64, 48)));
    }

    #[test]
    fn output_size_is_checked_without_overflow() {
        assert_eq!(checked_output_size(37, 29, 2.2).unwrap(), (81, 64));
        let e = checked_output_size(4096, 4096, 64.0)
            .unwrap_err()
            .to_string();
        assert!(e.contains("262144x262144") && e.contains("16384"), "{e}");
        assert!(checked_output_size(usize::MAX, 1, 64.0).is_err());
    }

    #[test]
    fn crf_ranges_follow_the_encoder() {
        use std::path::Path;
        assert_eq!(crf_range(None, Path::new("a.mp4")), (0, 51));
        assert_eq!(crf_range(None, Path::new("a.webm")), (0, 63));
        assert_eq!(crf_range(Some("libsvtav1"), Path::new("a.mkv")), (0, 63));
        assert_eq!(crf_range(Some("libx265"), Path::new("a.mkv")), (0, 51));
    }

    #[test]
    fn conversions_and_names() {
        assert_eq!(Mode::from(ModeArg::TinyLong), Mode::TinyLong);
        assert_eq!(ModeArg::TinyLong.as_str(), "tiny-long");
        assert_eq!(ModelVersion::from(VersionArg::V1), ModelVersion::V1);
        assert_eq!(
            candle_core::DType::from(DTypeArg::Bf16),
            candle_core::DType::BF16
        );
        assert_eq!(ColorFix::from(ColorFixArg::Wavelet), ColorFix::Wavelet);
        assert_eq!(ColorFixArg::Adain.as_str(), "adain");
        assert_eq!(PartsArg::Tiny.roles().len(), 4);
        assert_eq!(PartsArg::All.roles().len(), 5);
        // The names shown in summaries are the ones clap parses.
        fn clap_name<T: ValueEnum>(v: &T) -> String {
            v.to_possible_value().unwrap().get_name().to_string()
        }
        for m in ModeArg::value_variants() {
            assert_eq!(clap_name(m), m.as_str());
        }
        for c in ColorFixArg::value_variants() {
            assert_eq!(clap_name(c), c.as_str());
        }
        for v in VersionArg::value_variants() {
            assert_eq!(clap_name(v), v.as_str());
        }
        for d in DimsArg::value_variants() {
            assert_eq!(clap_name(d), d.as_str());
        }
    }

    #[test]
    fn upscale_defaults() {
        let cli = Cli::try_parse_from(["flashvsr", "upscale", "a.mp4", "b.mp4"]).unwrap();
        let Command::Upscale(a) = cli.command else {
            panic!("not upscale")
        };
        assert_eq!(a.scale, 4.0);
        assert_eq!(a.mode, ModeArg::Tiny);
        assert_eq!(a.sparse_ratio, 2.0);
        assert_eq!(a.kv_ratio, 3.0);
        assert_eq!(a.local_range, 11);
        assert_eq!(a.device, DeviceChoice::Auto);
        assert!(a.weights.model_version.is_none());
        let cli = Cli::try_parse_from([
            "flashvsr",
            "upscale",
            "a",
            "b",
            "--model-version",
            "v1",
            "--weights",
            "x",
            "y",
            "--head-dim",
            "32",
        ])
        .unwrap();
        let Command::Upscale(a) = cli.command else {
            panic!("not upscale")
        };
        assert_eq!(a.weights.model_version, Some(VersionArg::V1));
        assert_eq!(a.weights.weights.len(), 2);
        assert_eq!(a.head_dim, Some(32));
    }
}
