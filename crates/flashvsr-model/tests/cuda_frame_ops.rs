//! The CUDA frame ops against the host reference: the bicubic resize byte for byte, the fused
//! colour fix + 8-bit conversion against `ColorFix::apply` + clamp + `to_rgb_frames` on the CPU.
//! Needs a GPU: build with
//! `cargo test --release -p flashvsr-model --features cuda --test cuda_frame_ops --no-run` and
//! run the binary on the device machine (`--nocapture --test-threads=1` prints the counts and
//! timings).
#![cfg(feature = "cuda")]

use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use flashvsr_model::color_fix::ColorFix;
use flashvsr_model::frames::{self, RgbFrame};
use flashvsr_model::preprocess::{resize_bicubic, DevicePreprocess, FrameGeometry, SizeRule};

/// xorshift64*: reproducible cases without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545F4914F6CDD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn unit(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 24) as f32
    }
}

/// Random frame with smooth structure plus noise (so the bicubic overshoot clips sometimes).
fn random_frame(w: usize, h: usize, rng: &mut Rng) -> RgbFrame {
    let (fx, fy) = (rng.unit() * 0.3 + 0.02, rng.unit() * 0.3 + 0.02);
    let mut data = Vec::with_capacity(w * h * 3);
    for y in 0..h {
        for x in 0..w {
            for c in 0..3 {
                let s = ((x as f32 * fx + c as f32).sin() * (y as f32 * fy).cos() + 1.0) * 110.0;
                let v = if rng.below(8) == 0 {
                    rng.below(256) as f32
                } else {
                    s + rng.unit() * 30.0
                };
                data.push(v.clamp(0.0, 255.0) as u8);
            }
        }
    }
    frames::from_rgb24(w, h, data).expect("consistent frame")
}

/// Allocates and drops 0xA5 buffers of these sizes first, so that the stream-ordered allocator
/// most likely hands that memory to the kernels: unwritten bytes then show.
fn poison(dev: &Device, sizes: &[usize]) -> anyhow::Result<()> {
    let held: Vec<Tensor> = sizes
        .iter()
        .map(|&n| Tensor::full(0xA5u8, n.max(1), dev))
        .collect::<candle_core::Result<_>>()?;
    dev.synchronize()?;
    drop(held);
    Ok(())
}

fn bytes(t: &Tensor) -> anyhow::Result<Vec<u8>> {
    Ok(t.to_device(&Device::Cpu)?.flatten_all()?.to_vec1::<u8>()?)
}

#[test]
fn bicubic_kernel_matches_the_host_resize() -> anyhow::Result<()> {
    let dev = Device::new_cuda(0)?;
    let mut rng = Rng(0x9E3779B97F4A7C15);
    let mut cases = 0;
    // Plain resizes: random sizes, up and down, odd sizes, one axis kept.
    for i in 0..60 {
        let (w, h) = (1 + rng.below(150), 1 + rng.below(90));
        let (ow, oh) = match i % 5 {
            0 => (w * 2, h * 2),
            1 => (w * 4, h * 4),
            2 => (w, 1 + rng.below(300)),
            3 => (1 + rng.below(w.max(2)), 1 + rng.below(h.max(2))),
            _ => (1 + rng.below(500), 1 + rng.below(300)),
        };
        let src = random_frame(w, h, &mut rng);
        let want = resize_bicubic(&src, ow, oh)?;
        let op = DevicePreprocess::resize(w, h, ow, oh, &dev)?;
        poison(&dev, &[ow * oh * 3, ow * h * 3])?;
        let got = bytes(&op.prepare(&src)?)?;
        assert_eq!(got, want.data, "resize {w}x{h} -> {ow}x{oh}");
        cases += 1;
    }
    // The pipeline's geometries: scales of FrameGeometry, both size rules.
    for i in 0..40 {
        let scale = [2.0, 2.5, 3.0, 3.7, 4.0][i % 5];
        let rule = if i % 2 == 0 {
            SizeRule::PadToGrid
        } else {
            SizeRule::UpstreamCrop
        };
        let (w, h) = (64 + rng.below(200), 64 + rng.below(120));
        let g = FrameGeometry::new(w, h, scale, rule)?;
        let src = random_frame(w, h, &mut rng);
        let want = g.prepare(&src, rule)?;
        let op = DevicePreprocess::new(w, h, &g, rule, &dev)?;
        poison(&dev, &[g.model_w * g.model_h * 3, g.model_w * h * 3])?;
        let got = bytes(&op.prepare(&src)?)?;
        assert_eq!(got, want.data, "{w}x{h} x{scale} {rule:?}");
        cases += 1;
    }
    println!("bicubic: {cases} random cases byte-identical");
    // Real sizes, with timings (host: today's path, resize + crop/pad; device: upload of the
    // small frame + both passes, synchronised).
    for (w, h, rule) in [
        (352, 192, SizeRule::PadToGrid),
        (480, 270, SizeRule::PadToGrid),
        (480, 270, SizeRule::UpstreamCrop),
    ] {
        let g = FrameGeometry::new(w, h, 4.0, rule)?;
        let src = random_frame(w, h, &mut rng);
        let want = g.prepare(&src, rule)?;
        let op = DevicePreprocess::new(w, h, &g, rule, &dev)?;
        poison(&dev, &[g.model_w * g.model_h * 3, g.model_w * h * 3])?;
        let got = bytes(&op.prepare(&src)?)?;
        assert_eq!(got, want.data, "{w}x{h} x4 {rule:?}");
        let reps = 30;
        let t0 = Instant::now();
        for _ in 0..reps {
            let _ = g.prepare(&src, rule)?;
        }
        let host_ms = t0.elapsed().as_secs_f64() * 1e3 / reps as f64;
        let t0 = Instant::now();
        for _ in 0..reps {
            let _ = frames::to_device(&g.prepare(&src, rule)?, &dev)?;
            dev.synchronize()?;
        }
        let host_upload_ms = t0.elapsed().as_secs_f64() * 1e3 / reps as f64;
        let t0 = Instant::now();
        for _ in 0..reps {
            let _ = op.prepare(&src)?;
            dev.synchronize()?;
        }
        let dev_ms = t0.elapsed().as_secs_f64() * 1e3 / reps as f64;
        println!(
            "bicubic {w}x{h} -> model {}x{} {rule:?}: identical; host resize {host_ms:.3} ms, host resize + upload {host_upload_ms:.3} ms, device (upload small + kernels) {dev_ms:.3} ms per frame",
            g.model_w, g.model_h
        );
    }
    Ok(())
}

