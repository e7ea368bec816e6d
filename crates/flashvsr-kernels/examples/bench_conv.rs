//! Convolution at the TCDecoder's and Wan VAE's real shapes (768x1408 output): the tap-GEMM
//! conv2d against Candle's conv2d (im2col + cuBLAS), per frame, same run, same GPU.
//!
//! cargo build --release -p flashvsr-kernels --features cuda --example bench_conv
//! (run on the device machine; prints one JSON line per shape and dtype).

#[cfg(not(feature = "cuda"))]
fn main() {
    eprintln!("bench_conv needs the `cuda` feature");
    std::process::exit(2);
}

#[cfg(feature = "cuda")]
fn main() -> anyhow::Result<()> {
    use candle_core::{DType, Device, Tensor};
    use flashvsr_kernels::tap_conv;
    use std::time::Instant;

    let dev = Device::new_cuda(0)?;
    // (label, C_in, C_out, H, W): the TCDecoder's stages at 768x1408 and a VAE up-block conv
    // (3 temporal taps stacked on channels: 3·192 in).
    let shapes = [
        ("tc 1/8 res 1024->512", 1024, 512, 96, 176),
        ("tc 1/4 res 512->256", 512, 256, 192, 352),
        ("tc 1/2 res 256->128", 256, 128, 384, 704),
        ("tc full res 128->128", 128, 128, 768, 1408),
        ("vae full res 3x192->96", 576, 96, 768, 1408),
    ];
    let time = |f: &dyn Fn() -> candle_core::Result<Tensor>| -> anyhow::Result<f64> {
        f()?;
        dev.synchronize()?;
        let reps = 5;
        let t = Instant::now();
        for _ in 0..reps {
            f()?;
        }
        dev.synchronize()?;
        Ok(t.elapsed().as_secs_f64() / reps as f64)
    };
    for dtype in [DType::BF16, DType::F16, DType::F32] {
        for (label, cin, cout, h, w) in shapes {
            let x = Tensor::randn(0f32, 1.0, (1, cin, h, w), &dev)?.to_dtype(dtype)?;
            let wt = (Tensor::randn(0f32, 1.0, (cout, cin, 3, 3), &dev)?
                / ((cin * 9) as f64).sqrt())?
            .to_dtype(dtype)?;
            let tap = time(&|| tap_conv::conv2d(&x, &wt, 1))?;
            let candle = time(&|| x.conv2d(&wt, 1, 1, 1, 1))?;
            let tflop = 2.0 * (cin * cout * 9 * h * w) as f64 / 1e12;
            println!(
                "{{\"shape\": \"{label}\", \"dtype\": \"{dtype:?}\", \"tap_ms\": {:.2}, \"candle_ms\": {:.2}, \"speedup\": {:.2}, \"tap_tflops\": {:.0}, \"candle_tflops\": {:.0}}}",
                tap * 1e3,
                candle * 1e3,
                candle / tap,
                tflop / tap,
                tflop / candle
            );
        }
    }
    Ok(())
}
