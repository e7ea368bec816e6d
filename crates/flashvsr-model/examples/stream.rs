//! The streaming API in a few lines: load a model, push frames one at a time, collect the
//! upscaled frames as they become final, then `finish`.
//!
//! ```text
//! cargo run -p flashvsr-model --example stream                 # fixture weights (tiny-v1.1)
//! cargo run -p flashvsr-model --example stream -- DIR [FRAMES] # upstream files in DIR
//! ```
//!
//! DIR holds the upstream file names (`diffusion_pytorch_model_streaming_dmd.safetensors`,
//! `LQ_proj_in.ckpt`, `TCDecoder.ckpt`, `posi_prompt.pth`). Without DIR the reduced-size
//! fixture weights in `shared/fixtures/tiny-v1.1` are used. The input is a synthetic 64×64
//! clip (40 frames by default), upscaled ×4 in tiny mode.
//!
//! What it shows: nothing comes back for the first 24 frames; the 25th frame returns 21
//! output frames; after that every 8th frame returns 8; `finish` returns the rest, so every
//! input frame gets exactly one output frame.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};
use candle_core::{DType, Device};
use flashvsr_loader::WeightStore;
use flashvsr_model::frames::{self, RgbFrame};
use flashvsr_model::pipeline::{FlashVsr, ModelComponents, ModelVersion, UpscaleOptions};

const FIXTURE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../../shared/fixtures/tiny-v1.1"
);

/// Loads the upstream files of `dir` (f32 on the CPU). `head_dim` is `None` for the real
/// model (128); the fixture's reduced DiT uses 32.
fn load_model(dir: &Path, head_dim: Option<usize>) -> Result<FlashVsr> {
    let device = Device::Cpu;
    let open = |file: &str| -> Result<Arc<WeightStore>> {
        let path = dir.join(file);
        let store =
            WeightStore::open(&[&path]).with_context(|| format!("loading {}", path.display()))?;
        Ok(Arc::new(store))
    };
    let prompt = open("posi_prompt.pth")?
        .tensor("posi_prompt", DType::F32, &device)
        .context("reading the prompt tensor `posi_prompt` from posi_prompt.pth")?;
    let components = ModelComponents {
        dit: open("diffusion_pytorch_model_streaming_dmd.safetensors")?
            .var_builder(DType::F32, &device),
        lq_proj: open("LQ_proj_in.ckpt")?.var_builder(DType::F32, &device),
        tc_decoder: Some(open("TCDecoder.ckpt")?.var_builder(DType::F32, &device)),
        vae: None,
        prompt,
        head_dim,
        dit_quantized: None,
    };
    Ok(FlashVsr::load(
        components,
        ModelVersion::V1_1,
        &device,
        DType::F32,
    )?)
}

/// Frame `i` of a synthetic clip: gradients with a diagonal band moving 3 px per frame .
fn synthetic_frame(width: usize, height: usize, i: usize) -> RgbFrame {
    let mut rgb = Vec::with_capacity(width * height * 3);
    for y in 0..height {
        for x in 0..width {
            let band = if (x + y + 3 * i) % 32 < 8 { 255 } else { 0 };
            rgb.extend_from_slice(&[(x * 255 / width) as u8, (y * 255 / height) as u8, band]);
        }
    }
    frames::from_rgb24(width, height, rgb).expect("width × height × 3 bytes")
}

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let (dir, head_dim) = match args.next() {
        Some(dir) => (PathBuf::from(dir), None),
        None => (PathBuf::from(FIXTURE), Some(32)),
    };
    let frames: usize = match args.next() {
        Some(n) => n
            .parse()
            .with_context(|| format!("frame count {n:?} is not a number"))?,
        None => 40,
    };
    let model = load_model(&dir, head_dim)?;
    println!("loaded {}", dir.canonicalize().unwrap_or(dir).display());

    let (width, height) = (64, 64);
    let mut session = model.session(width, height, &UpscaleOptions::default())?;
    let (out_w, out_h) = session.output_size();
    println!("{width}x{height} in, {out_w}x{out_h} out");

    let mut total = 0;
    for i in 0..frames {
        let out = session.push_frame(&synthetic_frame(width, height, i))?;
        total += out.len();
        println!(
            "push frame {:3}: {:2} frames back ({total} so far)",
            i + 1,
            out.len()
        );
    }
    let rest = session.finish()?;
    total += rest.len();
    println!(
        "finish:          {:2} frames back ({total} in all for {frames} input frames)",
        rest.len()
    );

    let s = session.stats();
    println!(
        "{} DiT steps; seconds: preprocess {:.2}, LQ projection {:.2}, DiT {:.2}, decode {:.2}, colour fix {:.2}",
        s.dit_steps, s.preprocess_s, s.lq_proj_s, s.dit_s, s.decode_s, s.color_fix_s
    );
    Ok(())
}
