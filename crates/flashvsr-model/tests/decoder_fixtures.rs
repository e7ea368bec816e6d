//! Decoders against the upstream fixtures: TCDecoder (tiny-v1.1, tiny-v1-steps; all at once
//! and streamed per DiT step) and the Wan VAE decoder (full-v1.1).
mod common;

use candle_core::{DType, Device, IndexOp, Tensor};
use common::*;
use flashvsr_model::decoders::{TcDecoder, TcState};

/// Checks a decoded video against `decoded_pre_cc.npy` (frames `stored`) and
/// `pre_cc_frame_stats.npy` (mean, min, max per frame and channel).
fn check_decoded(set: &str, video: &Tensor, stored: &[usize], tol: f32) -> anyhow::Result<()> {
    let stats = npy(set, "pre_cc_frame_stats.npy")?; // [n, 3, 3]
    let n = stats.dim(0)?;
    assert_eq!(video.dim(2)?, n, "{set}: decoded frame count");
    let want = npy(set, "decoded_pre_cc.npy")?;
    for (k, &j) in stored.iter().enumerate() {
        let d = max_abs_diff(&video.narrow(2, j, 1)?, &want.narrow(2, k, 1)?)?;
        assert!(
            d <= tol,
            "{set}: decoded frame {j} differs by {d} (tol {tol})"
        );
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
    let mut out = vec![dec.decode(
        &latents.narrow(2, 0, 6)?,
        &lq_frames(set, 0..21)?,
        &mut state,
    )?];
    let mut s = 1;
    while 4 + 2 * s < t {
        let lat = latents.narrow(2, 4 + 2 * s, 2)?;
        let lq = lq_frames(set, 8 * s + 13..8 * s + 21)?;
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
    let all = dec.decode(&latents, &lq_frames(set, 0..21)?, &mut state)?;
    check_decoded(set, &all, &[0, 1, 20], 2e-4)?;
    let streamed = tc_streamed(&dec, set, &latents)?;
    assert_eq!(max_abs_diff(&all, &streamed)?, 0.0);
    for per_call in [1, 2, 4] {
        let chunked = dec.decode_chunked(
            &latents,
            &lq_frames(set, 0..21)?,
            &mut TcState::new(),
            per_call,
        )?;
        assert_eq!(
            max_abs_diff(&all, &chunked)?,
            0.0,
            "{per_call} latents per call"
        );
    }
    // LQ frames that do not match the latents are refused.
    assert!(dec
        .decode_chunked(&latents, &lq_frames(set, 0..20)?, &mut TcState::new(), 2)
        .is_err());
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
    let err = dec
        .decode(&latents, &lq_frames(set, 0..24)?, &mut state)
        .unwrap_err();
    assert!(err.to_string().contains("need 21 LQ frames"), "{err}");
    // After the first call, 2 latents take 8 LQ frames.
    dec.decode(
        &latents.i((.., .., 0..1))?,
        &lq_frames(set, 0..1)?,
        &mut state,
    )?;
    let err = dec
        .decode(
            &latents.i((.., .., 1..3))?,
            &lq_frames(set, 1..8)?,
            &mut state,
        )
        .unwrap_err();
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
    assert_eq!(
        (dec.config().temporal_upsamples, dec.config().spatial_factor),
        (2, 8)
    );
    let latents = npy(set, "latents.npy")?;
    let mut state = WanVaeState::new();
    assert_eq!(dec.frames_for(6, &state), 21);
    let all = dec.decode(&latents, &mut state)?;
    check_decoded(set, &all, &[0, 20], 1e-4)?;
    // Streamed in pieces (1, 1, 2 latents: every cache transition, zero → 1 → 2 frames)
    // gives the same first 13 frames.
    let mut state = WanVaeState::new();
    let mut parts = Vec::new();
    for (start, len) in [(0, 1), (1, 1), (2, 2)] {
        parts.push(dec.decode(&latents.narrow(2, start, len)?, &mut state)?);
    }
    assert_eq!(state.latents_seen(), 4);
    assert_eq!(
        max_abs_diff(&all.narrow(2, 0, 13)?, &Tensor::cat(&parts, 2)?)?,
        0.0
    );
    // Colour fix of the last frame against final_float.npy.
    let fixed = ColorFix::AdaIn.apply(&all.narrow(2, 20, 1)?, &lq_frames(set, 20..21)?)?;
    let d = max_abs_diff(&fixed, &npy(set, "final_float.npy")?)?;
    assert!(d <= 2e-4, "final_float differs by {d}");
    Ok(())
}

/// Random weights of the given shapes (gammas = 1), as a VarBuilder.
fn synthetic(shapes: &[(String, Vec<usize>)]) -> anyhow::Result<candle_nn::VarBuilder<'static>> {
    let dev = Device::Cpu;
    let mut map = std::collections::HashMap::new();
    for (name, shape) in shapes {
        let t = if name.ends_with("gamma") {
            Tensor::ones(shape.as_slice(), DType::F32, &dev)?
        } else {
            let fan_in: usize = shape.iter().skip(1).product::<usize>().max(1);
            Tensor::randn(
                0f32,
                (1.0 / fan_in as f64).sqrt() as f32,
                shape.as_slice(),
                &dev,
            )?
        };
        map.insert(name.clone(), t);
    }
    Ok(candle_nn::VarBuilder::from_tensors(map, DType::F32, &dev))
}

fn all_finite(t: &Tensor) -> anyhow::Result<bool> {
    Ok(t.flatten_all()?
        .to_vec1::<f32>()?
        .iter()
        .all(|v| v.is_finite()))
}

/// Real TCDecoder shapes (spec 8.2, 66 tensors) at a 16x16 output.
/// Run with `cargo test -p flashvsr-model --test decoder_fixtures -- --ignored tc_decoder_real`.
#[test]
#[ignore = "real dims: ~180 MB of random weights, tens of seconds on 2 cores"]
fn tc_decoder_real_dims_synthetic() -> anyhow::Result<()> {
    let mut shapes = vec![];
    let mut conv = |name: String, o: usize, i: usize, k: usize, bias: bool| {
        shapes.push((format!("{name}.weight"), vec![o, i, k, k]));
        if bias {
            shapes.push((format!("{name}.bias"), vec![o]));
        }
    };
    conv("decoder.1".into(), 512, 784, 3, true);
    conv("decoder.3".into(), 512, 512, 3, false);
    for (blocks, c) in [([5, 6, 7], 512), ([11, 12, 13], 256), ([17, 18, 19], 128)] {
        for b in blocks {
            conv(format!("decoder.{b}.conv.0"), c, 2 * c, 3, true);
            conv(format!("decoder.{b}.conv.2"), c, c, 3, true);
            conv(format!("decoder.{b}.conv.4"), c, c, 3, true);
        }
    }
    conv("decoder.9.conv".into(), 512, 512, 1, false);
    conv("decoder.10".into(), 256, 512, 3, false);
    conv("decoder.15.conv".into(), 512, 256, 1, false);
    conv("decoder.16".into(), 128, 256, 3, false);
    conv("decoder.21.conv".into(), 256, 128, 1, false);
    conv("decoder.22".into(), 128, 128, 3, false);
    conv("decoder.24".into(), 128, 128, 3, false);
    conv("decoder.26".into(), 3, 128, 3, true);
    assert_eq!(
        shapes
            .iter()
            .filter(|(n, _)| n.ends_with("weight") || n.ends_with("bias"))
            .count(),
        66
    );
    let dec = TcDecoder::new(synthetic(&shapes)?)?;
    assert_eq!(dec.config().channels, [512, 256, 128, 128]);
    let dev = Device::Cpu;
    let mut state = TcState::new();
    let lat = Tensor::randn(0f32, 1.0, (1, 16, 2, 2, 2), &dev)?;
    let lq = Tensor::rand(-1f32, 1.0, (1, 3, 5, 16, 16), &dev)?;
    let a = dec.decode(&lat, &lq, &mut state)?;
    assert_eq!(a.dims(), &[1, 3, 5, 16, 16]);
    let lq = Tensor::rand(-1f32, 1.0, (1, 3, 8, 16, 16), &dev)?;
    let b = dec.decode(&lat, &lq, &mut state)?;
    assert_eq!(b.dims(), &[1, 3, 8, 16, 16]);
    assert!(all_finite(&a)? && all_finite(&b)?);
    Ok(())
}

/// Real Wan VAE decoder shapes (base dim 96, spec 8.2) at a 16x16 output.
/// Run with `cargo test -p flashvsr-model --test decoder_fixtures -- --ignored wan_vae_real`.
#[test]
#[ignore = "real dims: ~300 MB of random weights, tens of seconds on 2 cores"]
fn wan_vae_real_dims_synthetic() -> anyhow::Result<()> {
    use flashvsr_model::decoders::{WanVaeDecoder, WanVaeState};
    let mut shapes: Vec<(String, Vec<usize>)> = vec![];
    let mut conv3 = |name: &str, o: usize, i: usize, k: [usize; 3]| {
        shapes.push((format!("{name}.weight"), vec![o, i, k[0], k[1], k[2]]));
        shapes.push((format!("{name}.bias"), vec![o]));
    };
    conv3("conv2", 16, 16, [1, 1, 1]);
    conv3("decoder.conv1", 384, 16, [3, 3, 3]);
    let res = |shapes: &mut Vec<(String, Vec<usize>)>, p: &str, i: usize, o: usize| {
        shapes.push((format!("{p}.residual.0.gamma"), vec![i, 1, 1, 1]));
        shapes.push((format!("{p}.residual.2.weight"), vec![o, i, 3, 3, 3]));
        shapes.push((format!("{p}.residual.2.bias"), vec![o]));
        shapes.push((format!("{p}.residual.3.gamma"), vec![o, 1, 1, 1]));
        shapes.push((format!("{p}.residual.6.weight"), vec![o, o, 3, 3, 3]));
        shapes.push((format!("{p}.residual.6.bias"), vec![o]));
        if i != o {
            shapes.push((format!("{p}.shortcut.weight"), vec![o, i, 1, 1, 1]));
            shapes.push((format!("{p}.shortcut.bias"), vec![o]));
        }
    };
    res(&mut shapes, "decoder.middle.0", 384, 384);
    res(&mut shapes, "decoder.middle.2", 384, 384);
    shapes.push(("decoder.middle.1.norm.gamma".into(), vec![384, 1, 1]));
    shapes.push((
        "decoder.middle.1.to_qkv.weight".into(),
        vec![1152, 384, 1, 1],
    ));
    shapes.push(("decoder.middle.1.to_qkv.bias".into(), vec![1152]));
    shapes.push(("decoder.middle.1.proj.weight".into(), vec![384, 384, 1, 1]));
    shapes.push(("decoder.middle.1.proj.bias".into(), vec![384]));
    let resample = |shapes: &mut Vec<(String, Vec<usize>)>, idx: usize, c: usize, time: bool| {
        let p = format!("decoder.upsamples.{idx}");
        if time {
            shapes.push((format!("{p}.time_conv.weight"), vec![2 * c, c, 3, 1, 1]));
            shapes.push((format!("{p}.time_conv.bias"), vec![2 * c]));
        }
        shapes.push((format!("{p}.resample.1.weight"), vec![c / 2, c, 3, 3]));
        shapes.push((format!("{p}.resample.1.bias"), vec![c / 2]));
    };
    for idx in [0, 1, 2] {
        res(&mut shapes, &format!("decoder.upsamples.{idx}"), 384, 384);
    }
    resample(&mut shapes, 3, 384, true);
    res(&mut shapes, "decoder.upsamples.4", 192, 384);
    res(&mut shapes, "decoder.upsamples.5", 384, 384);
    res(&mut shapes, "decoder.upsamples.6", 384, 384);
    resample(&mut shapes, 7, 384, true);
    for idx in [8, 9, 10] {
        res(&mut shapes, &format!("decoder.upsamples.{idx}"), 192, 192);
    }
    resample(&mut shapes, 11, 192, false);
    for idx in [12, 13, 14] {
        res(&mut shapes, &format!("decoder.upsamples.{idx}"), 96, 96);
    }
    shapes.push(("decoder.head.0.gamma".into(), vec![96, 1, 1, 1]));
    shapes.push(("decoder.head.2.weight".into(), vec![3, 96, 3, 3, 3]));
    shapes.push(("decoder.head.2.bias".into(), vec![3]));
    assert_eq!(shapes.len(), 108);
    let dec = WanVaeDecoder::new(synthetic(&shapes)?)?;
    assert_eq!((dec.config().top_dim, dec.config().base_dim), (384, 96));
    let mut state = WanVaeState::new();
    let lat = Tensor::randn(0f32, 1.0, (1, 16, 3, 2, 2), &Device::Cpu)?;
    let out = dec.decode(&lat, &mut state)?;
    assert_eq!(out.dims(), &[1, 3, 9, 16, 16]);
    assert!(all_finite(&out)?);
    Ok(())
}
