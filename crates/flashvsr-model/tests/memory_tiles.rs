//! Memory-saving choices of the memory plan against the plain run, on the fixture weights (CPU):
//! tiles with parked KV caches against the whole frame (PSNR reported), one latent per decoder
//! call against two (identical), and the memory plan's KV count against the live cache.

mod common;

use candle_core::{DType, Device};
use common::*;
use flashvsr_model::frames::RgbFrame;
use flashvsr_model::pipeline::{
    FlashVsr, ModelComponents, ModelVersion, TileOptions, UpscaleOptions,
};

fn load() -> FlashVsr {
    let dev = Device::Cpu;
    let set = "tiny-v1.1";
    let prompt = store(set, "posi_prompt.pth")
        .unwrap()
        .tensor("posi_prompt", DType::F32, &dev)
        .unwrap();
    let components = ModelComponents {
        dit: weights(set, "diffusion_pytorch_model_streaming_dmd.safetensors").unwrap(),
        lq_proj: weights(set, "LQ_proj_in.ckpt").unwrap(),
        tc_decoder: Some(weights(set, "TCDecoder.ckpt").unwrap()),
        vae: None,
        prompt,
        head_dim: Some(32),
        dit_quantized: None,
    };
    FlashVsr::load(components, ModelVersion::V1_1, &dev, DType::F32).unwrap()
}

/// The fixture's 64×64 input frames, tiled 2×2 into a 128×128 clip (real picture content).
fn clip(n: usize) -> Vec<RgbFrame> {
    let frames = png_frames("tiny-v1.1", "input", 25).unwrap();
    (0..n)
        .map(|i| {
            let f = &frames[i % frames.len()];
            let (w, h) = (f.width * 2, f.height * 2);
            let mut data = vec![0u8; w * h * 3];
            for y in 0..h {
                for x in 0..w {
                    let (sx, sy) = (x % f.width, y % f.height);
                    // Mirror the copies so the picture is continuous across the joins.
                    let sx = if x >= f.width { f.width - 1 - sx } else { sx };
                    let sy = if y >= f.height { f.height - 1 - sy } else { sy };
                    let s = (sy * f.width + sx) * 3;
                    data[(y * w + x) * 3..(y * w + x) * 3 + 3].copy_from_slice(&f.data[s..s + 3]);
                }
            }
            flashvsr_model::frames::from_rgb24(w, h, data).unwrap()
        })
        .collect()
}

fn run(model: &FlashVsr, frames: &[RgbFrame], opts: &UpscaleOptions) -> Vec<RgbFrame> {
    let (w, h) = (frames[0].width, frames[0].height);
    let mut s = model.session(w, h, opts).unwrap();
    let mut out = Vec::new();
    for f in frames {
        out.extend(s.push_frame(f).unwrap());
    }
    out.extend(s.finish().unwrap());
    out
}

#[test]
fn tiles_with_parked_kv_match_resident_tiles_and_stay_close_to_the_whole_frame() {
    let model = load();
    let frames = clip(29); // two DiT steps
    let whole = run(&model, &frames, &UpscaleOptions::default());
    let tile = Some(TileOptions {
        size: 80,
        overlap: 16,
    });
    let resident = run(
        &model,
        &frames,
        &UpscaleOptions {
            tile,
            ..Default::default()
        },
    );
    let parked = run(
        &model,
        &frames,
        &UpscaleOptions {
            tile,
            park_kv: true,
            ..Default::default()
        },
    );
    assert_eq!(whole.len(), frames.len());
    assert_eq!(
        parked, resident,
        "parking the KV cache must not change a value"
    );
    let db = psnr(&parked, &whole);
    // Controls: the whole-frame output against itself moved by 8 output pixels, and against a
    // whole-frame run with other noise (seed 1): how far apart outputs of this reduced fixture
    // model are for reasons other than seams.
    let moved: Vec<RgbFrame> = whole.iter().map(|f| shift_right(f, 8)).collect();
    let shifted = psnr(&moved, &whole);
    let reseeded = run(
        &model,
        &frames,
        &UpscaleOptions {
            seed: 1,
            ..Default::default()
        },
    );
    let noise = psnr(&reseeded, &whole);
    println!(
        "tiled (4 tiles of 80 px, overlap 16, parked KV) vs whole frame: PSNR {db:.2} dB; \
         controls: whole moved by 8 px {shifted:.2} dB, whole with seed 1 {noise:.2} dB"
    );
    // Tiles see only their own picture (see tiling.rs), so the PSNR is finite (19.3 dB here,
    // 2026-12-06); the exact checks of placement and blending are in pipeline_fixtures.rs and
    // tiling.rs. This bound only catches garbage (a lost tile, a wrong blend weight).
    assert!(
        db.is_finite() && db > 12.0,
        "tiled vs whole PSNR {db:.2} dB"
    );
}

fn shift_right(f: &RgbFrame, px: usize) -> RgbFrame {
    let mut data = f.data.clone();
    for y in 0..f.height {
        for x in 0..f.width {
            let sx = x.saturating_sub(px);
            let (d, s) = ((y * f.width + x) * 3, (y * f.width + sx) * 3);
            data[d..d + 3].copy_from_slice(&f.data[s..s + 3]);
        }
    }
    flashvsr_model::frames::from_rgb24(f.width, f.height, data).unwrap()
}

#[test]
fn one_latent_per_decoder_call_gives_the_same_frames() {
    let model = load();
    let frames = clip(29);
    let two = run(&model, &frames, &UpscaleOptions::default());
    let one = run(
        &model,
        &frames,
        &UpscaleOptions {
            decoder_latents_per_call: Some(1),
            ..Default::default()
        },
    );
    assert_eq!(one, two);
}

#[test]
fn decoder_tail_in_stripes_gives_the_same_frames() {
    let model = load();
    let frames = clip(29);
    let whole = run(&model, &frames, &UpscaleOptions::default());
    // 128x128 output: the tail's input has 64 rows; 5-row stripes leave a short last one.
    for rows in [5, 16, 63] {
        let striped = run(
            &model,
            &frames,
            &UpscaleOptions {
                decoder_stripe_rows: Some(rows),
                decoder_latents_per_call: Some(1),
                ..Default::default()
            },
        );
        assert_eq!(striped, whole, "stripes of {rows} rows");
    }
}

#[test]
fn the_plans_tail_halo_is_the_decoders() {
    let set = "tiny-v1.1";
    let dec = flashvsr_model::decoders::tc::TcDecoder::new(weights(set, "TCDecoder.ckpt").unwrap())
        .unwrap();
    assert_eq!(
        dec.tail_halo_rows(),
        flashvsr_model::memory_plan::TC_TAIL_HALO_ROWS
    );
}
