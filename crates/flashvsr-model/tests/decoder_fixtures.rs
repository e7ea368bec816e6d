//! Decoders against the upstream fixtures: TCDecoder (tiny-v1.1, tiny-v1-steps; all at once
//! and streamed per DiT step) and the Wan VAE decoder (full-v1.1).
mod common_dec;

use candle_core::{DType, Device, IndexOp, Tensor};
use common_dec::*;
use flashvsr_model::decoders::{TcDecoder, TcState};
use flashvsr_model::preprocess::{frames_to_tensor, RgbFrame};

/// LQ video `[1,3,n,H,W]` of the fixture's bicubic frames `[start, end)`.
fn lq_video(set: &str, start: usize, end: usize) -> anyhow::Result<Tensor> {
    let frames = (start..end)
        .map(|i| png(&fixture(set, &format!("lq_upscaled/frame_{i:04}.png"))))
        .collect::<anyhow::Result<Vec<RgbFrame>>>()?;
    let refs: Vec<&RgbFrame> = frames.iter().collect();
    Ok(frames_to_tensor(&refs, &Device::Cpu, DType::F32)?)
}

/// Checks a decoded video against `decoded_pre_cc.npy` (frames `stored`) and
/// `pre_cc_frame_stats.npy` (mean, min, max per frame and channel).
fn check_decoded(set: &str, video: &Tensor, stored: &[usize], tol: f32) -> anyhow::Result<()> {
    let stats = npy(set, "pre_cc_frame_stats.npy")?; // [n, 3, 3]
    let n = stats.dim(0)?;
    assert_eq!(video.dim(2)?, n, "{set}: decoded frame count");
    let want = npy(set, "decoded_pre_cc.npy")?;
    for (k, &j) in stored.iter().enumerate() {
        let d = max_abs_diff(&video.narrow(2, j, 1)?, &want.narrow(2, k, 1)?)?;
        assert!(d <= tol, "{set}: decoded frame {j} differs by {d} (tol {tol})");
    }
    let flat = video.squeeze(0)?.flatten_from(2)?; // [3, n, H·W]
    let ours = Tensor::stack(&[flat.mean(2)?, flat.min(2)?, flat.max(2)?], 2)?; // [3, n, 3]
    let d = max_abs_diff(&ours.transpose(0, 1)?, &stats)?;
    assert!(d <= tol, "{set}: per-frame stats differ by {d} (tol {tol})");
    Ok(())
}

fn tc_decoder(set: &str) -> anyhow::Result<TcDecoder> {
    Ok(TcDecoder::new(weights(set, "TCDecoder.ckpt")?)?)
}

/// Streams the latents per DiT step (6, then 2 at a time) with the matching LQ frames.
fn tc_streamed(dec: &TcDecoder, set: &str, latents: &Tensor) -> anyhow::Result<Tensor> {
    let mut state = TcState::new();
    let t = latents.dim(2)?;
    let mut out = vec![dec.decode(&latents.narrow(2, 0, 6)?, &lq_video(set, 0, 21)?, &mut state)?];
    let mut s = 1;
    while 4 + 2 * s < t {
        let lat = latents.narrow(2, 4 + 2 * s, 2)?;
        let lq = lq_video(set, 8 * s + 13, 8 * s + 21)?;
        out.push(dec.decode(&lat, &lq, &mut state)?);
        s += 1;
    }
    Ok(Tensor::cat(&out, 2)?)
}

#[test]
fn tc_decoder_tiny_v11_all_at_once_and_streamed() -> anyhow::Result<()> {
    let set = "tiny-v1.1";
    let dec = tc_decoder(set)?;
    assert_eq!(dec.config().channels, [24, 16, 16, 16]);
    assert_eq!(dec.config().latent_channels, 16);
    let latents = npy(set, "latents.npy")?;
    let mut state = TcState::new();
    let all = dec.decode(&latents, &lq_video(set, 0, 21)?, &mut state)?;
    check_decoded(set, &all, &[0, 1, 20], 2e-4)?;
    let streamed = tc_streamed(&dec, set, &latents)?;
    assert_eq!(max_abs_diff(&all, &streamed)?, 0.0);
    Ok(())
}

#[test]
fn tc_decoder_tiny_v1_steps_streamed() -> anyhow::Result<()> {
    let set = "tiny-v1-steps";
    let dec = tc_decoder(set)?;
    let latents = npy(set, "latents.npy")?;
    let streamed = tc_streamed(&dec, set, &latents)?;
    check_decoded(set, &streamed, &[0, 1, 44], 2e-4)?;
    // Chunked == whole-video decoding is checked on tiny-v1.1 (this set is 4x larger).
    Ok(())
}

#[test]
fn tc_decoder_rejects_wrong_lq_count() -> anyhow::Result<()> {
    let set = "tiny-v1.1";
    let dec = tc_decoder(set)?;
    let latents = npy(set, "latents.npy")?;
    let mut state = TcState::new();
    let err = dec.decode(&latents, &lq_video(set, 0, 24)?, &mut state).unwrap_err();
    assert!(err.to_string().contains("need 21 LQ frames"), "{err}");
    // After the first call, 2 latents take 8 LQ frames.
    dec.decode(&latents.i((.., .., 0..1))?, &lq_video(set, 0, 1)?, &mut state)?;
    let err = dec.decode(&latents.i((.., .., 1..3))?, &lq_video(set, 1, 8)?, &mut state).unwrap_err();
    assert!(err.to_string().contains("need 8 LQ frames"), "{err}");
    Ok(())
}

#[test]
fn wan_vae_full_v11_whole_and_streamed() -> anyhow::Result<()> {
    use flashvsr_model::color_fix::ColorFix;
    use flashvsr_model::decoders::{WanVaeDecoder, WanVaeState};
    let set = "full-v1.1";
    let dec = WanVaeDecoder::new(weights(set, "Wan2.1_VAE.pth")?)?;
    assert_eq!((dec.config().base_dim, dec.config().top_dim), (4, 16));
    assert_eq!((dec.config().temporal_upsamples, dec.config().spatial_factor), (2, 8));
    let latents = npy(set, "latents.npy")?;
    let mut state = WanVaeState::new();
    assert_eq!(dec.frames_for(6, &state), 21);
    let all = dec.decode(&latents, &mut state)?;
    check_decoded(set, &all, &[0, 20], 1e-4)?;
    // Streamed as the session would: step 0's 6 latents one by one.
    let mut state = WanVaeState::new();
    let mut parts = Vec::new();
    for (start, len) in [(0, 1), (1, 1), (2, 3), (5, 1)] {
        parts.push(dec.decode(&latents.narrow(2, start, len)?, &mut state)?);
    }
    assert_eq!(state.latents_seen(), 6);
    assert_eq!(max_abs_diff(&all, &Tensor::cat(&parts, 2)?)?, 0.0);
    // Colour fix of the last frame against final_float.npy.
    let fixed = ColorFix::AdaIn.apply(&all.narrow(2, 20, 1)?, &lq_video(set, 20, 21)?)?;
    let d = max_abs_diff(&fixed, &npy(set, "final_float.npy")?)?;
    assert!(d <= 2e-4, "final_float differs by {d}");
    Ok(())
}
