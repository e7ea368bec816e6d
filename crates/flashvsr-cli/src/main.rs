//! `flashvsr`: FlashVSR video super-resolution from the command line.
//!
//! This file holds the argument definitions and the dispatch; each command lives in its own
//! module.

mod bench;
mod devices;
mod interrupt;
mod progress;
mod summary;
mod synth;
mod tools;
mod upscale;
mod weights;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};

use devices::DeviceChoice;

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
struct Cli {
    /// No progress output (errors are still printed).
    #[arg(short, long, global = true)]
    quiet: bool,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
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
    SynthWeights(synth::SynthArgs),
    /// Measure speed and memory on synthetic weights and a synthetic clip.
    Bench(bench::BenchArgs),
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
    /// Convert weight files (upstream pickles/safetensors) to one GGUF/safetensors file.
    Convert(tools::ConvertArgs),
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
  flashvsr upscale clip.y4m out/ --upstream-compat --noise noise.npy";

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ModeArg {
    Tiny,
    TinyLong,
    Full,
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

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum DTypeArg {
    F32,
    F16,
    Bf16,
}

impl DTypeArg {
    pub fn dtype(self) -> candle_core::DType {
        match self {
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

/// `START:END` in input frames, END exclusive; either side may be empty.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameRange {
    pub start: u64,
    pub end: Option<u64>,
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

pub(crate) fn parse_scale(s: &str) -> Result<f64, String> {
    let v: f64 = s
        .parse()
        .map_err(|_| format!("scale {s:?} is not a number"))?;
    if !v.is_finite() || v < 1.0 {
        return Err(format!("scale must be a number >= 1 (got {s})"));
    }
    Ok(v)
}

fn parse_positive_f64(s: &str) -> Result<f64, String> {
    let v: f64 = s.parse().map_err(|_| format!("{s:?} is not a number"))?;
    if !v.is_finite() || v <= 0.0 {
        return Err(format!("must be a positive number (got {s})"));
    }
    Ok(v)
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

    /// Upscale factor (any number >= 1; the model is trained for 4).
    #[arg(long, default_value = "4", value_parser = parse_scale)]
    pub scale: f64,
    /// tiny: TCDecoder (fast); tiny-long: same numerics, lowest memory; full: Wan VAE decoder.
    #[arg(long, value_enum, default_value = "tiny")]
    pub mode: ModeArg,
    /// Compute dtype [default: f32 on cpu, bf16 on GPUs].
    #[arg(long, value_enum)]
    pub dtype: Option<DTypeArg>,
    /// cpu, cuda, cuda:N, metal or auto (best available).
    #[arg(long, default_value = "auto", value_name = "DEVICE")]
    pub device: DeviceChoice,

    /// Process the picture in tiles of SIZE input pixels (bounds memory for big inputs).
    #[arg(long, value_name = "SIZE")]
    pub tile: Option<usize>,
    /// Overlap between tiles, in input pixels (blended).
    #[arg(long, value_name = "PX", default_value = "32", requires = "tile")]
    pub tile_overlap: usize,

    /// Sparse attention budget (upstream: 1.5 faster, 2.0 more stable).
    #[arg(long, default_value = "2.0", value_parser = parse_positive_f64)]
    pub sparse_ratio: f64,
    /// KV cache length in segments.
    #[arg(long, default_value = "3.0", value_parser = parse_positive_f64)]
    pub kv_ratio: f64,
    /// Local attention range in blocks (upstream: 9 sharper, 11 more stable).
    #[arg(long, default_value = "11")]
    pub local_range: usize,
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
    /// Upstream's output geometry: crop to multiples of 128 px and 8n-3 frames.
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
    /// Constant rate factor (lower = better quality, bigger file).
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

    /// Print a JSON summary on stdout at the end.
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
    #[arg(long, default_value = "tiny", value_parser = ["tiny", "full", "all"])]
    pub parts: String,
    /// Download manifest to use instead of the built-in one (also $FLASHVSR_MANIFEST).
    #[arg(long, hide = true, value_name = "FILE")]
    pub manifest: Option<PathBuf>,
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let quiet = cli.quiet;
    match cli.command {
        Command::Upscale(args) => upscale::run(&args, quiet),
        Command::Download(args) => weights::components::download_command(&args, quiet),
        Command::Devices { json } => {
            let list = devices::list();
            if json {
                println!("{}", serde_json::to_string_pretty(&list)?);
            } else {
                for d in list {
                    let state = if d.usable { "usable" } else { "unavailable" };
                    let note = if d.note.is_empty() {
                        String::new()
                    } else {
                        format!(" ({})", d.note)
                    };
                    println!("{:<8} {state}{note}", d.name);
                }
            }
            Ok(())
        }
        Command::SynthWeights(args) => synth::run(&args, quiet),
        Command::Bench(args) => bench::run(&args, quiet),
        Command::Inspect { paths, json } => tools::inspect(&paths, json),
        Command::Validate {
            paths,
            against,
            structure,
            json,
        } => tools::validate(&paths, &against, structure, json),
        Command::Convert(args) => tools::convert(&args, quiet),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    interrupt::install();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if interrupt::is_interrupt(&e) => {
            eprintln!("error: interrupted; no output was written");
            ExitCode::from(interrupt::EXIT_CODE as u8)
        }
        Err(e) => {
            // One line: the context chain joined, internal newlines folded.
            let msg = format!("{e:#}").replace('\n', "; ");
            eprintln!("error: {msg}");
            ExitCode::FAILURE
        }
    }
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
        assert_eq!(parse_scale("2.5"), Ok(2.5));
        assert!(parse_scale("0.5").is_err());
        assert!(parse_scale("nan").is_err());
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
