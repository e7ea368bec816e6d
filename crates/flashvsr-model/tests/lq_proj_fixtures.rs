//! LQ projection vs the upstream fixtures (v1.1 `Causal_LQ4x_Proj`, v1 `Buffer_LQ4x_Proj`).
mod common;

use anyhow::Result;
use candle_core::{IndexOp, Tensor};
use common::*;
use flashvsr_model::config::LqProjConfig;
use flashvsr_model::lq_proj::{LqConvLayout, LqProj, LqProjProbes, LqProjState, LqProjVariant};

/// Runs the stream calls of `steps` DiT steps (spec §3) and checks every act1/act2/feature,
/// with the convolutions in `layout` (the channels-last one is what CUDA runs).
fn check(
    set: &str,
    variant: LqProjVariant,
    steps: usize,
    feat_tol: f32,
    layout: LqConvLayout,
) -> Result<()> {
    let vb = weights(set, "LQ_proj_in.fp32.ckpt")?;
    let cfg = LqProjConfig::from_weights(&vb)?;
    let proj = LqProj::with_layout(vb, &cfg, variant, layout)?;
    let frames = 17 + 8 * steps; // F = 8 * (steps + 2) + 1
    let lq = lq_video(set, frames)?;
    let act1 = npy(set, "lq_proj_act1.npy")?;
    let act2 = npy(set, "lq_proj_act2.npy")?;
    let mut state = LqProjState::new();
    let mut call = 0usize;
    let mut run = |start: usize, len: usize, state: &mut LqProjState| -> Result<Option<Tensor>> {
        let mut taps = LqProjProbes::default();
        let out = proj.stream_with_probes(&lq.narrow(2, start, len)?, state, Some(&mut taps))?;
        let a1 = taps.act1.expect("act1 tap");
        assert_close(
            &format!("{set} act1 call {call}"),
            &a1.squeeze(0)?,
            &act1.i(call)?,
            1e-4,
            1e-4,
        );
        if call > 0 {
            let a2 = taps.act2.expect("act2 tap");
            assert_close(
                &format!("{set} act2 call {call}"),
                &a2.squeeze(0)?,
                &act2.i(call - 1)?,
                1e-4,
                1e-4,
            );
        }
        call += 1;
        Ok(out)
    };
    for step in 0..steps {
        let mut feats = Vec::new();
        if step == 0 {
            assert!(run(0, 1, &mut state)?.is_none());
            for k in 0..6 {
                feats.push(run(1 + 4 * k, 4, &mut state)?.expect("features"));
            }
        } else {
            let s = 8 * step + 17;
            feats.push(run(s, 4, &mut state)?.expect("features"));
            feats.push(run(s + 4, 4, &mut state)?.expect("features"));
        }
        let got = Tensor::cat(&feats, 1)?;
        let want = npy(set, &format!("lq_feat_step{step}.npy"))?;
        assert_close(
            &format!("{set} lq_feat_step{step}"),
            &got,
            &want,
            feat_tol,
            1e-4,
        );
    }
    Ok(())
}

#[test]
fn lq_proj_v1_1_causal_matches_tiny_v1_1() -> Result<()> {
    check(
        "tiny-v1.1",
        LqProjVariant::Causal,
        1,
        3e-5,
        LqConvLayout::Ncthw,
    )
}

#[test]
fn lq_proj_v1_buffer_matches_tiny_v1_steps() -> Result<()> {
    check(
        "tiny-v1-steps",
        LqProjVariant::Buffer,
        4,
        4e-5,
        LqConvLayout::Ncthw,
    )
}

#[test]
fn lq_proj_channels_last_v1_1_causal_matches_tiny_v1_1() -> Result<()> {
    check(
        "tiny-v1.1",
        LqProjVariant::Causal,
        1,
        3e-5,
        LqConvLayout::ChannelsLast,
    )
}

#[test]
fn lq_proj_channels_last_v1_buffer_matches_tiny_v1_steps() -> Result<()> {
    check(
        "tiny-v1-steps",
        LqProjVariant::Buffer,
        4,
        4e-5,
        LqConvLayout::ChannelsLast,
    )
}
