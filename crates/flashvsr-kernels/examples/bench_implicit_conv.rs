//! The implicit NHWC convolution against the tap-GEMM conv at the TCDecoder's real shapes
//! (768x1408 output, latent grid 96x176), every tile, same run, same GPU. CUDA events around
//! `REPS` back-to-back calls, median of `ROUNDS`, after a warm-up.
//!
//! cargo build --release -p flashvsr-kernels --features cuda --example bench_implicit_conv
//! (run on the device machine; one JSON line per shape, batch and dtype). The tap-GEMM conv
//! gets the materialised logical input (upsampled, concatenated) in NCHW, as the decoder's old
//! path did.

#[cfg(not(feature = "cuda"))]
fn main() {
    eprintln!("bench_implicit_conv needs the `cuda` feature");
    std::process::exit(2);
}

#[cfg(feature = "cuda")]
fn main() -> anyhow::Result<()> {
    use candle_core::cuda_backend::cudarc::driver::sys::CUevent_flags;
    use candle_core::{DType, Device, Tensor};
    use flashvsr_kernels::implicit_conv::{
        conv2d_nhwc_with_tile, ConvEpilogue, PackedConv, Source, Tile,
    };
    use flashvsr_kernels::tap_conv;

    const REPS: usize = 5;
    const ROUNDS: usize = 5;
    let dev = Device::new_cuda(0)?;
    let Device::Cuda(cuda) = &dev else {
        unreachable!()
    };
    let stream = cuda.cuda_stream();
    let time_ms = |f: &dyn Fn() -> candle_core::Result<Tensor>| -> anyhow::Result<f64> {
        f()?;
        dev.synchronize()?;
        let mut rounds = Vec::with_capacity(ROUNDS);
        for _ in 0..ROUNDS {
            let start = stream.record_event(Some(CUevent_flags::CU_EVENT_DEFAULT))?;
            for _ in 0..REPS {
                f()?;
            }
            let end = stream.record_event(Some(CUevent_flags::CU_EVENT_DEFAULT))?;
            end.synchronize()?;
            rounds.push(start.elapsed_ms(&end)? as f64 / REPS as f64);
        }
        rounds.sort_by(|a, b| a.total_cmp(b));
        Ok(rounds[ROUNDS / 2])
    };
    let run_tap = std::env::var("BENCH_NO_TAP").is_err();
    // (label, source h, w, C0, C1 (previous frame of the same tensor), C_out, k, upsample,
    //  group, bias, residual, relu); frames below are output frames of the call.
    #[allow(clippy::type_complexity)]
    let shapes: [(
        &str,
        usize,
        usize,
        usize,
        bool,
        usize,
        usize,
        bool,
        usize,
        bool,
        bool,
    ); 16] = [
        (
            "1 conv 1/8 784->512",
            96,
            176,
            784,
            false,
            512,
            3,
            false,
            1,
            true,
            false,
        ),
        (
            "3 conv 1/8 512->512",
            96,
            176,
            512,
            false,
            512,
            3,
            false,
            1,
            false,
            false,
        ),
        (
            "5 mem.0 1/8 cat(512,past)->512",
            96,
            176,
            512,
            true,
            512,
            3,
            false,
            1,
            true,
            false,
        ),
        (
            "5 mem.4 1/8 512->512 +res",
            96,
            176,
            512,
            false,
            512,
            3,
            false,
            1,
            true,
            true,
        ),
        (
            "9 tgrow 1x1 512->512 (1/8)",
            96,
            176,
            512,
            false,
            512,
            1,
            false,
            1,
            false,
            false,
        ),
        (
            "10 conv up 1/4 512->256",
            96,
            176,
            512,
            false,
            256,
            3,
            true,
            1,
            false,
            false,
        ),
        (
            "11 mem.0 1/4 cat(256,past)->256",
            192,
            352,
            256,
            true,
            256,
            3,
            false,
            1,
            true,
            false,
        ),
        (
            "11 mem.4 1/4 256->256 +res",
            192,
            352,
            256,
            false,
            256,
            3,
            false,
            1,
            true,
            true,
        ),
        (
            "15 tgrow 1x1 256->512 (1/4)",
            192,
            352,
            256,
            false,
            512,
            1,
            false,
            1,
            false,
            false,
        ),
        (
            "16 conv up+group2 1/2 256->128",
            192,
            352,
            256,
            false,
            128,
            3,
            true,
            2,
            false,
            false,
        ),
        (
            "17 mem.0 1/2 cat(128,past)->128",
            384,
            704,
            128,
            true,
            128,
            3,
            false,
            1,
            true,
            false,
        ),
        (
            "17 mem.4 1/2 128->128 +res",
            384,
            704,
            128,
            false,
            128,
            3,
            false,
            1,
            true,
            true,
        ),
        (
            "21 tgrow 1x1 128->256 (1/2)",
            384,
            704,
            128,
            false,
            256,
            1,
            false,
            1,
            false,
            false,
        ),
        (
            "22 conv up+group2 full 128->128",
            384,
            704,
            128,
            false,
            128,
            3,
            true,
            2,
            false,
            false,
        ),
        (
            "24 conv full 128->128",
            768,
            1408,
            128,
            false,
            128,
            3,
            false,
            1,
            false,
            false,
        ),
        (
            "26 conv full 128->3",
            768,
            1408,
            128,
            false,
            3,
            3,
            false,
            1,
            true,
            false,
        ),
    ];
    for dtype in [DType::F16, DType::BF16] {
        for frames in [1usize, 4] {
            for &(label, h, w, c0, past, cout, k, up, group, bias, res) in &shapes {
                let c1 = if past { c0 } else { 0 };
                let cin = c0 + c1;
                let frames = frames.max(group);
                let (oh, ow) = if up { (2 * h, 2 * w) } else { (h, w) };
                let x = Tensor::randn(0f32, 1.0, (frames / group, h, w, group * c0), &dev)?
                    .to_dtype(dtype)?;
                let wt = (Tensor::randn(0f32, 1.0, (cout, cin, k, k), &dev)?
                    / ((cin * k * k) as f64).sqrt())?;
                let b = Tensor::randn(0f32, 1.0, cout, &dev)?;
                let conv = PackedConv::new(&wt, bias.then_some(&b), dtype)?;
                let residual =
                    Tensor::randn(0f32, 1.0, (frames, oh, ow, cout), &dev)?.to_dtype(dtype)?;
                let epilogue = ConvEpilogue {
                    residual: res.then_some(&residual),
                    relu: true,
                };
                let mut sources = vec![Source::grouped(&x, group)];
                if past {
                    sources.push(Source::previous(&x, None));
                }
                let flop = 2.0 * (frames * oh * ow * cout * cin * k * k) as f64;
                let tiles: Vec<Tile> = if dtype == DType::F16 {
                    Tile::ALL
                        .into_iter()
                        .filter(|t| {
                            cout > 16 || *t == Tile::M128N16K32S4 || *t == Tile::M128N64K32S4
                        })
                        .collect()
                } else {
                    vec![Tile::for_out_channels(cout)]
                };
                let mut fields = Vec::new();
                let mut best = f64::INFINITY;
                for tile in tiles {
                    let ms = time_ms(&|| {
                        conv2d_nhwc_with_tile(&conv, &sources, up, epilogue, Some(tile))
                    })?;
                    best = best.min(ms);
                    fields.push(format!("\"{}\": {ms:.3}", tile.name()));
                }
                let default_ms =
                    time_ms(&|| conv2d_nhwc_with_tile(&conv, &sources, up, epilogue, None))?;
                let tap_ms = if run_tap && (frames == 1 || oh < 700) {
                    // The old path's input: materialised, NCHW.
                    let logical = {
                        let t = x
                            .reshape((frames / group, h, w, group, c0))?
                            .permute((0, 3, 1, 2, 4))?
                            .reshape((frames, h, w, c0))?;
                        let t = if past {
                            let prev = Tensor::cat(
                                &[
                                    &t.zeros_like()?.narrow(0, 0, 1)?,
                                    &t.narrow(0, 0, frames - 1)?,
                                ],
                                0,
                            )?;
                            Tensor::cat(&[&t, &prev], 3)?
                        } else {
                            t
                        };
                        let t = t.permute((0, 3, 1, 2))?.contiguous()?;
                        if up {
                            t.upsample_nearest2d(oh, ow)?
                        } else {
                            t
                        }
                    };
                    let wd = wt.to_dtype(dtype)?;
                    Some(time_ms(&|| tap_conv::conv2d(&logical, &wd, k / 2))?)
                } else {
                    None
                };
                println!(
                    "{{\"shape\": \"{label}\", \"dtype\": \"{dtype:?}\", \"frames\": {frames}, \"gflop\": {:.1}, \"default_ms\": {default_ms:.3}, \"default_tflops\": {:.0}, \"best_tflops\": {:.0}, \"tap_ms\": {}, \"tap_tflops\": {}, \"tiles_ms\": {{{}}}}}",
                    flop / 1e9,
                    flop / default_ms / 1e9,
                    flop / best / 1e9,
                    tap_ms.map_or("null".into(), |t| format!("{t:.3}")),
                    tap_ms.map_or("null".into(), |t| format!("{:.0}", flop / t / 1e9)),
                    fields.join(", ")
                );
            }
        }
    }
    Ok(())
}
