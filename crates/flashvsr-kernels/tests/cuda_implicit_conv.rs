//! The implicit NHWC convolution on the GPU, every tile and both half dtypes, against a plain-loop
//! f64 reference on fresh random data. Needs a GPU: build with
//! `cargo test --release -p flashvsr-kernels --features cuda --test cuda_implicit_conv --no-run`
//! and run the binary on the device machine.
#![cfg(feature = "cuda")]

mod conv_common;

use candle_core::{DType, Device, Tensor};
use conv_common::{cases, errors, random_case, reference, run};
use flashvsr_kernels::implicit_conv::Tile;

/// Bounds on (‖out − ref‖/‖ref‖, max error / max |ref|): f32 accumulation, one rounding of
/// the output (bf16 2^-9, f16 2^-12 relative) on inputs already rounded to the dtype.
fn bounds(dtype: DType) -> (f64, f64) {
    match dtype {
        DType::BF16 => (4e-3, 8e-3),
        _ => (1e-3, 2e-3),
    }
}

/// Fills and frees a large NaN buffer so that the next allocation (stream-ordered pool) is
/// most likely poisoned: an element the kernel forgot to write shows up as non-finite.
fn poison(dev: &Device) -> anyhow::Result<()> {
    let t = Tensor::full(f32::NAN, 64 << 20, dev)?;
    dev.synchronize()?;
    drop(t);
    Ok(())
}

#[test]
fn implicit_conv_matches_f64_reference() -> anyhow::Result<()> {
    let dev = Device::new_cuda(0)?;
    let mut failures = Vec::new();
    for spec in cases() {
        for dtype in [DType::BF16, DType::F16] {
            let case = random_case(spec, dtype)?;
            let want = reference(&case);
            for tile in Tile::ALL {
                poison(&dev)?;
                let got = run(&case, dtype, &dev, Some(tile))?;
                let (oh, ow) = spec.out_hw();
                let (rel, max, finite) = errors(&got, &want)?;
                let line = format!(
                    "{dtype:?} {:<14} {spec:?}: rel {rel:.2e} max {max:.2e}",
                    tile.name()
                );
                println!("{line}");
                let (b_rel, b_max) = bounds(dtype);
                if got.dims() != [spec.frames, oh, ow, spec.cout]
                    || !finite
                    || rel > b_rel
                    || max > b_max
                {
                    failures.push(format!("{line} dims {:?} finite {finite}", got.dims()));
                }
            }
        }
    }
    assert!(failures.is_empty(), "failures:\n{}", failures.join("\n"));
    Ok(())
}

/// f32 on CUDA takes the Candle path (no kernel): still the same addressing.
#[test]
fn f32_on_cuda_uses_the_candle_path() -> anyhow::Result<()> {
    let dev = Device::new_cuda(0)?;
    for spec in cases().into_iter().take(12) {
        let case = random_case(spec, DType::F32)?;
        let (rel, max, finite) = errors(&run(&case, DType::F32, &dev, None)?, &reference(&case))?;
        println!("F32 candle path {spec:?}: rel {rel:.2e} max {max:.2e}");
        assert!(
            finite && rel < 1e-5 && max < 1e-4,
            "{spec:?}: rel {rel:.2e} max {max:.2e}"
        );
    }
    Ok(())
}

/// The channels-last tap GEMMs (the LQ projection's convs) against the CPU's f32 matmuls on
/// the same bf16/f32 inputs: several frames (the batched GEMM's strides), a width that is not
/// a multiple of 8, the last rows of each frame (the reads that end at the frame's end).
#[test]
fn channels_last_tap_gemms_match_the_cpu() -> anyhow::Result<()> {
    use flashvsr_kernels::tap_conv::{conv2d_nhwc_valid, pack_taps};
    let dev = Device::new_cuda(0)?;
    let cpu = Device::Cpu;
    for (dtype, tol) in [(DType::F32, 1e-5f32), (DType::BF16, 1e-4)] {
        let x = Tensor::randn(0f32, 1.0, (3, 9, 13, 64), &cpu)?.to_dtype(dtype)?;
        let w = (Tensor::randn(0f32, 1.0, (48, 64, 3, 3), &cpu)? * 0.05)?.to_dtype(dtype)?;
        let taps = pack_taps(&w)?;
        let want = conv2d_nhwc_valid(&x, &taps, 3, 3)?;
        let got = conv2d_nhwc_valid(&x.to_device(&dev)?, &taps.to_device(&dev)?, 3, 3)?
            .to_device(&cpu)?;
        assert_eq!(got.dims(), &[3, 7, 11, 48]);
        let scale = want.abs()?.max_all()?.to_scalar::<f32>()?;
        let diff = (got - &want)?.abs()?.max_all()?.to_scalar::<f32>()? / scale;
        println!("channels-last tap GEMMs {dtype:?}: max rel diff {diff:.3e}");
        assert!(diff <= tol, "{dtype:?}: {diff}");
    }
    Ok(())
}