/// A decoded video `[1, 3, T, H, W]` (f32 values in about [-1.1, 1.1], rounded to `dtype`) and
/// LQ frames `[H, W, 3]` u8 at the model size, on the CPU.
fn colour_case(
    t: usize,
    h: usize,
    w: usize,
    dtype: DType,
    rng: &mut Rng,
) -> anyhow::Result<(Tensor, Vec<RgbFrame>)> {
    let mut hq = Vec::with_capacity(3 * t * h * w);
    for c in 0..3 {
        for ti in 0..t {
            let (gain, bias) = (0.6 + 0.5 * rng.unit(), rng.unit() * 0.4 - 0.2);
            for y in 0..h {
                for x in 0..w {
                    let s = ((x as f32 * 0.05 + c as f32 + ti as f32).sin()
                        * (y as f32 * 0.03).cos())
                        * gain
                        + bias;
                    hq.push(s + (rng.unit() - 0.5) * 0.2);
                }
            }
        }
    }
    let hq = Tensor::from_vec(hq, (1, 3, t, h, w), &Device::Cpu)?.to_dtype(dtype)?;
    let lq = (0..t).map(|_| random_frame(w, h, rng)).collect();
    Ok((hq, lq))
}

/// The LQ video `[1, 3, T, H, W]` built on the host with the scalar mapping
/// [`frames::u8_to_unit`] byte by byte (upstream's `(u8 / 255) * 2 - 1` in f32, spec §7), then
/// cast to `dtype`: the reference the fused kernel's own u8 reading must match, independent of
/// how `frames::unit_video` builds it.
fn scalar_unit_video(lq: &[RgbFrame], dtype: DType) -> anyhow::Result<Tensor> {
    let (h, w) = (lq[0].height, lq[0].width);
    let mut v = Vec::with_capacity(3 * lq.len() * h * w);
    for c in 0..3 {
        for f in lq {
            v.extend(f.data.chunks_exact(3).map(|px| frames::u8_to_unit(px[c])));
        }
    }
    Ok(Tensor::from_vec(v, (1, 3, lq.len(), h, w), &Device::Cpu)?.to_dtype(dtype)?)
}

/// `frames::unit_video` must give [`frames::u8_to_unit`] for every byte, on the host and on the
/// device: the colour-fix comparison below uses it as the CPU reference's LQ video (and the
/// pipeline feeds it to the LQ projection), while the fused kernel reads the bytes itself.
/// Candle's `index_select` writes 0 for an id equal to its type's maximum (255 for u8 ids), so
/// a table lookup indexed by the raw u8 bytes maps 255 to 0.0 instead of 1.0.
#[test]
fn unit_video_maps_every_byte_like_u8_to_unit() -> anyhow::Result<()> {
    let bytes: Vec<u8> = (0..=255u8).collect();
    let frame = frames::from_rgb24(256, 1, bytes.iter().flat_map(|&b| [b, b, b]).collect())?;
    let mut failures = Vec::new();
    for dev in [Device::Cpu, Device::new_cuda(0)?] {
        let held = frames::to_device(&frame, &dev)?;
        let got = frames::unit_video(&[held], DType::F32)?
            .to_device(&Device::Cpu)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        for (i, &b) in bytes.iter().chain(&bytes).chain(&bytes).enumerate() {
            if got[i] != frames::u8_to_unit(b) {
                failures.push(format!(
                    "{dev:?} channel {}: byte {b} -> {} (want {})",
                    i / 256,
                    got[i],
                    frames::u8_to_unit(b)
                ));
            }
        }
    }
    assert!(failures.is_empty(), "unit_video:\n{}", failures.join("\n"));
    Ok(())
}

