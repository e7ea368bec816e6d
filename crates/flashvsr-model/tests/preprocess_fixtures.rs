//! Preprocessing against the upstream fixtures: PIL-exact bicubic (0 differences) and the
//! float LQ mapping.
mod common;

use candle_core::{DType, Device, IndexOp};
use common::*;
use flashvsr_model::frames::{frames_to_tensor, RgbFrame};
use flashvsr_model::preprocess::*;
use flashvsr_model::schedule::{FramePlan, FrameRule};

fn check_set(set: &str, input_frames: usize, scale: f64) -> anyhow::Result<()> {
    let inputs = png_frames(set, "input", input_frames)?;
    let plan = FramePlan::new(input_frames, FrameRule::Upstream)?;
    let geo = FrameGeometry::new(
        inputs[0].width,
        inputs[0].height,
        scale,
        SizeRule::UpstreamCrop,
    )?;
    let expected = png_frames(set, "lq_upscaled", plan.lq_frames)?;
    let mut prepared = Vec::new();
    for (j, want) in expected.iter().enumerate() {
        let got = geo.prepare(&inputs[plan.source_frame(j)], SizeRule::UpstreamCrop)?;
        assert_eq!(
            (got.width, got.height),
            (want.width, want.height),
            "{set} frame {j} size"
        );
        let diffs = got
            .data
            .iter()
            .zip(&want.data)
            .filter(|(a, b)| a != b)
            .count();
        assert_eq!(
            diffs, 0,
            "{set} lq frame {j}: {diffs} bytes differ from PIL"
        );
        prepared.push(got);
    }
    let refs: Vec<&RgbFrame> = prepared.iter().collect();
    let lq = frames_to_tensor(&refs, &Device::Cpu, DType::F32)?;
    assert_eq!(lq.dims(), &[1, 3, plan.lq_frames, geo.model_h, geo.model_w]);
    // Spot-check the mapping of one pixel.
    let px = &prepared[3].data[0..3];
    let v = lq.i((0, 1, 3, 0, 0))?.to_scalar::<f32>()?;
    assert_eq!(v, (px[1] as f32 / 255.0) * 2.0 - 1.0);
    Ok(())
}

#[test]
fn bicubic_matches_pil_tiny_v11() -> anyhow::Result<()> {
    check_set("tiny-v1.1", 25, 4.0)
}

#[test]
fn bicubic_matches_pil_tiny_v1_steps() -> anyhow::Result<()> {
    check_set("tiny-v1-steps", 46, 4.0)
}
