//! AdaIN colour fix and 8-bit conversion against the upstream fixtures, fed with the
//! fixture's own decoder output (`decoded_pre_cc.npy`) and bicubic LQ frames.
mod common;

use candle_core::IndexOp;
use common::*;
use flashvsr_model::color_fix::{self, ColorFix};
use flashvsr_model::frames;

/// `decoded_frames`: the frame indices held by `decoded_pre_cc.npy`; the last one is the
/// frame of `final_float.npy`.
fn check_set(
    set: &str,
    decoded_frames: &[usize],
    n_out: usize,
    final_tol: f32,
) -> anyhow::Result<()> {
    let decoded = npy(set, "decoded_pre_cc.npy")?;
    let stats = npy(set, "adain_stats.npy")?; // [n_out, 3, 4]
    assert_eq!(stats.dims(), &[n_out, 3, 4]);

    // LQ statistics of every output frame.
    let all: Vec<usize> = (0..n_out).collect();
    let lq_all = lq_frames(set, all.iter().copied())?;
    let (mean_lq, std_lq) = color_fix::mean_std(&lq_all)?; // [1,3,n]
    let want_mean_lq = stats.i((.., .., 2))?.t()?.unsqueeze(0)?;
    let want_std_lq = stats.i((.., .., 3))?.t()?.unsqueeze(0)?;
    assert!(max_abs_diff(&mean_lq, &want_mean_lq)? < 1e-5);
    assert!(max_abs_diff(&std_lq, &want_std_lq)? < 1e-5);

    // Decoded-frame statistics of the stored frames.
    let (mean_hq, std_hq) = color_fix::mean_std(&decoded)?;
    for (k, &j) in decoded_frames.iter().enumerate() {
        let d_mean = max_abs_diff(
            &mean_hq.i((.., .., k))?,
            &stats.i((j, .., 0))?.unsqueeze(0)?,
        )?;
        let d_std = max_abs_diff(&std_hq.i((.., .., k))?, &stats.i((j, .., 1))?.unsqueeze(0)?)?;
        assert!(
            d_mean < 1e-5 && d_std < 1e-5,
            "{set} frame {j}: {d_mean} {d_std}"
        );
    }

    // AdaIN of the last stored frame against `final_float.npy`, then the 8-bit output.
    let last = *decoded_frames.last().unwrap();
    let k = decoded_frames.len() - 1;
    let hq = decoded.narrow(2, k, 1)?;
    let lq = lq_frames(set, [last])?;
    let fixed = ColorFix::AdaIn.apply(&hq, &lq)?;
    let want = npy(set, "final_float.npy")?;
    let diff = max_abs_diff(&fixed, &want)?;
    assert!(diff <= final_tol, "{set} final_float: max diff {diff}");

    let ours = &frames::to_rgb_frames(&fixed)?[0];
    let png_frame = png_frame(set, "output", last)?;
    let mut off = 0usize;
    for (a, b) in ours.data.iter().zip(&png_frame.data) {
        let d = (*a as i32 - *b as i32).abs();
        assert!(d <= 1, "{set} output frame {last}: {a} vs {b}");
        off += (d == 1) as usize;
    }
    assert!(
        off * 1000 <= ours.data.len(),
        "{set}: {off} values off by one"
    );
    // The stored float frame converts to the stored PNG exactly (upstream conversion).
    let exact = &frames::to_rgb_frames(&want)?[0];
    assert_eq!(
        exact.data, png_frame.data,
        "{set}: u8 conversion of final_float"
    );
    Ok(())
}

#[test]
fn adain_tiny_v11() -> anyhow::Result<()> {
    check_set("tiny-v1.1", &[0, 1, 20], 21, 2e-4)
}

#[test]
fn adain_full_v11() -> anyhow::Result<()> {
    check_set("full-v1.1", &[0, 20], 21, 2e-4)
}

#[test]
fn adain_tiny_v1_steps() -> anyhow::Result<()> {
    check_set("tiny-v1-steps", &[0, 1, 44], 45, 2e-4)
}