struct Diff {
    differing: usize,
    max: u8,
    total: usize,
}

fn diff(a: &[RgbFrame], b: &[RgbFrame]) -> Diff {
    let mut d = Diff {
        differing: 0,
        max: 0,
        total: 0,
    };
    for (fa, fb) in a.iter().zip(b) {
        assert_eq!((fa.width, fa.height), (fb.width, fb.height));
        for (&x, &y) in fa.data.iter().zip(&fb.data) {
            let e = x.abs_diff(y);
            d.differing += (e != 0) as usize;
            d.max = d.max.max(e);
            d.total += 1;
        }
    }
    assert_eq!(a.len(), b.len());
    d
}

/// The session's colour step on `dev`: crop of the decoded video and of the LQ frames to
/// `out_h`×`out_w`, then either the fused kernels or today's tensor path.
fn colour_step(
    fix: ColorFix,
    hq: &Tensor,
    lq: &[RgbFrame],
    out_h: usize,
    out_w: usize,
    dev: &Device,
    fused: bool,
) -> anyhow::Result<Vec<RgbFrame>> {
    let dtype = hq.dtype();
    let held: Vec<Tensor> = lq
        .iter()
        .map(|f| frames::to_device(f, dev))
        .collect::<candle_core::Result<_>>()?;
    let lq_video = frames::unit_video(&held, dtype)?;
    let hq = hq.to_device(dev)?;
    let crop = |t: &Tensor| t.narrow(3, 0, out_h)?.narrow(4, 0, out_w);
    let (hq, reference) = (crop(&hq)?, crop(&lq_video)?);
    if fused {
        let lq_frames = Tensor::stack(&held, 0)?
            .narrow(1, 0, out_h)?
            .narrow(2, 0, out_w)?;
        let (t, _, _, _, _) = hq.dims5()?;
        poison(dev, &[t * out_h * out_w * 3])?;
        let rgb = fix.apply_to_rgb8_cuda(&hq, &reference, &lq_frames)?;
        Ok(frames::rgb8_to_frames(&rgb)?)
    } else {
        let fixed = fix.apply(&hq, &reference)?.clamp(-1f32, 1f32)?;
        Ok(frames::to_rgb_frames(&fixed)?)
    }
}

