//! The tap-GEMM conv2d on the GPU against Candle's conv2d (im2col + cuBLAS). Needs a GPU:
//! build with `cargo test -p flashvsr-kernels --features cuda --no-run --release` and run the
//! binary on the device machine.
#![cfg(feature = "cuda")]

use candle_core::{DType, Device, Tensor};
use flashvsr_kernels::tap_conv;

/// (N, C_in, C_out, H, W, kH, kW, padding): odd sizes, 1x1, unpadded, tall kernels, the
/// TCDecoder's 784-channel first conv, and a wide frame (row alignment, 32-bit offsets).
const CASES: &[(usize, usize, usize, usize, usize, usize, usize, usize)] = &[
    (1, 3, 4, 5, 7, 3, 3, 1),
    (3, 16, 8, 13, 9, 3, 3, 1),
    (2, 16, 3, 11, 17, 3, 3, 0),
    (2, 32, 32, 9, 10, 1, 1, 0),
    (4, 48, 16, 6, 6, 3, 1, 0),
    (2, 784, 64, 12, 20, 3, 3, 1),
    (1, 128, 128, 96, 176, 3, 3, 1),
];

fn max_rel(got: &Tensor, want: &Tensor) -> anyhow::Result<f32> {
    let diff = (got.to_dtype(DType::F32)? - want.to_dtype(DType::F32)?)?
        .abs()?
        .max_all()?
        .to_scalar::<f32>()?;
    let scale = want
        .to_dtype(DType::F32)?
        .abs()?
        .max_all()?
        .to_scalar::<f32>()?
        .max(1e-6);
    Ok(diff / scale)
}

#[test]
fn tap_conv_matches_candle_conv2d() -> anyhow::Result<()> {
    let dev = Device::new_cuda(0)?;
    let mut failures = Vec::new();
    for &(n, cin, cout, h, w, kh, kw, p) in CASES {
        let x = Tensor::randn(0f32, 1.0, (n, cin, h, w), &dev)?;
        let wt = (Tensor::randn(0f32, 1.0, (cout, cin, kh, kw), &dev)?
            / ((cin * kh * kw) as f64).sqrt())?;
        // f64 on the CPU is the reference for every dtype.
        let reference = x.to_dtype(DType::F64)?.to_device(&Device::Cpu)?.conv2d(
            &wt.to_dtype(DType::F64)?.to_device(&Device::Cpu)?,
            p,
            1,
            1,
            1,
        )?;
        for (dtype, bound) in [
            (DType::F32, 1e-5f32),
            (DType::F16, 1e-2),
            (DType::BF16, 2e-2),
        ] {
            let (xd, wd) = (x.to_dtype(dtype)?, wt.to_dtype(dtype)?);
            let got = tap_conv::conv2d(&xd, &wd, p)?;
            let candle = xd.conv2d(&wd, p, 1, 1, 1)?;
            if got.dims() != reference.dims() {
                failures.push(format!(
                    "{dtype:?} {:?}: shape {:?}, want {:?}",
                    (n, cin, cout, h, w, kh, kw, p),
                    got.dims(),
                    reference.dims()
                ));
                continue;
            }
            let reference = reference.to_device(&dev)?;
            let (e_tap, e_candle) = (max_rel(&got, &reference)?, max_rel(&candle, &reference)?);
            let finite = got
                .flatten_all()?
                .to_dtype(DType::F32)?
                .to_vec1::<f32>()?
                .iter()
                .all(|v| v.is_finite());
            let line = format!(
                "{dtype:?} N{n} {cin}->{cout} {h}x{w} k{kh}x{kw} p{p}: tap conv rel err {e_tap:.2e}, candle conv2d {e_candle:.2e}"
            );
            println!("{line}");
            if !finite || e_tap > bound {
                failures.push(line);
            }
        }
    }
    assert!(failures.is_empty(), "failures:\n{}", failures.join("\n"));
    Ok(())
}