#[test]
fn colour_fix_kernels_match_the_cpu() -> anyhow::Result<()> {
    let dev = Device::new_cuda(0)?;
    let cpu = Device::Cpu;
    let mut rng = Rng(0xD1B54A32D192ED03);
    let mut failures = Vec::new();
    for dtype in [DType::F32, DType::F16, DType::BF16] {
        // Model size 96x136, output crop 90x130 (a strided view, like the session's).
        for (t, h, w, oh, ow) in [
            (3, 96, 136, 90, 130),
            (2, 7, 5, 7, 5),
            (1, 40, 300, 33, 299),
        ] {
            let (hq, lq) = colour_case(t, h, w, dtype, &mut rng)?;
            for fix in [ColorFix::AdaIn, ColorFix::None] {
                let want = colour_step(fix, &hq, &lq, oh, ow, &cpu, false)?;
                let got = colour_step(fix, &hq, &lq, oh, ow, &dev, true)?;
                let d = diff(&got, &want);
                let line = format!(
                    "{fix:?} {dtype:?} T{t} {ow}x{oh} of {w}x{h}: {} of {} bytes differ from the CPU, max {}",
                    d.differing, d.total, d.max
                );
                println!("{line}");
                // AdaIn: the f64 statistics may round differently from the CPU's f32 sums,
                // one level at most and rarely; the plain conversion is exact.
                let exact = fix == ColorFix::None;
                if (exact && d.differing > 0) || d.max > 1 || d.differing * 1000 > d.total {
                    failures.push(line);
                }
            }
            // Wavelet: the filters are Candle's on the device either way; the fused
            // conversion must give exactly today's bytes from them.
            let want = colour_step(ColorFix::Wavelet, &hq, &lq, oh, ow, &dev, false)?;
            let got = colour_step(ColorFix::Wavelet, &hq, &lq, oh, ow, &dev, true)?;
            let d = diff(&got, &want);
            if d.differing > 0 {
                failures.push(format!(
                    "Wavelet {dtype:?} T{t}: {} bytes differ from the tensor path on CUDA",
                    d.differing
                ));
            }
        }
    }
    // The real size: 8 output frames at 1408x768 (one tiny-mode step), with timings.
    for dtype in [DType::BF16, DType::F32] {
        let (t, h, w) = (8, 768, 1408);
        let (hq, lq) = colour_case(t, h, w, dtype, &mut rng)?;
        let want = colour_step(ColorFix::AdaIn, &hq, &lq, h, w, &cpu, false)?;
        let got = colour_step(ColorFix::AdaIn, &hq, &lq, h, w, &dev, true)?;
        let today = colour_step(ColorFix::AdaIn, &hq, &lq, h, w, &dev, false)?;
        let d = diff(&got, &want);
        let dt = diff(&today, &want);
        let line = format!(
            "AdaIn {dtype:?} T{t} {w}x{h}: fused kernels {} of {} bytes differ from the CPU (max {}); today's CUDA tensor path {} (max {})",
            d.differing, d.total, d.max, dt.differing, dt.max
        );
        println!("{line}");
        if d.max > 1 || d.differing * 1000 > d.total {
            failures.push(line);
        }
        // The same CPU colour fix against an LQ video mapped byte by byte (no table lookup):
        // tells a kernel fault from a fault of `frames::unit_video` (see the test above).
        let spec_ref = scalar_unit_video(&lq, dtype)?;
        let fixed = ColorFix::AdaIn.apply(&hq, &spec_ref)?.clamp(-1f32, 1f32)?;
        let want_spec = frames::to_rgb_frames(&fixed)?;
        let ds = diff(&got, &want_spec);
        let n255: usize = lq
            .iter()
            .map(|f| f.data.iter().filter(|&&b| b == 255).count())
            .sum();
        let line = format!(
            "AdaIn {dtype:?} T{t} {w}x{h}: fused kernels {} of {} bytes differ from the CPU colour fix on a byte-by-byte LQ video (max {}); LQ bytes equal to 255: {n255}",
            ds.differing, ds.total, ds.max
        );
        println!("{line}");
        if ds.max > 1 || ds.differing * 1000 > ds.total {
            failures.push(line);
        }
        // Timings, inputs already on the device: kernels alone (synchronised) and with the
        // download of the bytes, fused vs today's tensor ops.
        let held: Vec<Tensor> = lq
            .iter()
            .map(|f| frames::to_device(f, &dev))
            .collect::<candle_core::Result<_>>()?;
        let reference = frames::unit_video(&held, dtype)?;
        let lq_frames = Tensor::stack(&held, 0)?;
        let hq_dev = hq.to_device(&dev)?;
        let reps = 20;
        let time = |f: &dyn Fn() -> anyhow::Result<()>| -> anyhow::Result<f64> {
            f()?;
            dev.synchronize()?;
            let t0 = Instant::now();
            for _ in 0..reps {
                f()?;
            }
            dev.synchronize()?;
            Ok(t0.elapsed().as_secs_f64() * 1e3 / (reps * t) as f64)
        };
        let fused_k = time(&|| {
            ColorFix::AdaIn.apply_to_rgb8_cuda(&hq_dev, &reference, &lq_frames)?;
            Ok(())
        })?;
        let fused_all = time(&|| {
            frames::rgb8_to_frames(
                &ColorFix::AdaIn.apply_to_rgb8_cuda(&hq_dev, &reference, &lq_frames)?,
            )?;
            Ok(())
        })?;
        let today_k = time(&|| {
            let fixed = ColorFix::AdaIn
                .apply(&hq_dev, &reference)?
                .clamp(-1f32, 1f32)?;
            let _ = ((fixed.to_dtype(DType::F32)? + 1.0)? * 127.5)?
                .clamp(0f32, 255f32)?
                .to_dtype(DType::U8)?
                .squeeze(0)?
                .permute((1, 2, 3, 0))?
                .contiguous()?;
            Ok(())
        })?;
        let today_all = time(&|| {
            let fixed = ColorFix::AdaIn
                .apply(&hq_dev, &reference)?
                .clamp(-1f32, 1f32)?;
            frames::to_rgb_frames(&fixed)?;
            Ok(())
        })?;
        println!(
            "AdaIn {dtype:?} {w}x{h} ms per frame: fused kernels {fused_k:.4} (+ download {fused_all:.4}); today's tensor ops {today_k:.4} (+ download {today_all:.4})"
        );
    }
    assert!(failures.is_empty(), "failures:\n{}", failures.join("\n"));
    Ok(())
}
